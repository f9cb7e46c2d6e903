"""Shared fixtures and the BPF/e2e requirements gate.

Tests marked ``bpf`` or ``e2e`` need root, kernel BTF and the compiled BPF
objects. When one of those is missing the test is skipped with the exact
reason, or fails instead when DROPWATCH_REQUIRE_BPF=1 (CI on a capable
runner must not go green by skipping everything).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
BPF_OBJECTS = ("labeler.bpf.o", "drop_reader.bpf.o")
_GATED_MARKERS = ("bpf", "e2e")


def bpf_obj_dir() -> Path:
    """Where the loader will look for the objects (DROPWATCH_BPF_DIR wins)."""
    try:
        from dropwatch.loader import bpf_dir  # the loader's own rule, so both agree
    except Exception:  # noqa: BLE001 - dropwatch not importable: fall back to the same rule
        env = os.environ.get("DROPWATCH_BPF_DIR")
        return Path(env) if env else Path(__file__).resolve().parent.parent / "dropwatch" / "bpfobj"
    return bpf_dir()


def missing_bpf_objects() -> list[str]:
    d = bpf_obj_dir()
    return [str(d / name) for name in BPF_OBJECTS if not (d / name).is_file()]


def bpf_unmet_requirements(*, need_root: bool = True, need_btf: bool = True,
                           need_objects: bool = True) -> list[str]:
    """Every reason the BPF tests cannot run here; empty if they can."""
    reasons = []
    if need_root and os.geteuid() != 0:
        reasons.append(f"not running as root (euid {os.geteuid()}): loading BPF programs needs root")
    if need_btf and not VMLINUX_BTF.exists():
        reasons.append(f"{VMLINUX_BTF} missing: the kernel was built without CONFIG_DEBUG_INFO_BTF")
    if need_objects:
        missing = missing_bpf_objects()
        if missing:
            reasons.append(f"BPF objects not built: {', '.join(missing)} missing (run 'make -C bpf'"
                           f"{'' if 'DROPWATCH_BPF_DIR' not in os.environ else ' or fix DROPWATCH_BPF_DIR'})")
    return reasons


def _skip_or_fail(reasons: list[str]) -> None:
    if not reasons:
        return
    msg = "; ".join(reasons)
    if os.environ.get("DROPWATCH_REQUIRE_BPF") == "1":
        pytest.fail(f"DROPWATCH_REQUIRE_BPF=1 but {msg}", pytrace=False)
    pytest.skip(msg)


def require_bpf(**kw: bool) -> None:
    """Skip (or fail under DROPWATCH_REQUIRE_BPF=1) unless BPF tests can run."""
    _skip_or_fail(bpf_unmet_requirements(**kw))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # A hook, not an autouse fixture: it runs before any fixture of the test
    # is set up, including module/session-scoped loaders.
    if any(item.get_closest_marker(m) is not None for m in _GATED_MARKERS):
        require_bpf()


@pytest.fixture(name="require_bpf")
def require_bpf_fixture() -> None:
    """For tests that need BPF without carrying the bpf/e2e marker."""
    require_bpf()


@pytest.fixture
def require_bpf_objects() -> Path:
    """Only the compiled objects (e.g. reading their BTF; no root needed)."""
    require_bpf(need_root=False, need_btf=False)
    return bpf_obj_dir()


@pytest.fixture
def loader_factory() -> Iterator[Callable[..., object]]:
    """``make(rules=None, label_ids=None, **loader_kw)`` -> a loaded Loader,
    rules applied if given; every loader is closed at teardown, whatever
    happened in the test."""
    require_bpf()
    from dropwatch.loader import Loader
    from dropwatch.rules import compile_rules

    with ExitStack() as stack:
        def make(rules: object = None, label_ids: dict[str, int] | None = None, **kw: object) -> Loader:
            ld = stack.enter_context(Loader(**kw))  # type: ignore[arg-type]
            ld.load()
            if rules is not None:
                ld.apply_rules(compile_rules(rules, label_ids or {}))  # type: ignore[arg-type]
            return ld

        yield make

"""Shared helpers for the benches in bench/ (not part of the dropwatch package)."""

from __future__ import annotations

import ctypes
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, TypeVar

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
sys.path.insert(0, str(ROOT))

from dropwatch.libbpf import BatchOpts, Libbpf  # noqa: E402


def need_root() -> None:
    if os.geteuid() != 0:
        sys.exit(f"{sys.argv[0]}: needs root (BPF, namespaces)")


def build() -> None:
    """(Re)build the production BPF objects and the bench objects (both
    Makefiles are incremental): the bench compares against fresh objects."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "bpf")], check=True)
    subprocess.run(["make", "-s", "-C", str(BENCH)], check=True)


def pin_cpu() -> int:
    """Pin this process to the last CPU (fewer migrations, stable caches)."""
    cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


T = TypeVar("T")


def round_orders(names: Sequence[T], rounds: int, seed: int = 0) -> Iterator[list[T]]:
    """The order of each round's runs: a fresh shuffle of names, seeded, so
    that no variant keeps one place. Reversing a fixed order every other
    round (as until session 8) runs the last one twice back to back at
    every other round boundary, its tables still in the cache the second
    time: a bias in its favour (bench/compare.py, one build against
    itself: a nanosecond or two)."""
    rng = random.Random(seed)
    for _ in range(rounds):
        order = list(names)
        rng.shuffle(order)
        yield order


def update_batch(lib: Libbpf, fd: int, keys: bytes, values: bytes, key_size: int, value_size: int,
                 chunk: int = 16384) -> None:
    """bpf_map_update_batch over packed keys/values, in chunks."""
    n = len(keys) // key_size
    assert len(values) == n * value_size, (len(values), n, value_size)
    opts = BatchOpts(sz=ctypes.sizeof(BatchOpts))
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        kb = ctypes.create_string_buffer(keys[start * key_size:(start + m) * key_size], m * key_size)
        vb = ctypes.create_string_buffer(values[start * value_size:(start + m) * value_size], m * value_size)
        cnt = ctypes.c_uint32(m)
        ret = lib.lib.bpf_map_update_batch(fd, kb, vb, ctypes.byref(cnt), ctypes.byref(opts))
        if ret < 0 or cnt.value != m:
            raise OSError(-ret if ret < 0 else 0, f"bpf_map_update_batch: {os.strerror(-ret) if ret < 0 else ''} "
                                                  f"({cnt.value}/{m} written)")


def table(rows: list[list[Any]], head: list[str]) -> str:
    cells = [[str(c) for c in r] for r in [head] + rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    out = []
    for j, r in enumerate(cells):
        out.append("  ".join(c.rjust(widths[i]) if i else c.ljust(widths[i]) for i, c in enumerate(r)))
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def fmt(x: float | None, nd: int = 1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def bpf_kfree_skb_programs() -> list[str]:
    """Programs attached to kfree_skb that this bench did not attach (they add
    a constant cost to every configuration of the drop benchmark)."""
    try:
        out = subprocess.run(["bpftool", "-j", "link", "list"], capture_output=True, text=True, timeout=10).stdout
        links = json.loads(out or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []
    found = []
    for ln in links:
        if ln.get("tp_name") == "kfree_skb" or "kfree_skb" in str(ln.get("attach_btf_name", "")) \
                or ln.get("target_name") == "kfree_skb":
            found.append(f"link {ln.get('id')} prog {ln.get('prog_id')} ({ln.get('type')})")
    return found


def iter_chunks(xs: Iterable[Any], n: int) -> Iterable[list[Any]]:
    buf: list[Any] = []
    for x in xs:
        buf.append(x)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf

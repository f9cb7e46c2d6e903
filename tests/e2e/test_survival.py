"""The survival matrix on the running kernel, against a committed baseline.

Runs every path of dropwatch/survival.py in generic and native XDP mode
(small N, one loader) and fails if any drop is misattributed, if a path that
attributed in tests/e2e/survival_baseline.json attributes less now, if the
reader's count disagrees with the kernel's own counter, or if a path could
not be measured. A path that attributes more than the baseline says only
prints a hint; record it with

    dropwatch survival --mode both --update-baseline

The unit tests at the bottom check the classification itself (no root).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator

import pytest

from dropwatch import abi
from dropwatch.survival import (BASELINE_PATH, DECOY, PATHS, RULES, SURVIVOR, UNDERLAY, Matrix, Row, classify,
                                compare_baseline, format_table, path_names)

N = 30
MODES = ["generic", "native"]


@pytest.fixture(scope="module")
def rows() -> Iterator[list[Row]]:
    t0 = time.monotonic()
    with Matrix.open() as m:
        out = m.run(path_names(), MODES, N)
    print(f"\nsurvival matrix: {len(out)} rows in {time.monotonic() - t0:.0f}s\n{format_table(out)}")
    yield out


@pytest.mark.e2e
def test_matrix_ran_every_path(rows: list[Row]) -> None:
    assert {(r.path, r.mode) for r in rows} == {(p, m) for p in PATHS for m in MODES}
    errors = [f"{r.path}/{r.mode}: {r.detail}" for r in rows if r.status == "error"]
    assert not errors, errors
    # Unavailable only where the kernel cannot build the topology (a link
    # type it lacks), never a silent skip of a path that should run.
    for r in rows:
        if r.status == "unavailable":
            assert "cannot create" in r.detail or "native mode" in r.detail, r
    measured = [r for r in rows if r.status != "unavailable"]
    assert len(measured) >= len(rows) // 2, "most of the matrix did not run"
    for r in measured:
        assert r.seen > 0, f"{r.path}/{r.mode}: no drops seen ({r.detail})"


@pytest.mark.e2e
def test_no_drop_is_misattributed(rows: list[Row]) -> None:
    bad = [(r.path, r.mode, [k for k in r.by_key if k["class"] == "misattributed"]) for r in rows if r.misattributed]
    assert not bad, bad


@pytest.mark.e2e
def test_attributed_drops_carry_the_right_pop(rows: list[Row]) -> None:
    """Tunnelled paths land from ams01 (the outer source); the others from no PoP."""
    bad = [(r.path, r.mode, r.pop_expected, r.pops) for r in rows if r.pop_mismatch]
    assert not bad, bad
    for r in rows:
        if r.pop_expected == "ams01" and r.attributed:
            assert r.pops.get("ams01", 0) >= r.attributed, r


@pytest.mark.e2e
def test_reader_counts_what_the_kernel_counts(rows: list[Row]) -> None:
    off = [f"{r.path}/{r.mode}: reader {r.seen}, {r.counter} {r.kernel}" for r in rows
           if r.status != "unavailable" and r.kernel is not None and r.kernel != r.seen]
    assert not off, off


@pytest.mark.e2e
def test_no_path_attributes_less_than_the_baseline(rows: list[Row]) -> None:
    baseline = json.loads(BASELINE_PATH.read_text())
    worse, better = compare_baseline(rows, baseline)
    gone = sorted(set(baseline["paths"]) - {f"{r.path}/{r.mode}" for r in rows})
    if better:
        print("survival matrix improved (update the baseline with "
              "`dropwatch survival --mode both --update-baseline`):\n  " + "\n  ".join(better))
    assert not gone, f"paths in the baseline but no longer in the matrix: {gone}"
    assert not worse, worse


@pytest.mark.e2e
def test_a_misattribution_is_caught() -> None:
    """Negative control: rules that give the survivor's destination the
    decoy's label make every one of its drops misattributed, and the row
    says so (the matrix can fail)."""
    rules = copy.deepcopy(RULES)
    rules["rules"][0]["dst"], rules["rules"][1]["dst"] = ["10.30.2.0/24"], ["10.30.0.0/16"]
    with Matrix.open(rules) as m:
        row = m.run_path(PATHS["udp-closed-port"], "generic", 10)
    assert row.seen == 10 and row.misattributed == 10, row
    assert row.status == "MISATTRIBUTED"


# ---------------------------------------------------------------- classification (no kernel)

def _key(label: int, side: int, source: int, flags: int = 0, pop: int = 0) -> tuple[int, ...]:
    return (label, side, 7, 0xFFFF, 2, pop, source, 4026531840, flags)


class _Reasons:
    def name(self, v: int) -> str:
        return "NO_SOCKET"


@pytest.mark.unit
def test_classify_counts_each_source_once() -> None:
    r = Row("x", "generic", "ipv4", "")
    eye, origin = int(abi.Side.EYEBALL), int(abi.Side.ORIGIN)
    classify(r, {
        _key(SURVIVOR, eye, abi.Source.META): 5,
        _key(SURVIVOR, eye, abi.Source.FLOW, abi.DW_DK_META_CORRUPT): 3,
        _key(0, 0, abi.Source.NONE): 2,
        _key(0, 0, abi.Source.CORRUPT): 4,
        _key(DECOY, origin, abi.Source.META): 1,
        _key(UNDERLAY, eye, abi.Source.FLOW): 1,
        _key(SURVIVOR, origin, abi.Source.META): 1,
        _key(0, origin, abi.Source.META): 1,
    }, _Reasons())
    assert (r.seen, r.metadata, r.fallback, r.unlabeled, r.corrupt, r.misattributed) == (18, 5, 3, 6, 7, 4)
    assert r.pop_mismatch == 0


@pytest.mark.unit
def test_classify_flags_a_wrong_pop() -> None:
    r = Row("x", "generic", "ipv4", "", pop_expected="ams01")
    eye = int(abi.Side.EYEBALL)
    classify(r, {_key(SURVIVOR, eye, abi.Source.FLOW, pop=1): 3, _key(SURVIVOR, eye, abi.Source.FLOW): 2},
             _Reasons())
    assert (r.fallback, r.pop_mismatch, r.pops) == (5, 2, {"ams01": 3, "none": 2})


@pytest.mark.unit
def test_baseline_regression_and_improvement() -> None:
    def row(path: str, seen: int, meta: int, status: str = "attributed") -> Row:
        return Row(path, "generic", "ipv4", "", status=status, seen=seen, metadata=meta)

    base = {"paths": {"a/generic": {"level": "all", "attributed": 5, "seen": 5},
                      "b/generic": {"level": "none", "attributed": 0, "seen": 5},
                      "c/generic": {"level": "some", "attributed": 2, "seen": 5}}}
    worse, better = compare_baseline([row("a", 5, 4), row("b", 5, 5), row("c", 5, 0)], base)
    assert [w.split(":")[0] for w in worse] == ["a/generic", "c/generic"]
    assert better == ["b/generic: none -> all"]
    worse, _ = compare_baseline([row("a", 0, 0, "unavailable")], base)
    assert worse, "a path that attributed must not silently become unavailable"

#!/usr/bin/env python3
"""The labeler of this tree against another commit's, in one interleaved run.

    sudo .venv/bin/python bench/compare.py --base REV [--family 4,6] [--sizes 10,100000]
                                           [--rounds 40] [--repeat 200000]

This machine's speed drifts by 1.5-3x over seconds to minutes (other guests
share its cores' caches), so two labelers measured minutes apart cannot be
compared. Here both run in the same rounds: REV is checked out into a
temporary git worktree and built; one worker process per tree (each with its
own tree's loader, rule compiler and bench object) loads the same rule set
and the same 100,000 random flows (bench/xdp_labeler.py's, same seed), and
every round runs, back to back and in alternating order, each tree's front
with the empty target and with its labeler. Reported per tree: -empty, the
median over rounds of (labeler - empty) in the same round, and its 10th
percentile; then the median over rounds of the two trees' difference.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def worker(root: str, family: int, size: str, seed: int) -> None:
    """Load one tree's bench object with the curve set (size "rirN": this
    tree's rir_spec, N IPv6 prefixes in the RIRs' /16s; "blocksN": its
    blocks_spec, N IPv4 prefixes in 300 /16s) and flows, then time runs on
    request: stdin lines "lab|empty FLOWS REPEAT" -> ns/packet."""
    sys.path[:0] = [os.path.join(root, "bench"), root]
    import xdp_labeler as X  # the tree's own

    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    bench = X.Bench(1_000_000, 3)
    rng = random.Random(seed)
    if size.startswith(("rir", "blocks")):
        # The set comes from this tree's bench (an older one may lack it);
        # the tree under test compiles, loads and walks it.
        import importlib.util
        sp = importlib.util.spec_from_file_location("dw_bench_sets", BENCH / "xdp_labeler.py")
        mod = importlib.util.module_from_spec(sp)  # type: ignore[arg-type]
        sys.modules[sp.name] = mod  # type: ignore[union-attr]  (dataclasses look their module up)
        sp.loader.exec_module(mod)  # type: ignore[union-attr]
        spec = mod.rir_spec(rng, int(size[3:])) if size.startswith("rir") else mod.blocks_spec(rng, int(size[6:]))
    else:
        spec = X.curve_spec(rng, family, int(size))
    comp = X.compile_fast(spec)
    front = X.Front(bench.lib)
    X.load_rules(front.ld, spec, comp)
    flows = X.make_flows(rng, spec, 100_000)
    X.load_flows(front.ld, spec, flows)
    data, l3 = X.frame(family, 64, False)
    want, _ = X.expect(spec, comp, flows[:20_000])
    got = X.count_pass(bench, front, spec, len(flows), 20_000, X.T_LABELER, data, l3)
    print(json.dumps({"labels_equal_reference": got == want}), flush=True)
    for line in sys.stdin:
        target, nfl, rep = line.split()
        front.cfg(len(flows) if int(nfl) else 0, l3, family, X.T_LABELER if target == "lab" else X.T_EMPTY)
        print(json.dumps(bench.time_run(front.fd["bench_front"], data, repeat=int(rep))), flush=True)
    front.close()


def build(rev: str, where: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(where), rev], check=True,
                   capture_output=True)
    subprocess.run(["make", "-s", "-C", str(where / "bpf"), f"OUT={where / 'dropwatch' / 'bpfobj'}"], check=True)
    subprocess.run(["make", "-s", "-C", str(where / "bench")], check=True)


def p10(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 10]


def compare(trees: dict[str, Path], family: int, size: str, rounds: int, repeat: int) -> dict[str, Any]:
    procs = {name: subprocess.Popen([sys.executable, __file__, "--worker", str(root), str(family), str(size)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for name, root in trees.items()}
    try:
        ok = {name: json.loads(p.stdout.readline())["labels_equal_reference"]  # type: ignore[union-attr]
              for name, p in procs.items()}

        def run(name: str, target: str, nfl: int) -> float:
            p = procs[name]
            p.stdin.write(f"{target} {nfl} {repeat}\n")  # type: ignore[union-attr]
            p.stdin.flush()  # type: ignore[union-attr]
            return float(json.loads(p.stdout.readline()))  # type: ignore[union-attr]

        out: dict[str, Any] = {"family": family, "prefixes": size, "labels_equal_reference": ok, "flows": {}}
        for nfl in (0, 1):
            res: dict[tuple[str, str], list[float]] = {(n, t): [] for n in trees for t in ("empty", "lab")}
            order = [(n, t) for n in trees for t in ("empty", "lab")]
            for r in range(rounds):
                for key in order if r % 2 == 0 else order[::-1]:
                    res[key].append(run(*key, nfl))
            delta = {n: [a - b for a, b in zip(res[(n, "lab")], res[(n, "empty")], strict=True)] for n in trees}
            a, b = list(trees)
            out["flows"]["100000" if nfl else "1"] = {
                **{n: {"minus_empty_median": statistics.median(d), "minus_empty_p10": p10(d)}
                   for n, d in delta.items()},
                "difference_median": statistics.median([x - y for x, y in zip(delta[b], delta[a], strict=True)]),
            }
        return out
    finally:
        for p in procs.values():
            p.stdin.close()  # type: ignore[union-attr]
            p.wait(timeout=60)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), sys.argv[4], 5)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the commit to compare this tree with")
    ap.add_argument("--family", default="4,6")
    ap.add_argument("--sizes", default="10,100000",
                    help="dst prefixes of the curve sets; rirN (IPv6): N prefixes in the RIRs' /16s; "
                         "blocksN (IPv4): N prefixes in 300 /16s")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=200_000, help="BPF_PROG_TEST_RUN repeat per run")
    ap.add_argument("--json", type=Path, default=BENCH / "out" / "compare.json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit(f"{sys.argv[0]}: needs root (BPF)")
    subprocess.run(["make", "-s", "-C", str(ROOT / "bpf")], check=True)
    subprocess.run(["make", "-s", "-C", str(BENCH)], check=True)
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.base], check=True,
                         capture_output=True, text=True).stdout.strip()
    results = []
    with tempfile.TemporaryDirectory(prefix="dw-compare-") as tmp:
        base = Path(tmp) / rev
        try:
            build(rev, base)
            trees = {rev: base, "this tree": ROOT}
            print(f"-empty ns/packet, median over {args.rounds} rounds (10th percentile), repeat {args.repeat:,}; "
                  f"both labelers in every round")
            for fam in (int(x) for x in args.family.split(",")):
                for size in args.sizes.split(","):
                    r = compare(trees, fam, size, args.rounds, args.repeat)
                    results.append(r)
                    for fl, v in r["flows"].items():
                        print(f"  v{fam} {size:>9} prefixes, {int(fl):>7,} flows: "
                              + " | ".join(f"{n}: {v[n]['minus_empty_median']:6.1f} ({v[n]['minus_empty_p10']:5.1f})"
                                           for n in trees)
                              + f" | difference {v['difference_median']:+6.1f}"
                              + ("" if all(r["labels_equal_reference"].values()) else "  (labels != reference!)"),
                              flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"base": rev, "rounds": args.rounds, "repeat": args.repeat, "rows": results},
                                    indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

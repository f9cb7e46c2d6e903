#!/usr/bin/env python3
"""The labeler of this tree against another commit's, in one interleaved run.

    sudo .venv/bin/python bench/compare.py --base REV [--family 4,6] [--sizes 10,100000]
                                           [--rounds 40] [--repeat 200000]
    sudo .venv/bin/python bench/compare.py --tree-min4 64,256,1024 --sizes blocks100000:1000 ...
    sudo .venv/bin/python bench/compare.py --tree-min6 16,32,64 --sizes rir100000:4500 ...

This machine's speed drifts by 1.5-3x over seconds to minutes (other guests
share its cores' caches), so two labelers measured minutes apart cannot be
compared. Here both run in the same rounds: REV is checked out into a
temporary git worktree and built; one worker process per tree (each with its
own tree's loader, rule compiler and bench object) loads the same rule set
and the same 100,000 random flows (bench/xdp_labeler.py's, same seed), and
every round runs, back to back and in a shuffled order (run_order()), each
tree's front with the empty target and with its labeler. Reported per
tree: -empty, the median over rounds of (labeler - empty) in the same
round, and its 10th percentile; then the median over rounds of the two
trees' difference.

--tree-min4 / --tree-min6 compare variants of this tree instead: the same
BPF object, with the rule compiler's tree threshold (dropwatch.lpm's
TREE4_MIN / TREE_MIN: a /16 of more ranges is a static search tree, a
smaller one a chunk; for IPv6 the threshold of /16s that hold no /64's
chunk, as in every set here) set to each value in turn. Each difference
is then against the first value. Sizes "blocksN:B" and "rirN:B" put the N prefixes
into B /16s, which sets how many ranges a /16 holds and so which side of a
threshold it falls on.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def worker(root: str, family: int, size: str, seed: int, tree_min: str) -> None:
    """Load one tree's bench object with the curve set (size "rirN[:B]": this
    tree's rir_spec, N IPv6 prefixes in the RIRs' /16s, or in B random
    ones; "blocksN[:B]": its blocks_spec, N IPv4 prefixes in 300 /16s, or
    in B) and flows, then time runs on request: stdin lines "lab|empty
    FLOWS REPEAT" -> ns/packet. tree_min "4:N" or "6:N" sets that family's
    tree threshold in the rule compiler ("-": the tree's own)."""
    sys.path[:0] = [os.path.join(root, "bench"), root]
    import xdp_labeler as X  # the tree's own

    if tree_min != "-":
        import dropwatch.lpm as lpm

        fam, n = tree_min.split(":")
        setattr(lpm, "TREE4_MIN" if fam == "4" else "TREE_MIN", int(n))

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
        n, _, blocks = size.removeprefix("rir").removeprefix("blocks").partition(":")
        if size.startswith("rir"):
            spec = mod.rir_spec(rng, int(n), int(blocks) if blocks else None)
        else:
            spec = mod.blocks_spec(rng, int(n), int(blocks) if blocks else 300)
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


def run_order(variants: list[str], rounds: int, seed: int) -> list[tuple[str, str]]:
    """The runs of all rounds, in order: in each round every variant's
    empty and labeler runs, next to each other, the variants in a shuffled
    order (benchlib.round_orders), the pair's two runs in turn one way and
    the other. The order used until session 8 (fixed, reversed every other
    round) ran the last variant's labeler twice back to back at every other
    round boundary, its tables still in the cache. Measured, one build
    against itself (40 rounds, IPv4 and IPv6, 1 and 10^5 flows): the
    second copy came out 0.4-3.2 ns faster in all four rows; shuffled,
    two runs: -2.0 to +0.7. A bias of a nanosecond or two, at most."""
    import benchlib as B  # here, not at the top: a worker imports its own tree's

    out: list[tuple[str, str]] = []
    for r, order in enumerate(B.round_orders(variants, rounds, seed)):
        for v in order:
            out += [(v, "empty"), (v, "lab")] if r % 2 == 0 else [(v, "lab"), (v, "empty")]
    return out


def p10(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 10]


def compare(trees: dict[str, tuple[Path, str]], family: int, size: str, rounds: int,
            repeat: int) -> dict[str, Any]:
    """Every variant (name -> (tree, tree_min)) in the same rounds; each
    difference is against the first variant."""
    procs = {name: subprocess.Popen([sys.executable, __file__, "--worker", str(root), str(family), str(size),
                                     tree_min], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for name, (root, tree_min) in trees.items()}
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
            for key in run_order(list(trees), rounds, seed=nfl):
                res[key].append(run(*key, nfl))
            delta = {n: [a - b for a, b in zip(res[(n, "lab")], res[(n, "empty")], strict=True)] for n in trees}
            first, *rest = trees
            diff = {n: statistics.median([x - y for x, y in zip(delta[n], delta[first], strict=True)])
                    for n in rest}
            out["flows"]["100000" if nfl else "1"] = {
                **{n: {"minus_empty_median": statistics.median(d), "minus_empty_p10": p10(d),
                       **({"difference_median": diff[n]} if n in diff else {})}
                   for n, d in delta.items()},
                # Two variants (--base): the second's difference, where it always was.
                **({"difference_median": diff[rest[0]]} if len(rest) == 1 else {}),
            }
        return out
    finally:
        for p in procs.values():
            p.stdin.close()  # type: ignore[union-attr]
            p.wait(timeout=60)


SIZE_RE = re.compile(r"^(\d+|rir\d+(:\d+)?|blocks\d+(:\d+)?)$")


def size_family(size: str) -> int | None:
    """The only family a set exists in (rir: IPv6, blocks: IPv4), or None
    for the curve sets, which exist in both."""
    return 6 if size.startswith("rir") else 4 if size.startswith("blocks") else None


def run_all(trees: dict[str, tuple[Path, str]], args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    print(f"-empty ns/packet, median over {args.rounds} rounds (10th percentile), repeat {args.repeat:,}; "
          f"every variant in every round; difference: against {next(iter(trees))}")
    for fam in (int(x) for x in args.family.split(",")):
        for size in args.sizes.split(","):
            if size_family(size) not in (None, fam):
                continue  # an IPv6-only set in the IPv4 pass, or the reverse
            r = compare(trees, fam, size, args.rounds, args.repeat)
            results.append(r)
            for fl, v in r["flows"].items():
                print(f"  v{fam} {size:>9} prefixes, {int(fl):>7,} flows: "
                      + " | ".join(f"{n}: {v[n]['minus_empty_median']:6.1f} ({v[n]['minus_empty_p10']:5.1f})"
                                   + (f" {v[n]['difference_median']:+6.1f}" if "difference_median" in v[n] else "")
                                   for n in trees)
                      + ("" if all(r["labels_equal_reference"].values()) else "  (labels != reference!)"),
                      flush=True)
    return results


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), sys.argv[4], 5, sys.argv[5])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--base", help="the commit to compare this tree with")
    mode.add_argument("--tree-min4", help="IPv4 tree thresholds to compare (this tree), e.g. 64,256,1024")
    mode.add_argument("--tree-min6", help="IPv6 tree thresholds to compare (this tree), e.g. 32,128,512")
    ap.add_argument("--family", help="4,6 (default; with --tree-min4/6 that family)")
    ap.add_argument("--sizes", default="10,100000",
                    help="dst prefixes of the curve sets; rirN[:B] (IPv6): N prefixes in the RIRs' /16s, or in "
                         "B random /16s of 2000::/3; blocksN[:B] (IPv4): N prefixes in 300 /16s, or in B")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=200_000, help="BPF_PROG_TEST_RUN repeat per run")
    ap.add_argument("--json", type=Path, default=BENCH / "out" / "compare.json")
    args = ap.parse_args()
    sweep = args.tree_min4 or args.tree_min6
    args.family = args.family or ("4" if args.tree_min4 else "6" if args.tree_min6 else "4,6")
    fams = args.family.split(",")
    if any(f not in ("4", "6") for f in fams):
        ap.error(f"--family {args.family}: 4, 6 or 4,6")
    for size in args.sizes.split(","):
        if not SIZE_RE.match(size):
            ap.error(f"--sizes: {size!r} is not N, rirN[:B] or blocksN[:B]")
        want = size_family(size)
        if want and str(want) not in fams:
            ap.error(f"--sizes {size}: an IPv{want} set, but the family compared is IPv{' and IPv'.join(fams)}")
    if os.geteuid() != 0:
        sys.exit(f"{sys.argv[0]}: needs root (BPF)")
    subprocess.run(["make", "-s", "-C", str(ROOT / "bpf")], check=True)
    subprocess.run(["make", "-s", "-C", str(BENCH)], check=True)
    if sweep:
        fam = "4" if args.tree_min4 else "6"
        trees = {f"tree>{n}": (ROOT, f"{fam}:{int(n)}") for n in sweep.split(",")}
        rows = run_all(trees, args)
        meta: dict[str, Any] = {"tree_min_family": int(fam), "tree_min": [int(n) for n in sweep.split(",")]}
    else:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.base], check=True,
                             capture_output=True, text=True).stdout.strip()
        with tempfile.TemporaryDirectory(prefix="dw-compare-") as tmp:
            base = Path(tmp) / rev
            try:
                build(rev, base)
                rows = run_all({rev: (base, "-"), "this tree": (ROOT, "-")}, args)
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                               capture_output=True)
        meta = {"base": rev}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({**meta, "rounds": args.rounds, "repeat": args.repeat, "rows": rows},
                                    indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""XDP labeler cost per packet (BPF_PROG_TEST_RUN), against an empty XDP
program measured in the same run.

    sudo .venv/bin/python bench/xdp_labeler.py [--quick] [--runs N] [--repeat N]

What is measured (see bench/README.md for the why):

* ``empty``: bench/bpf/empty.bpf.c (return XDP_PASS), BPF_PROG_TEST_RUN
  repeat=N directly. The baseline.
* the labeler, run through ``bench_front`` (bench/bpf/labeler_bench.bpf.c,
  which includes bpf/labeler.bpf.c unchanged): the front resets the metadata
  area, optionally rewrites the packet's addresses from a table of distinct
  random flows (one per run), and tail-calls dw_labeler. The same front
  tail-calling an empty target is measured alternately with it; their
  difference is the labeler's own cost, ``labeler - empty``, and
  ``ns/pkt = empty + (labeler - empty)``.

Every number is a median over --runs runs of --repeat repetitions, timed by
this thread's CPU time around the syscall (sub-ns resolution; the kernel's
own per-run duration is an integer number of ns). Rule maps are filled with
exactly what dropwatch.rules.compile_rules produces for the generated rule
sets (checked equal on the small sets each run), written in batches.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import mmap
import random
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib as B

from dropwatch import abi
from dropwatch.lab import LAB_RULES
from dropwatch.libbpf import libbpf
from dropwatch import loader as loader_mod
from dropwatch.loader import Loader
from dropwatch import lpm as lpm_mod
from dropwatch.rules import Candidate, CompiledRules, _prio, compile_rules, parse_rules, result_indexes

XDP_PASS = 2
BENCH_OBJ_DIR = B.OUT / "labeler_bench"
PROD_OBJ = B.ROOT / "dropwatch" / "bpfobj" / "labeler.bpf.o"
# bench_jmp slots (bench/bpf/labeler_bench.bpf.c)
T_LABELER, T_EMPTY, T_PARSE, T_CLASSIFY, T_COUNT, T_ALT_LPM, T_ALT_DIR, T_PROBE = 0, 1, 2, 3, 4, 5, 6, 7
T_FLOOR_NONE, T_FLOOR_READ = 8, 9
FLOOR_PROGS = {T_FLOOR_NONE: ("floor_none", "lower bound: parse + count + record, no lookup"),
               T_FLOOR_READ: ("floor_read", "lower bound: + one 2-byte read (128 KB table, dst /16)")}
PROBE_SIZES_KB = (64, 256, 1024, 4096, 16384, 65536, 262144)
ALT_PROGS = {T_ALT_LPM: ("alt_lpm_trie", "LPM trie (BPF_MAP_TYPE_LPM_TRIE), 1 lookup per side"),
             T_ALT_DIR: ("alt_dir248", "DIR-24-8 (rte_lpm style: tbl24 + tbl8 arrays)")}
ALT_GROUP = 0x80000000
UDP, DPORT = 17, 443
EYEBALL, ORIGIN = int(abi.Side.EYEBALL), int(abi.Side.ORIGIN)
NEEDS_PORT = abi.DW_CAND_NEEDS_PORT
MAX_CANDS = abi.DW_MAX_CANDS


class Cfg(ctypes.Structure):
    _fields_ = [("n_flows", ctypes.c_uint32), ("l3_off", ctypes.c_uint32),
                ("family", ctypes.c_uint32), ("target", ctypes.c_uint32)]


# ---------------------------------------------------------------- frames

def frame(family: int, size: int, vlan: bool) -> tuple[bytes, int]:
    """A UDP frame to dport 443 of at least `size` bytes; returns (frame, l3 offset)."""
    eth = bytes.fromhex("020000000002020000000001")
    if vlan:
        eth += struct.pack("!HH", 0x8100, 100)
    if family == 4:
        eth += struct.pack("!H", 0x0800)
        l3len = max(28, size - len(eth))
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, l3len, 0, 0, 64, UDP, 0, bytes([198, 51, 100, 2]),
                         bytes([10, 10, 2, 1]))
        udp = struct.pack("!HHHH", 40000, DPORT, l3len - 20, 0)
    else:
        eth += struct.pack("!H", 0x86DD)
        l3len = max(48, size - len(eth))
        ip = struct.pack("!IHBB16s16s", 6 << 28, l3len - 40, UDP, 64, bytes(16), bytes(16))
        udp = struct.pack("!HHHH", 40000, DPORT, l3len - 40, 0)
    f = eth + ip + udp
    return f + b"x" * (len(eth) + l3len - len(f)), len(eth) - 0


# ---------------------------------------------------------------- rule sets

@dataclass
class Spec:
    name: str
    family: int
    size: int                 # the x of the curve: dst prefixes
    dst: dict[int, set[int]]  # prefix length -> network addresses (ints)
    src: dict[int, set[int]]
    dst_rules: int            # label rules the dst prefixes are spread over
    src_rules: int            # side rules the src prefixes are spread over
    port_prefixes: list[tuple[int, int]]  # (len, addr) dst prefixes that also get a port rule
    flows: list[tuple[int, int]] = field(default_factory=list)
    worst: bool = False
    crowded: bool = False     # rir_spec() / blocks_spec(): one frame shape, no parts

    @property
    def bits(self) -> int:
        return 32 if self.family == 4 else 128

    def n_prefixes(self) -> int:
        return sum(len(v) for v in self.dst.values()) + sum(len(v) for v in self.src.values())


def _mask(bits: int, plen: int) -> int:
    return ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)


def _rand_prefixes(rng: random.Random, bits: int, plen: int, count: int, region: tuple[int, int] = (0, 0),
                   avoid: set[int] | None = None) -> set[int]:
    """`count` distinct /plen networks inside region (rlen, rvalue)."""
    rlen, rval = region
    free = plen - rlen
    count = min(count, 1 << free) if free < 62 else count
    out: set[int] = set()
    while len(out) < count:
        a = rval | (rng.getrandbits(free) << (bits - plen)) if free else rval
        if avoid and a in avoid:
            continue
        out.add(a)
    return out


CURVE_LENS = {4: (20, 22, 24, 28), 6: (32, 40, 48, 64)}
SRC_LEN = {4: 16, 6: 32}


def curve_spec(rng: random.Random, family: int, n: int) -> Spec:
    bits = 32 if family == 4 else 128
    lens = CURVE_LENS[family]
    dst: dict[int, set[int]] = {}
    for i, plen in enumerate(lens):
        dst[plen] = _rand_prefixes(rng, bits, plen, n // len(lens) + (1 if i < n % len(lens) else 0))
    n_src = max(1, min(1000, n // 100))
    src = {SRC_LEN[family]: _rand_prefixes(rng, bits, SRC_LEN[family], n_src)}
    return _curve_rules(rng, f"v{family} {n:,}", family, n, dst, src)


def _curve_rules(rng: random.Random, name: str, family: int, n: int, dst: dict[int, set[int]],
                 src: dict[int, set[int]], crowded: bool = False) -> Spec:
    """The curve's rules over these prefixes: up to 1,000 label rules over
    dst, one side rule over src, and a port rule on 4 of the longest dst
    prefixes."""
    plen = max(dst)
    longest = sorted(dst[plen])
    ports = [(plen, a) for a in rng.sample(longest, min(4, len(longest)))]
    return Spec(name, family, n, dst, src, max(1, min(1000, n // 10)), 1, ports, crowded=crowded)


# The /16s that the RIRs allocate IPv6 from (2001::/16, 2003::/16 and the
# /12s 2400::, 2600::, 2800::, 2a00::, 2c00::): real prefix sets crowd
# into them, while curve_spec() spreads its prefixes over all 65,536.
RIR_BLOCKS = [0x2001, 0x2003, *range(0x2400, 0x2410), *range(0x2600, 0x2610), *range(0x2800, 0x2804),
              *range(0x2A00, 0x2A10), 0x2C0F]


def rir_spec(rng: random.Random, n: int, blocks: int | None = None) -> Spec:
    """curve_spec(6, n)'s shape (the same lengths, rules and port rules),
    but every prefix in one of the RIR_BLOCKS /16s: 55 /16s of about 1,800
    prefixes each, so each /16 is a tree of thousands of ranges. With
    ``blocks``, in that many random /16s of 2000::/3 (global unicast)
    instead: how crowded the /16s are (bench/compare.py's tree threshold
    sweep)."""
    pool = RIR_BLOCKS if blocks is None else rng.sample(range(0x2000, 0x4000), blocks)
    lens = CURVE_LENS[6]
    dst: dict[int, set[int]] = {plen: set() for plen in lens}
    for i, plen in enumerate(lens):
        want = n // len(lens) + (1 if i < n % len(lens) else 0)
        while len(dst[plen]) < want:
            dst[plen] |= _rand_prefixes(rng, 128, plen, 1, (16, rng.choice(pool) << 112))
    src: dict[int, set[int]] = {SRC_LEN[6]: set()}
    while len(src[SRC_LEN[6]]) < max(1, min(1000, n // 100)):
        src[SRC_LEN[6]] |= _rand_prefixes(rng, 128, SRC_LEN[6], 1, (16, rng.choice(pool) << 112))
    name = f"v6 {n:,} in RIR /16s" if blocks is None else f"v6 {n:,} in {blocks} /16s"
    return _curve_rules(rng, name, 6, n, dst, src, crowded=True)


def blocks_spec(rng: random.Random, n: int, blocks: int = 300) -> Spec:
    """IPv4 the way origin-side sets crowd: n destination prefixes (/24,
    /28, twice as many /32s: servers) inside ``blocks`` random /16s, as
    hosting and cloud providers' blocks hold their customers' servers; the
    curve's source prefixes, rules and port rules."""
    chosen = rng.sample(range(1 << 16), blocks)
    lens = (24, 28, 32, 32)
    dst: dict[int, set[int]] = {plen: set() for plen in lens}
    while sum(len(v) for v in dst.values()) < n:
        plen = rng.choice(lens)
        dst[plen] |= _rand_prefixes(rng, 32, plen, 1, (16, rng.choice(chosen) << 16))
    src = {SRC_LEN[4]: _rand_prefixes(rng, 32, SRC_LEN[4], max(1, min(1000, n // 100)))}
    return _curve_rules(rng, f"v4 {n:,} in {blocks} /16s", 4, n, dst, src, crowded=True)


def worst_spec(rng: random.Random, family: int, per_len: int) -> Spec:
    """As many hash probes per packet as the design allows, with every probe
    but the last missing.

    IPv4 (33 lengths): in each of 4,096 /16 blocks a chain of nested prefixes
    /17../32 at the block's start, prefixes /1../16 elsewhere (so every length
    is in use) and 0.0.0.0/0; flows come from the blocks' upper halves, so a
    per-length lookup misses every length but /0: 33 probes per side without
    a per-block length filter, 17 (/32../17, then /0) with one.
    IPv6 (/48-/128): prefixes at every length inside 2001:db8::/32, flows
    from 2001:db9::/32: 81 misses per side."""
    dst: dict[int, set[int]] = {}
    src: dict[int, set[int]] = {}
    chain_blocks: dict[str, list[int]] = {}
    if family == 4:
        for name, sets in (("dst", dst), ("src", src)):
            blocks = rng.sample(range(1 << 15, 1 << 16), 4096)  # inside 128/1
            chain_blocks[name] = blocks
            sets[0] = {0}
            for plen in range(1, 17):  # inside 0/1: never covers a chain block
                sets[plen] = _rand_prefixes(rng, 32, plen, min(per_len, 1 << (plen - 1)), (1, 0))
            for plen in range(17, 33):
                sets[plen] = {b << 16 for b in blocks}
        name = "v4 worst /0-/32"
    else:
        region = (32, 0x20010DB8 << 96)
        for plen in range(48, 129):
            dst[plen] = _rand_prefixes(rng, 128, plen, per_len, region)
            src[plen] = _rand_prefixes(rng, 128, plen, per_len, region)
        name = "v6 worst /48-/128"
    sp = Spec(name, family, sum(len(v) for v in dst.values()), dst, src, 4, 4, [], worst=True)
    sp.chain_blocks = chain_blocks  # type: ignore[attr-defined]
    return sp


def deep_spec(rng: random.Random, blocks: int = 4) -> Spec:
    """The largest /16s the IPv4 tables allow: per side, ``blocks`` /16s
    each holding every other /32 (32,768 prefixes, so 65,536 ranges, 256
    KB: 16 halvings per lookup until session 6, since session 7 a tree of 3
    levels and a leaf line)."""
    dst: dict[int, set[int]] = {}
    src: dict[int, set[int]] = {}
    chain_blocks: dict[str, list[int]] = {}
    for name, sets in (("dst", dst), ("src", src)):
        bl = rng.sample(range(1 << 15, 1 << 16), blocks)
        chain_blocks[name] = bl
        sets[32] = {(b << 16) | i for b in bl for i in range(0, 1 << 16, 2)}
    sp = Spec("v4 worst 2^16-range chunks", 4, len(dst[32]), dst, src, 4, 4, [], worst=True)
    sp.chain_blocks = chain_blocks  # type: ignore[attr-defined]
    return sp


def table_bytes(comp: Compiled) -> int:
    """What one generation of the set occupies in the labeler's tables:
    bitmaps, direct tables, ranges and small chunks, and the results and
    their answers in use."""
    lists = sum(1 for _, cands in comp.results if len(cands) > 1)
    return comp.lpm.nbytes() + (len(comp.results) - 1) * (ctypes.sizeof(abi.LpmRes) + ctypes.sizeof(abi.LpmAns)) \
        + lists * ctypes.sizeof(abi.CandList)


def rules_dict(spec: Spec) -> dict[str, Any]:
    """The spec as a rules file (only used to check against compile_rules)."""
    import ipaddress
    net = ipaddress.IPv4Network if spec.family == 4 else ipaddress.IPv6Network

    def cidr(plen: int, a: int) -> str:
        return str(net((a, plen)))

    rules: list[dict[str, Any]] = []
    dsts = sorted((p, a) for p, s in spec.dst.items() for a in s)
    for i in range(spec.dst_rules):
        rules.append({"label": f"c{i}", "dst": [cidr(p, a) for p, a in dsts[i::spec.dst_rules]]})
    for i, (p, a) in enumerate(spec.port_prefixes):
        rules.append({"label": f"p{i}", "proto": "udp", "dport": [443, "5000-5999"], "dst": [cidr(p, a)]})
    srcs = sorted((p, a) for p, s in spec.src.items() for a in s)
    for i in range(spec.src_rules):
        rules.append({"side": "origin", "src": [cidr(p, a) for p, a in srcs[i::spec.src_rules]]})
    return {"rules": rules, "default_side": "eyeball"}


def label_ids(spec: Spec) -> dict[str, int]:
    ids = {f"c{i}": i + 1 for i in range(spec.dst_rules)}
    ids.update({f"p{i}": spec.dst_rules + 1 + i for i in range(len(spec.port_prefixes))})
    return ids


CandT = tuple[int, int, int, int, int, int, int, int]  # Candidate's fields, in order


@dataclass
class Compiled:
    prefixes: dict[tuple[int, int, int], tuple[int, list[CandT]]]  # (fd, plen, addr) -> (pid, cands)
    plens: dict[int, list[int]]
    # Filled by compile_fast via dropwatch.rules.result_indexes and
    # dropwatch.lpm.build, the daemon's own code, on our ints.
    results: list[tuple[int, list[Candidate]]] = field(default_factory=list)
    lpm: lpm_mod.LpmTables = field(default_factory=lpm_mod.LpmTables)


def compile_fast(spec: Spec) -> Compiled:
    """compile_rules' result for the spec's rule shape, computed on ints.
    Rule order as in rules_dict(): dst label rules, port rules, src side rules."""
    bits = spec.bits
    fd_src = abi.DW_FD_V4_SRC if spec.family == 4 else abi.DW_FD_V6_SRC
    fd_dst = fd_src + 1
    own: dict[tuple[int, int, int], list[CandT]] = {}
    dsts = sorted((p, a) for p, s in spec.dst.items() for a in s)
    for i, (p, a) in enumerate(dsts):
        rule = i % spec.dst_rules
        own[(fd_dst, p, a)] = [(rule + 1, 0, 0, 0, 0xFFFF, _prio(p, False, False, rule), rule, 0)]
    for i, (p, a) in enumerate(spec.port_prefixes):
        rule = spec.dst_rules + i
        lid = spec.dst_rules + 1 + i
        pr = _prio(p, True, True, rule)
        own[(fd_dst, p, a)] += [(lid, 0, UDP, 443, 443, pr, rule, NEEDS_PORT),
                                (lid, 0, UDP, 5000, 5999, pr, rule, NEEDS_PORT)]
    srcs = sorted((p, a) for p, s in spec.src.items() for a in s)
    base = spec.dst_rules + len(spec.port_prefixes)
    for i, (p, a) in enumerate(srcs):
        rule = base + i % spec.src_rules
        own[(fd_src, p, a)] = [(0, ORIGIN, 0, 0, 0xFFFF, _prio(p, False, False, rule), rule, 0)]

    out = Compiled({}, {})
    pid = 0
    for fd, sets in sorted(((fd_src, spec.src), (fd_dst, spec.dst))):
        lens = sorted(sets, reverse=True)
        out.plens[fd] = lens
        masks = {p: _mask(bits, p) for p in lens}
        for p, a in sorted((p, a) for p, s in sets.items() for a in s):
            pid += 1
            cands = list(own[(fd, p, a)])
            for q in lens:
                if q < p:
                    sup = a & masks[q]
                    if sup in sets[q]:
                        cands += own[(fd, q, sup)]
            if len(cands) > 1:
                best: dict[tuple[int, int, int], CandT] = {}
                for c in cands:
                    k = (c[6], c[3], c[4])
                    if k not in best or c[5] < best[k][5]:
                        best[k] = c
                cands = sorted(best.values(), key=lambda c: c[5])
            if len(cands) > MAX_CANDS:
                raise ValueError(f"{spec.name}: {len(cands)} candidates for one prefix")
            out.prefixes[(fd, p, a)] = (pid, cands)
    # No src+dst rules here: no prefix keeps its id. Results dedupe on the
    # candidate tuples; the tables come from the daemon's own builder.
    keyed = {k: (pid, [Candidate(*c) for c in cands]) for k, (pid, cands) in out.prefixes.items()}
    out.results, idx = result_indexes(keyed, set())  # type: ignore[arg-type]
    out.lpm = lpm_mod.build((fd, p, a, i) for (fd, p, a), i in zip(out.prefixes, idx, strict=True))
    return out


def to_compiled_rules(spec: Spec, fast: Compiled, with_prefixes: bool) -> CompiledRules:
    """dropwatch.rules.CompiledRules with our contents (prefixes optional)."""
    c = CompiledRules(plens={k: v for k, v in fast.plens.items() if v}, default_side=EYEBALL,
                      label_ids=label_ids(spec), results=fast.results, lpm=fast.lpm)
    if with_prefixes:
        nb = spec.bits // 8
        c.prefixes = {(fd, p, a.to_bytes(nb, "big").ljust(16, b"\0")): (pid, [Candidate(*x) for x in cands])
                      for (fd, p, a), (pid, cands) in fast.prefixes.items()}
    return c


def check_against_compile_rules(spec: Spec, fast: Compiled) -> None:
    """The maps the bench writes must hold what the daemon would write:
    every field of compile_rules' result must equal ours."""
    ref = compile_rules(parse_rules(rules_dict(spec)), label_ids(spec))
    mine = to_compiled_rules(spec, fast, with_prefixes=True)
    for f in dataclasses.fields(CompiledRules):
        if f.name == "rule_targets":
            continue
        a, b = getattr(mine, f.name), getattr(ref, f.name)
        if f.name == "plens":
            a, b = {k: v for k, v in a.items() if v}, {k: v for k, v in b.items() if v}
        if a != b:
            raise SystemExit(f"{spec.name}: the bench's rule compiler disagrees with dropwatch.rules.compile_rules "
                             f"on CompiledRules.{f.name}: update compile_fast() in {__file__}")


# ---------------------------------------------------------------- flows

def make_flows(rng: random.Random, spec: Spec, n: int) -> list[tuple[int, int]]:
    bits = spec.bits
    flows: set[tuple[int, int]] = set()
    if spec.worst and spec.family == 4:  # upper halves of the chain blocks: only /0 matches
        sb, db = spec.chain_blocks["src"], spec.chain_blocks["dst"]  # type: ignore[attr-defined]
        while len(flows) < n:
            flows.add(((rng.choice(sb) << 16) | 0x8000 | rng.getrandbits(15),
                       (rng.choice(db) << 16) | 0x8000 | rng.getrandbits(15)))
        return list(flows)
    if spec.worst:  # inside a prefix longer than /64: both range searches run, on the largest chunk
        deep = {w: [(p, a) for p, s in getattr(spec, w).items() if p > 64 for a in s] for w in ("src", "dst")}
        while len(flows) < n:
            (sp, sa), (dp, da) = rng.choice(deep["src"]), rng.choice(deep["dst"])
            flows.add((sa | rng.getrandbits(128 - sp), da | rng.getrandbits(128 - dp)))
        return list(flows)
    dsts = [(p, a) for p, s in spec.dst.items() for a in s]
    srcs = [(p, a) for p, s in spec.src.items() for a in s]
    while len(flows) < n:
        if rng.random() < 0.9:
            p, a = rng.choice(dsts)
            d = a | rng.getrandbits(bits - p)
        else:
            d = rng.getrandbits(bits)
        if rng.random() < 0.1:
            p, a = rng.choice(srcs)
            s = a | rng.getrandbits(bits - p)
        else:
            s = rng.getrandbits(bits)
        flows.add((s, d))
    out = list(flows)
    rng.shuffle(out)
    return out


def expect(spec: Spec, comp: Compiled, flows: list[tuple[int, int]]) -> tuple[dict[int, int], float]:
    """Reference classification of each flow (UDP to 443) by the longest
    matching prefix found by plain masking (not the tables): packets per
    label id, and mean table reads per packet (src + dst: direct-table
    entries plus binary-search probes, from dropwatch.lpm.lookup's walk)."""
    bits = spec.bits
    fd_src = abi.DW_FD_V4_SRC if spec.family == 4 else abi.DW_FD_V6_SRC
    masks = {p: _mask(bits, p) for p in range(bits + 1)}
    pfx = comp.prefixes
    per_label: dict[int, int] = {}
    reads = [0]
    for s, d in flows:
        label, lprio = 0, 1 << 32
        for fd, addr in ((fd_src, s), (fd_src + 1, d)):
            lpm_mod.lookup(comp.lpm, fd, addr, reads)
            for p in comp.plens.get(fd, []):
                hit = pfx.get((fd, p, addr & masks[p]))
                if hit:
                    for c in hit[1]:
                        if c[2] and c[2] != UDP:
                            continue
                        if c[7] & NEEDS_PORT and not (c[3] <= DPORT <= c[4]):
                            continue
                        if c[0] and c[5] < lprio:
                            label, lprio = c[0], c[5]
                    break
        per_label[label] = per_label.get(label, 0) + 1
    return per_label, reads[0] / max(1, len(flows))


# ---------------------------------------------------------------- loading

# The rules' flow_fallback mode for every set (--flow-mode).
FLOW_MODE = "encap"


def load_rules(ld: Loader, spec: Spec, comp: Compiled) -> float:
    """Write the compiled rules with Loader.apply_rules, unchanged, at every
    size: the tables go into the kernel through mmap (one copy per array)
    and are read back the same way; returns apply_rules' seconds."""
    c = to_compiled_rules(spec, comp, with_prefixes=True)
    c.flow_mode = int(abi.FlowMode[FLOW_MODE.upper()])
    t0 = time.monotonic()
    ld.apply_rules(c)
    return time.monotonic() - t0


def load_flows(ld: Loader, spec: Spec, flows: list[tuple[int, int]]) -> None:
    n = len(flows)
    keys = struct.pack(f"<{n}I", *range(n))
    nb = spec.bits // 8
    vals = b"".join(s.to_bytes(nb, "big") + d.to_bytes(nb, "big") for s, d in flows)
    name = "bench_flows4" if spec.family == 4 else "bench_flows6"
    B.update_batch(ld.lib, ld.labeler.maps[name], keys, vals, 4, 2 * nb)  # type: ignore[union-attr]


def load_alternatives(ld: Loader, spec: Spec, comp: Compiled) -> float:
    """Fill the alternative classifiers' maps (bench/bpf/labeler_bench.bpf.c)
    with the same prefix ids and candidate lists. IPv4 only."""
    from array import array
    t0 = time.monotonic()
    lib, maps = ld.lib, ld.labeler.maps  # type: ignore[union-attr]
    pids = sorted(pid for pid, _ in comp.prefixes.values())
    cl = {pid: bytes(loader_mod._cand_list([Candidate(*c) for c in cands], pid))
          for pid, cands in comp.prefixes.values()}
    B.update_batch(lib, maps["alt_cands"], struct.pack(f"<{len(pids)}I", *pids), b"".join(cl[p] for p in pids),
                   4, ctypes.sizeof(abi.CandList))

    class LpmKey(ctypes.Structure):
        _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 4)]
    for (fd, p, a), (pid, _) in comp.prefixes.items():
        k = LpmKey(prefixlen=p)
        ctypes.memmove(k.addr, a.to_bytes(4, "big"), 4)
        lib.map_update(maps["alt_lpm_src" if fd == abi.DW_FD_V4_SRC else "alt_lpm_dst"], k, ctypes.c_uint32(pid))

    for fd, side in ((abi.DW_FD_V4_SRC, "src"), (abi.DW_FD_V4_DST, "dst")):
        tbl24 = array("I", bytes(4 << 24))
        groups: list[array] = []
        for (f, p, a), (pid, _) in sorted(comp.prefixes.items(), key=lambda kv: kv[0][1]):  # shortest first
            if f != fd:
                continue
            if p <= 24:
                n = 1 << (24 - p)
                tbl24[a >> 8:(a >> 8) + n] = array("I", [pid]) * n
            else:
                i = a >> 8
                if tbl24[i] & ALT_GROUP:
                    g = tbl24[i] & ~ALT_GROUP
                else:
                    g = len(groups)
                    groups.append(array("I", [tbl24[i]]) * 256)
                    tbl24[i] = ALT_GROUP | g
                n = 1 << (32 - p)
                groups[g][a & 255:(a & 255) + n] = array("I", [pid]) * n
        lines = 1 << 20
        B.update_batch(lib, maps[f"alt_tbl24_{side}"], array("I", range(lines)).tobytes(), tbl24.tobytes(), 4, 64)
        if groups:
            B.update_batch(lib, maps[f"alt_tbl8_{side}"], array("I", range(len(groups))).tobytes(),
                           b"".join(g.tobytes() for g in groups), 4, 1024)
    return time.monotonic() - t0


def fill_floor(ld: Loader, spec: Spec, comp: Compiled) -> Any:
    """floor_read's table: a label for every /16 that holds a destination
    prefix (spread over the set's labels, so the counters it touches are as
    many as the labeler's), 0 elsewhere. Returns it (an array of u16)."""
    from array import array
    rng = random.Random(7)
    tbl = array("H", bytes(2 << 16))
    fd_dst = abi.DW_FD_V4_DST if spec.family == 4 else abi.DW_FD_V6_DST
    for (fd, _p, a) in comp.prefixes:
        if fd == fd_dst:
            tbl[a >> (spec.bits - 16)] = rng.randint(1, max(1, spec.dst_rules))
    map_fd = ld.labeler.maps["floor_tbl"]  # type: ignore[union-attr]
    mm = mmap.mmap(map_fd, len(tbl) * 2, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        mm[:] = tbl.tobytes()
    finally:
        mm.close()
    return tbl


# ---------------------------------------------------------------- running

class Bench:
    def __init__(self, repeat: int, runs: int) -> None:
        self.lib = libbpf()
        self.repeat = repeat
        self.runs = runs
        obj = self.lib.open_object(B.OUT / "empty.bpf.o")
        self.lib.load_object(obj)
        self.empty_obj = obj
        self.empty_fd = self.lib.program_fd(self.lib.find_program(obj, "bench_empty"))

    def time_run(self, prog_fd: int, data: bytes, repeat: int | None = None) -> float:
        """ns per repetition: this thread's CPU time around one BPF_PROG_TEST_RUN."""
        rep = repeat or self.repeat
        t0 = time.thread_time_ns()
        ret, _, _, _ = self.lib.test_run(prog_fd, data, repeat=rep)
        t1 = time.thread_time_ns()
        if ret != XDP_PASS:
            raise SystemExit(f"test run returned {ret}, not XDP_PASS: a tail call failed?")
        return (t1 - t0) / rep

    def interleaved(self, variants: dict[Any, tuple[Any, ...]], runs: int | None = None) -> Rounds:
        """variants: name -> (callable setting up, prog_fd, data). Every
        round runs each variant once, in a shuffled order, so that the
        machine's slow phases (other guests on this core) fall on all of
        them alike."""
        res: dict[Any, list[float]] = {k: [] for k in variants}
        for order in B.round_orders(list(variants), runs or self.runs):
            for name in order:
                setup, fd, data = variants[name]
                setup()
                res[name].append(self.time_run(fd, data))
        return Rounds(res)


class Rounds(dict[Any, float]):
    """Per-round ns/packet of interleaved variants; r[name] is the median.
    d(a, b) is the median over rounds of a - b measured in the same round:
    a slow phase of the machine (this VM's core is shared; it can run 1.5-2x
    slower for seconds) moves both, so their difference is steadier than a
    difference of medians. best(a, b) = min(a) - min(b): the least disturbed
    run of each."""

    def __init__(self, rounds: dict[Any, list[float]]) -> None:
        super().__init__({k: B.median(v) for k, v in rounds.items()})
        self.rounds = rounds

    def d(self, a: Any, b: Any) -> float:
        return B.median([x - y for x, y in zip(self.rounds[a], self.rounds[b], strict=True)])

    def best(self, a: Any, b: Any) -> float:
        return min(self.rounds[a]) - min(self.rounds[b])


class Front:
    """The bench object loaded by the real Loader, with its tail-call slots."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        # Range arrays large enough for the 10^6-prefix sets.
        self.ld = Loader(obj_dir=BENCH_OBJ_DIR, lib=lib, lpm4_entries=1 << 23, lpm6_entries=6 << 20)
        self.ld.load()
        assert self.ld.labeler is not None
        self.maps = self.ld.labeler.maps
        progs = dict(lib.programs(self.ld.labeler.obj))
        self.fd = {name: lib.program_fd(p) for name, p in progs.items()}
        for slot, name in ((T_LABELER, "dw_labeler"), (T_EMPTY, "bench_target_empty"), (T_PARSE, "part_parse"),
                           (T_CLASSIFY, "part_classify"), (T_COUNT, "part_count"),
                           (T_ALT_LPM, "alt_lpm_trie"), (T_ALT_DIR, "alt_dir248"), (T_PROBE, "probe_chain"),
                           (T_FLOOR_NONE, "floor_none"), (T_FLOOR_READ, "floor_read")):
            lib.map_update(self.maps["bench_jmp"], ctypes.c_uint32(slot), ctypes.c_uint32(self.fd[name]))

    def cfg(self, n_flows: int, l3_off: int, family: int, target: int) -> None:
        self.lib.map_update(self.maps["bench_cfg"], ctypes.c_uint32(0), Cfg(n_flows, l3_off, family, target))

    def reset_cursor(self) -> None:
        self.lib.map_update(self.maps["bench_cursor"], ctypes.c_uint32(0), (ctypes.c_uint64 * self.ld.ncpus)())

    def close(self) -> None:
        self.ld.close()


def count_pass(bench: Bench, front: Front, spec: Spec, n_flows: int, n_check: int, target: int, data: bytes,
               l3: int) -> dict[int, int]:
    """Run `target` once over the first n_check flows; packets per label id
    from the labeler's own dw_pkt_counts."""
    front.reset_cursor()
    front.cfg(n_flows, l3, spec.family, target)
    before = front.ld.read_packets(spec.dst_rules + 8)
    bench.time_run(front.fd["bench_front"], data, repeat=n_check)
    after = front.ld.read_packets(spec.dst_rules + 8)
    got: dict[int, int] = {}
    for (lid, side, pop), (pk, _by) in after.items():
        d = pk - before.get((lid, side, pop), (0, 0))[0]
        if d:
            got[lid] = got.get(lid, 0) + d
    return got


def same_code(a: Path, b: Path, sym: str) -> bool | None:
    """Are the instructions of `sym` byte-identical in two objects? None: cannot tell."""
    def code(o: Path) -> bytes | None:
        try:
            nm = subprocess.run(["llvm-nm", "-S", str(o)], capture_output=True, text=True, check=True).stdout
            off, size = next((int(p[0], 16), int(p[1], 16)) for p in (ln.split() for ln in nm.splitlines())
                             if len(p) == 4 and p[3] == sym)
            tmp = B.OUT / f".{o.parent.name}.{sym}.xdp"
            subprocess.run(["llvm-objcopy", "--dump-section", f"xdp={tmp}", str(o), str(B.OUT / ".scratch.o")],
                           capture_output=True, check=True)
            data = tmp.read_bytes()[off:off + size]
            tmp.unlink()
            (B.OUT / ".scratch.o").unlink(missing_ok=True)
            return data
        except (OSError, subprocess.CalledProcessError, StopIteration):
            return None
    ca, cb = code(a), code(b)
    return None if ca is None or cb is None else ca == cb


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="no 1M sets, one frame shape per size, worst cases with 100k flows only, no memory probe")
    ap.add_argument("--runs", type=int, help="runs per number, median taken (default 3)")
    ap.add_argument("--repeat", type=int, default=1_000_000, help="BPF_PROG_TEST_RUN repeat (default 1,000,000)")
    ap.add_argument("--flows", type=int, default=100_000, help="distinct random flows (default 100,000)")
    ap.add_argument("--sizes", default="10,1000,100000,1000000", help="dst prefix counts of the curve")
    ap.add_argument("--no-worst", action="store_true", help="skip the worst-case rule sets")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--flow-mode", choices=["off", "encap", "all"], default="encap",
                    help="the rules' flow_fallback mode (default encap, the daemon's default; all: every "
                         "packet also updates the flow-fallback map)")
    ap.add_argument("--json", type=Path, default=B.OUT / "xdp_labeler.json")
    args = ap.parse_args()
    global FLOW_MODE
    FLOW_MODE = args.flow_mode
    B.need_root()
    runs = args.runs or 3
    if args.repeat < 1_000_000 or runs < 3:
        print("note: below the issue's minimum (repeat >= 1,000,000, >= 3 runs)", file=sys.stderr)
    sizes = [int(x) for x in args.sizes.split(",") if x]
    if args.quick:
        sizes = [s for s in sizes if s <= 100_000]
    B.build()
    cpu = B.pin_cpu()
    t_start = time.monotonic()
    bench = Bench(args.repeat, runs)
    lib = bench.lib
    rng = random.Random(args.seed)
    results: dict[str, Any] = {"repeat": args.repeat, "runs": runs, "flows": args.flows, "cpu": cpu, "rows": [],
                               "flow_mode": args.flow_mode}

    ident = same_code(PROD_OBJ, BENCH_OBJ_DIR / "labeler.bpf.o", "dw_labeler")
    print(f"BPF_PROG_TEST_RUN, repeat {args.repeat:,}, median of {runs} runs, pinned to CPU {cpu}, "
          f"{args.flows:,} flows")
    print("bench build's dw_labeler vs dropwatch/bpfobj/labeler.bpf.o: "
          + {True: "byte-identical code", False: "DIFFERENT code (rebuild: make -C bpf)",
             None: "not compared (llvm-nm/llvm-objcopy missing)"}[ident])
    results["labeler_code_identical"] = ident

    shapes = [(fam, size, vlan) for fam in (4, 6) for size in (64, 1500) for vlan in (False, True)]
    frames = {s: frame(*s) for s in shapes}
    empty = {s: B.median([bench.time_run(bench.empty_fd, frames[s][0]) for _ in range(runs)]) for s in shapes}

    # ---- reference: the production object run directly, as BPF_PROG_TEST_RUN does it
    with Loader(lib=lib) as prod:
        prod.load()
        prod.apply_rules(compile_rules(parse_rules(LAB_RULES), {"customerX": 1, "customerY": 2}))
        f4 = frames[(4, 64, False)][0]
        direct = B.median([bench.time_run(prod.labeler_prog_fd, f4) for _ in range(runs)])
        st = prod.read_stats("labeler")
        failed = st.get(abi.Stat.XDP_META_FAILED, 0) / (runs * args.repeat)

    front = Front(lib)
    rows: list[list[Any]] = []
    parts_rows: list[list[Any]] = []
    alt_rows: list[list[Any]] = []
    probe_rows: list[list[Any]] = []
    overhead: dict[int, dict[str, float]] = {}
    try:
        specs: list[Spec] = []
        for fam in (4, 6):
            for n in sizes:
                specs.append(curve_spec(rng, fam, n))
            if 100_000 in sizes:
                specs.append(rir_spec(rng, 100_000) if fam == 6 else blocks_spec(rng, 100_000))
            if not args.no_worst:
                specs.append(worst_spec(rng, fam, 3000 if fam == 4 else 1200))
                if fam == 4:
                    specs.append(deep_spec(rng))
        for spec in specs:
            t0 = time.monotonic()
            comp = compile_fast(spec)
            if spec.n_prefixes() <= 2000:
                check_against_compile_rules(spec, comp)
            front.close()
            front = Front(lib)
            load_s = load_rules(front.ld, spec, comp)
            flows = make_flows(rng, spec, args.flows)
            load_flows(front.ld, spec, flows)
            prep_s = time.monotonic() - t0

            # One pass over (a prefix of) the flow table, through the real
            # labeler: its own per-label packet counters must equal the reference.
            n_check = min(len(flows), 20_000 if spec.worst else len(flows))
            want, probes = expect(spec, comp, flows[:n_check])
            fam_shape = (spec.family, 64, False)
            data, l3 = frames[fam_shape]
            got = count_pass(bench, front, spec, len(flows), n_check, T_LABELER, data, l3)
            if got != want:
                raise SystemExit(f"{spec.name}: labeler's per-label counts over one pass of the flow table "
                                 f"differ from the reference ({sum(got.values())} vs {sum(want.values())} packets)")
            labeled = 1 - want.get(0, 0) / n_check

            my_shapes = [fam_shape] if (spec.worst or spec.crowded or spec.size != 100_000 or args.quick) else \
                [s for s in shapes if s[0] == spec.family]
            for shape in my_shapes:
                data, l3 = frames[shape]
                # Worst-case sets run up to 20 us per packet: a fifth of the repeats.
                worst_div = 10 if args.quick else 5
                bench.repeat = max(100_000, args.repeat // worst_div) if spec.worst else args.repeat
                modes = (0, len(flows)) if shape == fam_shape and not (args.quick and spec.worst) else (len(flows),)
                for nfl in modes:
                    def setter(target: int, nfl: int = nfl, l3: int = l3, fr: Front = front, fam: int = spec.family) \
                            -> Any:
                        return lambda: fr.cfg(nfl, l3, fam, target)
                    variants = {"empty": (lambda: None, bench.empty_fd, data),
                                "base": (setter(T_EMPTY), front.fd["bench_front"], data),
                                "lab": (setter(T_LABELER), front.fd["bench_front"], data)}
                    want_parts = shape == fam_shape and not spec.worst and not spec.crowded and \
                        spec.size in ((100_000,) if args.quick else (10, 100_000))
                    if want_parts:
                        for nm, t in (("parse", T_PARSE), ("classify", T_CLASSIFY), ("count", T_COUNT)):
                            variants[nm] = (setter(t), front.fd["bench_front"], data)
                    r = bench.interleaved(variants, runs=max(runs, 5) if want_parts else None)
                    delta, best = r.d("lab", "base"), r.best("lab", "base")
                    ns = r["empty"] + delta
                    row = {"ruleset": spec.name, "family": spec.family, "prefixes": spec.n_prefixes(),
                           "dst_prefixes": spec.size, "crowded": spec.crowded, "frame": len(data), "vlan": shape[2],
                           "flows": nfl or 1, "empty_ns": r["empty"], "front_empty_ns": r["base"],
                           "front_labeler_ns": r["lab"], "labeler_minus_empty_ns": delta, "ns_per_pkt": ns,
                           "labeler_minus_empty_ns_best": best,
                           "ns_per_pkt_best": min(r.rounds["empty"]) + best, "runs": len(r.rounds["lab"]),
                           "ratio": ns / r["empty"], "probes_per_pkt": probes if nfl else None,
                           "labeled_share": labeled if nfl else None, "load_s": load_s, "prep_s": prep_s,
                           "table_bytes": table_bytes(comp),
                           "bytes_per_prefix": table_bytes(comp) / max(1, spec.n_prefixes()),
                           "repeat": bench.repeat}
                    results["rows"].append(row)
                    rows.append([spec.name, f"{spec.n_prefixes():,}", f"{len(data)}{' vlan' if shape[2] else ''}",
                                 f"{nfl:,}" if nfl else "1", B.fmt(ns), B.fmt(delta), B.fmt(best),
                                 f"{ns / r['empty']:.2f}",
                                 B.fmt(probes if nfl else None), f"{labeled:.0%}" if nfl else "-",
                                 f"{table_bytes(comp) / max(1, spec.n_prefixes()):.1f}"])
                    if want_parts:
                        p = {"parse": r.d("parse", "base"), "classify": r.d("classify", "parse"),
                             "count+stat": r.d("count", "classify"), "record write": r.d("lab", "count")}
                        results.setdefault("parts", {})[f"{spec.name}, {nfl or 1} flows"] = p
                        parts_rows.append([spec.name, f"{nfl:,}" if nfl else "1", B.fmt(p["parse"]),
                                           B.fmt(p["classify"]),
                                           B.fmt(p["count+stat"]), B.fmt(p["record write"]), B.fmt(delta),
                                           B.fmt(probes if nfl else None)])
                    if shape == fam_shape and not spec.worst and spec.family not in overhead:
                        # The front's own cost: metadata reset + tail call, and the rewrite.
                        o = bench.interleaved({k: (setter(T_EMPTY, k), front.fd["bench_front"], data)
                                               for k in (0, len(flows))})
                        o0, o1 = o[0], o[len(flows)]
                        overhead[spec.family] = {"reset_and_tail_call_ns": o0 - empty[shape],
                                                 "rewrite_ns": o1 - o0}
            bench.repeat = args.repeat
            if (spec.size == 100_000 and not spec.worst and not spec.crowded
                    and (spec.family == 4 or not args.quick)):
                # IPv4: the alternative classifiers and the lower bounds; IPv6
                # (not with --quick, to stay within its 3 minutes): the lower
                # bounds, which say how much of its absolute target parse,
                # counters and record leave to a lookup.
                data, l3 = frames[fam_shape]
                progs = dict(FLOOR_PROGS)
                if spec.family == 4:
                    alt_s = load_alternatives(front.ld, spec, comp)
                    for t, (prog, _desc) in ALT_PROGS.items():
                        if count_pass(bench, front, spec, len(flows), n_check, t, data, l3) != want:
                            raise SystemExit(f"{prog}: per-label counts differ from the reference")
                    progs = {**ALT_PROGS, **FLOOR_PROGS}
                # floor_read is no classifier, but it must read the table it is given.
                floor = fill_floor(front.ld, spec, comp)
                want_floor: dict[int, int] = {}
                for _s, d in flows[:n_check]:
                    lid = floor[d >> (spec.bits - 16)]
                    want_floor[lid] = want_floor.get(lid, 0) + 1
                if count_pass(bench, front, spec, len(flows), n_check, T_FLOOR_READ, data, l3) != want_floor:
                    raise SystemExit("floor_read: per-label counts differ from its table's")
                fam = "" if spec.family == 4 else "_v6"
                for nfl in (0, len(flows)):
                    alt_variants: dict[Any, tuple[Any, ...]] = {"empty": (lambda: None, bench.empty_fd, data)}
                    for nm, t in [("base", T_EMPTY), ("lab", T_LABELER)] + [(t, t) for t in progs]:
                        alt_variants[nm] = ((lambda t=t, nfl=nfl, fr=front, l3=l3, f=spec.family:
                                             fr.cfg(nfl, l3, f, t)), front.fd["bench_front"], data)
                    r = bench.interleaved(alt_variants)
                    named: list[tuple[Any, tuple[str, str]]] = [("lab", ("dw_labeler", "dropwatch (this build)"))]
                    for key, (prog, desc) in named + list(progs.items()):
                        delta = r.d(key, "base")
                        ns = r["empty"] + delta
                        alt_rows.append([f"IPv{spec.family}: {desc}", f"{nfl:,}" if nfl else "1", B.fmt(ns),
                                         B.fmt(delta), f"{ns / r['empty']:.2f}"])
                        results.setdefault("alternatives", []).append(
                            {"program": prog, "family": spec.family, "flows": nfl or 1, "ns_per_pkt": ns,
                             "minus_empty_ns": delta})
                        if prog == "alt_lpm_trie" and nfl:
                            results["xdp_lpm_trie_ns_per_pkt_100k"] = ns
                        if prog in ("floor_none", "floor_read"):
                            results[f"xdp{fam}_{prog}_minus_empty_ns{'_100k_flows' if nfl else '_1_flow'}"] = delta
                if spec.family == 4:
                    print(f"  alternatives loaded in {alt_s:.1f}s; per-label counts == reference "
                          "(floor_read: == its table)", file=sys.stderr)
            if spec.family == 4 and spec.size == 100_000 and not spec.worst and not spec.crowded:
                # What one dependent random access costs, by working-set size.
                for kb in (() if args.quick else PROBE_SIZES_KB):
                    lines = kb * 1024 // 64
                    lib.map_update(front.maps["probe_cfg"], ctypes.c_uint32(0), ctypes.c_uint32(lines - 1))

                    def chain(n: int, fr: Front = front, nfl: int = len(flows), l3: int = l3) -> Any:
                        def setup() -> None:
                            lib.map_update(fr.maps["probe_cfg"], ctypes.c_uint32(1), ctypes.c_uint32(n))
                            fr.cfg(nfl, l3, 4, T_PROBE)
                        return setup
                    r = bench.interleaved({0: (chain(0), front.fd["bench_front"], data),
                                           4: (chain(4), front.fd["bench_front"], data)}, runs=3)
                    per = (r[4] - r[0]) / 4
                    probe_rows.append([f"{kb:,} KB", B.fmt(per)])
                    results.setdefault("memory_probe_ns", {})[kb] = per
            print(f"  {spec.name}: {spec.n_prefixes():,} prefixes, loaded in {load_s:.1f}s "
                  f"(prepared in {prep_s:.1f}s), labeler counts == reference over {n_check:,} flows",
                  file=sys.stderr, flush=True)
    finally:
        front.close()

    print()
    print(B.table([[f"v{s[0]}", f"{len(frames[s][0])}{' vlan' if s[2] else ''}", B.fmt(empty[s])] for s in shapes],
                  ["empty XDP", "frame", "ns/pkt"]))
    print()
    print(B.table(rows, ["ruleset", "prefixes", "frame", "flows", "ns/pkt", "-empty", "best", "ratio", "reads/pkt",
                         "labeled", "B/prefix"]))
    print("\nns/pkt = empty + (front->labeler - front->empty), each run of a round back to back, median over the "
          "rounds of the difference; best = the least disturbed run of each (min - min); ratio = ns/pkt / empty; "
          "reads/pkt = dependent table reads per "
          "packet (src + dst: bitmap, direct entry, an IPv6 small chunk's line, chunk header, search probes; "
          "dropwatch.lpm.lookup's walk over the flows), results not counted; B/prefix = one generation's tables "
          "(bitmaps, direct tables: 2 x 1 MB for IPv4, 2 x 2 MB for IPv6, ranges, results and answers in use) / "
          "prefixes; worst-case sets: repeat "
          f"{max(100_000, args.repeat // (10 if args.quick else 5)):,}")
    if parts_rows:
        print()
        print(B.table(parts_rows, ["parts (ns, 64B)", "flows", "parse", "+classify", "+count",
                                   "+record write", "total", "probes/pkt"]))
        print("each part: one program minus the previous; with 100k flows the CPU overlaps the later parts with "
              "the classifier's cache misses, so only their sum is meaningful there")
    if alt_rows:
        print()
        print(B.table(alt_rows, ["100k prefixes, 64B: classifier", "flows", "ns/pkt", "-empty", "ratio"]))
        print("(same parse, counters and record; only the longest-prefix match differs; same labels checked. "
              "The lower bounds are not classifiers: the least any labeler does, in the same rounds; "
              "IPv6: the lower bounds only)")
    if probe_rows:
        print()
        print(B.table(probe_rows, ["working set", "ns per dependent random access (XDP, this machine)"]))
    print()
    for fam, o in sorted(overhead.items()):
        print(f"bench front, IPv{fam}: metadata reset + tail call {o['reset_and_tail_call_ns']:.1f} ns, "
              f"address rewrite from the flow table {o['rewrite_ns']:.1f} ns (both cancel out in -empty)")
    print(f"production object run directly (lab rules, 1 flow, 64B v4): {direct:.1f} ns/pkt, but "
          f"{failed:.0%} of those runs took the adjust_meta failure path (BPF_PROG_TEST_RUN does not reset "
          f"the metadata between repetitions)")
    results["overhead"] = {str(k): v for k, v in overhead.items()}
    results["direct_production_ns"] = direct
    results["direct_production_meta_failed_share"] = failed
    results["empty"] = {f"v{s[0]}-{s[1]}{'-vlan' if s[2] else ''}": empty[s] for s in shapes}

    def pick(fam: int, size: int, flows: int, crowded: bool = False) -> dict[str, Any]:
        for r in results["rows"]:
            if (r["family"], r["dst_prefixes"], r["frame"], r["vlan"], r["flows"], r["crowded"]) == \
                    (fam, size, 64, False, flows, crowded):
                return r  # type: ignore[no-any-return]
        return {}
    for fam, sfx, crowded in ((4, "", False), (6, "_v6", False), (6, "_v6_rir", True), (4, "_blocks", True)):
        row = pick(fam, 100_000, args.flows, crowded)
        results[f"xdp_ns_per_pkt_100k{sfx}"] = row.get("ns_per_pkt")
        results[f"xdp_minus_empty_ns_100k{sfx}"] = row.get("labeler_minus_empty_ns")
        results[f"xdp_ns_per_pkt_100k{sfx}_best"] = row.get("ns_per_pkt_best")
        results[f"xdp_minus_empty_ns_100k{sfx}_best"] = row.get("labeler_minus_empty_ns_best")
        if fam == 4:
            # The empty program of that row's rounds (the table above: its own runs).
            results["xdp_empty_ns_per_pkt"] = row.get("empty_ns", empty[(4, 64, False)])
    results["elapsed_s"] = time.monotonic() - t_start
    B.write_json(args.json, results)
    print(f"\nwrote {args.json} ({results['elapsed_s']:.0f}s)")
    lib.close_object(bench.empty_obj)


if __name__ == "__main__":
    main()

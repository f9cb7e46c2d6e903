"""The labeler's longest-prefix match, run in the kernel on large random
prefix sets, against the brute-force meaning of the rules.

tests/unit/test_lpm.py checks dropwatch.lpm's tables through their Python
walk; here the BPF code walks them: every form of a /16 is reached (a
direct answer, IPv4 lanes of 1 to 4 prefixes packed at every position of a
line, IPv4 chunks, IPv4 trees of 1 to 3 levels, IPv6 small chunks of 1 to
16 ranges, IPv6 chunks, IPv6 trees of 1 to 4 levels with packed leaf lines
and of 2 and 3 with (key, value) pairs, and the chunks below a /64), on
both sides, at every prefix's edges and at random addresses, and
each record must carry the label and side that
dropwatch.rules.classify_reference gives.
"""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import packets as P
import pytest

from dropwatch import abi, lpm
from dropwatch.loader import Loader
from dropwatch.loader import test_run_xdp as xdp_test_run
from dropwatch.rules import classify_reference, compile_rules, parse_rules

pytestmark = pytest.mark.bpf

META_KEY = 0x1B5C0DE5
N_LABELS = 300


def _prefix_set(rng: random.Random, width: int, blocks: int, lens: list[int],
                deep: list[int], crowded: tuple[int, ...] = (),
                crowded_lens: tuple[int, ...] = (), crowded_deep: tuple[int, ...] = ()) -> list[tuple[int, int]]:
    """(plen, network) in ``blocks`` random /16s: 1 to 12 prefixes each,
    often nested, plus a few covering prefixes of /16 or shorter; ``deep``
    lengths (IPv6 beyond /64) inside a few /64s; and one /16 of each size in
    ``crowded`` (as RIR space and provider blocks crowd real sets: trees of
    several levels), of ``crowded_lens`` (default: ``lens`` but the
    shortest), and of each size in ``crowded_deep`` with ``deep`` prefixes
    in five of its /64s too (IPv6 trees whose ranges point to chunks, so
    their leaves are not packed)."""
    out: set[tuple[int, int]] = set()

    def net(plen: int, a: int) -> int:
        return a & (((1 << width) - 1) ^ ((1 << (width - plen)) - 1))

    for b in rng.sample(range(1 << 16), blocks):
        top = b << (width - 16)
        anchor = top | rng.getrandbits(width - 16)
        for _ in range(rng.choice([1, 1, 2, 2, 3, 4, 5, 6, 12])):
            plen = rng.choice(lens)
            # Half of them near one address of the block, so they nest.
            a = anchor ^ rng.getrandbits(rng.randint(0, width - 16)) if rng.random() < 0.5 else \
                top | rng.getrandbits(width - 16)
            out.add((plen, net(plen, a)))
        if deep and rng.random() < 0.1:
            q = net(64, anchor)
            out.add((64, q))
            for _ in range(rng.randint(1, 6)):
                plen = rng.choice(deep)
                out.add((plen, net(plen, q | rng.getrandbits(64))))
    for _ in range(8):
        plen = rng.randint(1, 16)
        out.add((plen, net(plen, rng.getrandbits(width))))
    for size, with_deep in [(s, False) for s in crowded] + [(s, True) for s in crowded_deep]:
        top = rng.randrange(1 << 16) << (width - 16)
        for _ in range(size):
            plen = rng.choice(crowded_lens or lens[1:])
            out.add((plen, net(plen, top | rng.getrandbits(width - 16))))
        for _ in range(5 if with_deep else 0):
            q = net(64, top | rng.getrandbits(width - 16))
            for _ in range(rng.randint(1, 6)):
                plen = rng.choice(deep)
                out.add((plen, net(plen, q | rng.getrandbits(64))))
    return sorted(out)


def _cidr(width: int, plen: int, a: int) -> str:
    net = ipaddress.IPv4Network if width == 32 else ipaddress.IPv6Network
    return str(net((a, plen)))


def _edges(width: int, pfx: list[tuple[int, int]], rng: random.Random, n_random: int) -> list[int]:
    top = (1 << width) - 1
    out = []
    for plen, a in pfx:
        last = a | ((1 << (width - plen)) - 1)
        out += [a, last, (a - 1) & top, (last + 1) & top]
    blocks = sorted({a >> (width - 16) for _, a in pfx})
    out += [(rng.choice(blocks) << (width - 16)) | rng.getrandbits(width - 16) for _ in range(n_random)]
    return out


@pytest.fixture(scope="module")
def tables() -> Iterator[tuple[Loader, Any, dict[str, int], dict[int, tuple[list[tuple[int, int]], ...]]]]:
    rng = random.Random(20261205)
    sets = {4: (_prefix_set(rng, 32, 700, list(range(17, 33)), [], crowded=(40, 150, 6000),
                            crowded_lens=(24, 28, 32)),
                _prefix_set(rng, 32, 200, list(range(17, 33)), [])),
            6: (_prefix_set(rng, 128, 500, [17, 24, 32, 40, 44, 48, 56, 60, 63, 64], [65, 80, 96, 112, 128],
                            crowded=(40, 100, 400, 2500), crowded_deep=(60, 600)),
                _prefix_set(rng, 128, 150, [20, 32, 48, 64], []))}
    by_label: dict[str, list[str]] = {f"l{i}": [] for i in range(N_LABELS)}
    origin: list[str] = []
    for fam, (dst, src) in sets.items():
        width = 32 if fam == 4 else 128
        for i, (plen, a) in enumerate(dst):
            by_label[f"l{(i * 7) % N_LABELS}"].append(_cidr(width, plen, a))
        origin += [_cidr(width, plen, a) for plen, a in src]
    rules = [{"label": name, "dst": cidrs} for name, cidrs in by_label.items() if cidrs]
    rules.append({"side": "origin", "src": origin})
    rs = parse_rules({"default_side": "eyeball", "rules": rules})
    ids = {f"l{i}": i + 1 for i in range(N_LABELS)}
    compiled = compile_rules(rs, ids)
    with Loader(meta_key=META_KEY) as ld:
        ld.load()
        ld.apply_rules(compiled)
        yield ld, rs, ids, {fam: v for fam, v in sets.items()} | {0: (compiled,)}  # type: ignore[dict-item]


def _v4_form(t: lpm.LpmTables, i: int) -> str:
    """What IPv4 direct entry i holds: lanesK (K distinct prefixes longer
    than /16, besides the /16's own result's lane; lanes past them repeat
    lane 0), a chunk, a tree of K index levels (treeK), the /16's own
    result only, or nothing."""
    w0, w1 = t.v4_slots[i * lpm.SLOT4:(i + 1) * lpm.SLOT4]
    if not w0 | w1:
        return "empty"
    if (w0 & 0xFFFF) << 16 | (w1 & 0xFFFF) == lpm.SLOT4_CHUNK:
        return "tree%d" % (w1 >> 16) if (w0 >> 16) & lpm.TREE4 else "chunk"
    lanes = {((w0 >> s) & 0xFFFF, (w1 >> s) & 0xFFFF) for s in range(0, 64, 16)}
    prefixes = {(a, r) for a, r in lanes if a != 0x8000 or r & lpm.EXACT4}  # else length 0: the own result
    return "lanes%d" % len(prefixes) if prefixes else "direct"


def _v6_form(t: lpm.LpmTables, i: int) -> str:
    """What IPv6 direct entry i holds: lanesK (K distinct prefixes), a
    small chunk, a chunk, a tree of K index levels with packed leaf lines
    (treeK) or with (key, value) pairs (treeK-pairs), the /16's own result
    only, or nothing."""
    w = t.v6_slots[i * lpm.SLOT6:(i + 1) * lpm.SLOT6]
    if w[3] & lpm.SLOT6_PTR:
        if w[0] & lpm.LANES:
            return "small"
        if not w[3] & lpm.SLOT6_TREE:
            return "chunk"
        return "tree%d" % w[1] + ("" if w[3] & lpm.SLOT6_PACKED else "-pairs")
    shifts = [(w[3] >> (16 + 8 * n)) & 0xFF for n in range(lpm.LANES6)]
    if not any(w):
        return "empty"
    if all(sh == 48 for sh in shifts):
        return "direct"
    return "lanes%d" % len({(w[n], shifts[n]) for n in range(lpm.LANES6)})


def test_every_table_form_is_reached(tables: Any) -> None:
    """The sets are big enough to hold each form many times (else the
    comparison below would prove less than it says)."""
    _ld, _rs, _ids, sets = tables
    t = sets[0][0].lpm
    v4 = Counter(_v4_form(t, i) for i in range(2 * lpm.L1_SIZE))
    v6 = Counter(_v6_form(t, i) for i in range(2 * lpm.L1_SIZE))
    for form in ("lanes1", "lanes2", "lanes3", "lanes4", "chunk", "tree1", "tree2", "tree3", "direct"):
        assert v4[form] >= (1 if form.startswith("tree") else 10), v4
    # Lanes that hold a /32 (no length marker: the result's lpm.EXACT4 bit).
    hosts = sum(1 for i in range(2 * lpm.L1_SIZE) if _v4_form(t, i).startswith("lanes")
                and any((t.v4_slots[i * lpm.SLOT4 + 1] >> s) & lpm.EXACT4 for s in range(0, 64, 16)))
    assert hosts >= 10, hosts
    for form in ("lanes1", "lanes2", "lanes3", "small", "chunk", "tree1", "tree2", "tree3", "tree4", "tree2-pairs",
                 "tree3-pairs", "direct"):
        assert v6[form] >= (1 if form.startswith("tree") else 10), v6
    assert t.v6_ptrs, "no chunk below a /64"


def _longest(table: dict[tuple[int, int], Any], width: int, addr: int) -> Any:
    for plen in range(width, -1, -1):
        hit = table.get((plen, addr & (((1 << width) - 1) ^ ((1 << (width - plen)) - 1))))
        if hit is not None:
            return hit
    return None


@pytest.mark.parametrize("family", [4, 6])
def test_kernel_walk_matches_the_rules(tables: Any, family: int) -> None:
    """Brute force for this rule shape (each dst prefix in one label rule,
    one src side rule): the longest matching dst prefix's label, origin if
    any src prefix matches; classify_reference agrees on every 50th probe
    (it is too slow for all of them)."""
    ld, rs, ids, sets = tables
    rng = random.Random(family)
    width = 32 if family == 4 else 128
    dst_set, src_set = sets[family]
    label_of = {p: ids[f"l{(i * 7) % N_LABELS}"] for i, p in enumerate(dst_set)}
    src_of = {p: True for p in src_set}
    dsts = _edges(width, dst_set, rng, 3000)
    srcs = _edges(width, src_set, rng, 500)
    fmt = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    labeled = origin = 0
    for i, dst in enumerate(dsts):
        # Every source probe is used, most with random destinations.
        src = srcs[i % len(srcs)] if i % 3 else rng.getrandbits(width)
        pkt = P.build(family, "udp", src=str(fmt(src)), dst=str(fmt(dst)), dport=443)
        verdict, meta, _out, _ = xdp_test_run(ld, pkt.frame)
        assert verdict == 2
        source, rec = abi.decode_meta(meta, META_KEY)
        assert source == abi.Source.META and rec is not None, (fmt(src), fmt(dst))
        want = (_longest(label_of, width, dst) or 0,
                int(abi.Side.ORIGIN if _longest(src_of, width, src) else abi.Side.EYEBALL))
        if i % 50 == 0:
            e = pkt.expect()
            assert classify_reference(rs, ids, e.family, e.saddr, e.daddr, e.proto, e.dport) == want
        assert (rec.label_id, rec.side) == want, f"src {fmt(src)} dst {fmt(dst)}"
        labeled += want[0] != 0
        origin += want[1] == abi.Side.ORIGIN
    # Both sides' lookups took their matching paths often.
    assert labeled > len(dsts) // 3 and origin > len(dsts) // 10, (labeled, origin, len(dsts))


def test_dense_directions_skip_their_bitmap() -> None:
    """A direction whose prefixes cover abi.DW_BMP_SKIP_MIN or more /16s is
    looked up without its bitmap (lpm.LpmTables.bmp_skip, struct
    dw_ruleset's bmp_skip): the empty /16s between them then answer through
    their zero entries. Destinations and sources each in 50,000 of the
    65,536 /16s; every prefix's edges and addresses in the empty /16s get
    the brute-force label and side in the kernel."""
    rng = random.Random(50_000)
    dst_blocks = rng.sample(range(1 << 16), 50_000)
    src_blocks = rng.sample(range(1 << 16), 50_000)
    dst = [(rng.choice((20, 24, 28, 32)), b << 16 | rng.getrandbits(16)) for b in dst_blocks]
    dst = [(p, a & ~((1 << (32 - p)) - 1)) for p, a in dst]
    # One crowded /16 under a /16 of its own: a chunk, whose first range
    # (the /16's own result) an empty entry must not be mistaken for.
    crowded = dst_blocks[0] << 16
    dst += [(16, crowded)] + [(28, crowded | i << 8) for i in range(1, 12)]
    src = [(24, (b << 16 | rng.getrandbits(16)) & ~0xFF) for b in src_blocks]
    label_of = {p: i % 8 + 1 for i, p in enumerate(dst)}
    rules = [{"label": f"l{k}", "dst": [_cidr(32, p, a) for (p, a), lab in label_of.items() if lab == k]}
             for k in range(1, 9)]
    rules.append({"side": "origin", "src": [_cidr(32, p, a) for p, a in src]})
    rs = parse_rules({"default_side": "eyeball", "rules": rules})
    ids = {f"l{k}": k for k in range(1, 9)}
    compiled = compile_rules(rs, ids)
    assert compiled.lpm.bmp_skip == 0b11
    empty_dst = sorted(set(range(1 << 16)) - set(dst_blocks))
    empty_src = sorted(set(range(1 << 16)) - set(src_blocks))
    dsts = _edges(32, rng.sample(dst, 300), rng, 100)
    dsts += [b << 16 | rng.getrandbits(16) for b in rng.sample(empty_dst, 200)]
    srcs = _edges(32, rng.sample(src, 100), rng, 50)
    srcs += [b << 16 | rng.getrandbits(16) for b in rng.sample(empty_src, 100)]
    src_of = {p: True for p in src}
    id_of = {(p, a): ids[f"l{lab}"] for (p, a), lab in label_of.items()}
    fmt = ipaddress.IPv4Address
    with Loader(meta_key=META_KEY) as ld:
        ld.load()
        ld.apply_rules(compiled)
        assert ld._state.gen[ld._state.active_gen].rs.bmp_skip == 0b11
        for i, d in enumerate(dsts):
            s = srcs[i % len(srcs)]
            pkt = P.build(4, "udp", src=str(fmt(s)), dst=str(fmt(d)), dport=443)
            _verdict, meta, _out, _ = xdp_test_run(ld, pkt.frame)
            _source, rec = abi.decode_meta(meta, META_KEY)
            assert rec is not None
            want = (_longest(id_of, 32, d) or 0,
                    int(abi.Side.ORIGIN if _longest(src_of, 32, s) else abi.Side.EYEBALL))
            assert (rec.label_id, rec.side) == want, f"src {fmt(s)} dst {fmt(d)}"


def test_every_address_of_lane_blocks() -> None:
    """The lane arithmetic (lpm4_lanes: each lane's mask as a ^ -a, a /32's
    from its result's flag, the zero lanes by a borrow that may flag lanes
    above the first match but never below it) answers right for all 65,536
    addresses of /16s built to stress it: four nested lanes down to a /32
    at .0 (address bits 0, whose negation is 0), disjoint lanes beside the
    /16's own result with a /32 at .255.255, and /32s at neighbouring
    addresses (a key one bit off a /32 leaves 1 in its lane, which the
    borrow test must not take for a match below the true one)."""
    blocks = {
        (10 << 24) | (1 << 16): [(32, 0x0000), (31, 0x0000), (24, 0x0000), (17, 0x0000)],
        (10 << 24) | (2 << 16): [(16, 0x0000), (32, 0xFFFF), (28, 0x8010), (20, 0x4000)],
        (10 << 24) | (3 << 16): [(16, 0x0000), (32, 0x0101), (32, 0x0100), (32, 0x0103)],
    }
    label_of: dict[tuple[int, int], int] = {}
    for top, pfx in blocks.items():
        for plen, low in pfx:
            label_of[(plen, top | low)] = len(label_of) + 1
    rules = [{"label": f"l{k}", "dst": [_cidr(32, p, a)]} for (p, a), k in label_of.items()]
    rs = parse_rules({"default_side": "eyeball", "rules": rules})
    ids = {f"l{k}": k for k in label_of.values()}
    compiled = compile_rules(rs, ids)
    forms = Counter(_v4_form(compiled.lpm, (abi.DW_FD_V4_DST & 1) << 16 | top >> 16) for top in blocks)
    assert forms == {"lanes4": 1, "lanes3": 2}, forms  # lanes, not chunks: else this tests nothing
    frame = bytearray(P.build(4, "udp", src="192.0.2.1", dst="10.1.0.0", dport=443).frame)
    daddr_at = 14 + 16
    assert frame[daddr_at:daddr_at + 4] == bytes([10, 1, 0, 0])
    with Loader(meta_key=META_KEY) as ld:
        ld.load()
        ld.apply_rules(compiled)
        for top in blocks:
            wrong = []
            for low in range(1 << 16):
                frame[daddr_at:daddr_at + 4] = (top | low).to_bytes(4, "big")
                _verdict, meta, _out, _ = xdp_test_run(ld, bytes(frame))
                _source, rec = abi.decode_meta(meta, META_KEY)
                want = _longest(label_of, 32, top | low) or 0
                if rec is None or rec.label_id != want:
                    wrong.append((hex(top | low), rec and rec.label_id, want))
            assert not wrong, wrong[:10]

"""The XDP labeler against the rules' reference semantics, via BPF_PROG_TEST_RUN.

Every test here loads the real labeler object into the running kernel and
runs frames through it; the expected (label_id, side) always comes from
dropwatch.rules.classify_reference (the plain-Python meaning of the rules),
and what the labeler must read from a frame from packets.Packet.expect().
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import random
from collections.abc import Iterator
from typing import Any

import packets as P
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from dropwatch import abi
from dropwatch.loader import Loader
from dropwatch.loader import test_run_xdp as xdp_test_run  # not "test_*": pytest would collect it
from dropwatch.rules import CompiledRules, RulesError, RuleSet, classify_reference, compile_rules, parse_rules

pytestmark = pytest.mark.bpf

XDP_PASS = 2
META_KEY = 0x5EED1234
META_LEN = 16

RULES: dict[str, Any] = {
    "default_side": "eyeball",
    "rules": [
        # 0: dst-only label, IPv4 + IPv6
        {"label": "custA", "dst": ["10.10.1.0/24", "2001:db8:a::/48"]},
        # 1: proto + dport (a port and a range)
        {"label": "quic", "proto": "udp", "dport": [443, "5000-5999"],
         "dst": ["10.20.0.0/16", "2001:db8:b::/48"]},
        # 2: src-only side rule
        {"side": "origin", "src": ["192.0.2.0/24", "2001:db8:ca::/48"]},
        # 3: src and dst (a pair rule), label and side
        {"label": "peer", "side": "origin", "src": ["198.51.100.0/24", "2001:db8:5::/48"],
         "dst": ["10.30.0.0/16", "2001:db8:30::/48"]},
        # 4/5: nested prefixes; the longer one's rule (tcp/80) fails for udp,
        # and then the shorter one's must apply
        {"label": "wide", "proto": "udp", "dst": ["11.0.0.0/8", "2001:db8:100::/40"]},
        {"label": "narrow", "proto": "tcp", "dport": [80], "dst": ["11.1.1.0/24", "2001:db8:100:1::/64"]},
        # 6/7: /0 rules
        {"label": "icmp-any", "proto": "icmp", "dst": ["0.0.0.0/0"]},
        {"side": "origin", "proto": "icmpv6", "src": ["::/0"]},
        # 8/9: no prefixes at all (proto only; proto + port)
        {"label": "udp-all", "proto": "udp"},
        {"label": "dns", "proto": "udp", "dport": [53]},
        # 10: dport without proto, nested inside rule 0's /24
        {"label": "web-alt", "dport": [8080], "dst": ["10.10.1.128/25"]},
    ],
}
RS = parse_rules(RULES)
# Deliberately sparse and not in file order.
IDS = {name: 3 + 7 * i for i, name in enumerate(reversed(RS.labels()))}

V4_ADDRS = [
    ("203.0.113.5", "10.10.1.7"),  # custA
    ("203.0.113.5", "10.10.1.200"),  # custA, web-alt on 8080
    ("192.0.2.9", "10.20.3.4"),  # origin; quic on udp 443/5000-5999
    ("198.51.100.1", "10.30.5.5"),  # pair: peer/origin
    ("198.51.100.1", "10.10.1.1"),  # pair src, other dst: custA
    ("203.0.113.5", "11.1.1.1"),  # nested: narrow (tcp/80) or wide (udp)
    ("192.0.2.200", "11.2.0.1"),  # wide only, origin
    ("203.0.113.5", "8.8.8.8"),  # only /0 and prefix-less rules
]
V6_ADDRS = [
    ("2001:db8:ffff::5", "2001:db8:a::7"),
    ("2001:db8:ca::9", "2001:db8:b::4"),
    ("2001:db8:5::1", "2001:db8:30::5"),
    ("2001:db8:5::1", "2001:db8:a::1"),
    ("2001:db8:ffff::5", "2001:db8:100:1::1"),
    ("2001:db8:ca::200", "2001:db8:100:2::1"),
    ("2001:db8:ffff::5", "2001:4860::8888"),
]
DPORTS = [53, 80, 443, 4999, 5000, 5999, 6000, 8080]
VLAN_STACKS = [(), (P.ETH_P_8021Q,), (P.ETH_P_8021AD,), (P.ETH_P_8021AD, P.ETH_P_8021Q),
               (P.ETH_P_8021Q, P.ETH_P_8021Q), (P.ETH_P_8021AD, P.ETH_P_8021AD), (P.ETH_P_8021Q, P.ETH_P_8021AD)]
V4_VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "opt4": {"options": 4},
    "opt40": {"options": 40},
    "df": {"df": True},
    "frag-first": {"mf": True},
    "frag-later": {"frag_offset": 185, "mf": True},
    "frag-last": {"frag_offset": 370},
    "opt-frag-later": {"options": 8, "frag_offset": 1},
}
V6_VARIANTS: dict[str, list[P.Ext]] = {
    "plain": [],
    "hbh": [P.HBH],
    "routing": [P.ROUTING],
    "dstopts": [P.DSTOPTS],
    "frag-first": [P.FRAG_FIRST],
    "frag-later": [P.FRAG_LATER],
    "frag-last": [P.FRAG_LAST],
    "chain": [P.HBH, P.ROUTING, P.DSTOPTS, P.FRAG_FIRST],
    "chain-frag-later": [P.HBH, P.DSTOPTS, P.FRAG_LATER],
    "six-ext": [P.HBH, P.DSTOPTS, P.ROUTING, P.Ext(P.IPPROTO_DSTOPTS, 8), P.FRAG_FIRST,
                P.Ext(P.IPPROTO_DSTOPTS, 40)],
}


# ---------------------------------------------------------------- helpers


def untunnelled_packets(ld: Loader, max_label_id: int) -> dict[tuple[int, int], tuple[int, int]]:
    """dw_pkt_counts as (label_id, side) -> (packets, bytes), PoP none only."""
    return {(lid, side): v for (lid, side, pop), v in ld.read_packets(max_label_id).items()
            if pop == abi.DW_POP_NONE}

def run(ld: Loader, frame: bytes, meta: bytes = b"") -> tuple[int, bytes, bytes]:
    verdict, meta_out, out, _ = xdp_test_run(ld, frame, meta=meta)
    return verdict, meta_out, out


def expected(rs: RuleSet, ids: dict[str, int], exp: P.Expect) -> tuple[int, int]:
    return classify_reference(rs, ids, exp.family, exp.saddr, exp.daddr, exp.proto, exp.dport)


def check(ld: Loader, frame: bytes, exp: P.Expect | None, rs: RuleSet = RS, ids: dict[str, int] | None = None,
          foreign: bytes = b"", key: int = META_KEY, what: str = "") -> tuple[int, int] | None:
    """Run one frame; assert the verdict, the untouched packet, and the
    record (or its absence). Returns the (label_id, side) written."""
    ids = IDS if ids is None else ids
    verdict, meta, out = run(ld, frame, foreign)
    assert verdict == XDP_PASS, what
    assert out == frame, f"{what}: packet bytes changed"
    if exp is None:
        assert meta == foreign, f"{what}: expected no record, metadata area is {meta.hex()}"
        return None
    assert len(meta) == META_LEN + len(foreign), f"{what}: metadata area {meta.hex()}"
    assert meta[META_LEN:] == foreign, f"{what}: foreign metadata changed"
    source, rec = abi.decode_meta(meta, key)
    assert source == abi.Source.META and rec is not None, f"{what}: record {meta[:META_LEN].hex()} is {source!r}"
    want = expected(rs, ids, exp)
    assert (rec.label_id, rec.side) == want, f"{what}: expect={exp}"
    # The whole record, byte for byte (pop_id, flags and tail_pad zero).
    assert meta[:META_LEN] == bytes(abi.make_meta(want[0], want[1], key)), what
    return want


@pytest.fixture(scope="module")
def labeler() -> Iterator[Loader]:
    with Loader(meta_key=META_KEY) as ld:
        ld.load()
        ld.apply_rules(compile_rules(RS, IDS))
        yield ld


# ---------------------------------------------------------------- 1: every combination

def _combo_params() -> list[Any]:
    out = []
    for l4 in ("tcp", "udp", "icmp", "icmpv6"):
        for vi, vlans in enumerate(VLAN_STACKS):
            for name in V4_VARIANTS:
                out.append(pytest.param(4, l4, vlans, name, id=f"v4-{l4}-vlan{vi}-{name}"))
            for name in V6_VARIANTS:
                out.append(pytest.param(6, l4, vlans, name, id=f"v6-{l4}-vlan{vi}-{name}"))
    return out


@pytest.mark.parametrize(("family", "l4", "vlans", "variant"), _combo_params())
def test_every_protocol_combination(labeler: Loader, family: int, l4: str, vlans: tuple[int, ...],
                                    variant: str) -> None:
    addrs = V4_ADDRS if family == 4 else V6_ADDRS
    ports = DPORTS if l4 in ("tcp", "udp") else [0]
    seen = set()
    for src, dst in addrs:
        for dport in ports:
            if family == 4:
                pkt = P.build(4, l4, src=src, dst=dst, dport=dport, vlans=vlans, payload=b"\xab" * 6,
                              pad_to=60, **V4_VARIANTS[variant])
            else:
                pkt = P.build(6, l4, src=src, dst=dst, dport=dport, vlans=vlans, payload=b"\xab" * 6,
                              ext=V6_VARIANTS[variant])
            exp = pkt.expect()
            assert exp is not None
            if "later" in variant or variant == "frag-last":
                assert exp.dport is None  # the builder's model, checked once here
            seen.add(check(labeler, pkt.frame, exp, what=pkt.desc))
    # The address/port table really exercises the rules (not all unlabeled).
    assert len(seen) > 1


def test_rule_table_hits_every_rule() -> None:
    """Guards the test data: every rule decides some packet in the table."""
    decided = set()
    for family, addrs in ((4, V4_ADDRS), (6, V6_ADDRS)):
        for src, dst in addrs:
            for proto in (1, 6, 17, 58):
                for dport in ([None] + DPORTS if proto in (6, 17) else [None]):
                    decided.add(classify_reference(RS, IDS, family, src, dst, proto, dport))
    labels = {lid for lid, _ in decided}
    assert labels == set(IDS.values()) | {0}
    assert {side for _, side in decided} == {abi.Side.EYEBALL, abi.Side.ORIGIN}


# ---------------------------------------------------------------- 2: truncation

TRUNC_FRAMES = [
    P.build(4, "tcp", src="198.51.100.1", dst="10.30.5.5", dport=443, vlans=VLAN_STACKS[3], options=12),
    P.build(4, "udp", src="192.0.2.9", dst="10.20.3.4", dport=443),
    P.build(4, "udp", src="203.0.113.5", dst="11.1.1.1", dport=80, vlans=VLAN_STACKS[1]),
    P.build(4, "icmp", src="203.0.113.5", dst="10.10.1.9", vlans=VLAN_STACKS[2]),
    P.build(4, "tcp", src="203.0.113.5", dst="10.10.1.200", dport=8080, frag_offset=7),
    P.build(6, "udp", src="2001:db8:ca::9", dst="2001:db8:b::4", dport=5555,
            ext=[P.HBH, P.DSTOPTS, P.FRAG_FIRST], vlans=VLAN_STACKS[4]),
    P.build(6, "tcp", src="2001:db8:ffff::5", dst="2001:db8:100:1::1", dport=80),
    P.build(6, "icmpv6", src="2001:db8:ffff::5", dst="2001:db8:a::1", ext=[P.ROUTING]),
    P.build(6, "udp", src="2001:db8:ffff::5", dst="2001:db8:100:2::1", dport=443,
            ext=[P.HBH, P.FRAG_LATER], vlans=VLAN_STACKS[5]),
    P.non_ip(P.ETH_P_ARP, vlans=VLAN_STACKS[1]),
]


@pytest.mark.parametrize("pkt", TRUNC_FRAMES, ids=[p.desc for p in TRUNC_FRAMES])
def test_truncation_at_every_byte(labeler: Loader, pkt: P.Packet) -> None:
    outcomes = set()
    for n in range(len(pkt.frame) + 1):
        frame = pkt.frame[:n]
        if n < P.ETH_HLEN:
            # BPF_PROG_TEST_RUN refuses XDP input shorter than ETH_HLEN.
            with pytest.raises(OSError) as ei:
                run(labeler, frame)
            assert ei.value.errno == errno.EINVAL, f"n={n}"
            continue
        exp = pkt.expect(n)
        outcomes.add(None if exp is None else (exp.proto is None, exp.dport is None))
        check(labeler, frame, exp, what=f"{pkt.desc} cut at {n}")
    if pkt.family is not None:
        # no record / record without proto or port / complete: all were hit
        assert None in outcomes and len(outcomes) >= 2


# ---------------------------------------------------------------- 3: malformed / not IP

@pytest.mark.parametrize("ihl", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("l4", ["tcp", "udp", "icmp"])
@pytest.mark.parametrize("vlans", [(), (P.ETH_P_8021AD, P.ETH_P_8021Q)], ids=["novlan", "qinq"])
def test_bad_ihl_labels_by_address_without_port(labeler: Loader, ihl: int, l4: str,
                                                vlans: tuple[int, ...]) -> None:
    # 10.20.1.187 ends in 0x01bb (443) and the 443-byte total length: were
    # the labeler to read a "port" at ihl*4 it would find 443 and say quic.
    for src, dst, dport, plen in (("192.0.2.9", "10.20.3.4", 443, 0), ("203.0.113.5", "11.1.1.1", 80, 0),
                                  ("203.0.113.5", "8.8.8.8", 53, 0), ("198.51.100.1", "10.30.5.5", 80, 0),
                                  ("203.0.113.5", "10.20.1.187", 443, 0), ("192.0.2.9", "10.20.1.187", 443, 415)):
        payload = b"\0" * (plen if l4 == "udp" else 0)
        pkt = P.build(4, l4, src=src, dst=dst, dport=dport, ihl=ihl, vlans=vlans, payload=payload)
        exp = pkt.expect()
        assert exp is not None and exp.dport is None and exp.proto == P.L4_NAMES[l4]
        check(labeler, pkt.frame, exp, what=pkt.desc)


NOT_IP = [
    P.non_ip(P.ETH_P_ARP),
    P.non_ip(P.ETH_P_LLDP),
    P.non_ip(0x8847),  # MPLS unicast
    P.non_ip(P.ETH_P_ARP, vlans=(P.ETH_P_8021Q,)),
    P.non_ip(P.ETH_P_ARP, vlans=(P.ETH_P_8021AD, P.ETH_P_8021Q)),
    P.non_ip(P.ETH_P_8021Q, payload=b""),  # a bare tag TPID, truncated right after
    # IPv4 behind 3 tags: deeper than the labeler's 2 (DW_MAX_VLANS)
    P.Packet(P.stacked(P.ETH_P_IP, (P.ETH_P_8021AD, P.ETH_P_8021Q, P.ETH_P_8021Q),
                       P.build(4, "udp", src="203.0.113.5", dst="10.10.1.7").frame[14:]), None,
             desc="ipv4 behind 3 vlan tags"),
    # 0x9100 (pre-standard QinQ) is not a tag the labeler knows
    P.Packet(P.stacked(P.ETH_P_IP, (0x9100,), P.build(4, "udp", src="203.0.113.5", dst="10.10.1.7").frame[14:]),
             None, desc="ipv4 behind a 0x9100 tag"),
]


@pytest.mark.parametrize("pkt", NOT_IP, ids=[p.desc for p in NOT_IP])
@pytest.mark.parametrize("foreign", [b"", b"\x11\x22\x33\x44" * 2], ids=["nometa", "foreign8"])
def test_not_ip_gets_no_record(labeler: Loader, pkt: P.Packet, foreign: bytes) -> None:
    assert pkt.expect() is None
    check(labeler, pkt.frame, None, foreign=foreign, what=pkt.desc)


def test_parser_limits(labeler: Loader) -> None:
    """Documented limits: at most 6 IPv6 extension headers, and nothing
    that starts deeper than 512 bytes is read. Beyond them the packet is
    still labeled by its addresses, without proto/port."""
    seven = [P.HBH, P.DSTOPTS, P.ROUTING, P.DSTOPTS, P.DSTOPTS, P.FRAG_FIRST, P.DSTOPTS]
    deep = [P.Ext(P.IPPROTO_DSTOPTS, 512)]
    cases = []
    for ext in (seven, deep, [P.Ext(P.IPPROTO_DSTOPTS, 448)]):
        for l4, dst, dport in (("udp", "2001:db8:b::4", 443), ("tcp", "2001:db8:100:1::1", 80)):
            cases.append(P.build(6, l4, src="2001:db8:ffff::5", dst=dst, dport=dport, ext=ext))
    exps = [c.expect() for c in cases]
    assert exps[0] is not None and exps[0].proto is None and exps[0].dport is None  # 7 ext headers
    assert exps[2] is not None and exps[2].proto == P.IPPROTO_UDP and exps[2].dport is None  # L4 at 566
    assert exps[4] is not None and exps[4].dport == 443  # L4 at 502: still read
    for pkt, exp in zip(cases, exps, strict=True):
        check(labeler, pkt.frame, exp, what=pkt.desc)


# ---------------------------------------------------------------- 4: foreign metadata

@pytest.mark.parametrize("size", [4, 8, 16])
def test_foreign_metadata_kept_behind_our_record(labeler: Loader, size: int) -> None:
    rnd = random.Random(size)
    before = labeler.read_stats("labeler").get(abi.Stat.XDP_FOREIGN_META, 0)
    runs = 0
    for pkt in (P.build(4, "udp", src="192.0.2.9", dst="10.20.3.4", dport=443, vlans=VLAN_STACKS[3]),
                P.build(6, "tcp", src="2001:db8:ffff::5", dst="2001:db8:a::7", ext=[P.HBH]),
                P.build(4, "tcp", src="203.0.113.5", dst="8.8.8.8")):
        for _ in range(5):
            foreign = bytes(rnd.getrandbits(8) for _ in range(size))
            check(labeler, pkt.frame, pkt.expect(), foreign=foreign, what=f"{pkt.desc} foreign {foreign.hex()}")
            runs += 1
    # A foreign record that carries our magic is still left alone.
    magic = abi.make_meta(IDS["custA"], 1, META_KEY)
    if size >= META_LEN:
        pkt = P.build(4, "udp", src="203.0.113.5", dst="8.8.8.8", dport=9)
        check(labeler, pkt.frame, pkt.expect(), foreign=bytes(magic)[:size], what="foreign copy of our record")
        runs += 1
    after = labeler.read_stats("labeler").get(abi.Stat.XDP_FOREIGN_META, 0)
    assert after - before == runs


def test_no_room_for_record_leaves_foreign_metadata(loader_factory: Any) -> None:
    """Grow the foreign metadata until adjust_meta refuses ours (the
    kernel's limit) or test_run refuses the input: up to the limit the
    record is prepended, past it there is no record, the foreign bytes stay
    intact, the packet is still counted, and the failure is counted (stat
    and per-ifindex map)."""
    ld = loader_factory(RS, IDS, meta_key=META_KEY)
    pkt = P.build(4, "udp", src="192.0.2.9", dst="10.20.3.4", dport=443)
    exp = pkt.expect()
    assert exp is not None
    want = expected(RS, IDS, exp)
    rnd = random.Random(7)
    written = failed = 0
    for size in range(4, abi.DW_META_MAX + 4, 4):
        foreign = rnd.randbytes(size)
        try:
            verdict, meta, out = run(ld, pkt.frame, foreign)
        except OSError as e:
            assert e.errno == errno.EINVAL and size > 32, f"test_run refused {size} bytes of metadata"
            break
        assert verdict == XDP_PASS and out == pkt.frame
        if len(meta) == len(foreign):
            assert meta == foreign, f"{size}: foreign metadata changed"
            failed += 1
        else:
            assert not failed, f"{size}: record written after a smaller area was refused"
            assert meta[META_LEN:] == foreign and size + META_LEN <= abi.DW_META_MAX
            assert meta[:META_LEN] == bytes(abi.make_meta(*want, META_KEY))
            written += 1
    assert written >= 8  # 4..32 bytes of foreign metadata always leave room
    stats = ld.read_stats("labeler")
    assert stats.get(abi.Stat.XDP_META_FAILED, 0) == failed
    assert sum(ld.read_meta_failures().values()) == failed
    assert untunnelled_packets(ld, max(IDS.values()))[want] == (written + failed, (written + failed) * len(pkt.frame))


# ---------------------------------------------------------------- record encoding

@pytest.mark.parametrize("key", [0, 1, 0xFFFFFFFF, 0x9E3779B1, 0x0000D70B])
def test_meta_check_matches_bpf(loader_factory: Any, key: int) -> None:
    ids = {"top": abi.DW_MAX_LABELS - 1, "low": 1}
    rs = parse_rules({"default_side": "unknown", "rules": [
        {"label": "top", "side": "origin", "dst": ["10.0.0.0/8"]},
        {"label": "low", "side": "eyeball", "dst": ["2001:db8::/32"]},
    ]})
    ld = loader_factory(rs, ids, meta_key=key)
    for pkt, want in ((P.build(4, "tcp", src="1.2.3.4", dst="10.1.2.3"), (ids["top"], abi.Side.ORIGIN)),
                      (P.build(6, "udp", src="2001:db9::1", dst="2001:db8::1"), (ids["low"], abi.Side.EYEBALL)),
                      (P.build(4, "tcp", src="1.2.3.4", dst="11.1.2.3"), (0, abi.Side.UNKNOWN))):
        verdict, meta, _ = run(ld, pkt.frame)
        assert verdict == XDP_PASS and len(meta) == META_LEN
        rec = abi.Meta.from_buffer_copy(meta)
        assert (rec.magic, rec.version, rec.rec_len) == (abi.DW_META_MAGIC, abi.DW_META_VERSION, META_LEN)
        assert (rec.label_id, rec.side, rec.pop_id, rec.flags, rec.tail_pad) == (*want, 0, 0, 0)
        assert rec.check == abi.meta_check(rec, key)
        assert meta == bytes(abi.make_meta(want[0], want[1], key))
        assert abi.decode_meta(meta, key)[0] == abi.Source.META
        assert abi.decode_meta(meta, key ^ 0x80000001)[0] == abi.Source.CORRUPT


# ---------------------------------------------------------------- 5: counters

def test_packet_counters_exact(loader_factory: Any) -> None:
    ld = loader_factory(RS, IDS, meta_key=META_KEY)
    plan = [
        (P.build(4, "tcp", src="203.0.113.5", dst="10.10.1.7", dport=22, pad_to=60), 7),
        (P.build(6, "udp", src="2001:db8:ca::9", dst="2001:db8:b::4", dport=443), 5),
        (P.build(4, "udp", src="203.0.113.5", dst="11.2.0.1", dport=5001, vlans=VLAN_STACKS[1]), 4),
        (P.build(4, "tcp", src="203.0.113.5", dst="8.8.8.8", dport=443), 3),
        (P.build(6, "tcp", src="2001:db8:5::1", dst="2001:db8:30::5", ext=[P.FRAG_LATER]), 2),
    ]
    want: dict[tuple[int, int], list[int]] = {}
    for pkt, n in plan:
        exp = pkt.expect()
        assert exp is not None
        key = expected(RS, IDS, exp)
        for _ in range(n):
            assert check(ld, pkt.frame, exp, what=pkt.desc) == key
        w = want.setdefault(key, [0, 0])
        w[0] += n
        w[1] += n * len(pkt.frame)
    assert len(want) == len(plan)  # every row lands on its own (label, side)
    arp = P.non_ip(P.ETH_P_ARP)
    for _ in range(2):
        check(ld, arp.frame, None)
    got = untunnelled_packets(ld, max(IDS.values()))
    labeled = {k: v for k, v in got.items() if k in want}
    assert labeled == {k: tuple(v) for k, v in want.items()}
    # Frames without an IP header are counted, but never under a label.
    others = {k: v for k, v in got.items() if k not in want}
    assert all(lid == 0 for lid, _ in others) and sum(v[0] for v in others.values()) == 2
    ip_runs = sum(n for _, n in plan)
    assert sum(v[0] for v in got.values()) == ip_runs + 2
    stats = ld.read_stats("labeler")
    # Only failures and the long way (a candidate with a condition: most of
    # these rules have one) are counted per packet; packets come from
    # dw_pkt_counts.
    assert set(stats) <= {abi.Stat.XDP_EVAL} and stats.get(abi.Stat.XDP_EVAL, 0) <= ip_runs

    # Cumulative, also with the kernel repeating the run itself, on every
    # CPU this process may use: each CPU counts into its own stripe.
    pkt, _ = plan[0]
    key = expected(RS, IDS, pkt.expect())  # type: ignore[arg-type]
    cpus = sorted(os.sched_getaffinity(0))
    try:
        for cpu in cpus:
            os.sched_setaffinity(0, {cpu})
            ret, _, _, _ = ld.lib.test_run(ld.labeler_prog_fd, pkt.frame, repeat=1000)
            assert ret == XDP_PASS
    finally:
        os.sched_setaffinity(0, cpus)
    n = 1000 * len(cpus)
    cell = key[0] * abi.DW_SIDE_COUNT + key[1]
    for cpu in cpus:
        v = abi.PktVal()
        assert ld.lib.map_lookup(ld._lmap("dw_pkt_counts"), ctypes.c_uint32(cpu * abi.DW_PKT_CELLS + cell), v)
        assert v.packets >= 1000, f"CPU {cpu}'s stripe"
    assert untunnelled_packets(ld, max(IDS.values()))[key] == (want[key][0] + n, want[key][1] + n * len(pkt.frame))


EVAL_RULES = parse_rules({"default_side": "eyeball", "rules": [
    {"label": "custA", "dst": ["10.40.0.0/16", "2001:db8:40::/48"]},
    {"label": "custB", "side": "origin", "dst": ["10.40.7.0/24", "2001:db8:40:7::/64"]},
    {"side": "origin", "src": ["192.0.2.0/24", "2001:db8:ca::/48"]},
    {"label": "web", "proto": "tcp", "dport": [80], "dst": ["10.50.0.0/16", "2001:db8:50::/48"]},
]})


def test_only_candidates_with_a_condition_are_evaluated_one_by_one(loader_factory: Any) -> None:
    """A packet whose matching prefixes carry no proto/port condition is
    labeled from the two answers, without a branch; only one that meets a
    condition is evaluated candidate by candidate (xdp_eval). Until session
    11 the "evaluate" bit was also a bit of "no side", and every packet
    whose source or destination sets no side went the long way."""
    ids = {name: i + 1 for i, name in enumerate(EVAL_RULES.labels())}
    ld = loader_factory(EVAL_RULES, ids, meta_key=META_KEY)
    plain = [(4, "203.0.113.5", "10.40.1.1"), (4, "203.0.113.5", "10.40.7.9"), (4, "192.0.2.7", "10.40.1.1"),
             (4, "192.0.2.7", "8.8.8.8"), (4, "203.0.113.5", "8.8.8.8"),
             (6, "2001:db8:ffff::5", "2001:db8:40::1"), (6, "2001:db8:ffff::5", "2001:db8:40:7::9"),
             (6, "2001:db8:ca::7", "2001:db8:40::1"), (6, "2001:db8:ca::7", "2001:4860::8888"),
             (6, "2001:db8:ffff::5", "2001:4860::8888")]
    seen = set()
    for family, src, dst in plain:
        for l4 in ("tcp", "udp"):
            pkt = P.build(family, l4, src=src, dst=dst, dport=80)
            seen.add(check(ld, pkt.frame, pkt.expect(), rs=EVAL_RULES, ids=ids, what=pkt.desc))
    assert {(ids["custA"], 1), (ids["custB"], 2), (ids["custA"], 2), (0, 2), (0, 1)} <= seen
    assert abi.Stat.XDP_EVAL not in ld.read_stats("labeler")

    conditional = [(4, "203.0.113.5", "10.50.1.1"), (6, "2001:db8:ca::7", "2001:db8:50::1")]
    n = 0
    for family, src, dst in conditional:
        for l4, dport in (("tcp", 80), ("tcp", 81), ("udp", 80)):
            pkt = P.build(family, l4, src=src, dst=dst, dport=dport)
            seen.add(check(ld, pkt.frame, pkt.expect(), rs=EVAL_RULES, ids=ids, what=pkt.desc))
            n += 1
    assert (ids["web"], 1) in seen and (ids["web"], 2) in seen
    assert ld.read_stats("labeler") == {abi.Stat.XDP_EVAL: n}


def test_counter_for_highest_label_id(loader_factory: Any) -> None:
    ids = {"top": abi.DW_MAX_LABELS - 1}
    rs = parse_rules({"default_side": "origin", "rules": [{"label": "top", "dst": ["10.0.0.0/8"]}]})
    ld = loader_factory(rs, ids)
    pkt = P.build(4, "udp", src="1.1.1.1", dst="10.9.9.9")
    for _ in range(3):
        check(ld, pkt.frame, pkt.expect(), rs=rs, ids=ids, key=ld.meta_key)
    assert untunnelled_packets(ld, abi.DW_MAX_LABELS - 1)[(ids["top"], abi.Side.ORIGIN)] == (3, 3 * len(pkt.frame))


# ---------------------------------------------------------------- 6: reload

def _distinct_prefixes(rs: RuleSet) -> tuple[int, int]:
    """(prefix entries, pair entries) one generation of ``rs`` must occupy,
    counted from the rules (not from compile_rules)."""
    pfx = set()
    for r in rs.rules:
        for which in ("src", "dst"):
            for n in r.networks(which):
                pfx.add((which, n))
    pairs = set()
    for r in rs.rules:
        for s in r.networks("src") if r.dst else []:
            for d in r.networks("dst"):
                if s.version != d.version:
                    continue
                subs = [x for w, x in pfx if w == "src" and x.version == s.version and x.subnet_of(s)]  # type: ignore[arg-type]
                subd = [x for w, x in pfx if w == "dst" and x.version == d.version and x.subnet_of(d)]  # type: ignore[arg-type]
                pairs.update((a, b) for a in subs for b in subd)
    return len(pfx), len(pairs)


def map_entries(c: CompiledRules) -> dict[str, int]:
    """What Loader.rule_map_entries() must read with only ``c`` loaded."""
    return {"dw_results": len(c.results) - 1, "dw_lpm_ranges": len(c.lpm.v4_rng) + c.lpm.v6_entries(),
            "dw_slot4": c.lpm.v4_used(), "dw_slot6": c.lpm.v6_used(), "dw_pairs": len(c.pairs)}


def test_rule_reload_switches_generations(loader_factory: Any) -> None:
    ids = {"custA": 5, "custB": 6, "quic": 9}
    rs_a = parse_rules({"default_side": "eyeball", "rules": [
        {"label": "custA", "dst": ["10.10.1.0/24", "2001:db8:a::/48"]},
        {"label": "quic", "proto": "udp", "dport": [443], "dst": ["10.20.0.0/16"]},
        {"side": "origin", "src": ["192.0.2.0/24"]},
    ]})
    rs_b = parse_rules({"default_side": "origin", "rules": [
        {"label": "custA", "dst": ["10.10.2.0/24"]},  # custA moved
        {"label": "custB", "dst": ["10.10.1.0/24", "10.10.0.0/16"]},
        {"label": "quic", "side": "eyeball", "src": ["192.0.2.0/24"], "dst": ["10.20.0.0/16", "10.10.1.0/24"]},
    ]})
    rs_empty = parse_rules({"default_side": "unknown", "rules": []})
    probes = [P.build(4, "udp", src=s, dst=d, dport=p) for s, d, p in (
        ("203.0.113.5", "10.10.1.7", 443), ("203.0.113.5", "10.10.2.7", 443), ("192.0.2.1", "10.20.0.1", 443),
        ("192.0.2.1", "10.10.1.1", 80), ("203.0.113.5", "10.20.0.1", 443), ("192.0.2.1", "8.8.8.8", 53))]
    probes.append(P.build(6, "tcp", src="2001:db8::1", dst="2001:db8:a::1"))
    ld = loader_factory(meta_key=META_KEY)

    history = []
    for rs in (rs_a, rs_b, rs_a, rs_empty, rs_b, rs_b):
        compiled = compile_rules(rs, ids)
        ld.apply_rules(compiled)
        results = tuple(check(ld, p.frame, p.expect(), rs=rs, ids=ids, what=p.desc) for p in probes)
        history.append(results)
        n_pfx, n_pairs = _distinct_prefixes(rs)
        assert len(compiled.prefixes) == n_pfx
        # Both generations counted: the old one was emptied after the flip.
        assert ld.rule_map_entries() == map_entries(compiled)
        assert ld.rule_map_entries()["dw_pairs"] == n_pairs
    # The probes see a different answer per rule set (the reload took effect).
    assert history[0] != history[1] and history[0] == history[2] and history[1] == history[4] == history[5]
    assert all(r == (0, abi.Side.UNKNOWN) for r in history[3])


# ---------------------------------------------------------------- property test

V4_SPACE = ["10.0.0.1", "10.0.0.2", "10.0.1.1", "10.1.0.1", "10.1.1.1", "11.0.0.1"]
V6_SPACE = ["2001:db8:0:0::1", "2001:db8:0:0::2", "2001:db8:0:1::1", "2001:db8:1:0::1", "2001:db8:1:1::1",
            "2001:db9::1"]
V4_LENS = [0, 8, 16, 24, 32]
V6_LENS = [0, 32, 48, 64, 128]
PORT_SPECS = [53, 80, 443, "1000-2000", "1500-1600", "0-1023", 0, 65535, "0-65535"]


@st.composite
def prefixes(draw: Any) -> str:
    if draw(st.booleans()):
        addr, plen = draw(st.sampled_from(V4_SPACE)), draw(st.sampled_from(V4_LENS))
    else:
        addr, plen = draw(st.sampled_from(V6_SPACE)), draw(st.sampled_from(V6_LENS))
    return str(ipaddress.ip_network(f"{addr}/{plen}", strict=False))


@st.composite
def rules(draw: Any) -> dict[str, Any]:
    r: dict[str, Any] = {}
    label = draw(st.sampled_from([None, "a", "b", "c"]))
    side = draw(st.sampled_from([None, "eyeball", "origin"]))
    if label is None and side is None:
        label = "a"
    if label:
        r["label"] = label
    if side:
        r["side"] = side
    for which in ("src", "dst"):
        if draw(st.integers(0, 2)):
            r[which] = draw(st.lists(prefixes(), min_size=1, max_size=2, unique=True))
    proto = draw(st.sampled_from([None, "tcp", "udp", "icmp", "icmpv6"]))
    if proto:
        r["proto"] = proto
    if proto in (None, "tcp", "udp") and draw(st.booleans()):
        r["dport"] = draw(st.lists(st.sampled_from(PORT_SPECS), min_size=1, max_size=2))
    return r


L4S = ["tcp", "udp", "icmp", "icmpv6"]
PROBE_DPORTS = [0, 53, 80, 443, 1000, 1500, 1601, 2000, 9999, 65535]


def probe(family: int, src: str, dst: str, l4: str, dport: int, later_fragment: bool) -> P.Packet:
    if family == 4:
        return P.build(4, l4, src=src, dst=dst, dport=dport, frag_offset=9 if later_fragment else 0)
    return P.build(6, l4, src=src, dst=dst, dport=dport, ext=[P.FRAG_LATER] if later_fragment else [])


def probe_grid(rnd: random.Random) -> Iterator[P.Packet]:
    """Every (src, dst) of the address space, each with a drawn proto/port:
    a rule set costs one map rewrite, a packet only a test run."""
    for family, space in ((4, V4_SPACE), (6, V6_SPACE)):
        for src in space:
            for dst in space:
                yield probe(family, src, dst, rnd.choice(L4S), rnd.choice(PROBE_DPORTS), rnd.random() < 0.15)


@pytest.fixture(scope="module")
def hyp_loader() -> Iterator[Loader]:
    with pytest.MonkeyPatch.context() as mp, Loader(meta_key=META_KEY) as ld:
        # The grace period protects concurrent XDP runs during a flip; test
        # runs are synchronous, and 200 flips x 50 ms is just waiting.
        mp.setattr("dropwatch.loader.GEN_GRACE_S", 0.0)
        ld.load()
        yield ld


HYP_IDS = {"a": 1, "b": 2, "c": 3}


HYP_EXAMPLES = int(os.environ.get("DROPWATCH_HYPOTHESIS_EXAMPLES", "200"))


@settings(max_examples=HYP_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(rule_list=st.lists(rules(), min_size=0, max_size=6),
       default_side=st.sampled_from(["eyeball", "origin", "unknown"]),
       rnd=st.randoms(use_true_random=False))
def test_property_matches_reference(hyp_loader: Loader, rule_list: list[dict[str, Any]], default_side: str,
                                    rnd: random.Random) -> None:
    rs = parse_rules({"rules": rule_list, "default_side": default_side})
    try:
        compiled = compile_rules(rs, HYP_IDS)
    except RulesError:
        reject()  # more than DW_MAX_CANDS candidates on one prefix: refused, fine
    hyp_loader.apply_rules(compiled)
    assert hyp_loader.rule_map_entries() == map_entries(compiled)
    for pkt in probe_grid(rnd):
        check(hyp_loader, pkt.frame, pkt.expect(), rs=rs, ids=HYP_IDS, what=f"{pkt.desc} rules={rule_list}")


# ---------------------------------------------------------------- regressions

@pytest.mark.parametrize("dport", [["0-65535"], ["0-30000", "30001-65535"]], ids=["full", "merged"])
def test_explicit_full_port_range_needs_a_port(loader_factory: Any, dport: list[Any]) -> None:
    """A rule with a dport matches only packets that have a port (the
    reference, and dropwatch.h: "a packet without a port only matches
    'any'"). A rule whose ranges cover all of 0-65535 still says "has a port"."""
    ids = {"ported": 1}
    rs = parse_rules({"default_side": "eyeball", "rules": [{"label": "ported", "dst": ["10.0.0.0/8"],
                                                             "dport": dport}]})
    ld = loader_factory(rs, ids, meta_key=META_KEY)
    tcp = P.build(4, "tcp", src="1.1.1.1", dst="10.1.1.1", dport=7)
    check(ld, tcp.frame, tcp.expect(), rs=rs, ids=ids)  # has a port: labeled
    for pkt in (P.build(4, "icmp", src="1.1.1.1", dst="10.1.1.1"),
                P.build(4, "tcp", src="1.1.1.1", dst="10.1.1.1", frag_offset=3)):
        exp = pkt.expect()
        assert exp is not None and exp.dport is None
        assert expected(rs, ids, exp) == (0, abi.Side.EYEBALL)
        check(ld, pkt.frame, exp, rs=rs, ids=ids, what=pkt.desc)

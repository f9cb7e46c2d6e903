"""Tunnels in the XDP labeler, through BPF_PROG_TEST_RUN.

A tunnelled packet is labeled by its inner packet (the one the kernel
delivers, and maybe drops, after decapsulation), carries the landing PoP of
its outer source in the record and the per-PoP packet counters, and, with
flow_fallback on, leaves a dw_flows entry from the same classification.
The drop reader's use of those entries is tested on the real kernel in
tests/e2e/test_tunnels_e2e.py.
"""

from __future__ import annotations

import time
from typing import Any

import packets as P
import pytest

from dropwatch import abi
from dropwatch.loader import Loader, flow_key
from dropwatch.loader import test_run_xdp as xdp_test_run  # not "test_*": pytest would collect it
from dropwatch.rules import RuleSet, classify_reference, compile_rules, parse_rules

pytestmark = pytest.mark.bpf

META_KEY = 0x7C0FFEE5
RULES: dict[str, Any] = {
    "default_side": "eyeball",
    "rules": [
        {"label": "inner-web", "proto": "tcp", "dport": [443], "dst": ["10.10.1.0/24", "2001:db8:a::/48"]},
        {"label": "inner-any", "dst": ["10.10.0.0/16", "2001:db8::/32"]},
        # The outer destination: a tunnel endpoint that must NOT label the inner packet.
        {"label": "tunnel-endpoint", "side": "origin", "dst": ["172.16.0.0/12", "fd00::/8"]},
    ],
    "pops": [
        {"name": "ams01", "src": ["192.0.2.0/26", "2001:db8:ff::/48"]},
        {"name": "sjc02", "src": ["198.51.100.0/24"]},
    ],
    "encap": [
        {"type": "vxlan", "port": 4789},
        {"type": "gue", "port": 6080},
        {"type": "fou", "port": 5555, "ipproto": 4},
        {"type": "fou", "port": 5556, "ipproto": 41},
    ],
}
IDS = {"inner-web": 5, "inner-any": 9, "tunnel-endpoint": 13}
POP_IDS = {"ams01": 3, "sjc02": 4}
INNER = {4: ("203.0.113.9", "10.10.1.7"), 6: ("2001:db8:ee::9", "2001:db8:a::7")}
OUTER = {4: ("192.0.2.9", "172.16.0.1"), 6: ("2001:db8:ff::1", "fd00::1")}
PORTS = {"vxlan": 4789, "gue0": 6080, "gue1": 6080, "fou": 5555}


def make(loader_factory: Any, **over: Any) -> tuple[Loader, RuleSet]:
    rs = parse_rules({**RULES, **over})
    ld = loader_factory(meta_key=META_KEY)
    ld.apply_rules(compile_rules(rs, IDS, pop_ids=POP_IDS))
    return ld, rs


def inner_packet(family: int, proto: str = "tcp", dport: int = 443, sport: int = 40000) -> P.Packet:
    src, dst = INNER[family]
    return P.build(family, proto, src=src, dst=dst, sport=sport, dport=dport)


def wrap(kind: str, inner: P.Packet, outer_family: int, outer_src: str | None = None, **kw: Any) -> bytes:
    inner_family = inner.family
    assert inner_family is not None
    port = PORTS.get(kind, 0)
    if kind == "fou" and inner_family == 6:
        port = 5556
    src, dst = OUTER[outer_family]
    return P.tunnel(kind, outer_family=outer_family, outer_src=outer_src or src, outer_dst=dst,
                    inner_l3=inner.frame[14:], inner_family=inner_family, port=port, **kw)


def record(ld: Loader, frame: bytes) -> abi.Meta:
    verdict, meta, out, _ = xdp_test_run(ld, frame)
    assert verdict == 2 and out == frame
    source, rec = abi.decode_meta(meta, META_KEY)
    assert source == abi.Source.META and rec is not None, meta.hex()
    return rec


CASES = [(kind, outer, inner) for kind in P.TUNNEL_KINDS for outer in (4, 6) for inner in (4, 6)]


@pytest.mark.parametrize(("kind", "outer_family", "inner_family"), CASES)
def test_tunnel_labels_inner_packet_with_landing_pop(loader_factory: Any, kind: str, outer_family: int,
                                                     inner_family: int) -> None:
    ld, rs = make(loader_factory)
    inner = inner_packet(inner_family)
    frame = wrap(kind, inner, outer_family, gre_flags=0x20 if kind.startswith("gre") else 0, gue_hlen=2)
    rec = record(ld, frame)
    src, dst = INNER[inner_family]
    assert (rec.label_id, rec.side) == classify_reference(rs, IDS, inner_family, src, dst, 6, 443) == (5, 1)
    assert rec.pop_id == POP_IDS["ams01"]
    assert ld.read_stats("labeler").get(abi.Stat.XDP_ENCAP) == 1
    assert ld.read_packets(max(IDS.values())) == {(5, 1, POP_IDS["ams01"]): (1, len(frame))}


@pytest.mark.parametrize("gre_flags", [0, 0x20, 0x80, 0x10, 0xB0])
def test_gre_with_and_without_key_checksum_sequence(loader_factory: Any, gre_flags: int) -> None:
    ld, _ = make(loader_factory)
    rec = record(ld, wrap("gre", inner_packet(4, "udp", 53), 4, gre_flags=gre_flags))
    assert (rec.label_id, rec.pop_id) == (IDS["inner-any"], POP_IDS["ams01"])


def test_outer_source_in_no_pop_is_unknown_and_untunnelled_is_none(loader_factory: Any) -> None:
    ld, _ = make(loader_factory)
    assert record(ld, wrap("ipip", inner_packet(4), 4, outer_src="203.0.113.77")).pop_id == abi.DW_POP_UNKNOWN
    assert record(ld, wrap("ipip", inner_packet(4), 4, outer_src="198.51.100.200")).pop_id == POP_IDS["sjc02"]
    plain = inner_packet(4)
    assert record(ld, plain.frame).pop_id == abi.DW_POP_NONE


def test_udp_encapsulation_only_on_configured_ports(loader_factory: Any) -> None:
    """VXLAN on a port the rules do not name is plain UDP to the outer
    destination: labeled as the tunnel endpoint, no PoP."""
    ld, _ = make(loader_factory, encap=[{"type": "vxlan", "port": 4790}])
    rec = record(ld, wrap("vxlan", inner_packet(4), 4))
    assert (rec.label_id, rec.side, rec.pop_id) == (IDS["tunnel-endpoint"], 2, abi.DW_POP_NONE)


def test_inner_packet_cut_short_labels_outer(loader_factory: Any) -> None:
    ld, _ = make(loader_factory)
    frame = wrap("ipip", inner_packet(4), 4)
    cut = frame[:14 + 20 + 10]  # the inner IPv4 header is incomplete
    rec = record(ld, cut)
    assert (rec.label_id, rec.pop_id) == (IDS["tunnel-endpoint"], abi.DW_POP_NONE)


# ---------------------------------------------------------------- flow entries

def test_flow_entry_from_the_same_classification(loader_factory: Any) -> None:
    ld, _ = make(loader_factory)
    t0 = time.monotonic_ns()
    rec = record(ld, wrap("vxlan", inner_packet(4, sport=41000), 4))
    src, dst = INNER[4]
    v = ld.lookup_flow(flow_key(src, dst, 6, 41000, 443))
    assert v is not None
    assert (v.label_id, v.side, v.pop_id, v.flags) == (rec.label_id, rec.side, rec.pop_id, 0)
    assert v.epoch == ld.flow_cfg.epoch and t0 <= v.ts_ns <= time.monotonic_ns()


def test_flow_mode_encap_skips_plain_packets_all_does_not(loader_factory: Any) -> None:
    src, dst = INNER[4]
    key = flow_key(src, dst, 6, 42000, 443)
    ld, _ = make(loader_factory)
    record(ld, inner_packet(4, sport=42000).frame)
    assert ld.lookup_flow(key) is None
    ld_all, _ = make(loader_factory, flow_fallback={"mode": "all"})
    record(ld_all, inner_packet(4, sport=42000).frame)
    v = ld_all.lookup_flow(key)
    assert v is not None and (v.label_id, v.pop_id) == (IDS["inner-web"], abi.DW_POP_NONE)
    ld_off, _ = make(loader_factory, flow_fallback={"mode": "off"})
    record(ld_off, wrap("ipip", inner_packet(4, sport=42000), 4))
    assert ld_off.lookup_flow(key) is None


def test_no_flow_entry_when_the_key_cannot_hold_the_ports_the_rules_used(loader_factory: Any) -> None:
    """IPv6 with an extension header before TCP: the rules saw port 443,
    the reader (which parses only the fixed header) would not: one key
    would stand for two labels, so nothing is remembered."""
    ld, _ = make(loader_factory, flow_fallback={"mode": "all"})
    src, dst = INNER[6]
    pkt = P.build(6, "tcp", src=src, dst=dst, sport=43000, dport=443, ext=[P.DSTOPTS])
    assert record(ld, pkt.frame).label_id == IDS["inner-web"]
    assert ld.lookup_flow(flow_key(src, dst, P.IPPROTO_DSTOPTS)) is None
    assert ld.lookup_flow(flow_key(src, dst, 6, 43000, 443)) is None


def test_same_flow_from_two_pops_has_unknown_pop(loader_factory: Any) -> None:
    """The 5-tuple decides label and side, not the PoP: one inner flow
    arriving from two PoPs within max age leaves the PoP unknown."""
    ld, _ = make(loader_factory)
    src, dst = INNER[4]
    key = flow_key(src, dst, 6, 44000, 443)
    a = record(ld, wrap("ipip", inner_packet(4, sport=44000), 4, outer_src="192.0.2.9"))
    b = record(ld, wrap("ipip", inner_packet(4, sport=44000), 4, outer_src="198.51.100.9"))
    assert (a.pop_id, b.pop_id) == (POP_IDS["ams01"], POP_IDS["sjc02"])  # each record is exact
    v = ld.lookup_flow(key)
    assert v is not None and v.pop_id == abi.DW_POP_UNKNOWN and v.flags & abi.DW_FLOW_POP_AMBIGUOUS
    assert v.label_id == IDS["inner-web"]
    record(ld, wrap("ipip", inner_packet(4, sport=44000), 4, outer_src="192.0.2.9"))
    v = ld.lookup_flow(key)
    assert v is not None and v.pop_id == abi.DW_POP_UNKNOWN  # stays unknown while the flow is active


def test_reload_gives_new_entries_a_new_epoch(loader_factory: Any) -> None:
    ld, rs = make(loader_factory)
    src, dst = INNER[4]
    key = flow_key(src, dst, 6, 45000, 443)
    record(ld, wrap("ipip", inner_packet(4, sport=45000), 4))
    v1 = ld.lookup_flow(key)
    assert v1 is not None
    ld.apply_rules(compile_rules(rs, IDS, pop_ids=POP_IDS))
    assert ld.flow_cfg.epoch == v1.epoch + 1
    record(ld, wrap("ipip", inner_packet(4, sport=45000), 4))
    v2 = ld.lookup_flow(key)
    assert v2 is not None and v2.epoch == v1.epoch + 1

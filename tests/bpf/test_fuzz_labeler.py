"""Property-based fuzzing of the XDP labeler through BPF_PROG_TEST_RUN.

Hypothesis builds random and mutated Ethernet / VLAN / IPv4 / IPv6 / TCP /
UDP / ICMP frames (tests/bpf/packets.py builds the well-formed ones, then up
to five byte edits mangle them; some frames are random bytes behind a chosen
ethertype), and every frame is run through the real labeler at every
truncation length, with and without pre-existing ("foreign") metadata.

Invariants checked for every single run:

* the verdict is XDP_PASS;
* the packet bytes come back unchanged;
* the metadata area is either exactly the foreign metadata (no record: only
  when no address could be read from the frame), or our 16-byte record
  followed by the foreign metadata byte for byte, and the record decodes
  (dropwatch.abi.decode_meta) to exactly the (label, side) that
  dropwatch.rules.classify_reference gives for what the labeler can read
  from that frame;
* frames shorter than ETH_HLEN are refused by the kernel (EINVAL), never run;
* the kernel's own per-(label, side) packet and byte counters grow by
  exactly what the runs showed.

"What the labeler can read" comes from ``read_like_labeler`` below, a
byte-level transcription of parse_packet() in bpf/labeler.bpf.c. For frames
that packets.py built and nothing mangled, it is cross-checked against
packets.Packet.expect() (an independent model of the same parser), so the
oracle itself is tested too.

Sizes: the CI profile ("dropwatch-fuzz-ci") runs DROPWATCH_FUZZ_EXAMPLES
(default 2000) frames, each at every truncation length, in well under a
minute; the long run is

    DROPWATCH_FUZZ_EXAMPLES=200000 .venv/bin/python -m pytest -q -s \\
        tests/bpf/test_fuzz_labeler.py

(about half an hour on 2 cores). The test prints how many frames, test
runs and records it checked. The profile is not called "ci": Hypothesis
itself registers and auto-loads a profile of that name when CI=true, and
re-registering it would change every other Hypothesis test in the run.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import random
import struct
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import packets as P
from dropwatch import abi
from dropwatch.loader import Loader
from dropwatch.loader import test_run_xdp as xdp_test_run  # not "test_*": pytest would collect it
from dropwatch.rules import classify_reference, compile_rules, parse_rules

pytestmark = pytest.mark.bpf

XDP_PASS = 2
META_KEY = 0x0DDC0FFE
META_LEN = 16
# Kernel limit for the foreign metadata we hand in: 32 bytes is what every
# kernel accepts (before 6.8 the whole area is capped at 32); 6.8+ allows
# more, and ours (16) must still fit behind it.
FOREIGN_MAX = 32

FUZZ_EXAMPLES = int(os.environ.get("DROPWATCH_FUZZ_EXAMPLES", "2000"))
settings.register_profile(
    "dropwatch-fuzz-ci", max_examples=FUZZ_EXAMPLES, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
FUZZ_SETTINGS = settings.get_profile("dropwatch-fuzz-ci")

# Rules that make most headers matter: prefixes of several lengths (nested,
# host routes, /0), proto and dport conditions, a src+dst pair rule, side
# rules, and rules without any prefix.
FUZZ_RULES: dict[str, Any] = {
    "default_side": "eyeball",
    "rules": [
        {"label": "custA", "dst": ["10.10.0.0/16", "2001:db8:a::/48"]},
        {"label": "custA-web", "proto": "tcp", "dport": [80, 443], "dst": ["10.10.1.0/24", "2001:db8:a:1::/64"]},
        {"label": "host", "dst": ["10.10.1.1/32", "2001:db8:a::1/128"]},
        {"label": "quic", "proto": "udp", "dport": [443, "5000-5999"], "dst": ["10.20.0.0/16", "2001:db8:b::/48"]},
        {"side": "origin", "src": ["192.0.2.0/24", "2001:db8:ca::/48"]},
        {"label": "peer", "side": "origin", "src": ["198.51.100.0/24", "2001:db8:5::/48"],
         "dst": ["10.30.0.0/16", "2001:db8:30::/48"]},
        {"label": "icmp-any", "proto": "icmp", "dst": ["0.0.0.0/0"]},
        {"side": "origin", "proto": "icmpv6", "src": ["::/0"]},
        {"label": "dns", "proto": "udp", "dport": [53]},
        {"label": "alt-port", "dport": ["8000-8999"], "dst": ["10.10.0.0/16", "2001:db8:a::/48"]},
        {"label": "tcp-src", "proto": "tcp", "src": ["203.0.113.0/24"]},
        # Prefix-less port rules: they decide every packet to a random
        # address, so a port read from the wrong offset shows up.
        {"label": "low-ports", "dport": ["0-1023"]},
        {"side": "origin", "proto": "udp", "dport": ["1024-65535"]},
    ],
    # Landing PoPs (nested prefixes: the longest wins) and UDP tunnels.
    "pops": [
        {"name": "ams01", "src": ["192.0.2.0/26", "2001:db8:ff::/48"]},
        {"name": "ams01-b", "src": ["192.0.2.8/29"]},
        {"name": "sjc02", "src": ["198.51.100.0/24", "2001:db8:ff:1::/64"]},
    ],
    "encap": [
        {"type": "vxlan", "port": P.VXLAN_PORT},
        {"type": "gue", "port": 6080},
        {"type": "fou", "port": 5555, "ipproto": 4},
        {"type": "fou", "port": 5556, "ipproto": 41},
    ],
}
RS = parse_rules(FUZZ_RULES)
IDS = {name: 11 + 5 * i for i, name in enumerate(RS.labels())}
POP_IDS = {name: 7 + 100 * i for i, name in enumerate(RS.pop_names())}
RULE_PROTOS = {1, 6, 17, 58}  # every proto a rule above can name

V4_POOL = ["10.10.1.1", "10.10.1.7", "10.10.1.200", "10.10.77.3", "10.20.3.4", "10.30.5.5", "11.1.1.1",
           "192.0.2.9", "198.51.100.1", "203.0.113.5", "8.8.8.8", "0.0.0.0", "255.255.255.255"]
OUTER_V4 = ["192.0.2.1", "192.0.2.9", "192.0.2.200", "198.51.100.7", "203.0.113.5"]
OUTER_V6 = ["2001:db8:ff::1", "2001:db8:ff:1::1", "2001:db8:ff:2::1", "2001:db8:ca::9"]
V6_POOL = ["2001:db8:a::1", "2001:db8:a::7", "2001:db8:a:1::9", "2001:db8:b::4", "2001:db8:ca::9",
           "2001:db8:5::1", "2001:db8:30::5", "2001:db8:ffff::5", "::", "::ffff:10.10.1.1", "fe80::1", "ff02::1"]
PORTS = [0, 53, 80, 443, 4999, 5000, 5999, 6000, 8000, 8080, 8999, 9000, 65535]
TPIDS = [P.ETH_P_8021Q, P.ETH_P_8021AD]
ODD_TPIDS = [0x9100, P.ETH_P_IP, P.ETH_P_IPV6, 0x0000, 0xFFFF]
INTERESTING_BYTES = [0x00, 0xFF, 0x45, 0x4F, 0x60, 0x06, 0x11, 0x01, 0x3A, 0x2C, 0x2B, 0x3C, 0x81, 0x88,
                     0xA8, 0x08, 0x86, 0xDD, 0x01, 0xBB, 0x14, 0x35]


# ---------------------------------------------------------------- the oracle

@dataclass(frozen=True)
class Read:
    """What parse_packet() in labeler.bpf.c reads from a frame."""

    family: int
    saddr: str
    daddr: str
    proto: int | None  # the final protocol value the labeler ends on (None: never set)
    dport: int | None  # None: no port (has_port == 0)
    pop: int = abi.DW_POP_NONE  # tunnelled: the landing PoP of the outer source


@dataclass
class _L3:
    """One parse_l3() run: the addresses read, and where L4 starts."""

    read: Read | None = None
    l4_off: int | None = None  # set when pi->l4_ok (a first fragment's L4 header)
    truncated: bool = False


def _be16(b: bytes, off: int) -> int:
    return (b[off] << 8) | b[off + 1]


def _parse_l4(frame: bytes, off: int, proto: int, out: _L3) -> int | None:
    out.l4_off = off
    if proto not in (P.IPPROTO_TCP, P.IPPROTO_UDP):
        return None
    if off > P.PARSE_MAX_OFF or off + 4 > len(frame):
        out.truncated = True
        return None
    return _be16(frame, off + 2)


def _parse_l3(frame: bytes, off: int, h_proto: int) -> _L3:
    """parse_l3() (parse_ipv4/parse_ipv6) of labeler.bpf.c, byte for byte."""
    end = len(frame)
    out = _L3()
    if off > P.PARSE_MAX_OFF:
        out.truncated = True
        return out
    if h_proto == P.ETH_P_IP:
        if off + 20 > end:
            out.truncated = True
            return out
        saddr = str(ipaddress.IPv4Address(frame[off + 12:off + 16]))
        daddr = str(ipaddress.IPv4Address(frame[off + 16:off + 20]))
        proto = frame[off + 9]
        ihl = frame[off] & 0x0F  # the version nibble is not checked
        if ihl < 5:
            out.truncated = True
            out.read = Read(4, saddr, daddr, proto, None)
        elif _be16(frame, off + 6) & 0x1FFF:
            out.read = Read(4, saddr, daddr, proto, None)  # not the first fragment
        else:
            out.read = Read(4, saddr, daddr, proto, _parse_l4(frame, off + ihl * 4, proto, out))
        return out
    if h_proto == P.ETH_P_IPV6:
        if off + 40 > end:
            out.truncated = True
            return out
        saddr = str(ipaddress.IPv6Address(frame[off + 8:off + 24]))
        daddr = str(ipaddress.IPv6Address(frame[off + 24:off + 40]))
        nexthdr = frame[off + 6]
        off += 40
        for _ in range(P.MAX_V6_EXT):
            if nexthdr not in P.V6_EXT_TYPES:
                break
            if off > P.PARSE_MAX_OFF or off + 8 > end:
                out.truncated = True
                out.read = Read(6, saddr, daddr, nexthdr, None)
                return out
            if nexthdr == P.IPPROTO_FRAGMENT:
                frag = _be16(frame, off + 2) & 0xFFF8
                nexthdr = frame[off]
                off += 8
                if frag:
                    out.read = Read(6, saddr, daddr, nexthdr, None)
                    return out
                continue
            nexthdr, off = frame[off], off + (frame[off + 1] + 1) * 8
        out.read = Read(6, saddr, daddr, nexthdr, _parse_l4(frame, off, nexthdr, out))
        return out
    return out


def _parse_eth(frame: bytes, off: int, vlans: int) -> tuple[int, int] | None:
    """parse_eth(): (ethertype, offset after the header and tags); None if short."""
    if off > P.PARSE_MAX_OFF or off + P.ETH_HLEN > len(frame):
        return None
    h_proto = _be16(frame, off + 12)
    off += P.ETH_HLEN
    for _ in range(vlans):
        if h_proto not in (P.ETH_P_8021Q, P.ETH_P_8021AD):
            break
        if off > P.PARSE_MAX_OFF or off + 4 > len(frame):
            return None
        h_proto = _be16(frame, off + 2)
        off += 4
    return h_proto, off


def _bytes_at(frame: bytes, off: int, n: int) -> bytes | None:
    """pkt_bytes()"""
    if off > P.PARSE_MAX_OFF or off + n > len(frame):
        return None
    return frame[off:off + n]


def _tunnel_inner(frame: bytes, l3: _L3) -> tuple[int, int] | None:
    """tunnel_inner(): (inner ethertype, inner offset) of a tunnel, else None."""
    r, l4 = l3.read, l3.l4_off
    assert r is not None and l4 is not None
    if r.proto == P.IPPROTO_IPIP:
        return P.ETH_P_IP, l4
    if r.proto == P.IPPROTO_IPV6:
        return P.ETH_P_IPV6, l4
    if r.proto == P.IPPROTO_GRE:
        h = _bytes_at(frame, l4, 4)
        if h is None or h[0] & 0x40 or h[1] & 0x07:
            return None
        off = l4 + 4 + 4 * ((h[0] & 0x80 > 0) + (h[0] & 0x20 > 0) + (h[0] & 0x10 > 0))
        proto = _be16(h, 2)
        if proto == P.ETH_P_TEB:
            eth = _parse_eth(frame, off, 0)
            return None if eth is None or eth[0] == 0 else eth
        return (proto, off) if proto in (P.ETH_P_IP, P.ETH_P_IPV6) else None
    if r.proto != P.IPPROTO_UDP or r.dport is None:
        return None
    enc = next((e for e in RS.encap if e.port == r.dport), None)
    if enc is None:
        return None
    payload = l4 + 8
    if enc.type == "vxlan":
        h = _bytes_at(frame, payload, 8)
        if h is None or not h[0] & 0x08:
            return None
        eth = _parse_eth(frame, payload + 8, 0)
        return None if eth is None or eth[0] == 0 else eth
    if enc.type == "fou":
        return (P.ETH_P_IPV6 if enc.ipproto == 41 else P.ETH_P_IP), payload
    h = _bytes_at(frame, payload, 4)  # gue
    if h is None:
        return None
    ver = h[0] >> 6
    if ver == 1:
        return (P.ETH_P_IPV6 if h[0] >> 4 == 6 else P.ETH_P_IP), payload
    if ver != 0 or h[0] & 0x20:
        return None
    off = payload + 4 + (h[0] & 0x1F) * 4
    return {P.IPPROTO_IPIP: (P.ETH_P_IP, off), P.IPPROTO_IPV6: (P.ETH_P_IPV6, off)}.get(h[1])


def _pop_of(family: int, addr: str) -> int:
    """landing_pop(): longest PoP prefix containing the outer source."""
    ip = ipaddress.ip_address(addr)
    best: tuple[int, int] | None = None
    for pop in RS.pops:
        for net in pop.networks():
            if net.version == family and ip in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, POP_IDS[pop.name])
    return best[1] if best else abi.DW_POP_UNKNOWN


def read_like_labeler(frame: bytes) -> Read | None:
    """dw_parse_frame() of bpf/labeler.bpf.c, byte for byte. None: no address
    was read (not IP, or truncated before the addresses): no record."""
    eth = _parse_eth(frame, 0, P.MAX_VLANS)
    if eth is None:
        return None
    outer = _parse_l3(frame, eth[1], eth[0])
    if outer.read is None or outer.l4_off is None or outer.truncated:
        return outer.read
    inner_at = _tunnel_inner(frame, outer)
    if inner_at is None:
        return outer.read
    inner = _parse_l3(frame, inner_at[1], inner_at[0])
    if inner.read is None:
        return outer.read
    pop = _pop_of(outer.read.family, outer.read.saddr)
    r = inner.read
    return Read(r.family, r.saddr, r.daddr, r.proto, r.dport, pop)


def _norm_proto(proto: int | None) -> int | None:
    # Rules can only name these; any other value (or none) matches the same rules.
    return proto if proto in RULE_PROTOS else None


@lru_cache(maxsize=1 << 16)
def expected_record(family: int, saddr: str, daddr: str, proto: int | None, dport: int | None,
                    pop: int = abi.DW_POP_NONE) -> bytes:
    """The exact 16 bytes the labeler must write. A record equal to them
    decodes (abi.decode_meta, the reader's own validation) to this label,
    side and PoP: checked here once per distinct expectation."""
    label_id, side = classify_reference(RS, IDS, family, saddr, daddr, proto, dport)
    raw = bytes(abi.make_meta(label_id, side, META_KEY, pop_id=pop))
    source, rec = abi.decode_meta(raw, META_KEY)
    assert source == abi.Source.META and rec is not None
    assert (rec.label_id, rec.side, rec.pop_id) == (label_id, side, pop)
    return raw


# ---------------------------------------------------------------- strategies

def _addr(family: int) -> st.SearchStrategy[str]:
    pool = V4_POOL if family == 4 else V6_POOL
    return st.one_of(st.sampled_from(pool), st.sampled_from(pool),
                     st.ip_addresses(v=family).map(str))  # type: ignore[arg-type]


_L4 = st.one_of(st.sampled_from(["tcp", "udp", "icmp", "icmpv6"]), st.sampled_from(["tcp", "udp"]),
                st.integers(0, 255))
_PORT = st.one_of(st.sampled_from(PORTS), st.integers(0, 65535))
_EXT_LEN = st.sampled_from([8] * 12 + [16, 24, 40, 64])
_EXT = st.one_of(
    st.builds(P.Ext, st.sampled_from([P.IPPROTO_HOPOPTS, P.IPPROTO_ROUTING, P.IPPROTO_DSTOPTS]), _EXT_LEN),
    st.builds(P.Ext, st.just(P.IPPROTO_FRAGMENT), st.just(8), st.sampled_from([0, 0, 0, 1, 185, 0x200, 0x1FFF]),
              st.booleans()),
)


# Hypothesis favours small integers (0 above all), so "integers(0, 19) == 0"
# would be far more frequent than 1 in 20; a sampled list is closer to its weights.
_RARELY = st.sampled_from([False] * 9 + [True])
_SOMETIMES = st.sampled_from([False] * 9 + [True])


@dataclass(frozen=True)
class Case:
    frame: bytes
    built: P.Packet | None  # the well-formed frame packets.py built, if nothing mangled it
    desc: str


@st.composite
def built_frames(draw: st.DrawFn) -> tuple[P.Packet, bool]:
    """A frame from packets.build; the flag says whether packets' own model
    of the parser is valid for it (it does not model odd TPIDs, a forced IHL
    above 4, or an L4 protocol number that is an IPv6 extension header)."""
    family = draw(st.sampled_from([4, 6]))
    l4 = draw(_L4)
    proto = P.L4_NAMES[l4] if isinstance(l4, str) else l4
    src, dst = draw(_addr(family)), draw(_addr(family))
    dport, sport = draw(_PORT), draw(_PORT)
    modelled = True
    if draw(_SOMETIMES):
        vlans = draw(st.lists(st.sampled_from(TPIDS * 3 + ODD_TPIDS), min_size=1, max_size=3))
        modelled = False
    else:
        vlans = draw(st.lists(st.sampled_from(TPIDS), max_size=2))
    payload = draw(st.binary(max_size=8))
    pad_to = draw(st.sampled_from([0, 0, 0, 60]))
    kw: dict[str, Any] = {}
    if family == 4:
        kw["options"] = draw(st.sampled_from([0, 0, 0, 4, 8, 12, 40]))
        ihl = draw(st.sampled_from([None] * 8 + [0, 1, 3, 4, 4, 5, 6, 15]))
        if ihl is not None:
            kw["ihl"] = ihl
            modelled = modelled and ihl < 5
        kw["frag_offset"] = draw(st.sampled_from([0] * 6 + [1, 7, 185, 0x100, 0x200, 0x1000, 0x1FFF]))
        kw["mf"], kw["df"] = draw(st.booleans()), draw(st.booleans())
    else:
        ext = draw(st.one_of(st.lists(_EXT, max_size=4), st.lists(_EXT, min_size=5, max_size=8)))
        if draw(_RARELY):
            # Now and then one long header, pushing what follows past
            # DW_PARSE_MAX_OFF (512), where the labeler stops reading.
            big = P.Ext(draw(st.sampled_from([P.IPPROTO_HOPOPTS, P.IPPROTO_DSTOPTS])),
                        draw(st.sampled_from([440, 448, 456, 464, 504])))
            ext.insert(draw(st.integers(0, len(ext))), big)
        kw["ext"] = ext
        modelled = modelled and proto not in P.V6_EXT_TYPES
    pkt = P.build(family, proto, src=src, dst=dst, sport=sport, dport=dport, vlans=vlans, payload=payload,
                  pad_to=pad_to, **kw)
    return pkt, modelled


@st.composite
def tunnelled(draw: st.DrawFn, inner: P.Packet) -> P.Packet:
    """``inner``'s IP packet (from its IP header on) in one of the tunnels
    the labeler knows, from a source in a PoP or not."""
    eth = 14
    while _be16(inner.frame, eth - 2) in (P.ETH_P_8021Q, P.ETH_P_8021AD):
        eth += 4
    inner_family = 4 if _be16(inner.frame, eth - 2) == P.ETH_P_IP else 6
    kind = draw(st.sampled_from(P.TUNNEL_KINDS))
    outer_family = draw(st.sampled_from([4, 6]))
    pool = OUTER_V4 if outer_family == 4 else OUTER_V6
    port = {"vxlan": P.VXLAN_PORT, "gue0": 6080, "gue1": 6080,
            "fou": 5555 if inner_family == 4 else 5556}.get(kind, 0)
    if draw(_RARELY):
        port = draw(st.sampled_from([5555, 5556, 6080, P.VXLAN_PORT, 4790]))  # the wrong kind on a port
    frame = P.tunnel(kind, outer_family=outer_family, outer_src=draw(st.sampled_from(pool)),
                     outer_dst=draw(_addr(outer_family)), inner_l3=inner.frame[eth:], inner_family=inner_family,
                     port=port, gre_flags=draw(st.sampled_from([0, 0x20, 0x80, 0x10, 0xB0])),
                     gue_hlen=draw(st.sampled_from([0, 0, 1, 3])),
                     vlans=draw(st.lists(st.sampled_from(TPIDS), max_size=1)))
    return P.Packet(frame, None, desc=f"{kind} over ipv{outer_family}: {inner.desc}")


@st.composite
def mutate(draw: st.DrawFn, frame: bytes) -> tuple[bytes, list[str]]:
    """Up to five edits (set, xor, insert, delete), mostly in the headers."""
    edits: list[str] = []
    b = bytearray(frame)
    for _ in range(draw(st.integers(1, 5))):
        if not b:
            break
        hot = min(len(b), 80)
        pos = draw(st.one_of(st.integers(0, hot - 1), st.integers(0, len(b) - 1)))
        kind = draw(st.sampled_from(["set", "set", "xor", "insert", "delete"]))
        val = draw(st.one_of(st.sampled_from(INTERESTING_BYTES), st.integers(0, 255)))
        if kind == "set":
            b[pos] = val
        elif kind == "xor":
            b[pos] ^= 1 << (val & 7)
        elif kind == "insert":
            b[pos:pos] = bytes([val])
        else:
            del b[pos]
        edits.append(f"{kind}@{pos}={val:#04x}")
    return bytes(b), edits


@st.composite
def cases(draw: st.DrawFn) -> Case:
    mode = draw(st.sampled_from(["built", "built", "mutated", "mutated", "mutated", "random"]))
    if mode == "random":
        ethertype = draw(st.sampled_from([P.ETH_P_IP, P.ETH_P_IPV6, P.ETH_P_8021Q, P.ETH_P_8021AD, P.ETH_P_ARP]))
        body = draw(st.binary(min_size=0, max_size=100))
        if body and draw(st.booleans()):
            body = bytes([draw(st.sampled_from([0x45, 0x46, 0x4F, 0x60, 0x40]))]) + body[1:]
        frame = P.DST_MAC + P.SRC_MAC + struct.pack("!H", ethertype) + body
        return Case(frame, None, f"random ethertype {ethertype:#06x} len {len(frame)}")
    pkt, modelled = draw(built_frames())
    if draw(_SOMETIMES) or draw(_SOMETIMES):
        pkt = draw(tunnelled(pkt))
        modelled = False
    if mode == "built":
        return Case(pkt.frame, pkt if modelled else None, f"built {pkt.desc}")
    frame, edits = draw(mutate(pkt.frame))
    return Case(frame, None, f"mutated {pkt.desc} edits {edits}")


_FOREIGN = st.one_of(
    st.just(b""),
    st.integers(1, FOREIGN_MAX // 4).flatmap(lambda k: st.binary(min_size=4 * k, max_size=4 * k)),
    # A copy of a record of ours, valid or with a stale key, possibly with more behind it: still foreign.
    st.builds(lambda lid, side, key, extra: bytes(abi.make_meta(lid, side, key)) + extra,
              st.sampled_from([0, 1, *IDS.values()]), st.integers(0, 3), st.sampled_from([META_KEY, 0, 1]),
              st.sampled_from([b"", b"\xaa" * 4, b"\x55" * 16])),
)


# ---------------------------------------------------------------- the test

@pytest.fixture(scope="module")
def labeler() -> Iterator[Loader]:
    with Loader(meta_key=META_KEY) as ld:
        ld.load()
        ld.apply_rules(compile_rules(RS, IDS, pop_ids=POP_IDS))
        yield ld


def _what(case: Case, n: int, foreign: bytes) -> str:
    return (f"{case.desc}; cut at {n}/{len(case.frame)}; foreign {foreign.hex() or '-'}; "
            f"frame {case.frame[:n].hex()}")


def check_frame(ld: Loader, case: Case, foreign: bytes, stats: Counter[str],
                counted: Counter[tuple[int, int, int, str]] | None = None) -> None:
    """Every truncation of one frame. (Assertion messages are built only
    on failure: formatting them eagerly would double the run time.)"""
    frame = case.frame
    for n in range(len(frame) + 1):
        f = frame[:n]
        if n < P.ETH_HLEN:
            # The kernel refuses XDP input shorter than an Ethernet header.
            with pytest.raises(OSError) as ei:
                xdp_test_run(ld, f, meta=foreign)
            assert ei.value.errno == errno.EINVAL, _what(case, n, foreign)
            stats["refused_short"] += 1
            continue
        verdict, meta, out, _ = xdp_test_run(ld, f, meta=foreign)
        stats["runs"] += 1
        assert verdict == XDP_PASS, _what(case, n, foreign)
        assert out == f, f"{_what(case, n, foreign)}: packet bytes changed"
        rd = read_like_labeler(f)
        if case.built is not None:
            # The oracle against packets.py's own model of the parser.
            exp = case.built.expect(n)
            mine = None if rd is None else (rd.family, rd.saddr, rd.daddr, _norm_proto(rd.proto), rd.dport)
            theirs = None if exp is None else (exp.family, str(ipaddress.ip_address(exp.saddr)),
                                               str(ipaddress.ip_address(exp.daddr)), _norm_proto(exp.proto), exp.dport)
            assert mine == theirs, f"{_what(case, n, foreign)}: oracle {mine} != packets.expect {theirs}"
        if rd is None:
            assert meta == foreign, f"{_what(case, n, foreign)}: no address readable, metadata area {meta.hex()}"
            stats["no_record"] += 1
            if counted is not None:  # counted at ingress as (unlabeled, unknown side)
                counted[(0, 0, abi.DW_POP_NONE, "packets")] += 1
                counted[(0, 0, abi.DW_POP_NONE, "bytes")] += n
            continue
        assert len(meta) == META_LEN + len(foreign), f"{_what(case, n, foreign)}: metadata area {meta.hex()}"
        assert meta[META_LEN:] == foreign, f"{_what(case, n, foreign)}: foreign metadata changed: {meta.hex()}"
        want = expected_record(rd.family, rd.saddr, rd.daddr, _norm_proto(rd.proto), rd.dport, rd.pop)
        if meta[:META_LEN] != want:
            source, rec = abi.decode_meta(meta, META_KEY)
            w = abi.Meta.from_buffer_copy(want)
            raise AssertionError(f"{_what(case, n, foreign)}: read {rd}; record {meta[:META_LEN].hex()} decodes as "
                                 f"{source!r} {(rec.label_id, rec.side) if rec else None}; want "
                                 f"(label {w.label_id}, side {w.side}, pop {w.pop_id})")
        stats["records"] += 1
        stats["records_behind_foreign"] += bool(foreign)
        label_id, side = int.from_bytes(want[4:8], "little"), want[10]
        stats["labeled" if label_id else "unlabeled_record"] += 1
        stats["tunnelled"] += rd.pop != abi.DW_POP_NONE
        if counted is not None:
            counted[(label_id, side, rd.pop, "packets")] += 1
            counted[(label_id, side, rd.pop, "bytes")] += n
        stats["with_port" if rd.dport is not None else "without_port"] += 1


def test_fuzz_labeler(labeler: Loader, capsys: pytest.CaptureFixture[str]) -> None:
    # The oracle's rules compile as they are (no candidate overflow).
    compiled = compile_rules(RS, IDS, pop_ids=POP_IDS)
    assert labeler.rule_map_entries() == {"dw_results": len(compiled.results) - 1, "dw_pairs": len(compiled.pairs),
                                          "dw_lpm_ranges": len(compiled.lpm.v4_rng) + compiled.lpm.v6_entries(),
                                          "dw_slot4": compiled.lpm.v4_used(),
                                          "dw_slot6": compiled.lpm.v6_used()}
    stats: Counter[str] = Counter()
    counted: Counter[tuple[int, int, int, str]] = Counter()
    max_id = max(IDS.values())
    stats_before, pkts_before = labeler.read_stats("labeler"), labeler.read_packets(max_id)
    t0 = time.monotonic()

    @FUZZ_SETTINGS
    @given(case=cases(), foreign=_FOREIGN)
    def fuzz(case: Case, foreign: bytes) -> None:
        note(f"{case.desc}; frame {case.frame.hex()}; foreign {foreign.hex()}")
        stats["frames"] += 1
        stats["with_foreign"] += bool(foreign)
        check_frame(labeler, case, foreign, stats, counted)

    fuzz()
    elapsed = time.monotonic() - t0
    stats_after, pkts_after = labeler.read_stats("labeler"), labeler.read_packets(max_id)

    def delta(s: abi.Stat) -> int:
        return stats_after.get(s, 0) - stats_before.get(s, 0)

    # The kernel's own counters agree with the runs: every run is counted
    # once at ingress under the (label, side) its record carries (frames
    # without a record under (0, unknown)), with its length in bytes.
    got: Counter[tuple[int, int, int, str]] = Counter()
    for (lid, side, pop), (pk, by) in pkts_after.items():
        b_pk, b_by = pkts_before.get((lid, side, pop), (0, 0))
        if pk - b_pk:
            got[(lid, side, pop, "packets")] = pk - b_pk
        if by - b_by:
            got[(lid, side, pop, "bytes")] = by - b_by
    assert got == counted
    assert delta(abi.Stat.XDP_META_FAILED) == 0
    assert delta(abi.Stat.XDP_LABEL_RANGE) == 0
    assert delta(abi.Stat.XDP_FOREIGN_META) == stats["records_behind_foreign"]
    # The generator really reaches every outcome.
    assert stats["frames"] >= min(FUZZ_EXAMPLES, 100)
    assert delta(abi.Stat.XDP_FLOW_FAIL) == 0
    for k in ("no_record", "labeled", "unlabeled_record", "with_port", "without_port", "with_foreign", "tunnelled"):
        assert stats[k] > 0, (k, dict(stats))
    with capsys.disabled():
        print(f"\nlabeler fuzz: {stats['frames']} frames, {stats['runs']} test runs "
              f"(+{stats['refused_short']} sub-14-byte inputs refused), {stats['records']} records checked "
              f"({stats['labeled']} labeled), {stats['no_record']} without a record, "
              f"{stats['with_foreign']} frames with foreign metadata; {elapsed:.1f}s")


# Each sits on one of the parser's limits, with a port or protocol that
# changes the label if the limit were off by one.
EDGE_FRAMES = [
    P.build(4, "tcp", src="203.0.113.5", dst="10.10.1.200", dport=8080, vlans=TPIDS, options=12),
    # IHL 4: the "port" would be the low half of the destination address (772)
    P.build(4, "udp", src="1.1.1.1", dst="8.8.3.4", dport=5999, ihl=4),
    # fragment offset 0x200: only the high bits of the 13-bit field set
    P.build(4, "udp", src="1.1.1.1", dst="8.8.3.4", dport=53, frag_offset=0x200),
    # three tags: one more than DW_MAX_VLANS, no record
    P.Packet(P.stacked(P.ETH_P_IP, (P.ETH_P_8021AD, P.ETH_P_8021Q, P.ETH_P_8021Q),
                       P.build(4, "udp", src="1.1.1.1", dst="8.8.3.4", dport=53).frame[14:]), None,
             desc="ipv4 behind 3 tags"),
    P.build(6, "udp", src="2001:db8:ca::9", dst="2001:db8:b::4", dport=443,
            ext=[P.HBH, P.ROUTING, P.FRAG_FIRST, P.DSTOPTS]),
    P.build(6, "tcp", src="2001:db8:5::1", dst="2001:db8:30::5", ext=[P.FRAG_LATER]),
    # six extension headers (the limit), then seven
    P.build(6, "udp", src="fe80::1", dst="fe80::2", dport=53, ext=[P.HBH] + [P.DSTOPTS] * 5),
    P.build(6, "udp", src="fe80::1", dst="fe80::2", dport=53, ext=[P.HBH] + [P.DSTOPTS] * 6),
    # L4 header at 510 (read) and at 518 (past DW_PARSE_MAX_OFF: not read)
    P.build(6, "udp", src="fe80::1", dst="fe80::2", dport=53, ext=[P.Ext(P.IPPROTO_DSTOPTS, 456)]),
    P.build(6, "udp", src="fe80::1", dst="fe80::2", dport=53, ext=[P.Ext(P.IPPROTO_DSTOPTS, 464)]),
    P.build(6, "icmpv6", src="fe80::1", dst="2001:db8:a::1", ext=[P.Ext(P.IPPROTO_DSTOPTS, 504)]),
]


@pytest.mark.parametrize("foreign_len", [0, 4, 16, FOREIGN_MAX])
def test_fuzz_oracle_on_parser_limits(labeler: Loader, foreign_len: int) -> None:
    """A deterministic slice of the above (runs whatever Hypothesis draws):
    every truncation of frames sitting on the parser's limits."""
    stats: Counter[str] = Counter()
    foreign = bytes(range(0x40, 0x40 + foreign_len))
    for pkt in EDGE_FRAMES:
        check_frame(labeler, Case(pkt.frame, pkt, pkt.desc), foreign, stats)
    assert stats["records"] and stats["no_record"]
    # The limits really change the answer: a DNS label with the port, none without.
    reads = [read_like_labeler(p.frame) for p in EDGE_FRAMES]
    assert reads[3] is None
    assert [r.dport if r else None for r in reads[6:10]] == [53, None, 53, None]


def test_no_room_for_our_record_leaves_area_alone(labeler: Loader) -> None:
    """When the metadata area cannot grow by 16 bytes (foreign metadata
    already near the kernel's limit), the labeler writes nothing, still
    passes the packet, and counts the failure."""
    pkt = P.build(4, "udp", src="192.0.2.9", dst="10.20.3.4", dport=443)
    # Find the largest foreign area BPF_PROG_TEST_RUN accepts on this kernel.
    biggest = 0
    for size in range(4, 256, 4):
        try:
            xdp_test_run(labeler, pkt.frame, meta=b"\x5a" * size)
        except OSError:
            break
        biggest = size
    before = labeler.read_stats("labeler").get(abi.Stat.XDP_META_FAILED, 0)
    failed = 0
    for size in range(max(4, biggest - 12), biggest + 4, 4):
        foreign = bytes((i * 7) & 0xFF for i in range(size))
        verdict, meta, out, _ = xdp_test_run(labeler, pkt.frame, meta=foreign)
        assert verdict == XDP_PASS and out == pkt.frame
        if len(meta) == len(foreign):
            assert meta == foreign
            failed += 1
        else:
            assert meta[META_LEN:] == foreign
            assert abi.decode_meta(meta, META_KEY)[0] == abi.Source.META
    assert failed >= 1, f"no foreign size up to {biggest} left too little room"
    assert labeler.read_stats("labeler").get(abi.Stat.XDP_META_FAILED, 0) - before == failed


def test_record_check_covers_side_and_flags(labeler: Loader) -> None:
    """dropwatch.h: "the check value covers the first 12 bytes"."""
    # Same label (custA), different side: eyeball by default, origin from 192.0.2.0/24.
    eyeball = P.build(4, "tcp", src="1.1.1.1", dst="10.10.77.3")
    origin = P.build(4, "tcp", src="192.0.2.9", dst="10.10.77.3")
    recs = []
    for pkt in (eyeball, origin):
        _, meta, _, _ = xdp_test_run(labeler, pkt.frame)
        recs.append(abi.Meta.from_buffer_copy(meta[:META_LEN]))
    assert recs[0].label_id == recs[1].label_id == IDS["custA"]
    assert (recs[0].side, recs[1].side) == (abi.Side.EYEBALL, abi.Side.ORIGIN)
    assert recs[0].check != recs[1].check, (
        f"records differing only in the side byte carry the same check {recs[0].check:#06x}")
    # In general (the Python mirror is checked against the BPF by test_labeler's
    # test_meta_check_matches_bpf): changing the side or flags byte of a record
    # must change its check for all but a chance 1/65536 of keys.
    rnd = random.Random(7)
    same = 0
    for _ in range(64):
        key, lid = rnd.getrandbits(32), rnd.randrange(1, abi.DW_MAX_LABELS)
        rec = abi.make_meta(lid, abi.Side.EYEBALL, key)
        for field, value in (("side", abi.Side.ORIGIN), ("flags", rnd.randrange(1, 256))):
            other = abi.Meta.from_buffer_copy(bytes(rec))
            setattr(other, field, value)
            same += abi.meta_check(other, key) == rec.check
    assert same <= 2, f"{same} of 128 edited records keep their check"

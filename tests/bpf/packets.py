"""A small Ethernet/VLAN/IPv4/IPv6/L4 frame builder for the labeler tests.

stdlib only (no scapy). Checksums are left zero: the labeler never checks
them. Every built frame carries what the labeler is expected to read from
it, including from any prefix of it (``Packet.expect(n)``), so the truncation
tests need no second parser.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806
ETH_P_LLDP = 0x88CC
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8

IPPROTO_HOPOPTS = 0
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_GRE = 47
IPPROTO_ICMPV6 = 58
IPPROTO_DSTOPTS = 60
V6_EXT_TYPES = (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT)
L4_NAMES = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP, "icmp": IPPROTO_ICMP, "icmpv6": IPPROTO_ICMPV6}
PORT_PROTOS = (IPPROTO_TCP, IPPROTO_UDP)

# Documented parser limits of bpf/labeler.bpf.c.
MAX_VLANS = 2  # DW_MAX_VLANS
MAX_V6_EXT = 6  # DW_MAX_V6_EXT
PARSE_MAX_OFF = 512  # DW_PARSE_MAX_OFF: headers starting deeper are not read

SRC_MAC = bytes.fromhex("020000000001")
DST_MAC = bytes.fromhex("020000000002")


class Expect(NamedTuple):
    """What the labeler must classify on: classify_reference's arguments."""

    family: int
    saddr: str
    daddr: str
    proto: int | None  # None: not known (rules with a proto cannot match)
    dport: int | None  # None: no port (rules with a dport cannot match)


@dataclass(frozen=True)
class Packet:
    frame: bytes
    family: int | None  # 4, 6; None: not IP (no record expected)
    saddr: str | None = None
    daddr: str | None = None
    proto: int | None = None
    dport: int | None = None
    addr_end: int | None = None  # frame length from which the addresses are complete
    proto_end: int | None = None  # ... from which the final protocol is known
    port_end: int | None = None  # ... from which the dport is read (None: never)
    desc: str = ""

    def __len__(self) -> int:
        return len(self.frame)

    def expect(self, n: int | None = None) -> Expect | None:
        """Expected classification input for ``frame[:n]``; None: no record."""
        if n is None:
            n = len(self.frame)
        if self.family is None or self.addr_end is None or n < self.addr_end:
            return None
        assert self.saddr is not None and self.daddr is not None
        proto = self.proto if self.proto_end is not None and n >= self.proto_end else None
        dport = self.dport if self.port_end is not None and n >= self.port_end else None
        return Expect(self.family, self.saddr, self.daddr, proto, dport)


@dataclass(frozen=True)
class Ext:
    """An IPv6 extension header. ``length`` is the total size in bytes (a
    multiple of 8, at least 8); fragment headers are always 8 bytes."""

    kind: int
    length: int = 8
    frag_offset: int = 0  # fragment header only: offset in 8-byte units
    more: bool = False  # fragment header only: M flag


HBH = Ext(IPPROTO_HOPOPTS)
ROUTING = Ext(IPPROTO_ROUTING, 24)
DSTOPTS = Ext(IPPROTO_DSTOPTS, 16)
FRAG_FIRST = Ext(IPPROTO_FRAGMENT, frag_offset=0, more=True)
FRAG_LATER = Ext(IPPROTO_FRAGMENT, frag_offset=185, more=True)
FRAG_LAST = Ext(IPPROTO_FRAGMENT, frag_offset=370, more=False)


def eth_header(ethertype: int, vlans: Sequence[int] = (), vids: Sequence[int] | None = None) -> bytes:
    """Ethernet header with VLAN tags, outermost first; each entry of
    ``vlans`` is the tag's TPID (0x8100 or 0x88a8, or anything else)."""
    out = DST_MAC + SRC_MAC
    for i, tpid in enumerate(vlans):
        vid = vids[i] if vids else 100 + i
        out += struct.pack("!HH", tpid, (3 << 13) | (vid & 0xFFF))
    return out + struct.pack("!H", ethertype)


def l4_header(proto: int, sport: int = 40000, dport: int = 80) -> bytes:
    if proto == IPPROTO_TCP:
        return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    if proto == IPPROTO_UDP:
        return struct.pack("!HHHH", sport, dport, 8, 0)
    if proto == IPPROTO_ICMP:
        return struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1)  # echo request
    if proto == IPPROTO_ICMPV6:
        return struct.pack("!BBHHH", 128, 0, 0, 0x1234, 1)  # echo request
    return b"\xde\xad\xbe\xef" * 2  # some other protocol: opaque bytes


def ipv4_options(nbytes: int) -> bytes:
    """``nbytes`` (multiple of 4) of options: NOPs then an end-of-list."""
    assert nbytes % 4 == 0 and 0 <= nbytes <= 40
    if not nbytes:
        return b""
    return b"\x01" * (nbytes - 1) + b"\x00"


def ipv4_header(src: str, dst: str, proto: int, payload_len: int, *, options: bytes = b"",
                ihl: int | None = None, frag_offset: int = 0, mf: bool = False, df: bool = False,
                ttl: int = 64) -> bytes:
    real_ihl = 5 + len(options) // 4
    hl = real_ihl if ihl is None else ihl
    flags = (0x4000 if df else 0) | (0x2000 if mf else 0) | (frag_offset & 0x1FFF)
    total = 20 + len(options) + payload_len
    return struct.pack("!BBHHHBBH4s4s", (4 << 4) | (hl & 0xF), 0, total & 0xFFFF, 0x4242, flags, ttl,
                       proto, 0, ipaddress.IPv4Address(src).packed,
                       ipaddress.IPv4Address(dst).packed) + options


def ipv6_header(src: str, dst: str, nexthdr: int, payload_len: int) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, payload_len & 0xFFFF, nexthdr, 64,
                       ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)


def ext_header(ext: Ext, nexthdr: int) -> bytes:
    if ext.kind == IPPROTO_FRAGMENT:
        return struct.pack("!BBHI", nexthdr, 0, ((ext.frag_offset & 0x1FFF) << 3) | int(ext.more), 0xC0FFEE)
    assert ext.length >= 8 and ext.length % 8 == 0, ext
    body = ext.length - 2
    if ext.kind == IPPROTO_ROUTING:
        # type 0 style: routing type, segments left 0, then reserved/addresses
        return struct.pack("!BBBB", nexthdr, ext.length // 8 - 1, 0, 0) + b"\0" * (body - 2)
    # hop-by-hop / destination options: PadN options (Pad1 for a last odd byte)
    assert ext.length <= 2048, ext
    opts = b""
    left = body
    while left:
        if left == 1:
            opts += b"\0"
            break
        n = min(left - 2, 255)
        if left - (n + 2) == 1:
            n -= 1  # leave room for a Pad1 rather than a 1-byte remainder PadN cannot fill
        opts += bytes([1, n]) + b"\0" * n
        left -= n + 2
    return struct.pack("!BB", nexthdr, ext.length // 8 - 1) + opts


def build(family: int, l4: int | str, *, src: str, dst: str, sport: int = 40000, dport: int = 80,
          vlans: Sequence[int] = (), options: int = 0, ihl: int | None = None, frag_offset: int = 0,
          mf: bool = False, df: bool = False, ext: Sequence[Ext] = (), payload: bytes = b"",
          pad_to: int = 0, ethertype: int | None = None) -> Packet:
    """One frame plus what the labeler must read from it.

    ``options``: IPv4 option bytes (multiple of 4, IHL = 5 + options/4);
    ``ihl``: force the IHL field (e.g. < 5: invalid, no L4 offset);
    ``frag_offset``/``mf``/``df``: IPv4 fragment fields; ``ext``: IPv6
    extension header chain; ``pad_to``: pad the frame to at least this
    length (Ethernet padding after the IP packet).
    """
    proto = L4_NAMES[l4] if isinstance(l4, str) else l4
    l4h = l4_header(proto, sport, dport)
    eth = eth_header(ethertype if ethertype is not None else (ETH_P_IP if family == 4 else ETH_P_IPV6), vlans)
    l3off = len(eth)
    desc = (f"v{family} proto {proto} vlans {[hex(v) for v in vlans]} options {options} ihl {ihl} "
            f"frag {frag_offset}{'+MF' if mf else ''} ext {[(e.kind, e.length, e.frag_offset) for e in ext]} "
            f"{src}->{dst} dport {dport}")
    if family == 4:
        opts = ipv4_options(options)
        hdr = ipv4_header(src, dst, proto, len(l4h) + len(payload), options=opts, ihl=ihl,
                          frag_offset=frag_offset, mf=mf, df=df)
        frame = eth + hdr + l4h + payload
        addr_end = l3off + 20
        hl = (len(hdr) // 4) if ihl is None else ihl
        l4off = l3off + hl * 4
        has_port = proto in PORT_PROTOS and hl >= 5 and frag_offset == 0 and l4off <= PARSE_MAX_OFF
        return Packet(frame.ljust(pad_to, b"\0"), 4, src, dst, proto, dport if has_port else None,
                      addr_end, addr_end, l4off + 4 if has_port else None, desc)
    assert family == 6
    chain = b""
    kinds = [e.kind for e in ext] + [proto]
    for i, e in enumerate(ext):
        chain += ext_header(e, kinds[i + 1])
    hdr = ipv6_header(src, dst, kinds[0], len(chain) + len(l4h) + len(payload))
    frame = eth + hdr + chain + l4h + payload
    addr_end = l3off + 40

    # What a correct parser concludes, walking the chain like the kernel.
    off = addr_end
    proto_end = addr_end
    final: int | None = kinds[0]
    has_port = True
    for i, e in enumerate(ext):
        if i >= MAX_V6_EXT or off > PARSE_MAX_OFF:
            final, has_port = None, False  # deeper than the labeler looks
            break
        proto_end = off + 8  # the next-header (and fragment offset) field are read from here
        final = kinds[i + 1]
        off += 8 if e.kind == IPPROTO_FRAGMENT else e.length
        if e.kind == IPPROTO_FRAGMENT and e.frag_offset:
            has_port = False  # a later fragment: its payload carries no L4 header
            break
    if final in V6_EXT_TYPES:
        final, has_port = None, False
    if final not in PORT_PROTOS or off > PARSE_MAX_OFF:
        has_port = False
    return Packet(frame.ljust(pad_to, b"\0"), 6, src, dst, final, dport if has_port else None,
                  addr_end, proto_end, off + 4 if has_port else None, desc)


def non_ip(ethertype: int = ETH_P_ARP, vlans: Sequence[int] = (), payload: bytes | None = None,
           pad_to: int = 60) -> Packet:
    """A frame the labeler must leave without a record."""
    if payload is None:
        # An ARP request body (also used as filler for other ethertypes).
        payload = struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, 1, SRC_MAC, bytes([10, 10, 1, 1]),
                              b"\0" * 6, bytes([10, 10, 1, 2]))
    frame = eth_header(ethertype, vlans) + payload
    return Packet(frame.ljust(pad_to, b"\0"), None, desc=f"ethertype {ethertype:#06x} vlans {list(vlans)}")


def stacked(inner_ethertype: int, vlans: Sequence[int], l3: bytes) -> bytes:
    """Raw frame: arbitrary tag stack (e.g. more tags than the labeler parses)."""
    return eth_header(inner_ethertype, vlans) + l3


# ---------------------------------------------------------------- tunnels

IPPROTO_IPIP = 4
IPPROTO_IPV6 = 41
ETH_P_TEB = 0x6558  # GRE: transparent Ethernet bridging
VXLAN_PORT = 4789
TUNNEL_KINDS = ("ipip", "gre", "gre-teb", "vxlan", "gue0", "gue1", "fou")


def tunnel(kind: str, *, outer_family: int, outer_src: str, outer_dst: str, inner_l3: bytes,
           inner_family: int, port: int = 0, gre_flags: int = 0, gue_hlen: int = 0,
           vlans: Sequence[int] = ()) -> bytes:
    """A frame carrying ``inner_l3`` (an IP packet from its IP header on) in a
    tunnel: IPIP / IPv6-in-IP ("ipip"), GRE with C/K/S in ``gre_flags``
    (0x80/0x20/0x10 of the first byte; "gre-teb" carries an inner Ethernet
    frame), or UDP to ``port``: VXLAN, GUE variant 0 (``gue_hlen`` words of
    options) or 1, FOU."""
    inner_proto = IPPROTO_IPIP if inner_family == 4 else IPPROTO_IPV6
    inner_ethertype = ETH_P_IP if inner_family == 4 else ETH_P_IPV6
    if kind == "ipip":
        proto, payload = inner_proto, inner_l3
    elif kind in ("gre", "gre-teb"):
        ptype = ETH_P_TEB if kind == "gre-teb" else inner_ethertype
        body = eth_header(inner_ethertype) + inner_l3 if kind == "gre-teb" else inner_l3
        extra = b"\x00\x00\x00\x00" * bin(gre_flags & 0xB0).count("1")
        proto, payload = IPPROTO_GRE, struct.pack("!BBH", gre_flags & 0xB0, 0, ptype) + extra + body
    else:
        if kind == "vxlan":
            body = struct.pack("!BBHI", 0x08, 0, 0, 42 << 8) + eth_header(inner_ethertype) + inner_l3
        elif kind == "gue0":
            body = struct.pack("!BBH", gue_hlen & 0x1F, inner_proto, 0) + b"\x00" * 4 * gue_hlen + inner_l3
        else:  # gue1 / fou: the inner IP header right after UDP
            body = inner_l3
        proto, payload = IPPROTO_UDP, struct.pack("!HHHH", 50000, port, 8 + len(body), 0) + body
    if outer_family == 4:
        l3 = ipv4_header(outer_src, outer_dst, proto, len(payload)) + payload
        return eth_header(ETH_P_IP, vlans) + l3
    l3 = ipv6_header(outer_src, outer_dst, proto, len(payload)) + payload
    return eth_header(ETH_P_IPV6, vlans) + l3

"""The survival matrix: does a label survive the kernel path to the drop?

Each path builds its own topology of fresh namespaces (a peer that sends, a
receiving host whose ingress veth carries the XDP labeler, and where the
path needs it a container namespace behind the host, a tunnel or a VLAN),
sends N labeled packets (label ``survivor``, side eyeball) interleaved with
decoy packets of another label (``decoy``, side origin, delivered), causes
exactly the survivor packets to be dropped at the end of the path, and
classifies the drops it caused as the drop reader counted them:

    seen          drops with the path's reason in the path's namespaces
    metadata      source META, label survivor, side eyeball
    fallback      source FLOW, label survivor, side eyeball
    unlabeled     label 0 (no record, a record that failed validation, ...)
    corrupt       source CORRUPT or DW_DK_META_CORRUPT (also counted above)
    misattributed a nonzero label other than survivor, or a wrong side;
                  must be 0 everywhere

and cross-checks ``seen`` against the kernel's own counter for that drop
(nft rule counter, /proc/net/snmp, tc qdisc drops).

Paths the running kernel cannot build (no IPIP, GRE, ip6tnl or VLAN
support) are detected at run time by creating the link in a scratch
namespace and reported ``unavailable`` with the kernel's answer.

Nothing touches the host's namespace: every namespace is named
``dwsv<random>-*``, and deleting the namespaces removes every veth,
address, route, nft table and qdisc; it happens on every exit path.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import abi
from .netns import entered

LABEL_IDS = {"survivor": 1, "decoy": 2, "underlay": 3}
POP_IDS = {"ams01": 1}
SURVIVOR, DECOY, UNDERLAY = 1, 2, 3
EXPECT_SIDE = int(abi.Side.EYEBALL)

RULES: dict[str, Any] = {
    "rules": [
        {"label": "survivor", "dst": ["10.30.0.0/16", "2001:db8:30::/48"]},
        {"label": "decoy", "dst": ["10.30.2.0/24", "2001:db8:30:2::/64"]},
        # Tunnel endpoints: the outer packet's own label. A reader that used
        # the outer record for an inner drop would count it here.
        {"label": "underlay", "dst": ["10.40.0.0/16", "2001:db8:40::/48"]},
        {"side": "origin", "src": ["10.20.0.0/16", "2001:db8:20::/48"]},
    ],
    "default_side": "eyeball",
    "pops": [{"name": "ams01", "src": ["10.40.0.0/24", "2001:db8:40::/64"]}],
    "encap": [{"type": "vxlan", "port": 4789}],
    "flow_fallback": {"mode": "all", "max_age_ms": 10000},
}


@dataclass(frozen=True)
class Fam:
    """The address plan of one family (the same in every path's namespaces)."""

    v: int
    plen: int
    surv: str       # survivor destination on the host
    decoy: str      # decoy destination on the host (delivered)
    eye_src: str    # peer, eyeball side (survivor traffic)
    origin_src: str  # peer, origin side (decoy traffic)
    ct_host: str    # host end of the container veth
    ct: str         # the container
    svc: str        # a service address DNAT'ed to the container
    ul_rx: str      # tunnel underlay, host
    ul_tx: str      # tunnel underlay, peer
    in_rx: str      # inner address, host
    in_tx: str      # inner address, peer

    @property
    def af(self) -> int:
        return socket.AF_INET if self.v == 4 else socket.AF_INET6

    @property
    def nft(self) -> str:
        return "ip" if self.v == 4 else "ip6"


V4 = Fam(4, 24, "10.30.1.1", "10.30.2.1", "198.51.100.2", "10.20.0.2", "10.30.3.1", "10.30.3.2", "10.30.4.80",
         "10.40.0.1", "10.40.0.2", "10.30.5.1", "10.30.5.2")
V6 = Fam(6, 64, "2001:db8:30:1::1", "2001:db8:30:2::1", "2001:db8:51::2", "2001:db8:20::2", "2001:db8:30:3::1",
         "2001:db8:30:3::2", "2001:db8:30:4::80", "2001:db8:40::1", "2001:db8:40::2", "2001:db8:30:5::1",
         "2001:db8:30:5::2")
DECOY_PORT = 7999
PORTS_PER_ROW = 16
ETH_P_ALL = 0x0003
SO_RCVBUFFORCE = 33
TUNNELS = ("vxlan", "ipip", "gre", "ip6tnl", "vlan")
# Topologies with a container namespace: routed to a veth, bridged to a
# veth (docker0/cni0 style), or a macvlan on the labeled interface.
CONTAINER_TOPOS = ("router", "bridge", "macvlan")


class SurvivalError(RuntimeError):
    pass


def _run(cmd: list[str], input: str | None = None, check: bool = True) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, input=input)
    if check and p.returncode != 0:
        raise SurvivalError(f"{' '.join(cmd[:6])}...: {(p.stderr or p.stdout).strip()[:300]}")
    return p.stdout


def _ns_run(ns: str, cmd: list[str], input: str | None = None, check: bool = True) -> str:
    # nsenter switches only the network namespace (no /sys remount, unlike
    # `ip netns exec`): enough for ip, nft, tc, sysctl and ping.
    return _run(["nsenter", f"--net=/run/netns/{ns}", *cmd], input=input, check=check)


def _sh(ns: str, script: str) -> None:
    _ns_run(ns, ["sh", "-ec", script])


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class PathDef:
    name: str
    fam: Fam
    topo: str   # direct | router | vxlan | ipip | gre | ip6tnl | vlan
    drop: str   # key of DROPS
    what: str
    tap: str = ""  # "" | "afpacket" | "tcpdump": a packet socket on the labeled interface

    @property
    def family(self) -> str:
        return f"ipv{self.fam.v}"


PATHS: dict[str, PathDef] = {}


def _reg(name: str, fam: Fam, topo: str, drop: str, what: str, tap: str = "") -> None:
    PATHS[name] = PathDef(name, fam, topo, drop, what, tap)


def _both(name: str, topo: str, drop: str, what: str, tap: str = "", families: str = "46") -> None:
    for fam, suffix in ((V4, ""), (V6, "6")):
        if str(fam.v) in families:
            _reg(f"{name}{suffix}", fam, topo, drop, what, tap)


# Local drops on the labeled host.
_both("nft-input", "direct", "nft-input", "nft INPUT chain drop on the host")
_both("udp-closed-port", "direct", "closed-port", "UDP to a closed port on the host")
_both("udp-rcvbuf", "direct", "rcvbuf", "UDP socket receive buffer full")
_both("tcp-bad-csum", "direct", "bad-csum", "TCP segment with a bad checksum")
_both("tcp-listen-overflow", "direct", "listen-overflow", "third ACK at a full TCP accept queue")
# VLAN: a subinterface needs 8021q; without it the core stack still untags
# priority-tagged frames (VID 0), and skb_vlan_untag() moves the metadata.
_both("vlan-closed-port", "vlan", "closed-port", "802.1Q VLAN subinterface, closed port")
_both("vlan0-tag-closed-port", "direct", "tag-closed-port", "802.1Q priority-tagged frame (VID 0), closed port",
      families="4")
_both("qinq0-tag-closed-port", "direct", "qinq-closed-port", "802.1ad+802.1Q priority tags (VID 0), closed port",
      families="4")
# Forwarded by the host.
_both("forward-nft", "router", "forward-nft", "forwarded, dropped by nft FORWARD")
_both("forward-qdisc", "router", "qdisc", "forwarded, dropped by a full tbf qdisc on egress")
# Routed into a container namespace through a veth pair (the Kubernetes path).
_both("container-closed-port", "router", "ct-closed-port", "routed into a container namespace via veth, closed port")
_both("container-nft", "router", "ct-nft", "routed into a container namespace, nft INPUT drop there")
_both("bridge-container-closed-port", "bridge", "ct-closed-port",
      "routed to a bridge, through a veth into a container namespace (docker0/cni0), closed port")
_both("macvlan-container-closed-port", "macvlan", "ct-closed-port",
      "macvlan on the labeled interface, in a container namespace, closed port")
_both("dnat-container", "router", "dnat-ct", "service address DNAT'ed to a container, closed port")
# A packet socket on the labeled interface, then NAT writes the packet.
_both("afpacket-closed-port", "direct", "closed-port",
      "AF_PACKET socket on the interface, closed local port (clone, no write)", tap="afpacket")
_both("afpacket-dscp-closed-port", "direct", "mangle-closed-port",
      "AF_PACKET socket on the interface + nft rewrites DSCP (same 5-tuple), closed local port", tap="afpacket")
_both("afpacket-dnat-container", "router", "dnat-ct",
      "AF_PACKET socket on the interface + DNAT to a container, closed port", tap="afpacket")
_both("afpacket-snat-container", "router", "snat-ct",
      "AF_PACKET socket on the interface + SNAT (masquerade) towards a container, closed port", tap="afpacket")
_both("afpacket-dnat", "direct", "dnat-local", "AF_PACKET socket on the interface + DNAT to a closed local port",
      tap="afpacket")
_both("dnat-nft", "direct", "dnat-nft", "DNAT to a local port, dropped by nft INPUT")
_both("afpacket-dnat-nft", "direct", "dnat-nft",
      "AF_PACKET socket on the interface + DNAT to a local port, dropped by nft INPUT (conntrack attached)",
      tap="afpacket")
_both("tcpdump-dnat", "direct", "dnat-local", "tcpdump -i on the interface + DNAT to a closed local port",
      tap="tcpdump")
# Tunnels decapsulated on the host; the inner packet is dropped.
_both("vxlan-decap", "vxlan", "closed-port", "VXLAN decapsulated, inner packet to a closed port")
_both("vxlan-decap-nft", "vxlan", "nft-input", "VXLAN decapsulated, inner packet dropped by nft")
_both("ipip-decap", "ipip", "closed-port", "IPIP decapsulated, inner packet to a closed port", families="4")
_both("gre-decap", "gre", "closed-port", "GRE decapsulated, inner packet to a closed port", families="4")
_both("ip6tnl-decap", "ip6tnl", "closed-port", "IPv6-in-IPv6 decapsulated, inner packet to a closed port",
      families="6")


def path_names() -> list[str]:
    return list(PATHS)


# ---------------------------------------------------------------- what the kernel can build

_PROBE_LINKS = {
    "vxlan": ["type", "vxlan", "id", "1", "dstport", "4789", "local", "10.0.0.1", "remote", "10.0.0.2"],
    "ipip": ["type", "ipip", "local", "10.0.0.1", "remote", "10.0.0.2"],
    "gre": ["type", "gre", "local", "10.0.0.1", "remote", "10.0.0.2"],
    "ip6tnl": ["type", "ip6tnl", "local", "2001:db8::1", "remote", "2001:db8::2", "mode", "ip6ip6"],
    "vlan": ["link", "pa", "type", "vlan", "id", "10"],
}


def probe_links(kinds: Iterable[str]) -> dict[str, str | None]:
    """kind -> None if this kernel can create such a link, else why not.
    Tried in a scratch namespace, removed afterwards."""
    kinds = sorted(set(kinds) & set(_PROBE_LINKS))
    out: dict[str, str | None] = {}
    if not kinds:
        return out
    ns = f"dwsv{secrets.token_hex(3)}-probe"
    _run(["ip", "netns", "add", ns])
    try:
        _run(["ip", "-n", ns, "link", "add", "pa", "type", "veth", "peer", "name", "pb"])
        for k in kinds:
            p = subprocess.run(["ip", "-n", ns, "link", "add", f"p{k}", *_PROBE_LINKS[k]],
                               capture_output=True, text=True)
            out[k] = None if p.returncode == 0 else (
                f"this kernel cannot create {k} links (`ip link add type {k}`: "
                f"{(p.stderr or p.stdout).strip() or 'exit ' + str(p.returncode)})")
    finally:
        _run(["ip", "netns", "del", ns], check=False)
    return out


# ---------------------------------------------------------------- topology


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s >> 16) + (s & 0xFFFF)
    return ~s & 0xFFFF


class Topo:
    """One path's namespaces: tx (peer) -> rx (labeled host) [-> ct]."""

    def __init__(self, p: PathDef, port_base: int = 19000) -> None:
        self.p = p
        self.port_base = port_base
        self.f = p.fam
        i = secrets.token_hex(3)
        self.rx_ns, self.tx_ns, self.ct_ns = f"dwsv{i}-rx", f"dwsv{i}-tx", f"dwsv{i}-ct"
        self.rx_if, self.tx_if, self.host_if, self.ct_if, self.tun_if, self.br_if, self.mv_if = (
            f"sv{i}{c}" for c in "rthcxbm")
        self.namespaces: list[str] = []
        self.socks: list[socket.socket] = []
        self.procs: list[subprocess.Popen[str]] = []
        self._decoy: socket.socket | None = None
        self._sink: socket.socket | None = None
        self._decoys = 0
        self._tap_sock: socket.socket | None = None
        self._tap_proc: subprocess.Popen[str] | None = None
        self._tap_file: Path | None = None

    def port(self, k: int) -> int:
        """The k-th port of this row (0 < k < 16): every row of a run has its
        own, so a flow entry the labeler wrote for one row can never serve
        another row's drop."""
        assert 0 < k < PORTS_PER_ROW
        return self.port_base + k

    @property
    def target(self) -> str:
        """Where the survivor traffic goes."""
        if self.p.topo in CONTAINER_TOPOS:
            return self.f.ct
        if self.p.topo in TUNNELS:
            return self.f.in_rx
        return self.f.surv

    @property
    def target_ns(self) -> str:
        return self.ct_ns if self.p.topo in CONTAINER_TOPOS else self.rx_ns

    def setup(self) -> None:
        router = self.p.topo in CONTAINER_TOPOS
        for ns in (self.tx_ns, self.rx_ns) + ((self.ct_ns,) if router else ()):
            _run(["ip", "netns", "add", ns])
            self.namespaces.append(ns)
            _sh(ns, "ip link set lo up\n"
                    "sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 "
                    "net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 "
                    "net.ipv6.conf.all.accept_ra=0 net.ipv6.conf.default.accept_ra=0")
        v4, v6 = V4, V6
        rx = [f"ip link add {self.rx_if} type veth peer name {self.tx_if} netns {self.tx_ns}",
              f"ip link set {self.rx_if} up"]
        tx = [f"ip link set {self.tx_if} up"]
        for a in (v4.surv, v4.decoy):
            rx.append(f"ip addr add {a}/24 dev {self.rx_if}")
        for a in (v6.surv, v6.decoy):
            rx.append(f"ip addr add {a}/64 dev {self.rx_if} nodad")
        rx += [f"ip route add 198.51.100.0/24 dev {self.rx_if}", f"ip route add 10.20.0.0/16 dev {self.rx_if}",
               f"ip -6 route add 2001:db8:51::/64 dev {self.rx_if}",
               f"ip -6 route add 2001:db8:20::/64 dev {self.rx_if}"]
        tx += [f"ip addr add {v4.eye_src}/24 dev {self.tx_if}", f"ip addr add {v4.origin_src}/16 dev {self.tx_if}",
               f"ip addr add {v6.eye_src}/64 dev {self.tx_if} nodad",
               f"ip addr add {v6.origin_src}/64 dev {self.tx_if} nodad",
               # The host is the gateway for everything in 10.30/16 (the
               # container and the service address live behind it).
               f"ip route add 10.30.1.0/24 dev {self.tx_if}",
               f"ip route add 10.30.0.0/16 via {v4.surv} dev {self.tx_if}",
               f"ip -6 route add 2001:db8:30:1::/64 dev {self.tx_if}",
               f"ip -6 route add 2001:db8:30::/48 via {v6.surv} dev {self.tx_if}"]
        ct: list[str] = []
        if self.p.topo == "macvlan":
            # The container sits on the labeled interface's own segment.
            rx += [f"ip link add {self.mv_if} link {self.rx_if} type macvlan mode bridge",
                   f"ip link set {self.mv_if} netns {self.ct_ns}"]
            ct += [f"ip link set {self.mv_if} up", f"ip addr add {v4.ct}/24 dev {self.mv_if}",
                   f"ip addr add {v6.ct}/64 dev {self.mv_if} nodad",
                   f"ip route add 198.51.100.0/24 dev {self.mv_if}", f"ip route add 10.20.0.0/16 dev {self.mv_if}",
                   f"ip -6 route add 2001:db8:51::/64 dev {self.mv_if}",
                   f"ip -6 route add 2001:db8:20::/64 dev {self.mv_if}"]
            tx += [f"ip route add 10.30.3.0/24 dev {self.tx_if}",
                   f"ip -6 route add 2001:db8:30:3::/64 dev {self.tx_if}"]
        elif router:
            gw = self.host_if
            if self.p.topo == "bridge":
                gw = self.br_if
                rx += [f"ip link add {self.br_if} type bridge", f"ip link set {self.br_if} up"]
            rx += ["sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1",
                   f"ip link add {self.host_if} type veth peer name {self.ct_if} netns {self.ct_ns}",
                   f"ip link set {self.host_if} up"]
            if self.p.topo == "bridge":
                rx.append(f"ip link set {self.host_if} master {self.br_if}")
            rx += [f"ip addr add {v4.ct_host}/24 dev {gw}", f"ip addr add {v6.ct_host}/64 dev {gw} nodad"]
            ct += [f"ip link set {self.ct_if} up", f"ip addr add {v4.ct}/24 dev {self.ct_if}",
                   f"ip addr add {v6.ct}/64 dev {self.ct_if} nodad",
                   f"ip route add default via {v4.ct_host}", f"ip -6 route add default via {v6.ct_host}"]
        topo = self.p.topo
        if topo in TUNNELS:
            f = self.f
            rx += [f"ip addr add {v4.ul_rx}/24 dev {self.rx_if}", f"ip addr add {v6.ul_rx}/64 dev {self.rx_if} nodad"]
            tx += [f"ip addr add {v4.ul_tx}/24 dev {self.tx_if}", f"ip addr add {v6.ul_tx}/64 dev {self.tx_if} nodad"]
            for cmds, lo, re, ifn in ((rx, f.ul_rx, f.ul_tx, self.rx_if), (tx, f.ul_tx, f.ul_rx, self.tx_if)):
                if topo == "vxlan":
                    cmds.append(f"ip link add {self.tun_if} type vxlan id 42 local {lo} remote {re} dstport 4789 "
                                f"dev {ifn}")
                elif topo in ("ipip", "gre"):
                    cmds.append(f"ip link add {self.tun_if} type {topo} local {lo} remote {re}")
                elif topo == "ip6tnl":
                    cmds.append(f"ip link add {self.tun_if} type ip6tnl local {lo} remote {re} mode ip6ip6")
                else:  # vlan
                    cmds.append(f"ip link add link {ifn} name {self.tun_if} type vlan id 10")
                cmds.append(f"ip link set {self.tun_if} up")
            nodad = " nodad" if f.v == 6 else ""
            rx.append(f"ip addr add {f.in_rx}/{f.plen} dev {self.tun_if}{nodad}")
            tx.append(f"ip addr add {f.in_tx}/{f.plen} dev {self.tun_if}{nodad}")
        _sh(self.rx_ns, "\n".join(rx))
        _sh(self.tx_ns, "\n".join(tx))
        if ct:
            _sh(self.ct_ns, "\n".join(ct))
        # The decoy: another label and side, delivered to a socket on the
        # host that is drained as we go (a decoy must never be dropped).
        self._sink = self.udp_socket(self.rx_ns, bind=(self.f.decoy, DECOY_PORT))
        self._sink.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
        self._decoy = self.udp_socket(self.tx_ns, bind=(self.f.origin_src, 0))

    def warm(self) -> None:
        """Resolve every neighbour on the way once, so no test packet waits
        in (or is dropped from) an unresolved-neighbour queue."""
        f = self.f
        six = ["-6"] if f.v == 6 else []
        pings = [(f.eye_src, self.target), (f.origin_src, f.decoy)]
        if self.p.topo in TUNNELS:
            pings = [(f.in_tx, f.in_rx), (f.origin_src, f.decoy)]
        for src, dst in pings:
            for _ in range(3):
                out = _ns_run(self.tx_ns, ["ping", *six, "-c1", "-W1", "-q", "-I", src, dst], check=False)
                if " 0% packet loss" in out:
                    break

    def teardown(self) -> None:
        for s in self.socks:
            s.close()
        self.socks.clear()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._tap_file is not None:
            self._tap_file.unlink(missing_ok=True)
        for ns in reversed(self.namespaces):
            _run(["ip", "netns", "del", ns], check=False)
        self.namespaces.clear()

    # ------------------------------------------------------------ traffic

    def udp_socket(self, ns: str, bind: tuple[str, int] | None = None, rcvbuf: int | None = None) -> socket.socket:
        with entered(ns):
            s = socket.socket(self.f.af, socket.SOCK_DGRAM)
        self.socks.append(s)
        if rcvbuf is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if bind:
            s.bind(bind)
        return s

    def decoy(self) -> None:
        assert self._decoy is not None and self._sink is not None
        self._decoy.sendto(b"decoy", (self.f.decoy, DECOY_PORT))
        self._decoys += 1
        if self._decoys % 256 == 0:
            while True:
                try:
                    self._sink.recv(2048, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break

    def send_udp(self, dst: str, dport: int, n: int, payload: bytes = b"s" * 32, src: str | None = None) -> None:
        s = self.udp_socket(self.tx_ns, bind=(src or self.f.eye_src, 0))
        for _ in range(n):
            s.sendto(payload, (dst, dport))
            self.decoy()

    def mac(self, ns: str, ifname: str) -> bytes:
        info = json.loads(_ns_run(ns, ["ip", "-j", "link", "show", "dev", ifname]))
        return bytes.fromhex(info[0]["address"].replace(":", ""))

    def bad_csum_frame(self, dport: int) -> bytes:
        f = self.f
        eth = self.mac(self.rx_ns, self.rx_if) + self.mac(self.tx_ns, self.tx_if)
        src, dst = socket.inet_pton(f.af, f.eye_src), socket.inet_pton(f.af, f.surv)
        tcp = struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
        if f.v == 4:
            pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, src, dst)
            ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
            eth += b"\x08\x00"
        else:
            pseudo = src + dst + struct.pack("!IxxxB", len(tcp), 6)
            ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, src, dst)
            eth += b"\x86\xdd"
        good = _csum(pseudo + tcp)
        tcp = tcp[:16] + struct.pack("!H", good ^ 0x5A5A) + tcp[18:]  # wrong on purpose
        return eth + ip + tcp

    def tagged_udp_frame(self, dport: int, tpids: tuple[int, ...]) -> bytes:
        """An IPv4/UDP frame from the eyeball source with VID-0 tags."""
        f = self.f
        eth = self.mac(self.rx_ns, self.rx_if) + self.mac(self.tx_ns, self.tx_if)
        for tpid in tpids:
            eth += struct.pack("!HH", tpid, 0)
        udp = struct.pack("!HHHH", 4321, dport, 16, 0) + b"v" * 8  # UDP checksum 0: none
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         socket.inet_aton(f.eye_src), socket.inet_aton(f.surv))
        ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
        return eth + b"\x08\x00" + ip + udp

    def send_frames(self, frame: bytes, n: int) -> None:
        with entered(self.tx_ns):
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        self.socks.append(s)
        s.bind((self.tx_if, 0))
        for _ in range(n):
            s.send(frame)
            self.decoy()

    # ------------------------------------------------------------ kernel counters

    def snmp(self, ns: str) -> dict[str, int]:
        out: dict[str, int] = {}
        with entered(ns):
            texts = [Path(f"/proc/thread-self/net/{n}").read_text() for n in ("snmp", "netstat", "snmp6")]
        for text in texts[:2]:
            lines = text.splitlines()
            for head, vals in zip(lines[::2], lines[1::2], strict=False):
                proto, names = head.split(":", 1)
                for n, v in zip(names.split(), vals.split(":", 1)[1].split(), strict=False):
                    out[f"{proto}.{n}"] = int(v)
        for line in texts[2].splitlines():
            parts = line.split()
            if len(parts) == 2:
                out[f"6.{parts[0]}"] = int(parts[1])
        return out

    def nft(self, ns: str, ruleset: str) -> None:
        _ns_run(ns, ["nft", "-f", "-"], input=ruleset)

    def nft_counter(self, ns: str, table: str) -> int:
        out = json.loads(_ns_run(ns, ["nft", "-j", "list", "table", "inet", table]))
        total = 0
        for item in out.get("nftables", []):
            for expr in (item.get("rule") or {}).get("expr", []):
                if "counter" in expr:
                    total += int(expr["counter"]["packets"])
        return total

    def qdisc_drops(self, ns: str, dev: str) -> int:
        for q in json.loads(_ns_run(ns, ["tc", "-s", "-j", "qdisc", "show", "dev", dev])):
            if q.get("root"):
                return int(q.get("drops", 0))
        return 0

    # ------------------------------------------------------------ packet sockets

    def open_tap(self, kind: str, n: int) -> None:
        """A packet socket on the labeled interface: every received skb is
        handed to it before the stack sees it."""
        if kind == "afpacket":
            # packet_rcv() (a socket read with recvmsg, no ring) keeps a
            # clone of each skb in its queue: the original stays cloned
            # until the clone is read. We read them only after the drops.
            with entered(self.rx_ns):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self.socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, (1 << 20) + 4096 * n)  # room for every clone
            s.bind((self.rx_if, ETH_P_ALL))
            self._tap_sock = s
        elif kind == "tcpdump":
            # The real tool, as an operator runs it (libpcap's TPACKET_V3
            # ring); written to a file so we can count what it captured.
            self._tap_file = Path(_run(["mktemp", "--suffix=.pcap", "/tmp/dwsv-XXXXXX"]).strip())
            proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.rx_ns}", "tcpdump", "-i", self.rx_if,
                                     "-n", "-U", "-Z", "root", "-w", str(self._tap_file)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            self.procs.append(proc)
            self._tap_proc = proc
            assert proc.stderr is not None
            line = proc.stderr.readline()  # "listening on ..." once the capture is active
            if "listening on" not in line:
                raise SurvivalError(f"tcpdump did not start: {line.strip() or 'exit ' + str(proc.poll())}")

    def _is_survivor(self, frame: bytes) -> bool:
        src = socket.inet_pton(self.f.af, self.f.eye_src)
        return (frame[12:14] == b"\x08\x00" and frame[26:30] == src) or \
            (frame[12:14] == b"\x86\xdd" and frame[22:38] == src)

    def _pcap_survivors(self) -> int:
        assert self._tap_file is not None
        data = self._tap_file.read_bytes()
        n, off = 0, 24  # global header, then 16-byte record headers (native byte order)
        while off + 16 <= len(data):
            incl = struct.unpack_from("=I", data, off + 8)[0]
            n += self._is_survivor(data[off + 16:off + 16 + incl])
            off += 16 + incl
        return n

    def close_tap(self, n: int) -> int:
        """Stop the packet socket; how many survivor packets it saw."""
        if self._tap_sock is not None:
            seen = 0
            while True:
                try:
                    seen += self._is_survivor(self._tap_sock.recv(65536, socket.MSG_DONTWAIT))
                except BlockingIOError:
                    return seen
        if self._tap_proc is not None and self._tap_file is not None:
            # libpcap's TPACKET_V3 ring hands over a block when it fills or
            # its timeout (1 s) expires: wait for every packet to be written.
            deadline = time.monotonic() + 5
            while self._pcap_survivors() < n and time.monotonic() < deadline:
                time.sleep(0.1)
            self._tap_proc.terminate()
            self._tap_proc.wait(timeout=10)
            return self._pcap_survivors()
        return 0


# ---------------------------------------------------------------- drops per path


@dataclass
class Scenario:
    netns: list[str]                 # namespaces whose drops count
    reasons: frozenset[str]          # drop reasons the path produces
    kernel: Callable[[], int]        # the kernel's own counter for that drop
    send: Callable[[], None]         # survivor traffic (with decoys interleaved)
    expect: int | None               # the counter's exact delta, if known up front
    timeout_s: float = 5.0
    counter: str = ""


def _in_table(f: Fam, name: str, hook: str, match: str) -> str:
    return (f"table inet {name} {{\n chain c {{ type filter hook {hook} priority 0; policy accept;\n"
            f"  {match} counter drop\n }}\n}}\n")


def _scenario(t: Topo, n: int) -> Scenario:
    p, f = t.p, t.f
    P = t.port  # noqa: N806 - ports unique per row: no flow entry is shared between rows
    snmp_udp = ("Udp.NoPorts", "Udp.RcvbufErrors") if f.v == 4 else ("6.Udp6NoPorts", "6.Udp6RcvbufErrors")

    def snmp(ns: str, name: str) -> Callable[[], int]:
        return lambda: t.snmp(ns)[name]

    if p.drop in ("nft-input", "ct-nft"):
        ns = t.ct_ns if p.drop == "ct-nft" else t.rx_ns
        dst = t.target
        t.nft(ns, _in_table(f, "svdrop", "input", f"{f.nft} daddr {dst} udp dport {P(1)}"))
        return Scenario([ns], frozenset({"NETFILTER_DROP"}), lambda: t.nft_counter(ns, "svdrop"),
                        lambda: t.send_udp(dst, P(1), n), n, counter="nft rule counter")
    if p.drop in ("closed-port", "ct-closed-port"):
        ns = t.target_ns
        return Scenario([ns], frozenset({"NO_SOCKET"}), snmp(ns, snmp_udp[0]),
                        lambda: t.send_udp(t.target, P(2), n), n, counter=snmp_udp[0])
    if p.drop == "rcvbuf":
        t.udp_socket(t.rx_ns, bind=(f.surv, P(3)), rcvbuf=2048)  # never read
        return Scenario([t.rx_ns], frozenset({"SOCKET_RCVBUFF"}), snmp(t.rx_ns, snmp_udp[1]),
                        lambda: t.send_udp(f.surv, P(3), n, payload=b"r" * 1000), None, counter=snmp_udp[1])
    if p.drop in ("tag-closed-port", "qinq-closed-port"):
        frame = t.tagged_udp_frame(P(2), (0x8100,) if p.drop == "tag-closed-port" else (0x88A8, 0x8100))
        return Scenario([t.rx_ns], frozenset({"NO_SOCKET"}), snmp(t.rx_ns, snmp_udp[0]),
                        lambda: t.send_frames(frame, n), n, counter=snmp_udp[0])
    if p.drop == "bad-csum":
        frame = t.bad_csum_frame(P(4))
        return Scenario([t.rx_ns], frozenset({"TCP_CSUM"}), snmp(t.rx_ns, "Tcp.InCsumErrors"),
                        lambda: t.send_frames(frame, n), n, counter="Tcp.InCsumErrors")
    if p.drop == "forward-nft":
        t.nft(t.rx_ns, _in_table(f, "svdrop", "forward", f"{f.nft} daddr {f.ct} udp dport {P(5)}"))
        return Scenario([t.rx_ns], frozenset({"NETFILTER_DROP"}), lambda: t.nft_counter(t.rx_ns, "svdrop"),
                        lambda: t.send_udp(f.ct, P(5), n), n, counter="nft rule counter")
    if p.drop == "qdisc":
        # A slow tbf on the host's egress towards the container: a few
        # packets pass or queue, the rest are dropped at enqueue.
        _ns_run(t.rx_ns, ["tc", "qdisc", "add", "dev", t.host_if, "root", "tbf", "rate", "8kbit", "burst", "1600",
                          "limit", "1600"])
        return Scenario([t.rx_ns], frozenset({"QDISC_DROP", "QDISC_OVERLIMIT", "QDISC_CONGESTED"}),
                        lambda: t.qdisc_drops(t.rx_ns, t.host_if),
                        lambda: t.send_udp(f.ct, P(6), n, payload=b"q" * 500), None, counter="tc qdisc drops")
    if p.drop == "dnat-ct":
        t.nft(t.rx_ns, f"table inet svnat {{\n chain pre {{ type nat hook prerouting priority -100;\n"
                       f"  {f.nft} daddr {f.svc} udp dport {P(8)} dnat {f.nft} to {_hostport(f.ct, P(7))}\n }}\n}}\n")
        return Scenario([t.ct_ns], frozenset({"NO_SOCKET"}), snmp(t.ct_ns, snmp_udp[0]),
                        lambda: t.send_udp(f.svc, P(8), n), n, counter=snmp_udp[0])
    if p.drop == "mangle-closed-port":
        # A header write that keeps the 5-tuple: nft_payload_set() makes the
        # skb writable (pskb_expand_head() on a clone), the flow still matches.
        t.nft(t.rx_ns, f"table inet svmangle {{\n chain pre {{ type filter hook prerouting priority -150;\n"
                       f"  {f.nft} daddr {f.surv} udp dport {P(12)} {f.nft} dscp set cs1\n }}\n}}\n")
        return Scenario([t.rx_ns], frozenset({"NO_SOCKET"}), snmp(t.rx_ns, snmp_udp[0]),
                        lambda: t.send_udp(f.surv, P(12), n), n, counter=snmp_udp[0])
    if p.drop == "snat-ct":
        t.nft(t.rx_ns, f"table inet svnat {{\n chain post {{ type nat hook postrouting priority 100;\n"
                       f"  oifname {t.host_if} {f.nft} daddr {f.ct} masquerade\n }}\n}}\n")
        return Scenario([t.ct_ns], frozenset({"NO_SOCKET"}), snmp(t.ct_ns, snmp_udp[0]),
                        lambda: t.send_udp(f.ct, P(11), n), n, counter=snmp_udp[0])
    if p.drop == "dnat-local":
        t.nft(t.rx_ns, f"table inet svnat {{\n chain pre {{ type nat hook prerouting priority -100;\n"
                       f"  {f.nft} daddr {f.surv} udp dport {P(9)} dnat {f.nft} to {_hostport(f.surv, P(10))}\n"
                       " }\n}\n")
        return Scenario([t.rx_ns], frozenset({"NO_SOCKET"}), snmp(t.rx_ns, snmp_udp[0]),
                        lambda: t.send_udp(f.surv, P(9), n), n, counter=snmp_udp[0])
    if p.drop == "dnat-nft":
        # DNAT, then dropped by nft INPUT: conntrack is still attached at the
        # drop, holding the tuple the packet arrived with.
        t.nft(t.rx_ns, f"table inet svnat {{\n chain pre {{ type nat hook prerouting priority -100;\n"
                       f"  {f.nft} daddr {f.surv} udp dport {P(13)} dnat {f.nft} to {_hostport(f.surv, P(14))}\n"
                       " }\n}\n")
        t.nft(t.rx_ns, _in_table(f, "svdrop", "input", f"{f.nft} daddr {f.surv} udp dport {P(14)}"))
        return Scenario([t.rx_ns], frozenset({"NETFILTER_DROP"}), lambda: t.nft_counter(t.rx_ns, "svdrop"),
                        lambda: t.send_udp(f.surv, P(13), n), n, counter="nft rule counter")
    if p.drop == "listen-overflow":
        return _listen_overflow(t)
    raise ValueError(f"unknown drop kind {p.drop!r}")


def _hostport(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _listen_overflow(t: Topo) -> Scenario:
    """The third ACK arriving at a full accept queue (TCP_LISTEN_OVERFLOW
    since 6.15). A SYN refused at a full queue is consumed, not dropped, so:
    hold back two clients' ACKs, fill the queue with two other connections,
    then release the held ACKs (the SYN-ACK retransmission draws them)."""
    f = t.f
    port = t.port(13)
    with entered(t.rx_ns):
        listener = socket.socket(f.af, socket.SOCK_STREAM)
    t.socks.append(listener)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((f.surv, port))
    listener.listen(1)
    held = (t.port(14), t.port(15))
    t.nft(t.tx_ns, "table inet svhold {\n chain out {\n type filter hook output priority 0;\n"
                   f" tcp sport {{ {held[0]}, {held[1]} }} tcp flags & (syn | ack) == ack drop\n }}\n}}\n")

    def connect(sport: int) -> None:
        with entered(t.tx_ns):
            c = socket.socket(f.af, socket.SOCK_STREAM)
        t.socks.append(c)
        c.bind((f.eye_src, sport))
        c.setblocking(False)
        try:
            c.connect((f.surv, port))
        except BlockingIOError:
            pass

    def send() -> None:
        for sp in held:
            connect(sp)
            t.decoy()
        time.sleep(0.2)
        for _ in range(2):
            connect(0)
            t.decoy()
        time.sleep(0.2)
        _ns_run(t.tx_ns, ["nft", "delete", "table", "inet", "svhold"])

    return Scenario([t.rx_ns], frozenset({"TCP_LISTEN_OVERFLOW"}), lambda: t.snmp(t.rx_ns)["TcpExt.ListenOverflows"],
                    send, 2, timeout_s=6.0, counter="TcpExt.ListenOverflows")


# ---------------------------------------------------------------- classification


@dataclass
class Row:
    path: str
    mode: str
    family: str
    what: str
    status: str = ""
    detail: str = ""
    sent: int = 0
    kernel: int | None = None
    counter: str = ""
    seen: int = 0
    metadata: int = 0
    fallback: int = 0
    unlabeled: int = 0
    corrupt: int = 0
    misattributed: int = 0
    tap_seen: int | None = None      # packets the packet socket saw (tap paths)
    pop_expected: str = "none"       # the landing PoP the drops should carry
    pop_mismatch: int = 0            # attributed drops with another PoP
    pops: dict[str, int] = field(default_factory=dict)
    by_key: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def attributed(self) -> int:
        return self.metadata + self.fallback

    @property
    def level(self) -> str:
        """For the baseline: all | some | none | unavailable."""
        if self.status == "unavailable":
            return "unavailable"
        if self.seen and self.attributed == self.seen:
            return "all"
        return "some" if self.attributed else "none"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["attributed"] = self.attributed
        d["level"] = self.level
        return d


def classify(row: Row, delta: dict[tuple[int, ...], int], reasons: Any) -> None:
    """Fill row's counts from the drops the path caused (key -> count)."""
    for (label_id, side, reason, _loc, _ifindex, pop_id, source, _netns, flags), c in sorted(delta.items()):
        row.seen += c
        corrupt = source == abi.Source.CORRUPT or bool(flags & abi.DW_DK_META_CORRUPT)
        attributed = source in (abi.Source.META, abi.Source.FLOW)
        if corrupt:
            row.corrupt += c
        if (label_id and (label_id != SURVIVOR or side != EXPECT_SIDE)) or \
                (attributed and side not in (0, EXPECT_SIDE)):
            row.misattributed += c
            kind = "misattributed"
        elif label_id == SURVIVOR and source == abi.Source.META:
            row.metadata += c
            kind = "metadata"
        elif label_id == SURVIVOR and source == abi.Source.FLOW:
            row.fallback += c
            kind = "fallback"
        else:
            row.unlabeled += c
            kind = "unlabeled"
        pop = {0: "none", abi.DW_POP_UNKNOWN: "unknown"}.get(pop_id) or next(
            (k for k, v in POP_IDS.items() if v == pop_id), str(pop_id))
        row.pops[pop] = row.pops.get(pop, 0) + c
        if kind in ("metadata", "fallback") and pop != row.pop_expected:
            row.pop_mismatch += c
        row.by_key.append({"label_id": label_id, "side": side, "reason": reasons.name(reason), "pop": pop,
                           "source": abi.Source(source).name if source in abi.Source._value2member_map_
                           else str(source), "flags": flags, "count": c, "class": kind})


def _status(row: Row) -> str:
    if row.misattributed:
        return "MISATTRIBUTED"
    if row.pop_mismatch:
        return "WRONG POP"
    if row.seen == 0:
        return "no drops seen"
    if row.kernel is not None and row.kernel != row.seen:
        return f"count mismatch (kernel {row.kernel})"
    if row.attributed == row.seen:
        return "attributed"
    return "partial" if row.attributed else "lost"


# ---------------------------------------------------------------- running


class Matrix:
    """One loader (labeler + reader) for the whole run; one topology per path
    and mode, attached and detached around it."""

    def __init__(self, loader: Any, reasons: Any) -> None:
        self.loader = loader
        self.reasons = reasons

    @classmethod
    @contextmanager
    def open(cls, rules: dict[str, Any] | None = None) -> Iterator[Matrix]:
        """Load and attach the reader with the matrix's rules (or others:
        the tests swap labels to prove a misattribution is caught)."""
        from .kernel import DropReasons
        from .loader import Loader
        from .rules import compile_rules, parse_rules

        with Loader() as ld:
            ld.load()
            ld.apply_rules(compile_rules(parse_rules(rules or RULES, "survival"), LABEL_IDS, pop_ids=POP_IDS))
            ld.attach_reader()
            yield cls(ld, DropReasons.load())

    def _tally(self, inos: set[int], reasons: frozenset[str]) -> Counter[tuple[int, ...]]:
        out: Counter[tuple[int, ...]] = Counter()
        for key, c in self.loader.read_drops().items():
            if key[7] in inos and self.reasons.name(key[2]) in reasons:
                out[key] += c
        return out

    def run_path(self, p: PathDef, mode: str, n: int, unavailable: str | None = None,
                 port_base: int = 19000) -> Row:
        row = Row(p.name, mode, p.family, p.what, sent=n,
                  pop_expected="ams01" if p.topo in ("vxlan", "ipip", "gre", "ip6tnl") else "none")
        t0 = time.monotonic()
        if unavailable:
            row.status, row.detail = "unavailable", unavailable
            return row
        from .loader import AttachError
        t = Topo(p, port_base)
        attached = False
        try:
            t.setup()
            t.warm()
            sc = _scenario(t, n)
            row.counter = sc.counter
            if p.tap:
                t.open_tap(p.tap, n)
            try:
                att = self.loader.attach_xdp(t.rx_if, mode, netns=t.rx_ns)
            except AttachError as exc:
                row.status, row.detail = "unavailable", str(exc)
                return row
            attached = True
            if att.mode != mode:
                raise SurvivalError(f"attached in {att.mode} mode, asked for {mode}")
            inos = {os.stat(f"/run/netns/{ns}").st_ino for ns in sc.netns}
            before = self._tally(inos, sc.reasons)
            k0 = sc.kernel()
            sc.send()
            kernel = self._settle(sc, k0)
            after = self._tally(inos, sc.reasons)
            # kfree_skb runs just after the counter moves: read until the
            # tally matches the counter or two reads 50 ms apart agree.
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                if sum(after.values()) - sum(before.values()) == kernel:
                    break
                time.sleep(0.05)
                again = self._tally(inos, sc.reasons)
                if again == after:
                    break
                after = again
            delta = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}
            row.kernel = kernel
            classify(row, delta, self.reasons)
            row.status = _status(row)
            if sc.expect is not None and kernel != sc.expect:
                row.detail = f"expected the kernel counter to move by {sc.expect}, it moved by {kernel}"
            if row.pop_mismatch:
                row.detail = (f"{row.pop_mismatch} attributed drops carry a PoP other than {row.pop_expected}: "
                              f"{row.pops}")
            if p.tap:
                row.tap_seen = t.close_tap(n)
                if row.tap_seen < n:
                    row.status = "error"
                    row.detail = f"the {p.tap} packet socket saw {row.tap_seen} of {n} packets"
        except Exception as exc:  # noqa: BLE001 - one broken path is a row, not the end of the matrix
            row.status, row.detail = "error", f"{type(exc).__name__}: {exc}"[:400]
        finally:
            if attached:
                self.loader.detach_xdp(t.rx_if, t.rx_ns)
            t.teardown()
            row.seconds = round(time.monotonic() - t0, 2)
        return row

    @staticmethod
    def _settle(sc: Scenario, k0: int) -> int:
        """Wait until the kernel counter reaches the expected delta, or (when
        not known up front) stops moving for 200 ms."""
        deadline = time.monotonic() + sc.timeout_s
        last, since = sc.kernel() - k0, time.monotonic()
        while time.monotonic() < deadline:
            cur = sc.kernel() - k0
            if sc.expect is not None and cur >= sc.expect:
                return cur
            if cur != last:
                last, since = cur, time.monotonic()
            elif sc.expect is None and cur > 0 and time.monotonic() - since > 0.2:
                return cur
            time.sleep(0.02)
        return sc.kernel() - k0

    def run(self, paths: list[str], modes: list[str], n: int,
            progress: Callable[[Row], None] | None = None) -> list[Row]:
        defs = [PATHS[x] for x in paths]
        probes = probe_links(p.topo for p in defs)
        rows: list[Row] = []
        for p in defs:
            for mode in modes:
                base = 20000 + PORTS_PER_ROW * len(rows)
                row = self.run_path(p, mode, n, probes.get(p.topo), port_base=base)
                rows.append(row)
                if progress:
                    progress(row)
        return rows


# ---------------------------------------------------------------- output

COLUMNS = ("path", "mode", "drops seen", "kernel", "metadata", "fallback", "unlabeled", "corrupt-detected",
           "misattributed", "status")


def _cells(r: Row) -> list[str]:
    if r.status == "unavailable":
        return [r.path, r.mode, "-", "-", "-", "-", "-", "-", "-", "unavailable"]
    return [r.path, r.mode, str(r.seen), "-" if r.kernel is None else str(r.kernel), str(r.metadata),
            str(r.fallback), str(r.unlabeled), str(r.corrupt), str(r.misattributed), r.status]


def format_table(rows: list[Row]) -> str:
    table = [list(COLUMNS)] + [_cells(r) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i in (0, 1, 9) else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip() for row in table]
    notes = sorted({f"{r.path}: {r.detail}" for r in rows if r.detail and r.status in ("unavailable", "error")})
    notes += sorted({f"{r.path} ({r.mode}): {r.detail}" for r in rows
                     if r.detail and r.status not in ("unavailable", "error")})
    return "\n".join(lines + ([""] + notes if notes else []))


def format_markdown(rows: list[Row]) -> str:
    """The README table: a path's generic and native rows are merged into
    one (mode "both") when every count and the status agree."""
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    by_path: dict[str, list[Row]] = {}
    for r in rows:
        by_path.setdefault(r.path, []).append(r)
    for group in by_path.values():
        cells = [_cells(r) for r in group]
        if len(group) > 1 and all(c[2:] == cells[0][2:] for c in cells):
            cells = [[cells[0][0], "both", *cells[0][2:]]]
        for c in cells:
            out.append("| " + " | ".join([f"`{c[0]}`", *c[1:]]) + " |")
    reasons = sorted({f"- `{r.path}`: {r.detail}" for r in rows if r.status == "unavailable" and r.detail})
    return "\n".join(out + ([""] + reasons if reasons else []))


def baseline_of(rows: list[Row]) -> dict[str, Any]:
    return {
        "kernel": os.uname().release,
        "note": "per path/mode: level all (every drop attributed), some, none, or unavailable on that kernel; "
                "regenerate with: dropwatch survival --mode both --update-baseline",
        "paths": {f"{r.path}/{r.mode}": {"level": r.level, "attributed": r.attributed, "seen": r.seen}
                  for r in sorted(rows, key=lambda r: (r.path, r.mode))},
    }


def dump_baseline(b: dict[str, Any]) -> str:
    """JSON with one line per path (reviewable diffs)."""
    lines = ["{", f' "kernel": {json.dumps(b["kernel"])},', f' "note": {json.dumps(b["note"])},', ' "paths": {']
    items = list(b["paths"].items())
    for i, (k, v) in enumerate(items):
        lines.append(f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}{',' if i < len(items) - 1 else ''}")
    return "\n".join(lines + [" }", "}", ""])


LEVEL_RANK = {"unavailable": -1, "none": 0, "some": 1, "all": 2}


def compare_baseline(rows: list[Row], baseline: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(regressions, improvements) against a baseline: a path that attributed
    (all or some) and now attributes less is a regression."""
    worse, better = [], []
    old = baseline.get("paths", {})
    for r in rows:
        key = f"{r.path}/{r.mode}"
        prev = old.get(key)
        if prev is None:
            better.append(f"{key}: new path ({r.level})")
            continue
        was, now = LEVEL_RANK[prev["level"]], LEVEL_RANK[r.level]
        if now < was and was > 0:
            why = f"status {r.status}" + (f": {r.detail}" if r.detail else "")
            worse.append(f"{key}: attributed {prev['level']} before ({prev['attributed']}/{prev['seen']}), "
                         f"now {r.level} ({r.attributed}/{r.seen}, {why})")
        elif now > was:
            better.append(f"{key}: {prev['level']} -> {r.level}")
    return worse, better


BASELINE_PATH = Path(__file__).resolve().parent.parent / "tests" / "e2e" / "survival_baseline.json"

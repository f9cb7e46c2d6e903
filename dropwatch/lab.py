"""A self-contained network lab: two namespaces joined by a veth pair.

    netns <id>-tx  [veth dwt<id>] ===== [veth dwr<id>]  netns <id>-rx
    senders: 10.20.0.2 (origin)             10.10.1.1 customerX
             198.51.100.2 (eyeball)         10.10.2.1 customerY
             2001:db8:20::2                 10.10.9.1 (no rule)
                                            2001:db8:1::1 customerX
                                            2001:db8:9::1 (no rule)

VLAN-tagged traffic is injected as raw frames (send_frame) with priority
tags (VID 0, single or QinQ): the core stack untags those without the 8021q
module, which some kernels (this one) are built without.

Used by the end-to-end tests and by ``dropwatch demo``. Nothing touches the
host's own namespace: the XDP program attaches to dwr<id> inside the rx
namespace, and every firewall rule lives in that namespace, so deleting the
namespaces removes everything. Cleanup runs on every exit path.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .netns import entered

RX_V4 = {"customerX": "10.10.1.1", "customerY": "10.10.2.1", "nolabel": "10.10.9.1"}
RX_V6 = {"customerX": "2001:db8:1::1", "nolabel": "2001:db8:9::1"}
TX_ORIGIN_V4 = "10.20.0.2"
TX_EYEBALL_V4 = "198.51.100.2"
TX_V6 = "2001:db8:20::2"

LAB_RULES = {
    "rules": [
        {"label": "customerX", "dst": ["10.10.1.0/24", "2001:db8:1::/48"]},
        {"label": "customerY", "dst": ["10.10.2.0/24"], "proto": "udp", "dport": [443, "5000-5999", 9999, 7000]},
        {"side": "origin", "src": ["10.20.0.0/16"]},
    ],
    "default_side": "eyeball",
}


class LabError(RuntimeError):
    pass


def _run(*cmd: str, check: bool = True, input: str | None = None) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, input=input)
    if check and p.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


@dataclass
class Lab:
    lab_id: str

    @property
    def rx_ns(self) -> str:
        return f"dw{self.lab_id}-rx"

    @property
    def tx_ns(self) -> str:
        return f"dw{self.lab_id}-tx"

    @property
    def rx_if(self) -> str:
        return f"dwr{self.lab_id}"

    @property
    def tx_if(self) -> str:
        return f"dwt{self.lab_id}"

    # ------------------------------------------------------------ topology

    def ns(self, ns: str, *cmd: str, check: bool = True, input: str | None = None) -> str:
        return _run("ip", "netns", "exec", ns, *cmd, check=check, input=input)

    def setup(self) -> None:
        _run("ip", "netns", "add", self.rx_ns)
        _run("ip", "netns", "add", self.tx_ns)
        for ns in (self.rx_ns, self.tx_ns):
            self.ns(ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
            self.ns(ns, "ip", "link", "set", "lo", "up")
            self.ns(ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
        self.create_link()
        self.ns(self.rx_ns, "nft", "-f", "-", input=(
            "table inet dwlab {\n"
            "  chain input { type filter hook input priority 0; policy accept;\n"
            "    udp dport 9999 counter drop\n"
            "  }\n"
            "}\n"))
        self.resolve_neighbours()

    def delete_link(self) -> None:
        self.ns(self.rx_ns, "ip", "link", "del", self.rx_if)

    def create_link(self) -> None:
        """The veth pair with its addresses and routes (also to re-create it)."""
        # Created inside rx so neither end ever exists in the host namespace.
        self.ns(self.rx_ns, "ip", "link", "add", self.rx_if, "type", "veth", "peer", "name", self.tx_if,
                "netns", self.tx_ns)
        for ns, ifname in ((self.rx_ns, self.rx_if), (self.tx_ns, self.tx_if)):
            self.ns(ns, "ip", "link", "set", ifname, "up")
        for addr in RX_V4.values():
            self.ns(self.rx_ns, "ip", "addr", "add", f"{addr}/24", "dev", self.rx_if)
        for addr in RX_V6.values():
            self.ns(self.rx_ns, "ip", "addr", "add", f"{addr}/64", "dev", self.rx_if, "nodad")
        for addr in (TX_ORIGIN_V4, TX_EYEBALL_V4):
            self.ns(self.tx_ns, "ip", "addr", "add", f"{addr}/16" if addr == TX_ORIGIN_V4 else f"{addr}/24",
                    "dev", self.tx_if)
        self.ns(self.tx_ns, "ip", "addr", "add", f"{TX_V6}/64", "dev", self.tx_if, "nodad")
        # On-link routes both ways: one L2 segment, ARP/ND resolve directly.
        self.ns(self.tx_ns, "ip", "route", "add", "10.10.0.0/16", "dev", self.tx_if)
        self.ns(self.tx_ns, "ip", "-6", "route", "add", "2001:db8::/40", "dev", self.tx_if)
        self.ns(self.rx_ns, "ip", "route", "add", "10.20.0.0/16", "dev", self.rx_if)
        self.ns(self.rx_ns, "ip", "route", "add", "198.51.100.0/24", "dev", self.rx_if)
        self.ns(self.rx_ns, "ip", "-6", "route", "add", "2001:db8:20::/48", "dev", self.rx_if)

    def resolve_neighbours(self) -> None:
        # Resolve neighbours once so the first test packets are not queued
        # behind ARP/ND (unresolved-queue drops would be noise).
        for addr in list(RX_V4.values()):
            self.ns(self.tx_ns, "ping", "-c1", "-W1", "-I", TX_ORIGIN_V4, addr, check=False)
            self.ns(self.tx_ns, "ping", "-c1", "-W1", "-I", TX_EYEBALL_V4, addr, check=False)
        for addr in RX_V6.values():
            self.ns(self.tx_ns, "ping", "-6", "-c1", "-W1", addr, check=False)

    def teardown(self) -> None:
        # Deleting the namespaces removes the veth pair, addresses, routes and
        # nft tables inside them. Best effort: log nothing, raise nothing.
        for ns in (self.rx_ns, self.tx_ns):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (OSError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    # ------------------------------------------------------------ traffic

    def udp_socket(self, ns: str, family: int = socket.AF_INET, bind: tuple[str, int] | None = None,
                   rcvbuf: int | None = None) -> socket.socket:
        with entered(ns):
            s = socket.socket(family, socket.SOCK_DGRAM)
        if rcvbuf is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if bind:
            s.bind(bind)
        return s

    def send_udp(self, src: str, dst: str, dport: int, count: int, payload: bytes = b"x" * 32,
                 interval_s: float = 0.0) -> None:
        family = socket.AF_INET6 if ":" in dst else socket.AF_INET
        s = self.udp_socket(self.tx_ns, family, bind=(src, 0))
        try:
            for _ in range(count):
                s.sendto(payload, (dst, dport))
                if interval_s:
                    time.sleep(interval_s)
        finally:
            s.close()

    def tcp_connect(self, src: str, dst: str, dport: int, timeout_s: float = 0.5) -> socket.socket | None:
        family = socket.AF_INET6 if ":" in dst else socket.AF_INET
        with entered(self.tx_ns):
            s = socket.socket(family, socket.SOCK_STREAM)
        s.bind((src, 0))
        s.setblocking(False)
        try:
            s.connect((dst, dport))
        except BlockingIOError:
            pass
        return s

    def mac(self, ns: str, ifname: str) -> bytes:
        return bytes.fromhex(self.ns(ns, "cat", f"/sys/class/net/{ifname}/address").strip().replace(":", ""))

    def send_frames(self, frame: bytes, count: int) -> None:
        """Send a raw Ethernet frame from the tx end (AF_PACKET)."""
        with entered(self.tx_ns):
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        try:
            s.bind((self.tx_if, 0))
            for _ in range(count):
                s.send(frame)
        finally:
            s.close()

    # ------------------------------------------------------------ kernel's own counters

    def add_vxlan(self, name: str, vni: int, port: int, inner_rx: str, inner_tx: str) -> None:
        """A VXLAN tunnel over the veth pair (receiver RX_V4["customerX"],
        sender TX_EYEBALL_V4, UDP port ``port``) with inner addresses /24 on
        each end, up, the inner neighbour resolved. Removed with the lab's
        namespaces, or with ``ip link del`` in both."""
        self.ns(self.rx_ns, "ip", "link", "add", name, "type", "vxlan", "id", str(vni), "remote", TX_EYEBALL_V4,
                "local", RX_V4["customerX"], "dstport", str(port), "dev", self.rx_if)
        self.ns(self.tx_ns, "ip", "link", "add", name, "type", "vxlan", "id", str(vni), "remote", RX_V4["customerX"],
                "local", TX_EYEBALL_V4, "dstport", str(port), "dev", self.tx_if)
        for ns, addr in ((self.rx_ns, inner_rx), (self.tx_ns, inner_tx)):
            self.ns(ns, "ip", "addr", "add", f"{addr}/24", "dev", name)
            self.ns(ns, "ip", "link", "set", name, "up")
        self.ns(self.tx_ns, "ping", "-c1", "-W1", inner_rx, check=False)

    def nft_drop_count(self) -> int:
        out = json.loads(self.ns(self.rx_ns, "nft", "-j", "list", "table", "inet", "dwlab"))
        total = 0
        for item in out.get("nftables", []):
            rule = item.get("rule")
            if not rule:
                continue
            for expr in rule.get("expr", []):
                if "counter" in expr:
                    total += int(expr["counter"]["packets"])
        return total

    def snmp(self, ns: str | None = None) -> dict[str, int]:
        """/proc/net/snmp, snmp6 and netstat of a namespace as Proto.Field -> value."""
        ns = ns or self.rx_ns
        out: dict[str, int] = {}
        for f in ("/proc/net/snmp", "/proc/net/netstat"):
            lines = self.ns(ns, "cat", f).splitlines()
            for head, vals in zip(lines[::2], lines[1::2], strict=True):
                proto, names = head.split(":", 1)
                _, values = vals.split(":", 1)
                for n, v in zip(names.split(), values.split(), strict=True):
                    out[f"{proto}.{n}"] = int(v)
        for line in self.ns(ns, "cat", "/proc/net/snmp6").splitlines():
            parts = line.split()
            if len(parts) == 2:
                out[f"6.{parts[0]}"] = int(parts[1])
        return out


@contextmanager
def lab(lab_id: str | None = None) -> Iterator[Lab]:
    lb = Lab(lab_id or secrets.token_hex(3))
    try:
        lb.setup()
        yield lb
    finally:
        lb.teardown()

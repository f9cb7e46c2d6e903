"""The kernel path, end to end on the real kernel.

A lab (two namespaces joined by a veth pair), the labeler attached to the
receiving end, the drop reader on kfree_skb. Each test sends N packets from
the peer namespace and expects exactly N drops for that label, side and
reason, and the same number in the kernel's own counter (nft rule counter,
/proc/net/snmp) for that drop.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from dropwatch.kernel import DropReasons
from dropwatch.lab import LAB_RULES, RX_V4, RX_V6, TX_EYEBALL_V4, TX_ORIGIN_V4, TX_V6, Lab, lab
from dropwatch.loader import Loader
from dropwatch.netns import entered
from dropwatch.rules import compile_rules, parse_rules

pytestmark = pytest.mark.e2e

LABEL_IDS = {"customerX": 1, "customerY": 2}
NAMES = {0: "unlabeled", 1: "customerX", 2: "customerY"}
SIDES = {0: "unknown", 1: "eyeball", 2: "origin"}

DropTally = Counter[tuple[str, str, str]]


class KernelPath:
    def __init__(self, lb: Lab, loader: Loader, reasons: DropReasons, mode: str) -> None:
        self.lab = lb
        self.loader = loader
        self.reasons = reasons
        self.mode = mode
        self.rx_netns = os.stat(f"/run/netns/{lb.rx_ns}").st_ino

    def tally(self) -> DropTally:
        out: DropTally = Counter()
        for (label_id, side, reason, _loc, _ifindex, _pop, _src, netns, _fl), n in self.loader.read_drops().items():
            if netns not in (0, self.rx_netns):
                continue  # another namespace's drop (e.g. a concurrent lab)
            out[(NAMES.get(label_id, str(label_id)), SIDES[side], self.reasons.name(reason))] += n
        return out

    def measure(self, action: Callable[[], None], settle: Callable[[], bool] | None = None) -> DropTally:
        before = self.tally()
        action()
        # Drops are counted synchronously in softirq as packets arrive; wait
        # for the caller's condition (a kernel counter reaching its value).
        deadline = time.monotonic() + 5
        while settle is not None and not settle() and time.monotonic() < deadline:
            time.sleep(0.02)
        # The kernel's counters (e.g. Udp.NoPorts) move just before
        # kfree_skb runs: read until two reads 50 ms apart agree.
        after = self.tally()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            again = self.tally()
            if again == after:
                break
            after = again
        return Counter({k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)})


@pytest.fixture(scope="module", params=["native", "generic"])
def kp(request: pytest.FixtureRequest) -> Iterator[KernelPath]:
    with lab() as lb, Loader() as loader:
        loader.load()
        loader.apply_rules(compile_rules(parse_rules(LAB_RULES), LABEL_IDS))
        loader.attach_reader()
        att = loader.attach_xdp(lb.rx_if, request.param, netns=lb.rx_ns)
        assert att.mode == request.param
        yield KernelPath(lb, loader, DropReasons.load(), request.param)


def wait_counter(lb: Lab, name: str, start: int, expect: int) -> Callable[[], bool]:
    return lambda: lb.snmp()[name] - start >= expect


def test_netfilter_drop_exact(kp: KernelPath) -> None:
    n = 200
    nft0 = kp.lab.nft_drop_count()
    d = kp.measure(lambda: kp.lab.send_udp(TX_ORIGIN_V4, RX_V4["customerY"], 9999, n),
                   lambda: kp.lab.nft_drop_count() - nft0 >= n)
    assert kp.lab.nft_drop_count() - nft0 == n
    assert d[("customerY", "origin", "NETFILTER_DROP")] == n


def test_closed_port_ipv4_exact(kp: KernelPath) -> None:
    n = 150
    s0 = kp.lab.snmp()["Udp.NoPorts"]
    d = kp.measure(lambda: kp.lab.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, n),
                   wait_counter(kp.lab, "Udp.NoPorts", s0, n))
    assert kp.lab.snmp()["Udp.NoPorts"] - s0 == n
    assert d[("customerX", "eyeball", "NO_SOCKET")] == n


def test_closed_port_ipv6_exact(kp: KernelPath) -> None:
    n = 120
    s0 = kp.lab.snmp()["6.Udp6NoPorts"]
    d = kp.measure(lambda: kp.lab.send_udp(TX_V6, RX_V6["customerX"], 5555, n),
                   wait_counter(kp.lab, "6.Udp6NoPorts", s0, n))
    assert kp.lab.snmp()["6.Udp6NoPorts"] - s0 == n
    assert d[("customerX", "eyeball", "NO_SOCKET")] == n


def test_unmatched_traffic_counts_as_unlabeled(kp: KernelPath) -> None:
    n = 80
    s0 = kp.lab.snmp()["Udp.NoPorts"]
    d = kp.measure(lambda: kp.lab.send_udp(TX_ORIGIN_V4, RX_V4["nolabel"], 5555, n),
                   wait_counter(kp.lab, "Udp.NoPorts", s0, n))
    # Side still resolves (src rule), label does not.
    assert d[("unlabeled", "origin", "NO_SOCKET")] == n
    assert not [k for k in d if k[0] != "unlabeled" and k[2] == "NO_SOCKET"]


def test_udp_rcvbuf_overflow_exact(kp: KernelPath) -> None:
    sock = kp.lab.udp_socket(kp.lab.rx_ns, bind=(RX_V4["customerY"], 7000), rcvbuf=2048)
    try:
        s0 = kp.lab.snmp()["Udp.RcvbufErrors"]
        d = kp.measure(lambda: kp.lab.send_udp(TX_EYEBALL_V4, RX_V4["customerY"], 7000, 300, payload=b"y" * 1000))
        kernel = kp.lab.snmp()["Udp.RcvbufErrors"] - s0
    finally:
        sock.close()
    assert kernel > 200  # the socket holds a couple of packets at most
    assert d[("customerY", "eyeball", "SOCKET_RCVBUFF")] == kernel


def test_tcp_listen_overflow_exact(kp: KernelPath) -> None:
    """The third ACK arriving at a full accept queue (TCP_LISTEN_OVERFLOW since
    6.15). SYNs refused at a full queue are consumed, not dropped, so the test
    builds the case where request socks exist before the queue fills:
    hold back two clients' ACKs, fill the queue with two other connections
    (syncookies), then release the held ACKs."""
    lb = kp.lab
    dst = RX_V4["customerX"]
    port = 8080 + (1 if kp.mode == "generic" else 0)
    with entered(lb.rx_ns):
        listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((dst, port))
    listener.listen(1)
    held_ports = (41001 + port, 42001 + port)
    lb.ns(lb.tx_ns, "nft", "-f", "-", input=(
        "table inet dwhold {\n chain out {\n type filter hook output priority 0;\n"
        f" tcp sport {{ {held_ports[0]}, {held_ports[1]} }} tcp flags & (syn | ack) == ack drop\n }}\n}}\n"))
    clients: list[socket.socket] = []
    try:
        s0 = lb.snmp()["TcpExt.ListenOverflows"]

        def action() -> None:
            for p in held_ports:
                with entered(lb.tx_ns):
                    c = socket.socket()
                c.bind((TX_EYEBALL_V4, p))
                c.setblocking(False)
                try:
                    c.connect((dst, port))
                except BlockingIOError:
                    pass
                clients.append(c)
            time.sleep(0.2)
            for _ in range(2):
                c2 = lb.tcp_connect(TX_EYEBALL_V4, dst, port)
                assert c2 is not None
                clients.append(c2)
            time.sleep(0.2)
            lb.ns(lb.tx_ns, "nft", "delete", "table", "inet", "dwhold")
            # SYN-ACK retransmission (1 s) draws the held ACKs.

        d = kp.measure(action, wait_counter(lb, "TcpExt.ListenOverflows", s0, 2))
        kernel = lb.snmp()["TcpExt.ListenOverflows"] - s0
    finally:
        lb.ns(lb.tx_ns, "nft", "delete", "table", "inet", "dwhold", check=False)
        for c in clients:
            c.close()
        listener.close()
    assert kernel >= 2
    assert d[("customerX", "eyeball", "TCP_LISTEN_OVERFLOW")] == kernel
    assert d[("unlabeled", "eyeball", "TCP_LISTEN_OVERFLOW")] == 0


def _csum(b: bytes) -> int:
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _tagged_udp4(lb: Lab, src: str, dst: str, dport: int, tpids: tuple[int, ...]) -> bytes:
    eth = lb.mac(lb.rx_ns, lb.rx_if) + lb.mac(lb.tx_ns, lb.tx_if)
    for tpid in tpids:
        eth += struct.pack("!HH", tpid, 0)  # VID 0: priority tag
    eth += b"\x08\x00"
    udp = struct.pack("!HHHH", 4321, dport, 16, 0) + b"v" * 8
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return eth + ip + udp


@pytest.mark.parametrize("tpids,side_src,side", [
    ((0x8100,), TX_EYEBALL_V4, "eyeball"),
    ((0x88A8, 0x8100), TX_ORIGIN_V4, "origin"),
])
def test_vlan_tagged_exact(kp: KernelPath, tpids: tuple[int, ...], side_src: str, side: str) -> None:
    """802.1Q and QinQ frames: the labeler parses the tags; the stack untags
    them (skb_vlan_untag moves the metadata along) and drops at the port."""
    n = 60
    frame = _tagged_udp4(kp.lab, side_src, RX_V4["customerX"], 6000, tpids)
    s0 = kp.lab.snmp()["Udp.NoPorts"]
    d = kp.measure(lambda: kp.lab.send_frames(frame, n), wait_counter(kp.lab, "Udp.NoPorts", s0, n))
    assert kp.lab.snmp()["Udp.NoPorts"] - s0 == n
    assert d[("customerX", side, "NO_SOCKET")] == n


def test_ingress_packets_counted_for_ratio(kp: KernelPath) -> None:
    n = 70
    before = kp.loader.read_packets(2).get((2, 2, 0), (0, 0))[0]
    kp.lab.send_udp(TX_ORIGIN_V4, RX_V4["customerY"], 9999, n)
    deadline = time.monotonic() + 5
    while kp.loader.read_packets(2).get((2, 2, 0), (0, 0))[0] - before < n and time.monotonic() < deadline:
        time.sleep(0.02)
    assert kp.loader.read_packets(2)[(2, 2, 0)][0] - before == n


def test_tracepoint_fallback_classic() -> None:
    """The classic tracepoint program counts the same drops as tp_btf would
    (own lab: one run, not one per XDP mode)."""
    with lab() as lb, Loader(tracepoint_mode="classic") as classic:
        classic.load()
        classic.apply_rules(compile_rules(parse_rules(LAB_RULES), LABEL_IDS))
        assert classic.attach_reader() == "tracepoint"
        classic.attach_xdp(lb.rx_if, "generic", netns=lb.rx_ns)
        kp = KernelPath(lb, classic, DropReasons.load(), "generic")
        n = 40
        s0 = lb.snmp()["Udp.NoPorts"]
        d = kp.measure(lambda: lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5556, n),
                       wait_counter(lb, "Udp.NoPorts", s0, n))
        assert d[("customerX", "eyeball", "NO_SOCKET")] == n


def test_vxlan_decap_stale_metadata_is_never_misattributed(kp: KernelPath) -> None:
    """VXLAN decapsulation resets the MAC header to the inner frame without
    moving the metadata, so head + mac_header - meta_len points into the
    outer headers. The outer packet was labeled customerX; the inner drops
    must count as unlabeled (no record, or corrupt), never as a customer."""
    lb = kp.lab
    vni = 42 if kp.mode == "native" else 43
    name = f"vx{vni}"
    inner_rx, inner_tx = f"10.99.{vni}.1", f"10.99.{vni}.2"
    try:
        lb.add_vxlan(name, vni, 4700 + vni, inner_rx, inner_tx)  # a port the rules do not name
        vx_ifindex = int(lb.ns(lb.rx_ns, "cat", f"/sys/class/net/{name}/ifindex"))
        n = 90

        def inner_drops() -> Counter[tuple[str, int]]:
            out: Counter[tuple[str, int]] = Counter()
            for (label_id, _s, reason, _l, ifindex, _p, source, netns, _fl), c in kp.loader.read_drops().items():
                if netns == kp.rx_netns and ifindex == vx_ifindex and kp.reasons.name(reason) == "NO_SOCKET":
                    out[(NAMES.get(label_id, str(label_id)), source)] += c
            return out

        before = inner_drops()
        s0 = lb.snmp()["Udp.NoPorts"]
        sock = lb.udp_socket(lb.tx_ns, bind=(inner_tx, 0))
        try:
            for _ in range(n):
                sock.sendto(b"inner", (inner_rx, 5555))
        finally:
            sock.close()
        deadline = time.monotonic() + 5
        while lb.snmp()["Udp.NoPorts"] - s0 < n and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)
        after = inner_drops()
        delta = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}
        assert lb.snmp()["Udp.NoPorts"] - s0 == n
        assert sum(delta.values()) == n, delta
        # Every one of them unlabeled; none under customerX (the outer label).
        assert all(label == "unlabeled" for label, _src in delta), delta
    finally:
        for ns in (lb.rx_ns, lb.tx_ns):
            lb.ns(ns, "ip", "link", "del", name, check=False)

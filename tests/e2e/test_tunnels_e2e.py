"""Landing PoPs and the flow fallback, end to end on the real kernel.

A VXLAN tunnel from the peer namespace: the labeler sees the outer packet,
labels the inner one and notes the PoP of the outer source; the kernel
decapsulates (which moves the MAC header away from the metadata) and drops
the inner packet at a closed port. Every one of those drops must be
attributed by the flow fallback to the inner packet's label, side and PoP.

Then the fallback's validity rule, on drops that carry no metadata at all
(loopback traffic never crosses XDP): an entry counts only under the rules
epoch it was classified in and within max_age_ms of its last packet.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from dropwatch import abi
from dropwatch.kernel import DropReasons
from dropwatch.lab import LAB_RULES, TX_EYEBALL_V4, Lab, lab
from dropwatch.loader import Loader, flow_key
from dropwatch.rules import compile_rules, parse_rules

pytestmark = pytest.mark.e2e

VXLAN_PORT = 4789
INNER_RX, INNER_TX = "10.77.0.1", "10.77.0.2"
RULES: dict[str, Any] = {
    **LAB_RULES,
    "rules": [*LAB_RULES["rules"], {"label": "inner", "side": "origin", "dst": ["10.77.0.0/24"]}],
    "pops": [{"name": "ams01", "src": [f"{TX_EYEBALL_V4}/32"]}],
    "encap": [{"type": "vxlan", "port": VXLAN_PORT}],
}
LABEL_IDS = {"customerX": 1, "customerY": 2, "inner": 3}
POP_IDS = {"ams01": 7}
Tally = Counter[tuple[int, int, int, int]]  # label_id, side, pop_id, source


class Tunnel:
    def __init__(self, lb: Lab, loader: Loader, mode: str) -> None:
        self.lab, self.loader, self.mode = lb, loader, mode
        self.rx_netns = os.stat(f"/run/netns/{lb.rx_ns}").st_ino
        self.no_socket = DropReasons.load().value("NO_SOCKET")

    def tally(self) -> Tally:
        out: Tally = Counter()
        for (lid, side, reason, _loc, _if, pop, source, netns, _fl), n in self.loader.read_drops().items():
            if netns == self.rx_netns and reason == self.no_socket:
                out[(lid, side, pop, source)] += n
        return out

    def drops_of(self, action: Any, n: int) -> Tally:
        before, s0 = self.tally(), self.lab.snmp()["Udp.NoPorts"]
        action()
        deadline = time.monotonic() + 5
        while self.lab.snmp()["Udp.NoPorts"] - s0 < n and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)
        assert self.lab.snmp()["Udp.NoPorts"] - s0 == n
        after = self.tally()
        return Counter({k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)})


@pytest.fixture(scope="module", params=["native", "generic"])
def tun(request: pytest.FixtureRequest) -> Iterator[Tunnel]:
    with lab() as lb, Loader() as loader:
        loader.load()
        loader.apply_rules(compile_rules(parse_rules(RULES), LABEL_IDS, pop_ids=POP_IDS))
        loader.attach_reader()
        loader.attach_xdp(lb.rx_if, request.param, netns=lb.rx_ns)
        lb.add_vxlan("vxdw", 77, VXLAN_PORT, INNER_RX, INNER_TX)
        yield Tunnel(lb, loader, request.param)  # the namespaces (and the vxlan devices) go with the lab


def send_inner(t: Tunnel, n: int, sport: int) -> None:
    sock = t.lab.udp_socket(t.lab.tx_ns, bind=(INNER_TX, sport))
    try:
        for _ in range(n):
            sock.sendto(b"inner", (INNER_RX, 5555))
    finally:
        sock.close()


def test_vxlan_inner_drops_attributed_by_flow_with_landing_pop(tun: Tunnel) -> None:
    n = 150
    pkts0 = tun.loader.read_packets(max(LABEL_IDS.values())).get((3, 2, 7), (0, 0))[0]
    d = tun.drops_of(lambda: send_inner(tun, n, 47001), n)
    assert d == {(LABEL_IDS["inner"], abi.Side.ORIGIN, POP_IDS["ams01"], abi.Source.FLOW): n}
    # ...and the same packets were counted at ingress under the inner label and the PoP.
    pkts = tun.loader.read_packets(max(LABEL_IDS.values()))[(3, 2, 7)][0] - pkts0
    assert pkts == n


def test_vxlan_inner_drops_unlabeled_with_fallback_off(tun: Tunnel) -> None:
    rs = parse_rules({**RULES, "flow_fallback": {"mode": "off"}})
    tun.loader.apply_rules(compile_rules(rs, LABEL_IDS, pop_ids=POP_IDS))
    try:
        n = 60
        d = tun.drops_of(lambda: send_inner(tun, n, 47002), n)
        assert sum(d.values()) == n
        assert all(lid == 0 and source != abi.Source.FLOW for lid, _s, _p, source in d), d
    finally:
        tun.loader.apply_rules(compile_rules(parse_rules(RULES), LABEL_IDS, pop_ids=POP_IDS))


# ---------------------------------------------------------------- the validity rule

def loopback_drops(t: Tunnel, sport: int, n: int) -> Tally:
    """n UDP datagrams 127.0.0.1:sport -> 127.0.0.1:7999 (closed) inside the
    receiving namespace: NO_SOCKET drops with no metadata."""
    t.lab.ns(t.lab.rx_ns, "ip", "link", "set", "lo", "up")

    def send() -> None:
        sock = t.lab.udp_socket(t.lab.rx_ns, bind=("127.0.0.1", sport))
        try:
            for _ in range(n):
                sock.sendto(b"local", ("127.0.0.1", 7999))
        finally:
            sock.close()
    return t.drops_of(send, n)


def put_flow(t: Tunnel, sport: int, *, label_id: int, epoch: int, age_ns: int, pop_id: int = 7) -> None:
    val = abi.FlowVal(ts_ns=time.monotonic_ns() - age_ns, label_id=label_id, epoch=epoch, pop_id=pop_id,
                      side=abi.Side.EYEBALL)
    assert t.loader.labeler is not None
    t.loader.lib.map_update(t.loader.labeler.maps["dw_flows"], flow_key("127.0.0.1", "127.0.0.1", socket.IPPROTO_UDP,
                                                                        sport, 7999), val)


def test_fresh_entry_of_current_epoch_attributes(tun: Tunnel) -> None:
    put_flow(tun, 47100, label_id=2, epoch=tun.loader.flow_cfg.epoch, age_ns=0)
    d = loopback_drops(tun, 47100, 20)
    assert d == {(2, abi.Side.EYEBALL, 7, abi.Source.FLOW): 20}


def test_entry_of_previous_rules_epoch_is_never_used(tun: Tunnel) -> None:
    """Rules reloaded: a label classified under the old rules may be wrong now."""
    put_flow(tun, 47101, label_id=2, epoch=tun.loader.flow_cfg.epoch - 1, age_ns=0)
    stale0 = tun.loader.read_stats().get(abi.Stat.FLOW_STALE, 0)
    d = loopback_drops(tun, 47101, 20)
    assert d == {(0, 0, 0, abi.Source.NONE): 20}
    assert tun.loader.read_stats().get(abi.Stat.FLOW_STALE, 0) - stale0 == 20


def test_entry_older_than_max_age_is_never_used(tun: Tunnel) -> None:
    """The 5-tuple may now belong to another flow (a reused port)."""
    max_age = tun.loader.flow_cfg.max_age_ns
    put_flow(tun, 47102, label_id=2, epoch=tun.loader.flow_cfg.epoch, age_ns=max_age + 50_000_000)
    d = loopback_drops(tun, 47102, 20)
    assert d == {(0, 0, 0, abi.Source.NONE): 20}


# ---------------------------------------------------------------- through the daemon

def test_daemon_reports_pop_and_source(tmp_path: Any) -> None:
    """`dropwatch run` with PoPs and a VXLAN port in its rules: the inner
    drops show up in /drops by pop and source, and in /metrics with the
    pop and source labels; packets by PoP in /metrics too."""
    import yaml

    from tests.e2e.helpers import start_daemon

    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULES, sort_keys=False))
    with lab() as lb:
        d = start_daemon(lb, rules, tmp_path / "h.db", tmp_path / "d.log", "--xdp-mode", "generic")
        try:
            lb.add_vxlan("vxdw", 77, VXLAN_PORT, INNER_RX, INNER_TX)
            n = 80
            sock = lb.udp_socket(lb.tx_ns, bind=(INNER_TX, 47300))
            try:
                for _ in range(n):
                    sock.sendto(b"inner", (INNER_RX, 5555))
            finally:
                sock.close()
            key = ("inner", "ams01", "flow", "NO_SOCKET")
            d.wait_for(lambda: d.drops(group_by="label,pop,source,reason", window="10m").get(key) == n,
                       "the inner drops by pop and source")
            # (The vxlan devices' own IPv6 chatter also arrives from ams01: unlabeled, other reasons.)
            assert d.drops(pop="ams01", reason="NO_SOCKET", group_by="label", window="10m") == {("inner",): n}
            assert d.drops(source="flow", reason="NO_SOCKET", group_by="pop", window="10m") == {("ams01",): n}
            metrics = d.get("/metrics").text
            line = next(ln for ln in metrics.splitlines() if ln.startswith("dropwatch_drops_total{")
                        and 'label="inner"' in ln and 'reason="NO_SOCKET"' in ln)
            assert 'pop="ams01"' in line and 'source="flow"' in line and line.endswith(f" {n}.0"), line
            assert any(ln.startswith("dropwatch_packets_total{") and 'label="inner"' in ln and 'pop="ams01"' in ln
                       for ln in metrics.splitlines())
        finally:
            assert d.stop() == 0


def test_flow_map_is_one_map_of_the_size_asked_for(loader_factory: Any) -> None:
    """--flow-map-entries reaches the kernel, and the reader uses the
    labeler's map itself (an entry the labeler wrote is the reader's)."""
    ld = loader_factory(flow_entries=4096)
    ld.attach_reader()
    assert ld.labeler is not None and ld.reader is not None
    for obj in (ld.labeler, ld.reader):
        assert ld.lib.map_max_entries(ld.lib.find_map(obj.obj, "dw_flows")) == 4096
    key = flow_key("10.1.2.3", "10.4.5.6", socket.IPPROTO_UDP, 1111, 2222)
    ld.lib.map_update(ld.labeler.maps["dw_flows"], key, abi.FlowVal(label_id=7, epoch=1))
    got = abi.FlowVal()
    assert ld.lib.map_lookup(ld.reader.maps["dw_flows"], key, got) and got.label_id == 7

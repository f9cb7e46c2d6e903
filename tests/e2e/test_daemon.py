"""The daemon as a user runs it: `dropwatch run` as a subprocess on a lab,
real drops, then the API, the metrics and the history must show exactly
what was sent. Waits on the API (never a blind sleep)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from dropwatch.lab import LAB_RULES, RX_V4, TX_EYEBALL_V4, TX_ORIGIN_V4, Lab

pytestmark = pytest.mark.e2e

from tests.e2e.helpers import POLL, RunningDaemon, free_port, start_daemon  # noqa: E402,F401  (re-exported)


def test_api_shows_exact_drops(daemon: tuple[Lab, RunningDaemon]) -> None:
    lb, d = daemon
    lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 120)   # NO_SOCKET
    lb.send_udp(TX_ORIGIN_V4, RX_V4["customerY"], 9999, 45)     # NETFILTER_DROP
    lb.send_udp(TX_ORIGIN_V4, RX_V4["nolabel"], 5555, 7)        # unlabeled
    key_x = ("customerX", "eyeball", "NO_SOCKET")
    key_y = ("customerY", "origin", "NETFILTER_DROP")
    d.wait_for(lambda: d.drops().get(key_y) == 45 and d.drops().get(key_x) == 120, "the drops in /drops")
    g = d.drops()
    assert g[key_x] == 120 and g[key_y] == 45
    assert d.drops(label="unlabeled", reason="NO_SOCKET", side="origin", iface=lb.rx_if,
                   group_by="label")[("unlabeled",)] == 7
    # Filters, group_by and total.
    r = d.get("/drops", label="customerY", group_by="reason,location,iface").json()
    assert r["total"] == 45
    assert r["groups"][0]["reason"] == "NETFILTER_DROP" and r["groups"][0]["iface"] == lb.rx_if
    assert r["groups"][0]["location"].startswith("nft_do_chain+0x")
    assert set(r["groups"][0]) == {"reason", "location", "iface", "count"}
    assert r["since"].endswith("Z") and r["until"].endswith("Z")
    # Time series adds up to the same counts.
    ts = d.get("/drops/timeseries", label="customerX", reason="NO_SOCKET", step="10s", since="-10m").json()
    assert sum(sum(s["counts"]) for s in ts["series"]) == 120
    assert len(ts["buckets"]) == len(ts["series"][0]["counts"])
    # /labels: packets seen at ingress, drops, ratio.
    labels = {x["label"]: x for x in d.get("/labels").json()["labels"]}
    assert labels["customerY"]["drops"] == 45 and labels["customerY"]["packets"] >= 45
    assert labels["customerX"]["drops"] == 120
    # /metrics carries the same counts.
    text = d.get("/metrics").text
    assert ('dropwatch_drops_total{label="customerY",pop="none",reason="NETFILTER_DROP",side="origin",'
            'source="metadata"} 45.0') in text
    assert 'dropwatch_packets_total{label="customerX",pop="none",side="eyeball"}' in text
    # Not tunnelled: PoP none; attributed by the metadata record (the
    # unlabeled packet carried one too: it matched no rule). Only the
    # reasons this test causes: the veth's own IPv6 multicast at link-up
    # (MLD, router solicitations) can die unlabeled in ip6_mc_input too.
    by_ps = d.drops(label="customerX,customerY,unlabeled", reason="NO_SOCKET,NETFILTER_DROP", iface=lb.rx_if,
                    group_by="label,pop,source")
    assert by_ps[("customerX", "none", "metadata")] == 120 and by_ps[("customerY", "none", "metadata")] == 45
    assert by_ps[("unlabeled", "none", "metadata")] == 7
    assert d.drops(pop="none", source="metadata", label="customerY", group_by="pop")[("none",)] == 45
    assert d.drops(pop="ams01", group_by="") == {(): 0}
    for name in ("dropwatch_corrupt_records_total", "dropwatch_map_full_total", "dropwatch_poll_duration_seconds",
                 "process_resident_memory_bytes"):
        assert name in text
    # Three keys (customerX, customerY, unlabeled) hold slots, of 65,536.
    assert "dropwatch_drop_slots 65536.0" in text
    in_use = float(next(ln.split()[1] for ln in text.splitlines() if ln.startswith("dropwatch_drop_slots_in_use ")))
    assert 3 <= in_use < 100


def test_drops_in_other_namespaces_are_not_named_as_ours(daemon: tuple[Lab, RunningDaemon]) -> None:
    """ifindex is per namespace: a drop in the sender's namespace (same
    ifindex as our interface) must not be shown under our interface's name."""
    lb, d = daemon
    s = lb.udp_socket(lb.rx_ns, bind=(RX_V4["customerX"], 0))
    try:
        for _ in range(9):
            s.sendto(b"r", (TX_EYEBALL_V4, 6111))  # closed port in the tx namespace
    finally:
        s.close()
    tx_ino = os.stat(f"/run/netns/{lb.tx_ns}").st_ino
    tx_ifindex = int(lb.ns(lb.tx_ns, "cat", f"/sys/class/net/{lb.tx_if}/ifindex"))
    foreign = f"if{tx_ifindex}@netns:{tx_ino}"
    d.wait_for(lambda: d.drops(iface=foreign, reason="NO_SOCKET", group_by="iface").get((foreign,)) == 9,
               "the tx-namespace drops under their own namespace")
    assert d.drops(iface=lb.rx_if, label="unlabeled", reason="NO_SOCKET", group_by="iface").get((lb.rx_if,), 0) == 0


def test_metrics_pass_promtool(daemon: tuple[Lab, RunningDaemon]) -> None:
    lb, d = daemon
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool missing: scripts/install-deps.sh installs Debian's prometheus package")
    lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 3)
    d.wait_for(lambda: d.drops().get(("customerX", "eyeball", "NO_SOCKET")) == 3, "drops")
    p = subprocess.run([promtool, "check", "metrics"], input=d.get("/metrics").text, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_restart_keeps_history(env: tuple[Lab, Path, Path, Path]) -> None:
    lb, rules, db, logp = env
    key = ("customerX", "eyeball", "NO_SOCKET")
    d = start_daemon(lb, rules, db, logp)
    try:
        lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 30)
        d.wait_for(lambda: d.drops().get(key) == 30, "first drops")
    finally:
        assert d.stop() == 0
    log = logp.read_text()
    assert "detach" in log
    # Nothing of ours stays attached after a clean stop.
    assert "xdp" not in lb.ns(lb.rx_ns, "ip", "-d", "link", "show", lb.rx_if)
    d2 = start_daemon(lb, rules, db, logp)
    try:
        assert d2.drops().get(key) == 30
        lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 12)
        d2.wait_for(lambda: d2.drops().get(key) == 42, "drops to add up across the restart")
    finally:
        assert d2.stop() == 0


def test_sigterm_writes_last_interval(env: tuple[Lab, Path, Path, Path]) -> None:
    """Drops counted just before SIGTERM are in the history afterwards."""
    lb, rules, db, logp = env
    d = start_daemon(lb, rules, db, logp)
    s0 = lb.snmp()["Udp.NoPorts"]
    lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 25)
    while lb.snmp()["Udp.NoPorts"] - s0 < 25:
        time.sleep(0.01)
    assert d.stop() == 0  # possibly before any poll saw them
    from datetime import datetime, timedelta, timezone

    from dropwatch.store import Store
    now = datetime.now(timezone.utc)
    with Store(db) as st:
        res = st.query_drops(now - timedelta(minutes=5), now + timedelta(minutes=1),
                             filters={"label": ["customerX"], "reason": ["NO_SOCKET"]}, group_by=[])
    assert res.total == 25


def test_rule_reload_under_traffic(daemon: tuple[Lab, RunningDaemon]) -> None:
    lb, d = daemon
    moved = dict(LAB_RULES)
    moved["rules"] = [dict(r) for r in LAB_RULES["rules"]]  # type: ignore[index]
    # customerX's IPv4 prefix moves to customerY (no proto/port condition).
    moved["rules"][0] = {"label": "customerX", "dst": ["2001:db8:1::/48"]}
    moved["rules"].append({"label": "customerY", "dst": ["10.10.1.0/24"]})
    lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 50)
    r = httpx.put(d.url + "/labels", json=moved, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["rules"]["rules"][-1] == {"label": "customerY", "dst": ["10.10.1.0/24"]}
    lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 70)
    key_x, key_y = ("customerX", "eyeball", "NO_SOCKET"), ("customerY", "eyeball", "NO_SOCKET")
    d.wait_for(lambda: d.drops().get(key_x, 0) + d.drops().get(key_y, 0) == 120, "all 120 drops")
    assert d.drops()[key_x] == 50 and d.drops()[key_y] == 70
    # The file on disk follows, so a restart keeps the new rules.
    assert "10.10.1.0/24" in Path(d.proc.args[d.proc.args.index("--config") + 1]).read_text().split("customerY")[-1]


def test_rule_reload_continuous_traffic_loses_nothing(daemon: tuple[Lab, RunningDaemon]) -> None:
    """Packets keep flowing while the rules change: every drop is counted
    under one of the two labels, none lost or unlabeled."""
    import threading
    lb, d = daemon
    s0 = lb.snmp()["Udp.NoPorts"]
    stop = threading.Event()
    sent = [0]

    def traffic() -> None:
        while not stop.is_set() and sent[0] < 3000:
            lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 10)
            sent[0] += 10

    t = threading.Thread(target=traffic)
    t.start()
    moved = {"rules": [{"label": "customerY", "dst": ["10.10.1.0/24"]}], "default_side": "eyeball"}
    try:
        for body in (moved, LAB_RULES, moved):
            assert httpx.put(d.url + "/labels", json=body, timeout=10).status_code == 200
    finally:
        stop.set()
        t.join()
    n = sent[0]
    while lb.snmp()["Udp.NoPorts"] - s0 < n:
        time.sleep(0.01)
    both = lambda: d.drops(side="eyeball", reason="NO_SOCKET", label="customerX,customerY", group_by="")  # noqa
    d.wait_for(lambda: d.get("/drops", label="customerX,customerY", reason="NO_SOCKET", group_by="")
               .json()["total"] == n, f"{n} drops under customerX or customerY")
    # Only this lab's interface: the host may drop other unlabeled packets meanwhile.
    assert d.drops(label="unlabeled", reason="NO_SOCKET", iface=lb.rx_if, group_by="label").get(("unlabeled",), 0) == 0


def test_pops_in_rules_get_stable_ids_across_reloads_and_restarts(env: tuple[Lab, Path, Path, Path]) -> None:
    lb, rules, db, logp = env
    with_pops = {**LAB_RULES, "pops": [{"name": "ams01", "src": ["192.0.2.0/26"]},
                                       {"name": "sjc02", "src": ["2001:db8:ff::/48"]}],
                 "encap": [{"type": "vxlan", "port": 4789}]}
    d = start_daemon(lb, rules, db, logp)
    try:
        r = httpx.put(d.url + "/labels", json=with_pops, timeout=10)
        assert r.status_code == 200, r.text
        assert [p["name"] for p in r.json()["rules"]["pops"]] == ["ams01", "sjc02"]
        # A PoP dropped and another added: ids are never reused.
        r = httpx.put(d.url + "/labels", json={**with_pops, "pops": [with_pops["pops"][1],  # type: ignore[index]
                                                                     {"name": "fra03", "src": ["198.51.100.0/24"]}]},
                      timeout=10)
        assert r.status_code == 200, r.text
        lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 5)  # not tunnelled: pop none
        d.wait_for(lambda: d.drops(label="customerX", group_by="pop").get(("none",)) == 5, "drops with pop none")
    finally:
        assert d.stop() == 0
    from dropwatch.store import Store
    with Store(db) as st:
        assert st.pop_ids(["ams01", "sjc02", "fra03"]) == {"ams01": 1, "sjc02": 2, "fra03": 3}
    d = start_daemon(lb, rules, db, logp)  # the file on disk holds sjc02 and fra03
    try:
        assert "fra03" in rules.read_text()
        assert d.drops(label="customerX", group_by="pop").get(("none",)) == 5
    finally:
        assert d.stop() == 0


BAD_QUERIES: list[tuple[str, dict[str, Any], str]] = [
    ("/drops", {"reason": "NOT_A_REASON"}, "unknown reason"),
    ("/drops", {"since": "yesterday"}, "invalid time"),
    ("/drops", {"until": "2026-13-45T00:00:00Z"}, "invalid time"),
    ("/drops", {"group_by": "label,colour"}, "unknown group_by key"),
    ("/drops", {"group_by": "label,label"}, "repeats"),
    ("/drops", {"side": "left"}, "unknown side"),
    ("/drops", {"label": "bad label!"}, "invalid label"),
    ("/drops", {"pop": "bad pop!"}, "invalid pop"),
    ("/drops", {"source": "kernel"}, "unknown source"),
    ("/drops/timeseries", {"group_by": "pop,pop"}, "repeats"),
    ("/labels", {"pop": "a/b"}, "invalid pop"),
    ("/drops", {"since": "-1h", "until": "-2h"}, "must be before"),
    ("/drops", {"since": "-900d"}, "too long"),
    ("/drops", {"limit": "0"}, ""),
    ("/drops", {"limit": "abc"}, ""),
    ("/drops/timeseries", {"step": "fast"}, "invalid duration"),
    ("/drops/timeseries", {"step": "1s", "since": "-47h"}, "bucket"),
    ("/labels", {"since": "soon"}, "invalid time"),
]


def test_bad_input_gets_4xx_with_message(daemon: tuple[Lab, RunningDaemon]) -> None:
    _, d = daemon
    for path, params, needle in BAD_QUERIES:
        r = d.get(path, **params)
        assert 400 <= r.status_code < 500, (path, params, r.status_code, r.text)
        assert needle.lower() in r.text.lower(), (path, params, r.text)
    before = d.get("/labels").json()["rules"]
    bad_bodies: list[tuple[Any, str]] = [
        ({"rules": [{"label": "x", "dst": ["10.0.0.1/24"]}]}, "rules[0].dst"),
        ({"rules": [{"label": "ok"}, {"label": "y", "colour": "red"}]}, "rules[1]"),
        ({"rules": [{"dst": ["10.0.0.0/8"]}]}, "rules[0]"),
        ({"rules": [{"label": "a" * 65}]}, "rules[0].label"),
        ({"rules": "nope"}, "rules"),
        ([1, 2, 3], ""),
    ]
    for body, needle in bad_bodies:
        r = httpx.put(d.url + "/labels", json=body, timeout=10)
        assert r.status_code == 422, (body, r.text)
        assert needle in r.text, (body, r.text)
    r = httpx.put(d.url + "/labels", content=b"{not json", headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 422
    assert d.get("/labels").json()["rules"] == before  # old rules still active
    assert d.get("/healthz").status_code == 200


def test_startup_errors_are_one_line(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - label: customerX\n    dst: [10.0.0.1/24]\n")
    cases = [
        (["--iface", "dw-no-such-if", "--config", str(tmp_path / "missing.yaml")], "no such file"),
        (["--iface", "lo", "--config", str(rules)], "rules[0].dst"),
        (["--iface", "dw-no-such-if0", "--config", str(tmp_path / "ok.yaml")], "does not exist"),
        (["--iface", "lo", "--config", str(rules), "--poll-interval", "soon"], "--poll-interval"),
        (["--iface", "lo", "--config", str(rules), "--listen", "nowhere"], "--listen"),
        (["--iface", "lo", "--config", str(tmp_path / "ok.yaml"), "--flow-map-entries", "10"], "--flow-map-entries"),
    ]
    (tmp_path / "ok.yaml").write_text("rules: []\n")
    for extra, needle in cases:
        p = subprocess.run([sys.executable, "-m", "dropwatch", "run", "--db", str(tmp_path / "x.db"),
                            "--listen", f"127.0.0.1:{free_port()}", *extra] if "--listen" not in extra else
                           [sys.executable, "-m", "dropwatch", "run", "--db", str(tmp_path / "x.db"), *extra],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        assert p.returncode != 0, (extra, p.stdout, p.stderr)
        err_lines = [ln for ln in p.stderr.splitlines() if ln.startswith("dropwatch: error:")]
        assert len(err_lines) == 1 and needle in err_lines[0], (extra, p.stderr)

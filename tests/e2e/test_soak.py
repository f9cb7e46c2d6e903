"""Soak: a steady drop flood, concurrent API clients and rule reloads every
2 s. Afterwards the counts equal the kernel's own counters to the packet,
the daemon's memory grew less than a stated bound, and its log has no
errors. CI runs DROPWATCH_SOAK_S=20 (default); the documented long run is
DROPWATCH_SOAK_S=600."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from dropwatch.lab import LAB_RULES, RX_V4, TX_EYEBALL_V4, TX_ORIGIN_V4, Lab
from tests.e2e.helpers import RunningDaemon

pytestmark = pytest.mark.e2e

SOAK_S = float(os.environ.get("DROPWATCH_SOAK_S", "20"))
RSS_GROWTH_BOUND_MB = 40.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_soak(daemon: tuple[Lab, RunningDaemon]) -> None:
    lb, d = daemon
    stop = threading.Event()
    errors: list[str] = []
    sent = {"x": 0, "y": 0}
    requests = [0]
    reloads = [0]
    s0 = lb.snmp()["Udp.NoPorts"]
    nft0 = lb.nft_drop_count()

    def flood() -> None:
        while not stop.is_set():
            lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 200)
            sent["x"] += 200
            lb.send_udp(TX_ORIGIN_V4, RX_V4["customerY"], 9999, 50)
            sent["y"] += 50

    def client(paths: list[str]) -> None:
        with httpx.Client(base_url=d.url, timeout=10) as c:
            while not stop.is_set():
                for p in paths:
                    r = c.get(p)
                    if r.status_code >= 500:
                        errors.append(f"{p}: {r.status_code}")
                    requests[0] += 1

    def reload() -> None:
        # Reloads change the rules but not where the flood's addresses land.
        extra = {"rules": [*LAB_RULES["rules"], {"label": "spare", "dst": ["10.10.8.0/24"]}],  # type: ignore[list-item]
                 "default_side": "eyeball"}
        bodies = [extra, LAB_RULES]
        i = 0
        while not stop.wait(2.0):
            r = httpx.put(d.url + "/labels", json=bodies[i % 2], timeout=10)
            if r.status_code != 200:
                errors.append(f"PUT /labels: {r.status_code} {r.text}")
            reloads[0] += 1
            i += 1

    threads = [threading.Thread(target=flood), threading.Thread(target=reload)]
    threads += [threading.Thread(target=client, args=(ps,)) for ps in (
        ["/drops", "/drops?group_by=reason,location"], ["/drops/timeseries?since=-5m"],
        ["/labels", "/metrics"], ["/drops/samples", "/healthz"])]
    warm = time.monotonic() + min(5.0, SOAK_S / 4)
    for t in threads:
        t.start()
    while time.monotonic() < warm:
        time.sleep(0.1)
    rss_start = rss_mb(d.proc.pid)
    time.sleep(max(0.0, SOAK_S - min(5.0, SOAK_S / 4)))
    stop.set()
    for t in threads:
        t.join(timeout=30)
    rss_end = rss_mb(d.proc.pid)

    # Let the last packets land, then compare with the kernel's own counters.
    deadline = time.monotonic() + 10
    while lb.snmp()["Udp.NoPorts"] - s0 < sent["x"] and time.monotonic() < deadline:
        time.sleep(0.05)
    kernel_x = lb.snmp()["Udp.NoPorts"] - s0
    kernel_y = lb.nft_drop_count() - nft0
    assert kernel_x == sent["x"] and kernel_y == sent["y"]
    key_x, key_y = ("customerX", "eyeball", "NO_SOCKET"), ("customerY", "origin", "NETFILTER_DROP")
    d.wait_for(lambda: d.drops(since="-30m", iface=lb.rx_if).get(key_x) == kernel_x
               and d.drops(since="-30m", iface=lb.rx_if).get(key_y) == kernel_y, "counts equal to the kernel's",
               timeout_s=15)
    print(f"\nsoak {SOAK_S:.0f}s: {sent['x'] + sent['y']} drops counted exactly, {requests[0]} API requests, "
          f"{reloads[0]} rule reloads, RSS {rss_start:.1f} -> {rss_end:.1f} MB")
    assert not errors, errors[:5]
    assert reloads[0] >= max(1, int(SOAK_S / 2) - 2)
    assert rss_end - rss_start < RSS_GROWTH_BOUND_MB
    assert "ERROR" not in d.log_path.read_text()

"""Sampled drop events: examples with the right 5-tuple and label, as JSON
and as a pcap that tcpdump reads; rate-limited in the kernel while the
counters stay exact."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from dropwatch.lab import LAB_RULES, RX_V4, RX_V6, TX_EYEBALL_V4, TX_ORIGIN_V4, TX_V6, Lab, lab
from tests.e2e.helpers import RunningDaemon, start_daemon

pytestmark = pytest.mark.e2e


def _start(lb: Lab, tmp: Path, rate: int) -> RunningDaemon:
    rules = tmp / "rules.yaml"
    rules.write_text(yaml.safe_dump(LAB_RULES, sort_keys=False))
    return start_daemon(lb, rules, tmp / "h.db", tmp / "d.log", "--sample-rate", str(rate), poll="0.5s")


@pytest.fixture
def lab_tmp(tmp_path: Path) -> Iterator[tuple[Lab, Path]]:
    with lab() as lb:
        yield lb, tmp_path


def test_samples_json_and_pcap(lab_tmp: tuple[Lab, Path]) -> None:
    lb, tmp = lab_tmp
    d = _start(lb, tmp, rate=200)
    try:
        lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 12)
        lb.send_udp(TX_ORIGIN_V4, RX_V4["customerY"], 9999, 7)
        lb.send_udp(TX_V6, RX_V6["customerX"], 5557, 5)
        d.wait_for(lambda: len(d.get("/drops/samples", label="customerX,customerY", limit=100)
                               .json()["samples"]) >= 24, "24 samples")
        body = d.get("/drops/samples", label="customerY").json()
        ys = body["samples"]
        assert len(ys) == 7
        s = ys[0]
        assert (s["label"], s["side"], s["reason"], s["proto"], s["src"], s["dst"], s["dport"]) == \
            ("customerY", "origin", "NETFILTER_DROP", "udp", TX_ORIGIN_V4, RX_V4["customerY"], 9999)
        assert s["location"].startswith("nft_do_chain+0x") and s["iface"] == lb.rx_if and s["l3"] == "ipv4"
        assert s["len"] == 14 + 20 + 8 + 32 == s["captured"]  # Ethernet + IPv4 + UDP + payload
        v6 = d.get("/drops/samples", label="customerX", reason="NO_SOCKET").json()["samples"]
        assert sorted({(x["l3"], x["src"], x["dport"]) for x in v6}) == [
            ("ipv4", TX_EYEBALL_V4, 5555), ("ipv6", TX_V6, 5557)]
        r = d.get("/drops/samples.pcap", label="customerX,customerY")
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-pcapng"
        pcap = tmp / "s.pcapng"
        pcap.write_bytes(r.content)
        tcpdump = shutil.which("tcpdump")
        assert tcpdump, "tcpdump missing: scripts/install-deps.sh installs it"
        out = subprocess.run([tcpdump, "-nn", "-r", str(pcap)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert len(lines) == 24
        assert sum(1 for ln in lines if re.search(rf"{re.escape(TX_ORIGIN_V4)}\.\d+ > "
                                                  rf"{re.escape(RX_V4['customerY'])}\.9999: UDP", ln)) == 7
        assert sum(1 for ln in lines if f"> {RX_V6['customerX']}.5557: UDP" in ln) == 5
        # Bad filters are 4xx, not 500.
        assert d.get("/drops/samples", reason="NOPE").status_code == 400
        assert d.get("/drops/samples", limit=0).status_code == 422
    finally:
        assert d.stop() == 0


def test_rate_limit_bounds_samples_counts_stay_exact(lab_tmp: tuple[Lab, Path]) -> None:
    lb, tmp = lab_tmp
    d = _start(lb, tmp, rate=5)  # 5/s per CPU, burst 10
    try:
        n = 4000
        s0 = lb.snmp()["Udp.NoPorts"]
        lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, n)
        while lb.snmp()["Udp.NoPorts"] - s0 < n:
            pass
        d.wait_for(lambda: d.drops().get(("customerX", "eyeball", "NO_SOCKET")) == n, "exact count")
        got = d.get("/drops/samples", label="customerX", limit=2000).json()
        ncpu = len(re.findall(r"^processor", Path("/proc/cpuinfo").read_text(), re.MULTILINE))
        # At most burst + rate * elapsed per CPU; the flood took well under 10 s.
        assert len(got["samples"]) <= ncpu * (10 + 5 * 10)
        assert got["lost"]["rate_limit"] > 0

        def events() -> dict[str, float]:
            text = httpx.get(d.url + "/metrics", timeout=10).text
            return {m[0]: float(m[1]) for m in re.findall(r'dropwatch_kernel_events_total\{event="(\w+)"\} (\S+)',
                                                          text)}
        # Every drop the reader saw was either sampled or counted as not sampled.
        d.wait_for(lambda: events().get("drops", 0) == events().get("samples", 0) +
                   events().get("sample_rate_limited", 0) + events().get("sample_ring_full", 0), "invariant")
        text = httpx.get(d.url + "/metrics", timeout=10).text
        assert re.search(r'dropwatch_samples_dropped_total\{cause="rate_limit"\} [1-9]', text)
    finally:
        assert d.stop() == 0

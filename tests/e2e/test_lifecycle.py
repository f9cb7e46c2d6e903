"""Crashes, interfaces that change under the daemon, a failing store, and
who may change the rules."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from dropwatch.lab import LAB_RULES, RX_V4, TX_EYEBALL_V4, Lab, lab
from tests.e2e.helpers import RunningDaemon, free_port, start_daemon

pytestmark = pytest.mark.e2e

KEY = ("customerX", "eyeball", "NO_SOCKET")
ROOT = Path(__file__).resolve().parents[2]


def run_daemon(lb: Lab, tmp: Path, *extra: str, env: dict[str, str] | None = None,
               db: Path | None = None, wait_healthy: bool = True) -> RunningDaemon:
    rules = tmp / "rules.yaml"
    if not rules.exists():
        rules.write_text(yaml.safe_dump(LAB_RULES, sort_keys=False))
    return start_daemon(lb, rules, db or tmp / "h.db", tmp / "daemon.log", *extra, env=env, poll="0.3s",
                        wait_healthy=wait_healthy)


@pytest.fixture
def lt(tmp_path: Path) -> Iterator[tuple[Lab, Path]]:
    with lab() as lb:
        yield lb, tmp_path


def xdp_attached(lb: Lab) -> bool:
    return "prog/xdp" in lb.ns(lb.rx_ns, "ip", "-d", "link", "show", lb.rx_if)


def test_kill_9_leaves_nothing_attached_and_history_survives(lt: tuple[Lab, Path]) -> None:
    lb, tmp = lt
    d = run_daemon(lb, tmp)
    progs = httpx.get(d.url + "/healthz", timeout=5).json()["programs"]
    assert progs["labeler"] and progs["reader"]
    assert xdp_attached(lb)
    lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 40)
    d.wait_for(lambda: d.drops().get(KEY) == 40, "40 drops flushed")
    lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 10)  # in flight when killed
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(timeout=10)
    # The kernel released every link and program with the process's fds.
    deadline = time.monotonic() + 5
    while xdp_attached(lb) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not xdp_attached(lb)
    for pid in progs.values():
        deadline = time.monotonic() + 5
        while subprocess.run(["bpftool", "prog", "show", "id", str(pid)], capture_output=True).returncode == 0 \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert subprocess.run(["bpftool", "prog", "show", "id", str(pid)], capture_output=True).returncode != 0
    # Restart: attaches again, history up to the last flushed interval is intact.
    d2 = run_daemon(lb, tmp)
    try:
        assert xdp_attached(lb)
        assert d2.drops().get(KEY, 0) >= 40  # at most one poll interval (the last 10) can be lost
        before = d2.drops().get(KEY, 0)
        lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 5)
        d2.wait_for(lambda: d2.drops().get(KEY) == before + 5, "new drops add up")
    finally:
        assert d2.stop() == 0


def test_interface_deleted_and_recreated_is_reattached(lt: tuple[Lab, Path]) -> None:
    lb, tmp = lt
    d = run_daemon(lb, tmp)
    try:
        lb.delete_link()
        d.wait_for(lambda: httpx.get(d.url + "/healthz", timeout=5).json()["interfaces"].get(lb.rx_if) == "missing",
                   "the daemon to notice the missing interface")
        h = httpx.get(d.url + "/healthz", timeout=5)
        assert h.status_code == 503 and any("missing" in p for p in h.json()["problems"])
        lb.create_link()
        d.wait_for(lambda: httpx.get(d.url + "/healthz", timeout=5).status_code == 200, "re-attach")
        assert xdp_attached(lb)
        lb.resolve_neighbours()
        lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 15)
        d.wait_for(lambda: d.drops().get(KEY) == 15, "labeled drops after re-attach")
        assert "interface is back, re-attached" in d.log_path.read_text()
    finally:
        assert d.stop() == 0


def test_interface_down_up_and_rename(lt: tuple[Lab, Path]) -> None:
    lb, tmp = lt
    d = run_daemon(lb, tmp)
    try:
        def ifs() -> dict[str, str]:
            return httpx.get(d.url + "/healthz", timeout=5).json()["interfaces"]  # type: ignore[no-any-return]

        lb.ns(lb.rx_ns, "ip", "link", "set", lb.rx_if, "down")
        d.wait_for(lambda: ifs().get(lb.rx_if) == "down", "down reported")
        lb.ns(lb.rx_ns, "ip", "link", "set", lb.rx_if, "up")
        d.wait_for(lambda: ifs().get(lb.rx_if) == "up", "up reported")
        lb.resolve_neighbours()
        lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 8)
        d.wait_for(lambda: d.drops().get(KEY) == 8, "labeled after down/up")
        new = lb.rx_if + "n"
        lb.ns(lb.rx_ns, "ip", "link", "set", lb.rx_if, "down")
        lb.ns(lb.rx_ns, "ip", "link", "set", lb.rx_if, "name", new)
        lb.ns(lb.rx_ns, "ip", "link", "set", new, "up")
        d.wait_for(lambda: ifs().get(lb.rx_if, "").startswith(f"renamed to {new}"), "rename reported")
        lb.resolve_neighbours()
        lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 4)
        d.wait_for(lambda: d.drops().get(KEY) == 12, "still labeled after rename")
    finally:
        assert d.stop() == 0


def test_token_protects_writes_and_reads(lt: tuple[Lab, Path]) -> None:
    lb, tmp = lt
    token = "s3cret-token-0123456789"
    (tmp / "token").write_text(token + "\n")
    d = run_daemon(lb, tmp, "--token-file", str(tmp / "token"), wait_healthy=False)
    try:
        d.wait_for(lambda: httpx.get(d.url + "/healthz", timeout=5).status_code == 200, "healthy (open)")
        auth = {"authorization": f"Bearer {token}"}
        assert httpx.get(d.url + "/drops", timeout=5).status_code == 401
        assert httpx.get(d.url + "/", timeout=5).status_code == 200  # the page carries no data
        assert httpx.get(d.url + "/drops", headers={"authorization": "Bearer wrong"}, timeout=5).status_code == 401
        assert httpx.get(d.url + "/drops", headers=auth, timeout=5).status_code == 200
        body = {"rules": [{"label": "customerX", "dst": ["10.10.1.0/24"]}]}
        assert httpx.put(d.url + "/labels", json=body, timeout=5).status_code == 401
        assert httpx.put(d.url + "/labels", json=body, headers=auth, timeout=5).status_code == 200
        assert token not in d.log_path.read_text()
    finally:
        assert d.stop() == 0
    d = run_daemon(lb, tmp, "--public-reads", env={"DROPWATCH_TOKEN": token})
    try:
        assert httpx.get(d.url + "/drops", timeout=5).status_code == 200
        assert httpx.put(d.url + "/labels", json={"rules": []}, timeout=5).status_code == 401
    finally:
        assert d.stop() == 0


def test_non_loopback_listen_needs_token(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text("rules: []\n")
    p = subprocess.run([sys.executable, "-m", "dropwatch", "run", "--iface", "lo", "--config",
                        str(tmp_path / "r.yaml"), "--db", str(tmp_path / "x.db"), "--listen", f"0.0.0.0:{free_port()}"],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 2 and "needs a token" in p.stderr


def test_writes_from_non_loopback_refused_without_token() -> None:
    """Unit-level: the access check on a client address that is not loopback."""
    from dropwatch.api import _is_loopback
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("127.3.4.5")
    assert not _is_loopback("10.0.0.1") and not _is_loopback("testclient") and not _is_loopback("")


def test_store_on_full_disk_keeps_counting_and_flushes_later(lt: tuple[Lab, Path]) -> None:
    """History on a tiny tmpfs: fill it, drops keep being counted (metrics,
    in-memory pending), free it, the pending deltas land: nothing lost."""
    lb, tmp = lt
    mnt = tmp / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        d = run_daemon(lb, tmp, db=mnt / "h.db")
        try:
            lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 10)
            d.wait_for(lambda: d.drops().get(KEY) == 10, "first drops")
            filler = mnt / "filler"
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k", "count=64"], capture_output=True)
            lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 300)
            # Enough distinct rows to need new pages: other labels/ports too.
            for port in range(5600, 5640):
                lb.send_udp(TX_EYEBALL_V4, RX_V4["nolabel"], port, 1)
            d.wait_for(lambda: 'dropwatch_drops_total{label="customerX",pop="none",reason="NO_SOCKET",side="eyeball",'
                       'source="metadata"} 310.0' in httpx.get(d.url + "/metrics", timeout=5).text,
                       "metrics keep counting")
            d.wait_for(lambda: any("history store" in x for x in
                                   httpx.get(d.url + "/healthz", timeout=5).json()["problems"]),
                       "the store failure to be reported")
            assert d.drops().get(KEY) == 10  # not yet in the history
            filler.unlink()
            d.wait_for(lambda: d.drops().get(KEY) == 310, "pending deltas flushed after space returns")
            assert d.proc.poll() is None
        finally:
            assert d.stop() == 0
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


FOREIGN_XDP = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
SEC("xdp") int foreign(struct xdp_md *ctx) { return XDP_PASS; }
"""


def test_refuses_interface_with_another_xdp_program(lt: tuple[Lab, Path]) -> None:
    """Another program is already on the interface: refuse with a clear
    message (exit 1), and leave that program in place."""
    lb, tmp = lt
    src = tmp / "foreign.bpf.c"
    src.write_text(FOREIGN_XDP)
    obj = tmp / "foreign.bpf.o"
    arch = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True).stdout.strip()
    subprocess.run(["clang", "-target", "bpf", "-O2", "-g", f"-I/usr/include/{arch}", "-c", str(src), "-o",
                    str(obj)], check=True)
    lb.ns(lb.rx_ns, "ip", "link", "set", "dev", lb.rx_if, "xdpgeneric", "obj", str(obj), "sec", "xdp")
    before = lb.ns(lb.rx_ns, "ip", "-d", "link", "show", lb.rx_if)
    assert "prog/xdp" in before
    d = run_daemon(lb, tmp, wait_healthy=False)
    assert d.proc.wait(timeout=60) == 1
    log = d.log_path.read_text()
    assert f"interface {lb.rx_if} (netns {lb.rx_ns}) already has an XDP program" in log
    assert "dropwatch does not replace it" in log
    assert lb.ns(lb.rx_ns, "ip", "-d", "link", "show", lb.rx_if) == before  # untouched

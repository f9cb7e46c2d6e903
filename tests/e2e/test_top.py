"""`dropwatch top` and `dropwatch query` against a real daemon watching a
namespace lab with real drops. `top` runs in a tmux pseudo-terminal and is
read back from the screen: sorted by drop rate, exact totals, the ratio, and
a clear line (no traceback) when the daemon goes away. The daemon wants a
token, which the commands take from DROPWATCH_TOKEN. Waits on readiness,
never on blind sleeps; the lab, the daemon and tmux go away on every path."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from dropwatch.lab import LAB_RULES, RX_V4, TX_EYEBALL_V4, TX_ORIGIN_V4, Lab, lab

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def wait_until(pred: Callable[[], Any], what: str, timeout_s: float = 30, on_fail: Callable[[], str] = str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except (httpx.HTTPError, ValueError, IndexError, StopIteration):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{on_fail()}")


class Tmux:
    def __init__(self) -> None:
        path = shutil.which("tmux")
        if path is None:
            pytest.fail("tmux missing: scripts/install-deps.sh installs it")
        self.tmux = path
        self.sock = f"dwtop-{secrets.token_hex(4)}"

    def cmd(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.tmux, "-L", self.sock, *args], check=False, capture_output=True, text=True,
                              timeout=10)

    def screen(self) -> str:
        return self.cmd("capture-pane", "-p", "-t", "t").stdout

    def wait_screen(self, pred: Callable[[str], bool], what: str, timeout_s: float = 30) -> str:
        return str(wait_until(lambda: (s := self.screen()) and pred(s) and s, what, timeout_s,
                              on_fail=lambda: "screen:\n" + self.screen()))



@pytest.fixture
def tmux() -> Iterator[Tmux]:
    t = Tmux()
    try:
        yield t
    finally:
        t.cmd("kill-server")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Lab, str, str, subprocess.Popen[str]]]:
    token = secrets.token_hex(16)
    (tmp_path / "token").write_text(token + "\n")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(LAB_RULES, sort_keys=False))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "daemon.log"
    with lab() as lb:
        with open(log, "w") as logf:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dropwatch", "run", "--netns", lb.rx_ns, "--iface", lb.rx_if, "--config",
                 str(rules), "--db", str(tmp_path / "h.db"), "--listen", f"127.0.0.1:{port}", "--poll-interval",
                 "0.5s", "--token-file", str(tmp_path / "token")],
                stdout=logf, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            wait_until(lambda: proc.poll() is None and httpx.get(url + "/healthz", timeout=5).status_code == 200,
                       "the daemon healthy", on_fail=lambda: log.read_text()[-3000:])
            yield lb, url, token, proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def cli(*args: str, token: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DROPWATCH_TOKEN"}
    env["PYTHONPATH"] = str(ROOT)
    if token:
        env["DROPWATCH_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "dropwatch", *args], check=False, capture_output=True, text=True,
                          env=env, timeout=60)


def table_rows(screen: str) -> list[list[str]]:
    lines = screen.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.split()[:3] == ["LABEL", "SIDE", "REASON"])
    return [ln.split() for ln in lines[i + 1:] if ln.strip() and not ln.startswith("(")]


def test_top_and_query_on_a_real_daemon(daemon: tuple[Lab, str, str, subprocess.Popen[str]], tmux: Tmux,
                                        tmp_path: Path) -> None:
    lb, url, token, proc = daemon
    status = tmp_path / "top.status"
    x = ["customerX", "eyeball", "NO_SOCKET"]
    y = ["customerY", "origin", "NETFILTER_DROP"]
    lb.send_udp(TX_ORIGIN_V4, RX_V4["customerY"], 9999, 45)  # one batch: a total, no lasting rate
    stop = threading.Event()

    def traffic() -> None:  # customerX keeps dropping: the top rate (bounded: at most 60 s)
        deadline = time.monotonic() + 60
        while not stop.wait(0.1) and time.monotonic() < deadline:
            lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 20)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        command = (f"env PYTHONPATH={ROOT} DROPWATCH_TOKEN={token} {sys.executable} -m dropwatch top "
                   f"--url {url} --interval 0.5; echo $? > {status}; sleep 60")
        assert tmux.cmd("new-session", "-d", "-s", "t", "-x", "120", "-y", "30", command).returncode == 0

        def ranked(s: str) -> bool:
            rows = [r for r in table_rows(s) if r[0].startswith("customer")]
            return (len(rows) == 2 and rows[0][:3] == x and float(rows[0][3].replace(",", "")) > 20
                    and rows[1][:3] == y and rows[1][4] == "45")

        s = tmux.wait_screen(ranked, "customerX first by rate, customerY with its 45 drops")
        assert s.splitlines()[0].startswith(f"dropwatch top - {url} - ")
        rows = {tuple(r[:3]): r for r in table_rows(s)}
        # customerY: 45 packets labeled, all 45 dropped -> 100%. (customerX's packets and drops are
        # read by two requests while traffic flows, so its ratio is only about 100%.)
        assert rows[tuple(y)][5] == "100%"
        assert 0.9 <= float(rows[tuple(x)][5].rstrip("%").replace(",", "")) / 100 <= 1.1
        # Rows of labels that never drop in this lab do not appear; unlabeled may (the host's other drops).
        assert {r[0] for r in table_rows(s)} <= {"customerX", "customerY", "unlabeled"}

        # --once --json for scripts: the same totals.
        p = cli("top", "--url", url, "--once", "--json", "--interval", "0.5", "--label", "customerY", token=token)
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        assert [(r["label"], r["side"], r["reason"], r["total"], r["packets"], r["ratio"]) for r in out["rows"]] == [
            ("customerY", "origin", "NETFILTER_DROP", 45, 45, 1.0)]
        assert out["rows"][0]["rate"] == 0

        # query: table and JSON.
        p = cli("query", "--url", url, "--label", "customerY", "--since", "-1h", "--group-by", "reason", token=token)
        assert p.returncode == 0, p.stderr
        assert [ln.split() for ln in p.stdout.splitlines()[1:]] == [["REASON", "DROPS", "SHARE"],
                                                                     ["NETFILTER_DROP", "45", "100.0%"]]
        p = cli("query", "--url", url, "--label", "customerY", "--since", "-1h", "--group-by", "reason,location",
                "--json", token=token)
        ans = json.loads(p.stdout)
        assert ans["total"] == 45 and len(ans["groups"]) == 1
        assert ans["groups"][0]["reason"] == "NETFILTER_DROP"
        assert ans["groups"][0]["location"].startswith("nft_do_chain")
        # Without the token: a clear refusal.
        p = cli("query", "--url", url, token=None)
        assert p.returncode == 1 and "401" in p.stderr and "DROPWATCH_TOKEN" in p.stderr and "Traceback" not in p.stderr

        # The daemon goes away: top says so on its screen and keeps the last numbers; query fails cleanly.
        stop.set()
        sender.join()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        tmux.wait_screen(lambda s: "cannot reach the dropwatch API" in s and "retrying" in s, "the error line")
        assert "customerY" in tmux.screen()
        p = cli("query", "--url", url, token=token)
        assert p.returncode == 1 and p.stderr.startswith("dropwatch: error: cannot reach the dropwatch API")
        assert "Traceback" not in p.stderr
        # q quits with status 0.
        tmux.cmd("send-keys", "-t", "t", "q")
        wait_until(lambda: status.exists() and status.read_text().strip(), "top to exit")
        assert status.read_text().strip() == "0", tmux.screen()
        assert "Traceback" not in tmux.screen()
    finally:
        stop.set()
        sender.join()

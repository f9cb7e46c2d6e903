"""Shared helpers for end-to-end tests: the daemon as a subprocess on a lab."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx

import yaml

from dropwatch.lab import LAB_RULES, Lab, lab

POLL = "0.5s"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


@dataclass
class RunningDaemon:
    proc: subprocess.Popen[str]
    url: str
    log_path: Path

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(self.url + path, params=params, timeout=10)

    def wait_for(self, pred: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}): {self.log_path.read_text()[-2000:]}")
            try:
                if pred():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; log:\n{self.log_path.read_text()[-2000:]}")

    def drops(self, **params: Any) -> dict[tuple[str, ...], int]:
        r = self.get("/drops", **params)
        assert r.status_code == 200, r.text
        return {tuple(str(v) for k, v in g.items() if k != "count"): int(g["count"]) for g in r.json()["groups"]}

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


ROOT = Path(__file__).resolve().parents[2]


def start_daemon(lb: Lab, rules: Path, db: Path, log_path: Path, *extra: str, port: int | None = None,
                 env: dict[str, str] | None = None, poll: str = POLL, wait_healthy: bool = True) -> RunningDaemon:
    """`dropwatch run` on the lab's receiving interface, as a subprocess.
    The caller's DROPWATCH_TOKEN is not inherited (pass it in env)."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "dropwatch", "run", "--netns", lb.rx_ns, "--iface", lb.rx_if,
           "--config", str(rules), "--db", str(db), "--listen", f"127.0.0.1:{port}", "--poll-interval", poll,
           *extra]
    base = {k: v for k, v in os.environ.items() if k != "DROPWATCH_TOKEN"}
    with open(log_path, "a") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, text=True,
                                env={**base, "PYTHONPATH": str(ROOT), **(env or {})})
    d = RunningDaemon(proc, f"http://127.0.0.1:{port}", log_path)
    if wait_healthy:
        try:
            d.wait_for(lambda: d.get("/healthz").status_code == 200, "the daemon to be healthy", timeout_s=30)
        except BaseException:
            d.stop()
            raise
    return d


@contextmanager
def lab_daemon(tmp: Path, *extra: str) -> Iterator[tuple[Lab, RunningDaemon]]:
    """A fresh lab and `dropwatch run` on it; both removed on every exit path."""
    rules = tmp / "rules.yaml"
    rules.write_text(yaml.safe_dump(LAB_RULES, sort_keys=False))
    with lab() as lb:
        d = start_daemon(lb, rules, tmp / "history.db", tmp / "daemon.log", *extra)
        try:
            yield lb, d
        finally:
            d.stop()

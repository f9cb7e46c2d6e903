"""The minimum privileges: CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON as an
unprivileged uid load, attach and count; CAP_SYSLOG adds symbol names for
kernel locations (kallsyms hides addresses otherwise); without CAP_BPF the
daemon refuses with one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dropwatch.lab import LAB_RULES, RX_V4, TX_EYEBALL_V4, Lab, lab

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def lb_tmp() -> Iterator[tuple[Lab, Path]]:
    # pytest's tmp_path lives under a 0700 directory the unprivileged uid cannot enter.
    tmp = Path(tempfile.mkdtemp(prefix="dropwatch-caps-", dir="/tmp"))
    tmp.chmod(0o777)
    try:
        with lab() as lb:
            yield lb, tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_with_caps(lb: Lab, tmp: Path, caps: str, rules_mode: int = 0o644) -> subprocess.Popen[str]:
    rules = tmp / "rules.yaml"
    rules.write_text(yaml.safe_dump(LAB_RULES))
    rules.chmod(rules_mode)
    # Inside the lab's namespace: no --netns, so no setns (CAP_SYS_ADMIN).
    cmd = ["ip", "netns", "exec", lb.rx_ns, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
           f"--inh-caps=-all,{caps}", f"--ambient-caps=-all,{caps}", f"--bounding-set=-all,{caps}", "--",
           sys.executable, "-m", "dropwatch", "run", "--iface", lb.rx_if, "--config", str(rules),
           "--db", str(tmp / "h.db"), "--listen", "127.0.0.1:9199", "--poll-interval", "0.3s"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def api(lb: Lab, path: str) -> dict[str, object] | None:
    out = lb.ns(lb.rx_ns, "curl", "-sf", f"http://127.0.0.1:9199{path}", check=False)
    return json.loads(out) if out else None


def wait_api(lb: Lab, p: subprocess.Popen[str], path: str, pred: object, timeout_s: float = 20) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert p.poll() is None, p.communicate()[0]
        body = api(lb, path)
        if body is not None and pred(body):  # type: ignore[operator]
            return body
        time.sleep(0.2)
    raise AssertionError(f"timed out on {path}")


@pytest.mark.parametrize("caps,symbols", [("+bpf,+net_admin,+perfmon", False),
                                          ("+bpf,+net_admin,+perfmon,+syslog", True)])
def test_runs_with_minimum_capabilities(lb_tmp: tuple[Lab, Path], caps: str, symbols: bool) -> None:
    lb, tmp = lb_tmp
    p = run_with_caps(lb, tmp, caps)
    try:
        wait_api(lb, p, "/healthz", lambda b: b.get("status") == "ok")
        lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 10)
        body = wait_api(lb, p, "/drops?label=customerX&group_by=label,reason,location",
                        lambda b: b.get("total") == 10)
        loc = body["groups"][0]["location"]  # type: ignore[index]
        if symbols:
            assert loc.startswith("__udp4_lib_rcv+0x")
        else:
            assert loc.startswith("0x")  # kallsyms hides addresses without CAP_SYSLOG
    finally:
        p.terminate()
        out = p.communicate(timeout=30)[0]
    assert p.returncode == 0, out
    if not symbols:
        assert "CAP_SYSLOG" in out  # the daemon says why locations are addresses


def test_unreadable_config_is_one_line(lb_tmp: tuple[Lab, Path]) -> None:
    lb, tmp = lb_tmp
    p = run_with_caps(lb, tmp, "+bpf,+net_admin,+perfmon", rules_mode=0o600)  # root-only file
    out = p.communicate(timeout=60)[0]
    assert p.returncode == 1 and "Traceback" not in out, out
    assert out.strip().splitlines()[-1].startswith("dropwatch: error:") and "Permission denied" in out


def test_without_cap_bpf_refuses_in_one_line(lb_tmp: tuple[Lab, Path]) -> None:
    lb, tmp = lb_tmp
    p = run_with_caps(lb, tmp, "+net_admin,+perfmon")
    out = p.communicate(timeout=60)[0]
    assert p.returncode == 1
    assert out.strip().splitlines()[-1] == ("dropwatch: error: needs root or CAP_BPF+CAP_PERFMON+CAP_NET_ADMIN "
                                            "(run as root, or via the systemd unit)")

"""dropwatch as a fleet member: a real Prometheus server (Debian's
`prometheus`, on loopback, temporary storage) scrapes real daemons that
watch namespace labs with known drops.

- Two labs, two daemons, scraped as two targets with the shipped scrape
  config (deploy/prometheus/prometheus.yml: file_sd, bearer token): two
  `instance`s, exact per-host and fleet-wide counts per label through
  Prometheus' HTTP API, the shipped alert rules load and evaluate cleanly,
  DropwatchDown goes pending when a daemon stops, and every Grafana
  dashboard query evaluates.
- The cardinality cap (--metrics-max-labels) on a real daemon.
- The daemon runs with exactly the systemd unit's capability bounding set
  (and fails clearly without each of CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN).

Waits on readiness (API answers, Prometheus /-/ready, query results), never
on blind sleeps. Every process is killed and every lab removed on every
exit path.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.helpers import free_port
from dropwatch.lab import LAB_RULES, RX_V4, TX_EYEBALL_V4, TX_ORIGIN_V4, Lab, lab

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
POLL = "0.5s"


def wait_until(pred: Callable[[], Any], what: str, timeout_s: float = 30, on_fail: Callable[[], str] = str,
               alive: Callable[[], None] | None = None) -> Any:
    deadline = time.monotonic() + timeout_s
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        if alive is not None:
            alive()
        try:
            v = pred()
            if v:
                return v
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            last_exc = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last error: {last_exc!r})\n{on_fail()}")


# ================================================================== daemons


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    url: str
    log: Path
    token: str | None = None

    @property
    def target(self) -> str:
        return self.url.removeprefix("http://")

    def get(self, path: str, **params: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.get(self.url + path, params=params, headers=headers, timeout=10)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_daemon(stack: ExitStack, lb: Lab, tmp: Path, name: str, *extra: str, token: str | None = None,
                 wrap: list[str] | None = None, in_netns: bool = False, wait: bool = True) -> Daemon:
    """`dropwatch run` on the lab's rx interface as a subprocess, stopped
    (SIGTERM, then SIGKILL) when ``stack`` closes. ``in_netns`` runs the
    whole daemon inside the lab's rx namespace (no --netns, so no setns)."""
    rules = tmp / f"{name}-rules.yaml"
    rules.write_text(yaml.safe_dump(LAB_RULES, sort_keys=False))
    port = free_port()
    args = ["run", "--iface", lb.rx_if, "--config", str(rules), "--db", str(tmp / f"{name}.db"),
            "--listen", f"127.0.0.1:{port}", "--poll-interval", POLL, *extra]
    if not in_netns:
        args[1:1] = ["--netns", lb.rx_ns]
    if token:
        tf = tmp / f"{name}.token"
        tf.write_text(token + "\n")
        args += ["--token-file", str(tf)]
    cmd = [*(["ip", "netns", "exec", lb.rx_ns] if in_netns else []), *(wrap or []),
           sys.executable, "-m", "dropwatch", *args]
    log = tmp / f"{name}.log"
    with open(log, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    d = Daemon(proc, f"http://127.0.0.1:{port}", log, token)
    stack.callback(d.stop)
    if wait:
        wait_until(lambda: d.get("/healthz").status_code == 200, f"daemon {name} healthy", alive=d.check_alive,
                   on_fail=lambda: log.read_text()[-3000:])
    return d


def drop_counts(text: str, metric: str = "dropwatch_drops_total") -> dict[tuple[tuple[str, str], ...], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == metric:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


# ================================================================== Prometheus


class Prometheus:
    """A real Prometheus server on 127.0.0.1 with temporary storage."""

    def __init__(self, stack: ExitStack, config: Path, tmp: Path) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus missing: scripts/install-deps.sh installs Debian's prometheus package")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "prometheus.log"
        with open(self.log, "w") as logf:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
                 "--log.level=warn"], stdout=logf, stderr=subprocess.STDOUT, cwd=tmp)
        stack.callback(self.stop)
        wait_until(lambda: httpx.get(self.url + "/-/ready", timeout=2).status_code == 200, "Prometheus /-/ready",
                   alive=self.check_alive, on_fail=lambda: self.log.read_text()[-3000:])

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def api(self, path: str, **params: str) -> Any:
        r = httpx.get(self.url + path, params=params, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (path, params, r.text)
        return body["data"]

    def query(self, q: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": q} if at is None else {"query": q, "time": f"{at:.3f}"}
        data = self.api("/api/v1/query", **params)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def by(self, q: str, *labels: str, at: float | None = None) -> dict[tuple[str, ...], float]:
        return {tuple(r["metric"].get(k, "") for k in labels): float(r["value"][1]) for r in self.query(q, at)}


def fleet_config(tmp: Path, targets: list[str], token: str) -> Path:
    """deploy/prometheus/prometheus.yml as shipped, with this test's targets
    (file_sd), token file and rules path, scraping every second."""
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    cfg["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s"})
    cfg["rule_files"] = [str(DEPLOY / "prometheus" / "dropwatch.rules.yml")]
    (job,) = cfg["scrape_configs"]
    assert job["job_name"] == "dropwatch"
    job["scrape_timeout"] = "1s"
    (tmp / "targets").mkdir()
    (tmp / "targets" / "lab.yml").write_text(yaml.safe_dump([{"targets": targets, "labels": {"site": "lab"}}]))
    job["file_sd_configs"] = [{"files": [str(tmp / "targets" / "*.yml")]}]
    (tmp / "dropwatch.token").write_text(token + "\n")
    assert job["authorization"]["credentials_file"] == "dropwatch.token"
    job["authorization"]["credentials_file"] = str(tmp / "dropwatch.token")
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the Grafana dashboard, with
    Grafana's variables set as for "all hosts, all labels, last 5 minutes"."""
    dash = json.loads((DEPLOY / "grafana" / "dropwatch.json").read_text())
    values = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m", "$instance": ".+", "$label": ".+",
              "$pop": ".*"}
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            q = t["expr"]
            for k in sorted(values, key=len, reverse=True):
                q = q.replace(k, values[k])
            assert "$" not in q, q
            out.append((p["title"], q))
    return out


# ================================================================== the fleet


def test_two_daemons_scraped_by_prometheus(tmp_path: Path) -> None:
    token = secrets.token_hex(16)
    x = ("customerX", "eyeball", "NO_SOCKET")
    y = ("customerY", "origin", "NETFILTER_DROP")
    sent = {"a": {x: 120, y: 45}, "b": {x: 30, y: 7}}
    with ExitStack() as stack:
        lab_a = stack.enter_context(lab())
        lab_b = stack.enter_context(lab())
        da = start_daemon(stack, lab_a, tmp_path, "a", token=token)
        db = start_daemon(stack, lab_b, tmp_path, "b", token=token)
        assert da.get("/metrics").status_code == 200
        assert httpx.get(da.url + "/metrics", timeout=5).status_code == 401  # the token is needed
        prom = Prometheus(stack, fleet_config(tmp_path, [da.target, db.target], token), tmp_path)

        def up() -> dict[tuple[str, ...], float]:
            return prom.by('up{job="dropwatch"}', "instance")

        wait_until(lambda: up() == {(da.target,): 1.0, (db.target,): 1.0}, "both targets up",
                   on_fail=lambda: json.dumps(prom.api("/api/v1/targets"), indent=1)[-3000:])

        for lb, name in ((lab_a, "a"), (lab_b, "b")):
            lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, sent[name][x])
            lb.send_udp(TX_ORIGIN_V4, RX_V4["customerY"], 9999, sent[name][y])
        per_host_q = ('sum by (instance, label, side, reason) '
                      '(dropwatch_drops_total{job="dropwatch", label=~"customer.*"})')
        want = {(d.target, *k): float(v) for d, n in ((da, "a"), (db, "b")) for k, v in sent[n].items()}
        wait_until(lambda: prom.by(per_host_q, "instance", "label", "side", "reason") == want,
                   "exact per-host counts in Prometheus", alive=lambda: (da.check_alive(), db.check_alive()),
                   on_fail=lambda: str(prom.by(per_host_q, "instance", "label", "side", "reason")))

        # Two instances, each carrying the target labels of the shipped config.
        instances = prom.query('count by (instance, host, site) (dropwatch_drops_total{job="dropwatch"})')
        assert {(r["metric"]["instance"], r["metric"]["host"], r["metric"]["site"]) for r in instances} == {
            (da.target, "127.0.0.1", "lab"), (db.target, "127.0.0.1", "lab")}
        # The fleet-wide sum per label is the sum of both hosts.
        fleet = prom.by('sum by (label) (dropwatch_drops_total{job="dropwatch", label=~"customer.*"})', "label")
        assert fleet == {("customerX",): 150.0, ("customerY",): 52.0}
        assert prom.by('sum by (side, reason) (dropwatch_drops_total{job="dropwatch", label=~"customer.*"})',
                       "side", "reason") == {("eyeball", "NO_SOCKET"): 150.0, ("origin", "NETFILTER_DROP"): 52.0}
        # The same counts as each daemon's own API.
        for d, n in ((da, "a"), (db, "b")):
            api = d.get("/drops", label="customerX,customerY", group_by="label,side,reason").json()
            assert {(g["label"], g["side"], g["reason"]): g["count"] for g in api["groups"]} == sent[n]

        # increase() over a window [w0, w0 + 20s] that starts after the first
        # batch was complete in Prometheus and ends after the second batch: it
        # sees the second batch. It extrapolates to the window's edges, so it
        # is at least the true increase and a little more at most.
        window_s = 20
        w0 = time.time() + 1
        wait_until(lambda: time.time() > w0 + 1, "a scrape inside the window before the second batch")
        lab_a.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 200)
        lab_b.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 100)
        wait_until(lambda: prom.by('sum(dropwatch_drops_total{job="dropwatch", label="customerX"})') == {(): 450.0},
                   "the second batch in Prometheus")
        # Not a readiness wait: the window has to be over before it is evaluated.
        wait_until(lambda: time.time() > w0 + window_s + 1, f"the end of the {window_s}s window",
                   timeout_s=window_s + 5)
        inc = prom.by(f'sum by (label) (increase(dropwatch_drops_total{{job="dropwatch", label="customerX"}}'
                      f'[{window_s}s]))', "label", at=w0 + window_s)[("customerX",)]
        assert 300 <= inc <= 300 * 1.15, inc

        # Drop ratio per label, as the alert and the dashboard compute it.
        ratio = prom.by('sum by (label) (dropwatch_drops_total{job="dropwatch", label="customerY"})'
                        ' / sum by (label) (dropwatch_packets_total{job="dropwatch", label="customerY"})', "label")
        assert ratio == {("customerY",): 1.0}  # every customerY packet sent went to the DROP rule

        # The shipped rules load and evaluate without error; nothing fires on a healthy fleet.
        def rule_health() -> list[tuple[str, str, str]]:
            groups = prom.api("/api/v1/rules")["groups"]
            return [(r["name"], r["health"], r.get("lastError", "")) for g in groups for r in g["rules"]]

        shipped = yaml.safe_load((DEPLOY / "prometheus" / "dropwatch.rules.yml").read_text())
        n_rules = sum(len(g["rules"]) for g in shipped["groups"])
        health = wait_until(lambda: (h := rule_health()) and all(s == "ok" for _, s, _ in h) and h,
                            "every rule evaluated", on_fail=lambda: str(rule_health()))
        assert len(health) == n_rules and all(not err for _, _, err in health), health
        recorded = prom.by('label:dropwatch_drops:rate5m{label=~"customer.*"}', "instance", "label")
        assert set(recorded) == {(d.target, lb) for d in (da, db) for lb in ("customerX", "customerY")}

        def alerts() -> dict[tuple[str, str], str]:
            return {(a["labels"]["alertname"], a["labels"].get("instance", "")): a["state"]
                    for a in prom.api("/api/v1/alerts")["alerts"]}

        # (Not DropwatchCorruptRecords: two daemons on one kernel see each
        # other's packets die, with records under another load's key, and
        # rightly count them as corrupt.)
        for name in ("DropwatchDown", "DropwatchNotAttached", "DropwatchPollingStalled", "DropwatchDropMapFull",
                     "DropwatchHistoryStoreFailing", "DropwatchLabelDropRatioHigh"):
            assert not [k for k in alerts() if k[0] == name], alerts()

        # Every Grafana dashboard query evaluates on real data; the main views are not empty.
        results = {title: prom.query(q) for title, q in dashboard_queries()}
        for title in ("Drops/s by label", "Drop ratio by label", "Drops/s by reason", "Drops/s by side",
                      "Drops/s by host", "Top label / side / reason over the range", "Attached programs"):
            assert results[title], f"dashboard panel {title!r} is empty"
        hosts = {r["metric"]["instance"] for r in results["Drops/s by host"]}
        assert hosts == {da.target, db.target}

        # One daemon stops: its target goes down and DropwatchDown goes pending for that instance only.
        assert db.stop() == 0
        wait_until(lambda: up().get((db.target,)) == 0.0, "the stopped target down")
        wait_until(lambda: alerts().get(("DropwatchDown", db.target)) == "pending", "DropwatchDown pending",
                   on_fail=lambda: str(alerts()))
        assert ("DropwatchDown", da.target) not in alerts()
        prom.check_alive()


# ================================================================== cardinality cap


def test_metrics_max_labels_on_a_real_daemon(tmp_path: Path) -> None:
    """--metrics-max-labels 1: only the label with the most drops keeps its
    name; customerX's drops are summed into label="other" exactly. (Drops of
    other namespaces on this host carry no record of ours: "unlabeled" with
    source "none" (or side "unknown"), so the eyeball/NO_SOCKET/metadata
    "other" series holds exactly customerX's drops.)"""
    with ExitStack() as stack:
        lb = stack.enter_context(lab())
        d = start_daemon(stack, lb, tmp_path, "capped", "--metrics-max-labels", "1")
        lb.send_udp(TX_ORIGIN_V4, RX_V4["customerY"], 9999, 3000)
        lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 1000)
        # Not tunnelled (pop none), attributed by the metadata record.
        y = (("label", "customerY"), ("pop", "none"), ("reason", "NETFILTER_DROP"), ("side", "origin"),
             ("source", "metadata"))
        other_x = (("label", "other"), ("pop", "none"), ("reason", "NO_SOCKET"), ("side", "eyeball"),
                   ("source", "metadata"))
        text = wait_until(lambda: (t := d.get("/metrics").text) and drop_counts(t).get(y) == 3000
                          and drop_counts(t).get(other_x) == 1000 and t, "capped metrics with both batches",
                          alive=d.check_alive, on_fail=lambda: d.get("/metrics").text[:3000])
        drops = drop_counts(text)
        assert {dict(k)["label"] for k in drops} == {"customerY", "other"}
        packets = drop_counts(text, "dropwatch_packets_total")
        assert {dict(k)["label"] for k in packets} <= {"customerY", "other"}
        assert packets[(("label", "customerY"), ("pop", "none"), ("side", "origin"))] == 3000
        assert packets[(("label", "other"), ("pop", "none"), ("side", "eyeball"))] >= 1000
        # The history and the API are not capped. (History is written by the
        # daemon's writer thread, up to a poll after /metrics counted it.)
        wait_until(lambda: d.get("/drops", label="customerX", group_by="label").json()["groups"]
                   == [{"label": "customerX", "count": 1000}], "customerX in the history",
                   alive=d.check_alive, on_fail=lambda: d.get("/drops", label="customerX", group_by="label").text)
        p = subprocess.run([shutil.which("promtool") or "promtool", "check", "metrics"], input=text,
                           check=False, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr


# ================================================================== the systemd unit's capabilities


def unit_capabilities() -> list[str]:
    caps: list[str] = []
    for line in (DEPLOY / "systemd" / "dropwatch.service").read_text().splitlines():
        if line.startswith("CapabilityBoundingSet="):
            caps += line.split("=", 1)[1].split()
    return caps


CAP_BITS = {"CAP_NET_ADMIN": 12, "CAP_SYSLOG": 34, "CAP_PERFMON": 38, "CAP_BPF": 39, "CAP_SYS_ADMIN": 21}


def setpriv(caps: list[str]) -> list[str]:
    tool = shutil.which("setpriv")
    if tool is None:
        pytest.fail("setpriv missing: scripts/install-deps.sh installs util-linux")
    bounding = ",".join(["-all"] + ["+" + c.removeprefix("CAP_").lower() for c in caps])
    return [tool, "--bounding-set", bounding, "--inh-caps", "-all", "--"]


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    from dropwatch.netns import entered

    with entered(name):
        yield


def test_daemon_runs_with_the_units_capability_set(tmp_path: Path) -> None:
    """As root but bounded to the unit's CapabilityBoundingSet (no
    CAP_SYS_ADMIN, no CAP_DAC_OVERRIDE...), the daemon attaches, counts
    drops by label exactly and names their kernel locations. It runs inside
    the lab's namespace (the unit does not allow --netns without
    CAP_SYS_ADMIN), so the API is reached from there too."""
    caps = unit_capabilities()
    assert set(caps) == {"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYSLOG"}
    with ExitStack() as stack:
        lb = stack.enter_context(lab())
        port = free_port()
        rules = tmp_path / "rules.yaml"
        rules.write_text(yaml.safe_dump(LAB_RULES, sort_keys=False))
        log = tmp_path / "capped.log"
        cmd = ["ip", "netns", "exec", lb.rx_ns, *setpriv(caps), sys.executable, "-m", "dropwatch", "run",
               "--iface", lb.rx_if, "--config", str(rules), "--db", str(tmp_path / "h.db"),
               "--listen", f"127.0.0.1:{port}", "--poll-interval", POLL]
        with open(log, "w") as logf:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, text=True,
                                    env={**os.environ, "PYTHONPATH": str(ROOT)})
        d = Daemon(proc, f"http://127.0.0.1:{port}", log)
        stack.callback(d.stop)

        def get(path: str, **params: Any) -> httpx.Response:
            with in_netns(lb.rx_ns):
                return d.get(path, **params)

        wait_until(lambda: get("/healthz").status_code == 200, "the capability-bounded daemon healthy",
                   alive=d.check_alive, on_fail=lambda: log.read_text()[-3000:])
        # The daemon really runs with only those capabilities.
        pids = subprocess.run(["pgrep", "-f", f"127.0.0.1:{port}"], check=False, capture_output=True,
                              text=True).stdout.split()
        pid = next(p for p in pids if "dropwatch" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
                   and "setpriv" not in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
                   and "netns" not in Path(f"/proc/{p}/cmdline").read_text(errors="replace"))
        status = Path(f"/proc/{pid}/status").read_text()
        eff = int(re.search(r"CapEff:\s+([0-9a-f]+)", status).group(1), 16)  # type: ignore[union-attr]
        assert eff == sum(1 << CAP_BITS[c] for c in caps), hex(eff)
        lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 40)
        lb.send_udp(TX_ORIGIN_V4, RX_V4["customerY"], 9999, 15)

        def counts() -> dict[tuple[str, ...], int]:
            r = get("/drops", label="customerX,customerY", group_by="label,side,reason,location").json()
            return {(g["label"], g["side"], g["reason"], g["location"]): g["count"] for g in r["groups"]}

        got = wait_until(lambda: (c := counts()) and sum(c.values()) == 55 and c, "55 drops",
                         on_fail=lambda: str(counts()))
        assert {k[:3]: v for k, v in got.items()} == {("customerX", "eyeball", "NO_SOCKET"): 40,
                                                        ("customerY", "origin", "NETFILTER_DROP"): 15}
        assert all(re.fullmatch(r"\w+\+0x[0-9a-f]+", k[3]) for k in got), got  # kernel locations resolved
        health = get("/healthz").json()
        assert health["attached"] == {lb.rx_if: "native"} and health["reader"]
        assert d.stop() == 0
        assert "detach" in log.read_text()


@pytest.mark.parametrize("missing", ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"])
def test_each_unit_capability_is_needed(tmp_path: Path, missing: str) -> None:
    """Without any one of them the daemon does not start, and says why."""
    caps = [c for c in unit_capabilities() if c != missing]
    with ExitStack() as stack:
        lb = stack.enter_context(lab())
        rules = tmp_path / "rules.yaml"
        rules.write_text(yaml.safe_dump(LAB_RULES, sort_keys=False))
        cmd = ["ip", "netns", "exec", lb.rx_ns, *setpriv(caps), sys.executable, "-m", "dropwatch", "run",
               "--iface", lb.rx_if, "--config", str(rules), "--db", str(tmp_path / "h.db"),
               "--listen", f"127.0.0.1:{free_port()}"]
        p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert p.returncode != 0
        out = p.stdout + p.stderr
        assert "dropwatch: error:" in out and "Traceback" not in out, out[-3000:]
        # Nothing stays attached after the failed start.
        assert "xdp" not in lb.ns(lb.rx_ns, "ip", "-d", "link", "show", lb.rx_if)

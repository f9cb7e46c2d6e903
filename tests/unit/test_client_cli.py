"""`dropwatch query` and `dropwatch top` against a fake daemon API (a small
HTTP server in this process serving /drops and /labels like the daemon):
tables, JSON, rates, tokens, and clear one-line errors (never a traceback)
when the daemon is unreachable or refuses. `top`'s full-screen view runs in a
real pseudo-terminal (tmux) and is read back from the screen. No root.
The same commands against a real daemon on a lab: tests/e2e/test_top.py."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
ANCHOR = "2026-11-24T10:00:00Z"
KEYS = ("label", "side", "reason", "location", "iface", "pop", "source")


class FakeApi:
    """Serves GET /drops and GET /labels from ``rows`` (full-detail drop
    counts since ANCHOR) and ``packets`` (per label; per label and PoP in
    ``pop_packets`` for /labels?pop=), like the daemon."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str, str, str, str, str], int] = {}
        self.packets: dict[str, int] = {}
        self.pop_packets: dict[tuple[str, str], int] = {}
        self.requests: list[tuple[str, dict[str, list[str]], dict[str, str]]] = []
        self.token: str | None = None
        self.delay_s = 0.0
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                u = urllib.parse.urlsplit(self.path)
                q = urllib.parse.parse_qs(u.query, keep_blank_values=True)
                with api.lock:
                    api.requests.append((u.path, q, {k.lower(): v for k, v in self.headers.items()}))
                if api.delay_s:
                    time.sleep(api.delay_s)
                if api.token and self.headers.get("authorization") != f"Bearer {api.token}":
                    return self.reply(401, {"detail": "missing or wrong token (Authorization: Bearer ...)"})
                if u.path == "/drops":
                    return self.reply(*api.drops(q))
                if u.path == "/labels":
                    pops = set(",".join(q["pop"]).split(",")) if "pop" in q else None
                    with api.lock:
                        if pops is None:
                            per_label = dict(api.packets)
                        else:
                            per_label = {}
                            for (lb, pop), n in api.pop_packets.items():
                                if pop in pops:
                                    per_label[lb] = per_label.get(lb, 0) + n
                        labels = [{"label": k, "packets": v, "drops": 0, "drop_ratio": None}
                                  for k, v in per_label.items()]
                    return self.reply(200, {"rules": {}, "since": ANCHOR, "until": "now", "labels": labels})
                if u.path.startswith("/notjson"):
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(b"<html>hello</html>")
                    return None
                return self.reply(404, {"detail": "Not Found"})

            def reply(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def drops(self, q: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        group_by = [k for k in q.get("group_by", ["label,side,reason"])[0].split(",") if k]
        if any(k not in KEYS for k in group_by):
            return 400, {"detail": f"unknown group_by key {group_by!r}: any of {', '.join(KEYS)}"}
        reasons = q.get("reason", [])
        if any(r not in ("NO_SOCKET", "NETFILTER_DROP", "SOCKET_RCVBUFF") for r in reasons):
            return 400, {"detail": f"unknown reason {reasons[0]!r}: use a kernel drop reason name"}
        since = q.get("since", ["-15m"])[0]
        filters = {k: set(",".join(q[k]).split(",")) for k in KEYS if k in q}
        out: dict[tuple[str, ...], int] = {}
        with self.lock:
            for row, n in self.rows.items():
                d = dict(zip(KEYS, row, strict=True))
                if all(d[k] in v for k, v in filters.items()):
                    key = tuple(d[k] for k in group_by)
                    out[key] = out.get(key, 0) + n
        groups = [dict(zip(group_by, k, strict=True), count=n)
                  for k, n in sorted(out.items(), key=lambda kv: (-kv[1], kv[0]))]
        limit = int(q.get("limit", ["100"])[0])
        return 200, {"since": ANCHOR if since.startswith("-") else since, "until": "2026-11-24T10:15:00Z",
                     "total": sum(out.values()), "groups": groups[:limit]}

    def add(self, label: str, side: str, reason: str, n: int, location: str = "f+0x1", iface: str = "eth0",
            pop: str = "none", source: str = "metadata") -> None:
        with self.lock:
            key = (label, side, reason, location, iface, pop, source)
            self.rows[key] = self.rows.get(key, 0) + n

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[FakeApi]:
    a = FakeApi()
    try:
        yield a
    finally:
        a.close()


def dropwatch(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if k not in ("DROPWATCH_TOKEN", "DROPWATCH_URL")}
    e.update({"PYTHONPATH": str(ROOT), **(env or {})})
    return subprocess.run([sys.executable, "-m", "dropwatch", *args], check=False, capture_output=True, text=True,
                          env=e, timeout=timeout, cwd=ROOT)


def dead_url() -> str:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}"


def assert_clean_error(p: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dropwatch: error: "), p.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


# ================================================================== query


def test_query_prints_a_table(api: FakeApi) -> None:
    api.add("customerX", "eyeball", "NO_SOCKET", 120)
    api.add("customerY", "origin", "NETFILTER_DROP", 45)
    api.add("customerY", "origin", "NETFILTER_DROP", 5, location="g+0x2")
    api.add("unlabeled", "unknown", "NO_SOCKET", 30)
    p = dropwatch("query", "--url", api.url)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == f"drops from {ANCHOR} to 2026-11-24T10:15:00Z: 200"
    assert lines[1].split() == ["LABEL", "SIDE", "REASON", "DROPS", "SHARE"]
    assert [ln.split() for ln in lines[2:]] == [
        ["customerX", "eyeball", "NO_SOCKET", "120", "60.0%"],
        ["customerY", "origin", "NETFILTER_DROP", "50", "25.0%"],
        ["unlabeled", "unknown", "NO_SOCKET", "30", "15.0%"]]
    # Columns line up: every DROPS cell ends where the header does.
    end = lines[1].index("DROPS") + len("DROPS")
    assert all(ln[:end].endswith(cell) for ln, cell in zip(lines[2:], ("120", " 50", " 30"), strict=True))


def test_query_passes_filters_and_group_by(api: FakeApi) -> None:
    api.add("customerX", "eyeball", "NO_SOCKET", 7, location="__udp4_lib_rcv+0x4bc")
    api.add("customerX", "eyeball", "SOCKET_RCVBUFF", 3)
    api.add("customerY", "origin", "NO_SOCKET", 100)
    p = dropwatch("query", "--url", api.url, "--label", "customerX", "--since", "-1h", "--group-by", "reason,location",
                  "--until", "-1h30m")
    assert p.returncode == 0, p.stderr
    assert [ln.split() for ln in p.stdout.splitlines()[1:]] == [
        ["REASON", "LOCATION", "DROPS", "SHARE"], ["NO_SOCKET", "__udp4_lib_rcv+0x4bc", "7", "70.0%"],
        ["SOCKET_RCVBUFF", "f+0x1", "3", "30.0%"]]
    path, q, _ = api.requests[-1]
    assert path == "/drops" and q["label"] == ["customerX"] and q["since"] == ["-1h"] and q["until"] == ["-1h30m"]
    assert q["group_by"] == ["reason,location"] and q["limit"] == ["100"]


def test_query_by_pop_and_source(api: FakeApi) -> None:
    api.add("customerX", "eyeball", "NO_SOCKET", 60, pop="ams01", source="metadata")
    api.add("customerX", "eyeball", "NO_SOCKET", 20, pop="ams01", source="flow")
    api.add("customerX", "eyeball", "NO_SOCKET", 15, pop="none")
    api.add("unlabeled", "unknown", "NO_SOCKET", 5, pop="unknown", source="none")
    p = dropwatch("query", "--url", api.url, "--group-by", "pop,source")
    assert p.returncode == 0, p.stderr
    assert [ln.split() for ln in p.stdout.splitlines()[1:]] == [
        ["POP", "SOURCE", "DROPS", "SHARE"], ["ams01", "metadata", "60", "60.0%"], ["ams01", "flow", "20", "20.0%"],
        ["none", "metadata", "15", "15.0%"], ["unknown", "none", "5", "5.0%"]]
    p = dropwatch("query", "--url", api.url, "--pop", "ams01", "--source", "flow", "--group-by", "label")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0].endswith(": 20")
    _, q, _ = api.requests[-1]
    assert q["pop"] == ["ams01"] and q["source"] == ["flow"]


def test_query_json_is_the_api_answer(api: FakeApi) -> None:
    api.add("customerX", "eyeball", "NO_SOCKET", 12)
    p = dropwatch("query", "--url", api.url, "--group-by", "label", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"since": ANCHOR, "until": "2026-11-24T10:15:00Z", "total": 12,
                                    "groups": [{"label": "customerX", "count": 12}]}


def test_query_limit_footer_and_empty_answer(api: FakeApi) -> None:
    for i in range(5):
        api.add(f"c{i}", "eyeball", "NO_SOCKET", 10 - i)
    p = dropwatch("query", "--url", api.url, "--group-by", "label", "--limit", "2")
    assert p.returncode == 0
    assert p.stdout.splitlines()[-1] == "(2 groups shown, 21 drops in groups past --limit 2)"
    p = dropwatch("query", "--url", api.url, "--label", "nobody")
    assert p.returncode == 0 and p.stdout.splitlines()[-1] == "(no drops match)"
    p = dropwatch("query", "--url", api.url, "--group-by", "")
    assert p.returncode == 0 and p.stdout.splitlines()[1].split() == ["DROPS", "SHARE"]


def test_query_errors_are_one_clear_line(api: FakeApi, tmp_path: Path) -> None:
    assert_clean_error(dropwatch("query", "--url", dead_url()), 1, "cannot reach the dropwatch API",
                       "connection refused", "is 'dropwatch run' running")
    assert_clean_error(dropwatch("query", "--url", "ftp://x"), 2, "--url 'ftp://x': expected http://HOST:PORT")
    assert_clean_error(dropwatch("query", "--url", api.url, "--reason", "BOGUS"), 1,
                       "GET /drops: 400", "unknown reason 'BOGUS'")
    assert_clean_error(dropwatch("query", "--url", api.url, "--group-by", "colour"), 1, "unknown group_by key")
    assert_clean_error(dropwatch("query", "--url", api.url + "/notjson"), 1, "is not JSON")
    api.delay_s = 3
    assert_clean_error(dropwatch("query", "--url", api.url, "--timeout", "0.5"), 1, "no answer", "within 0.5 s")
    api.delay_s = 0
    assert_clean_error(dropwatch("query", "--url", api.url, "--token-file", str(tmp_path / "missing")), 2,
                       "--token-file", "No such file")


def test_query_sends_the_token(api: FakeApi, tmp_path: Path) -> None:
    api.token = secrets.token_hex(16)
    api.add("customerX", "eyeball", "NO_SOCKET", 1)
    assert_clean_error(dropwatch("query", "--url", api.url), 1, "401", "set DROPWATCH_TOKEN or --token-file")
    assert_clean_error(dropwatch("query", "--url", api.url, env={"DROPWATCH_TOKEN": "wrong-token-0123456789"}), 1,
                       "401", "the token given was refused")
    assert dropwatch("query", "--url", api.url, env={"DROPWATCH_TOKEN": api.token}).returncode == 0
    f = tmp_path / "token"
    f.write_text(api.token + "\n")
    p = dropwatch("query", "--url", api.url, "--token-file", str(f))
    assert p.returncode == 0 and "customerX" in p.stdout
    assert api.requests[-1][2]["authorization"] == f"Bearer {api.token}"


def test_query_into_a_closed_pipe_is_quiet(api: FakeApi) -> None:
    for i in range(3000):
        api.add(f"c{i}", "eyeball", "NO_SOCKET", 1)
    p = subprocess.run(f"{sys.executable} -m dropwatch query --url {api.url} --group-by label --limit 3000 | head -1",
                       shell=True, check=False, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=30)
    assert p.stdout.startswith("drops from") and "Traceback" not in p.stderr and "Error" not in p.stderr, p.stderr


# ================================================================== top: the numbers


class StubApi:
    """In-process stand-in for client_cli.Api: answers from a list of states."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}
        self.packets: dict[str, int] = {}
        self.calls: list[tuple[str, list[tuple[str, str]]]] = []
        self.url = "http://stub"

    def get(self, path: str, params: list[tuple[str, str]]) -> Any:
        self.calls.append((path, list(params)))
        if path == "/drops":
            p = dict(params)
            return {"since": ANCHOR if p["since"].startswith("-") else p["since"], "until": "u",
                    "total": sum(self.counts.values()),
                    "groups": [{"label": k[0], "side": k[1], "reason": k[2], "count": v}
                               for k, v in self.counts.items()]}
        return {"labels": [{"label": k, "packets": v} for k, v in self.packets.items()]}


def test_top_sampler_rates_totals_ratios_and_order() -> None:
    from dropwatch.client_cli import TopSampler

    stub = StubApi()
    now = [100.0]
    s = TopSampler(stub, "-15m", [("label", "customerX,customerY")], clock=lambda: now[0])  # type: ignore[arg-type]
    x, y = ("customerX", "eyeball", "NO_SOCKET"), ("customerY", "origin", "NETFILTER_DROP")
    stub.counts = {x: 100, y: 500}
    stub.packets = {"customerX": 1000, "customerY": 1000}
    f = s.sample()
    assert f.rate_window_s is None and f.rate is None and [r.rate for r in f.rows] == [None, None]
    assert [r.label for r in f.rows] == ["customerY", "customerX"]  # no rate yet: by total
    # The anchor: the first answer's since is what every later request asks for.
    assert dict(stub.calls[0][1])["since"] == "-15m"
    assert ("label", "customerX,customerY") in stub.calls[0][1]
    now[0] += 2
    stub.counts = {x: 140, y: 510, ("unlabeled", "unknown", "NO_SOCKET"): 6}
    f = s.sample()
    assert dict(stub.calls[-2][1])["since"] == ANCHOR and dict(stub.calls[-1][1])["since"] == ANCHOR
    assert f.rate_window_s == 2
    assert [(r.label, r.rate, r.total) for r in f.rows] == [
        ("customerX", 20.0, 140), ("customerY", 5.0, 510), ("unlabeled", 3.0, 6)]
    assert f.rows[0].ratio == 0.14 and f.rows[2].ratio is None  # no packets for unlabeled here
    assert f.total == 656 and f.rate == 28.0
    # The rate covers the last ~10 s of samples, not everything since the start.
    for _ in range(10):
        now[0] += 2
        stub.counts = {x: stub.counts[x] + 10, y: stub.counts[y] + 100}
        f = s.sample()
    assert 10 <= f.rate_window_s <= 12
    assert [(r.label, r.rate) for r in f.rows][:2] == [("customerY", 50.0), ("customerX", 5.0)]


def test_render_top_fits_the_terminal() -> None:
    from dropwatch.client_cli import Frame, Row, render_top

    rows = [Row("a-very-long-label-name-" + "x" * 60, "eyeball", "NETFILTER_DROP", 123456, 1234.5, 1000, 123.456),
            Row("b", "origin", "NO_SOCKET", 5, 0.25, 1000, 0.005)]
    lines = render_top(Frame("2026-11-24T10:00:00Z", "u", rows, 10.0), "http://h:9180", 2, width=70, height=8)
    assert all(len(ln) <= 70 for ln in lines)
    assert lines[3].split() == ["LABEL", "SIDE", "REASON", "RATE/s", "TOTAL", "RATIO"]
    assert lines[4].startswith("a-very-long-label") and "~" in lines[4]  # the label column gives way
    assert lines[4].split()[-3:] == ["1,234", "123,456", "12,346%"]
    assert lines[5].split()[-3:] == ["0.25", "5", "0.50%"]
    assert len(render_top(Frame("s", "u", rows * 20, 10.0), "x", 2, width=80, height=10)) == 10


# ================================================================== top: the commands


def test_top_once_json(api: FakeApi) -> None:
    api.add("customerX", "eyeball", "NO_SOCKET", 100)
    api.add("customerY", "origin", "NETFILTER_DROP", 1000)
    api.packets = {"customerX": 400, "customerY": 2000}

    def grow() -> None:  # between top's two samples (after the first one's /labels), customerX drops 50 more
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(r[0] == "/labels" for r in api.requests):
            time.sleep(0.01)
        api.add("customerX", "eyeball", "NO_SOCKET", 50)

    t = threading.Thread(target=grow)
    t.start()
    p = dropwatch("top", "--url", api.url, "--once", "--json", "--interval", "1")
    t.join()
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["since"] == ANCHOR and out["total"] == 1150 and out["url"] == api.url
    rows = out["rows"]
    assert [(r["label"], r["side"], r["reason"], r["total"]) for r in rows] == [
        ("customerX", "eyeball", "NO_SOCKET", 150), ("customerY", "origin", "NETFILTER_DROP", 1000)]
    assert 0.9 <= out["rate_window_s"] <= 3
    assert rows[0]["rate"] == pytest.approx(50 / out["rate_window_s"], rel=0.01) and rows[1]["rate"] == 0
    assert rows[0]["ratio"] == 0.375 and rows[0]["packets"] == 400 and rows[1]["ratio"] == 0.5
    drops_reqs = [q for path, q, _ in api.requests if path == "/drops"]
    assert drops_reqs[0]["since"] == ["-15m"] and drops_reqs[1]["since"] == [ANCHOR]
    assert drops_reqs[0]["group_by"] == ["label,side,reason"]


def test_top_by_pop_splits_rows_and_ratios_per_pop(api: FakeApi) -> None:
    """--by pop: one row per label, side, reason and PoP; each row's ratio is
    over the packets of its label that landed at its PoP."""
    api.add("customerX", "eyeball", "NO_SOCKET", 30, pop="ams01")
    api.add("customerX", "eyeball", "NO_SOCKET", 10, pop="none")
    api.pop_packets = {("customerX", "ams01"): 300, ("customerX", "none"): 1000}
    api.packets = {"customerX": 1300}
    p = dropwatch("top", "--url", api.url, "--once", "--json", "--interval", "0.2", "--by", "pop")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)["rows"]
    assert [(r["label"], r["pop"], r["total"], r["packets"], r["ratio"]) for r in rows] == [
        ("customerX", "ams01", 30, 300, 0.1), ("customerX", "none", 10, 1000, 0.01)]
    assert [q["group_by"] for path, q, _ in api.requests if path == "/drops"][0] == ["label,side,reason,pop"]
    p = dropwatch("top", "--url", api.url, "--once", "--interval", "0.2", "--by", "pop,source")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[3].split() == ["LABEL", "SIDE", "REASON", "POP", "SOURCE", "RATE/s", "TOTAL",
                                                "RATIO"]
    assert p.stdout.splitlines()[4].split()[:5] == ["customerX", "eyeball", "NO_SOCKET", "ams01", "metadata"]
    assert_clean_error(dropwatch("top", "--url", api.url, "--once", "--by", "iface"), 2,
                       "--by 'iface': one of pop, source")


def test_top_pop_filter_applies_to_drops_and_packets(api: FakeApi) -> None:
    api.add("customerX", "eyeball", "NO_SOCKET", 30, pop="ams01")
    api.add("customerX", "eyeball", "NO_SOCKET", 10, pop="none")
    api.pop_packets = {("customerX", "ams01"): 300, ("customerX", "none"): 1000}
    p = dropwatch("top", "--url", api.url, "--once", "--json", "--interval", "0.2", "--pop", "ams01")
    assert p.returncode == 0, p.stderr
    (row,) = json.loads(p.stdout)["rows"]
    assert (row["total"], row["packets"], row["ratio"]) == (30, 300, 0.1)
    assert "pop" not in row  # not split by PoP, only filtered
    assert all(q.get("pop") == ["ams01"] for path, q, _ in api.requests if path in ("/drops", "/labels"))


def test_top_errors_are_one_clear_line() -> None:
    url = dead_url()
    assert_clean_error(dropwatch("top", "--url", url, "--once"), 1, "cannot reach the dropwatch API", url)
    assert_clean_error(dropwatch("top", "--url", url), 1, "cannot reach")  # live mode, before the screen
    assert_clean_error(dropwatch("top", "--url", "nourl"), 2, "expected http://HOST:PORT")
    p = dropwatch("top", "--interval", "0")
    assert p.returncode == 2 and "must be positive" in p.stderr and "Traceback" not in p.stderr


def test_top_batch_mode_when_not_a_terminal(api: FakeApi) -> None:
    api.add("customerX", "eyeball", "NO_SOCKET", 3)
    proc = subprocess.Popen([sys.executable, "-m", "dropwatch", "top", "--url", api.url, "--interval", "0.3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        frames = 0
        deadline = time.monotonic() + 20
        while frames < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("dropwatch top - "):
                frames += 1
            if line.startswith("customerX"):
                assert line.split()[:3] == ["customerX", "eyeball", "NO_SOCKET"]
        assert frames == 2
    finally:
        proc.kill()
        proc.wait(10)


# ================================================================== top in a terminal (tmux)


class Tmux:
    """A private tmux server (own socket) holding one session."""

    def __init__(self, width: int = 110, height: int = 24) -> None:
        self.tmux = shutil.which("tmux")
        if self.tmux is None:
            pytest.fail("tmux missing: scripts/install-deps.sh installs it")
        self.sock = f"dwtest-{secrets.token_hex(4)}"
        self.width, self.height = width, height

    def cmd(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.tmux, "-L", self.sock, *args], check=False, capture_output=True, text=True,
                              timeout=10)

    def start(self, command: str, status: Path | None = None) -> None:
        """Runs ``command``; its exit status goes to ``status`` (the pane then stays)."""
        if status is not None:
            command = f"{command}; echo $? > {status}; sleep 60"
        p = self.cmd("new-session", "-d", "-s", "t", "-x", str(self.width), "-y", str(self.height), command)
        assert p.returncode == 0, p.stderr

    def screen(self) -> str:
        return self.cmd("capture-pane", "-p", "-t", "t").stdout

    def wait_screen(self, pred: Callable[[str], bool], what: str, timeout_s: float = 20) -> str:
        deadline = time.monotonic() + timeout_s
        s = ""
        while time.monotonic() < deadline:
            s = self.screen()
            if pred(s):
                return s
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; screen:\n{s}")

    def kill(self) -> None:
        self.cmd("kill-server")


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    t = Tmux()
    try:
        yield t
    finally:
        t.kill()


def top_command(url: str, *extra: str) -> str:
    return (f"env PYTHONPATH={ROOT} DROPWATCH_TOKEN= {sys.executable} -m dropwatch top --url {url} "
            + " ".join(extra))


def rows_on(screen: str) -> list[list[str]]:
    lines = screen.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.split()[:3] == ["LABEL", "SIDE", "REASON"])
    return [ln.split() for ln in lines[i + 1:] if ln.strip() and not ln.startswith("(")]


def test_top_live_screen_sorted_by_rate(api: FakeApi, tmux: Tmux, tmp_path: Path) -> None:
    x, y = ("customerX", "eyeball", "NO_SOCKET"), ("customerY", "origin", "NETFILTER_DROP")
    api.add(*x, 10)
    api.add(*y, 1000)  # a big total, but not growing
    api.packets = {"customerX": 100, "customerY": 4000}
    stop = threading.Event()

    def traffic() -> None:  # customerX drops 20 per 0.1 s: the top rate
        while not stop.wait(0.1):
            api.add(*x, 20)

    t = threading.Thread(target=traffic)
    t.start()
    try:
        status = tmp_path / "status"
        tmux.start(top_command(api.url, "--interval", "0.5"), status)
        s = tmux.wait_screen(lambda s: "rate over" in s and "customerX" in s, "a frame with rates")
        assert s.splitlines()[0].startswith(f"dropwatch top - {api.url} - ")
        assert "q quits" in s.splitlines()[0]
        s = tmux.wait_screen(lambda s: rows_on(s)[0][0] == "customerX" and float(rows_on(s)[0][3]) > 50,
                             "customerX first, at ~200/s")
        rows = rows_on(s)
        assert [r[:3] for r in rows] == [list(x), list(y)]
        assert 100 <= float(rows[0][3].replace(",", "")) <= 400, rows  # 200/s nominal
        assert rows[1][3] == "0" and rows[1][4] == "1,000" and rows[1][5] == "25.00%"
        # The rate of customerY rises above customerX's: the order follows.
        stop.set()
        t.join()
        stop.clear()

        def flood() -> None:
            while not stop.wait(0.1):
                api.add(*y, 100)

        t = threading.Thread(target=flood)
        t.start()
        tmux.wait_screen(lambda s: rows_on(s)[0][0] == "customerY", "customerY on top once it drops faster")
        # The daemon goes away: the screen says so and keeps retrying; q quits cleanly.
        api.close()
        tmux.wait_screen(lambda s: "[retrying every 0.5s] cannot reach the dropwatch API" in s, "the error line")
        assert "customerY" in tmux.screen()  # the last numbers stay on screen
        tmux.cmd("send-keys", "-t", "t", "q")
        deadline = time.monotonic() + 10
        while not (status.exists() and status.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status.exists() and status.read_text().strip() == "0", tmux.screen()
        assert "Traceback" not in tmux.screen()
    finally:
        stop.set()
        t.join()


def test_top_live_screen_resizes(api: FakeApi, tmux: Tmux) -> None:
    for i in range(40):
        api.add(f"label{i:02d}-" + "z" * 40, "eyeball", "NO_SOCKET", 100 - i)
    tmux.start(top_command(api.url, "--interval", "0.5"))
    s = tmux.wait_screen(lambda s: "label00" in s, "the first frame")
    assert all(len(ln) <= tmux.width for ln in s.splitlines())
    assert len(rows_on(s)) == tmux.height - 4  # title, summary, status and column header, then rows
    tmux.cmd("resize-window", "-t", "t", "-x", "60", "-y", "12")
    s = tmux.wait_screen(lambda s: len(s.splitlines()) <= 12 and "label00" in s and len(rows_on(s)) == 8,
                         "a redraw at 60x12")
    assert all(len(ln.rstrip()) <= 60 for ln in s.splitlines())
    tmux.cmd("send-keys", "-t", "t", "q")

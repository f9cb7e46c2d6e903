"""Schemathesis against the running daemon's own OpenAPI schema.

A lab and `dropwatch run` on it (tests/e2e/helpers.py, as the other e2e
tests do); then every operation in /openapi.json gets schema-driven
requests, both valid ones (positive) and ones that break the schema
(negative). Invariants: no 5xx, every response conforms to the schema
(body and content type), the daemon stays up and healthy, and its log has
no traceback.

Size: DROPWATCH_API_FUZZ_EXAMPLES (default 150) positive and two thirds as
many negative examples per operation (about 1500 requests), 30-40 s in
all including the lab.
The test prints how many requests it sent.

Found (and fixed): the 400 answers for bad query values were not
declared in the schema (test_undocumented_status_codes).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dropwatch.lab import Lab
from tests.e2e.helpers import lab_daemon, RunningDaemon

pytestmark = pytest.mark.e2e

schemathesis = pytest.importorskip("schemathesis")  # in [project.optional-dependencies].test

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = int(os.environ.get("DROPWATCH_API_FUZZ_EXAMPLES", "150"))
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance, response_headers_conformance]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, RunningDaemon]]:
    with lab_daemon(tmp_path_factory.mktemp("api-schema")) as running_lab:
        yield running_lab


def _operations(d: RunningDaemon) -> list[Any]:
    schema = schemathesis.openapi.from_url(d.url + "/openapi.json")
    ops = [r.ok() for r in schema.get_all_operations()]
    assert ops, "the schema lists no operation"
    return ops


def _assert_alive(d: RunningDaemon) -> None:
    assert d.proc.poll() is None, f"daemon exited: {d.log_path.read_text()[-2000:]}"
    r = d.get("/healthz")
    assert r.status_code == 200, r.text


def _fuzz(d: RunningDaemon, op: Any, mode: GenerationMode, n: int, got: Counter[int],
          failures: dict[tuple[str, str], str], sent: list[int]) -> None:
    """n schema-generated requests to one operation; failures are collected
    (one per operation and kind, with a curl line to reproduce), not raised,
    so one run reports all of them."""

    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        sent[0] += 1
        try:
            resp = case.call(base_url=d.url, timeout=15)
        except Exception as exc:  # noqa: BLE001 - a hang or a dropped connection is a finding
            failures.setdefault((op.label, type(exc).__name__), f"{exc}\n{case.as_curl_command()}")
            return
        got[resp.status_code] += 1
        try:
            case.validate_response(resp, checks=CHECKS)
        except BaseException as exc:  # noqa: BLE001 - schemathesis raises a FailureGroup
            kinds = ",".join(sorted({type(x).__name__ for x in getattr(exc, "exceptions", [exc])}))
            failures.setdefault((op.label, kinds), str(exc)[:3000])

    run()


def test_every_operation_conforms(running: tuple[Lab, RunningDaemon], capsys: pytest.CaptureFixture[str]) -> None:
    lb, d = running
    # Some traffic first, so the queries have history and samples to return.
    from dropwatch.lab import RX_V4, TX_EYEBALL_V4, TX_ORIGIN_V4
    lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 20)
    lb.send_udp(TX_ORIGIN_V4, RX_V4["customerY"], 9999, 10)
    d.wait_for(lambda: d.get("/drops", group_by="").json()["total"] >= 30, "the first drops")

    ops = _operations(d)
    labels = {op.label for op in ops}
    for must in ("GET /drops", "GET /drops/timeseries", "GET /labels", "PUT /labels", "GET /healthz",
                 "GET /reasons"):
        assert must in labels, f"{must} missing from the schema: {sorted(labels)}"
    status: dict[str, Counter[int]] = {}
    failures: dict[tuple[str, str], str] = {}
    sent = [0]
    t0 = time.monotonic()
    for op in ops:
        got = status.setdefault(op.label, Counter())
        for mode, n in ((GenerationMode.POSITIVE, EXAMPLES), (GenerationMode.NEGATIVE, max(1, EXAMPLES * 2 // 3))):
            try:
                _fuzz(d, op, mode, n, got, failures, sent)
            except Unsatisfiable:
                # No parameter can be made invalid (e.g. GET /healthz, GET /reasons).
                assert mode == GenerationMode.NEGATIVE, op.label
    elapsed = time.monotonic() - t0
    report = "\n\n".join(f"== {k[0]}: {k[1]}\n{v}" for k, v in failures.items())
    assert not failures, f"{len(failures)} distinct failures:\n{report}"
    for label, codes in status.items():
        assert codes, f"{label}: no response at all"
        assert not [c for c in codes if c >= 500], (label, codes)
        assert any(200 <= c < 300 for c in codes), f"{label}: never answered 2xx: {dict(codes)}"
    _assert_alive(d)
    log = d.log_path.read_text()
    assert "Traceback" not in log, log[-3000:]
    with capsys.disabled():
        print(f"\nAPI schema fuzz: {sent[0]} requests over {len(ops)} operations in {elapsed:.1f}s; "
              + "; ".join(f"{k} {dict(v)}" for k, v in status.items()))


# Requests the daemon answers 400 to, by design (a message naming the bad
# parameter); the schema should say so.
BAD_REQUESTS = [
    ("GET", "/drops", {"since": "yesterday"}),
    ("GET", "/drops/timeseries", {"step": "fast"}),
    ("GET", "/labels", {"since": "soon"}),
    ("GET", "/drops/samples", {"side": "left"}),
    ("GET", "/drops/samples.pcap", {"reason": "NOT_A_REASON"}),
]


@pytest.mark.parametrize(("method", "path", "params"), BAD_REQUESTS, ids=[f"{m} {p}" for m, p, _ in BAD_REQUESTS])
def test_undocumented_status_codes(running: tuple[Lab, RunningDaemon], method: str, path: str,
                                   params: dict[str, str]) -> None:
    _, d = running
    op = next(o for o in _operations(d) if o.label == f"{method} {path}")
    case = op.Case(query=params)
    resp = case.call(base_url=d.url, timeout=15)
    assert resp.status_code == 400, resp.text  # the daemon's documented behaviour (README)
    case.validate_response(resp, checks=[status_code_conformance])


@pytest.mark.parametrize(("what", "body"), [
    ("deeply nested", b'{"rules": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("5000-digit integer", b'{"rules": [{"label": "a", "dport": [' + b"9" * 5000 + b"]}]}"),
    ("not JSON", b"\xff\xfe{"),
    ("a list", b"[1, 2, 3]"),
    ("1 MB label", b'{"rules": [{"label": "' + b"x" * (1 << 20) + b'"}]}'),
])
def test_hostile_put_bodies(running: tuple[Lab, RunningDaemon], what: str, body: bytes) -> None:
    """Bodies schemathesis does not generate: refused with a 4xx, the old rules stay."""
    _, d = running
    before = d.get("/labels").json()["rules"]
    r = httpx.put(d.url + "/labels", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert 400 <= r.status_code < 500, (what, r.status_code, r.text[:500])
    assert d.get("/labels").json()["rules"] == before
    _assert_alive(d)


def test_log_has_no_traceback(running: tuple[Lab, RunningDaemon]) -> None:
    _, d = running
    _assert_alive(d)
    log = Path(d.log_path).read_text()
    assert "Traceback" not in log, log[-3000:]

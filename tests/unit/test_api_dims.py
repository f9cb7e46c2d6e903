"""Spec for the pop and source dimensions of the HTTP API (dropwatch.api),
against a real history store and a daemon without a kernel: filters, group_by,
the JSON shapes (extended, never renamed) and the OpenAPI schema."""

from __future__ import annotations

import types
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dropwatch.api import create_app
from dropwatch.rules import parse_rules
from dropwatch.samples import DropSample, SampleBuffer
from dropwatch.store import DropDelta, PacketDelta, Store, StoreError

pytestmark = pytest.mark.unit

REASONS = ["NO_SOCKET", "NETFILTER_DROP"]
RULES = {"rules": [{"label": "customerX", "dst": ["10.10.1.0/24"]}],
         "pops": [{"name": "ams01", "src": ["192.0.2.0/26"]}]}


def fake_daemon(store: Store, samples: SampleBuffer) -> types.SimpleNamespace:
    reasons = types.SimpleNamespace(value=lambda n: REASONS.index(n) if n in REASONS else None,
                                    name=lambda v: REASONS[v], names=lambda: REASONS)
    applied: list[Any] = []

    def replace_rules(rules: Any) -> Any:
        store.label_ids(rules.labels())
        store.pop_ids(rules.pop_names())  # what Daemon._compile does
        applied.append(rules)
        return rules

    return types.SimpleNamespace(
        store=store, reasons=reasons, rules=parse_rules(RULES), samples=samples, replace_rules=replace_rules,
        applied=applied, cfg=types.SimpleNamespace(token=None, public_reads=False, sample_rate=10,
                                                   metrics_max_labels=None),
        collector=types.SimpleNamespace(totals=types.SimpleNamespace(stats={})))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "history.db") as s:
        now = datetime.now(timezone.utc) - timedelta(seconds=30)
        s.record(now, [
            DropDelta("customerX", "eyeball", "NO_SOCKET", "udp_rcv", "eth1", "ams01", 10, "metadata"),
            DropDelta("customerX", "eyeball", "NO_SOCKET", "udp_rcv", "eth1", "ams01", 4, "flow"),
            DropDelta("customerX", "eyeball", "NETFILTER_DROP", "nft", "eth1", "none", 3, "metadata"),
            DropDelta("unlabeled", "unknown", "NO_SOCKET", "udp_rcv", "eth1", "unknown", 2, "none"),
        ], [PacketDelta("customerX", "eyeball", "", "ams01", 140, 14000),
            PacketDelta("customerX", "eyeball", "", "none", 30, 3000)])
        yield s


@pytest.fixture
def samples() -> SampleBuffer:
    buf = SampleBuffer()
    now = datetime.now(timezone.utc)
    for pop, source in (("ams01", "flow"), ("none", "metadata")):
        buf.add(DropSample(now, "customerX", "eyeball", "NO_SOCKET", "udp_rcv", "eth1", 1, 60, b"", True,
                           "other", "", None, None, None, None, pop, source))
    return buf


@pytest.fixture
def client(store: Store, samples: SampleBuffer) -> Iterator[TestClient]:
    d = fake_daemon(store, samples)
    with TestClient(create_app(d, manage_lifecycle=False),  # type: ignore[arg-type]
                    client=("127.0.0.1", 40000)) as c:
        c.daemon = d  # type: ignore[attr-defined]
        yield c


def groups(c: TestClient, **params: str) -> list[dict[str, Any]]:
    r = c.get("/drops", params=params)
    assert r.status_code == 200, r.text
    return r.json()["groups"]


def test_default_drops_answer_is_unchanged(client: TestClient) -> None:
    """Existing clients: same default grouping and keys, the new dimensions only when asked for."""
    body = client.get("/drops").json()
    assert set(body) == {"since", "until", "total", "groups"}
    assert body["total"] == 19
    assert all(set(g) == {"label", "side", "reason", "count"} for g in body["groups"])


def test_filter_by_pop(client: TestClient) -> None:
    assert client.get("/drops", params={"pop": "ams01"}).json()["total"] == 14
    assert client.get("/drops", params={"pop": "none,unknown"}).json()["total"] == 5
    assert client.get("/drops", params=[("pop", "ams01"), ("pop", "unknown")]).json()["total"] == 16
    assert client.get("/drops", params={"pop": "sjc02"}).json()["total"] == 0


def test_group_by_pop_and_source(client: TestClient) -> None:
    assert groups(client, group_by="pop") == [{"pop": "ams01", "count": 14}, {"pop": "none", "count": 3},
                                              {"pop": "unknown", "count": 2}]
    assert groups(client, group_by="source") == [{"source": "metadata", "count": 13}, {"source": "flow", "count": 4},
                                                 {"source": "none", "count": 2}]
    assert groups(client, group_by="label,pop,source", pop="ams01") == [
        {"label": "customerX", "pop": "ams01", "source": "metadata", "count": 10},
        {"label": "customerX", "pop": "ams01", "source": "flow", "count": 4}]
    assert groups(client, group_by="pop", source="flow") == [{"pop": "ams01", "count": 4}]


def test_timeseries_filters_and_groups_the_same_way(client: TestClient) -> None:
    r = client.get("/drops/timeseries", params={"group_by": "source", "pop": "ams01", "step": "10s",
                                                "since": "-5m"}).json()
    assert {s["group"]["source"]: sum(s["counts"]) for s in r["series"]} == {"metadata": 10, "flow": 4}
    r = client.get("/drops/timeseries", params={"group_by": "pop", "source": "none", "since": "-5m"}).json()
    assert [(s["group"], sum(s["counts"])) for s in r["series"]] == [({"pop": "unknown"}, 2)]


@pytest.mark.parametrize("path", ["/drops", "/drops/timeseries", "/drops/samples", "/drops/samples.pcap"])
@pytest.mark.parametrize("params, says", [
    ({"source": "corrupt"}, "unknown source 'corrupt': one of metadata, flow, none"),
    ({"pop": "ams 01"}, "invalid pop 'ams 01'"),
])
def test_bad_pop_or_source_is_a_400_naming_it(client: TestClient, path: str, params: dict[str, str],
                                              says: str) -> None:
    r = client.get(path, params=params)
    assert r.status_code == 400 and says in r.json()["detail"]


def test_bad_group_by_lists_the_new_keys(client: TestClient) -> None:
    r = client.get("/drops", params={"group_by": "popp"})
    assert r.status_code == 400
    assert "label, side, reason, location, iface, pop, source" in r.json()["detail"]


def test_labels_per_pop(client: TestClient) -> None:
    everywhere = {x["label"]: x for x in client.get("/labels").json()["labels"]}
    assert (everywhere["customerX"]["packets"], everywhere["customerX"]["drops"]) == (170, 17)
    ams = {x["label"]: x for x in client.get("/labels", params={"pop": "ams01"}).json()["labels"]}
    assert (ams["customerX"]["packets"], ams["customerX"]["drops"]) == (140, 14)
    assert ams["customerX"]["drop_ratio"] == pytest.approx(0.1)


def test_labels_show_the_pops_of_the_active_rules(client: TestClient) -> None:
    assert client.get("/labels").json()["rules"]["pops"] == [{"name": "ams01", "src": ["192.0.2.0/26"]}]


def test_samples_carry_and_filter_pop_and_source(client: TestClient) -> None:
    body = client.get("/drops/samples").json()
    assert [(s["pop"], s["source"]) for s in body["samples"]] == [("none", "metadata"), ("ams01", "flow")]
    body = client.get("/drops/samples", params={"pop": "ams01"}).json()
    assert [(s["pop"], s["source"]) for s in body["samples"]] == [("ams01", "flow")]
    body = client.get("/drops/samples", params={"source": "metadata"}).json()
    assert [s["pop"] for s in body["samples"]] == ["none"]
    pcap = client.get("/drops/samples.pcap", params={"source": "flow"}).content
    assert b"pop=ams01 source=flow" in pcap and b"source=metadata" not in pcap


def test_put_labels_with_pops_and_a_full_pop_id_space(client: TestClient, store: Store) -> None:
    body = {**RULES, "pops": [{"name": "ams01", "src": ["192.0.2.0/26"]},
                              {"name": "sjc02", "src": ["2001:db8:ff::/48"]}]}
    r = client.put("/labels", json=body)
    assert r.status_code == 200, r.text
    assert store.pop_ids(["ams01", "sjc02"]) == {"ams01": 1, "sjc02": 2}

    def full(rules: Any) -> Any:
        raise StoreError("history database x: PoP id space exhausted: 1 new PoP(s) need ids but only 0 of 4095 "
                         "remain")

    client.daemon.replace_rules = full  # type: ignore[attr-defined]
    r = client.put("/labels", json={**body, "pops": [*body["pops"], {"name": "fra03", "src": ["198.51.100.0/24"]}]})
    assert r.status_code == 422
    assert "PoP id space exhausted" in r.json()["detail"]["message"]
    assert "previous rules stay active" in r.json()["detail"]["message"]


def test_openapi_documents_pop_and_source_everywhere(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/drops", "/drops/timeseries", "/drops/samples", "/drops/samples.pcap"):
        params = {p["name"]: p for p in spec["paths"][path]["get"]["parameters"]}
        assert {"pop", "source"} <= set(params), path
        assert "400" in spec["paths"][path]["get"]["responses"], path
    params = {p["name"] for p in spec["paths"]["/labels"]["get"]["parameters"]}
    assert "pop" in params
    group_by = {p["name"]: p for p in spec["paths"]["/drops"]["get"]["parameters"]}["group_by"]
    assert "pop" in group_by["description"] and "source" in group_by["description"]

"""Spec for how the collector names what the kernel counted (dropwatch.collector):
PoP ids and attribution sources become the names the store, the API and
/metrics show. The kernel is a fake loader returning the loader's key shapes."""

from __future__ import annotations

import threading
import types
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from dropwatch import abi
from dropwatch.collector import Collector
from dropwatch.samples import DropSample, SampleBuffer, decode, to_pcapng
from dropwatch.store import Store

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 25, 1, 0, 0, tzinfo=UTC)
NO_SOCKET, NETFILTER_DROP = 2, 6
REASONS = {NO_SOCKET: "NO_SOCKET", NETFILTER_DROP: "NETFILTER_DROP"}
EYEBALL, ORIGIN = int(abi.Side.EYEBALL), int(abi.Side.ORIGIN)
LOC = 0xFFFF0001


def dkey(label_id: int, pop_id: int, source: abi.Source, *, side: int = EYEBALL, reason: int = NO_SOCKET,
         flags: int = 0) -> tuple[int, ...]:
    """A drop key as Loader.read_drops() returns it: (label_id, side, reason,
    location, ifindex, pop_id, source, netns_ino, flags)."""
    return (label_id, side, reason, LOC, 0, pop_id, int(source), 0, flags)


class FakeLoader:
    """The reader as the collector sees it: each key counted in its own slot
    (slots given in the order keys first appear), cumulative counts."""

    drop_entries = 1024

    def __init__(self) -> None:
        self.drops: dict[tuple[int, ...], int] = {}
        self.packets: dict[tuple[int, int, int], tuple[int, int]] = {}
        self._slot_of: dict[tuple[int, ...], int] = {}

    def read_drop_slots(self) -> np.ndarray:
        for k in self.drops:
            self._slot_of.setdefault(k, len(self._slot_of))
        out = np.zeros(len(self._slot_of), np.uint64)
        for k, slot in self._slot_of.items():
            out[slot] = self.drops.get(k, 0)
        return out

    def drop_slot_keys(self, slots: list[int]) -> list[tuple[int, ...]]:
        by_slot = {slot: k for k, slot in self._slot_of.items()}
        return [by_slot[s] for s in slots]

    def read_packets(self, max_label_id: int) -> dict[tuple[int, int, int], tuple[int, int]]:
        return dict(self.packets)

    def read_stats(self) -> dict[abi.Stat, int]:
        return {}

    def read_meta_failures(self) -> dict[int, int]:
        return {}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "history.db") as s:
        assert s.label_ids(["customerX", "customerY"]) == {"customerX": 1, "customerY": 2}
        assert s.pop_ids(["ams01", "sjc02"]) == {"ams01": 1, "sjc02": 2}
        yield s


@pytest.fixture
def kernel() -> FakeLoader:
    return FakeLoader()


@pytest.fixture
def collector(kernel: FakeLoader, store: Store) -> Collector:
    reasons = types.SimpleNamespace(name=lambda v: REASONS.get(v, f"UNKNOWN_{v}"))
    kallsyms = types.SimpleNamespace(symbolize=lambda a: f"sym+{a:#x}")
    c = Collector(kernel, store, reasons, kallsyms, clock=lambda: NOW)  # type: ignore[arg-type]
    c.refresh_label_names()
    return c


def drops_by(store: Store, *keys: str) -> dict[tuple[str, ...], int]:
    res = store.query_drops(datetime(2026, 11, 25, tzinfo=UTC), datetime(2026, 11, 26, tzinfo=UTC),
                            group_by=list(keys), now=NOW)
    return {tuple(str(g[k]) for k in keys): int(g["count"]) for g in res.groups}


def test_pop_ids_are_named_none_unknown_registry_or_pop_id(kernel: FakeLoader, collector: Collector,
                                                           store: Store) -> None:
    kernel.drops = {
        dkey(1, abi.DW_POP_NONE, abi.Source.META): 5,      # not tunnelled
        dkey(1, 1, abi.Source.META): 7,                    # from ams01
        dkey(2, 2, abi.Source.META): 3,                    # from sjc02
        dkey(2, abi.DW_POP_UNKNOWN, abi.Source.META): 2,   # tunnelled, outer source in no PoP
        dkey(1, 77, abi.Source.META): 1,                   # an id the registry never gave out
    }
    collector.poll()
    assert drops_by(store, "pop") == {("none",): 5, ("ams01",): 7, ("sjc02",): 3, ("unknown",): 2, ("pop77",): 1}
    assert collector.totals.drops[("customerX", "eyeball", "NO_SOCKET", "ams01", "metadata")] == 7
    assert collector.totals.drops[("customerX", "eyeball", "NO_SOCKET", "pop77", "metadata")] == 1


def test_a_pop_added_by_a_reload_is_named_without_a_restart(kernel: FakeLoader, collector: Collector,
                                                            store: Store) -> None:
    assert store.pop_ids(["fra03"]) == {"fra03": 3}  # the daemon's reload path
    kernel.drops = {dkey(1, 3, abi.Source.META): 4}
    collector.poll()
    assert drops_by(store, "pop") == {("fra03",): 4}


def test_sources_metadata_flow_and_none(kernel: FakeLoader, collector: Collector, store: Store) -> None:
    """META and FLOW attribute the drop to its label; NONE and CORRUPT leave
    it unlabeled (source none), whatever label id the key carries."""
    kernel.drops = {
        dkey(1, 1, abi.Source.META): 10,
        dkey(1, 1, abi.Source.FLOW, reason=NETFILTER_DROP): 4,
        dkey(0, 0, abi.Source.NONE, side=0): 6,
        dkey(2, 2, abi.Source.CORRUPT): 3,
    }
    collector.poll()
    assert drops_by(store, "label", "pop", "source") == {
        ("customerX", "ams01", "metadata"): 10,
        ("customerX", "ams01", "flow"): 4,
        ("unlabeled", "none", "none"): 6,
        ("unlabeled", "sjc02", "none"): 3,
    }
    assert collector.totals.corrupt_records == 3


def test_flow_attribution_after_corrupt_metadata_counts_as_corrupt_too(kernel: FakeLoader, collector: Collector,
                                                                       store: Store) -> None:
    """A record that failed validation, recovered by flow: labeled via flow, and
    the corrupt record is still counted (flags & DW_DK_META_CORRUPT)."""
    kernel.drops = {dkey(2, 2, abi.Source.FLOW, flags=abi.DW_DK_META_CORRUPT): 5}
    collector.poll()
    assert drops_by(store, "label", "source") == {("customerY", "flow"): 5}
    assert collector.totals.corrupt_records == 5


def test_keys_differing_only_in_flags_add_up_in_one_row(kernel: FakeLoader, collector: Collector,
                                                        store: Store) -> None:
    kernel.drops = {dkey(1, 0, abi.Source.FLOW): 2, dkey(1, 0, abi.Source.FLOW, flags=abi.DW_DK_META_CORRUPT): 3}
    collector.poll()
    assert drops_by(store, "label", "source") == {("customerX", "flow"): 5}
    assert collector.totals.drops == {("customerX", "eyeball", "NO_SOCKET", "none", "flow"): 5}


def test_deltas_per_pop_and_source_across_polls(kernel: FakeLoader, collector: Collector, store: Store) -> None:
    kernel.drops = {dkey(1, 1, abi.Source.META): 10, dkey(1, 1, abi.Source.FLOW): 1}
    collector.poll()
    kernel.drops = {dkey(1, 1, abi.Source.META): 15, dkey(1, 1, abi.Source.FLOW): 4}
    collector.poll()
    assert drops_by(store, "source") == {("metadata",): 15, ("flow",): 4}


def test_packets_and_bytes_per_pop(kernel: FakeLoader, collector: Collector, store: Store) -> None:
    kernel.packets = {(1, EYEBALL, 0): (100, 10_000), (1, EYEBALL, 1): (30, 4_500),
                      (2, ORIGIN, abi.DW_POP_UNKNOWN): (8, 800)}
    collector.poll()
    kernel.packets = {(1, EYEBALL, 0): (150, 15_000), (1, EYEBALL, 1): (30, 4_500),
                      (2, ORIGIN, abi.DW_POP_UNKNOWN): (9, 900)}
    collector.poll()
    rows = store.query_packets(datetime(2026, 11, 25, tzinfo=UTC), datetime(2026, 11, 26, tzinfo=UTC),
                               group_by=["label", "pop"], now=NOW)
    assert rows == [{"label": "customerX", "pop": "none", "packets": 150, "bytes": 15_000},
                    {"label": "customerX", "pop": "ams01", "packets": 30, "bytes": 4_500},
                    {"label": "customerY", "pop": "unknown", "packets": 9, "bytes": 900}]
    assert collector.totals.packets == {("customerX", "eyeball", "none"): 150, ("customerX", "eyeball", "ams01"): 30,
                                        ("customerY", "origin", "unknown"): 9}
    assert collector.totals.bytes[("customerX", "eyeball", "ams01")] == 4_500


def sample(label_id: int, pop_id: int, source: abi.Source) -> abi.Sample:
    s = abi.Sample(label_id=label_id, pop_id=pop_id, source=int(source), side=EYEBALL, reason=NO_SOCKET,
                   location=LOC, pkt_len=60, captured=0)
    return s


def test_samples_carry_pop_and_source_named_as_the_counters(collector: Collector) -> None:
    names = collector.sample_names(sample(1, 1, abi.Source.FLOW))
    assert names == ("customerX", "eyeball", "NO_SOCKET", f"sym+{LOC:#x}", "-", "ams01", "flow")
    label, *_, pop, source = collector.sample_names(sample(2, abi.DW_POP_UNKNOWN, abi.Source.CORRUPT))
    assert (label, pop, source) == ("unlabeled", "unknown", "none")
    s = decode(sample(2, 2, abi.Source.META), collector.sample_names)
    assert (s.label, s.pop, s.source) == ("customerY", "sjc02", "metadata")
    assert s.to_json()["pop"] == "sjc02" and s.to_json()["source"] == "metadata"
    buf = SampleBuffer()
    buf.add(s)
    buf.add(decode(sample(1, 0, abi.Source.FLOW), collector.sample_names))
    assert [x.label for x in buf.query(pop=["sjc02"])] == ["customerY"]
    assert [x.label for x in buf.query(source=["flow"])] == ["customerX"]
    assert b"pop=sjc02 source=metadata" in to_pcapng([s])


def test_sample_json_keeps_every_old_field() -> None:
    s = DropSample(NOW, "a", "eyeball", "R", "L", "eth0", 1, 3, b"abc", True, "other", "", None, None, None, None)
    assert set(s.to_json()) == {"time", "label", "side", "reason", "location", "iface", "netns", "len", "captured",
                                "l3", "proto", "src", "dst", "sport", "dport", "pop", "source"}
    assert (s.pop, s.source) == ("none", "none")


# ------------------------------------------------------------ the writer thread


class GatedStore:
    """A Store whose record_rows waits for a gate and can be made to fail."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.gate = threading.Event()
        self.fail: Exception | None = None
        self.calls = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def record_rows(self, ts: datetime, drops: object, packets: object) -> None:
        assert self.gate.wait(10)
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        self.store.record_rows(ts, drops, packets)  # type: ignore[arg-type]


def async_collector(kernel: FakeLoader, store: object, max_queued: int) -> Collector:
    reasons = types.SimpleNamespace(name=lambda v: REASONS.get(v, f"UNKNOWN_{v}"))
    kallsyms = types.SimpleNamespace(symbolize=lambda a: f"sym+{a:#x}")
    c = Collector(kernel, store, reasons, kallsyms, clock=lambda: NOW,  # type: ignore[arg-type]
                  async_writes=True, max_queued=max_queued)
    c.refresh_label_names()
    return c


def test_a_writer_that_falls_behind_gets_merged_batches_and_close_writes_them(kernel: FakeLoader,
                                                                               store: Store) -> None:
    gated = GatedStore(store)
    c = async_collector(kernel, gated, max_queued=1)
    for n in range(1, 8):  # the writer blocks on the first batch; the rest pile up and merge
        kernel.drops = {dkey(1, 0, abi.Source.META): 10 * n, dkey(2, 0, abi.Source.META, side=ORIGIN): n}
        c.poll()
    assert c.merged_batches >= 5
    # /metrics totals have every poll at once, whatever the writer did.
    assert sum(c.totals.drops.values()) == 77
    assert drops_by(store, "label") == {}
    gated.gate.set()
    assert c.close(10)
    assert drops_by(store, "label") == {("customerX",): 70, ("customerY",): 7}
    assert gated.calls <= 3


def test_a_failing_store_keeps_counts_pending_in_the_writer_until_it_works(kernel: FakeLoader,
                                                                            store: Store) -> None:
    from dropwatch.store import StoreError
    gated = GatedStore(store)
    gated.gate.set()
    gated.fail = StoreError("disk full")
    c = async_collector(kernel, gated, max_queued=4)
    kernel.drops = {dkey(1, 0, abi.Source.META): 5}
    c.poll()
    assert c.flush(10)
    assert c.store_error is not None and "disk full" in c.store_error
    kernel.drops = {dkey(1, 0, abi.Source.META): 9}
    c.poll()
    assert c.flush(10)
    assert drops_by(store, "label") == {}
    gated.fail = None
    c.poll()  # nothing new: still retries what is pending
    assert c.close(10)
    assert c.store_error is None
    assert drops_by(store, "label") == {("customerX",): 9}

"""Reading the drop map incrementally: Loader.read_drops_changed() returns a
superset of what changed since its previous call (values, inserted keys,
with the stream shifted by inserts and deletes), and the Collector built on
it writes exact deltas to the store through changes, inserts, map-wide
rewrites, evictions and a failed poll.

The reader object is loaded but not attached: only this test writes the map.
"""

from __future__ import annotations

import ctypes
import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dropwatch import abi
from dropwatch.collector import Collector
from dropwatch.kernel import DropReasons, Kallsyms
from dropwatch.loader import DropKeyT, Loader
from dropwatch.store import Store

pytestmark = pytest.mark.bpf


@pytest.fixture
def ld() -> Iterator[Loader]:
    with Loader(drop_entries=16384) as loader:
        loader.load()
        loader._load_reader("tp_btf")
        yield loader


def put(ld: Loader, key: DropKeyT, per_cpu: list[int]) -> None:
    label_id, side, reason, location, ifindex, pop_id, source, netns_ino, flags = key
    k = abi.DropKey(location=location, label_id=label_id, reason=reason, ifindex=ifindex, netns_ino=netns_ino,
                    pop_id=pop_id, side=side, source=source, flags=flags)
    vals = (ctypes.c_uint64 * ld.ncpus)(*per_cpu)
    ld.lib.map_update(ld._rmap("dw_drops"), k, vals)


def key(i: int, label_id: int = 0) -> DropKeyT:
    return (label_id or 1 + i % 50, 1 + i % 2, 2 + i % 5, 0xFFFFFFFF81000000 + 8 * i, 1, 0, abi.Source.META,
            0, 0)


def test_read_drops_changed_is_a_superset_of_changes(ld: Loader) -> None:
    rnd = random.Random(3)
    truth: dict[DropKeyT, list[int]] = {}
    for i in range(3000):
        truth[key(i)] = [rnd.randrange(1, 1000) for _ in range(ld.ncpus)]
        put(ld, key(i), truth[key(i)])
    mirror: dict[DropKeyT, int] = {}

    def sync(max_decoded: int | None = None) -> dict[DropKeyT, int]:
        changed, n = ld.read_drops_changed()
        mirror.update(changed)
        for k in [k for k in mirror if k not in truth]:
            del mirror[k]
        assert n == len(truth)
        assert mirror == {k: sum(v) for k, v in truth.items()} == ld.read_drops()
        if max_decoded is not None:
            assert len(changed) <= max_decoded
        return changed

    assert len(sync()) == 3000
    assert sync() == {}  # nothing changed: nothing decoded
    for i in rnd.sample(range(3000), 10):  # counts grow
        truth[key(i)][0] += 5
        put(ld, key(i), truth[key(i)])
    sync(max_decoded=10 * 64)
    for i in range(3000, 3020):  # new keys shift the rest of the stream
        truth[key(i)] = [1] * ld.ncpus
        put(ld, key(i), truth[key(i)])
    sync(max_decoded=20 * 64 * 3)
    for i in rnd.sample(range(3020), 15):  # deleted keys shift it back
        assert ld.evict_drop(key(i)) == (sum(truth.pop(key(i))), 0)  # (final, left in the reader caches)
    sync(max_decoded=15 * 64 * 3)
    full, n = ld.read_drops_changed(full=True)
    assert n == len(full) == len(truth)


def test_collector_deltas_exact(ld: Loader, tmp_path: Path) -> None:
    """Store totals equal the counters' growth through every kind of change."""
    rnd = random.Random(7)
    with Store(tmp_path / "h.db") as st:
        ids = st.label_ids([f"l{i}" for i in range(50)])
        lids = sorted(ids.values())
        col = Collector(ld, st, DropReasons.load(), Kallsyms.load())
        col.refresh_label_names()
        col.evict_at, col.evict_idle_polls = 1000, 2
        truth: dict[DropKeyT, int] = {}
        grown = 0

        def in_map(k: DropKeyT) -> bool:
            label_id, side, reason, location, ifindex, pop_id, source, netns_ino, flags = k
            dk = abi.DropKey(location=location, label_id=label_id, reason=reason, ifindex=ifindex,
                             netns_ino=netns_ino, pop_id=pop_id, side=side, source=source, flags=flags)
            return ld.lib.map_lookup(ld._rmap("dw_drops"), dk, (ctypes.c_uint64 * ld.ncpus)())

        def bump(k: DropKeyT, n: int) -> None:
            nonlocal grown
            if not in_map(k):  # never there, or evicted: the kernel starts it from zero
                truth[k] = 0
            truth[k] = truth.get(k, 0) + n
            grown += n
            put(ld, k, [truth[k]] + [0] * (ld.ncpus - 1))

        def total() -> int:
            now = datetime.now(timezone.utc)
            return st.query_drops(now - timedelta(hours=1), now + timedelta(minutes=1)).total

        keys = [key(i, lids[i % 50]) for i in range(1500)]
        for k in keys:
            bump(k, rnd.randrange(1, 100))
        col.poll()
        assert total() == grown
        for step in range(8):
            for k in rnd.sample(keys[:1200], 40):  # a few grow; keys[1200:] go idle
                bump(k, rnd.randrange(1, 10))
            if step == 2:
                for k in keys[:1200]:  # everything grows
                    bump(k, 1)
            if step == 4:
                for i in range(1500, 1530):  # new keys
                    keys.append(key(i, lids[i % 50]))
                    bump(keys[-1], 3)
            if step == 5:  # a poll fails after reading the map: nothing may be lost
                col.evict_at = 10**9  # no eviction, no new key: only the lost read to recover from
                col.poll()
                for k in [k for k in keys if in_map(k)][:20]:
                    bump(k, 11)
                orig = col._drop_row
                col._rows.clear()

                def boom(k: DropKeyT) -> tuple[tuple[str, ...], bool]:
                    raise RuntimeError("naming failed")
                col._drop_row = boom  # type: ignore[method-assign,assignment]
                with pytest.raises(RuntimeError):
                    col.poll()
                col._drop_row = orig  # type: ignore[method-assign]
                col.poll()  # after a failed poll: everything read again
                assert total() == grown
                col.evict_at = 1000
            col.poll()
            assert total() == grown, f"step {step}"
        assert col.evicted > 0  # the idle keys went, their counts stayed
        # An evicted key created again by the kernel starts from zero.
        gone = next(k for k in keys[1200:] if not in_map(k))
        bump(gone, 4)
        col.poll()
        assert total() == grown


def test_read_packets_sums_cpus(ld: Loader) -> None:
    """Both packet maps: per-CPU (packets, bytes) summed, zero entries left out."""
    stride = ctypes.sizeof(abi.PktVal) // 8
    want = {}
    for idx, (p, b) in {1 * abi.DW_SIDE_COUNT + 2: (3, 300), 7 * abi.DW_SIDE_COUNT + 1: (5, 70)}.items():
        vals = (ctypes.c_uint64 * (ld.ncpus * stride))(*[x for c in range(ld.ncpus) for x in (p + c, b + c)])
        ld.lib.map_update(ld._lmap("dw_pkt_counts"), ctypes.c_uint32(idx), vals)
        want[(idx // abi.DW_SIDE_COUNT, idx % abi.DW_SIDE_COUNT, abi.DW_POP_NONE)] = (
            sum(p + c for c in range(ld.ncpus)), sum(b + c for c in range(ld.ncpus)))
    k = abi.PopPktKey(label_id=9, pop_id=4, side=1)
    vals = (ctypes.c_uint64 * (ld.ncpus * stride))(*[x for c in range(ld.ncpus) for x in (2 * c + 1, 100)])
    ld.lib.map_update(ld._lmap("dw_pop_pkt_counts"), k, vals)
    want[(9, 1, 4)] = (sum(2 * c + 1 for c in range(ld.ncpus)), 100 * ld.ncpus)
    assert ld.read_packets(10) == want

"""Reading drop counts by slot (see "Drop counting" in bpf/dropwatch.h):
Loader.read_drop_slots() sums every CPU's cell per slot, drop_slot_keys()
names the slots, and the Collector built on them writes exact deltas to the
store through growth, new keys, evictions (retire, grace, recycle, reuse of
a slot by another key, increments after retirement) and a failed poll.

The reader object is loaded but not attached. `Kernel` does to the maps what
drop_reader.bpf.c's add_drop() does, step for step, so the test can make
thousands of distinct keys.
"""

from __future__ import annotations

import ctypes
import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from dropwatch import abi, collector as collector_mod, loader as loader_mod
from dropwatch.collector import Collector
from dropwatch.kernel import DropReasons, Kallsyms
from dropwatch.loader import DropKeyT, Loader, _c_drop_key
from dropwatch.store import Store

pytestmark = pytest.mark.bpf


@pytest.fixture
def ld() -> Iterator[Loader]:
    with Loader(drop_entries=4096) as loader:
        loader.load()
        loader._load_reader("tp_btf")
        yield loader


class Kernel:
    """add_drop() from user space: the key's slot from dw_drop_slots, or a
    fresh slot, or one from dw_free_slots; the key named in dw_slot_keys
    before it is published; the count added to one CPU's cell."""

    def __init__(self, ld: Loader) -> None:
        self.ld = ld
        self.full = 0

    def slot_of(self, key: DropKeyT) -> int | None:
        v = ctypes.c_uint32()
        return v.value if self.ld.lib.map_lookup(self.ld._rmap("dw_drop_slots"), _c_drop_key(key), v) else None

    def add(self, key: DropKeyT, n: int, cpu: int = 0) -> int | None:
        ld = self.ld
        slot = self.slot_of(key)
        if slot is None:
            ctl = ld._drop_ctl
            assert ctl is not None
            if ctl.next_fresh < ld.drop_entries:
                slot = ctl.next_fresh
                ctl.next_fresh += 1
            else:
                v = ctypes.c_uint32()
                if ld.lib.lib.bpf_map_lookup_and_delete_elem(ld._rmap("dw_free_slots"), None, ctypes.byref(v)):
                    self.full += n
                    return None
                slot = v.value
            ck = bytes(_c_drop_key(key))
            ld._drop_mms["dw_slot_keys"][slot * len(ck):(slot + 1) * len(ck)] = ck
            ld.lib.map_update(ld._rmap("dw_drop_slots"), _c_drop_key(key), ctypes.c_uint32(slot))
        self.bump_slot(slot, n, cpu)
        return slot

    def bump_slot(self, slot: int, n: int, cpu: int = 0) -> None:
        """A program that found the slot earlier (and is still running)."""
        def add(view: np.ndarray) -> None:
            view[cpu % self.ld.ncpus, slot] += n
        self.ld._with_drop_counts(add)


def key(i: int, label_id: int = 0) -> DropKeyT:
    return (label_id or 1 + i % 50, 1 + i % 2, 2 + i % 5, 0xFFFFFFFF81000000 + 8 * i, 1, 0, abi.Source.META,
            0, 0)


def test_slots_sum_cpus_and_name_their_keys(ld: Loader) -> None:
    rnd = random.Random(3)
    keys = [key(i) for i in range(3000)]
    counts = np.array([[rnd.randrange(0, 1000) for _ in keys] for _ in range(ld.ncpus)], dtype=np.uint64)
    counts[:, 5] = 0  # a slot handed out and given back: no count, not a drop
    ld.write_drop_slots(keys, counts)
    assert ld.drop_slots_used() == 3000
    assert ld.read_drop_slots().tolist() == counts.sum(axis=0).tolist()
    assert ld.drop_slot_keys([0, 2999, 17]) == [keys[0], keys[2999], keys[17]]
    want = {k: int(n) for k, n in zip(keys, counts.sum(axis=0), strict=True) if n}
    assert ld.read_drops() == want
    k = Kernel(ld)
    assert k.slot_of(keys[42]) == 42
    # Retired: out of the hash, the epoch moved (the reader's caches are stale).
    epoch = ld._drop_ctl.epoch  # type: ignore[union-attr]
    assert ld.retire_drop_keys([keys[42], keys[43]]) == 2
    assert k.slot_of(keys[42]) is None and ld._drop_ctl.epoch == epoch + 1  # type: ignore[union-attr]
    # Counts stay readable until recycled; recycling zeroes every CPU's cell.
    assert ld.read_drops()[keys[42]] == want[keys[42]]
    ld.recycle_drop_slots([42, 43])
    assert ld.read_drop_slots()[42] == ld.read_drop_slots()[43] == 0
    assert keys[42] not in ld.read_drops()


def test_a_full_map_hands_out_only_recycled_slots(ld: Loader) -> None:
    k = Kernel(ld)
    for i in range(ld.drop_entries):
        assert k.add(key(i), 1) == i
    assert k.add(key(10**6), 5) is None and k.full == 5  # the reader counts these in MAP_FULL
    ld.retire_drop_keys([key(7)])
    ld.recycle_drop_slots([7])
    assert k.add(key(10**6), 2) == 7
    assert ld.read_drops()[key(10**6)] == 2 and key(7) not in ld.read_drops()


def test_collector_deltas_exact(ld: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Store totals equal the counters' growth through every kind of change."""
    monkeypatch.setattr(collector_mod, "RETIRE_GRACE_S", 0.0)
    rnd = random.Random(7)
    kern = Kernel(ld)
    with Store(tmp_path / "h.db") as st:
        ids = st.label_ids([f"l{i}" for i in range(50)])
        lids = sorted(ids.values())
        col = Collector(ld, st, DropReasons.load(), Kallsyms.load())
        col.refresh_label_names()
        col.evict_at, col.evict_idle_polls = 1000, 2
        grown = 0
        by_label: dict[str, int] = {}
        names = {v: k for k, v in ids.items()}

        def bump(k: DropKeyT, n: int) -> None:
            nonlocal grown
            if kern.add(k, n, cpu=rnd.randrange(ld.ncpus)) is not None:
                grown += n
                by_label[names[k[0]]] = by_label.get(names[k[0]], 0) + n

        def total() -> int:
            now = datetime.now(timezone.utc)
            return st.query_drops(now - timedelta(hours=1), now + timedelta(minutes=1)).total

        def per_label() -> dict[str, int]:
            now = datetime.now(timezone.utc)
            res = st.query_drops(now - timedelta(hours=1), now + timedelta(minutes=1), group_by=["label"],
                                 limit=1000)
            return {str(g["label"]): int(g["count"]) for g in res.groups}

        keys = [key(i, lids[i % 50]) for i in range(1500)]
        for k in keys:
            bump(k, rnd.randrange(1, 100))
        col.poll()
        assert total() == grown and col.slots_in_use == 1500
        late: list[int] = []
        for step in range(10):
            for k in rnd.sample(keys[:1200], 40):  # a few grow; keys[1200:] go idle
                bump(k, rnd.randrange(1, 10))
            if step == 2:
                for k in keys[:1200]:  # everything grows
                    bump(k, 1)
            if step == 4:
                # Evicted keys exist by now; programs that found their old
                # slots before the delete still add to them.
                assert col.evicted > 0
                late = [s for s in np.flatnonzero(col._retired).tolist()[:10]]
                for s in late:
                    kern.bump_slot(s, 2)
                    grown += 2
                    lab = names[col._slot_keys[s][0]]  # type: ignore[index]
                    by_label[lab] = by_label.get(lab, 0) + 2
                for i in range(1500, 1530):  # new keys
                    keys.append(key(i, lids[i % 50]))
                    bump(keys[-1], 3)
                for k in keys[1200:1210]:  # evicted keys seen again: new slots
                    bump(k, 4)
            if step == 6:  # a poll fails after reading the slots: nothing may be lost
                col.evict_at = 10**9
                col.poll()
                for k in rnd.sample(keys[:1200], 20):
                    bump(k, 11)
                orig = col._drop_row
                col._slot_rows = [None] * len(col._slot_rows)

                def boom(k: DropKeyT) -> tuple[tuple[str, ...], bool]:
                    raise RuntimeError("naming failed")
                col._drop_row = boom  # type: ignore[method-assign,assignment]
                with pytest.raises(RuntimeError):
                    col.poll()
                col._drop_row = orig  # type: ignore[method-assign]
                col.poll()
                assert total() == grown
                col.evict_at = 1000
            col.poll()
            assert total() == grown, f"step {step}"
        assert late and col.evicted > 0
        # Recycled slots went back to the reader and count other keys now.
        ld._drop_ctl.next_fresh = ld.drop_entries  # type: ignore[union-attr]  # no fresh slot left
        reused = [kern.add(key(i, lids[0]), 6) for i in range(5000, 5010)]
        grown += 60
        by_label["l0"] += 60
        assert all(s is not None and s < 1500 for s in reused)
        col.poll()
        assert total() == grown
        assert per_label() == by_label  # each slot's count under the key it had then


def test_read_packets_sums_cpus(ld: Loader) -> None:
    """Both packet maps: per-CPU (packets, bytes) summed, zero entries left out.
    dw_pkt_counts holds one stripe of DW_PKT_CELLS cells per possible CPU;
    the last cell of the read range counts too."""
    stride = ctypes.sizeof(abi.PktVal) // 8
    want = {}
    for idx, (p, b) in {1 * abi.DW_SIDE_COUNT + 2: (3, 300), 7 * abi.DW_SIDE_COUNT + 1: (5, 70),
                        10 * abi.DW_SIDE_COUNT + 3: (1, 64)}.items():
        for c in range(ld.ncpus):
            ld.lib.map_update(ld._lmap("dw_pkt_counts"), ctypes.c_uint32(c * abi.DW_PKT_CELLS + idx),
                              abi.PktVal(packets=p + c, bytes=b + c))
        want[(idx // abi.DW_SIDE_COUNT, idx % abi.DW_SIDE_COUNT, abi.DW_POP_NONE)] = (
            sum(p + c for c in range(ld.ncpus)), sum(b + c for c in range(ld.ncpus)))
    # Past the range asked for (labels up to 10): not read.
    ld.lib.map_update(ld._lmap("dw_pkt_counts"), ctypes.c_uint32(11 * abi.DW_SIDE_COUNT), abi.PktVal(packets=9))
    k = abi.PopPktKey(label_id=9, pop_id=4, side=1)
    vals = (ctypes.c_uint64 * (ld.ncpus * stride))(*[x for c in range(ld.ncpus) for x in (2 * c + 1, 100)])
    ld.lib.map_update(ld._lmap("dw_pop_pkt_counts"), k, vals)
    want[(9, 1, 4)] = (sum(2 * c + 1 for c in range(ld.ncpus)), 100 * ld.ncpus)
    assert ld.read_packets(10) == want


def test_large_counts_are_mapped_per_access(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above _DROP_COUNTS_RESIDENT_MAX (many CPUs) the counts are mapped for
    each read or write only, and read the same."""
    monkeypatch.setattr(loader_mod, "_DROP_COUNTS_RESIDENT_MAX", 0)
    with Loader(drop_entries=2048) as ld:
        ld.load()
        ld._load_reader("tp_btf")
        assert "dw_drop_counts" not in ld._drop_mms
        keys = [key(i) for i in range(100)]
        counts = np.arange(100 * ld.ncpus, dtype=np.uint64).reshape(ld.ncpus, 100)
        ld.write_drop_slots(keys, counts)
        Kernel(ld).add(keys[3], 1000)
        ld.recycle_drop_slots([4])
        got = ld.read_drop_slots()
        assert got[3] == counts[:, 3].sum() + 1000 and got[4] == 0 and got[5] == counts[:, 5].sum()

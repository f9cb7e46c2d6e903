"""Drop-map housekeeping: idle entries are read-and-deleted when the map
fills, and no count is lost or doubled, including for a key that the
kernel creates again after it was evicted."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dropwatch.collector import Collector
from dropwatch.kernel import DropReasons, Kallsyms
from dropwatch.lab import LAB_RULES, RX_V4, TX_EYEBALL_V4, Lab, lab
from dropwatch.loader import Loader
from dropwatch.rules import compile_rules, parse_rules
from dropwatch.store import Store

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def one_cpu() -> Iterator[None]:
    """The tests steer the reader's per-CPU cache (a drop with another key
    flushes it): every packet must be processed on one CPU."""
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cpus)


class EvictionLab:
    """A lab, the labeler and reader, a store and a collector that evicts
    anything idle for 2 polls; counts as the store has them."""

    def __init__(self, lb: Lab, ld: Loader, st: Store) -> None:
        self.lb, self.ld, self.st = lb, ld, st
        ld.load()
        self.ids = st.label_ids(["customerX", "customerY"])
        ld.apply_rules(compile_rules(parse_rules(LAB_RULES), self.ids))
        ld.attach_reader()
        ld.attach_xdp(lb.rx_if, "generic", netns=lb.rx_ns)
        self.col = Collector(ld, st, DropReasons.load(), Kallsyms.load(), netns=lb.rx_ns)
        self.col.refresh_label_names()
        self.col.evict_at, self.col.evict_idle_polls = 1, 2

    def total(self) -> int:
        now = datetime.now(timezone.utc)
        return self.st.query_drops(now - timedelta(minutes=5), now + timedelta(minutes=1),
                                   filters={"label": ["customerX"], "reason": ["NO_SOCKET"],
                                            "iface": [self.lb.rx_if]}, group_by=[]).total

    def in_map(self) -> list[tuple[int, ...]]:
        """Our key in dw_drops itself (the reader's per-CPU cache aside)."""
        return [k for k in self.ld.read_drop_map() if k[0] == self.ids["customerX"] and k[4] != 0]

    def send(self, n: int, dst: str = RX_V4["customerX"]) -> None:
        s0 = self.lb.snmp()["Udp.NoPorts"]
        self.lb.send_udp(TX_EYEBALL_V4, dst, 5555, n)
        while self.lb.snmp()["Udp.NoPorts"] - s0 < n:
            time.sleep(0.01)
        time.sleep(0.05)


def test_evicted_entries_keep_exact_counts(tmp_path: Path) -> None:
    with lab() as lb, Loader() as ld, Store(tmp_path / "h.db") as st:
        e = EvictionLab(lb, ld, st)
        e.send(20)
        e.send(1, RX_V4["nolabel"])  # another key: flushes the reader's cache into dw_drops
        e.col.poll()
        assert e.total() == 20 and e.in_map()
        for _ in range(3):  # idle polls: the entry gets evicted
            e.col.poll()
        assert not e.in_map() and e.col.evicted >= 1
        assert e.total() == 20  # nothing lost, nothing doubled
        # The kernel creates the key again, from zero, and it grows past its
        # old value within one interval: still all new (45, not 20 + 5).
        e.send(25)
        e.col.poll()
        assert e.total() == 45
        e.send(5)
        e.send(1, RX_V4["nolabel"])
        e.col.poll()
        assert e.total() == 50 and e.in_map()


def test_evicted_while_counts_wait_in_the_reader_cache(tmp_path: Path) -> None:
    """The key's last drops still sit in a CPU's reader cache when its map
    entry is evicted: they were counted once, and are not counted again
    when the cache later flushes them into a re-created entry."""
    with lab() as lb, Loader() as ld, Store(tmp_path / "h.db") as st:
        e = EvictionLab(lb, ld, st)
        e.send(10)
        e.send(1, RX_V4["nolabel"])  # 10 now in dw_drops
        e.send(7)  # these wait in the cache
        e.col.poll()
        assert e.total() == 17
        for _ in range(3):
            e.col.poll()
        assert e.col.evicted >= 1 and e.total() == 17
        e.send(1, RX_V4["nolabel"])  # the cache flushes 7 into a re-created entry
        e.col.poll()
        assert e.total() == 17
        e.send(3)
        e.send(1, RX_V4["nolabel"])
        e.col.poll()
        assert e.total() == 20

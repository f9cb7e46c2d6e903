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
from dropwatch.lab import LAB_RULES, RX_V4, TX_EYEBALL_V4, lab
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


def test_evicted_entries_keep_exact_counts(tmp_path: Path) -> None:
    with lab() as lb, Loader() as ld, Store(tmp_path / "h.db") as st:
        ld.load()
        ids = st.label_ids(["customerX", "customerY"])
        ld.apply_rules(compile_rules(parse_rules(LAB_RULES), ids))
        ld.attach_reader()
        ld.attach_xdp(lb.rx_if, "generic", netns=lb.rx_ns)
        col = Collector(ld, st, DropReasons.load(), Kallsyms.load(), netns=lb.rx_ns)
        col.refresh_label_names()
        col.evict_at, col.evict_idle_polls = 1, 2  # evict anything idle for 2 polls

        def total() -> int:
            now = datetime.now(timezone.utc)
            return st.query_drops(now - timedelta(minutes=5), now + timedelta(minutes=1),
                                  filters={"label": ["customerX"], "reason": ["NO_SOCKET"], "iface": [lb.rx_if]},
                                  group_by=[]).total

        def in_map() -> list[tuple[int, ...]]:
            """Our key in dw_drops itself (the reader's per-CPU cache aside)."""
            return [k for k in ld.read_drop_map() if k[0] == ids["customerX"] and k[4] != 0]

        def send(n: int, dst: str = RX_V4["customerX"]) -> None:
            s0 = lb.snmp()["Udp.NoPorts"]
            lb.send_udp(TX_EYEBALL_V4, dst, 5555, n)
            while lb.snmp()["Udp.NoPorts"] - s0 < n:
                time.sleep(0.01)
            time.sleep(0.05)

        send(20)
        send(1, RX_V4["nolabel"])  # another key: flushes the reader's cache into dw_drops
        col.poll()
        assert total() == 20 and in_map()
        for _ in range(3):  # idle polls: the entry gets evicted
            col.poll()
        assert not in_map() and col.evicted >= 1
        assert total() == 20  # nothing lost, nothing doubled
        # The kernel creates the key again, from zero, and it grows past its
        # old value within one interval: still all new (45, not 20 + 5).
        send(25)
        col.poll()
        assert total() == 45
        send(5)
        send(1, RX_V4["nolabel"])
        col.poll()
        assert total() == 50 and in_map()


def test_evicted_while_counts_wait_in_the_reader_cache(tmp_path: Path) -> None:
    """The key's last drops still sit in a CPU's reader cache when its map
    entry is evicted: they were counted once, and are not counted again
    when the cache later flushes them into a re-created entry."""
    with lab() as lb, Loader() as ld, Store(tmp_path / "h.db") as st:
        ld.load()
        ids = st.label_ids(["customerX", "customerY"])
        ld.apply_rules(compile_rules(parse_rules(LAB_RULES), ids))
        ld.attach_reader()
        ld.attach_xdp(lb.rx_if, "generic", netns=lb.rx_ns)
        col = Collector(ld, st, DropReasons.load(), Kallsyms.load(), netns=lb.rx_ns)
        col.refresh_label_names()
        col.evict_at, col.evict_idle_polls = 1, 2

        def total() -> int:
            now = datetime.now(timezone.utc)
            return st.query_drops(now - timedelta(minutes=5), now + timedelta(minutes=1),
                                  filters={"label": ["customerX"], "reason": ["NO_SOCKET"], "iface": [lb.rx_if]},
                                  group_by=[]).total

        def send(n: int, dst: str = RX_V4["customerX"]) -> None:
            s0 = lb.snmp()["Udp.NoPorts"]
            lb.send_udp(TX_EYEBALL_V4, dst, 5555, n)
            while lb.snmp()["Udp.NoPorts"] - s0 < n:
                time.sleep(0.01)
            time.sleep(0.05)

        send(10)
        send(1, RX_V4["nolabel"])  # 10 now in dw_drops
        send(7)  # these wait in the cache
        col.poll()
        assert total() == 17
        for _ in range(3):
            col.poll()
        assert col.evicted >= 1 and total() == 17
        send(1, RX_V4["nolabel"])  # the cache flushes 7 into a re-created entry
        col.poll()
        assert total() == 17
        send(3)
        send(1, RX_V4["nolabel"])
        col.poll()
        assert total() == 20

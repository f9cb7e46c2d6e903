"""Drop-map housekeeping: idle entries are read-and-deleted when the map
fills, and no count is lost or doubled, including for a key that the
kernel creates again after it was evicted."""

from __future__ import annotations

import time
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

        def ours() -> list[tuple[int, ...]]:
            return [k for k in ld.read_drops() if k[0] == ids["customerX"] and k[4] != 0]

        def send(n: int) -> None:
            s0 = lb.snmp()["Udp.NoPorts"]
            lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, n)
            while lb.snmp()["Udp.NoPorts"] - s0 < n:
                time.sleep(0.01)
            time.sleep(0.05)

        send(20)
        col.poll()
        assert total() == 20 and ours()
        for _ in range(3):  # idle polls: the entry gets evicted
            col.poll()
        assert not ours() and col.evicted >= 1
        assert total() == 20  # nothing lost, nothing doubled
        # The kernel creates the key again, from zero, and it grows past its
        # old value within one interval: still all new (45, not 20 + 5).
        send(25)
        col.poll()
        assert total() == 45
        send(5)
        col.poll()
        assert total() == 50

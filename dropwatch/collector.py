"""Polls the kernel counters, turns them into per-interval deltas with names,
writes them to the store and keeps the running totals that /metrics exports.

Deltas: the BPF maps hold cumulative per-CPU counts since load. A key seen
before gives cur - prev; a key whose value went down was deleted and
recreated in between, so all of cur is new; a key we evict ourselves is read
and deleted in one step (lookup_and_delete), so its last increments are
kept. A restart loads fresh maps, so the first poll's values are all new.
If the store cannot be written (disk full, read-only), the deltas stay
pending in memory and go out with the next successful write: counts are
never dropped, and /metrics keeps counting meanwhile.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from . import abi
from .kernel import DropReasons, Kallsyms
from .loader import DropKeyT, Loader
from .netns import entered, netns_path
from .store import DropDelta, PacketDelta, Store, StoreError

log = logging.getLogger("dropwatch.collector")

UNLABELED = "unlabeled"
# A drop row's names, in DropDelta's field order: label, side, reason, location, iface, pop.
DropRow = tuple[str, str, str, str, str, str]
SIDE_NAMES = {0: "unknown", 1: "eyeball", 2: "origin", 3: "unknown"}
# Pending deltas kept while the store is failing: beyond this many distinct
# rows the oldest detail is folded (location -> "?"), never discarded.
MAX_PENDING_ROWS = 200_000
# Drop-map housekeeping: when the map is this full, entries unchanged for
# this many polls are read-and-deleted (their last increments are kept) so
# new (label, reason, location, interface) keys find room.
EVICT_AT_FRACTION = 0.75
EVICT_IDLE_POLLS = 60


@dataclass
class Totals:
    """Running totals since the daemon started (what /metrics exports)."""

    drops: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # label, side, reason
    packets: Counter[tuple[str, str]] = field(default_factory=Counter)
    bytes: Counter[tuple[str, str]] = field(default_factory=Counter)
    corrupt_records: int = 0
    map_full: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    meta_failures: dict[str, int] = field(default_factory=dict)  # iface -> count


def _netns_inode(netns: str | None) -> int:
    try:
        return os.stat(netns_path(netns) if netns else "/proc/self/ns/net").st_ino
    except OSError:
        return 0


class Collector:
    def __init__(self, loader: Loader, store: Store, reasons: DropReasons, kallsyms: Kallsyms,
                 *, netns: str | None = None, label_names: Callable[[], dict[int, str]] | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.loader = loader
        self.store = store
        self.reasons = reasons
        self.kallsyms = kallsyms
        self.netns = netns
        self._label_names = label_names or store.label_names
        self._names: dict[int, str] = {}
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._prev_drops: dict[DropKeyT, int] = {}
        # Every key in _prev_drops -> the poll it last grew in. Updated in
        # place, so the three dicts share one key object per key.
        self._last_growth: dict[DropKeyT, int] = {}
        # Key -> its row's names, for keys whose names are final (label ids
        # are never rebound, interface names are cached anyway).
        self._rows: dict[DropKeyT, DropRow] = {}
        self._resync = True
        self._next_evict_scan = 0
        self.evict_at = int(getattr(loader, "drop_entries", abi.DW_MAX_DROP_KEYS) * EVICT_AT_FRACTION)
        self.evict_idle_polls = EVICT_IDLE_POLLS
        self.evicted = 0
        self._prev_pkts: dict[tuple[int, int], tuple[int, int]] = {}
        self._prev_stats: dict[abi.Stat, int] = {}
        self._ifnames: dict[int, str] = {}
        self.netns_ino = _netns_inode(netns)
        self._pending_drops: Counter[DropRow] = Counter()
        self._pending_pkts: dict[tuple[str, str, str, str], list[int]] = {}
        self.totals = Totals()
        self.lock = threading.Lock()
        self.last_poll: datetime | None = None
        self.last_poll_duration_s = 0.0
        self.poll_durations: list[float] = []
        self.store_error: str | None = None
        self.polls = 0

    def refresh_label_names(self) -> None:
        self._names = dict(self._label_names())

    # ------------------------------------------------------------ naming

    def _label(self, label_id: int) -> str:
        if label_id == 0:
            return UNLABELED
        name = self._names.get(label_id)
        if name is None:
            self.refresh_label_names()
            name = self._names.get(label_id, f"label{label_id}")
        return name

    def _iface(self, ifindex: int, netns_ino: int | None = None) -> str:
        """Interface name in the daemon's namespace (--netns, or its own).
        An ifindex is only unique per namespace: a drop in another namespace
        (a container's, another lab's) is shown as if<N>@netns:<inode>."""
        if ifindex == 0:
            return "-"  # locally generated, or freed before an input device was set
        if netns_ino and self.netns_ino and netns_ino != self.netns_ino:
            return f"if{ifindex}@netns:{netns_ino}"
        name = self._ifnames.get(ifindex)
        if name is None:
            try:
                with entered(self.netns):
                    name = socket.if_indextoname(ifindex)
            except OSError:
                name = f"if{ifindex}"
            self._ifnames[ifindex] = name
        return name

    def sample_names(self, s: abi.Sample) -> tuple[str, str, str, str, str]:
        """(label, side, reason, location, iface) of a sampled drop, named as the counters are."""
        label = self._label(s.label_id) if s.source in (abi.Source.META, abi.Source.FLOW) else UNLABELED
        return (label, SIDE_NAMES.get(s.side, "unknown"), self.reasons.name(s.reason),
                self.kallsyms.symbolize(s.location), self._iface(s.ifindex, s.netns_ino))

    def _drop_row(self, key: DropKeyT) -> DropRow:
        """A drop key's names; cached once every name is final (not a
        fallback that a reload may fix)."""
        label_id, side, reason, location, ifindex, pop_id, source, netns_ino, flags = key
        labeled = source in (abi.Source.META, abi.Source.FLOW)
        loc = self.kallsyms.symbolize(location)
        row: DropRow = (self._label(label_id) if labeled else UNLABELED, SIDE_NAMES.get(side, "unknown"),
                        self.reasons.name(reason), loc, self._iface(ifindex, netns_ino), "")
        if (not labeled or label_id == 0 or label_id in self._names) and not loc.startswith("0x"):
            self._rows[key] = row
        return row

    # ------------------------------------------------------------ poll

    def poll(self) -> None:
        t0 = time.monotonic()
        now = self._clock()
        max_id = max(self._names) if self._names else 0
        pkts = self.loader.read_packets(max(max_id, 1))
        stats = self.loader.read_stats()
        fails = self.loader.read_meta_failures()
        # Only entries that may have changed are decoded; the rest still hold
        # the counts in _prev_drops. After a failed poll, read everything.
        resync, self._resync = self._resync, True
        changed, n_entries = self.loader.read_drops_changed(full=resync)
        prev_drops = self._prev_drops
        if len(prev_drops) + sum(1 for k in changed if k not in prev_drops) != n_entries:
            # An entry we did not evict left the map: read it all again.
            changed, n_entries = self.loader.read_drops_changed(full=True)
            gone = prev_drops.keys() - changed.keys()
        else:
            gone = set()

        changed, evicted = self._evict_idle(changed, n_entries)
        drop_rows: dict[DropRow, int] = {}
        active: list[DropKeyT] = []
        corrupt = 0
        rows = self._rows
        for key, cur in changed.items():
            prev = prev_drops.get(key, 0)
            delta = cur - prev if cur >= prev else cur
            if delta <= 0:
                continue
            active.append(key)
            row = rows.get(key)
            if row is None:
                row = self._drop_row(key)
            if key[6] == abi.Source.CORRUPT or key[8] & abi.DW_DK_META_CORRUPT:  # source, flags
                corrupt += delta
            drop_rows[row] = drop_rows.get(row, 0) + delta
        pkt_rows: dict[tuple[str, str, str, str], list[int]] = {}
        for (label_id, side, pop_id), (p, b) in pkts.items():
            pp, pb = self._prev_pkts.get((label_id, side, pop_id), (0, 0))
            dp, db = (p - pp, b - pb) if p >= pp else (p, b)
            if dp <= 0:
                continue
            k = (self._label(label_id), SIDE_NAMES.get(side, "unknown"), "", "")
            acc = pkt_rows.setdefault(k, [0, 0])
            acc[0] += dp
            acc[1] += db
        prev_drops.update(changed)
        last = self._last_growth
        for key in active:
            last[key] = self.polls
        for key in changed.keys() - last.keys():  # new, not grown (a zero count)
            last[key] = self.polls - 1
        # An evicted key starts from zero if the kernel creates it again.
        for key in evicted | gone:
            prev_drops.pop(key, None)
            last.pop(key, None)
            rows.pop(key, None)
        self._prev_pkts = pkts

        stat_delta = {st: v - self._prev_stats.get(st, 0) for st, v in stats.items()}
        self._prev_stats = stats

        with self.lock:
            for row, n in drop_rows.items():
                self.totals.drops[row[:3]] += n
            for (plabel, pside, _i, _p), (dp, db) in pkt_rows.items():
                self.totals.packets[(plabel, pside)] += dp
                self.totals.bytes[(plabel, pside)] += db
            self.totals.corrupt_records += corrupt
            self.totals.map_full += max(0, stat_delta.get(abi.Stat.MAP_FULL, 0))
            self.totals.stats = {st.name.lower(): v for st, v in stats.items()}
            self.totals.meta_failures = {self._iface(i): v for i, v in fails.items()}

        self._resync = False
        self._write(now, drop_rows, pkt_rows)
        self.polls += 1
        self.last_poll = now
        self.last_poll_duration_s = time.monotonic() - t0
        self.poll_durations.append(self.last_poll_duration_s)
        if len(self.poll_durations) > 1000:
            del self.poll_durations[:500]

    def _evict_idle(self, drops: dict[DropKeyT, int], n_entries: int) -> tuple[dict[DropKeyT, int], set[DropKeyT]]:
        """Make room in a filling drop map: remove entries idle for
        evict_idle_polls polls. Each is read and deleted in one step and its
        final value replaces the one just read (or is added to ``drops``), so
        increments that landed in between still count in this poll's delta."""
        evicted: set[DropKeyT] = set()
        # Scanning every key costs ~5 ms per 100,000: look every quarter of
        # the idle time (an entry goes at most that much later).
        if n_entries < self.evict_at or self.polls < self._next_evict_scan:
            return drops, evicted
        self._next_evict_scan = self.polls + max(1, self.evict_idle_polls // 4)
        newest = self.polls - 1 - self.evict_idle_polls
        idle = [key for key, grew in self._last_growth.items() if grew <= newest]
        for key in idle:
            final = self.loader.evict_drop(key)
            if final is not None:
                drops[key] = final
            evicted.add(key)
        self.evicted += len(evicted)
        if evicted:
            log.info("drop map %d/%d full: evicted %d idle entries", n_entries,
                     getattr(self.loader, "drop_entries", abi.DW_MAX_DROP_KEYS), len(evicted))
        return drops, evicted

    def _write(self, now: datetime, drop_rows: dict[DropRow, int],
               pkt_rows: dict[tuple[str, str, str, str], list[int]]) -> None:
        self._pending_drops.update(drop_rows)
        for k, (dp, db) in pkt_rows.items():
            acc = self._pending_pkts.setdefault(k, [0, 0])
            acc[0] += dp
            acc[1] += db
        if not self._pending_drops and not self._pending_pkts:
            return
        drops = [DropDelta(*r, n) for r, n in self._pending_drops.items()]
        packets = [PacketDelta(label, side, iface, pop, v[0], v[1])
                   for (label, side, iface, pop), v in self._pending_pkts.items()]
        try:
            self.store.record(now, drops, packets)
        except (StoreError, OSError) as exc:
            if self.store_error is None:
                log.error("cannot write history, keeping %d rows in memory until it works: %s", len(drops), exc)
            self.store_error = str(exc)
            self._fold_pending()
            return
        if self.store_error is not None:
            log.info("history writes work again; flushed %d pending rows", len(drops))
        self.store_error = None
        self._pending_drops.clear()
        self._pending_pkts.clear()

    def _fold_pending(self) -> None:
        if len(self._pending_drops) <= MAX_PENDING_ROWS:
            return
        folded: Counter[DropRow] = Counter()
        for (label, side, reason, _loc, iface, pop), n in self._pending_drops.items():
            folded[(label, side, reason, "?", iface, pop)] += n
        self._pending_drops = folded

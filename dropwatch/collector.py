"""Polls the kernel counters, turns them into per-interval deltas with names,
writes them to the store and keeps the running totals that /metrics exports.

Deltas: the reader counts each drop key in a slot of a mapped array (see
"Drop counting" in bpf/dropwatch.h), cumulative since load. A poll reads
every slot's count in one pass (loader.read_drop_slots), and only slots
whose count moved since the last poll are looked at: count - counted is
the delta, and a slot's name (its key) is read once, when it first counts.
Counts only grow. Slots of keys idle for a while are retired when the map
fills: the key is deleted (a new drop of it gets a new slot), and a grace
period later the old slot's last increments are counted and the slot is
recycled, so nothing is lost. A restart loads fresh maps, so the first
poll's values are all new. If the store cannot be written (disk full,
read-only), the deltas stay pending in memory and go out with the next
successful write: counts are never dropped, and /metrics keeps counting
meanwhile.

Writes: with async_writes (the daemon) poll() ends when its deltas are handed
to a single writer thread, which writes the batches in order (the pending
logic above runs there); if it falls behind, later polls' deltas are added
into the newest waiting batch. close() (on shutdown) writes every batch
before it returns.
"""

from __future__ import annotations

import logging
import operator
import os
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from . import abi
from .kernel import DropReasons, Kallsyms
from .loader import DropKeyT, Loader
from .netns import entered, netns_path
from .store import Store, StoreError

log = logging.getLogger("dropwatch.collector")

UNLABELED = "unlabeled"
# A drop row's names, in DropDelta's field order without count: label, side,
# reason, location, iface, pop, source.
DropRow = tuple[str, str, str, str, str, str, str]
SIDE_NAMES = {0: "unknown", 1: "eyeball", 2: "origin", 3: "unknown"}
POP_NONE, POP_UNKNOWN = "none", "unknown"
# What attributed a drop to its label. A corrupt record attributed nothing.
SOURCE_NAMES: dict[int, str] = {abi.Source.META: "metadata", abi.Source.FLOW: "flow",
                abi.Source.NONE: "none", abi.Source.CORRUPT: "none"}
ATTRIBUTED = (abi.Source.META, abi.Source.FLOW)
# Pending deltas kept while the store is failing: beyond this many distinct
# rows the oldest detail is folded (location -> "?"), never discarded.
MAX_PENDING_ROWS = 200_000
# Drop-map housekeeping: when the map is this full, entries unchanged for
# this many polls are read-and-deleted (their last increments are kept) so
# new (label, reason, location, interface) keys find room.
EVICT_AT_FRACTION = 0.75
EVICT_IDLE_POLLS = 60
# A retired slot is recycled this many polls and seconds after its key left
# the map: programs that found the slot before that finish in microseconds.
RETIRE_GRACE_POLLS = 2
RETIRE_GRACE_S = 0.05
# A drop row's /metrics key: label, side, reason, pop, source.
_TOTALS_KEY = operator.itemgetter(0, 1, 2, 5, 6)


@dataclass
class Totals:
    """Running totals since the daemon started (what /metrics exports)."""

    # label, side, reason, pop, source
    drops: Counter[tuple[str, str, str, str, str]] = field(default_factory=Counter)
    packets: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # label, side, pop
    bytes: Counter[tuple[str, str, str]] = field(default_factory=Counter)
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
                 pop_names: Callable[[], dict[int, str]] | None = None,
                 clock: Callable[[], datetime] | None = None, async_writes: bool = False,
                 max_queued: int = 8) -> None:
        self.loader = loader
        self.store = store
        self.reasons = reasons
        self.kallsyms = kallsyms
        self.netns = netns
        self._label_names = label_names or store.label_names
        self._names: dict[int, str] = {}
        self._pop_names_fn = pop_names or store.pop_names
        self._pop_names: dict[int, str] = {}
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        # Per slot: its key and its row's names (once final), the count
        # counted so far (only grows until the slot is recycled), the poll it
        # last grew in, whether its drops are corrupt records, whether its
        # key is known, whether it was retired and waits to be recycled.
        self._slot_keys: list[DropKeyT | None] = []
        self._slot_rows: list[DropRow | None] = []
        self._counted = np.zeros(0, np.uint64)
        self._last_growth = np.zeros(0, np.int64)
        self._corrupt = np.zeros(0, bool)
        self._known = np.zeros(0, bool)
        self._retired = np.zeros(0, bool)
        self._retiring: deque[tuple[int, float, list[int]]] = deque()  # (poll, monotonic s, slots)
        self.slots_in_use = 0
        self._next_evict_scan = 0
        self.evict_at = int(getattr(loader, "drop_entries", abi.DW_MAX_DROP_KEYS) * EVICT_AT_FRACTION)
        self.evict_idle_polls = EVICT_IDLE_POLLS
        self.evicted = 0
        self._prev_pkts: dict[tuple[int, int, int], tuple[int, int]] = {}
        self._prev_stats: dict[abi.Stat, int] = {}
        self._ifnames: dict[int, str] = {}
        self.netns_ino = _netns_inode(netns)
        self._pending_drops: Counter[DropRow] = Counter()
        self._pending_pkts: dict[tuple[str, str, str, str], list[int]] = {}
        self._totals = Totals()
        # Drop rows counted by polls but not yet added into _totals.drops: the
        # writer thread folds them after each batch, and reading .totals
        # folds whatever is left, so readers always see every poll's counts.
        self._unfolded: list[dict[DropRow, int]] = []
        self._fold_lock = threading.Lock()
        self.lock = threading.Lock()
        self.last_poll: datetime | None = None
        self.last_poll_duration_s = 0.0
        self.poll_durations: list[float] = []
        self.store_error: str | None = None
        self.polls = 0
        # async_writes: poll() hands its deltas to one writer thread (started
        # with the first batch) instead of writing them itself. At most
        # max_queued batches wait; beyond that a poll's deltas are added into
        # the newest waiting batch (written at the later time), never dropped.
        self.async_writes = async_writes
        self.max_queued = max(1, max_queued)
        self._queue: deque[tuple[datetime, dict[DropRow, int], dict[tuple[str, str, str, str], list[int]]]] = deque()
        self._cond = threading.Condition()
        self._writing = False
        self._closing = False
        self._writer: threading.Thread | None = None
        self.merged_batches = 0
        self.last_write_duration_s = 0.0
        self.write_durations: list[float] = []
        self.writes = 0
        self.write_seconds = 0.0

    @property
    def totals(self) -> Totals:
        """Running totals, with every poll so far in them."""
        self._fold_totals()
        return self._totals

    def _fold_totals(self) -> None:
        with self._fold_lock:
            if not self._unfolded:
                return
            tdrops = self._totals.drops
            tget = tdrops.get
            for drop_rows in self._unfolded:
                for tkey, n in zip(map(_TOTALS_KEY, drop_rows), drop_rows.values(), strict=True):
                    tdrops[tkey] = tget(tkey, 0) + n
            self._unfolded.clear()

    def refresh_label_names(self) -> None:
        """Re-read the label and PoP registries (after a rule change)."""
        self._names = dict(self._label_names())
        self._pop_names = dict(self._pop_names_fn())

    # ------------------------------------------------------------ naming

    def _label(self, label_id: int) -> str:
        if label_id == 0:
            return UNLABELED
        name = self._names.get(label_id)
        if name is None:
            self.refresh_label_names()
            name = self._names.get(label_id, f"label{label_id}")
        return name

    def _pop(self, pop_id: int) -> str:
        """0: not tunnelled; 0xFFFF: tunnelled from no (or no single) PoP;
        else the registry's name, or pop<id> for an id it does not know."""
        if pop_id == abi.DW_POP_NONE:
            return POP_NONE
        if pop_id == abi.DW_POP_UNKNOWN:
            return POP_UNKNOWN
        name = self._pop_names.get(pop_id)
        if name is None:
            self._pop_names = dict(self._pop_names_fn())
            # Remembered until the next rule change re-reads the registry.
            name = self._pop_names.setdefault(pop_id, f"pop{pop_id}")
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

    def sample_names(self, s: abi.Sample) -> tuple[str, str, str, str, str, str, str]:
        """(label, side, reason, location, iface, pop, source) of a sampled drop,
        named as the counters are."""
        label = self._label(s.label_id) if s.source in ATTRIBUTED else UNLABELED
        return (label, SIDE_NAMES.get(s.side, "unknown"), self.reasons.name(s.reason),
                self.kallsyms.symbolize(s.location), self._iface(s.ifindex, s.netns_ino),
                self._pop(s.pop_id), SOURCE_NAMES.get(s.source, "none"))

    def _drop_row(self, key: DropKeyT) -> tuple[DropRow, bool]:
        """A drop key's names, and whether they are final (not a fallback
        that a reload or a new symbol may fix)."""
        label_id, side, reason, location, ifindex, pop_id, source, netns_ino, _flags = key
        labeled = source in ATTRIBUTED
        loc = self.kallsyms.symbolize(location)
        row: DropRow = (self._label(label_id) if labeled else UNLABELED, SIDE_NAMES.get(side, "unknown"),
                        self.reasons.name(reason), loc, self._iface(ifindex, netns_ino), self._pop(pop_id),
                        SOURCE_NAMES.get(source, "none"))
        final = ((not labeled or label_id == 0 or label_id in self._names) and not loc.startswith("0x")
                 and pop_id in (abi.DW_POP_NONE, abi.DW_POP_UNKNOWN, *self._pop_names))
        return row, final

    def _grow_slots(self, n: int) -> None:
        have = len(self._slot_keys)
        if n <= have:
            return
        add = max(n, 2 * have) - have
        self._slot_keys.extend([None] * add)
        self._slot_rows.extend([None] * add)
        self._counted = np.concatenate([self._counted, np.zeros(add, np.uint64)])
        self._last_growth = np.concatenate([self._last_growth, np.zeros(add, np.int64)])
        for name in ("_corrupt", "_known", "_retired"):
            setattr(self, name, np.concatenate([getattr(self, name), np.zeros(add, bool)]))

    # ------------------------------------------------------------ poll

    def poll(self) -> None:
        t0 = time.monotonic()
        now = self._clock()
        max_id = max(self._names) if self._names else 0
        pkts = self.loader.read_packets(max(max_id, 1))
        stats = self.loader.read_stats()
        fails = self.loader.read_meta_failures()
        cur = self.loader.read_drop_slots()
        n = len(cur)
        self._grow_slots(n)
        counted = self._counted[:n]
        changed = np.flatnonzero(cur != counted)
        cur_c = cur[changed]
        # A slot's count only grows until we recycle it; a smaller one can
        # only be a reader that was loaded again: all of it is new.
        before = counted[changed]
        deltas = np.where(cur_c >= before, cur_c - before, cur_c)
        new = changed[~self._known[changed]]
        if len(new):
            new_list = new.tolist()
            for s, key in zip(new_list, self.loader.drop_slot_keys(new_list), strict=True):
                self._slot_keys[s] = key
                self._slot_rows[s] = None
                self._corrupt[s] = key[6] == abi.Source.CORRUPT or bool(key[8] & abi.DW_DK_META_CORRUPT)
        # Every changed slot gets its row's names; a poll that fails before
        # the counted update below counts nothing, and the next one counts
        # it all.
        changed_list = changed.tolist()
        rows = self._slot_rows
        names = list(map(rows.__getitem__, changed_list))
        if None in names:
            keys = self._slot_keys
            for i, row in enumerate(names):
                if row is None:
                    s = changed_list[i]
                    skey = keys[s]
                    assert skey is not None
                    names[i], final = self._drop_row(skey)
                    if final:
                        rows[s] = names[i]
        delta_list = deltas.tolist()
        drop_rows: dict[DropRow, int] = dict(zip(names, delta_list, strict=True))  # type: ignore[arg-type]
        if len(drop_rows) != len(names):  # slots sharing a row (keys differing only in flags, a re-seen key)
            drop_rows = {}
            for row, d in zip(names, delta_list, strict=True):
                drop_rows[row] = drop_rows.get(row, 0) + d  # type: ignore[index, arg-type]
        corrupt = int(deltas[self._corrupt[changed]].sum()) if len(changed) else 0
        self._counted[changed] = cur_c
        self._last_growth[changed] = self.polls
        if len(new):
            self._known[new] = True
            self.slots_in_use += len(new)

        pkt_rows: dict[tuple[str, str, str, str], list[int]] = {}
        for (label_id, side, pop_id), (p, b) in pkts.items():
            pp, pb = self._prev_pkts.get((label_id, side, pop_id), (0, 0))
            dp, db = (p - pp, b - pb) if p >= pp else (p, b)
            if dp <= 0:
                continue
            k = (self._label(label_id), SIDE_NAMES.get(side, "unknown"), "", self._pop(pop_id))
            acc = pkt_rows.setdefault(k, [0, 0])
            acc[0] += dp
            acc[1] += db
        self._prev_pkts = pkts

        stat_delta = {st: v - self._prev_stats.get(st, 0) for st, v in stats.items()}
        self._prev_stats = stats

        with self._fold_lock:
            if drop_rows:
                self._unfolded.append(drop_rows)
        if not self.async_writes:
            self._fold_totals()
        with self.lock:
            totals = self._totals
            for (plabel, pside, _i, ppop), (dp, db) in pkt_rows.items():
                totals.packets[(plabel, pside, ppop)] += dp
                totals.bytes[(plabel, pside, ppop)] += db
            totals.corrupt_records += corrupt
            totals.map_full += max(0, stat_delta.get(abi.Stat.MAP_FULL, 0))
            totals.stats = {st.name.lower(): v for st, v in stats.items()}
            totals.meta_failures = {self._iface(i): v for i, v in fails.items()}

        self._hand_off(now, drop_rows, pkt_rows)
        # After the hand-off: this poll's counts are safe whatever happens here.
        self._recycle_retired()
        self._evict_idle()
        self.polls += 1
        self.last_poll = now
        self.last_poll_duration_s = time.monotonic() - t0
        self.poll_durations.append(self.last_poll_duration_s)
        if len(self.poll_durations) > 1000:
            del self.poll_durations[:500]

    def _recycle_retired(self) -> None:
        """Hand back slots retired a grace period ago. This poll has just
        counted their last increments: nothing can reach them any more."""
        now = time.monotonic()
        while self._retiring:
            poll, at, slots = self._retiring[0]
            if self.polls - poll < RETIRE_GRACE_POLLS or now - at < RETIRE_GRACE_S:
                return
            self._retiring.popleft()
            self.loader.recycle_drop_slots(slots)
            idx = np.asarray(slots, dtype=np.int64)
            self._counted[idx] = 0
            self._last_growth[idx] = 0
            self._corrupt[idx] = False
            self._known[idx] = False
            self._retired[idx] = False
            for s in slots:
                self._slot_keys[s] = None
                self._slot_rows[s] = None
            self.slots_in_use -= len(slots)

    def _evict_idle(self) -> None:
        """Make room in a filling drop map: retire the keys of slots idle
        for evict_idle_polls polls (see _recycle_retired)."""
        if self.slots_in_use < self.evict_at or self.polls < self._next_evict_scan:
            return
        # Look every quarter of the idle time (a key goes at most that much later).
        self._next_evict_scan = self.polls + max(1, self.evict_idle_polls // 4)
        newest = self.polls - 1 - self.evict_idle_polls
        idle = np.flatnonzero(self._known & ~self._retired & (self._last_growth <= newest))
        if not len(idle):
            return
        slots = idle.tolist()
        keys = [self._slot_keys[s] for s in slots]
        self.loader.retire_drop_keys(keys)  # type: ignore[arg-type]
        self._retired[idle] = True
        self._retiring.append((self.polls, time.monotonic(), slots))
        self.evicted += len(slots)
        log.info("drop map %d/%d full: evicted %d idle keys", self.slots_in_use,
                 getattr(self.loader, "drop_entries", abi.DW_MAX_DROP_KEYS), len(slots))

    # ------------------------------------------------------------ writes

    def _hand_off(self, now: datetime, drop_rows: dict[DropRow, int],
                  pkt_rows: dict[tuple[str, str, str, str], list[int]]) -> None:
        if not self.async_writes or self._closing:  # (after close(): written here, in order)
            self._write_timed(now, drop_rows, pkt_rows)
            return
        if not drop_rows and not pkt_rows and self.store_error is None:
            return  # nothing to write, nothing pending to retry
        with self._cond:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="dropwatch-write", daemon=True)
                self._writer.start()
            if len(self._queue) >= self.max_queued:
                # The writer is behind: fold this poll into the newest batch.
                _ts, d, p = self._queue.pop()
                d = dict(d)  # (the poll's own dict is also waiting to be folded into the totals)
                dget = d.get
                for row, n in drop_rows.items():
                    d[row] = dget(row, 0) + n
                for k, (dp, db) in pkt_rows.items():
                    acc = p.setdefault(k, [0, 0])
                    acc[0] += dp
                    acc[1] += db
                self._queue.append((now, d, p))
                self.merged_batches += 1
            else:
                self._queue.append((now, drop_rows, pkt_rows))
            self._cond.notify_all()

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                now, drop_rows, pkt_rows = self._queue.popleft()
                self._writing = True
            try:
                self._write_timed(now, drop_rows, pkt_rows)
            except Exception:  # noqa: BLE001 - the counts stay pending; the next batch retries
                log.exception("writing history failed")
            finally:
                self._fold_totals()
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every delta handed off so far went through the store
        (written, or kept pending if the store fails). False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._writing, timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Flush and stop the writer thread; poll() must not be called after."""
        done = self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            writer = self._writer
        if writer is not None:
            writer.join(timeout)
        return done

    def _write_timed(self, now: datetime, drop_rows: dict[DropRow, int],
                     pkt_rows: dict[tuple[str, str, str, str], list[int]]) -> None:
        t = time.perf_counter()
        try:
            self._write(now, drop_rows, pkt_rows)
        finally:
            self.last_write_duration_s = time.perf_counter() - t
            self.writes += 1
            self.write_seconds += self.last_write_duration_s
            self.write_durations.append(self.last_write_duration_s)
            if len(self.write_durations) > 1000:
                del self.write_durations[:500]

    def _write(self, now: datetime, drop_rows: dict[DropRow, int],
               pkt_rows: dict[tuple[str, str, str, str], list[int]]) -> None:
        self._pending_drops.update(drop_rows)
        for k, (dp, db) in pkt_rows.items():
            acc = self._pending_pkts.setdefault(k, [0, 0])
            acc[0] += dp
            acc[1] += db
        if not self._pending_drops and not self._pending_pkts:
            return
        drops, packets = self._pending_drops, self._pending_pkts
        try:
            self.store.record_rows(now, drops, packets)
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
        for (label, side, reason, _loc, iface, pop, source), n in self._pending_drops.items():
            folded[(label, side, reason, "?", iface, pop, source)] += n
        self._pending_drops = folded

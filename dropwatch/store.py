"""History of per-interval drop and packet counter deltas, kept in SQLite.

Data model
----------
Every poll interval the daemon hands ``Store.record`` the *deltas* of the
in-kernel counters since the previous poll:

* ``DropDelta``: dropped packets keyed by (label, side, reason, location, iface, pop, source);
* ``PacketDelta``: packets/bytes seen at ingress keyed by (label, side, iface, pop).

``pop`` is the landing PoP (``none``: not tunnelled, ``unknown``: tunnelled from an
outer source in no PoP); ``source`` is what attributed a drop to its label
(``metadata``, ``flow`` or ``none``).

Each distinct key is stored once in ``dims`` and referred to by a small integer,
so the count tables hold only (tier, bucket_start, dim_id, count[, bytes]).

Tiers (resolution and retention)
--------------------------------
Each delta is added into the bucket containing its timestamp in the finest
tier. A coarser tier's bucket is rolled up from the next finer tier once it
is closed (the first record or prune at or after its end), in the same
transaction; ``meta`` keeps, per coarser tier, where its rolled-up buckets end
(``rolled_<step>``). A delta for a bucket rolled up already (a timestamp in
the past) is added into that tier directly too. So every tier holds the same
deltas summed differently, and queries read a coarser tier only below its
mark, the finer tiers above it. (A poll of 100,000 keys is 100,000 upserts
instead of 300,000; a roll-up reads each finer row once.)

==========  ==========  ===========================
tier step   retention   buckets per key (at most)
==========  ==========  ===========================
10 s        2 days      17,280
5 min       30 days     8,640
1 h         400 days    9,600
==========  ==========  ===========================

A query uses the finest tier whose retention reaches back to ``since``, so its
results have that tier's resolution (``step_s`` in the result). Buckets are
included when ``bucket_start >= floor(since, step)`` and ``bucket_start < until``.
Totals (``query_drops``/``query_packets``) are computed exactly over that same
range, but read whole coarser-tier buckets for the middle of the range: every
tier holds the same deltas summed differently, so this gives identical totals
while reading ~100 buckets instead of 8,640 for a 24 h query.

Size bound
----------
Only non-zero deltas are stored. A key that drops packets in every single
interval costs at most 17,280 + 8,640 + 9,600 = 35,520 rows; measured at about
18 bytes per row that is roughly 0.65 MB per continuously active key (e.g.
100 labels x 5 reasons all dropping non-stop: ~330 MB). So the file is bounded
by ~0.65 MB x (number of keys active at the same time), plus the ``dims`` and
``labels`` tables (one small row per key/label; unused keys are collected
daily). SQLite reuses freed pages, so the file stops growing once retention is
reached; it does not shrink without VACUUM.

Query cost
----------
Totals read at most ~2 x (buckets per coarser bucket) fine buckets at the
edges, so they are fast for any range. A time series reads every bucket of the
tier it uses: steps that are multiples of 300 s (or 3600 s) let it read the
coarser tiers, while e.g. a 60 s step over 24 h must scan the 10 s tier.

Label ids
---------
``label_ids`` hands out small integer ids for label names (the kernel side
keys its maps by id). An id stays bound to its name across restarts and rule
reloads and is never reused (AUTOINCREMENT); id 0 means "unlabeled" and is not
stored. The id space ends at ``max_label_id`` (default 16383).

PoP ids
-------
``pop_ids`` does the same for landing PoP names (the labeler writes a PoP id
into each packet's record): ids 1..``max_pop_id`` (default 4095), stable and
never reused. ``none`` (0) and ``unknown`` (0xFFFF) are the kernel's own and
are not stored.

Schema versions
---------------
1. The tables above without ``source`` and ``pops``.
2. ``dims.source`` and the ``pops`` registry. Rows from version 1 predate the
   flow fallback and PoP detection, so a labeled drop was attributed by its
   metadata (``source = 'metadata'``), an unlabeled one by nothing
   (``'none'``), and every packet was labeled by its outer addresses, as an
   untunnelled one is now (``pop = 'none'`` where it was ``''``). History is
   kept; only those two columns are filled in.

Concurrency
-----------
The daemon writes from one poll thread and reads from HTTP request threads.
Writes go through a single connection guarded by a lock; reads borrow a
connection from a small pool (so a thread-per-request HTTP server does not leak
one connection per thread). The database is in WAL mode, so readers see a
consistent snapshot and never block the writer, nor the writer them.

Errors
------
Operational/database problems raise ``StoreError`` with the path and what to
do; bad arguments raise ``ValueError`` (naive datetimes, unknown filter keys,
negative counts...) or ``TypeError`` (a count that is not an int...), always
before anything is written.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypedDict

__all__ = [
    "DEFAULT_TIERS",
    "DROP_DIMS",
    "MAX_TIMESERIES_BUCKETS",
    "PACKET_DIMS",
    "SCHEMA_VERSION",
    "SIDES",
    "SOURCES",
    "UNLABELED",
    "UNLABELED_ID",
    "DropDelta",
    "DropQueryResult",
    "PacketDelta",
    "SeriesEntry",
    "Store",
    "StoreError",
    "Tier",
    "TimeseriesResult",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 2
SIDES: Final = ("eyeball", "origin", "unknown")
DROP_DIMS: Final = ("label", "side", "reason", "location", "iface", "pop", "source")
PACKET_DIMS: Final = ("label", "side", "iface", "pop")
UNLABELED: Final = "unlabeled"
UNLABELED_ID: Final = 0
DEFAULT_MAX_LABEL_ID: Final = 16383
POP_NONE: Final = "none"
POP_UNKNOWN: Final = "unknown"
DEFAULT_MAX_POP_ID: Final = 4095
SOURCES: Final = ("metadata", "flow", "none")
MAX_TIMESERIES_BUCKETS: Final = 10_000

# Pruning a few expired buckets is cheap, so record() does it every minute;
# collecting unused dims scans the count tables, so it runs once a day.
_PRUNE_EVERY_S: Final = 60
_DIM_GC_EVERY_S: Final = 86_400
_MAX_IDLE_READERS: Final = 4
_BUSY_TIMEOUT_S: Final = 5.0
_MAX_INT64: Final = 2**63 - 1


class StoreError(Exception):
    """The history database cannot be opened, read or written."""


@dataclass(frozen=True, slots=True)
class Tier:
    """One resolution of history: buckets of ``step_s`` seconds kept for ``retention_s``."""

    step_s: int
    retention_s: int

    def __post_init__(self) -> None:
        for name in ("step_s", "retention_s"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Tier.{name} must be a positive int, got {value!r}")
        if self.retention_s < self.step_s:
            raise ValueError(
                f"Tier retention {self.retention_s}s is shorter than its step {self.step_s}s"
            )


DEFAULT_TIERS: Final = (
    Tier(step_s=10, retention_s=2 * 86_400),
    Tier(step_s=300, retention_s=30 * 86_400),
    Tier(step_s=3600, retention_s=400 * 86_400),
)


@dataclass(frozen=True, slots=True)
class DropDelta:
    """Packets dropped during one poll interval for one dimension key.

    ``source`` (metadata, flow, none) defaults to what it was before the flow
    fallback existed: ``metadata`` for a labeled drop, ``none`` for an
    unlabeled one. A ``pop`` of ``''`` is recorded as ``none``.
    """

    label: str
    side: str
    reason: str
    location: str
    iface: str
    pop: str
    count: int
    source: str | None = None


@dataclass(frozen=True, slots=True)
class PacketDelta:
    """Packets and bytes seen at ingress during one poll interval for one key."""

    label: str
    side: str
    iface: str
    pop: str
    packets: int
    bytes: int


@dataclass(frozen=True, slots=True)
class DropQueryResult:
    """``total`` counts every matching drop, including groups cut off by ``limit``."""

    total: int
    groups: list[dict[str, str | int]]
    step_s: int


class SeriesEntry(TypedDict):
    group: dict[str, str]
    counts: list[int]


@dataclass(frozen=True, slots=True)
class TimeseriesResult:
    step_s: int
    buckets: list[int]
    series: list[SeriesEntry]


_DimKey = tuple[
    str, str, str, str, str, str, str, str
]  # kind, label, side, reason, location, iface, pop, source ('' for packets)
_DropRow = tuple[str, str, str, str, str, str, str]  # label, side, reason, location, iface, pop, source
_PktRow = tuple[str, str, str, str]  # label, side, iface, pop

_SCHEMA_V1: Final = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
-- AUTOINCREMENT so an id is never handed out twice, even if a row were deleted:
-- ids end up in kernel maps and in other tools' saved queries.
CREATE TABLE labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE TABLE dims (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('drop', 'pkt')),
    label TEXT NOT NULL,
    side TEXT NOT NULL,
    reason TEXT NOT NULL,
    location TEXT NOT NULL,
    iface TEXT NOT NULL,
    pop TEXT NOT NULL,
    UNIQUE (kind, label, side, reason, location, iface, pop)
);
-- The primary key doubles as the time-range index: every query is
-- "tier = ? AND bucket_start in [a, b)". WITHOUT ROWID keeps one b-tree per table.
CREATE TABLE drop_counts (
    tier INTEGER NOT NULL,
    bucket_start INTEGER NOT NULL,
    dim_id INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (tier, bucket_start, dim_id)
) WITHOUT ROWID;
CREATE TABLE pkt_counts (
    tier INTEGER NOT NULL,
    bucket_start INTEGER NOT NULL,
    dim_id INTEGER NOT NULL,
    packets INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (tier, bucket_start, dim_id)
) WITHOUT ROWID;
"""


def _create_v1(conn: sqlite3.Connection) -> None:
    # Version 0 is an empty database (a new or zero-length file): create everything.
    # executescript() would COMMIT the surrounding transaction, so run the
    # statements one by one to keep the migration atomic.
    for statement in _SCHEMA_V1.split(";"):
        sql = "\n".join(
            line for line in statement.splitlines() if not line.strip().startswith("--")
        )
        if sql.strip():
            conn.execute(sql)


def _migrate_v1_v2(conn: sqlite3.Connection) -> None:
    """Add dims.source and the pops registry (see "Schema versions")."""
    conn.execute(
        "CREATE TABLE pops ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " name TEXT NOT NULL UNIQUE,"
        " created_at INTEGER NOT NULL)"
    )
    # The unique key gains a column, which SQLite cannot alter: rebuild dims,
    # keeping every id (the count tables refer to them).
    conn.execute(
        "CREATE TABLE dims_v2 ("
        " id INTEGER PRIMARY KEY,"
        " kind TEXT NOT NULL CHECK (kind IN ('drop', 'pkt')),"
        " label TEXT NOT NULL, side TEXT NOT NULL, reason TEXT NOT NULL,"
        " location TEXT NOT NULL, iface TEXT NOT NULL, pop TEXT NOT NULL,"
        " source TEXT NOT NULL,"
        " UNIQUE (kind, label, side, reason, location, iface, pop, source))"
    )
    pop_v2 = f"CASE pop WHEN '' THEN '{POP_NONE}' ELSE pop END"
    source_v2 = (
        f"CASE WHEN kind = 'pkt' THEN '' WHEN label = '{UNLABELED}' THEN 'none' "
        "ELSE 'metadata' END"
    )
    conn.execute(
        "INSERT OR IGNORE INTO dims_v2 "
        "(id, kind, label, side, reason, location, iface, pop, source) "
        f"SELECT id, kind, label, side, reason, location, iface, {pop_v2}, {source_v2} "
        "FROM dims ORDER BY id"
    )
    # Two old keys that became one (pop '' and 'none' side by side) keep the
    # lower id; the other's counts are added into it.
    merged = conn.execute(
        "SELECT o.id, n.id FROM (SELECT id, kind, label, side, reason, location, iface, "
        f"{pop_v2} AS pop, {source_v2} AS source FROM dims) AS o "
        "JOIN dims_v2 AS n USING (kind, label, side, reason, location, iface, pop, source) "
        "WHERE o.id != n.id"
    ).fetchall()
    for old, new in merged:
        for table, cols, add in (
            ("drop_counts", "count", "count = count + excluded.count"),
            ("pkt_counts", "packets, bytes",
             "packets = packets + excluded.packets, bytes = bytes + excluded.bytes"),
        ):
            conn.execute(
                f"INSERT INTO {table} (tier, bucket_start, dim_id, {cols}) "
                f"SELECT tier, bucket_start, ?, {cols} FROM {table} WHERE dim_id = ? "
                f"ON CONFLICT (tier, bucket_start, dim_id) DO UPDATE SET {add}",
                (new, old),
            )
            conn.execute(f"DELETE FROM {table} WHERE dim_id = ?", (old,))
    conn.execute("DROP TABLE dims")
    conn.execute("ALTER TABLE dims_v2 RENAME TO dims")


# Migration from version N to N+1, applied in order inside one transaction.
_MIGRATIONS: Final[Mapping[int, Callable[[sqlite3.Connection], None]]] = {
    0: _create_v1,
    1: _migrate_v1_v2,
}

_DROP_UPSERT: Final = (
    "INSERT INTO drop_counts (tier, bucket_start, dim_id, count) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (tier, bucket_start, dim_id) DO UPDATE SET count = count + excluded.count"
)
# Rolling a coarser tier up from the next finer one: table, value columns, their sums, the upsert.
_ROLLUPS: Final = (
    ("drop_counts", "count", "SUM(count)", "count = count + excluded.count"),
    ("pkt_counts", "packets, bytes", "SUM(packets), SUM(bytes)",
     "packets = packets + excluded.packets, bytes = bytes + excluded.bytes"),
)
_PKT_UPSERT: Final = (
    "INSERT INTO pkt_counts (tier, bucket_start, dim_id, packets, bytes) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (tier, bucket_start, dim_id) DO UPDATE SET "
    "packets = packets + excluded.packets, bytes = bytes + excluded.bytes"
)


def _floor_to(value: int, step: int) -> int:
    return value - value % step


def _ceil_to(value: int, step: int) -> int:
    return -(-value // step) * step


def _epoch(dt: datetime, name: str) -> float:
    if dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None:
        # A naive datetime is ambiguous (local? UTC?) and would shift windows by the
        # host's offset without anyone noticing; parse_time() always returns aware ones.
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {dt.isoformat()}")
    return dt.timestamp()


def _check_count(value: object, what: str, delta: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got {value!r} in {delta!r}")
    if value < 0 or value > _MAX_INT64:
        raise ValueError(
            f"{what} must be between 0 and 2**63-1 (a delta, not a raw counter), "
            f"got {value} in {delta!r}"
        )
    return value


def _check_str(value: object, what: str, delta: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {value!r} in {delta!r}")
    return value


def _check_side(value: object, delta: object) -> str:
    if value not in SIDES:
        raise ValueError(f"side must be one of {', '.join(SIDES)}; got {value!r} in {delta!r}")
    return str(value)


def _check_source(d: DropDelta) -> str:
    if d.source is None:
        return "none" if d.label == UNLABELED else "metadata"
    if d.source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}; got {d.source!r} in {d!r}")
    return d.source


def _cover(
    start: int, end: int, steps: Sequence[int], rolled: Sequence[int | None] | None = None
) -> list[tuple[int, int, int]]:
    """Split [start, end) into (step, lo, hi) pieces reading the coarsest whole buckets.

    ``steps`` go from fine to coarse and each divides the next; start/end are
    multiples of steps[0]. The pieces are disjoint and their union is [start, end).
    ``rolled[i]`` (i >= 1): tier i holds complete buckets only below it (None:
    none), so a coarser tier is read only there; steps[0] is always complete.
    """
    pieces: list[tuple[int, int, int]] = []

    def split(lo: int, hi: int, idx: int) -> None:
        if lo >= hi:
            return
        step = steps[idx]
        if idx == 0:
            pieces.append((step, lo, hi))
            return
        limit = hi if rolled is None else rolled[idx]
        mid_lo, mid_hi = _ceil_to(lo, step), _floor_to(hi if limit is None else min(hi, limit), step)
        if limit is None and rolled is not None:
            mid_hi = mid_lo
        if mid_lo >= mid_hi:
            split(lo, hi, idx - 1)
            return
        pieces.append((step, mid_lo, mid_hi))
        split(lo, mid_lo, idx - 1)
        split(mid_hi, hi, idx - 1)

    split(start, end, len(steps) - 1)
    return pieces


def _dim_filter_sql(
    filters: Mapping[str, Sequence[str]] | None, allowed: Sequence[str]
) -> tuple[str, list[str]]:
    """SQL (against alias ``d``) for OR-within-key, AND-across-keys filters."""
    clauses: list[str] = []
    params: list[str] = []
    for key, values in (filters or {}).items():
        if key not in allowed:
            raise ValueError(f"unknown filter key {key!r}: use one of {', '.join(allowed)}")
        # A bare string is a Sequence[str] too; treat it as one value, not as characters.
        vals = [values] if isinstance(values, str) else list(values)
        for v in vals:
            if not isinstance(v, str):
                raise TypeError(f"filter {key!r} values must be strings, got {v!r}")
        if not vals:
            clauses.append("0")  # an empty list of accepted values accepts nothing
            continue
        clauses.append(f"d.{key} IN ({', '.join('?' * len(vals))})")
        params.extend(vals)
    return (" AND ".join(clauses) if clauses else "1"), params


def check_group_by(group_by: Sequence[str], allowed: Sequence[str]) -> list[str]:
    keys = [group_by] if isinstance(group_by, str) else list(group_by)
    for key in keys:
        if key not in allowed:
            raise ValueError(f"unknown group_by key {key!r}: use a subset of {', '.join(allowed)}")
    if len(set(keys)) != len(keys):
        raise ValueError(f"group_by repeats a key (listed twice): {keys}")
    return keys


class Store:
    """SQLite-backed counter history and label-id registry. See the module docstring."""

    def __init__(
        self,
        path: Path | str,
        tiers: tuple[Tier, ...] = DEFAULT_TIERS,
        *,
        max_label_id: int = DEFAULT_MAX_LABEL_ID,
        max_pop_id: int = DEFAULT_MAX_POP_ID,
    ) -> None:
        if str(path) == ":memory:" or str(path).startswith("file:"):
            # Readers use their own connections, which would each get a separate
            # in-memory database.
            raise ValueError(f"Store needs a file path, got {str(path)!r}")
        self._path = Path(path)
        self._tiers = self._check_tiers(tiers)
        self._steps = [t.step_s for t in self._tiers]
        if max_label_id < 1:
            raise ValueError(f"max_label_id must be >= 1, got {max_label_id}")
        self._max_label_id = max_label_id
        if max_pop_id < 1:
            raise ValueError(f"max_pop_id must be >= 1, got {max_pop_id}")
        self._max_pop_id = max_pop_id
        self._write_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._idle_readers: list[sqlite3.Connection] = []
        self._closed = False
        # dims ids by row (a _DimKey without its kind), per kind
        self._drop_dims: dict[_DropRow, int] = {}
        self._pkt_dims: dict[_PktRow, int] = {}
        self._last_prune: int | None = None

        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"history database {self._path}: cannot create directory {self._path.parent}: {exc}"
            ) from exc
        if self._path.is_dir():
            raise StoreError(
                f"history database {self._path} is a directory; "
                f"give a file path such as {self._path / 'history.db'}"
            )
        self._writer = self._connect(write=True)
        try:
            self._init_schema()
            self._last_dim_gc = self._read_meta_int("dims_gc_at")
            self._rolled = self._load_rolled()
        except BaseException:
            self._writer.close()
            raise

    # ----------------------------------------------------------------- setup

    @staticmethod
    def _check_tiers(tiers: tuple[Tier, ...]) -> tuple[Tier, ...]:
        if not tiers:
            raise ValueError("Store needs at least one tier")
        for finer, coarser in itertools.pairwise(tiers):
            # Queries read whole coarser buckets in place of runs of finer ones,
            # which is only exact if buckets nest and coarser data lives longer.
            if coarser.step_s <= finer.step_s or coarser.step_s % finer.step_s:
                raise ValueError(
                    "tier steps must increase and each divide the next: "
                    f"{finer.step_s}s then {coarser.step_s}s"
                )
            if coarser.retention_s < finer.retention_s:
                raise ValueError(
                    f"coarser tiers must be kept at least as long: {finer.step_s}s tier keeps "
                    f"{finer.retention_s}s but {coarser.step_s}s tier only {coarser.retention_s}s"
                )
        return tiers

    @property
    def path(self) -> Path:
        return self._path

    @property
    def tiers(self) -> tuple[Tier, ...]:
        return self._tiers

    def _error(self, action: str, exc: sqlite3.Error) -> StoreError:
        name = getattr(exc, "sqlite_errorname", "") or ""
        msg = str(exc)
        hint = ""
        if (
            name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT"))
            or "not a database" in msg
            or "malformed" in msg
        ):
            hint = (
                f"; the file is not a dropwatch history database or is corrupt: move it away "
                f"(e.g. mv {self._path} {self._path}.bad) and restart to begin a new history"
            )
        elif name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")):
            hint = (
                f"; check that {self._path} and its directory are writable by dropwatch "
                f"(SQLite also creates {self._path.name}-wal and {self._path.name}-shm beside it)"
            )
        elif name.startswith("SQLITE_FULL"):
            hint = "; the disk is full: free space or shorten the tier retention"
        elif name.startswith("SQLITE_BUSY"):
            hint = (
                "; another process holds the database "
                "(is a second dropwatch running on the same file?)"
            )
        return StoreError(f"history database {self._path}: cannot {action}: {msg}{hint}")

    def _connect(self, *, write: bool) -> sqlite3.Connection:
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves so a record()
            # is exactly one transaction. check_same_thread=False because pooled
            # reader connections move between threads (never used by two at once).
            conn = sqlite3.connect(
                self._path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._error("open", exc) from exc
        try:
            if write:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(
                        f"history database {self._path}: cannot switch to WAL journal mode "
                        f"(got {mode!r}); "
                        "put it on a local filesystem that supports shared memory"
                    )
                conn.execute("PRAGMA synchronous=NORMAL")
            else:
                # A reader must never write, even by mistake.
                conn.execute("PRAGMA query_only=ON")
        except sqlite3.Error as exc:
            conn.close()
            raise self._error("open", exc) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _init_schema(self) -> None:
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
            tables = {
                row[0]
                for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if "meta" in tables:
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is None:
                    raise StoreError(
                        f"history database {self._path} has a meta table without schema_version; "
                        f"move it away (e.g. mv {self._path} {self._path}.bad) and restart"
                    )
                try:
                    version = int(row[0])
                except ValueError:
                    raise StoreError(
                        f"history database {self._path} has an unreadable schema_version "
                        f"{row[0]!r}; move it away (e.g. mv {self._path} {self._path}.bad) "
                        "and restart"
                    ) from None
            elif tables - {"sqlite_sequence"}:
                raise StoreError(
                    f"{self._path} is a SQLite database but not a dropwatch history "
                    f"(tables: {', '.join(sorted(tables))}); choose another path or move it away"
                )
            else:
                version = 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"history database {self._path} has schema version {version}, but this "
                    f"dropwatch only understands up to {SCHEMA_VERSION}: it was written by a newer "
                    "dropwatch. "
                    "Upgrade dropwatch, or point it at another database file"
                )
            while version < SCHEMA_VERSION:
                migrate = _MIGRATIONS.get(version)
                if migrate is None:
                    raise StoreError(
                        f"history database {self._path} has schema version {version}, which this "
                        "dropwatch cannot migrate; move it away and restart"
                    )
                migrate(conn)
                version += 1
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(version),),
                )
            # Always write something at open: a read-only file or directory then
            # fails at startup with a clear error instead of at the first poll.
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('opened_at', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(int(time.time())),),
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(conn)
            raise self._error("open", exc) from exc
        except BaseException:
            self._rollback(conn)
            raise

    def _load_rolled(self) -> list[int | None]:
        """Per tier, where its rolled-up (complete) buckets end; see "Tiers"."""
        rolled: list[int | None] = [None] * len(self._steps)
        for i, step in enumerate(self._steps[1:], 1):
            value = self._read_meta_int(f"rolled_{step}")
            rolled[i] = value if value is not None else self._initial_rolled(step)
        return rolled

    def _initial_rolled(self, step: int) -> int | None:
        """A database without the mark: one written by a dropwatch that added
        every delta into every tier (all its buckets are complete), or a tier
        new to it (rolled up from the finest tier's rows), or empty."""
        def edge(fn: str, tier: int) -> int | None:
            found = [
                self._writer.execute(f"SELECT {fn}(bucket_start) FROM {t} WHERE tier = ?", (tier,)).fetchone()[0]
                for t in ("drop_counts", "pkt_counts")
            ]
            vals = [int(v) for v in found if v is not None]
            return (max(vals) if fn == "MAX" else min(vals)) if vals else None

        try:
            coarse_max = edge("MAX", step)
            fine_max = edge("MAX", self._steps[0])
            fine_min = edge("MIN", self._steps[0])
        except sqlite3.Error as exc:
            raise self._error("open", exc) from exc
        top = self._steps[-1]
        if coarse_max is not None:
            return _floor_to(max(coarse_max, fine_max if fine_max is not None else coarse_max), top) + top
        if fine_min is not None:
            return _floor_to(fine_min, step)
        return None

    def _advance_rollups(self, conn: sqlite3.Connection, epoch: int) -> list[int | None]:
        """Roll every closed bucket (before the one containing ``epoch``) of
        each coarser tier up from the next finer tier, in the caller's
        transaction; returns the new marks (to keep after COMMIT)."""
        new = list(self._rolled)
        for i, step in enumerate(self._steps[1:], 1):
            target = _floor_to(epoch, step)
            mark = new[i]
            if mark is not None and target > mark:
                for table, cols, sums, add in _ROLLUPS:
                    conn.execute(
                        f"INSERT INTO {table} (tier, bucket_start, dim_id, {cols}) "
                        f"SELECT ?, bucket_start - bucket_start % ? AS b, dim_id, {sums} FROM {table} "
                        "WHERE tier = ? AND bucket_start >= ? AND bucket_start < ? "
                        f"GROUP BY b, dim_id ORDER BY b, dim_id "
                        f"ON CONFLICT (tier, bucket_start, dim_id) DO UPDATE SET {add}",
                        (step, step, self._steps[i - 1], mark, target),
                    )
            if mark is None or target > mark:
                new[i] = target
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (f"rolled_{step}", str(target)),
                )
        return new

    def _read_meta_int(self, key: str) -> int | None:
        try:
            row = self._writer.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise self._error("read metadata", exc) from exc
        return None if row is None else int(row[0])

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            # The original error is the useful one; SQLite may already have
            # rolled back on its own (e.g. after SQLITE_FULL).
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"history database {self._path} is closed")

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        self._check_open()
        with self._pool_lock:
            conn = self._idle_readers.pop() if self._idle_readers else None
        if conn is None:
            conn = self._connect(write=False)
        try:
            yield conn
        finally:
            self._rollback(conn)
            with self._pool_lock:
                keep = not self._closed and len(self._idle_readers) < _MAX_IDLE_READERS
                if keep:
                    self._idle_readers.append(conn)
            if not keep:
                conn.close()

    def close(self) -> None:
        """Close all connections. Idempotent; later calls on the store raise StoreError."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            with self._pool_lock:
                idle, self._idle_readers = self._idle_readers, []
            for conn in idle:
                conn.close()
            self._writer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---------------------------------------------------------------- labels

    def label_ids(self, names: Iterable[str]) -> dict[str, int]:
        """Return the id of each name, assigning new ids to unknown names.

        Ids are stable across restarts and never reused. ``unlabeled`` is always 0
        and not stored. Either every new name gets an id or none does.
        """
        return self._assign_ids("labels", "label", names, {UNLABELED: UNLABELED_ID},
                                self._max_label_id, "max_label_id", "removing labels from the rules")

    def pop_ids(self, names: Iterable[str]) -> dict[str, int]:
        """Like label_ids, for landing PoP names: ids 1..max_pop_id (default 4095),
        stable across restarts and never reused. ``none`` (0) and ``unknown``
        (0xFFFF) are the kernel's and not stored."""
        return self._assign_ids("pops", "PoP", names, {POP_NONE: 0, POP_UNKNOWN: 0xFFFF},
                                self._max_pop_id, "max_pop_id", "removing PoPs from the rules")

    def _assign_ids(self, table: str, what: str, names: Iterable[str], reserved: Mapping[str, int],
                    max_id: int, knob: str, removing: str) -> dict[str, int]:
        wanted: dict[str, None] = {}  # ordered set: ids are assigned in the order given
        result: dict[str, int] = {}
        for name in names:
            if not isinstance(name, str) or not name:
                raise ValueError(f"{what} names must be non-empty strings, got {name!r}")
            if name in reserved:
                result[name] = reserved[name]
            else:
                wanted[name] = None
        with self._write_lock:
            self._check_open()
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
                known = self._lookup_ids(conn, table, list(wanted))
                new = [n for n in wanted if n not in known]
                if new:
                    row = conn.execute(
                        "SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)
                    ).fetchone()
                    highest = int(row[0]) if row else 0
                    if highest + len(new) > max_id:
                        raise StoreError(
                            f"{what} id space exhausted: {len(new)} new {what}(s) need ids but only "
                            f"{max(0, max_id - highest)} of {max_id} "
                            f"remain (ids are never reused, so {removing} "
                            "does not free any); "
                            f"start a new history database to reset ids, or raise {knob}"
                        )
                    now_s = int(time.time())
                    conn.executemany(
                        f"INSERT INTO {table} (name, created_at) VALUES (?, ?)",
                        [(n, now_s) for n in new],
                    )
                    known.update(self._lookup_ids(conn, table, new))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(conn)
                raise self._error(f"assign {what} ids", exc) from exc
            except BaseException:
                self._rollback(conn)
                raise
        result.update(known)
        return result

    @staticmethod
    def _lookup_ids(conn: sqlite3.Connection, table: str, names: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        # Chunked to stay under SQLite's bound-parameter limit.
        for i in range(0, len(names), 500):
            chunk = names[i : i + 500]
            sql = f"SELECT name, id FROM {table} WHERE name IN ({', '.join('?' * len(chunk))})"
            found.update((str(n), int(i_)) for n, i_ in conn.execute(sql, chunk))
        return found

    def pop_names(self) -> dict[int, str]:
        """All assigned PoP ids and their names, including 0 -> 'none' and 0xFFFF -> 'unknown'."""
        try:
            with self._reader() as conn:
                rows = conn.execute("SELECT id, name FROM pops ORDER BY id").fetchall()
        except sqlite3.Error as exc:
            raise self._error("read PoPs", exc) from exc
        return {0: POP_NONE, **{int(i): str(n) for i, n in rows}, 0xFFFF: POP_UNKNOWN}

    def label_names(self) -> dict[int, str]:
        """All assigned ids and their names, including 0 -> 'unlabeled'."""
        try:
            with self._reader() as conn:
                rows = conn.execute("SELECT id, name FROM labels ORDER BY id").fetchall()
        except sqlite3.Error as exc:
            raise self._error("read labels", exc) from exc
        return {UNLABELED_ID: UNLABELED, **{int(i): str(n) for i, n in rows}}

    def label_names_seen(self) -> list[str]:
        """Distinct labels that appear in retained history (drops or packets), sorted."""
        try:
            with self._reader() as conn:
                rows = conn.execute("SELECT DISTINCT label FROM dims ORDER BY label").fetchall()
        except sqlite3.Error as exc:
            raise self._error("read labels", exc) from exc
        return [str(r[0]) for r in rows]

    # ---------------------------------------------------------------- writes

    def record(
        self, ts: datetime, drops: Sequence[DropDelta], packets: Sequence[PacketDelta]
    ) -> None:
        """Add the deltas into the bucket containing ``ts`` (finest tier; see "Tiers"), atomically.

        Deltas with a zero count are skipped; duplicate keys are summed. Bad
        deltas raise ValueError before anything is written; a database failure
        rolls the whole call back and raises StoreError.
        """
        epoch = math.floor(_epoch(ts, "ts"))
        drop_sums: dict[_DropRow, int] = {}
        for d in drops:
            n = _check_count(d.count, "count", d)
            key: _DropRow = (
                _check_str(d.label, "label", d),
                _check_side(d.side, d),
                _check_str(d.reason, "reason", d),
                _check_str(d.location, "location", d),
                _check_str(d.iface, "iface", d),
                _check_str(d.pop, "pop", d) or POP_NONE,
                _check_source(d),
            )
            if n:
                drop_sums[key] = drop_sums.get(key, 0) + n
        pkt_sums: dict[_PktRow, tuple[int, int]] = {}
        for p in packets:
            np_ = _check_count(p.packets, "packets", p)
            nb = _check_count(p.bytes, "bytes", p)
            pkey: _PktRow = (
                _check_str(p.label, "label", p),
                _check_side(p.side, p),
                _check_str(p.iface, "iface", p),
                _check_str(p.pop, "pop", p) or POP_NONE,
            )
            if np_ or nb:
                old = pkt_sums.get(pkey, (0, 0))
                pkt_sums[pkey] = (old[0] + np_, old[1] + nb)

        with self._write_lock:
            self._check_open()
            if drop_sums or pkt_sums:
                self._record_locked(epoch, drop_sums, pkt_sums)
            self._maybe_prune_locked(epoch)

    def record_rows(
        self,
        ts: datetime,
        drops: Mapping[tuple[str, str, str, str, str, str, str], int],
        packets: Mapping[tuple[str, str, str, str], Sequence[int]],
    ) -> None:
        """record() for deltas already keyed by name, as the collector keeps
        them: drops (label, side, reason, location, iface, pop, source) ->
        count; packets (label, side, iface, pop) -> (packets, bytes). The same
        rules are checked over all rows at once instead of per delta object
        (a delta that breaks one goes through record() for its error)."""
        epoch = math.floor(_epoch(ts, "ts"))
        rows, counts = list(drops), list(drops.values())
        prows = list(packets)
        pvals = [(v[0], v[1]) for v in packets.values()]
        flat_counts = counts + [x for v in pvals for x in v]
        ok = (
            set(map(len, rows)) <= {7}
            and set(map(len, prows)) <= {4}
            and set(map(type, itertools.chain.from_iterable(rows))) <= {str}
            and set(map(type, itertools.chain.from_iterable(prows))) <= {str}
            and set(map(type, flat_counts)) <= {int}
            and (not flat_counts or (min(flat_counts) >= 0 and max(flat_counts) <= _MAX_INT64))
            and {r[1] for r in rows} | {r[1] for r in prows} <= set(SIDES)
            and {r[6] for r in rows} <= set(SOURCES)
            and "" not in {r[5] for r in rows}
            and "" not in {r[3] for r in prows}
        )
        if not ok:
            self.record(
                ts,
                [DropDelta(r[0], r[1], r[2], r[3], r[4], r[5], n, r[6]) for r, n in zip(rows, counts, strict=True)],
                [PacketDelta(r[0], r[1], r[2], r[3], v[0], v[1]) for r, v in zip(prows, pvals, strict=True)],
            )
            return
        drop_sums: Mapping[_DropRow, int] = (
            drops if 0 not in counts else {r: n for r, n in zip(rows, counts, strict=True) if n}
        )
        pkt_sums = {r: v for r, v in zip(prows, pvals, strict=True) if v[0] or v[1]}
        with self._write_lock:
            self._check_open()
            if drop_sums or pkt_sums:
                self._record_locked(epoch, drop_sums, pkt_sums)
            self._maybe_prune_locked(epoch)

    def _record_locked(
        self,
        epoch: int,
        drop_sums: Mapping[_DropRow, int],
        pkt_sums: Mapping[_PktRow, tuple[int, int]],
    ) -> None:
        conn = self._writer
        # New dim ids only become visible to the cache after COMMIT, so a rolled
        # back record cannot leave ids pointing at rows that do not exist.
        new_drop: dict[_DropRow, int] = {}
        new_pkt: dict[_PktRow, int] = {}
        try:
            conn.execute("BEGIN IMMEDIATE")
            # The finest tier always; a coarser one only if this bucket of it
            # was rolled up already (a delta for the past), else its roll-up
            # will count it.
            rolled = self._advance_rollups(conn, epoch)
            buckets = [
                (step, _floor_to(epoch, step)) for i, step in enumerate(self._steps)
                if i == 0 or (rolled[i] is not None and _floor_to(epoch, step) < rolled[i])  # type: ignore[operator]
            ]
            # One dim lookup per key, and rows in primary-key order (tier,
            # bucket, dim id): each tier's bucket is one run of adjacent
            # b-tree pages instead of three interleaved ones.
            drop_ids = sorted(zip(self._dim_ids(conn, "drop", drop_sums, new_drop), drop_sums.values(), strict=True))
            # (generators: 3 rows per key are never all held at once)
            conn.executemany(_DROP_UPSERT, (
                (step, start, dim, n) for step, start in buckets for dim, n in drop_ids
            ))
            pkt_ids = sorted(zip(self._dim_ids(conn, "pkt", pkt_sums, new_pkt), pkt_sums.values(), strict=True))
            conn.executemany(_PKT_UPSERT, (
                (step, start, dim, np_, nb) for step, start in buckets for dim, (np_, nb) in pkt_ids
            ))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(conn)
            raise self._error("record counters", exc) from exc
        except BaseException:
            self._rollback(conn)
            raise
        self._drop_dims.update(new_drop)
        self._pkt_dims.update(new_pkt)
        self._rolled = rolled

    def _dim_ids(
        self, conn: sqlite3.Connection, kind: str, rows: Iterable[tuple[str, ...]], new: dict[Any, int]
    ) -> list[int]:
        """The dims id of each row (a drop or packet row without its kind)."""
        cache: dict[Any, int] = self._drop_dims if kind == "drop" else self._pkt_dims
        ids = list(map(cache.get, rows))
        if None in ids:
            for i, row in enumerate(rows):
                if ids[i] is None:
                    ids[i] = self._dim_id(conn, kind, row, new)
        return ids  # type: ignore[return-value]

    def _dim_id(self, conn: sqlite3.Connection, kind: str, row: tuple[str, ...], new: dict[Any, int]) -> int:
        dim = new.get(row)
        if dim is None:
            key = (kind, *row) if kind == "drop" else ("pkt", row[0], row[1], "", "", row[2], row[3], "")
            found = conn.execute(
                "SELECT id FROM dims WHERE kind = ? AND label = ? AND side = ? AND reason = ? "
                "AND location = ? AND iface = ? AND pop = ? AND source = ?",
                key,
            ).fetchone()
            if found is None:
                cur = conn.execute(
                    "INSERT INTO dims (kind, label, side, reason, location, iface, pop, source) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    key,
                )
                dim = cur.lastrowid
                assert dim is not None
            else:
                dim = int(found[0])
            new[row] = dim
        return dim

    def prune(self, now: datetime | None = None) -> None:
        """Delete buckets past each tier's retention, data of tiers no longer configured,
        and dimension keys no longer referenced. ``now`` defaults to the current time."""
        epoch = math.floor(_epoch(now, "now")) if now is not None else int(time.time())
        with self._write_lock:
            self._check_open()
            self._prune_locked(epoch, collect_dims=True)

    def _maybe_prune_locked(self, epoch: int) -> None:
        # abs(): after a clock step backwards, still prune rather than wait it out.
        if self._last_prune is not None and abs(epoch - self._last_prune) < _PRUNE_EVERY_S:
            return
        collect = self._last_dim_gc is None or abs(epoch - self._last_dim_gc) >= _DIM_GC_EVERY_S
        try:
            self._prune_locked(epoch, collect_dims=collect)
        except StoreError as exc:
            # The record itself is committed; failing it now would make the
            # caller retry and double count. Try again next minute.
            log.warning("%s", exc)
            self._last_prune = epoch

    def _prune_locked(self, epoch: int, *, collect_dims: bool) -> None:
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
            # Closed buckets are rolled up before any finer row can expire.
            rolled = self._advance_rollups(conn, epoch)
            for table in ("drop_counts", "pkt_counts"):
                for tier in self._tiers:
                    # Keep the bucket containing now - retention: a query whose since
                    # is within retention reads from floor(since, step).
                    cutoff = _floor_to(epoch - tier.retention_s, tier.step_s)
                    conn.execute(
                        f"DELETE FROM {table} WHERE tier = ? AND bucket_start < ?",
                        (tier.step_s, cutoff),
                    )
                for stale in self._stored_tiers(conn, table):
                    if stale not in self._steps:
                        conn.execute(f"DELETE FROM {table} WHERE tier = ?", (stale,))
            if collect_dims:
                conn.execute(
                    "DELETE FROM dims WHERE kind = 'drop' "
                    "AND id NOT IN (SELECT dim_id FROM drop_counts)"
                )
                conn.execute(
                    "DELETE FROM dims WHERE kind = 'pkt' "
                    "AND id NOT IN (SELECT dim_id FROM pkt_counts)"
                )
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('dims_gc_at', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(epoch),),
                )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(conn)
            raise self._error("prune old history", exc) from exc
        except BaseException:
            self._rollback(conn)
            raise
        self._rolled = rolled
        self._last_prune = epoch
        if collect_dims:
            self._last_dim_gc = epoch
            self._drop_dims.clear()
            self._pkt_dims.clear()

    @staticmethod
    def _stored_tiers(conn: sqlite3.Connection, table: str) -> list[int]:
        # Walk distinct tiers with index seeks (MIN over the primary key) instead
        # of a full scan: there are only a handful of tiers but millions of rows.
        found: list[int] = []
        row = conn.execute(f"SELECT MIN(tier) FROM {table}").fetchone()
        while row is not None and row[0] is not None:
            found.append(int(row[0]))
            row = conn.execute(
                f"SELECT MIN(tier) FROM {table} WHERE tier > ?", (found[-1],)
            ).fetchone()
        return found

    # --------------------------------------------------------------- queries

    def _plan(self, since: datetime, until: datetime, now: datetime | None) -> tuple[int, int, int]:
        """Return (tier index, since epoch, until epoch) for a query window."""
        since_s = math.floor(_epoch(since, "since"))
        until_s = math.ceil(_epoch(until, "until"))
        if until_s < since_s:
            raise ValueError(f"until ({until.isoformat()}) is before since ({since.isoformat()})")
        now_s = math.floor(_epoch(now, "now")) if now is not None else int(time.time())
        for idx, tier in enumerate(self._tiers):
            if since_s >= now_s - tier.retention_s:
                return idx, since_s, until_s
        # Older than every retention: the longest-kept tier has whatever is left.
        return len(self._tiers) - 1, since_s, until_s

    def _total_pieces(self, idx: int, since_s: int, until_s: int) -> list[tuple[int, int, int]]:
        step = self._steps[idx]
        start = _floor_to(since_s, step)
        end = _ceil_to(until_s, step)  # buckets with bucket_start < until
        # Finer tiers than the query's are read only where coarser ones are
        # not rolled up yet (the last bucket or so, always within their retention).
        return _cover(start, end, self._steps, self._rolled)

    def _aggregate(
        self,
        table: str,
        value_cols: Sequence[str],
        pieces: Sequence[tuple[int, int, int]],
        filters: Mapping[str, Sequence[str]] | None,
        keys: Sequence[str],
        allowed: Sequence[str],
    ) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
        where, fparams = _dim_filter_sql(filters, allowed)
        if not pieces:
            return [((), tuple(0 for _ in value_cols))] if not keys else []
        # Each piece is summed per dim id while it is scanned in primary-key
        # order (a small temp b-tree of dim ids), and only those sums are
        # joined with dims and grouped by name: joining and grouping every
        # count row by strings cost 2-4x more. A filter picks the dim ids
        # first (one subquery per piece, run once).
        sums_in = ", ".join(f"SUM(c.{v}) AS {v}" for v in value_cols)
        dim_filter = "" if where == "1" else f" AND c.dim_id IN (SELECT d.id FROM dims AS d WHERE {where})"
        arm = (
            f"SELECT c.dim_id AS dim_id, {sums_in} FROM {table} AS c "
            f"WHERE c.tier = ? AND c.bucket_start >= ? AND c.bucket_start < ?{dim_filter} GROUP BY c.dim_id"
        )
        params: list[object] = []
        for piece in pieces:
            params.extend(piece)
            if dim_filter:
                params.extend(fparams)
        cols = "".join(f"d.{k}, " for k in keys)
        sums = ", ".join(f"COALESCE(SUM(x.{v}), 0)" for v in value_cols)
        sql = (
            f"SELECT {cols}{sums} FROM ({' UNION ALL '.join([arm] * len(pieces))}) AS x "
            "CROSS JOIN dims AS d ON d.id = x.dim_id"
        )
        if keys:
            sql += f" GROUP BY {', '.join(f'd.{k}' for k in keys)}"
        try:
            # One statement, so all pieces come from the same WAL snapshot.
            with self._reader() as conn:
                rows = conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._error("query history", exc) from exc
        n = len(keys)
        return [(tuple(str(v) for v in row[:n]), tuple(int(v) for v in row[n:])) for row in rows]

    def query_drops(
        self,
        since: datetime,
        until: datetime,
        *,
        filters: Mapping[str, Sequence[str]] | None = None,
        group_by: Sequence[str] = (),
        limit: int | None = None,
        now: datetime | None = None,
    ) -> DropQueryResult:
        """Drops in [since, until), grouped, sorted by count desc then keys asc.

        Each group has exactly the ``group_by`` keys plus ``count``; an empty
        ``group_by`` gives one group with only ``count``. ``total`` sums all
        matching drops, not just the ``limit`` groups returned.
        """
        keys = check_group_by(group_by, DROP_DIMS)
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
        idx, since_s, until_s = self._plan(since, until, now)
        rows = self._aggregate(
            "drop_counts",
            ["count"],
            self._total_pieces(idx, since_s, until_s),
            filters,
            keys,
            DROP_DIMS,
        )
        rows.sort(key=lambda r: (-r[1][0], r[0]))
        total = sum(r[1][0] for r in rows)
        groups: list[dict[str, str | int]] = []
        for values, (count,) in rows if limit is None else rows[:limit]:
            group: dict[str, str | int] = dict(zip(keys, values, strict=True))
            group["count"] = count
            groups.append(group)
        return DropQueryResult(total=total, groups=groups, step_s=self._steps[idx])

    def query_packets(
        self,
        since: datetime,
        until: datetime,
        *,
        filters: Mapping[str, Sequence[str]] | None = None,
        group_by: Sequence[str] = (),
        now: datetime | None = None,
    ) -> list[dict[str, str | int]]:
        """Ingress packets/bytes in [since, until), grouped by a subset of PACKET_DIMS,
        sorted by packets desc then keys asc."""
        keys = check_group_by(group_by, PACKET_DIMS)
        idx, since_s, until_s = self._plan(since, until, now)
        rows = self._aggregate(
            "pkt_counts",
            ["packets", "bytes"],
            self._total_pieces(idx, since_s, until_s),
            filters,
            keys,
            PACKET_DIMS,
        )
        rows.sort(key=lambda r: (-r[1][0], r[0]))
        out: list[dict[str, str | int]] = []
        for values, (pkts, nbytes) in rows:
            group: dict[str, str | int] = dict(zip(keys, values, strict=True))
            group["packets"] = pkts
            group["bytes"] = nbytes
            out.append(group)
        return out

    def timeseries(
        self,
        since: datetime,
        until: datetime,
        step_s: int,
        *,
        filters: Mapping[str, Sequence[str]] | None = None,
        group_by: Sequence[str] = (),
        now: datetime | None = None,
    ) -> TimeseriesResult:
        """Drops per bucket of the effective step, zero-filled, one series per group.

        The effective step is ``step_s`` rounded up to a multiple of the chosen
        tier's step. Buckets start at ``floor(since, step)`` and run while
        ``bucket_start < until``; each bucket is whole (the last may extend past
        ``until``). Series are sorted by their total desc then group keys asc;
        an empty ``group_by`` always yields exactly one series.
        Raises ValueError if more than MAX_TIMESERIES_BUCKETS buckets would result.
        """
        if not isinstance(step_s, int) or isinstance(step_s, bool) or step_s <= 0:
            raise ValueError(f"step_s must be a positive int, got {step_s!r}")
        keys = check_group_by(group_by, DROP_DIMS)
        idx, since_s, until_s = self._plan(since, until, now)
        tier_step = self._steps[idx]
        step = _ceil_to(max(step_s, tier_step), tier_step)
        start = _floor_to(since_s, step)
        n_buckets = max(0, -(-(until_s - start) // step))
        if n_buckets > MAX_TIMESERIES_BUCKETS:
            need = _ceil_to(-(-(until_s - start) // MAX_TIMESERIES_BUCKETS), tier_step)
            raise ValueError(
                f"timeseries would have {n_buckets} buckets of {step}s "
                f"(limit {MAX_TIMESERIES_BUCKETS}); "
                f"use a step of at least {need + tier_step}s or a shorter time range"
            )
        end = start + n_buckets * step
        # Any tier whose buckets nest inside the output buckets gives the same
        # sums; the coarsest such tier reads the fewest rows (finer ones only
        # where it is not rolled up yet).
        read_step = max(s for s in self._steps[idx:] if step % s == 0)
        ri = self._steps.index(read_step)
        pieces = _cover(start, end, self._steps[: ri + 1], self._rolled[: ri + 1]) if n_buckets else []
        where, fparams = _dim_filter_sql(filters, DROP_DIMS)
        cols = "".join(f"d.{k}, " for k in keys)
        # Without group keys, grouping by the raw bucket_start follows the primary
        # key order, so SQLite aggregates while scanning instead of filling a temp
        # b-tree (3x faster on dense data); with keys a temp b-tree is needed
        # anyway and grouping by output slot keeps it small. Rows are folded into
        # output slots below either way.
        group_sql = f"slot{''.join(f', d.{k}' for k in keys)}" if keys else "c.bucket_start"
        arm = (
            f"SELECT {cols}(c.bucket_start - ?) / ? * ? + ? AS slot, SUM(c.count) "
            "FROM drop_counts AS c CROSS JOIN dims AS d ON d.id = c.dim_id "
            f"WHERE c.tier = ? AND c.bucket_start >= ? AND c.bucket_start < ? AND {where} "
            f"GROUP BY {group_sql}"
        )
        sql = " UNION ALL ".join([arm] * len(pieces))
        params: list[object] = []
        for tier, lo, hi in pieces:
            params.extend([start, step, step, start, tier, lo, hi, *fparams])
        try:
            # One statement, so all pieces come from the same WAL snapshot.
            with self._reader() as conn:
                rows = conn.execute(sql, params).fetchall() if pieces else []
        except sqlite3.Error as exc:
            raise self._error("query history", exc) from exc
        n = len(keys)
        by_group: dict[tuple[str, ...], list[int]] = {}
        if not keys:
            by_group[()] = [0] * n_buckets
        for row in rows:
            counts = by_group.setdefault(tuple(str(v) for v in row[:n]), [0] * n_buckets)
            counts[(int(row[n]) - start) // step] += int(row[n + 1])
        ordered = sorted(by_group.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
        series: list[SeriesEntry] = [
            {"group": dict(zip(keys, group, strict=True)), "counts": counts}
            for group, counts in ordered
        ]
        return TimeseriesResult(
            step_s=step, buckets=[start + i * step for i in range(n_buckets)], series=series
        )

"""Spec for the counter history store (dropwatch.store)."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dropwatch.store import (
    DEFAULT_TIERS,
    MAX_TIMESERIES_BUCKETS,
    SCHEMA_VERSION,
    DropDelta,
    PacketDelta,
    SeriesEntry,
    Store,
    StoreError,
    Tier,
)

pytestmark = pytest.mark.unit

# 2026-11-24T12:00:00Z, a multiple of 3600 (and so of every default step).
NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
T0 = int(NOW.timestamp())


def at(seconds_from_now: float) -> datetime:
    return NOW + timedelta(seconds=seconds_from_now)


def drop(
    label: str = "acme",
    reason: str = "NO_SOCKET",
    count: int = 1,
    *,
    side: str = "eyeball",
    location: str = "tcp_v4_rcv",
    iface: str = "eth0",
    pop: str = "ams",
) -> DropDelta:
    return DropDelta(label, side, reason, location, iface, pop, count)


def pkt(
    label: str = "acme",
    packets: int = 10,
    nbytes: int = 1000,
    *,
    side: str = "eyeball",
    iface: str = "eth0",
    pop: str = "ams",
) -> PacketDelta:
    return PacketDelta(label, side, iface, pop, packets, nbytes)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "hist" / "history.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with Store(db_path) as s:
        yield s


def rows_per_tier(path: Path, table: str = "drop_counts") -> dict[int, int]:
    """Peek at the raw tables (read-only) to check pruning per tier."""
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute(f"SELECT tier, COUNT(*) FROM {table} GROUP BY tier").fetchall())
    finally:
        conn.close()


def total(store: Store, since: datetime, until: datetime = NOW, **kw: Any) -> int:
    return store.query_drops(since, until, now=NOW, **kw).total


# --------------------------------------------------------------------- opening


class TestOpening:
    def test_creates_parent_directory_and_wal_database(self, db_path: Path) -> None:
        assert not db_path.parent.exists()
        with Store(db_path):
            pass
        conn = sqlite3.connect(db_path)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            assert version == (str(SCHEMA_VERSION),)
        finally:
            conn.close()

    def test_garbage_file_names_the_path_and_says_to_move_it_away(self, tmp_path: Path) -> None:
        path = tmp_path / "history.db"
        path.write_bytes(b"definitely not sqlite " * 100)
        with pytest.raises(StoreError) as err:
            Store(path)
        assert str(path) in str(err.value)
        assert "move it away" in str(err.value)

    def test_foreign_sqlite_database_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "other.db"
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE customers (id INTEGER)")
        conn.commit()
        conn.close()
        with pytest.raises(StoreError, match="not a dropwatch history"):
            Store(path)

    def test_directory_path_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(StoreError, match="is a directory"):
            Store(tmp_path)

    def test_parent_that_is_a_file_is_refused(self, tmp_path: Path) -> None:
        (tmp_path / "afile").write_text("x")
        with pytest.raises(StoreError, match="cannot create directory"):
            Store(tmp_path / "afile" / "history.db")

    def test_read_only_database_fails_at_open(self, db_path: Path) -> None:
        Store(db_path).close()
        if os.geteuid() != 0:
            db_path.chmod(0o444)
            undo = None
        else:
            # Root ignores permission bits; the immutable attribute still applies.
            chattr = shutil.which("chattr")
            if (
                chattr is None
                or subprocess.run(
                    [chattr, "+i", str(db_path)], check=False, capture_output=True
                ).returncode
            ):
                pytest.skip("cannot make a file read-only for root here (no chattr +i support)")
            undo = [chattr, "-i", str(db_path)]
        try:
            with pytest.raises(StoreError) as err:
                Store(db_path)
            assert str(db_path) in str(err.value)
            assert "writable" in str(err.value)
        finally:
            if undo:
                subprocess.run(undo, check=True)

    def test_newer_schema_version_is_refused(self, db_path: Path) -> None:
        Store(db_path).close()
        conn = sqlite3.connect(db_path)
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
        )
        conn.commit()
        conn.close()
        with pytest.raises(StoreError) as err:
            Store(db_path)
        assert f"schema version {SCHEMA_VERSION + 1}" in str(err.value)
        assert "newer dropwatch" in str(err.value)

    def test_older_schema_version_is_migrated(self, tmp_path: Path) -> None:
        # Version 0: a database holding only the meta table (and an empty file).
        path = tmp_path / "v0.db"
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '0')")
        conn.commit()
        conn.close()
        with Store(path) as s:
            s.record(at(-5), [drop(count=3)], [])
            assert total(s, at(-60)) == 3
        empty = tmp_path / "empty.db"
        empty.touch()
        with Store(empty) as s:
            assert s.label_ids(["acme"]) == {"acme": 1}

    def test_memory_database_is_refused(self) -> None:
        with pytest.raises(ValueError, match="file path"):
            Store(":memory:")

    @pytest.mark.parametrize(
        "tiers",
        [
            (),
            (Tier(10, 3600), Tier(15, 7200)),  # 15 is not a multiple of 10
            (Tier(300, 3600), Tier(10, 7200)),  # not increasing
            (Tier(10, 86400), Tier(300, 3600)),  # coarser kept shorter
        ],
    )
    def test_inconsistent_tiers_are_refused(self, db_path: Path, tiers: tuple[Tier, ...]) -> None:
        with pytest.raises(ValueError):
            Store(db_path, tiers)

    def test_tier_fields_are_validated(self) -> None:
        with pytest.raises(ValueError, match="step_s"):
            Tier(0, 10)
        with pytest.raises(ValueError, match="shorter than its step"):
            Tier(60, 30)

    def test_closed_store_refuses_use_and_close_is_idempotent(self, db_path: Path) -> None:
        s = Store(db_path)
        s.close()
        s.close()
        with pytest.raises(StoreError, match="closed"):
            s.record(NOW, [drop()], [])
        with pytest.raises(StoreError, match="closed"):
            s.query_drops(at(-60), NOW, now=NOW)


# ------------------------------------------------------------------- recording


class TestRecordAndQuery:
    def test_totals_filters_group_by_and_limit(self, store: Store) -> None:
        store.record(
            at(-30),
            [
                drop("acme", "NO_SOCKET", 5),
                drop("acme", "NETFILTER_DROP", 2),
                drop("globex", "NO_SOCKET", 7, side="origin"),
                drop("unlabeled", "OTHERHOST", 1, side="unknown", iface="eth1"),
            ],
            [],
        )
        store.record(at(-20), [drop("acme", "NO_SOCKET", 4)], [])

        assert total(store, at(-60)) == 19

        by_label = store.query_drops(at(-60), NOW, group_by=["label"], now=NOW)
        assert by_label.groups == [
            {"label": "acme", "count": 11},
            {"label": "globex", "count": 7},
            {"label": "unlabeled", "count": 1},
        ]
        assert by_label.step_s == 10

        limited = store.query_drops(at(-60), NOW, group_by=["label", "reason"], limit=2, now=NOW)
        assert limited.groups == [
            {"label": "acme", "reason": "NO_SOCKET", "count": 9},
            {"label": "globex", "reason": "NO_SOCKET", "count": 7},
        ]
        assert limited.total == 19  # total covers groups cut off by the limit

        # OR within a key, AND across keys.
        f = store.query_drops(
            at(-60),
            NOW,
            filters={"label": ["acme", "globex"], "reason": ["NO_SOCKET"]},
            group_by=["side"],
            now=NOW,
        )
        assert f.total == 16
        assert f.groups == [{"side": "eyeball", "count": 9}, {"side": "origin", "count": 7}]

        assert total(store, at(-60), filters={"iface": ["eth1"]}) == 1
        assert total(store, at(-60), filters={"label": []}) == 0  # no accepted values
        assert total(store, at(-60), filters={"label": "globex"}) == 7  # a bare str is one value

    def test_empty_group_by_is_one_group_with_only_count(self, store: Store) -> None:
        assert store.query_drops(at(-60), NOW, now=NOW).groups == [{"count": 0}]
        store.record(at(-5), [drop(count=3)], [])
        assert store.query_drops(at(-60), NOW, now=NOW).groups == [{"count": 3}]

    def test_ties_sort_by_keys_ascending(self, store: Store) -> None:
        store.record(at(-5), [drop("b", count=2), drop("c", count=2), drop("a", count=2)], [])
        groups = store.query_drops(at(-60), NOW, group_by=["label"], now=NOW).groups
        assert [g["label"] for g in groups] == ["a", "b", "c"]

    def test_bucket_inclusion_follows_tier_step(self, store: Store) -> None:
        store.record(at(-100), [drop(count=1)], [])  # bucket T0-100
        store.record(at(-95), [drop(count=2)], [])  # same 10 s bucket T0-100
        store.record(at(-10), [drop(count=4)], [])  # bucket T0-10
        # since is floored to the 10 s step, so T0-97 still includes bucket T0-100.
        assert total(store, at(-97)) == 7
        assert total(store, at(-90)) == 4
        # until is exclusive on bucket_start: bucket T0-10 starts before T0-9 but not before T0-10.
        assert total(store, at(-200), at(-9)) == 7
        assert total(store, at(-200), at(-10)) == 3
        assert total(store, at(-60), at(-60)) == 0

    def test_duplicates_are_summed_and_zero_deltas_skipped(self, store: Store) -> None:
        store.record(
            at(-5), [drop(count=2), drop(count=3), drop("ghost", count=0)], [pkt("ghost", 0, 0)]
        )
        assert total(store, at(-60)) == 5
        assert store.label_names_seen() == ["acme"]  # "ghost" left no trace

    def test_record_adds_to_existing_bucket(self, store: Store) -> None:
        store.record(at(-5), [drop(count=2)], [])
        store.record(at(-4), [drop(count=3)], [])
        assert total(store, at(-60)) == 5

    def test_packets(self, store: Store) -> None:
        store.record(
            at(-5),
            [],
            [
                pkt("acme", 10, 1000),
                pkt("acme", 5, 500, iface="eth1"),
                pkt("globex", 20, 100, side="origin"),
            ],
        )
        store.record(at(-3), [], [pkt("acme", 1, 10)])
        assert store.query_packets(at(-60), NOW, group_by=["label"], now=NOW) == [
            {"label": "globex", "packets": 20, "bytes": 100},
            {"label": "acme", "packets": 16, "bytes": 1510},
        ]
        assert store.query_packets(at(-60), NOW, now=NOW) == [{"packets": 36, "bytes": 1610}]
        assert store.query_packets(
            at(-60), NOW, filters={"label": ["acme"]}, group_by=["iface"], now=NOW
        ) == [
            {"iface": "eth0", "packets": 11, "bytes": 1010},
            {"iface": "eth1", "packets": 5, "bytes": 500},
        ]
        with pytest.raises(ValueError, match="reason"):
            store.query_packets(at(-60), NOW, filters={"reason": ["x"]}, now=NOW)

    def test_label_names_seen(self, store: Store) -> None:
        store.record(at(-5), [drop("zeta"), drop("unlabeled")], [pkt("alpha")])
        assert store.label_names_seen() == ["alpha", "unlabeled", "zeta"]

    @pytest.mark.parametrize(
        ("delta", "match"),
        [
            (drop(count=-1), "count must be between 0"),
            (drop(side="sideways"), "side must be one of eyeball, origin, unknown"),
            (DropDelta("acme", "eyeball", "R", "L", "eth0", "ams", "3"), "count must be an int"),  # type: ignore[arg-type]
            (DropDelta("acme", "eyeball", "R", "L", "eth0", "ams", True), "count must be an int"),
            (DropDelta("acme", "eyeball", None, "L", "eth0", "ams", 1), "reason must be a str"),  # type: ignore[arg-type]
        ],
    )
    def test_bad_deltas_are_rejected_by_name(
        self, store: Store, delta: DropDelta, match: str
    ) -> None:
        with pytest.raises((ValueError, TypeError), match=match):
            store.record(NOW, [delta], [])

    def test_naive_timestamps_are_rejected(self, store: Store) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            store.record(datetime(2026, 11, 24, 12, 0), [drop()], [])
        with pytest.raises(ValueError, match="since must be a timezone-aware"):
            store.query_drops(datetime(2026, 11, 24, 11, 0), NOW, now=NOW)

    def test_bad_query_arguments_are_named(self, store: Store) -> None:
        with pytest.raises(ValueError, match="unknown filter key 'customer'"):
            store.query_drops(at(-60), NOW, filters={"customer": ["x"]}, now=NOW)
        with pytest.raises(ValueError, match="unknown group_by key 'bytes'"):
            store.query_drops(at(-60), NOW, group_by=["bytes"], now=NOW)
        with pytest.raises(ValueError, match="twice"):
            store.query_drops(at(-60), NOW, group_by=["label", "label"], now=NOW)
        with pytest.raises(ValueError, match="limit"):
            store.query_drops(at(-60), NOW, limit=-1, now=NOW)
        with pytest.raises(ValueError, match="before since"):
            store.query_drops(NOW, at(-60), now=NOW)


class TestAtomicity:
    def test_bad_delta_mid_batch_writes_nothing(self, store: Store) -> None:
        bad = DropDelta("globex", "eyeball", "R", "L", "eth0", "ams", 1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="count must be an int"):
            store.record(at(-5), [drop("acme", count=5), bad, drop("initech", count=1)], [pkt()])
        assert total(store, at(-60)) == 0
        assert store.query_packets(at(-60), NOW, now=NOW) == [{"packets": 0, "bytes": 0}]
        assert store.label_names_seen() == []

    def test_database_failure_mid_transaction_rolls_everything_back(
        self, store: Store, db_path: Path
    ) -> None:
        store.record(at(-50), [drop("acme", count=1)], [])
        # Make the packet upserts fail after the drop rows (and new dims) were written.
        conn = sqlite3.connect(db_path)
        conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON pkt_counts "
            "BEGIN SELECT RAISE(ABORT, 'injected'); END"
        )
        conn.commit()
        with pytest.raises(StoreError, match="injected"):
            store.record(at(-5), [drop("acme", count=5), drop("newcomer", count=2)], [pkt()])
        assert total(store, at(-60)) == 1
        assert store.label_names_seen() == ["acme"]

        conn.execute("DROP TRIGGER boom")
        conn.commit()
        conn.close()
        # Dim ids created inside the failed transaction must not linger in any cache.
        store.record(at(-5), [drop("newcomer", count=2)], [pkt()])
        assert store.query_drops(at(-60), NOW, group_by=["label"], now=NOW).groups == [
            {"label": "newcomer", "count": 2},
            {"label": "acme", "count": 1},
        ]


# ---------------------------------------------------------------------- tiers


class TestTiers:
    def test_query_three_days_back_uses_300s_tier_and_sees_old_data(self, store: Store) -> None:
        store.record(at(-3 * 86400), [drop("acme", count=4)], [])
        store.record(at(-60), [drop("acme", count=1)], [])  # also prunes the 10 s tier
        res = store.query_drops(at(-3 * 86400 - 3600), NOW, now=NOW)
        assert res.step_s == 300
        assert res.total == 5
        recent = store.query_drops(at(-3600), NOW, now=NOW)
        assert recent.step_s == 10
        assert recent.total == 1

    def test_tier_choice_boundaries(self, store: Store) -> None:
        day = 86400
        assert store.query_drops(at(-2 * day), NOW, now=NOW).step_s == 10
        assert store.query_drops(at(-2 * day - 1), NOW, now=NOW).step_s == 300
        assert store.query_drops(at(-30 * day), NOW, now=NOW).step_s == 300
        assert store.query_drops(at(-31 * day), NOW, now=NOW).step_s == 3600
        # Beyond every retention: the longest-kept tier answers with what is left.
        assert store.query_drops(at(-999 * day), NOW, now=NOW).step_s == 3600

    def test_long_ranges_give_exact_totals_across_tiers(self, store: Store) -> None:
        # Deltas spread over 26 hours at odd offsets; every query range must count
        # exactly the deltas whose 10 s bucket falls in it, whichever tiers are read.
        times = [-26 * 3600 + 7, -25 * 3600 - 13, -5 * 3600 + 299, -3601, -299, -11, -1]
        for i, t in enumerate(times):
            store.record(at(t), [drop(count=10**i)], [])
        for since, until in [
            (-86400 - 5, 0),
            (-26 * 3600, -3600),
            (-25 * 3600 - 15, -300),
            (-3610, -10),
        ]:
            expected = sum(
                10**i
                for i, t in enumerate(times)
                if (T0 + t) // 10 * 10 >= (T0 + since) // 10 * 10
                and (T0 + t) // 10 * 10 < T0 + until
            )
            assert total(store, at(since), at(until)) == expected, (since, until)

    def test_rolled_up_tiers_give_the_same_totals_and_series_as_the_10s_rows(
        self, store: Store, db_path: Path
    ) -> None:
        # Records mostly in time order (as the daemon writes), some for the past
        # (into buckets already rolled up), a reopen half way (the roll-up mark
        # is kept), queries before and after roll-ups: every total and every
        # 5 min / 1 h series equals the brute-force sum of the deltas.
        rnd = random.Random(5)
        deltas: list[tuple[int, str, int]] = []
        t = -20 * 3600
        s = store
        for i in range(400):
            t += rnd.randrange(1, 400)
            when = t if rnd.random() < 0.8 else t - rnd.randrange(0, 6 * 3600)
            label, n = rnd.choice(["a", "b", "c"]), rnd.randrange(1, 1000)
            s.record(at(when), [drop(label, count=n)], [])
            deltas.append((T0 + when, label, n))
            if i == 200:
                s.close()
                s = Store(db_path)
            if i % 50 == 0:
                for since, until in [(-21 * 3600, 3600), (-10 * 3600 - 7, -3 * 3600 + 13),
                                     (t - 3600, t + 3600), (t - 301, t + 1)]:
                    want = sum(n for e, _l, n in deltas
                               if e // 10 * 10 >= (T0 + since) // 10 * 10 and e // 10 * 10 < T0 + until)
                    assert total(s, at(since), at(until)) == want, (i, since, until)
                for step in (300, 3600):
                    ts = s.timeseries(at(-21 * 3600), at(t + 10), step, group_by=["label"], now=NOW)
                    got = {(g["group"]["label"], b): c for g in ts.series
                           for b, c in zip(ts.buckets, g["counts"], strict=True) if c}
                    want_ts: dict[tuple[str, int], int] = {}
                    for e, label, n in deltas:
                        if e < T0 + t + 10 and e >= ts.buckets[0]:
                            k = (label, e // step * step)
                            want_ts[k] = want_ts.get(k, 0) + n
                    assert got == want_ts, (i, step)
        s.close()

    def test_a_history_without_roll_up_marks_keeps_its_totals(self, db_path: Path) -> None:
        # As a dropwatch that added every delta into every tier leaves it: all
        # tiers complete, no "rolled_*" marks in meta.
        with Store(db_path) as s:
            s.record(at(-5000), [drop(count=7)], [])
            s.record(at(-4000), [drop(count=5)], [])
            s.prune(NOW)  # rolls both up
        conn = sqlite3.connect(db_path)
        conn.execute("DELETE FROM meta WHERE key LIKE 'rolled_%'")
        conn.commit()
        conn.close()
        with Store(db_path) as s:
            s.record(at(-10), [drop(count=100)], [])
            s.record(at(-7000), [drop(count=1000)], [])  # a bucket complete already
            for since, until, want in [(-8000, 10, 1112), (-4500, 10, 105), (-3 * 86400, 10, 1112)]:
                assert total(s, at(since), at(until)) == want, (since, until)
            assert s.query_drops(at(-3 * 86400), at(10), now=NOW).step_s == 300

    def test_prune_removes_buckets_past_each_tiers_retention(
        self, store: Store, db_path: Path
    ) -> None:
        day = 86400
        store.record(at(-35 * day), [drop("old")], [])
        store.record(at(-5 * day), [drop("mid")], [])
        store.record(at(-3600), [drop("new")], [])
        store.prune(NOW)
        assert rows_per_tier(db_path) == {10: 1, 300: 2, 3600: 3}
        assert total(store, at(-36 * day), filters={"label": ["old"]}) == 1  # only in the 1 h tier
        assert total(store, at(-6 * day), filters={"label": ["mid"]}) == 1
        store.prune(at(401 * day))
        assert rows_per_tier(db_path) == {}
        # Keys with no remaining data are forgotten too.
        assert store.label_names_seen() == []
        store.record(at(-5), [drop("old", count=2)], [])  # and can come back
        assert total(store, at(-60), filters={"label": ["old"]}) == 2

    def test_record_prunes_by_itself(self, store: Store, db_path: Path) -> None:
        store.record(at(-3 * 86400), [drop()], [])
        # A record writes the finest tier; coarser buckets are rolled up from
        # it once closed (the next record, a day later, closes them).
        assert rows_per_tier(db_path) == {10: 1}
        store.record(NOW, [drop()], [])
        # The old 10 s row was rolled up, then pruned (past its 2 days).
        assert rows_per_tier(db_path) == {10: 1, 300: 1, 3600: 1}
        assert total(store, at(-4 * 86400), at(10)) == 2

    def test_data_of_tiers_no_longer_configured_is_dropped(self, db_path: Path) -> None:
        with Store(db_path, (Tier(10, 3600), Tier(60, 7200))) as s:
            s.record(at(-30), [drop(count=3)], [])
        with Store(db_path) as s:
            s.prune(NOW)
            # (the new 5 min and 1 h tiers are rolled up from the 10 s rows)
            assert 60 not in rows_per_tier(db_path)
            assert rows_per_tier(db_path)[10] == 1
            assert total(s, at(-60)) == 3


# ------------------------------------------------------------------ timeseries


class TestTimeseries:
    def test_buckets_are_aligned_and_zero_filled(self, store: Store) -> None:
        store.record(at(-170), [drop("acme", count=1)], [])
        store.record(at(-115), [drop("acme", count=2), drop("globex", count=5)], [])
        store.record(at(-5), [drop("acme", count=4)], [])
        ts = store.timeseries(at(-175), NOW, 60, group_by=["label"], now=NOW)
        assert ts.step_s == 60
        assert ts.buckets == [T0 - 180, T0 - 120, T0 - 60]
        assert ts.series == [
            {"group": {"label": "acme"}, "counts": [1, 2, 4]},
            {"group": {"label": "globex"}, "counts": [0, 5, 0]},
        ]

    def test_empty_group_by_always_has_one_series(self, store: Store) -> None:
        ts = store.timeseries(at(-30), NOW, 10, now=NOW)
        assert ts.buckets == [T0 - 30, T0 - 20, T0 - 10]
        expected: list[SeriesEntry] = [{"group": {}, "counts": [0, 0, 0]}]
        assert ts.series == expected

    def test_filters_apply(self, store: Store) -> None:
        store.record(at(-15), [drop("acme", "A", 1), drop("acme", "B", 2), drop("x", "A", 4)], [])
        ts = store.timeseries(
            at(-20), NOW, 10, filters={"reason": ["A"]}, group_by=["label"], now=NOW
        )
        assert ts.series == [
            {"group": {"label": "x"}, "counts": [4, 0]},
            {"group": {"label": "acme"}, "counts": [1, 0]},
        ]

    @pytest.mark.parametrize(
        ("asked", "effective"), [(1, 10), (10, 10), (25, 30), (60, 60), (3600, 3600)]
    )
    def test_step_is_rounded_up_to_the_tier_step(
        self, store: Store, asked: int, effective: int
    ) -> None:
        assert store.timeseries(at(-3600), NOW, asked, now=NOW).step_s == effective

    def test_coarse_tier_for_old_ranges(self, store: Store) -> None:
        store.record(at(-3 * 86400 + 10), [drop(count=7)], [])
        ts = store.timeseries(at(-3 * 86400), at(-3 * 86400 + 900), 60, now=NOW)
        assert ts.step_s == 300
        assert ts.series[0]["counts"] == [7, 0, 0]

    def test_series_sums_match_query_totals(self, store: Store) -> None:
        for i in range(0, 7200, 70):
            store.record(at(-i), [drop("acme", count=i % 7 + 1), drop("b", count=1)], [])
        for step in (10, 60, 300, 3600):
            ts = store.timeseries(at(-7200), NOW, step, now=NOW)
            q = total(store, at(-7200))
            # The first bucket starts at floor(since, step), which never excludes data here.
            assert sum(ts.series[0]["counts"]) == q, step

    def test_too_many_buckets_asks_for_a_bigger_step(self, store: Store) -> None:
        with pytest.raises(ValueError) as err:
            store.timeseries(at(-2 * 86400), NOW, 10, now=NOW)
        assert "17280 buckets" in str(err.value)
        assert f"limit {MAX_TIMESERIES_BUCKETS}" in str(err.value)
        assert "step of at least" in str(err.value)

    def test_step_must_be_positive(self, store: Store) -> None:
        with pytest.raises(ValueError, match="step_s"):
            store.timeseries(at(-60), NOW, 0, now=NOW)


# --------------------------------------------------------------------- labels


class TestLabelIds:
    def test_ids_start_at_1_and_unlabeled_is_0(self, store: Store) -> None:
        assert store.label_ids(["acme", "unlabeled", "globex", "acme"]) == {
            "acme": 1,
            "unlabeled": 0,
            "globex": 2,
        }
        assert store.label_ids(["globex", "initech"]) == {"globex": 2, "initech": 3}
        assert store.label_names() == {0: "unlabeled", 1: "acme", 2: "globex", 3: "initech"}

    def test_restart_keeps_history_and_ids(self, db_path: Path) -> None:
        with Store(db_path) as s:
            s.label_ids(["acme", "globex"])
            s.record(at(-30), [drop("acme", count=3)], [pkt("acme", 4, 40)])
        with Store(db_path) as s:
            assert s.label_ids(["globex", "acme", "new"]) == {"globex": 2, "acme": 1, "new": 3}
            assert total(s, at(-60)) == 3
            assert s.query_packets(at(-60), NOW, now=NOW) == [{"packets": 4, "bytes": 40}]
            s.record(at(-20), [drop("acme", count=1)], [])  # same key, same dim row
            assert s.query_drops(at(-60), NOW, group_by=["label"], now=NOW).groups == [
                {"label": "acme", "count": 4}
            ]

    def test_ids_are_never_reused(self, store: Store, db_path: Path) -> None:
        store.label_ids(["a", "b", "c"])
        conn = sqlite3.connect(db_path)  # someone tidies up by hand
        conn.execute("DELETE FROM labels WHERE name = 'c'")
        conn.commit()
        conn.close()
        assert store.label_ids(["d"]) == {"d": 4}
        assert store.label_ids(["c"]) == {"c": 5}

    def test_id_space_exhaustion_is_all_or_nothing(self, db_path: Path) -> None:
        with Store(db_path, max_label_id=3) as s:
            s.label_ids(["a", "b"])
            with pytest.raises(StoreError, match="label id space exhausted"):
                s.label_ids(["c", "d"])
            assert s.label_names() == {0: "unlabeled", 1: "a", 2: "b"}
            assert s.label_ids(["c"]) == {"c": 3}
            assert s.label_ids(["a", "unlabeled"]) == {
                "a": 1,
                "unlabeled": 0,
            }  # known names still fine

    def test_bad_names_are_rejected(self, store: Store) -> None:
        with pytest.raises(ValueError, match="non-empty"):
            store.label_ids([""])


# ----------------------------------------------------------------- concurrency


def test_readers_in_other_threads_while_writing(store: Store) -> None:
    errors: list[Exception] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                res = store.query_drops(at(-3600), NOW, group_by=["label"], now=NOW)
                # Each record adds 1 to both labels in one transaction.
                counts = {g["label"]: g["count"] for g in res.groups}
                assert counts.get("a", 0) == counts.get("b", 0)
                store.timeseries(at(-3600), NOW, 60, now=NOW)
        except (AssertionError, StoreError, ValueError) as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(200):
            store.record(at(-3000 + i * 10), [drop("a"), drop("b")], [])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert total(store, at(-3600)) == 400


def test_default_tiers_are_documented_values() -> None:
    documented = (
        Tier(step_s=10, retention_s=2 * 86400),
        Tier(step_s=300, retention_s=30 * 86400),
        Tier(step_s=3600, retention_s=400 * 86400),
    )
    assert documented == DEFAULT_TIERS


# ------------------------------------------------------------------- PoP ids


class TestPopIds:
    def test_ids_start_at_1_and_none_unknown_are_the_kernels(self, store: Store) -> None:
        assert store.pop_ids(["ams01", "none", "sjc02", "unknown", "ams01"]) == {
            "ams01": 1, "none": 0, "sjc02": 2, "unknown": 0xFFFF}
        assert store.pop_ids(["sjc02", "fra03"]) == {"sjc02": 2, "fra03": 3}
        assert store.pop_names() == {0: "none", 1: "ams01", 2: "sjc02", 3: "fra03", 0xFFFF: "unknown"}

    def test_pop_ids_are_independent_of_label_ids(self, store: Store) -> None:
        store.label_ids(["acme", "globex"])
        assert store.pop_ids(["ams01"]) == {"ams01": 1}
        assert store.label_ids(["initech"]) == {"initech": 3}

    def test_restart_keeps_ids_and_they_are_never_reused(self, db_path: Path) -> None:
        with Store(db_path) as s:
            s.pop_ids(["ams01", "sjc02"])
        conn = sqlite3.connect(db_path)  # someone tidies up by hand
        conn.execute("DELETE FROM pops WHERE name = 'sjc02'")
        conn.commit()
        conn.close()
        with Store(db_path) as s:
            assert s.pop_ids(["ams01", "fra03"]) == {"ams01": 1, "fra03": 3}
            assert s.pop_ids(["sjc02"]) == {"sjc02": 4}

    def test_default_id_space_is_the_kernels_1_to_4095(self, db_path: Path) -> None:
        with Store(db_path) as s:
            ids = s.pop_ids([f"p{i}" for i in range(4095)])
            assert sorted(ids.values()) == list(range(1, 4096))
            with pytest.raises(StoreError, match="PoP id space exhausted: 1 new PoP.* 0 of 4095 remain"):
                s.pop_ids(["one-too-many"])

    def test_exhaustion_is_all_or_nothing_and_says_what_to_do(self, db_path: Path) -> None:
        with Store(db_path, max_pop_id=3) as s:
            s.pop_ids(["a", "b"])
            with pytest.raises(StoreError) as err:
                s.pop_ids(["c", "d"])
            assert "never reused" in str(err.value) and "new history database" in str(err.value)
            assert s.pop_names() == {0: "none", 1: "a", 2: "b", 0xFFFF: "unknown"}
            assert s.pop_ids(["c", "a"]) == {"c": 3, "a": 1}

    def test_bad_names_are_rejected(self, store: Store) -> None:
        with pytest.raises(ValueError, match="non-empty"):
            store.pop_ids([""])


# --------------------------------------------------------------- pop and source


class TestPopAndSource:
    def test_source_is_a_drop_dimension_to_filter_and_group_by(self, store: Store) -> None:
        store.record(at(-30), [
            DropDelta("acme", "eyeball", "NO_SOCKET", "L", "eth0", "ams01", 5, "metadata"),
            DropDelta("acme", "eyeball", "NO_SOCKET", "L", "eth0", "ams01", 2, "flow"),
            DropDelta("unlabeled", "unknown", "NO_SOCKET", "L", "eth0", "none", 4, "none"),
        ], [])
        res = store.query_drops(at(-60), NOW, group_by=["source"], now=NOW)
        assert res.groups == [{"source": "metadata", "count": 5}, {"source": "none", "count": 4},
                              {"source": "flow", "count": 2}]
        assert total(store, at(-60), filters={"source": ["flow"]}) == 2
        ts = store.timeseries(at(-60), NOW, 60, group_by=["source"], filters={"pop": ["ams01"]}, now=NOW)
        assert {s["group"]["source"]: sum(s["counts"]) for s in ts.series} == {"metadata": 5, "flow": 2}

    def test_pop_is_a_dimension_of_drops_and_packets(self, store: Store) -> None:
        store.record(at(-30), [drop(pop="ams01", count=3), drop(pop="unknown", count=1), drop(pop="none")],
                     [pkt(pop="ams01", packets=30), pkt(pop="none", packets=7)])
        assert store.query_drops(at(-60), NOW, group_by=["pop"], now=NOW).groups == [
            {"pop": "ams01", "count": 3}, {"pop": "none", "count": 1}, {"pop": "unknown", "count": 1}]
        assert store.query_packets(at(-60), NOW, group_by=["pop"], filters={"pop": ["ams01"]}, now=NOW) == [
            {"pop": "ams01", "packets": 30, "bytes": 1000}]

    def test_defaults_for_callers_that_predate_pops_and_the_fallback(self, store: Store) -> None:
        """No source: metadata when labeled, none when not. Pop '': none."""
        store.record(at(-30), [DropDelta("acme", "eyeball", "R", "L", "eth0", "", 3),
                               DropDelta("unlabeled", "unknown", "R", "L", "eth0", "", 1)],
                     [PacketDelta("acme", "eyeball", "eth0", "", 9, 90)])
        assert store.query_drops(at(-60), NOW, group_by=["label", "pop", "source"], now=NOW).groups == [
            {"label": "acme", "pop": "none", "source": "metadata", "count": 3},
            {"label": "unlabeled", "pop": "none", "source": "none", "count": 1}]
        assert store.query_packets(at(-60), NOW, group_by=["pop"], now=NOW) == [
            {"pop": "none", "packets": 9, "bytes": 90}]

    def test_unknown_source_is_refused_before_writing(self, store: Store) -> None:
        with pytest.raises(ValueError, match="source must be one of metadata, flow, none"):
            store.record(at(-30), [drop(count=1), DropDelta("a", "eyeball", "R", "L", "e", "p", 1, "corrupt")], [])
        assert total(store, at(-60)) == 0

    def test_packets_have_no_source(self, store: Store) -> None:
        with pytest.raises(ValueError, match="unknown filter key 'source'"):
            store.query_packets(at(-60), NOW, filters={"source": ["flow"]}, now=NOW)


# The schema as dropwatch wrote it before PoPs and the flow fallback
# (version 1), kept here verbatim: an old database must open with its history.
SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE labels (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
                     created_at INTEGER NOT NULL);
CREATE TABLE dims (id INTEGER PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('drop', 'pkt')),
    label TEXT NOT NULL, side TEXT NOT NULL, reason TEXT NOT NULL, location TEXT NOT NULL,
    iface TEXT NOT NULL, pop TEXT NOT NULL, UNIQUE (kind, label, side, reason, location, iface, pop));
CREATE TABLE drop_counts (tier INTEGER NOT NULL, bucket_start INTEGER NOT NULL, dim_id INTEGER NOT NULL,
    count INTEGER NOT NULL, PRIMARY KEY (tier, bucket_start, dim_id)) WITHOUT ROWID;
CREATE TABLE pkt_counts (tier INTEGER NOT NULL, bucket_start INTEGER NOT NULL, dim_id INTEGER NOT NULL,
    packets INTEGER NOT NULL, bytes INTEGER NOT NULL, PRIMARY KEY (tier, bucket_start, dim_id)) WITHOUT ROWID;
INSERT INTO meta VALUES ('schema_version', '1');
"""


def old_v1_database(path: Path) -> None:
    """A version-1 history: labels acme (1) and globex (2); drops and packets
    10 minutes ago in every tier, as the old daemon wrote them (pop '')."""
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_V1)
    conn.executemany("INSERT INTO labels (name, created_at) VALUES (?, 0)", [("acme",), ("globex",)])
    dims = [(1, "drop", "acme", "eyeball", "NO_SOCKET", "udp_rcv", "eth0", ""),
            (2, "drop", "unlabeled", "unknown", "NO_SOCKET", "udp_rcv", "eth0", ""),
            (3, "pkt", "acme", "eyeball", "", "", "", ""),
            # An odd one: the same key spelled with pop 'none' (merges with 1).
            (4, "drop", "acme", "eyeball", "NO_SOCKET", "udp_rcv", "eth0", "none")]
    conn.executemany("INSERT INTO dims VALUES (?, ?, ?, ?, ?, ?, ?, ?)", dims)
    t = T0 - 600
    for step in (10, 300, 3600):
        b = t - t % step
        conn.executemany("INSERT INTO drop_counts VALUES (?, ?, ?, ?)",
                         [(step, b, 1, 40), (step, b, 2, 6), (step, b, 4, 2)])
        conn.execute("INSERT INTO pkt_counts VALUES (?, ?, 3, 500, 50000)", (step, b))
    conn.commit()
    conn.close()


class TestMigrationFromV1:
    def test_old_history_opens_with_source_and_pop_filled_in(self, tmp_path: Path) -> None:
        path = tmp_path / "v1.db"
        old_v1_database(path)
        with Store(path) as s:
            res = s.query_drops(at(-3600), NOW, group_by=["label", "pop", "source"], now=NOW)
            assert res.groups == [
                {"label": "acme", "pop": "none", "source": "metadata", "count": 42},
                {"label": "unlabeled", "pop": "none", "source": "none", "count": 6}]
            assert s.query_packets(at(-3600), NOW, group_by=["label", "pop"], now=NOW) == [
                {"label": "acme", "pop": "none", "packets": 500, "bytes": 50000}]
            # Every tier was migrated: a 30-day query reads the coarse ones.
            assert s.query_drops(at(-20 * 86400), NOW, now=NOW).total == 48
            # Label ids are kept; PoPs start empty.
            assert s.label_ids(["globex", "new"]) == {"globex": 2, "new": 3}
            assert s.pop_ids(["ams01"]) == {"ams01": 1}
            # New rows land next to the old ones, under the same key.
            s.record(at(-5), [DropDelta("acme", "eyeball", "NO_SOCKET", "udp_rcv", "eth0", "none", 1,
                                        "metadata")], [])
            assert s.query_drops(at(-3600), NOW, filters={"label": ["acme"]}, group_by=["source"],
                                 now=NOW).groups == [{"source": "metadata", "count": 43}]
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("2",)
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert conn.execute("SELECT COUNT(*) FROM drop_counts WHERE dim_id = 4").fetchone() == (0,)
        finally:
            conn.close()

    def test_a_failed_migration_leaves_the_old_database_as_it_was(self, tmp_path: Path) -> None:
        path = tmp_path / "v1.db"
        old_v1_database(path)
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE pops (x INTEGER)")  # in the way of the migration
        conn.commit()
        conn.close()
        with pytest.raises(StoreError):
            Store(path)
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("1",)
            cols = [r[1] for r in conn.execute("PRAGMA table_info(dims)")]
            assert "source" not in cols
        finally:
            conn.close()

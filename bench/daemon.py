#!/usr/bin/env python3
"""What the daemon itself costs: CPU under a drop flood, one poll cycle with
100,000 drop keys, /drops latency over 24 h of history, resident memory.

    sudo .venv/bin/python bench/daemon.py [--quick] [--flood-seconds S] [--only poll,flood,api] [--profile]

1. poll   In this process: a Loader (reader object loaded and attached, with
          131,072 drop slots because the production 65,536 cannot hold
          100,000 keys), a Store in a temporary file and a Collector, as
          the daemon builds them (async_writes: a writer thread). 100,000
          distinct (label, side, reason, location) keys are given slots
          from user space (Loader.write_drop_slots: 1,000 labels x 2 sides
          x 10 reasons x 5 locations), then Collector.poll() is timed: the first poll
          (every key new), polls where every key changed, polls where 100
          keys changed, polls where none did, and all-changed polls back to
          back while the writer is still busy. The poll cycle is that call:
          from the kernel read to the deltas handed to the writer thread;
          it is split into read (Loader.read_drop_slots) and the rest
          (deltas, names, totals). The writer's time for each poll's batch
          (Store.record_rows inside it) is waited for and reported apart,
          as is one roll-up of the 10 s rows into the coarser tiers.
2. flood  `dropwatch run` as a subprocess on a dropwatch.lab interface (XDP
          labeler + reader, default poll interval and sampling, the history
          database of step 3), then bench/out/flood sends UDP into the lab's
          nft DROP rule for --flood-seconds (60; quick 15), as fast as it
          can, pinned to one CPU. The daemon's CPU is utime+stime of all its
          threads (/proc/PID/stat) over the flood's wall time, in % of one
          core; its idle CPU is measured the same way before. Exactness: the
          daemon's /drops total for (customerY, NETFILTER_DROP, the lab
          interface) must grow by exactly the nft rule counter's growth.
3. api    Before the daemon starts, its history database is pre-filled with
          24 h of 10 s buckets for 1,000 labels (one drop key each, every
          bucket non-zero, 8.64 million 10 s rows plus the 5 min and 1 h tiers
          summed from them, as Store.record writes them), in bulk SQL. After
          the flood, a few hundred /drops requests (default window, -24 h,
          label filters, group_by) go to the running daemon over HTTP
          (keep-alive); latency is measured at the client. The -24 h totals of
          sampled labels are checked against the pre-filled rows.
Resident memory: VmRSS sampled every 0.5 s and VmHWM of the daemon process
(/proc/PID/status), and this process's VmHWM after the poll benchmark.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import benchlib as B

import httpx
import numpy as np
import yaml

from dropwatch import abi
from dropwatch.collector import Collector
from dropwatch.kernel import DropReasons, Kallsyms
from dropwatch.lab import LAB_RULES, TX_ORIGIN_V4, Lab, lab
from dropwatch.loader import Loader
from dropwatch.store import Store

FLOOD = B.OUT / "flood"
CLK_TCK = os.sysconf("SC_CLK_TCK")
N_LABELS = 1000
REASONS = ["NOT_SPECIFIED", "NO_SOCKET", "PKT_TOO_SMALL", "TCP_CSUM", "SOCKET_FILTER", "UDP_CSUM",
           "NETFILTER_DROP", "OTHERHOST", "IP_CSUM", "IP_INHDR"]
LOCATION_SYMS = ["__udp4_lib_rcv", "nft_do_chain", "ip_rcv_core", "tcp_v4_rcv", "sk_filter_trim_cap"]
DAY = 86_400


# ----------------------------------------------------------------- helpers

def proc_cpu_s(pid: int) -> float:
    """utime + stime of all threads of pid, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_mem_mb(pid: int | str = "self") -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) / 1024
    return out


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def kallsyms_addrs(names: list[str]) -> list[int]:
    want = set(names)
    found: dict[str, int] = {}
    with open("/proc/kallsyms") as f:
        for line in f:
            a, _t, n = line.split()[:3]
            if n in want and n not in found:
                found[n] = int(a, 16)
    addrs = [found[n] + 0x40 + 8 * i for i, n in enumerate(names) if n in found]
    if len(addrs) < len(names) or not all(addrs):
        sys.exit(f"/proc/kallsyms lacks {sorted(want - set(found))} or hides addresses")
    return addrs


# ----------------------------------------------------------------- 1. poll

class Timed:
    """Wraps a bound method; accumulates its wall time."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.s = fn, 0.0

    def __call__(self, *a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return self.fn(*a, **k)
        finally:
            self.s += time.perf_counter() - t


def poll_bench(n_keys: int, reps: int, profile: list[str]) -> dict[str, Any]:
    reasons = DropReasons.load()
    rvals = [v for v in (reasons.value(r) for r in REASONS) if v is not None]
    locs = kallsyms_addrs(LOCATION_SYMS)
    per_label = 2 * len(rvals) * len(locs)
    n_labels = -(-n_keys // per_label)
    tmp = Path(tempfile.mkdtemp(prefix="dw-bench-poll-"))
    res: dict[str, Any] = {"keys": n_keys, "labels": n_labels, "reasons": len(rvals), "locations": len(locs),
                           "drop_map_entries": 1 << 17}
    ld = Loader(drop_entries=1 << 17)
    st = Store(tmp / "history.db")
    try:
        ld.load()
        res["reader"] = ld.attach_reader()
        ids = st.label_ids([f"cust{i:04d}" for i in range(n_labels)])
        id_list = [ids[f"cust{i:04d}"] for i in range(n_labels)]
        keys = []
        for lid in id_list:
            for side in (1, 2):
                for r in rvals:
                    for loc in locs:
                        # (label_id, side, reason, location, ifindex, pop_id, source, netns_ino, flags)
                        keys.append((lid, side, r, loc, 1, abi.DW_POP_NONE, int(abi.Source.META), 0, 0))
        keys = keys[:n_keys]
        counts = np.array([1 + i % 7 for i in range(n_keys)], dtype=np.uint64)
        # Slot i is keys[i], its count on CPU 0 (other CPUs 0), as the reader
        # leaves them; later counts are written into the mapped cells.
        ld.write_drop_slots(keys, np.vstack([counts] + [np.zeros(n_keys, np.uint64)] * (ld.ncpus - 1)))

        def write(idx: list[int] | None = None) -> None:
            def put(view: np.ndarray) -> None:
                if idx is None:
                    view[0, :n_keys] = counts
                else:
                    view[0, idx] = counts[idx]
            ld._with_drop_counts(put)

        kallsyms = Kallsyms.load()
        rss0 = proc_mem_mb()["VmRSS"]
        # As the daemon builds it: polls hand their deltas to the writer thread.
        col = Collector(ld, st, reasons, kallsyms, async_writes=True)
        col.refresh_label_names()
        t_read = Timed(ld.read_drop_slots)
        ld.read_drop_slots = t_read  # type: ignore[method-assign]
        # (record_rows: what the collector calls; record for one from before it existed)
        wname = "record_rows" if hasattr(st, "record_rows") else "record"
        t_rec = Timed(getattr(st, wname))
        setattr(st, wname, t_rec)
        rows: list[dict[str, Any]] = []

        gc_s = [0.0, 0.0]  # accumulated in the poll thread, start of the running collection
        main = threading.main_thread()

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if threading.current_thread() is not main:
                return  # the writer thread's collections are in its own time
            if phase == "start":
                gc_s[1] = time.perf_counter()
            else:
                gc_s[0] += time.perf_counter() - gc_s[1]
        gc.callbacks.append(on_gc)

        def one(kind: str, wait: bool = True) -> None:
            """One timed Collector.poll(): from the kernel read to the deltas
            handed to the writer thread. Then (wait) the writer's batch is
            waited for and timed apart: it is not part of the poll."""
            t_read.s = t_rec.s = gc_s[0] = 0.0
            c = time.thread_time()
            t = time.perf_counter()
            col.poll()
            ms = (time.perf_counter() - t) * 1e3
            cpu_ms = (time.thread_time() - c) * 1e3
            read_ms, poll_gc_ms = t_read.s * 1e3, gc_s[0] * 1e3
            writes0 = col.writes
            if wait:
                col.flush()
            rows.append({"kind": kind, "ms": ms, "cpu_ms": cpu_ms, "read_ms": read_ms, "rest_ms": ms - read_ms,
                         "gc_ms": poll_gc_ms,
                         # the writer thread's batch (0 when there was nothing to write)
                         "write_ms": col.last_write_duration_s * 1e3 if wait and col.writes > writes0 else 0.0,
                         "record_ms": t_rec.s * 1e3 if wait else 0.0,
                         "load1": os.getloadavg()[0]})

        one("first")
        id_set = set(id_list)
        res["keys_seen_by_collector"] = sum(1 for k in col._slot_keys if k is not None and k[0] in id_set)
        for _ in range(reps):
            counts += 1 + (np.arange(n_keys, dtype=np.uint64) & 3)
            write()
            one("all")
        rnd = random.Random(1)
        for _ in range(reps):
            idx = rnd.sample(range(n_keys), 100)
            counts[idx] += 5
            write(idx)
            one("few")
        for _ in range(reps):
            one("none")
        # Every key changed, polls back to back while the writer is still
        # writing the previous batches (GIL shared with it): the worst case
        # for the poll itself. Then wait for the writer.
        for _ in range(reps):
            counts += 1
            write()
            one("all_busy", wait=False)
        t = time.perf_counter()
        col.flush()
        res["all_busy_drain_ms"] = (time.perf_counter() - t) * 1e3
        res["merged_batches"] = col.merged_batches
        for kind in profile:
            idx = list(range(n_keys)) if kind == "all" else rnd.sample(range(n_keys), 100) if kind == "few" else []
            counts[idx] += 1
            if idx:
                write(idx if kind == "few" else None)
            pr = cProfile.Profile()
            pr.enable()
            col.poll()
            pr.disable()
            col.flush()
            s = io.StringIO()
            pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(18)
            res[f"profile_{kind}"] = s.getvalue()
            print(f"--- profile: {kind} keys changed\n{s.getvalue()}")
        col.close()
        if hasattr(st, "_advance_rollups"):
            # The writer's other cost: rolling the closed 5 min and 1 h buckets
            # up from the finer tier (here the few 10 s buckets this run wrote,
            # each with up to 100,000 rows), as the first record after the
            # hour would. Timed alone, in one transaction.
            conn = sqlite3.connect(st.path)
            n10 = conn.execute("SELECT COUNT(*) FROM drop_counts WHERE tier = 10").fetchone()[0]
            conn.close()
            later = int(time.time()) // 3600 * 3600 + 3600
            with st._write_lock:
                w = st._writer
                t = time.perf_counter()
                w.execute("BEGIN IMMEDIATE")
                st._rolled = st._advance_rollups(w, later)
                w.execute("COMMIT")
                res["rollup"] = {"rows_10s": n10, "ms": (time.perf_counter() - t) * 1e3}
        # Exactness of what the collector wrote: the store's total equals the
        # counters' sum (no drop from this process's other keys is in it).
        now = datetime.now(timezone.utc)
        tot = st.query_drops(datetime.fromtimestamp(time.time() - 3600, timezone.utc), now,
                             filters={"label": [f"cust{i:04d}" for i in range(0, n_labels, 97)]}).total
        want = sum(int(c) for k, c in zip(keys, counts.tolist(), strict=True) if (k[0] - id_list[0]) % 97 == 0)
        res["store_total_exact"] = tot == want
        # What a daemon holds for 100,000 keys: the Collector's and Store's
        # state (previous counts, names, dim ids, the last raw read), here
        # this process's growth from just before the Collector was made.
        res["collector_state_mb"] = proc_mem_mb()["VmRSS"] - rss0
        res["polls"] = rows
        gc.callbacks.remove(on_gc)
        res["rss_mb_after"] = proc_mem_mb()
    finally:
        ld.close()
        st.close()
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    for kind in ("first", "all", "few", "none", "all_busy"):
        xs = [r for r in rows if r["kind"] == kind]
        res[kind] = {k: {"median": B.median([r[k] for r in xs]), "max": max(r[k] for r in xs)}
                     for k in ("ms", "cpu_ms", "read_ms", "rest_ms", "gc_ms", "write_ms", "record_ms")}
    return res


# ----------------------------------------------------------------- 3. history

def prefill(db: Path, n_labels: int, hours: float) -> dict[str, Any]:
    """24 h x n_labels of 10 s rows, plus the 5 min and 1 h tiers summed from
    them: what Store.record leaves after that many polls (one drop key per
    label, drops in every 10 s bucket)."""
    t0 = time.monotonic()
    with Store(db) as st:
        st.label_ids([f"cust{i:04d}" for i in range(n_labels)])
    end = int(time.time()) // 10 * 10
    start = end - int(hours * 3600)
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO dims (kind, label, side, reason, location, iface, pop, source) "
            "VALUES ('drop', ?, ?, ?, ?, ?, 'none', 'metadata')",
            [(f"cust{i:04d}", ("eyeball", "origin")[i % 2], REASONS[i % 3], f"{LOCATION_SYMS[i % 5]}+0x{40 + i % 7:x}",
              "eth1") for i in range(n_labels)])
        conn.execute(
            "INSERT INTO drop_counts (tier, bucket_start, dim_id, count) "
            "WITH RECURSIVE b(t) AS (SELECT ? UNION ALL SELECT t + 10 FROM b WHERE t + 10 < ?) "
            "SELECT 10, t, d.id, 1 + (t / 10 * 7 + d.id * 13) % 97 FROM b CROSS JOIN "
            "(SELECT id FROM dims WHERE kind = 'drop' ORDER BY id) AS d ORDER BY t, d.id", (start, end))
        for step in (300, 3600):
            conn.execute(
                "INSERT INTO drop_counts (tier, bucket_start, dim_id, count) "
                f"SELECT {step}, bucket_start / {step} * {step} AS b, dim_id, SUM(count) FROM drop_counts "
                "WHERE tier = 10 GROUP BY b, dim_id ORDER BY b, dim_id")
        # The daemon collected unused dims at startup a moment ago (daily).
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('dims_gc_at', ?)", (str(end),))
        conn.execute("COMMIT")
        rows = dict(conn.execute("SELECT tier, COUNT(*) FROM drop_counts GROUP BY tier").fetchall())
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return {"labels": n_labels, "hours": hours, "start": start, "end": end,
            "rows": {str(k): v for k, v in rows.items()}, "db_mb": db.stat().st_size / 2**20,
            "fill_s": time.monotonic() - t0}


def expected_total(db: Path, label: str, since: int, until: int) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute(
            "SELECT COALESCE(SUM(c.count), 0) FROM drop_counts c JOIN dims d ON d.id = c.dim_id "
            "WHERE c.tier = 10 AND d.label = ? AND c.bucket_start >= ? AND c.bucket_start < ?",
            (label, since, until)).fetchone()[0])
    finally:
        conn.close()


# ----------------------------------------------------------------- 2. daemon

class Daemon:
    """`dropwatch run` on the lab, like tests/e2e/helpers.start_daemon; stop() on every path."""

    def __init__(self, lb: Lab, db: Path, log_path: Path, cpu: int | None) -> None:
        rules = db.parent / "rules.yaml"
        rules.write_text(yaml.safe_dump(LAB_RULES, sort_keys=False))
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        cmd = [sys.executable, "-m", "dropwatch", "run", "--netns", lb.rx_ns, "--iface", lb.rx_if,
               "--config", str(rules), "--db", str(db), "--listen", f"127.0.0.1:{port}"]
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu)] + cmd
        env = {k: v for k, v in os.environ.items() if k != "DROPWATCH_TOKEN"}
        env["PYTHONPATH"] = str(B.ROOT)
        self.log_path = log_path
        with open(log_path, "w") as logf:
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=B.ROOT,
                                         start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon exited ({self.proc.returncode}): {log_path.read_text()[-2000:]}")
            try:
                if self.client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"daemon not healthy after 60 s: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def get(self, path: str, **params: Any) -> httpx.Response:
        r = self.client.get(path, params=params)
        r.raise_for_status()
        return r

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


class MemSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.stop_ev = pid, threading.Event()
        self.rss: list[float] = []

    def run(self) -> None:
        while not self.stop_ev.wait(0.5):
            try:
                self.rss.append(proc_mem_mb(self.pid)["VmRSS"])
            except (OSError, KeyError):
                return


def dw_total(d: Daemon, iface: str) -> int:
    return int(d.get("/drops", label="customerY", reason="NETFILTER_DROP", iface=iface, since="-1h",
                     group_by="").json()["total"])


def wait_polled(d: Daemon, iface: str, kernel: int, base: int, timeout_s: float = 15) -> int:
    """The daemon's total once it has caught up with the kernel (or timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = dw_total(d, iface)
        if got - base >= kernel or time.monotonic() > deadline:
            time.sleep(2.5)  # two more polls: nothing else arrives
            return dw_total(d, iface)
        time.sleep(0.5)


def flood(lb: Lab, seconds: float, cpu: int, packets: int) -> dict[str, Any]:
    out = lb.ns(lb.tx_ns, "taskset", "-c", str(cpu), str(FLOOD), "--src", TX_ORIGIN_V4, "--dst", "10.10.2.1",
                "--port", "9999", "--count", str(packets), "--max-seconds", str(seconds))
    return json.loads(out.strip().splitlines()[-1])


def flood_bench(lb: Lab, d: Daemon, seconds: float, idle_s: float, cpu: int) -> dict[str, Any]:
    iface = lb.rx_if
    res: dict[str, Any] = {"flood_seconds": seconds, "flood_cpu": cpu}
    # idle: the daemon with nothing to count
    c0, t0 = proc_cpu_s(d.pid), time.monotonic()
    time.sleep(idle_s)
    res["idle_cpu_pct"] = 100 * (proc_cpu_s(d.pid) - c0) / (time.monotonic() - t0)
    flood(lb, 5, cpu, 200_000)  # warm-up: ARP, page pools, the daemon's first keys
    k0 = lb.nft_drop_count()
    d0 = wait_polled(d, iface, 0, 0, 0)
    mem = MemSampler(d.pid)
    mem.start()
    c0, t0 = proc_cpu_s(d.pid), time.monotonic()
    f = flood(lb, seconds, cpu, 10**9)
    c1, t1 = proc_cpu_s(d.pid), time.monotonic()
    mem.stop_ev.set()
    mem.join()
    k1 = lb.nft_drop_count()
    d1 = wait_polled(d, iface, k1 - k0, d0)
    wall = t1 - t0
    res.update({
        "sent": f["sent"], "flood_elapsed_s": f["elapsed_ns"] / 1e9, "kernel_drops": k1 - k0,
        "daemon_drops": d1 - d0, "counts_exact": d1 - d0 == k1 - k0,
        "flood_drops_per_s": (k1 - k0) / (f["elapsed_ns"] / 1e9),
        "daemon_cpu_s": c1 - c0, "wall_s": wall, "daemon_cpu_pct_under_flood": 100 * (c1 - c0) / wall,
        "rss_mb_during_flood": {"median": B.median(mem.rss) if mem.rss else None,
                                "max": max(mem.rss) if mem.rss else None},
        "load_avg": os.getloadavg(),
    })
    h = d.get("/healthz").json()
    res["daemon_health"] = {k: h.get(k) for k in ("status", "problems", "map_full", "poll_errors", "reader")}
    return res


def api_bench(d: Daemon, db: Path, fill: dict[str, Any], n_req: int) -> dict[str, Any]:
    rnd = random.Random(5)
    labels = [f"cust{i:04d}" for i in range(fill["labels"])]
    kinds: list[tuple[str, Callable[[], dict[str, str]]]] = [
        ("default (-15m, label,side,reason)", lambda: {}),
        ("-24h, label,side,reason", lambda: {"since": "-24h"}),
        ("-24h, label=one", lambda: {"since": "-24h", "label": rnd.choice(labels)}),
        ("-24h, label=3, group_by=label,side", lambda: {"since": "-24h", "label": ",".join(rnd.sample(labels, 3)),
                                                        "group_by": "label,side"}),
        ("-24h, group_by=label, limit=1000", lambda: {"since": "-24h", "group_by": "label", "limit": "1000"}),
        ("-1h, group_by=reason,location", lambda: {"since": "-1h", "group_by": "reason,location"}),
        ("-6h, label=one, group_by=reason", lambda: {"since": "-6h", "label": rnd.choice(labels),
                                                     "group_by": "reason"}),
    ]
    for _, mk in kinds:  # warm: first request of each shape (imports, plans, page cache)
        d.get("/drops", **mk())
    lat: dict[str, list[float]] = {k: [] for k, _ in kinds}
    for i in range(n_req):
        name, mk = kinds[i % len(kinds)]
        params = mk()
        t = time.perf_counter()
        d.get("/drops", **params)
        lat[name].append((time.perf_counter() - t) * 1e3)
    allv = [x for v in lat.values() for x in v]
    # Correctness: a -24h total of one label against the pre-filled rows,
    # over an explicit window inside the pre-filled range.
    checks = []
    for lab_name in rnd.sample(labels, 5):
        since, until = fill["start"] + 3600, fill["end"] - 600
        iso = lambda s: datetime.fromtimestamp(s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
        got = int(d.get("/drops", label=lab_name, since=iso(since), until=iso(until), group_by="").json()["total"])
        checks.append(got == expected_total(db, lab_name, since, until))
    return {"requests": n_req, "p50_ms": pct(allv, 50), "p99_ms": pct(allv, 99), "max_ms": max(allv),
            "by_kind": {k: {"n": len(v), "p50_ms": pct(v, 50), "p99_ms": pct(v, 99), "max_ms": max(v)}
                        for k, v in lat.items()},
            "totals_match_prefill": all(checks)}


# ----------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="15 s flood, fewer polls and requests")
    ap.add_argument("--flood-seconds", type=float)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--polls", type=int, help="timed polls of each kind (default 10; quick 5)")
    ap.add_argument("--requests", type=int, help="/drops requests (default 700; quick 280)")
    ap.add_argument("--hours", type=float, default=24.0, help="history to pre-fill")
    ap.add_argument("--only", default="poll,flood,api")
    ap.add_argument("--profile", default="", help="cProfile one poll of these kinds (all,few,none)")
    ap.add_argument("--json", type=Path, default=B.OUT / "daemon.json")
    args = ap.parse_args()
    B.need_root()
    B.build()
    only = set(args.only.split(","))
    seconds = args.flood_seconds or (15.0 if args.quick else 60.0)
    reps = args.polls or (5 if args.quick else 10)
    n_req = args.requests or (280 if args.quick else 700)
    t_start = time.monotonic()
    cpu = max(os.sched_getaffinity(0))  # the flood's CPU
    others = set(os.sched_getaffinity(0)) - {cpu}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    results: dict[str, Any] = {"ncpus": os.cpu_count(), "load_avg_start": os.getloadavg(), "quick": args.quick}
    if "poll" in only:
        print(f"poll: {args.keys:,} drop keys, {reps} polls of each kind", flush=True)
        results["poll"] = p = poll_bench(args.keys, reps, [k for k in args.profile.split(",") if k])
        print(B.table([[k, B.fmt(p[k]["ms"]["median"]), B.fmt(p[k]["ms"]["max"]), B.fmt(p[k]["cpu_ms"]["median"]),
                        B.fmt(p[k]["read_ms"]["median"]), B.fmt(p[k]["rest_ms"]["median"]),
                        B.fmt(p[k]["gc_ms"]["median"]),
                        B.fmt(p[k]["write_ms"]["median"]) if k != "all_busy" else "-",
                        B.fmt(p[k]["record_ms"]["median"]) if k != "all_busy" else "-"]
                       for k in ("first", "all", "few", "none", "all_busy")],
                      ["keys changed", "poll ms (median)", "max", "CPU ms", "read", "rest", "(of it: gc)",
                       "| writer ms", "(of it: record)"]))
        print(f"poll = Collector.poll(), from the kernel read to the deltas handed to the writer thread; the "
              f"writer's time per batch is apart (waited for after each poll). first: every key new "
              f"({p['keys']:,} dims created); all: every key grew; few: 100 grew; none: none did; all_busy: every "
              f"key grew, polls back to back while the writer is still busy (drained in "
              f"{p['all_busy_drain_ms']:.0f} ms after, {p['merged_batches']} batches merged). CPU ms: the poll "
              "thread's CPU time (less inflated by other load than wall time).")
        if "rollup" in p:
            print(f"roll-up of {p['rollup']['rows_10s']:,} 10 s rows into the 5 min and 1 h tiers: "
                  f"{p['rollup']['ms']:.0f} ms (the writer thread, once per closed bucket)")
        print(f"collector saw {p['keys_seen_by_collector']:,} keys; store totals exact: {p['store_total_exact']}; "
              f"collector + store state for them: {p['collector_state_mb']:.0f} MB (this process VmHWM "
              f"{p['rss_mb_after']['VmHWM']:.0f} MB)", flush=True)
    if others:
        os.sched_setaffinity(0, others)
    if only & {"flood", "api"}:
        tmp = Path(tempfile.mkdtemp(prefix="dw-bench-daemon-"))
        db = tmp / "history.db"
        lab_ns: list[str] = []
        d: Daemon | None = None
        try:
            print(f"history: pre-filling {args.hours:g} h x {N_LABELS:,} labels of 10 s buckets", flush=True)
            results["history"] = fill = prefill(db, N_LABELS, args.hours)
            print(f"  {fill['rows']} rows, {fill['db_mb']:.0f} MB in {fill['fill_s']:.1f} s", flush=True)
            with lab() as lb:
                lab_ns = [lb.rx_ns, lb.tx_ns]
                d = Daemon(lb, db, B.OUT / "daemon.log", None)
                results["daemon_mem_start"] = proc_mem_mb(d.pid)
                if "flood" in only:
                    print(f"flood: {seconds:g} s into nft DROP (sender on CPU {cpu}), daemon pid {d.pid}",
                          flush=True)
                    results["flood"] = fr = flood_bench(lb, d, seconds, 5.0 if args.quick else 10.0, cpu)
                    print(f"  {fr['kernel_drops']:,} drops at {fr['flood_drops_per_s'] / 1e6:.3f} M/s; daemon CPU "
                          f"{fr['daemon_cpu_pct_under_flood']:.2f}% of one core (idle "
                          f"{fr['idle_cpu_pct']:.2f}%); daemon counted {fr['daemon_drops']:,}: exact "
                          f"{fr['counts_exact']}", flush=True)
                if "api" in only:
                    print(f"api: {n_req} /drops requests over {args.hours:g} h x {N_LABELS:,} labels", flush=True)
                    results["api"] = a = api_bench(d, db, fill, n_req)
                    print(B.table([[k, v["n"], B.fmt(v["p50_ms"]), B.fmt(v["p99_ms"]), B.fmt(v["max_ms"])]
                                   for k, v in a["by_kind"].items()] +
                                  [["all", a["requests"], B.fmt(a["p50_ms"]), B.fmt(a["p99_ms"]),
                                    B.fmt(a["max_ms"])]], ["request", "n", "p50 ms", "p99 ms", "max ms"]))
                    print(f"  totals match the pre-filled rows: {a['totals_match_prefill']}", flush=True)
                results["daemon_mem_end"] = proc_mem_mb(d.pid)
        finally:
            if d is not None:
                d.stop()
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
            left = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()) \
                & set(lab_ns)
            print(f"lab namespaces removed: {'no, left ' + str(sorted(left)) if left else 'yes'}", flush=True)
    # the keys
    p = results.get("poll", {})
    fr = results.get("flood", {})
    results["poll_ms_100k_keys"] = p["all"]["ms"]["median"] if p else None
    results["poll_ms_100k_keys_max"] = p["all"]["ms"]["max"] if p else None
    results["poll_ms_100k_keys_few_changed"] = p["few"]["ms"]["median"] if p else None
    results["poll_ms_100k_keys_none_changed"] = p["none"]["ms"]["median"] if p else None
    results["poll_ms_100k_keys_all_changed_writer_busy"] = p["all_busy"]["ms"]["median"] if p else None
    results["poll_ms_100k_keys_first"] = p["first"]["ms"]["median"] if p else None
    # the writer thread's time for one poll's batch (not part of the poll)
    results["write_ms_100k_keys"] = p["all"]["write_ms"]["median"] if p else None
    results["write_ms_100k_keys_first"] = p["first"]["write_ms"]["median"] if p else None
    results["write_ms_100k_keys_few_changed"] = p["few"]["write_ms"]["median"] if p else None
    results["daemon_cpu_pct_under_flood"] = fr.get("daemon_cpu_pct_under_flood")
    results["flood_drops_per_s"] = fr.get("flood_drops_per_s")
    results["daemon_counts_exact"] = fr.get("counts_exact")
    results["api_p99_ms"] = results["api"]["p99_ms"] if "api" in results else None
    results["daemon_rss_mb"] = results["daemon_mem_end"]["VmHWM"] if "daemon_mem_end" in results else None
    results["load_avg_end"] = os.getloadavg()
    results["elapsed_s"] = time.monotonic() - t_start
    print()
    print(B.table([
        ["daemon CPU under flood (% of one core)", B.fmt(results["daemon_cpu_pct_under_flood"], 2), "< 2"],
        ["flood drops/s", B.fmt(results["flood_drops_per_s"], 0), "(max the flood sustains)"],
        ["poll, 100k keys all changed (ms, median)", B.fmt(results["poll_ms_100k_keys"]), "< 50"],
        ["poll, 100k keys, 100 changed (ms, median)", B.fmt(results["poll_ms_100k_keys_few_changed"]), "< 50"],
        ["poll, 100k keys, none changed (ms, median)", B.fmt(results["poll_ms_100k_keys_none_changed"]), "< 50"],
        ["poll, 100k keys all changed, writer busy (ms, median)",
         B.fmt(results["poll_ms_100k_keys_all_changed_writer_busy"]), "-"],
        ["writer, 100k keys all changed (ms per batch, median)", B.fmt(results["write_ms_100k_keys"]),
         "(not in the poll)"],
        ["/drops p99 (ms), 24 h x 1,000 labels", B.fmt(results["api_p99_ms"]), "< 50"],
        ["daemon VmHWM (MB)", B.fmt(results["daemon_rss_mb"]), "< 150"],
    ], ["daemon", "measured", "target"]))
    B.write_json(args.json, results)
    print(f"\nwrote {args.json} ({results['elapsed_s']:.0f}s)")


if __name__ == "__main__":
    main()

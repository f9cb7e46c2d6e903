"""Time to first chart of the dashboard with 24 h of history for 100 labels.

    sudo .venv/bin/python bench/dashboard_load.py [--labels 100] [--hours 24] [--runs 5] [--db PATH]

1. Fills a history database through Store.record, as the collector writes it:
   one record per 10 s poll over the last --hours, --labels labels each with
   one to three (side, reason, location) drop combinations and ingress packets
   (about 200 drop and 100 packet rows per poll). --db reuses a filled file.
2. Starts `dropwatch run --db` on it, on a namespace lab (the daemon needs an
   interface), exactly as the end-to-end tests do.
3. Opens /?since=-24h in Debian's headless chromium (Playwright, a fresh
   context each run, so nothing is cached) and reads the time from navigation
   start to the first chart drawn with data (the page's `dw-first-chart`
   performance mark).

Prints the median first-chart time in ms (and each run, the page weight and the
API latencies the browser saw). Needs root. Cleans the lab up on every exit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dropwatch.store import DropDelta, PacketDelta, Store  # noqa: E402  (after the sys.path line)

CHROMIUM = os.environ.get("DROPWATCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
KINDS = [("eyeball", "NO_SOCKET", "__udp4_lib_rcv+0x4bc"), ("origin", "NETFILTER_DROP", "nft_do_chain+0x3e8"),
         ("eyeball", "SOCKET_RCVBUFF", "udp_queue_rcv_one_skb+0x437"), ("origin", "TCP_LISTEN_OVERFLOW",
                                                                        "tcp_v4_syn_recv_sock+0x3a1")]


def fill(db: Path, labels: int, hours: float, step_s: int = 10) -> tuple[int, float]:
    rng = random.Random(4)
    combos = []
    for i in range(labels):
        name = f"customer{i:03d}"
        for kind in rng.sample(KINDS, rng.randint(1, 3)):
            combos.append((name, *kind, rng.uniform(0.1, 40.0)))
    now = datetime.now(timezone.utc)
    start = now - timedelta(hours=hours)
    n_polls = int(hours * 3600 // step_s)
    t0 = time.monotonic()
    with Store(db) as st:
        for k in range(n_polls):
            ts = start + timedelta(seconds=k * step_s)
            # A daily-ish wave plus noise, and an incident for a few labels in the last hour.
            wave = 1.0 + 0.5 * math.sin(k / n_polls * 2 * math.pi)
            drops = []
            for name, side, reason, loc, rate in combos:
                burst = 20.0 if (name in ("customer007", "customer042") and k > n_polls - 360) else 1.0
                n = int(rng.expovariate(1.0 / (rate * wave * burst * step_s / 10)))
                if n:
                    drops.append(DropDelta(name, side, reason, loc, "eth1", "", n))
            pkts = [PacketDelta(f"customer{i:03d}", "eyeball", "eth1", "", 5000 + i * 10, (5000 + i * 10) * 800)
                    for i in range(labels)]
            st.record(ts, drops, pkts)
    return n_polls, time.monotonic() - t0


def measure(url: str, runs: int, screenshot: Path | None = None) -> list[dict[str, float]]:
    from playwright.sync_api import sync_playwright
    out = []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for _ in range(runs):
                ctx = b.new_context(viewport={"width": 1280, "height": 800})
                page = ctx.new_page()
                page.goto(url)
                page.wait_for_function("window.dwFirstChartMs !== undefined", timeout=30_000)
                page.wait_for_function("document.body.dataset.loaded !== undefined", timeout=30_000)
                r = page.evaluate("""() => {
                  const res = performance.getEntriesByType('resource');
                  const nav = performance.getEntriesByType('navigation')[0];
                  const api = {};
                  for (const e of res) {
                    const u = new URL(e.name);
                    if (!u.pathname.startsWith('/static')) api[u.pathname + (u.searchParams.get('group_by') ?
                        '?group_by=' + u.searchParams.get('group_by') : '')] = Math.round(e.duration);
                  }
                  const weight = res.filter((e) => new URL(e.name).pathname.startsWith('/static'))
                      .reduce((a, e) => a + e.encodedBodySize, nav.encodedBodySize);
                  return {first_chart_ms: window.dwFirstChartMs, all_panels_ms: performance.now(),
                          page_bytes: weight, api,
                          series: +document.querySelector('#chart').dataset.series,
                          buckets: +document.querySelector('#chart').dataset.buckets,
                          rows: document.querySelectorAll('#labels tbody tr').length};
                }""")
                out.append(r)
                if screenshot is not None:
                    page.screenshot(path=str(screenshot), full_page=True)
                ctx.close()
        finally:
            b.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", type=int, default=100)
    ap.add_argument("--hours", type=float, default=24)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--db", type=Path, default=None, help="reuse (or create) this history file")
    ap.add_argument("--screenshot", type=Path, default=None, help="save the loaded page (PNG)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("dashboard_load: needs root (the daemon attaches BPF programs on a namespace lab)")
    import yaml

    from dropwatch.lab import LAB_RULES, lab
    sys.path.insert(0, str(ROOT / "tests" / "e2e"))
    from test_dashboard import start_daemon  # the end-to-end tests' own launcher

    with tempfile.TemporaryDirectory(prefix="dw-dashbench-") as tmpd:
        tmp = Path(tmpd)
        db = args.db or tmp / "history.db"
        if not db.exists():
            polls, secs = fill(db, args.labels, args.hours)
            print(f"filled {db}: {polls} polls x {args.labels} labels in {secs:.1f} s "
                  f"({db.stat().st_size / 1e6:.0f} MB)", file=sys.stderr)
        rules = tmp / "rules.yaml"
        rules.write_text(yaml.safe_dump(LAB_RULES, sort_keys=False))
        with lab() as lb:
            d = start_daemon(lb, rules, db, tmp / "daemon.log")
            try:
                url = f"{d.url}/?since=-{args.hours:g}h"
                results = measure(url, args.runs, args.screenshot)
            finally:
                d.stop()
    for i, r in enumerate(results):
        print(f"run {i + 1}: first chart {r['first_chart_ms']:.0f} ms, all panels {r['all_panels_ms']:.0f} ms, "
              f"{r['series']} series x {r['buckets']} buckets, {r['rows']} label rows, "
              f"page {r['page_bytes'] / 1024:.1f} KiB; API ms {json.dumps(r['api'])}", file=sys.stderr)
    med = statistics.median(r["first_chart_ms"] for r in results)
    print(f"dashboard first chart ({args.labels} labels, {args.hours:g} h of history): median {med:.0f} ms "
          f"over {len(results)} cold loads (max {max(r['first_chart_ms'] for r in results):.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Client commands that talk to a running daemon's API (top, query).

Registered by cli.build_parser through add_commands(). Only the standard
library is used (urllib, curses), so the commands work wherever the package
is installed, e.g. over SSH on the host that runs the daemon.

``dropwatch top`` polls ``GET /drops`` with a fixed start time (the API's own
answer to ``since=-15m`` on the first request), so each refresh returns
cumulative counts since that instant; the rate of a row is the growth of its
count over the last ~10 s of refreshes. Its ratio is the row's drops divided
by the packets labeled with the row's label over the same period
(``GET /labels``), so the ratios of one label's rows add up to the label's
drop ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

DEFAULT_URL = "http://127.0.0.1:9180"
RATE_WINDOW_S = 10.0
GROUP_KEYS = ("label", "side", "reason", "location", "iface", "pop", "source")
TOP_EXTRA_KEYS = ("pop", "source")  # what `top --by` adds to its label/side/reason rows
MAX_ROWS = 10_000


class ApiError(Exception):
    """A one-line, user-facing reason why the API could not answer."""


# ---------------------------------------------------------------- HTTP


class Api:
    def __init__(self, url: str, timeout_s: float = 5.0, token: str | None = None) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ApiError(f"--url {url!r}: expected http://HOST:PORT, e.g. {DEFAULT_URL}")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.token = token

    def get(self, path: str, params: Sequence[tuple[str, str]] = ()) -> Any:
        query = urllib.parse.urlencode([(k, v) for k, v in params if v is not None])
        full = f"{self.url}{path}" + (f"?{query}" if query else "")
        headers = {"accept": "application/json"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(full, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # http(s) only: checked in __init__
                body = resp.read()
        except urllib.error.HTTPError as exc:
            hint = ""
            if exc.code == 401:
                hint = (" (the daemon wants a token: set DROPWATCH_TOKEN or --token-file)" if not self.token else
                        " (the token given was refused)")
            raise ApiError(f"GET {path}: {exc.code} {exc.reason}: {_detail(exc)}{hint}") from None
        except urllib.error.URLError as exc:
            raise ApiError(self._unreachable(exc.reason)) from None
        except TimeoutError:
            raise ApiError(f"no answer from the dropwatch API at {self.url} within {self.timeout_s:g} s") from None
        except (ConnectionError, OSError) as exc:  # e.g. reset while reading the body
            raise ApiError(self._unreachable(exc)) from None
        try:
            return json.loads(body)
        except ValueError:
            raise ApiError(f"GET {path}: the answer from {self.url} is not JSON "
                           f"(is a dropwatch daemon listening there?)") from None

    def _unreachable(self, reason: object) -> str:
        if isinstance(reason, TimeoutError):
            return f"no answer from the dropwatch API at {self.url} within {self.timeout_s:g} s"
        if isinstance(reason, OSError) and reason.strerror:
            why = reason.strerror.lower()
        else:
            why = str(reason)
        return (f"cannot reach the dropwatch API at {self.url}: {why} "
                f"(is 'dropwatch run' running and listening there? use --url)")


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        raw = exc.read().decode("utf-8", "replace")
    except OSError:
        return "(no body)"
    try:
        detail = json.loads(raw).get("detail", raw)
    except (ValueError, AttributeError):
        return raw.strip()[:300] or "(no body)"
    if isinstance(detail, dict) and "message" in detail:
        return str(detail["message"])
    if isinstance(detail, list):  # FastAPI validation errors
        return "; ".join(f"{'.'.join(str(x) for x in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail
                         if isinstance(d, dict)) or json.dumps(detail)
    return str(detail)


def _filters(args: argparse.Namespace) -> list[tuple[str, str]]:
    out = []
    for key in ("label", "side", "reason", "location", "iface", "pop", "source"):
        for v in getattr(args, key, None) or []:
            out.append((key, v))
    return out


def _api(args: argparse.Namespace) -> Api:
    """The client for --url, with the token from --token-file or DROPWATCH_TOKEN."""
    token = None
    if args.token_file:
        try:
            with open(args.token_file) as f:
                text = f.read().strip()
        except OSError as exc:
            raise ApiError(f"--token-file {args.token_file}: {exc.strerror}") from None
        token = text.splitlines()[0] if text else None
        if not token:
            raise ApiError(f"--token-file {args.token_file}: empty")
    elif os.environ.get("DROPWATCH_TOKEN", "").strip():
        token = os.environ["DROPWATCH_TOKEN"].strip()
    return Api(args.url, args.timeout, token)


def _fail(msg: str, code: int = 1) -> int:
    print(f"dropwatch: error: {msg}", file=sys.stderr)
    return code


# ---------------------------------------------------------------- tables


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool],
                 width: int | None = None, shrink: int = 0) -> list[str]:
    """Columns padded to their widest cell; numbers right-aligned. With
    ``width``, the ``shrink`` column is cut (with '~') so lines fit."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    if width is not None:
        excess = sum(widths) + 2 * (len(widths) - 1) - width
        if excess > 0:
            widths[shrink] = max(len(header[shrink]), widths[shrink] - excess)

    def fit(cell: str, i: int) -> str:
        w = widths[i]
        if len(cell) > w:
            cell = cell[: max(0, w - 1)] + "~"
        return cell.rjust(w) if right[i] else cell.ljust(w)

    lines = ["  ".join(fit(h, i) for i, h in enumerate(header)).rstrip()]
    lines += ["  ".join(fit(c, i) for i, c in enumerate(r)).rstrip() for r in rows]
    if width is not None:
        lines = [ln[:width] for ln in lines]
    return lines


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _fmt_rate(r: float | None) -> str:
    if r is None:
        return "-"
    if r == 0:
        return "0"
    if r < 10:
        return f"{r:.2f}"
    if r < 1000:
        return f"{r:.1f}"
    return f"{r:,.0f}"


def _fmt_ratio(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r * 100:.2f}%" if r < 1 else f"{r * 100:,.0f}%"


# ---------------------------------------------------------------- query


def _pipe_safe(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`dropwatch query | head`: a reader that goes away ends the command quietly."""
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
            return 0
    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


@_pipe_safe
def cmd_query(args: argparse.Namespace) -> int:
    try:
        api = _api(args)
    except ApiError as exc:
        return _fail(str(exc), 2)
    keys = [k.strip() for k in args.group_by.split(",") if k.strip()]
    params = _filters(args) + [("since", args.since), ("until", args.until), ("group_by", ",".join(keys)),
                               ("limit", str(args.limit))]
    try:
        ans = api.get("/drops", params)
    except ApiError as exc:
        return _fail(str(exc))
    if args.json:
        json.dump(ans, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    groups = ans.get("groups", [])
    total = int(ans.get("total", 0))
    print(f"drops from {ans.get('since')} to {ans.get('until')}: {_fmt_int(total)}")
    if not groups:
        print("(no drops match)")
        return 0
    cols = [k for k in keys if k in GROUP_KEYS] or [k for k in groups[0] if k != "count"]
    rows = []
    for g in groups:
        n = int(g.get("count", 0))
        rows.append([str(g.get(k, "")) for k in cols] + [_fmt_int(n), f"{100 * n / total:.1f}%" if total else "-"])
    header = [k.upper() for k in cols] + ["DROPS", "SHARE"]
    for line in format_table(header, rows, [False] * len(cols) + [True, True]):
        print(line)
    shown = sum(int(g.get("count", 0)) for g in groups)
    if shown < total:
        print(f"({len(groups)} groups shown, {_fmt_int(total - shown)} drops in groups past --limit {args.limit})")
    return 0


# ---------------------------------------------------------------- top


@dataclass
class Row:
    label: str
    side: str
    reason: str
    total: int
    rate: float | None
    packets: int
    ratio: float | None
    extra: dict[str, str] = field(default_factory=dict)  # --by pop/source: their values

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "side": self.side, "reason": self.reason, **self.extra,
                "rate": None if self.rate is None else round(self.rate, 3), "total": self.total,
                "packets": self.packets, "ratio": None if self.ratio is None else round(self.ratio, 6)}


@dataclass
class Frame:
    since: str
    until: str
    rows: list[Row]
    rate_window_s: float | None

    @property
    def total(self) -> int:
        return sum(r.total for r in self.rows)

    @property
    def rate(self) -> float | None:
        if self.rate_window_s is None:
            return None
        return sum(r.rate or 0.0 for r in self.rows)


Key = tuple[str, ...]  # label, side, reason, then the --by keys


@dataclass
class TopSampler:
    """Keeps the samples of cumulative counts since a fixed start and turns
    them into rows with rates."""

    api: Api
    since: str
    filters: list[tuple[str, str]]
    clock: Callable[[], float] = time.monotonic
    window_s: float = RATE_WINDOW_S
    by: tuple[str, ...] = ()  # extra row keys (pop, source)
    anchor: str | None = None
    samples: deque[tuple[float, dict[Key, int]]] = field(default_factory=deque)
    last: Frame | None = None

    def sample(self) -> Frame:
        start = self.anchor or self.since
        keys = ("label", "side", "reason", *self.by)
        ans = self.api.get("/drops", self.filters + [("since", start), ("until", "now"),
                                                     ("group_by", ",".join(keys)), ("limit", str(MAX_ROWS))])
        t = self.clock()
        if self.anchor is None:
            # Later requests ask for exactly the same start, as the daemon resolved it.
            self.anchor = str(ans["since"])
        counts: dict[Key, int] = {tuple(str(g[k]) for k in keys): int(g["count"]) for g in ans["groups"]}
        # Packets up to now, read after the drops: while traffic flows the ratio
        # errs low, never above the truth. (The answer's "until" is cut to the
        # second, so it is not reused: it can fall before the last bucket.)
        # Packets are counted per label and PoP: with --pop the ratio is over
        # those PoPs' packets, with --by pop over each row's PoP.
        pop_filter = [(k, v) for k, v in self.filters if k == "pop"]
        window = [("since", self.anchor), ("until", "now")]
        pop_at = keys.index("pop") if "pop" in self.by else None
        packets: dict[tuple[str, str | None], int] = {}
        for pop in sorted({k[pop_at] for k in counts}) if pop_at is not None else [None]:
            labels = self.api.get("/labels", window + ([("pop", pop)] if pop is not None else pop_filter))
            packets.update({(str(x["label"]), pop): int(x["packets"]) for x in labels.get("labels", [])})
        self.samples.append((t, counts))
        while len(self.samples) > 2 and t - self.samples[1][0] >= self.window_s:
            self.samples.popleft()
        rate_window: float | None = None
        base: dict[Key, int] = {}
        if len(self.samples) > 1:
            t0, base = self.samples[0]
            rate_window = t - t0
        rows = []
        for key, n in counts.items():
            rate = None if rate_window is None else max(0, n - base.get(key, 0)) / rate_window
            pk = packets.get((key[0], key[pop_at] if pop_at is not None else None), 0)
            rows.append(Row(key[0], key[1], key[2], total=n, rate=rate, packets=pk, ratio=(n / pk) if pk else None,
                            extra=dict(zip(self.by, key[3:], strict=True))))
        rows.sort(key=lambda r: (-(r.rate or 0.0), -r.total, r.label, r.side, r.reason, *r.extra.values()))
        self.last = Frame(since=self.anchor, until=str(ans["until"]), rows=rows, rate_window_s=rate_window)
        return self.last


TOP_HEADER = ["LABEL", "SIDE", "REASON", "RATE/s", "TOTAL", "RATIO"]
TOP_RIGHT = [False, False, False, True, True, True]


def render_top(frame: Frame, url: str, interval_s: float, width: int, height: int | None = None,
               status: str | None = None) -> list[str]:
    now = time.strftime("%H:%M:%S")
    rate = frame.rate
    lines = [f"dropwatch top - {url} - {now} - refresh {interval_s:g}s - q quits"[:width],
             (f"drops since {_short_time(frame.since)}: {_fmt_int(frame.total)} total, "
              f"{_fmt_rate(rate)}/s" + ("" if frame.rate_window_s is None else
                                        f" (rate over {frame.rate_window_s:.0f}s)")
              + f", {len({r.label for r in frame.rows})} labels")[:width]]
    lines.append((status or "")[:width])
    by = list(frame.rows[0].extra) if frame.rows else []
    rows = [[r.label, r.side, r.reason, *r.extra.values(), _fmt_rate(r.rate), _fmt_int(r.total),
             _fmt_ratio(r.ratio)] for r in frame.rows]
    if height is not None:
        rows = rows[: max(0, height - len(lines) - 1)]
    header = TOP_HEADER[:3] + [k.upper() for k in by] + TOP_HEADER[3:]
    right = TOP_RIGHT[:3] + [False] * len(by) + TOP_RIGHT[3:]
    table = format_table(header, rows, right, width=width, shrink=0)
    lines += table
    if not frame.rows:
        lines.append("(no drops since " + _short_time(frame.since) + ")")
    return lines


def _short_time(iso: str) -> str:
    try:
        dt = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone()
    except ValueError:
        return iso
    return dt.strftime("%H:%M:%S")


def _top_json(frame: Frame, url: str) -> dict[str, Any]:
    rate = frame.rate
    return {"url": url, "since": frame.since, "until": frame.until,
            "rate_window_s": None if frame.rate_window_s is None else round(frame.rate_window_s, 3),
            "total": frame.total, "rate": None if rate is None else round(rate, 3),
            "rows": [r.as_dict() for r in frame.rows]}


@_pipe_safe
def cmd_top(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        return _fail(f"--interval {args.interval}: must be positive", 2)
    try:
        api = _api(args)
    except ApiError as exc:
        return _fail(str(exc), 2)
    by = tuple(k.strip() for v in args.by or [] for k in v.split(",") if k.strip())
    for k in by:
        if k not in TOP_EXTRA_KEYS:
            return _fail(f"--by {k!r}: one of {', '.join(TOP_EXTRA_KEYS)}", 2)
    sampler = TopSampler(api, args.since, _filters(args), by=tuple(dict.fromkeys(by)))
    try:
        frame = sampler.sample()
    except ApiError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    if args.once:
        try:
            time.sleep(args.interval)
            frame = sampler.sample()
        except ApiError as exc:
            return _fail(str(exc))
        except KeyboardInterrupt:
            return 130
        if args.json:
            json.dump(_top_json(frame, api.url), sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            for line in render_top(frame, api.url, args.interval, _term_width()):
                print(line)
        return 0
    if args.json:
        return _top_json_stream(sampler, api, args)
    if not sys.stdout.isatty() or args.batch:
        return _top_batch(sampler, api, args)
    import curses

    try:
        return int(curses.wrapper(_top_curses, sampler, api, args))
    except KeyboardInterrupt:
        return 0


def _term_width(stream: TextIO | None = None) -> int:
    try:
        return os.get_terminal_size((stream or sys.stdout).fileno()).columns
    except (OSError, ValueError):
        return 120


def _top_json_stream(sampler: TopSampler, api: Api, args: argparse.Namespace) -> int:
    """One JSON document per line and refresh (--json without --once)."""
    try:
        while True:
            time.sleep(args.interval)
            try:
                frame = sampler.sample()
            except ApiError as exc:
                print(json.dumps({"error": str(exc)}), flush=True)
                continue
            print(json.dumps(_top_json(frame, api.url)), flush=True)
    except KeyboardInterrupt:
        return 0


def _top_batch(sampler: TopSampler, api: Api, args: argparse.Namespace) -> int:
    """Not a terminal (or --batch): print one frame per refresh, like top -b."""
    try:
        while True:
            time.sleep(args.interval)
            status = None
            try:
                frame = sampler.sample()
            except ApiError as exc:
                assert sampler.last is not None
                frame, status = sampler.last, f"[retrying every {args.interval:g}s] {exc}"
            for line in render_top(frame, api.url, args.interval, _term_width(), status=status):
                print(line)
            print(flush=True)
    except KeyboardInterrupt:
        return 0


def _top_curses(stdscr: Any, sampler: TopSampler, api: Api, args: argparse.Namespace) -> int:
    import curses

    try:
        curses.curs_set(0)
    except curses.error:
        pass
    stdscr.timeout(100)
    frame = sampler.last
    assert frame is not None
    status: str | None = "measuring rates..."
    next_at = time.monotonic() + args.interval
    dirty = True
    while True:
        if dirty:
            height, width = _fit_terminal(stdscr)
            stdscr.erase()
            lines = render_top(frame, api.url, args.interval, max(20, width - 1), height, status=status)
            for y, line in enumerate(lines[:height]):
                try:
                    stdscr.addnstr(y, 0, line, max(0, width - 1), curses.A_REVERSE if y == 3 else 0)
                except curses.error:
                    pass
            stdscr.refresh()
            dirty = False
        ch = stdscr.getch()
        if ch in (ord("q"), ord("Q"), 27):
            return 0
        if ch == curses.KEY_RESIZE or ch in (ord(" "), 12):  # resize, space or Ctrl-L: redraw now
            dirty = True
            if ch == ord(" "):
                next_at = time.monotonic()
        if time.monotonic() >= next_at:
            next_at = time.monotonic() + args.interval
            try:
                frame = sampler.sample()
                status = None
            except ApiError as exc:
                status = f"[retrying every {args.interval:g}s] {exc}"
            dirty = True


def _fit_terminal(stdscr: Any) -> tuple[int, int]:
    """The screen's size, following the terminal even when a SIGWINCH was
    missed (e.g. the program was busy in a request when it arrived)."""
    import curses

    height, width = stdscr.getmaxyx()
    try:
        size = os.get_terminal_size(sys.__stdout__.fileno() if sys.__stdout__ else 1)
    except (OSError, ValueError):
        return height, width
    if (size.lines, size.columns) != (height, width):
        curses.resizeterm(size.lines, size.columns)
        stdscr.clear()
        height, width = stdscr.getmaxyx()
    return height, width


# ---------------------------------------------------------------- registration


def _positive_float(value: str) -> float:
    from .timeparse import TimeParseError, parse_duration

    try:
        v = float(value)
    except ValueError:
        try:
            v = parse_duration(value)
        except TimeParseError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: must be positive")
    return v


# "--since -1h": argparse takes words starting with "-" for options unless they
# look like negative numbers; relative times must count as such values.
_RELATIVE_TIME_VALUE = re.compile(r"^-\d[0-9a-zA-Z.]*$")


def _add_common(p: argparse.ArgumentParser) -> None:
    if hasattr(p, "_negative_number_matcher"):
        p._negative_number_matcher = _RELATIVE_TIME_VALUE
    p.add_argument("--url", default=os.environ.get("DROPWATCH_URL", DEFAULT_URL),
                   help=f"the daemon's API (default $DROPWATCH_URL or {DEFAULT_URL})")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="API token (first line) if the daemon wants one; default $DROPWATCH_TOKEN")
    p.add_argument("--timeout", type=_positive_float, default=5.0, metavar="SECONDS",
                   help="HTTP timeout per request (default 5)")
    p.add_argument("--label", action="append", metavar="LABEL", help="only these labels (repeatable or a,b)")
    p.add_argument("--side", action="append", metavar="SIDE", help="eyeball, origin or unknown")
    p.add_argument("--reason", action="append", metavar="REASON", help="kernel drop reason, e.g. NO_SOCKET")
    p.add_argument("--iface", action="append", metavar="IFACE", help="ingress interface")
    p.add_argument("--pop", action="append", metavar="POP",
                   help="landing PoP(s) from the rules; none: not tunnelled; unknown: tunnelled from no PoP")
    p.add_argument("--source", action="append", metavar="SOURCE",
                   help="what attributed the label: metadata, flow or none")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register client subcommands on the main parser."""
    t = sub.add_parser("top", help="live view of a running daemon's drops, sorted by drop rate",
                       description="Live, top-like view of a running daemon's drops (over its HTTP API): one row "
                       "per label, side and reason, sorted by drop rate. RATE/s is over the last ~10 s, TOTAL "
                       "counts from --since, RATIO is TOTAL over the packets labeled with the row's label in "
                       "the same period. Keys: q quits, space refreshes now.")
    _add_common(t)
    t.add_argument("--interval", type=_positive_float, default=2.0, metavar="SECONDS",
                   help="refresh interval (default 2; accepts 1.5 or 500ms)")
    t.add_argument("--since", default="-15m", metavar="TIME",
                   help="totals count from this time (relative to the start, or ISO 8601; default -15m)")
    t.add_argument("--once", action="store_true",
                   help="print one frame and exit (waits one --interval to measure the rates)")
    t.add_argument("--json", action="store_true", help="JSON output (with --once one document, else one a line)")
    t.add_argument("--batch", action="store_true", help="plain text frames instead of the full-screen view")
    t.add_argument("--by", action="append", metavar="KEYS",
                   help="also split rows by pop and/or source (repeatable or pop,source)")
    t.set_defaults(func=cmd_top)

    q = sub.add_parser("query", help="ask a running daemon for drops (GET /drops) and print a table or JSON",
                       description="Print the answer of the daemon's GET /drops as a table (or --json).")
    _add_common(q)
    q.add_argument("--location", action="append", metavar="LOCATION", help="kernel location, e.g. nft_do_chain+0x2a4")
    q.add_argument("--since", default="-15m", metavar="TIME", help="relative (-90s, -15m, -2h, -7d) or ISO 8601")
    q.add_argument("--until", default="now", metavar="TIME")
    q.add_argument("--group-by", default="label,side,reason", metavar="KEYS",
                   help=f"comma-separated subset of {','.join(GROUP_KEYS)}; '' for the total only")
    q.add_argument("--limit", type=int, default=100, metavar="N", help="at most N groups (default 100)")
    q.add_argument("--json", action="store_true", help="print the API's JSON answer")
    q.set_defaults(func=cmd_query)

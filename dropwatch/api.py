"""HTTP API (FastAPI): /drops, /drops/timeseries, /labels, /healthz, /metrics.

Every user error is a 4xx whose message says what was wrong; the OpenAPI
schema at /docs documents each parameter.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fastapi import Body, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.middleware.gzip import GZipMiddleware

from .daemon import Daemon
from .loader import DropwatchError
from .metrics import make_registry
from .rules import LABEL_RE, UNLABELED, Rule, RulesError, parse_rules
from .samples import to_pcapng
from .store import DROP_DIMS, SOURCES, StoreError, check_group_by
from .timeparse import TimeParseError, format_iso, parse_duration, parse_time

log = logging.getLogger("dropwatch.api")

SIDES = ("eyeball", "origin", "unknown")
MAX_WINDOW = timedelta(days=400)
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_LIMIT = 10_000
MAX_SAMPLES = 2000
NICE_STEPS_S = (10, 30, 60, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 86400)


class ErrorResponse(BaseModel):
    detail: str


BAD_REQUEST: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "a parameter is invalid; detail says which and why"}}


class DropsResponse(BaseModel):
    since: str
    until: str
    total: int
    groups: list[dict[str, str | int]]


class SeriesItem(BaseModel):
    group: dict[str, str]
    counts: list[int]


class TimeseriesResponse(BaseModel):
    since: str
    until: str
    step_s: int
    buckets: list[str]
    series: list[SeriesItem]


class LabelStats(BaseModel):
    label: str
    packets: int
    drops: int
    drop_ratio: float | None


class RuleStats(BaseModel):
    index: int
    label: str | None
    side: str | None
    packets: int  # packets of the label (and side) this rule sets, in the window
    drops: int


class LabelsResponse(BaseModel):
    rules: dict[str, Any]
    since: str
    until: str
    labels: list[LabelStats]
    rule_counts: list[RuleStats] = []


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def web_dir() -> Path:
    """The dashboard: DROPWATCH_WEB_DIR, else web/ next to the package (source
    checkout or editable install), else /usr/share/dropwatch/web (packages,
    the container image)."""
    env = os.environ.get("DROPWATCH_WEB_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "web", here / "web", Path("/usr/share/dropwatch/web")):
        if cand.is_dir():
            return cand
    return here.parent / "web"


def _bad(msg: str) -> HTTPException:
    return HTTPException(status_code=400, detail=msg)


def _split(values: list[str] | None) -> list[str]:
    """Repeated (?label=a&label=b) and comma-separated (?label=a,b) both work."""
    out: list[str] = []
    for v in values or []:
        out.extend(x.strip() for x in v.split(",") if x.strip())
    return out


def _window(since: str, until: str) -> tuple[datetime, datetime]:
    now = datetime.now(timezone.utc)
    try:
        # Whole seconds: the window we query is exactly the one we echo, so
        # a client can send it back and get the same answer.
        s = parse_time(since, now).replace(microsecond=0)
        u = parse_time(until, now).replace(microsecond=0)
    except TimeParseError as exc:
        raise _bad(str(exc)) from None
    if s >= u:
        raise _bad(f"since ({format_iso(s)}) must be before until ({format_iso(u)})")
    if u - s > MAX_WINDOW:
        raise _bad(f"window of {(u - s).days} days is too long: at most {MAX_WINDOW.days} days")
    return s, u


def _filters(daemon: Daemon, label: list[str] | None, side: list[str] | None, reason: list[str] | None,
             location: list[str] | None, iface: list[str] | None, pop: list[str] | None = None,
             source: list[str] | None = None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    labels = _split(label)
    for name in labels:
        if name != UNLABELED and not LABEL_RE.fullmatch(name):
            raise _bad(f"invalid label {name!r}: 1-64 characters of A-Z a-z 0-9 _ . -")
    pops = _split(pop)
    for name in pops:
        if not LABEL_RE.fullmatch(name):
            raise _bad(f"invalid pop {name!r}: a PoP name from the rules, 'none' (not tunnelled) or "
                       f"'unknown' (tunnelled from no PoP)")
    sources = _split(source)
    for src in sources:
        if src not in SOURCES:
            raise _bad(f"unknown source {src!r}: one of {', '.join(SOURCES)}")
    sides = _split(side)
    for s in sides:
        if s not in SIDES:
            raise _bad(f"unknown side {s!r}: one of {', '.join(SIDES)}")
    reasons = []
    for r in _split(reason):
        v = daemon.reasons.value(r)
        if v is None:
            raise _bad(f"unknown reason {r!r}: use a kernel drop reason name such as NETFILTER_DROP "
                       f"(GET /reasons lists them)")
        reasons.append(daemon.reasons.name(v))
    for key, vals in (("label", labels), ("side", sides), ("reason", reasons), ("location", _split(location)),
                      ("iface", _split(iface)), ("pop", pops), ("source", sources)):
        if vals:
            out[key] = vals
    return out


def _group_by(value: str, allowed: tuple[str, ...]) -> list[str]:
    """Comma-separated keys, checked by the store's own rule (one place)."""
    try:
        return check_group_by([k.strip() for k in value.split(",") if k.strip()], allowed)
    except ValueError as exc:
        raise _bad(str(exc)) from None


GROUP_KEYS = DROP_DIMS
POP_HELP = "landing PoP(s) from the rules' pops; 'none': not tunnelled; 'unknown': tunnelled from no PoP"
SOURCE_HELP = ("what attributed the drop to its label: metadata (the record from ingress), flow (the fallback) "
               "or none (no valid record, no flow entry: unlabeled)")


def create_app(daemon: Daemon, *, manage_lifecycle: bool = True) -> FastAPI:
    registry = make_registry(daemon)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            daemon.start_polling()
        try:
            yield
        finally:
            if manage_lifecycle:
                daemon.stop()

    app = FastAPI(title="dropwatch", version="0.1.0", lifespan=lifespan,
                  description="Whose packets is this host dropping, and why.")
    app.state.daemon = daemon

    token = daemon.cfg.token
    public_reads = daemon.cfg.public_reads

    @app.middleware("http")
    async def access_control(request: Request, call_next: Any) -> Response:
        """Writes need the token (or, with no token configured, a loopback
        client); reads need it too unless --public-reads. /healthz stays open
        for probes. Compared in constant time; never logged."""
        path = request.url.path
        write = request.method not in ("GET", "HEAD", "OPTIONS")
        # The page and its assets carry no data (the page asks for the token
        # and sends it with every API call); /healthz stays open for probes.
        open_path = path in ("/healthz", "/") or path.startswith("/static/")
        if not (open_path and not write):
            if token is not None:
                if write or not public_reads:
                    given = request.headers.get("authorization", "")
                    supplied = given[7:] if given.lower().startswith("bearer ") else ""
                    if not hmac.compare_digest(supplied.encode(), token.encode()):
                        return JSONResponse({"detail": "missing or wrong token (Authorization: Bearer ...)"},
                                            status_code=401, headers={"www-authenticate": "Bearer"})
            elif write and not _is_loopback(request.client.host if request.client else ""):
                return JSONResponse({"detail": "writes are accepted only from loopback clients when no token "
                                               "is configured"}, status_code=403)
        response: Response = await call_next(request)
        return response

    app.add_middleware(GZipMiddleware, minimum_size=1024)

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return JSONResponse({"detail": f"request body larger than {MAX_BODY_BYTES} bytes"}, status_code=413)
        response: Response = await call_next(request)
        return response

    web = web_dir()
    if (web / "index.html").is_file():
        app.mount("/static", StaticFiles(directory=web), name="static")

        @app.get("/", include_in_schema=False)
        def index() -> FileResponse:
            return FileResponse(web / "index.html", headers={"cache-control": "no-cache"})
    else:
        @app.get("/", include_in_schema=False)
        def index_missing() -> RedirectResponse:
            return RedirectResponse("/docs")

    @app.get("/drops", response_model=DropsResponse,
             summary="Drops by label, side, reason, location, iface, pop, source", responses=BAD_REQUEST)
    def drops(
        label: list[str] | None = Query(None, description="label name(s); 'unlabeled' selects drops with no label"),
        side: list[str] | None = Query(None, description="eyeball, origin or unknown"),
        reason: list[str] | None = Query(None, description="kernel drop reason, e.g. NETFILTER_DROP"),
        location: list[str] | None = Query(None, description="kernel location, e.g. __udp4_lib_rcv+0x4bc"),
        iface: list[str] | None = Query(None, description="ingress interface"),
        pop: list[str] | None = Query(None, description=POP_HELP),
        source: list[str] | None = Query(None, description=SOURCE_HELP),
        since: str = Query("-15m", description="relative (-90s, -15m, -2h, -7d) or ISO 8601"),
        until: str = Query("now", description="relative, 'now' or ISO 8601"),
        group_by: str = Query("label,side,reason", description=f"comma-separated subset of {','.join(GROUP_KEYS)}"),
        limit: int = Query(100, ge=1, le=MAX_LIMIT),
    ) -> DropsResponse:
        s, u = _window(since, until)
        f = _filters(daemon, label, side, reason, location, iface, pop, source)
        g = _group_by(group_by, GROUP_KEYS)
        res = daemon.store.query_drops(s, u, filters=f, group_by=g, limit=limit)
        return DropsResponse(since=format_iso(s), until=format_iso(u), total=res.total, groups=res.groups)

    @app.get("/drops/timeseries", response_model=TimeseriesResponse, summary="Drops per time step, per group",
             responses=BAD_REQUEST)
    def timeseries(
        label: list[str] | None = Query(None), side: list[str] | None = Query(None),
        reason: list[str] | None = Query(None), location: list[str] | None = Query(None),
        iface: list[str] | None = Query(None),
        pop: list[str] | None = Query(None, description=POP_HELP),
        source: list[str] | None = Query(None, description=SOURCE_HELP),
        since: str = Query("-1h"), until: str = Query("now"),
        step: str = Query("auto", description="bucket width (10s, 1m, 5m...) or auto"),
        group_by: str = Query("label", description=f"comma-separated subset of {','.join(GROUP_KEYS)}"),
    ) -> TimeseriesResponse:
        s, u = _window(since, until)
        f = _filters(daemon, label, side, reason, location, iface, pop, source)
        g = _group_by(group_by, GROUP_KEYS)
        span = (u - s).total_seconds()
        if step == "auto":
            want = span / 240
            step_s = next((x for x in NICE_STEPS_S if x >= want), NICE_STEPS_S[-1])
        else:
            try:
                step_s = max(1, math.ceil(parse_duration(step)))
            except TimeParseError as exc:
                raise _bad(str(exc)) from None
        try:
            ts = daemon.store.timeseries(s, u, step_s, filters=f, group_by=g)
        except ValueError as exc:
            raise _bad(str(exc)) from None
        return TimeseriesResponse(
            since=format_iso(s), until=format_iso(u), step_s=ts.step_s,
            buckets=[format_iso(datetime.fromtimestamp(b, timezone.utc)) for b in ts.buckets],
            series=[SeriesItem(group=x["group"], counts=x["counts"]) for x in ts.series])

    def _labels_response(since: str, until: str, pop: list[str] | None = None) -> LabelsResponse:
        s, u = _window(since, until)
        # Packets are counted per PoP too, so a PoP filter keeps ratios meaningful.
        pf = _filters(daemon, None, None, None, None, None, pop)
        pk = {str(r["label"]): int(r["packets"])
              for r in daemon.store.query_packets(s, u, filters=pf, group_by=["label"])}
        dr = {str(g["label"]): int(g["count"])
              for g in daemon.store.query_drops(s, u, filters=pf, group_by=["label"], limit=None).groups}
        rules = daemon.rules
        names = set(rules.labels() if rules else []) | set(pk) | set(dr) | {UNLABELED}
        # "unlabeled" drops include packets that never passed the labeler
        # (local traffic, other interfaces): no meaningful ratio.
        out = [LabelStats(label=n, packets=pk.get(n, 0), drops=dr.get(n, 0),
                          drop_ratio=(dr.get(n, 0) / pk[n]) if pk.get(n) and n != UNLABELED else None)
               for n in names]
        out.sort(key=lambda x: (-x.drops, x.label))
        # Per rule: what its label (and side) saw. Counters are kept per
        # (label, side), not per rule, so two rules setting the same label
        # show the same numbers.
        pk_ls = {(str(r["label"]), str(r["side"])): int(r["packets"])
                 for r in daemon.store.query_packets(s, u, filters=pf, group_by=["label", "side"])}
        dr_ls = {(str(g["label"]), str(g["side"])): int(g["count"])
                 for g in daemon.store.query_drops(s, u, filters=pf, group_by=["label", "side"], limit=None).groups}
        per_rule = []
        for i, r in enumerate(rules.rules if rules else []):
            def match(key: tuple[str, str], r: Rule = r) -> bool:
                return (r.label is None or key[0] == r.label) and (r.side is None or key[1] == r.side)
            per_rule.append(RuleStats(index=i, label=r.label, side=r.side,
                                      packets=sum(v for k, v in pk_ls.items() if match(k)),
                                      drops=sum(v for k, v in dr_ls.items() if match(k))))
        return LabelsResponse(rules=rules.to_dict() if rules else {}, since=format_iso(s), until=format_iso(u),
                              labels=out, rule_counts=per_rule)

    @app.get("/labels", response_model=LabelsResponse, summary="Active rules; per label packets, drops, ratio",
             responses=BAD_REQUEST)
    def get_labels(since: str = Query("-15m"), until: str = Query("now"),
                   pop: list[str] | None = Query(None, description=POP_HELP + " (packets and drops of those only)"),
                   ) -> LabelsResponse:
        return _labels_response(since, until, pop)

    @app.put("/labels", response_model=LabelsResponse, summary="Replace the rules (all or nothing)",
             responses={422: {"description": "invalid rules; the previous rules stay active"}})
    def put_labels(body: dict[str, Any] = Body(..., examples=[{
            "rules": [{"label": "customerX", "dst": ["10.10.1.0/24"]}], "default_side": "eyeball"}])) -> Any:
        try:
            rules = parse_rules(body, source="PUT /labels")
            daemon.replace_rules(rules)
        except RulesError as exc:
            return JSONResponse(status_code=422, content={"detail": {
                "message": str(exc), "rule": exc.rule, "field": exc.field}})
        except (DropwatchError, StoreError, OSError) as exc:
            # StoreError: e.g. no label or PoP id left for a new name.
            return JSONResponse(status_code=422, content={"detail": {
                "message": f"rules not applied, previous rules stay active: {exc}", "rule": None, "field": None}})
        return _labels_response("-15m", "now")

    def _sample_query(label: list[str] | None, side: list[str] | None, reason: list[str] | None,
                      location: list[str] | None, iface: list[str] | None, pop: list[str] | None,
                      source: list[str] | None, since: str | None, limit: int) -> list[Any]:
        f = _filters(daemon, label, side, reason, location, iface, pop, source)
        after = _window(since, "now")[0] if since else None
        return daemon.samples.query(label=f.get("label", ()), side=f.get("side", ()), reason=f.get("reason", ()),
                                    location=f.get("location", ()), iface=f.get("iface", ()),
                                    pop=f.get("pop", ()), source=f.get("source", ()), since=after, limit=limit)

    @app.get("/drops/samples", summary="Most recent sampled drops (examples, rate-limited), newest first",
             responses=BAD_REQUEST)
    def samples(label: list[str] | None = Query(None), side: list[str] | None = Query(None),
                reason: list[str] | None = Query(None), location: list[str] | None = Query(None),
                iface: list[str] | None = Query(None), pop: list[str] | None = Query(None, description=POP_HELP),
                source: list[str] | None = Query(None, description=SOURCE_HELP), since: str | None = Query(None),
                limit: int = Query(100, ge=1, le=MAX_SAMPLES)) -> dict[str, Any]:
        items = _sample_query(label, side, reason, location, iface, pop, source, since, limit)
        st = daemon.collector.totals.stats
        return {"samples": [s.to_json() for s in items],
                "lost": {"rate_limit": st.get("sample_rate_limited", 0), "ring_full": st.get("sample_ring_full", 0)},
                "sample_rate": daemon.cfg.sample_rate}

    @app.get("/drops/samples.pcap",
             summary="The same samples as pcapng (comments carry label/side/reason/location/pop/source)",
             response_class=Response, responses={200: {"content": {"application/x-pcapng": {}}}, **BAD_REQUEST})
    def samples_pcap(label: list[str] | None = Query(None), side: list[str] | None = Query(None),
                     reason: list[str] | None = Query(None), location: list[str] | None = Query(None),
                     iface: list[str] | None = Query(None), pop: list[str] | None = Query(None, description=POP_HELP),
                     source: list[str] | None = Query(None, description=SOURCE_HELP),
                     since: str | None = Query(None),
                     limit: int = Query(MAX_SAMPLES, ge=1, le=MAX_SAMPLES)) -> Response:
        items = _sample_query(label, side, reason, location, iface, pop, source, since, limit)
        return Response(to_pcapng(items), media_type="application/x-pcapng",
                        headers={"content-disposition": 'attachment; filename="dropwatch-samples.pcapng"'})

    @app.get("/healthz", summary="Attached programs and poll freshness; 503 when not attached or stale")
    def healthz() -> JSONResponse:
        ok, body = daemon.health()
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/reasons", summary="Drop reasons known to the running kernel")
    def reasons() -> dict[str, list[str]]:
        return {"reasons": daemon.reasons.names()}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app



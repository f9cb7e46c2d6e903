"""The running service: loader + store + collector + rules, and the poll loop.

One Daemon per process, owned by the FastAPI app (app.state.daemon); the
lifespan starts the poll thread and, on shutdown, stops it, writes the last
interval and detaches everything.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .collector import Collector
from .kernel import DropReasons, Kallsyms
from .loader import DropwatchError, Loader
from .netns import entered
from .rules import CompiledRules, RulesError, RuleSet, compile_rules, dump_rules_yaml, load_rules_file
from .samples import SampleBuffer, SampleReader
from .store import Store

log = logging.getLogger("dropwatch.daemon")


@dataclass
class DaemonConfig:
    ifaces: list[str]
    config_path: Path
    db_path: Path
    listen: str = "127.0.0.1:9180"
    xdp_mode: str = "auto"
    poll_interval_s: float = 1.0
    netns: str | None = None
    tracepoint_mode: str = "auto"
    metrics_max_labels: int | None = None  # cardinality cap for /metrics (None: no cap)
    sample_rate: int = 10  # sampled drop events per second per CPU; 0 disables
    flow_map_entries: int = 65536  # dw_flows size (the flow fallback), fixed at load
    tailcalls: list[tuple[str, int]] = field(default_factory=list)  # (pinned prog array, slot)
    token: str | None = None  # API token; None: writes only from loopback
    public_reads: bool = False  # with a token: leave GET endpoints open
    samples_kept: int = 2000
    extra: dict[str, str] = field(default_factory=dict)


SIOCGIFFLAGS = 0x8913
IFF_UP = 0x1


def _iface_up(iface: str, netns: str | None) -> bool:
    try:
        with entered(netns):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            res = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH14s", iface.encode()[:15], 0, b""))
        finally:
            s.close()
        return bool(struct.unpack("16sH14s", res)[1] & IFF_UP)
    except OSError:
        return False


class Daemon:
    def __init__(self, cfg: DaemonConfig, *, loader: Loader | None = None, store: Store | None = None,
                 reasons: DropReasons | None = None, kallsyms: Kallsyms | None = None) -> None:
        self.cfg = cfg
        self.loader = loader or Loader(tracepoint_mode=cfg.tracepoint_mode, sample_rate=cfg.sample_rate,
                                      flow_entries=cfg.flow_map_entries)
        self.store = store or Store(cfg.db_path)
        self.reasons = reasons or DropReasons.load()
        self.kallsyms = kallsyms or Kallsyms.load()
        # Polls hand their deltas to a writer thread: a poll's cost does not
        # include the SQLite write (see Collector, async_writes).
        self.collector = Collector(self.loader, self.store, self.reasons, self.kallsyms, netns=cfg.netns,
                                   async_writes=True)
        self.rules: RuleSet | None = None
        self.samples = SampleBuffer(cfg.samples_kept)
        self.sample_reader: SampleReader | None = None
        self.started_at = datetime.now(timezone.utc)
        self._rules_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.poll_errors = 0
        self.last_error: str | None = None
        self.iface_state: dict[str, str] = {}

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Load, apply rules, attach. Raises DropwatchError/RulesError with a one-line cause."""
        rules = load_rules_file(self.cfg.config_path)
        self.loader.load()
        self._apply(rules, write_file=False)
        kind = self.loader.attach_reader()
        log.info("drop reader attached (%s)", kind)
        if self.cfg.sample_rate:
            self.sample_reader = SampleReader(self.loader.lib, self.loader.samples_map_fd(),
                                              self.collector.sample_names, self.samples)
            self.sample_reader.start()
        for iface in self.cfg.ifaces:
            att = self.loader.attach_xdp(iface, self.cfg.xdp_mode, netns=self.cfg.netns)
            log.info("attach %s: XDP labeler in %s mode", iface, att.mode)
        for path, index in self.cfg.tailcalls:
            self.loader.attach_tailcall(path, index)
        self.collector.refresh_label_names()
        if self.kallsyms.restricted:
            log.warning("/proc/kallsyms hides addresses from this process (needs CAP_SYSLOG when "
                        "kernel.perf_event_paranoid > 1 or kptr_restrict is set): kernel locations are shown "
                        "as addresses")

    def start_polling(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dropwatch-poll", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.cfg.poll_interval_s):
            self.poll_once()

    def poll_once(self) -> None:
        try:
            self._check_interfaces()
            self.collector.poll()
            self._check_meta_failures()
        except Exception as exc:  # noqa: BLE001 - the poll loop must survive anything
            self.poll_errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("poll failed: %s", self.last_error)

    def _check_interfaces(self) -> None:
        """Interfaces may go down, be renamed, deleted and come back while we
        run: report it, keep the others, re-attach when one returns."""
        netns = self.cfg.netns
        for iface in self.cfg.ifaces:
            att = self.loader.xdp.get((netns, iface))
            try:
                with entered(netns):
                    idx: int | None = socket.if_nametoindex(iface)
            except OSError:
                idx = None
            state: str
            if att is not None and idx != att.ifindex:
                try:
                    with entered(netns):
                        now_named = socket.if_indextoname(att.ifindex)
                except OSError:
                    now_named = None
                if now_named is not None and idx is None:
                    state = f"renamed to {now_named} (still attached)"
                else:
                    # Deleted (the link died with the device), or a different
                    # device took the name: drop our link, attach afresh below.
                    self.loader.detach_xdp(iface, netns)
                    log.warning("%s: interface deleted; will re-attach when it returns", iface)
                    att = None
            if att is None:
                if idx is None:
                    state = "missing"
                else:
                    try:
                        att = self.loader.attach_xdp(iface, self.cfg.xdp_mode, netns=netns)
                        log.info("%s: interface is back, re-attached (%s mode)", iface, att.mode)
                    except DropwatchError as exc:
                        state = f"attach failed: {exc}"
            if att is not None and idx == att.ifindex:
                state = "up" if _iface_up(iface, netns) else "down"
            prev = self.iface_state.get(iface)
            if prev != state:
                if prev is not None:
                    log.info("%s: %s", iface, state)
                self.iface_state[iface] = state

    def _check_meta_failures(self) -> None:
        """A native-mode driver without metadata support: fall back (auto) or report."""
        fails = self.collector.totals.meta_failures
        for (netns, iface), att in list(self.loader.xdp.items()):
            if att.mode != "native" or not fails.get(iface):
                continue
            if self.cfg.xdp_mode == "auto":
                log.warning("%s: driver refused XDP metadata in native mode; re-attaching in generic mode", iface)
                self.loader.detach_xdp(iface, netns)
                self.loader.attach_xdp(iface, "generic", netns=netns)
            else:
                self.last_error = (f"{iface}: the driver does not support XDP metadata in native mode; "
                                   f"packets are not labeled (use --xdp-mode generic or auto)")
                log.error("%s", self.last_error)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        # The last interval: everything counted up to now goes to the store,
        # and the writer thread finishes every batch before the store closes.
        self.poll_once()
        self.collector.close()
        if self.sample_reader is not None:
            self.sample_reader.stop()
            self.sample_reader = None
        for (netns, iface) in list(self.loader.xdp):
            self.loader.detach_xdp(iface, netns)
            log.info("detach %s", iface)
        self.loader.close()
        self.store.close()
        log.info("stopped")

    # ------------------------------------------------------------ rules

    def _compile(self, rules: RuleSet, source: str) -> CompiledRules:
        """Rules with the store's stable label and PoP ids (new names get new
        ids; a full id space is a StoreError naming the limit)."""
        return compile_rules(rules, self.store.label_ids(rules.labels()), source=source,
                             pop_ids=self.store.pop_ids(rules.pop_names()))

    def _apply(self, rules: RuleSet, *, write_file: bool) -> None:
        compiled = self._compile(rules, str(self.cfg.config_path))
        tmp: Path | None = None
        if write_file:
            tmp = self._write_tmp(rules)
        try:
            self.loader.apply_rules(compiled)
        except BaseException:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise
        old = self.rules
        self.rules = rules
        if tmp is not None:
            try:
                os.replace(tmp, self.cfg.config_path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                if old is not None:
                    self.loader.apply_rules(self._compile(old, str(self.cfg.config_path)))
                    self.rules = old
                raise DropwatchError(f"{self.cfg.config_path}: cannot write rules file: {exc.strerror}; "
                                     f"previous rules kept") from None
        self.collector.refresh_label_names()

    def _write_tmp(self, rules: RuleSet) -> Path:
        d = self.cfg.config_path.parent
        fd, name = tempfile.mkstemp(prefix=".dropwatch-rules-", suffix=".yaml", dir=d)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(dump_rules_yaml(rules))
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return Path(name)

    def replace_rules(self, rules: RuleSet) -> RuleSet:
        """PUT /labels: all or nothing; the file on disk follows atomically."""
        with self._rules_lock:
            self._apply(rules, write_file=True)
            log.info("rules reloaded: %d rules, labels %s", len(rules.rules), ", ".join(rules.labels()) or "-")
            return rules

    # ------------------------------------------------------------ health

    def health(self) -> tuple[bool, dict[str, object]]:
        now = datetime.now(timezone.utc)
        last = self.collector.last_poll
        age = (now - last).total_seconds() if last else None
        stale_after = max(3 * self.cfg.poll_interval_s, 5.0)
        attached = {att.iface: att.mode for att in self.loader.xdp.values()}
        attached.update({f"tailcall:{p}[{i}]": "chained" for p, i in self.loader.tailcalls})
        reader = self.loader.reader_kind if self.loader.reader_prog_fd is not None else None
        problems = []
        if not attached:
            problems.append("no interface attached")
        for iface, state in self.iface_state.items():
            if state not in ("up",):
                problems.append(f"{iface}: {state}")
        if reader is None:
            problems.append("drop reader not attached")
        if last is None:
            if (now - self.started_at).total_seconds() > stale_after:
                problems.append("no poll yet")
        elif age is not None and age > stale_after:
            problems.append(f"last poll {age:.1f}s ago")
        if self.collector.store_error:
            problems.append(f"history store: {self.collector.store_error}")
        # Degraded (200) while something still labels and polls; 503 when not.
        ok = bool(attached) and reader is not None and not any(p.startswith(("last poll", "no poll"))
                                                                for p in problems)
        body: dict[str, object] = {
            "status": "ok" if not problems else ("degraded" if ok else "unhealthy"),
            "problems": problems,
            "attached": attached,
            "interfaces": dict(self.iface_state),
            "programs": {k: getattr(v, "id", None) for k, v in self._prog_infos().items()},
            "reader": reader,
            "last_poll": last.isoformat().replace("+00:00", "Z") if last else None,
            "poll_age_s": round(age, 3) if age is not None else None,
            "poll_interval_s": self.cfg.poll_interval_s,
            "map_full": self.collector.totals.map_full,
            "corrupt_records": self.collector.totals.corrupt_records,
            "poll_errors": self.poll_errors,
            "last_error": self.last_error,
        }
        return ok, body

    def _prog_infos(self) -> dict[str, object]:
        try:
            return self.loader.prog_infos()
        except OSError:
            return {}

    def reload_rules_from_file(self) -> RuleSet:
        rules = load_rules_file(self.cfg.config_path)
        with self._rules_lock:
            self._apply(rules, write_file=False)
        return rules


__all__ = ["Daemon", "DaemonConfig", "DropwatchError", "RulesError"]

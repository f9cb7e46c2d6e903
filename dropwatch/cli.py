"""Command line: dropwatch run | check | demo | watch | survival."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType

from . import abi
from .loader import TRACEPOINT_MODES, XDP_MODES, DropwatchError, bpf_dir
from .rules import RulesError
from .store import StoreError
from .timeparse import TimeParseError, parse_duration

log = logging.getLogger("dropwatch")

DEFAULT_LISTEN = "127.0.0.1:9180"
DEFAULT_DB = "/var/lib/dropwatch/dropwatch.db"
CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF, CAP_SYS_ADMIN = 12, 38, 39, 21


class UsageError(Exception):
    pass


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _effective_caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def privilege_problem() -> str | None:
    caps = _effective_caps()

    def have(cap: int) -> bool:
        return bool(caps >> cap & 1)

    if have(CAP_SYS_ADMIN) or (have(CAP_BPF) and have(CAP_PERFMON) and have(CAP_NET_ADMIN)):
        return None
    return "needs root or CAP_BPF+CAP_PERFMON+CAP_NET_ADMIN (run as root, or via the systemd unit)"


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not (0 < int(port) < 65536):
        raise UsageError(f"--listen {value!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host.strip("[]") or "127.0.0.1", int(port)


def parse_tailcall(value: str) -> tuple[str, int]:
    path, sep, index = value.rpartition(":")
    if not sep or not path.startswith("/") or not index.isdigit():
        raise UsageError(f"--xdp-tailcall {value!r}: expected /sys/fs/bpf/PATH:INDEX")
    return path, int(index)


def _loopback_host(host: str) -> bool:
    import ipaddress
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: str | None) -> str | None:
    """The API token from a file (first line) or DROPWATCH_TOKEN; never logged."""
    if path:
        try:
            text = Path(path).read_text().strip()
        except OSError as exc:
            raise UsageError(f"--token-file {path}: {exc.strerror}") from None
        if len(text) < 16:
            raise UsageError(f"--token-file {path}: token shorter than 16 characters")
        return text.splitlines()[0]
    env = os.environ.get("DROPWATCH_TOKEN")
    if env is not None:
        if len(env.strip()) < 16:
            raise UsageError("DROPWATCH_TOKEN: token shorter than 16 characters")
        return env.strip()
    return None


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets
    # only then. Without it uvicorn's separate header and body writes meet
    # Nagle and the client's delayed ACK: 40 ms per keep-alive response.
    s = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError as exc:
        s.close()
        raise UsageError(f"--listen {host}:{port}: {exc.strerror}") from None
    s.listen(128)
    return s


# ---------------------------------------------------------------- run


def _serve(app: object, sock: socket.socket) -> None:
    """uvicorn, with SIGTERM/SIGINT meaning "shut down gracefully, exit 0".

    uvicorn re-raises a captured signal after its graceful shutdown (so the
    process would die of SIGTERM); we handle the signals ourselves.
    """
    import contextlib

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # type: ignore[no-untyped-def,override]
            yield

        def install_signal_handlers(self) -> None:  # older uvicorn
            pass

    # Bounded concurrency and keep-alive: one client cannot hold the daemon.
    server = Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",  # type: ignore[arg-type]
                                   limit_concurrency=64, timeout_keep_alive=5, backlog=128))

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        server.should_exit = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.run(sockets=[sock])


def cmd_run(args: argparse.Namespace) -> int:
    from .api import create_app
    from .daemon import Daemon, DaemonConfig

    if args.metrics_max_labels is not None and args.metrics_max_labels < 1:
        raise UsageError(f"--metrics-max-labels {args.metrics_max_labels}: must be at least 1")
    if not 0 <= args.sample_rate <= 100_000:
        raise UsageError(f"--sample-rate {args.sample_rate}: 0..100000 events/s per CPU")
    if not 1024 <= args.flow_map_entries <= 1 << 24:
        raise UsageError(f"--flow-map-entries {args.flow_map_entries}: 1024..16777216")
    tailcalls = [parse_tailcall(v) for v in args.xdp_tailcall]
    if not args.iface and not tailcalls:
        raise UsageError("at least one --iface (or --xdp-tailcall) is required")
    try:
        poll_s = parse_duration(args.poll_interval)
    except TimeParseError as exc:
        raise UsageError(f"--poll-interval: {exc}") from None
    host, port = parse_listen(args.listen)
    problem = privilege_problem()
    if problem:
        raise DropwatchError(problem)
    if not Path("/sys/kernel/btf/vmlinux").exists():
        raise DropwatchError("no kernel BTF (/sys/kernel/btf/vmlinux): the kernel needs CONFIG_DEBUG_INFO_BTF=y")
    config = Path(args.config)
    if not config.exists():
        raise UsageError(f"--config {config}: no such file")
    token = read_token(args.token_file)
    if token is None and not _loopback_host(host):
        raise UsageError(f"--listen {args.listen}: listening beyond loopback needs a token "
                         f"(--token-file FILE or DROPWATCH_TOKEN)")
    if args.public_reads and token is None:
        raise UsageError("--public-reads needs a token (--token-file or DROPWATCH_TOKEN)")
    sock = _bind(host, port)
    cfg = DaemonConfig(ifaces=args.iface, config_path=config, db_path=Path(args.db), listen=args.listen,
                       xdp_mode=args.xdp_mode, poll_interval_s=poll_s, netns=args.netns,
                       tracepoint_mode=args.tracepoint, metrics_max_labels=args.metrics_max_labels,
                       sample_rate=args.sample_rate, token=token, public_reads=args.public_reads,
                       tailcalls=tailcalls, flow_map_entries=args.flow_map_entries)
    daemon = Daemon(cfg)
    try:
        daemon.start()
    except BaseException:
        daemon.loader.close()
        daemon.store.close()
        sock.close()
        raise
    app = create_app(daemon)
    log.info("serving on http://%s:%d (API docs at /docs, metrics at /metrics)", host, port)
    _serve(app, sock)
    return 0


# ---------------------------------------------------------------- check


def cmd_check(args: argparse.Namespace) -> int:
    rows: list[tuple[str, bool, str]] = []
    fatal = False

    def add(name: str, ok: bool, detail: str, required: bool = True) -> None:
        nonlocal fatal
        rows.append((name, ok, detail))
        if required and not ok:
            fatal = True

    problem = privilege_problem()
    add("privileges", problem is None, "ok" if problem is None else problem)
    btf = Path("/sys/kernel/btf/vmlinux")
    add("kernel BTF", btf.exists(), str(btf) if btf.exists() else f"{btf} missing (CONFIG_DEBUG_INFO_BTF=y)")
    add("kernel", True, os.uname().release, required=False)
    try:
        from .libbpf import libbpf
        lb = libbpf()
        add("libbpf", True, f"libbpf.so.1 loaded, {lb.num_possible_cpus()} possible CPUs")
    except OSError as exc:
        add("libbpf", False, str(exc))
    objs = [bpf_dir() / n for n in ("labeler.bpf.o", "drop_reader.bpf.o")]
    missing = [str(p) for p in objs if not p.exists()]
    add("BPF objects", not missing, f"{bpf_dir()}" if not missing else f"missing {', '.join(missing)} "
        f"(make -C bpf)")
    if btf.exists():
        from .btf import Btf
        from .kernel import DropReasons
        b = Btf.from_file(btf)
        has_tp = b.find("btf_trace_kfree_skb", "typedef") is not None
        add("tracepoint skb:kfree_skb", has_tp, "tp_btf available" if has_tp else "no btf_trace_kfree_skb in BTF")
        try:
            dr = DropReasons.from_btf(b)
            add("drop reasons", dr.has_reasons, f"{len(dr.names())} reasons from enum skb_drop_reason"
                if dr.has_reasons else "kernel older than 5.17: no drop reasons", required=False)
        except Exception as exc:  # noqa: BLE001
            add("drop reasons", False, str(exc), required=False)
    if not missing and problem is None and btf.exists():
        from .loader import Loader
        try:
            with Loader() as ld:
                ld.load()
                kind = ld.attach_reader()
            add("load + verify", True, f"both programs accepted by the verifier; reader via {kind}")
        except (DropwatchError, OSError) as exc:
            add("load + verify", False, str(exc).splitlines()[0])
    for iface in args.iface or []:
        from .netns import entered
        try:
            with entered(args.netns):
                socket.if_nametoindex(iface)
                drv = _driver(iface)
        except OSError as exc:
            add(f"iface {iface}", False, f"does not exist ({exc.strerror})")
            continue
        known = drv in NATIVE_META_DRIVERS
        add(f"iface {iface}", True, f"driver {drv}: " + (
            "native XDP metadata supported" if known else
            "native metadata support unknown: --xdp-mode auto falls back to generic if the driver refuses it"),
            required=False)
    width = max(len(r[0]) for r in rows)
    for name, ok, detail in rows:
        print(f"{'OK ' if ok else 'FAIL'} {name:<{width}}  {detail}")
    print("dropwatch can run here" if not fatal else "dropwatch cannot run here: fix the FAIL lines above")
    return 1 if fatal else 0


# Drivers known to implement bpf_xdp_adjust_meta in native mode (see
# README "Interfaces"); dropwatch still verifies at run time through the
# labeler's per-interface failure counter.
NATIVE_META_DRIVERS = {"veth", "virtio_net", "ixgbe", "i40e", "ice", "mlx5_core", "bnxt_en", "igc", "tun"}


def _driver(iface: str) -> str:
    p = Path(f"/sys/class/net/{iface}/device/driver")
    if p.exists():
        return p.resolve().name
    uevent = Path(f"/sys/class/net/{iface}/uevent")
    if uevent.exists():
        for line in uevent.read_text().splitlines():
            if line.startswith("DEVTYPE="):
                return line.split("=", 1)[1]
    return "unknown"


# ---------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    import yaml

    from .api import create_app
    from .daemon import Daemon, DaemonConfig
    from .lab import LAB_RULES, lab

    problem = privilege_problem()
    if problem:
        raise DropwatchError(f"the demo {problem}")
    host, port = parse_listen(args.listen)
    sock = _bind(host, port)
    tmp = Path(tempfile.mkdtemp(prefix="dropwatch-demo-"))
    stop = threading.Event()

    try:
        with lab() as lb:
            rules_path = tmp / "rules.yaml"
            rules_path.write_text(yaml.safe_dump(LAB_RULES, sort_keys=False))
            cfg = DaemonConfig(ifaces=[lb.rx_if], config_path=rules_path, db_path=tmp / "dropwatch.db",
                               listen=args.listen, xdp_mode=args.xdp_mode, poll_interval_s=1.0, netns=lb.rx_ns)
            daemon = Daemon(cfg)
            daemon.start()
            gen = threading.Thread(target=_demo_traffic, args=(lb, stop), name="demo-traffic", daemon=True)
            gen.start()
            app = create_app(daemon)
            print(f"\ndropwatch demo running: lab namespaces {lb.rx_ns} / {lb.tx_ns}\n"
                  f"  API:      http://{host}:{port}/drops?group_by=label,side,reason\n"
                  f"  labels:   http://{host}:{port}/labels\n"
                  f"  metrics:  http://{host}:{port}/metrics\n"
                  f"  docs:     http://{host}:{port}/docs\n"
                  f"  rules:    {rules_path}\n"
                  f"Ctrl-C stops the demo and removes the lab.\n", flush=True)
            watchdog = threading.Thread(target=_watch_generator, args=(gen, stop), daemon=True)
            watchdog.start()
            try:
                _serve(app, sock)
            finally:
                stop.set()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        sock.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print("demo stopped, lab removed")
    return 0


def _watch_generator(gen: threading.Thread, stop: threading.Event) -> None:
    # A crashed generator ends the demo (and so removes the lab).
    gen.join()
    if not stop.is_set():
        log.error("traffic generator stopped; ending the demo")
        os.kill(os.getpid(), signal.SIGTERM)


def _demo_traffic(lb: object, stop: threading.Event) -> None:
    """Steady labeled traffic with several kinds of real drops, bounded rate."""
    from .lab import RX_V4, RX_V6, TX_EYEBALL_V4, TX_ORIGIN_V4, TX_V6, Lab
    assert isinstance(lb, Lab)
    sink = lb.udp_socket(lb.rx_ns, bind=(RX_V4["customerY"], 7000), rcvbuf=4096)  # never read: rcvbuf drops
    ok = lb.udp_socket(lb.rx_ns, bind=(RX_V4["customerX"], 8000))
    try:
        tick = 0
        while not stop.is_set():
            tick += 1
            lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 20)           # NO_SOCKET, customerX eyeball
            lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 8000, 200)          # delivered
            lb.send_udp(TX_ORIGIN_V4, RX_V4["customerY"], 9999, 10 + tick % 7)  # NETFILTER_DROP, customerY origin
            lb.send_udp(TX_EYEBALL_V4, RX_V4["customerY"], 7000, 12, payload=b"y" * 1200)  # SOCKET_RCVBUFF
            lb.send_udp(TX_V6, RX_V6["customerX"], 5555, 5)                     # NO_SOCKET over IPv6
            lb.send_udp(TX_EYEBALL_V4, RX_V4["nolabel"], 4444, 3)               # unlabeled
            while True:  # drain the delivered socket
                try:
                    ok.recv(2048, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
            stop.wait(1.0)
    finally:
        sink.close()
        ok.close()


# ---------------------------------------------------------------- watch


def cmd_watch(args: argparse.Namespace) -> int:
    """Load everything on one interface and print live drops per label and reason."""
    from .kernel import DropReasons
    from .loader import Loader
    from .rules import compile_rules, load_rules_file

    problem = privilege_problem()
    if problem:
        raise DropwatchError(problem)
    rules = load_rules_file(Path(args.config))
    names = {n: i + 1 for i, n in enumerate(rules.labels())}
    pop_ids = {n: i + 1 for i, n in enumerate(rules.pop_names())}
    by_id = {v: k for k, v in names.items()}
    reasons = DropReasons.load()
    with Loader(tracepoint_mode=args.tracepoint) as ld:
        ld.load()
        ld.apply_rules(compile_rules(rules, names, source=args.config, pop_ids=pop_ids))
        ld.attach_reader()
        att = ld.attach_xdp(args.iface, args.xdp_mode, netns=args.netns)
        print(f"attached to {args.iface} ({att.mode}); Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(args.interval)
                tally: Counter[tuple[str, str, str]] = Counter()
                for (lid, side, reason, _loc, _if, _pop, source, *_rest), n in ld.read_drops().items():
                    if source not in (abi.Source.META, abi.Source.FLOW):
                        lid = 0  # not attributed (no or corrupt record)
                    tally[(by_id.get(lid, "unlabeled"), abi.Side(side & 3).text if side < 3 else "unknown",
                           reasons.name(reason))] += n
                pk = ld.read_packets(len(names))
                print(f"--- {time.strftime('%H:%M:%S')}")
                for (label, side_name, reason_name), n in tally.most_common(args.top):
                    seen = sum(v[0] for (lid, _s, _p), v in pk.items() if by_id.get(lid, "unlabeled") == label)
                    print(f"{label:<20} {side_name:<8} {reason_name:<28} {n:>10}  (of {seen} labeled packets)")
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass
    return 0


# ---------------------------------------------------------------- survival


def cmd_survival(args: argparse.Namespace) -> int:
    """The survival matrix (dropwatch/survival.py). Exit 1 if any drop was
    misattributed, 3 if a path could not be measured (harness error)."""
    import json

    from . import survival

    if args.list:
        for name, p in survival.PATHS.items():
            print(f"{name:<28} {p.what}")
        return 0
    names = survival.path_names() if args.paths == "all" else [x.strip() for x in args.paths.split(",") if x.strip()]
    unknown = [x for x in names if x not in survival.PATHS]
    if unknown or not names:
        raise UsageError(f"--paths: unknown path(s) {', '.join(unknown) or '(none given)'}; see --list")
    if not 1 <= args.packets <= 10_000:
        raise UsageError(f"--packets {args.packets}: 1..10000")
    if args.update_baseline and (args.paths != "all" or args.mode != "both"):
        raise UsageError("--update-baseline records the whole matrix: use it with --paths all --mode both")
    problem = privilege_problem()
    if problem:
        raise DropwatchError(f"the survival matrix {problem}")
    if not args.verbose:  # one attach/detach line per path would drown the progress lines
        logging.getLogger("dropwatch.loader").setLevel(logging.WARNING)
    modes = ["generic", "native"] if args.mode == "both" else [args.mode]
    total = len(names) * len(modes)
    done = 0

    def progress(row: survival.Row) -> None:
        nonlocal done
        done += 1
        print(f"[{done}/{total}] {row.path} {row.mode}: {row.status} ({row.seconds:.1f}s)", file=sys.stderr,
              flush=True)

    started = time.monotonic()
    rules = None
    if args.flow_fallback != survival.RULES["flow_fallback"]["mode"]:
        if args.update_baseline:
            raise UsageError("--update-baseline records the matrix with the default --flow-fallback")
        rules = {**survival.RULES, "flow_fallback": {**survival.RULES["flow_fallback"], "mode": args.flow_fallback}}
    with survival.Matrix.open(rules) as m:
        rows = m.run(names, modes, args.packets, progress=progress)
    elapsed = time.monotonic() - started
    if args.markdown:
        print(f"Kernel `{os.uname().release}`, {args.packets} packets per path, "
              f"`dropwatch survival --mode {args.mode} --markdown`:\n")
        print(survival.format_markdown(rows))
    else:
        print(survival.format_table(rows))
        print(f"\nkernel {os.uname().release}, {args.packets} packets per path, {elapsed:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps({"kernel": os.uname().release, "packets": args.packets,
                                               "rows": [r.to_json() for r in rows]}, indent=1) + "\n")
    if args.update_baseline:
        Path(args.update_baseline).write_text(survival.dump_baseline(survival.baseline_of(rows)))
        print(f"baseline written to {args.update_baseline}", file=sys.stderr)
    if any(r.misattributed or r.pop_mismatch for r in rows):
        print("dropwatch: MISATTRIBUTED drops (label, side or PoP) on: " + ", ".join(
            f"{r.path}/{r.mode}" for r in rows if r.misattributed or r.pop_mismatch), file=sys.stderr)
        return 1
    if any(r.status == "error" for r in rows):
        return 3
    return 0


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dropwatch", description="Whose packets is this host dropping, and why.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="load, attach, poll and serve the API")
    r.add_argument("--iface", action="append", default=[], metavar="IFACE", help="interface to label (repeatable)")
    r.add_argument("--config", required=True, metavar="FILE", help="rules file (YAML or JSON)")
    r.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT")
    r.add_argument("--db", default=DEFAULT_DB, metavar="PATH", help="SQLite history")
    r.add_argument("--xdp-mode", default="auto", choices=XDP_MODES)
    r.add_argument("--poll-interval", default="1s", metavar="DURATION")
    r.add_argument("--netns", default=None, metavar="NAME", help="network namespace holding the interfaces")
    r.add_argument("--tracepoint", default="auto", choices=TRACEPOINT_MODES,
                   help="kfree_skb attachment: tp_btf, classic tracepoint, or auto")
    r.add_argument("--metrics-max-labels", type=int, default=None, metavar="N",
                   help="export at most N label values (top N by drops); the rest as label=\"other\"")
    r.add_argument("--sample-rate", type=int, default=10, metavar="N",
                   help="sampled drop events per second per CPU (0 disables; counts are exact either way)")
    r.add_argument("--flow-map-entries", type=int, default=65536, metavar="N",
                   help="flow-fallback map size (LRU; 1024..16777216): how many recent flows can be "
                        "recovered where metadata is lost")
    r.add_argument("--xdp-tailcall", action="append", default=[], metavar="PINNED_PROG_ARRAY:INDEX",
                   help="chain after another XDP program: put the labeler into that slot of its pinned "
                        "program array (repeatable)")
    r.add_argument("--token-file", default=None, metavar="FILE",
                   help="API token (or env DROPWATCH_TOKEN); required to listen beyond loopback")
    r.add_argument("--public-reads", action="store_true",
                   help="with a token: GET endpoints need no token (writes still do)")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("check", help="preflight: can dropwatch run on this host?")
    c.add_argument("--iface", action="append", default=[], metavar="IFACE")
    c.add_argument("--netns", default=None, metavar="NAME")
    c.set_defaults(func=cmd_check)

    d = sub.add_parser("demo", help="a self-contained lab with real drops, and the daemon on it")
    d.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT")
    d.add_argument("--xdp-mode", default="auto", choices=XDP_MODES)
    d.set_defaults(func=cmd_demo)

    w = sub.add_parser("watch", help="attach to one interface and print live drop counts")
    w.add_argument("--iface", required=True)
    w.add_argument("--config", required=True)
    w.add_argument("--xdp-mode", default="auto", choices=XDP_MODES)
    w.add_argument("--netns", default=None)
    w.add_argument("--tracepoint", default="auto", choices=TRACEPOINT_MODES)
    w.add_argument("--interval", type=float, default=1.0)
    w.add_argument("--top", type=int, default=20)
    w.set_defaults(func=cmd_watch)

    sv = sub.add_parser("survival", help="the survival matrix: does a label survive each kernel path to the drop?")
    sv.add_argument("--paths", default="all", metavar="A,B,...", help="paths to run (see --list); default all")
    sv.add_argument("--mode", default="both", choices=["generic", "native", "both"], help="XDP mode(s)")
    sv.add_argument("--packets", type=int, default=200, metavar="N", help="labeled packets per path")
    sv.add_argument("--json", default=None, metavar="FILE", help="also write every row (with its drop keys) here")
    sv.add_argument("--markdown", action="store_true", help="print the README table")
    sv.add_argument("--update-baseline", nargs="?", default=None, metavar="FILE",
                    const=str(Path(__file__).resolve().parent.parent / "tests" / "e2e" / "survival_baseline.json"),
                    help="write the per-path attribution baseline the e2e test compares against "
                         "(default tests/e2e/survival_baseline.json)")
    sv.add_argument("--flow-fallback", default="all", choices=["off", "encap", "all"],
                    help="the rules' flow_fallback mode for the run (default all: the fallback's full reach)")
    sv.add_argument("--list", action="store_true", help="list the paths and exit")
    sv.set_defaults(func=cmd_survival)

    from .client_cli import add_commands
    add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"dropwatch: error: {exc}", file=sys.stderr)
        return 2
    except (DropwatchError, RulesError, StoreError) as exc:
        print(f"dropwatch: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file or device we could not use: say which, no traceback
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"dropwatch: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""CPU time per dropped packet under a UDP flood, with and without drop
observers, plus exactness of dropwatch's counts under that load.

    sudo .venv/bin/python bench/drop_cost.py [--quick] [--packets N] [--rounds N]

A lab of two namespaces joined by a veth pair (dropwatch.lab). bench/out/flood
sends --packets UDP datagrams (sendmmsg, pinned to one CPU) from the sender
namespace into
  * nft:    10.10.2.1:9999, dropped by the lab's nft rule (NETFILTER_DROP),
            label customerY, side origin
  * noport: 10.10.1.1:7777, no socket (NO_SOCKET, Udp.NoPorts), label customerX
in each configuration, rounds interleaved:
  none      nothing attached by this bench
  bpftrace  bpftrace -e 'tracepoint:skb:kfree_skb { @[args->reason] = count(); }'
  reader    dropwatch's drop reader (tp_btf/kfree_skb) only
  lab+rdr   dropwatch's XDP labeler (native, lab rules) + reader
  xdp0      (reference) an empty XDP program in native mode, no reader: what
            attaching any XDP program to a veth costs (skb -> xdp_buff)
CPU time per drop = CPU time of the flood's thread (CLOCK_THREAD_CPUTIME_ID:
on a veth pair the whole receive path, XDP, netfilter, the drop and every
kfree_skb probe run in the sender's context, softirqs included) plus the run
time of that CPU's ksoftirqd (softirq work deferred out of it), divided by
the drops the kernel counted at the target. /proc/stat's busy time of all
CPUs is shown too, but it counts every other process on the machine. Kernel BPF run-time
statistics (kernel.bpf_stats_enabled) are collected in a separate pass,
because enabling them adds two clock reads to every program run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import benchlib as B

from dropwatch import abi
from dropwatch.kernel import DropReasons
from dropwatch.lab import LAB_RULES, TX_ORIGIN_V4, Lab, lab
from dropwatch.libbpf import XDP_FLAGS_DRV_MODE, libbpf
from dropwatch.loader import Loader
from dropwatch.netns import entered
from dropwatch.rules import compile_rules, parse_rules

FLOOD = B.OUT / "flood"
LABEL_IDS = {"customerX": 1, "customerY": 2}
BPFTRACE_PROG = "tracepoint:skb:kfree_skb { @[args->reason] = count(); }"
TARGETS = {
    # name: (dst, port, label, reason name)
    "nft": ("10.10.2.1", 9999, "customerY", "NETFILTER_DROP"),
    "noport": ("10.10.1.1", 7777, "customerX", "NO_SOCKET"),
}
CONFIGS = ["none", "bpftrace", "reader", "lab+rdr", "xdp0"]
OBSERVERS = CONFIGS[1:]
USER_HZ = os.sysconf("SC_CLK_TCK")


def cpu_busy_ns() -> int:
    """All CPUs' busy time from /proc/stat (tick-sampled; includes every
    other process on the machine)."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = vals[:7]
    return (user + nice + system + irq + softirq) * 1_000_000_000 // USER_HZ


def ksoftirqd_ns(cpu: int) -> int:
    """Run time (ns, /proc/PID/schedstat) of the CPU's ksoftirqd: softirq work
    the kernel deferred out of the sender's context."""
    pid = subprocess.run(["pgrep", "-x", f"ksoftirqd/{cpu}"], capture_output=True, text=True).stdout.split()
    if not pid:
        return 0
    try:
        return int(Path(f"/proc/{pid[0]}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


class Bpftrace:
    """bpftrace in its own process group; stop() on every path."""

    def __init__(self) -> None:
        self.p: subprocess.Popen[str] | None = None

    def start(self, timeout_s: float = 60) -> None:
        env = dict(os.environ, BPFTRACE_NO_USER_SYMBOLS="1")
        self.p = subprocess.Popen(["bpftrace", "-e", BPFTRACE_PROG], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env)
        assert self.p.stdout is not None
        deadline = time.monotonic() + timeout_s
        line = ""
        os.set_blocking(self.p.stdout.fileno(), True)
        while time.monotonic() < deadline:
            line = self.p.stdout.readline()
            if not line:
                break
            if line.startswith("Attaching"):
                time.sleep(0.5)  # the probe attaches right after this line
                return
        out = line + (self.p.stdout.read() if self.p.poll() is not None else "")
        self.stop()
        raise SystemExit(f"bpftrace did not attach: {out.strip()}")

    @property
    def pid(self) -> int:
        assert self.p is not None
        return self.p.pid

    def stop(self) -> None:
        p, self.p = self.p, None
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGINT)
            p.wait(timeout=10)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=10)
        finally:
            if p.stdout:
                p.stdout.close()


class Setup:
    """One configuration's attachments; close() undoes them."""

    def __init__(self, lb: Lab, name: str, empty_fd: int) -> None:
        self.name = name
        self.ld: Loader | None = None
        self.bt: Bpftrace | None = None
        self.xdp_link: int | None = None
        try:
            if name == "bpftrace":
                self.bt = Bpftrace()
                self.bt.start()
            elif name in ("reader", "lab+rdr"):
                self.ld = Loader()
                self.ld.load()
                self.ld.attach_reader()
                if name == "lab+rdr":
                    self.ld.apply_rules(compile_rules(parse_rules(LAB_RULES), LABEL_IDS))
                    self.ld.attach_xdp(lb.rx_if, "native", netns=lb.rx_ns)
            elif name == "xdp0":
                with entered(lb.rx_ns):
                    ifindex = socket.if_nametoindex(lb.rx_if)
                    self.xdp_link = libbpf().link_create_xdp(empty_fd, ifindex, XDP_FLAGS_DRV_MODE)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.bt is not None:
            self.bt.stop()
            self.bt = None
        if self.ld is not None:
            self.ld.close()
            self.ld = None
        if self.xdp_link is not None:
            os.close(self.xdp_link)
            self.xdp_link = None


def kernel_count(lb: Lab, target: str) -> int:
    return lb.nft_drop_count() if target == "nft" else lb.snmp()["Udp.NoPorts"]


def dw_count(ld: Loader | None, label_id: int, reason: int, ifindex: int) -> int | None:
    if ld is None or ld.reader is None:
        return None
    # Loader.read_drops() keys start (label_id, side, reason, location, ifindex, pop_id, source, ...)
    return sum(v for k, v in ld.read_drops().items()
               if k[0] == label_id and k[2] == reason and k[4] == ifindex and k[6] == abi.Source.META)


def flood(lb: Lab, target: str, packets: int, max_s: float, cpu: int) -> dict[str, Any]:
    dst, port, _, _ = TARGETS[target]
    out = lb.ns(lb.tx_ns, "taskset", "-c", str(cpu), str(FLOOD), "--src", TX_ORIGIN_V4, "--dst", dst,
                "--port", str(port), "--count", str(packets), "--max-seconds", str(max_s))
    return json.loads(out.strip().splitlines()[-1])


def measure(lb: Lab, st: Setup, target: str, packets: int, max_s: float, cpu: int, reasons: DropReasons,
            rx_ifindex: int) -> dict[str, Any]:
    _, _, label, rname = TARGETS[target]
    reason = reasons.value(rname)
    assert reason is not None, rname
    k0 = kernel_count(lb, target)
    d0 = dw_count(st.ld, LABEL_IDS[label], reason, rx_ifindex) if st.name == "lab+rdr" else None
    b0, s0 = cpu_busy_ns(), ksoftirqd_ns(cpu)
    f = flood(lb, target, packets, max_s, cpu)
    time.sleep(0.3)  # let the last softirq batches finish
    b1, s1 = cpu_busy_ns(), ksoftirqd_ns(cpu)
    k1 = kernel_count(lb, target)
    d1 = dw_count(st.ld, LABEL_IDS[label], reason, rx_ifindex) if st.name == "lab+rdr" else None
    drops = k1 - k0
    return {"config": st.name, "target": target, "sent": f["sent"], "kernel_drops": drops,
            "dropwatch": None if d0 is None or d1 is None else d1 - d0,
            "cpu_ns_per_drop": (f["cpu_ns"] + s1 - s0) / max(1, drops), "ksoftirqd_ns": s1 - s0,
            "busy_ns_per_drop": (b1 - b0) / max(1, drops), "flood_cpu_ns_per_drop": f["cpu_ns"] / max(1, drops),
            "elapsed_s": f["elapsed_ns"] / 1e9, "pps": f["sent"] / (f["elapsed_ns"] / 1e9)}


def bpftool_progs() -> dict[int, dict[str, Any]]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, timeout=20).stdout
    return {p["id"]: p for p in json.loads(out or "[]")}


def bpftrace_prog(before: set[int]) -> dict[str, Any] | None:
    """bpftrace's kfree_skb program: the tracepoint program that appeared
    since `before` (this bpftool build cannot name the owning process)."""
    new = [p for i, p in bpftool_progs().items() if i not in before and p.get("type") == "tracepoint"
           and "kfree_skb" in p.get("name", "")]
    return new[0] if len(new) == 1 else None


def stats_pass(lb: Lab, packets: int, max_s: float, cpu: int, empty_fd: int,
               targets: tuple[str, ...] = tuple(TARGETS)) -> dict[str, Any]:
    """All observers at once, kernel.bpf_stats_enabled on: ns per program run."""
    lib = libbpf()
    res: dict[str, Any] = {}
    stats_fd = lib.enable_stats()
    bt = Bpftrace()
    st: Setup | None = None
    try:
        st = Setup(lb, "lab+rdr", empty_fd)
        before = set(bpftool_progs())
        bt.start()
        assert st.ld is not None
        bp0 = bpftrace_prog(before) or {}
        i0 = st.ld.prog_infos()
        for target in targets:
            flood(lb, target, packets, max_s, cpu)
        time.sleep(0.3)
        i1 = st.ld.prog_infos()
        bp1 = bpftool_progs().get(bp0.get("id", -1), {})
        for k in ("labeler", "reader"):
            a, b = i0[k], i1[k]
            n = b.run_cnt - a.run_cnt  # type: ignore[attr-defined]
            res[k] = {"runs": n, "ns_per_run": (b.run_time_ns - a.run_time_ns) / max(1, n)}  # type: ignore[attr-defined]
        # What the method itself reports for an empty program (two clock reads
        # per run): run it 1,000,000 times with the statistics on.
        e0 = lib.prog_info(empty_fd)
        lib.test_run(empty_fd, bytes(64), repeat=1_000_000)
        e1 = lib.prog_info(empty_fd)
        n_e = e1.run_cnt - e0.run_cnt
        res["empty XDP (method floor)"] = {"runs": n_e, "ns_per_run": (e1.run_time_ns - e0.run_time_ns) / max(1, n_e)}
        if bp1:
            n = bp1.get("run_cnt", 0) - bp0.get("run_cnt", 0)
            res["bpftrace"] = {"runs": n, "ns_per_run": (bp1.get("run_time_ns", 0) - bp0.get("run_time_ns", 0))
                               / max(1, n)}
    finally:
        bt.stop()
        if st is not None:
            st.close()
        os.close(stats_fd)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="2 rounds, no xdp0 reference configuration, one bpf_stats flood")
    ap.add_argument("--packets", type=int, default=1_000_000, help="datagrams per flood (default 1,000,000)")
    ap.add_argument("--rounds", type=int, help="rounds over all configurations (default 6; quick 2)")
    ap.add_argument("--max-seconds", type=float, default=15.0, help="time bound of one flood")
    ap.add_argument("--no-stats", action="store_true", help="skip the bpf_stats pass")
    ap.add_argument("--json", type=Path, default=B.OUT / "drop_cost.json")
    args = ap.parse_args()
    B.need_root()
    packets = args.packets
    rounds = args.rounds or (2 if args.quick else 6)
    if packets < 1_000_000:
        print("note: below the issue's minimum of 1,000,000 packets per run", file=sys.stderr)
    if subprocess.run(["which", "bpftrace"], capture_output=True).returncode != 0:
        sys.exit("bpftrace is not installed: scripts/install-deps.sh (apt-get install bpftrace)")
    B.build()
    if not Path("/sys/kernel/tracing/events").is_dir():
        subprocess.run(["mount", "-t", "tracefs", "tracefs", "/sys/kernel/tracing"], check=False)
    t_start = time.monotonic()
    cpu = max(os.sched_getaffinity(0))  # the flood's CPU; we stay off it
    others = set(os.sched_getaffinity(0)) - {cpu}
    if others:
        os.sched_setaffinity(0, others)
    foreign = B.bpf_kfree_skb_programs()
    reasons = DropReasons.load()
    lib = libbpf()
    eobj = lib.open_object(B.OUT / "empty.bpf.o")
    lib.load_object(eobj)
    empty_fd = lib.program_fd(lib.find_program(eobj, "bench_empty"))
    results: dict[str, Any] = {"packets": packets, "rounds": rounds, "runs": [], "foreign_kfree_skb": foreign}
    # SIGTERM/SIGHUP behave like Ctrl-C: the finally blocks below clean up.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print(f"UDP flood {packets:,} datagrams per run from {TX_ORIGIN_V4} (sender pinned to CPU {cpu}), "
          f"{rounds} rounds, configurations interleaved", flush=True)
    if foreign:
        print(f"WARNING: programs not started by this bench are attached to kfree_skb ({'; '.join(foreign)}): "
              f"they add the same cost to every configuration", flush=True)
    lab_ns: list[str] = []
    try:
        with lab() as lb:
            lab_ns = [lb.rx_ns, lb.tx_ns]
            print(f"lab namespaces {lb.rx_ns}, {lb.tx_ns}", flush=True)
            with entered(lb.rx_ns):
                rx_ifindex = socket.if_nametoindex(lb.rx_if)
            # warm-up: ARP, caches, page pools
            flood(lb, "nft", 200_000, args.max_seconds, cpu)
            observers = [c for c in OBSERVERS if c != "xdp0" or not args.quick]
            for r in range(rounds):
                # 'none' opens and closes every round; the observers rotate.
                k = r % len(observers)
                order = ["none"] + observers[k:] + observers[:k] + ["none"]
                for name in order:
                    st = Setup(lb, name, empty_fd)
                    try:
                        for target in TARGETS:
                            m = measure(lb, st, target, packets, args.max_seconds, cpu, reasons, rx_ifindex)
                            m["round"] = r
                            results["runs"].append(m)
                            ex = "" if m["dropwatch"] is None else f"  dropwatch {m['dropwatch']:,}"
                            print(f"  round {r} {name:8s} {target:6s} sent {m['sent']:,} kernel "
                                  f"{m['kernel_drops']:,}{ex}  {m['cpu_ns_per_drop']:.0f} ns/drop "
                                  f"(all CPUs {m['busy_ns_per_drop']:.0f}) "
                                  f"({m['pps'] / 1e6:.2f} Mpps)", file=sys.stderr, flush=True)
                    finally:
                        st.close()
            if not args.no_stats:
                results["bpf_stats"] = stats_pass(lb, packets, args.max_seconds, cpu, empty_fd,
                                                  ("nft",) if args.quick else tuple(TARGETS))
    finally:
        lib.close_object(eobj)
        left = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()) & \
            set(lab_ns)
        print(f"lab namespaces removed: {'no, left ' + str(sorted(left)) if left else 'yes'}", flush=True)
    report(results)
    results["elapsed_s"] = time.monotonic() - t_start
    B.write_json(args.json, results)
    print(f"\nwrote {args.json} ({results['elapsed_s']:.0f}s)")


def report(results: dict[str, Any]) -> None:
    runs = results["runs"]
    configs = [c for c in CONFIGS if any(r["config"] == c for r in runs)]
    med: dict[tuple[str, str], dict[str, float]] = {}
    added: dict[tuple[str, str], float] = {}
    for target in TARGETS:
        for cfg in configs:
            rs = [r for r in runs if r["config"] == cfg and r["target"] == target]
            med[(cfg, target)] = {k: B.median([r[k] for r in rs]) for k in ("cpu_ns_per_drop", "busy_ns_per_drop",
                                                                             "pps")}
            med[(cfg, target)]["spread"] = max(r["cpu_ns_per_drop"] for r in rs) - min(r["cpu_ns_per_drop"] for r in rs)
            if cfg != "none":
                # Paired within each round: against the mean of that round's
                # two 'none' runs (its first and last), then the median over
                # rounds. This machine's speed drifts over seconds to minutes
                # (other guests on its cores), and a round's runs share it.
                per_round = []
                for rnd in sorted({r["round"] for r in rs}):
                    base = [r["cpu_ns_per_drop"] for r in runs if r["config"] == "none" and r["target"] == target
                            and r["round"] == rnd]
                    mine = [r["cpu_ns_per_drop"] for r in rs if r["round"] == rnd]
                    if base and mine:
                        per_round.append(B.median(mine) - sum(base) / len(base))
                added[(cfg, target)] = B.median(per_round)
                med[(cfg, target)]["added_spread"] = max(per_round) - min(per_round)
    rows = []
    for target in TARGETS:
        bt_add = added[("bpftrace", target)]
        for cfg in configs:
            m = med[(cfg, target)]
            add = added.get((cfg, target))
            rows.append([target, cfg, B.fmt(m["cpu_ns_per_drop"], 0), B.fmt(m["spread"], 0), B.fmt(add, 0),
                         B.fmt(m.get("added_spread"), 0),
                         f"{add / bt_add:.2f}" if add is not None and cfg != "bpftrace" and bt_add > 0 else "-",
                         B.fmt(m["busy_ns_per_drop"], 0), f"{m['pps'] / 1e6:.2f}"])
    print()
    print(B.table(rows, ["target", "config", "ns/drop", "spread", "added", "its spread", "vs bpftrace",
                         "all CPUs ns", "Mpps"]))
    print("\nns/drop: CPU time of the sender thread (the whole receive path, XDP and the drop run in its "
          "context) plus its CPU's ksoftirqd, per kernel-counted drop, median over rounds; spread: max-min over "
          "rounds; added: per round, the run minus the mean of that round's two 'none' runs (its first and "
          "last), median over rounds (its spread: max-min of those); vs bpftrace: added / "
          "bpftrace's added; all CPUs: /proc/stat busy time of the whole machine per drop (includes every other "
          "process running meanwhile)")
    ex_rows = []
    exact = True
    for r in runs:
        if r["dropwatch"] is not None:
            ok = r["dropwatch"] == r["kernel_drops"]
            exact &= ok
            ex_rows.append([r["round"], r["target"], f"{r['sent']:,}", f"{r['kernel_drops']:,}",
                            f"{r['dropwatch']:,}", "yes" if ok else "NO"])
    print()
    print(B.table(ex_rows, ["round", "target", "sent", "kernel counter", "dropwatch (label, reason)", "equal"]))
    print("kernel counter: nft rule counter (nft) / Udp.NoPorts (noport) of the receiving namespace; dropwatch: "
          "drops with the flood's label, that reason, that interface")
    results["counts_exact"] = exact and bool(ex_rows)
    if "bpf_stats" in results:
        print()
        print(B.table([[k, f"{v['runs']:,}", B.fmt(v["ns_per_run"])] for k, v in results["bpf_stats"].items()],
                      ["program (bpf_stats pass)", "runs", "ns/run"]))
    for target in TARGETS:
        results[f"drop_cost_ns_none_{target}"] = med[("none", target)]["cpu_ns_per_drop"]
        for cfg, key in (("bpftrace", "bpftrace"), ("reader", "dropwatch_reader"), ("lab+rdr", "dropwatch"),
                         ("xdp0", "empty_xdp")):
            if (cfg, target) in added:
                results[f"drop_cost_ns_{key}_{target}"] = added[(cfg, target)]
    results["drop_cost_ns_none"] = results["drop_cost_ns_none_nft"]
    results["drop_cost_ns_bpftrace"] = results["drop_cost_ns_bpftrace_nft"]
    # The per-drop cost is the reader's (the bpftrace one-liner's counterpart);
    # the labeler's per-packet cost is bench/xdp_labeler.py's, and _full has both.
    results["drop_cost_ns_dropwatch"] = results["drop_cost_ns_dropwatch_reader_nft"]
    results["drop_cost_ns_dropwatch_full"] = results["drop_cost_ns_dropwatch_nft"]
    # (results.json's flood_drops_per_s is bench/daemon.py's: the flood under the running daemon)
    results["flood_pps_dropwatch_nft"] = med[("lab+rdr", "nft")]["pps"]


if __name__ == "__main__":
    main()

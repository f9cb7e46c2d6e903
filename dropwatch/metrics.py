"""Prometheus exposition: read at scrape time from the daemon's totals.

Contract metrics: dropwatch_drops_total{label,side,reason,pop,source},
dropwatch_packets_total{label,side,pop} (and dropwatch_packet_bytes_total),
dropwatch_corrupt_records_total,
dropwatch_map_full_total, dropwatch_poll_duration_seconds, plus process
metrics. Counters start at zero with each daemon start (Prometheus handles
the reset); the SQLite history is what survives restarts.

Cardinality cap (``--metrics-max-labels N``): the label values exported by
dropwatch_drops_total, dropwatch_packets_total and dropwatch_packet_bytes_total
are the top N labels by drops since the daemon started (ties broken by name;
``unlabeled`` competes like any label), and every other label is summed into
``label="other"``, so sums over all series stay exact. A rule label literally
named ``other`` always goes into that sum. ``pop`` (the PoPs in the rules plus
``none`` and ``unknown``) and ``source`` (metadata, flow, none) are bounded by
the rules and not capped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, TypeVar, cast

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily

if TYPE_CHECKING:
    from .daemon import Daemon

OTHER = "other"
K = TypeVar("K", bound=tuple[str, ...])


def capped_labels(drops: Mapping[tuple[str, str, str, str, str], int],
                  packets: Mapping[tuple[str, str, str], int], max_labels: int | None) -> Callable[[str], str]:
    """The label value to export for each label name under the cap.

    The top ``max_labels`` labels by drops (ties by name) keep their name,
    all others map to ``other``. ``None`` means no cap. Labels that only
    appear in ``packets`` rank with zero drops.
    """
    if max_labels is None:
        return lambda label: label
    per_label: Counter[str] = Counter()
    for key, n in drops.items():
        per_label[key[0]] += n
    names = {k[0] for k in packets} | set(per_label)
    names.discard(OTHER)
    keep = set(sorted(names, key=lambda lb: (-per_label[lb], lb))[:max(0, max_labels)])
    return lambda label: label if label in keep else OTHER


def _fold(values: Mapping[K, int], export: Callable[[str], str]) -> dict[K, int]:
    """Sum the values whose first key element (the label) maps to the same exported label."""
    out: Counter[K] = Counter()
    for key, n in values.items():
        out[cast(K, (export(key[0]), *key[1:]))] += n
    return dict(out)


class DropwatchCollector:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        d = self.daemon
        c = d.collector
        with c.lock:
            drops = dict(c.totals.drops)
            packets = dict(c.totals.packets)
            bytes_ = dict(c.totals.bytes)
            corrupt = c.totals.corrupt_records
            map_full = c.totals.map_full
            stats = dict(c.totals.stats)
            meta_fail = dict(c.totals.meta_failures)
        export = capped_labels(drops, packets, getattr(d.cfg, "metrics_max_labels", None))
        drops_out = _fold(drops, export)
        packets_out = _fold(packets, export)
        bytes_out = _fold(bytes_, export)
        m = CounterMetricFamily("dropwatch_drops", "Packets dropped by the kernel (kfree_skb), by ingress label, "
                                "side, kernel drop reason, landing PoP and what attributed the label "
                                "(metadata, flow, none)", labels=["label", "side", "reason", "pop", "source"])
        for dkey, n in sorted(drops_out.items()):
            m.add_metric(list(dkey), n)
        yield m
        m = CounterMetricFamily("dropwatch_packets", "Packets labeled at ingress by the XDP labeler, by label, "
                                "side and landing PoP", labels=["label", "side", "pop"])
        for pkey, n in sorted(packets_out.items()):
            m.add_metric(list(pkey), n)
        yield m
        m = CounterMetricFamily("dropwatch_packet_bytes", "Bytes labeled at ingress by the XDP labeler, by label, "
                                "side and landing PoP", labels=["label", "side", "pop"])
        for bkey, n in sorted(bytes_out.items()):
            m.add_metric(list(bkey), n)
        yield m
        yield CounterMetricFamily("dropwatch_corrupt_records", "Drops whose metadata looked like ours but failed "
                                  "validation (counted as unlabeled)", value=corrupt)
        yield CounterMetricFamily("dropwatch_map_full", "Drops that could not get a counter entry because the "
                                  "drop map was full", value=map_full)
        yield GaugeMetricFamily("dropwatch_drop_slots_in_use", "Distinct drop keys holding an in-kernel counter "
                                "slot (idle ones are retired from 75% of dropwatch_drop_slots)",
                                value=getattr(c, "slots_in_use", 0))
        yield GaugeMetricFamily("dropwatch_drop_slots", "In-kernel counter slots for distinct drop keys",
                                value=getattr(d.loader, "drop_entries", 0))
        m = CounterMetricFamily("dropwatch_xdp_meta_failures", "Packets whose metadata could not be written "
                                "(driver without native metadata support, or no room)", labels=["iface"])
        for iface, n in sorted(meta_fail.items()):
            m.add_metric([iface], n)
        yield m
        durations = list(c.poll_durations)
        yield SummaryMetricFamily("dropwatch_poll_duration_seconds", "Time to read the kernel counters and "
                                  "hand one interval's deltas to the history writer", count_value=c.polls,
                                  sum_value=sum(durations))
        yield SummaryMetricFamily("dropwatch_history_write_duration_seconds", "Time the history writer took "
                                  "to write one batch of deltas", count_value=getattr(c, "writes", 0),
                                  sum_value=getattr(c, "write_seconds", 0.0))
        info = GaugeMetricFamily("dropwatch_program_info", "BPF programs attached by this daemon",
                                 labels=["program", "attach", "iface", "mode"])
        for att in d.loader.xdp.values():
            info.add_metric(["labeler", "xdp", att.iface, att.mode], 1)
        if d.loader.reader_prog_fd is not None:
            info.add_metric(["drop_reader", "kfree_skb", "", d.loader.reader_kind or ""], 1)
        yield info
        if c.last_poll is not None:
            yield GaugeMetricFamily("dropwatch_last_poll_timestamp_seconds", "Time of the last successful poll",
                                    value=c.last_poll.timestamp())
        yield GaugeMetricFamily("dropwatch_store_healthy", "1 if the last history write succeeded",
                                value=0 if c.store_error else 1)
        yield CounterMetricFamily("dropwatch_samples", "Sampled drop events sent by the kernel",
                                  value=stats.get("samples", 0))
        lost = CounterMetricFamily("dropwatch_samples_dropped", "Drop events not sampled (counts stay exact)",
                                   labels=["cause"])
        lost.add_metric(["rate_limit"], stats.get("sample_rate_limited", 0))
        lost.add_metric(["ring_full"], stats.get("sample_ring_full", 0))
        yield lost
        kstats = CounterMetricFamily("dropwatch_kernel_events", "In-kernel event counters of the BPF programs",
                                     labels=["event"])
        for name, n in sorted(stats.items()):
            kstats.add_metric([name], n)
        yield kstats
        try:
            infos = d.loader.prog_infos()
        except OSError:
            infos = {}
        rec = CounterMetricFamily("dropwatch_program_recursion_misses", "Program runs the kernel skipped "
                                  "because the program was already running on that CPU", labels=["program"])
        for name, pi in infos.items():
            rec.add_metric([name], getattr(pi, "recursion_misses", 0))
        yield rec


def make_registry(daemon: Daemon) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DropwatchCollector(daemon))  # type: ignore[arg-type]
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    return reg

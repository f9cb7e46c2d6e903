"""Sampled drop events: consume the reader's ring buffer, decode, keep the
most recent ones in a bounded buffer, and write them as pcapng.

Samples are examples, not counts: the kernel rate-limits them per CPU
(token bucket) and counts what it did not send (rate limit, ring full);
the counters stay exact either way.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from . import abi
from .libbpf import RINGBUF_CB, Libbpf

log = logging.getLogger("dropwatch.samples")

DEFAULT_KEEP = 2000
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 47: "gre", 4: "ipip", 41: "ipv6"}
ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD = 0x0800, 0x86DD, 0x8100, 0x88A8


@dataclass(frozen=True)
class DropSample:
    time: datetime
    label: str
    side: str
    reason: str
    location: str
    iface: str
    netns: int
    length: int
    data: bytes
    from_mac: bool
    l3: str
    proto: str
    src: str | None
    dst: str | None
    sport: int | None
    dport: int | None
    pop: str = "none"
    source: str = "none"

    def to_json(self) -> dict[str, object]:
        return {
            "time": self.time.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "label": self.label, "side": self.side, "reason": self.reason, "location": self.location,
            "iface": self.iface, "netns": self.netns, "len": self.length, "captured": len(self.data),
            "l3": self.l3, "proto": self.proto, "src": self.src, "dst": self.dst,
            "sport": self.sport, "dport": self.dport, "pop": self.pop, "source": self.source,
        }


def parse_tuple(data: bytes, from_mac: bool) -> tuple[str, str, str | None, str | None, int | None, int | None]:
    """(l3, proto, src, dst, sport, dport) from captured bytes; never raises."""
    off = 0
    if from_mac:
        if len(data) < 14:
            return "other", "", None, None, None, None
        etype = struct.unpack_from("!H", data, 12)[0]
        off = 14
        for _ in range(2):
            if etype in (ETH_P_8021Q, ETH_P_8021AD) and len(data) >= off + 4:
                etype = struct.unpack_from("!H", data, off + 2)[0]
                off += 4
    else:
        etype = ETH_P_IP if data[:1] and data[0] >> 4 == 4 else ETH_P_IPV6 if data[:1] and data[0] >> 4 == 6 else 0
    proto_num: int | None = None
    l4: int | None = None
    if etype == ETH_P_IP and len(data) >= off + 20:
        ihl = (data[off] & 0x0F) * 4
        proto_num = data[off + 9]
        src = str(ipaddress.IPv4Address(data[off + 12:off + 16]))
        dst = str(ipaddress.IPv4Address(data[off + 16:off + 20]))
        frag = struct.unpack_from("!H", data, off + 6)[0] & 0x1FFF
        l4 = off + ihl if ihl >= 20 and not frag else None
        l3 = "ipv4"
    elif etype == ETH_P_IPV6 and len(data) >= off + 40:
        proto_num = data[off + 6]
        src = str(ipaddress.IPv6Address(data[off + 8:off + 24]))
        dst = str(ipaddress.IPv6Address(data[off + 24:off + 40]))
        p = off + 40
        for _ in range(6):
            if proto_num in (0, 43, 60) and len(data) >= p + 8:
                proto_num, p = data[p], p + (data[p + 1] + 1) * 8
            elif proto_num == 44 and len(data) >= p + 8:
                first = struct.unpack_from("!H", data, p + 2)[0] & 0xFFF8 == 0
                proto_num, p = data[p], p + 8
                if not first:
                    p = -1
                    break
            else:
                break
        l4 = p if p >= 0 else None
        l3 = "ipv6"
    else:
        return "other", "", None, None, None, None
    sport = dport = None
    if proto_num in (6, 17) and l4 is not None and len(data) >= l4 + 4:
        sport, dport = struct.unpack_from("!HH", data, l4)
    return l3, PROTO_NAMES.get(proto_num, str(proto_num)), src, dst, sport, dport


# label, side, reason, location, iface, pop, source
Namer = Callable[[abi.Sample], tuple[str, str, str, str, str, str, str]]


class SampleBuffer:
    """The most recent samples, newest first on read; bounded."""

    def __init__(self, keep: int = DEFAULT_KEEP) -> None:
        self._buf: deque[DropSample] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self.received = 0

    def add(self, s: DropSample) -> None:
        with self._lock:
            self._buf.append(s)
            self.received += 1

    def query(self, *, label: Iterable[str] = (), side: Iterable[str] = (), reason: Iterable[str] = (),
              location: Iterable[str] = (), iface: Iterable[str] = (), pop: Iterable[str] = (),
              source: Iterable[str] = (), since: datetime | None = None, limit: int = 100) -> list[DropSample]:
        labels, sides, reasons = set(label), set(side), set(reason)
        locations, ifaces, pops, sources = set(location), set(iface), set(pop), set(source)
        out = []
        with self._lock:
            items = list(self._buf)
        for s in reversed(items):
            if since is not None and s.time < since:
                break  # newest first: the rest are older
            if (labels and s.label not in labels) or (sides and s.side not in sides) or \
                    (reasons and s.reason not in reasons) or (locations and s.location not in locations) or \
                    (ifaces and s.iface not in ifaces) or (pops and s.pop not in pops) or \
                    (sources and s.source not in sources):
                continue
            out.append(s)
            if len(out) >= limit:
                break
        return out


class SampleReader:
    """A thread polling the ring buffer into a SampleBuffer."""

    def __init__(self, lib: Libbpf, map_fd: int, namer: Namer, buffer: SampleBuffer) -> None:
        self.lib = lib
        self.namer = namer
        self.buffer = buffer
        self.decode_errors = 0
        self._cb = RINGBUF_CB(self._on_event)  # kept alive with the ring buffer
        self._rb = lib.ringbuf_new(map_fd, self._cb)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dropwatch-samples", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.lib.ringbuf_poll(self._rb, 200)
            except OSError as exc:
                log.error("sample ring buffer: %s", exc)
                self._stop.wait(1.0)

    def _on_event(self, _ctx: int, data: int, size: int) -> int:
        try:
            if size < ctypes.sizeof(abi.Sample):
                self.decode_errors += 1
                return 0
            raw = abi.Sample.from_buffer_copy(ctypes.string_at(data, ctypes.sizeof(abi.Sample)))
            self.buffer.add(decode(raw, self.namer))
        except Exception:  # noqa: BLE001 - a bad event must not stop the reader
            self.decode_errors += 1
        return 0

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.lib.ringbuf_free(self._rb)


def decode(raw: abi.Sample, namer: Namer) -> DropSample:
    mono_now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    wall = time.time() - (mono_now - raw.ts_ns) / 1e9
    data = bytes(raw.data[: min(raw.captured, abi.DW_SAMPLE_BYTES)])
    from_mac = bool(raw.flags & abi.DW_SAMPLE_FROM_MAC)
    l3, proto, src, dst, sport, dport = parse_tuple(data, from_mac)
    label, side, reason, location, iface, pop, source = namer(raw)
    return DropSample(datetime.fromtimestamp(wall, timezone.utc), label, side, reason, location, iface,
                      raw.netns_ino, raw.pkt_len, data, from_mac, l3, proto, src, dst, sport, dport,
                      pop, source)


# ---------------------------------------------------------------- pcapng

LINKTYPE_ETHERNET = 1


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    total = len(body) + 12
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


def _opt(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def to_pcapng(samples: Iterable[DropSample]) -> bytes:
    """pcapng (one Ethernet interface; libpcap reads only one link type per
    file) with a comment per packet carrying label/side/reason/location/pop/source.
    Samples captured without a MAC header get a synthetic all-zero Ethernet
    header, said in their comment. Oldest first, as capture files are."""
    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) +
                 _opt(4, b"dropwatch sampled drops") + _opt(0, b""))
    idb = _block(0x00000001, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, 65535) +
                 _opt(2, b"dropwatch") + _opt(9, b"\x06") + _opt(0, b""))
    out = [shb, idb]
    for s in sorted(samples, key=lambda x: x.time):
        ts_us = int(s.time.timestamp() * 1_000_000)
        data, orig_len, note = s.data, max(s.length, len(s.data)), ""
        if not s.from_mac:
            etype = ETH_P_IPV6 if s.l3 == "ipv6" else ETH_P_IP
            data = b"\0" * 12 + struct.pack("!H", etype) + data
            orig_len += 14
            note = " (synthetic Ethernet header)"
        comment = (f"label={s.label} side={s.side} reason={s.reason} location={s.location} "
                   f"iface={s.iface} netns={s.netns} pop={s.pop} source={s.source}{note}").encode()
        body = struct.pack("<IIIII", 0, ts_us >> 32, ts_us & 0xFFFFFFFF, len(data), orig_len)
        body += data + b"\0" * (-len(data) % 4) + _opt(1, comment) + _opt(0, b"")
        out.append(_block(0x00000006, body))
    return b"".join(out)

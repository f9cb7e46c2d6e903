"""Lifecycle of the BPF side: open -> configure -> load -> attach -> read ->
detach, in reverse on close.

Every attachment is a bpf_link owned by this process (an fd): if the process
dies, the kernel detaches everything. Nothing is pinned.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import logging
import mmap
import operator
import os
import secrets
import socket
import struct
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from . import abi
from .btf import Btf
from .libbpf import BPF_NOEXIST, XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE, Libbpf, libbpf
from .netns import entered
from . import lpm
from .lpm import CHUNK
from .rules import CompiledRules, RulesError

log = logging.getLogger("dropwatch.loader")
_T = TypeVar("_T")

DEFAULT_BPF_DIR = Path(__file__).parent / "bpfobj"
LABELER_OBJ = "labeler.bpf.o"
READER_OBJ = "drop_reader.bpf.o"
XDP_MODES = ("auto", "native", "generic")
TRACEPOINT_MODES = ("auto", "btf", "classic")
# After flipping the active generation, an XDP run that started before the
# flip may still be reading the old one; it finishes within microseconds
# (RCU read side). Wait well past that before deleting the old entries.
GEN_GRACE_S = 0.05
_BATCH = 4096
# Above this size the drop counts are mapped for each access, not for good.
_DROP_COUNTS_RESIDENT_MAX = 16 << 20
# The drop counts array (8 bytes per slot per possible CPU) at most.
_DROP_COUNTS_MAX = 1 << 30


class DropwatchError(Exception):
    """A startup or runtime error with a one-line message for the user."""


class VerifierError(DropwatchError):
    def __init__(self, program: str, obj: str, err: OSError, log_tail: list[str]) -> None:
        self.program = program
        self.log_tail = log_tail
        tail = "\n".join(log_tail[-25:])
        super().__init__(f"{obj}: program {program!r} rejected by the kernel ({err.strerror}); "
                         f"verifier log tail:\n{tail}")


class AttachError(DropwatchError):
    pass


TRACEFS = Path("/sys/kernel/tracing")


def ensure_tracefs() -> None:
    """The classic tracepoint needs tracefs (libbpf reads the event id there)."""
    if (TRACEFS / "events").is_dir() or Path("/sys/kernel/debug/tracing/events").is_dir():
        return
    import subprocess
    p = subprocess.run(["mount", "-t", "tracefs", "tracefs", str(TRACEFS)], capture_output=True, text=True)
    if p.returncode != 0 or not (TRACEFS / "events").is_dir():
        raise DropwatchError(f"tracefs is not mounted at {TRACEFS} and mounting it failed ({p.stderr.strip()}): "
                             f"mount -t tracefs tracefs {TRACEFS}")
    log.info("mounted tracefs at %s for the classic tracepoint", TRACEFS)


def bpf_dir() -> Path:
    return Path(os.environ.get("DROPWATCH_BPF_DIR", str(DEFAULT_BPF_DIR)))


def _verifier_tail(lines: list[str]) -> list[str]:
    start = None
    for i, line in enumerate(lines):
        if "BEGIN PROG LOAD LOG" in line:
            start = i + 1
        if "END PROG LOAD LOG" in line and start is not None:
            return lines[start:i]
    return lines[-30:]


@dataclass
class XdpAttachment:
    iface: str
    ifindex: int
    netns: str | None
    mode: str  # "native" or "generic"
    link_fd: int


@dataclass
class _BpfObject:
    path: Path
    obj: int
    maps: dict[str, int] = field(default_factory=dict)  # name -> fd


def _set_rodata_u32(lb: Libbpf, obj: int, path: Path, var: str, value: int) -> None:
    offsets = Btf.from_bytes(lb.object_btf(obj), source=str(path)).datasec_vars(".rodata")
    off, size = offsets[var]
    if size != 4:
        raise DropwatchError(f"{path}: {var} is {size} bytes, expected 4")
    m = lb.find_map(obj, ".rodata")
    addr, total = lb.map_initial_value(m)
    if off + 4 > total:
        raise DropwatchError(f"{path}: .rodata too small for {var}")
    ctypes.memmove(addr + off, ctypes.byref(ctypes.c_uint32(value)), 4)


class Loader:
    """Owns both BPF objects, their maps and every link."""

    def __init__(self, *, obj_dir: Path | None = None, meta_key: int | None = None,
                 tracepoint_mode: str = "auto", lib: Libbpf | None = None,
                 sample_rate: int = 0, sample_burst: int | None = None,
                 flow_entries: int = abi.DW_FLOW_ENTRIES, drop_entries: int = abi.DW_MAX_DROP_KEYS,
                 lpm4_entries: int = abi.DW_LPM4_ENTRIES, lpm6_entries: int = abi.DW_LPM6_ENTRIES) -> None:
        if tracepoint_mode not in TRACEPOINT_MODES:
            raise ValueError(f"tracepoint mode {tracepoint_mode!r}: one of {TRACEPOINT_MODES}")
        self.lib = lib or libbpf()
        self.obj_dir = obj_dir or bpf_dir()
        self.meta_key = meta_key if meta_key is not None else secrets.randbits(32)
        self.tracepoint_mode = tracepoint_mode
        if sample_rate < 0 or sample_rate > 100_000:
            raise ValueError(f"sample rate {sample_rate}: 0..100000 events/s per CPU")
        self.sample_rate = sample_rate
        self.sample_burst = sample_burst if sample_burst is not None else max(1, 2 * sample_rate)
        if not 1024 <= flow_entries <= 1 << 24:
            raise ValueError(f"flow map entries {flow_entries}: 1024..16777216")
        self.flow_entries = flow_entries
        if not 1024 <= drop_entries <= 1 << 22:
            raise ValueError(f"drop map entries {drop_entries}: 1024..4194304")
        self.ncpus = self.lib.num_possible_cpus()
        if drop_entries * self.ncpus * 8 > _DROP_COUNTS_MAX:
            raise ValueError(f"drop map entries {drop_entries}: {drop_entries} slots x {self.ncpus} CPUs x 8 bytes "
                             f"of counters is over {_DROP_COUNTS_MAX >> 20} MB")
        self.drop_entries = drop_entries  # drop slots (the collector retires idle keys at 75% of them)
        # Range-array sizes (entries, both generations): the default holds
        # the largest rule set compile_rules accepts in most shapes; a
        # bigger set is refused at apply time, a bench may ask for more.
        # IPv6 at most 2^25: a small chunk's relocated offset, in u64s (half
        # entries), must fit its direct entry's 26-bit field.
        for fam, n, most in ((4, lpm4_entries, 28), (6, lpm6_entries, 25)):
            if not 1024 <= n <= 1 << most or n % 32:
                raise ValueError(f"IPv{fam} range array entries {n}: 1024..2^{most}, a multiple of 32")
        self.lpm4_entries, self.lpm6_entries = lpm4_entries, lpm6_entries
        # What the reader is told about the flow map (dw_flow_cfg); follows
        # the active rule generation.
        self.flow_cfg = abi.FlowCfg(mode=abi.FlowMode.OFF, epoch=0, max_age_ns=0)
        self._epoch = 0
        self.ncpus = self.lib.num_possible_cpus()
        self.labeler: _BpfObject | None = None
        self.reader: _BpfObject | None = None
        self.reader_kind: str | None = None  # "tp_btf" or "tracepoint"
        self._reader_link: int | None = None
        self._reader_prog_fd: int | None = None
        self._labeler_prog_fd: int | None = None
        self.xdp: dict[tuple[str | None, str], XdpAttachment] = {}
        self.tailcalls: dict[tuple[str, int], int] = {}  # (pinned prog array, slot) -> map fd
        self.active_gen = 0
        # Per generation: (map name, key bytes) of PoP and pair entries written.
        self._gen_keys: dict[int, tuple[list[tuple[str, bytes]], list[bytes]]] = {0: ([], []), 1: ([], [])}
        self._rules_lock = threading.Lock()
        self.rules_loaded = False
        self._state_obj: abi.LabelerState | None = None
        self._state_mmap: mmap.mmap | None = None
        # The reader's drop counts, slot names and control block, mapped
        # once per reader load (see "Drop counting" in bpf/dropwatch.h).
        self._drop_mms: dict[str, mmap.mmap] = {}
        self._drop_ctl: abi.DropCtl | None = None
        # The longest-prefix-match arrays: name -> size in bytes (mapped a
        # window at a time, see _lpm_window).
        self._lpm_sizes: dict[str, int] = {}
        # Per generation: (map name, byte offset, length) regions written.
        self._gen_regions: dict[int, list[tuple[str, int, int]]] = {0: [], 1: []}

    # ------------------------------------------------------------ load

    def _open(self, name: str, *, autoload: dict[str, bool] | None = None,
              reuse: dict[str, int] | None = None, max_entries: dict[str, int] | None = None) -> _BpfObject:
        path = self.obj_dir / name
        if not path.exists():
            raise DropwatchError(f"{path}: BPF object not built (run 'make -C bpf')")
        try:
            obj = self.lib.open_object(path)
        except OSError as exc:
            raise DropwatchError(f"{path}: cannot open BPF object: {exc.strerror}") from None
        try:
            _set_rodata_u32(self.lib, obj, path, "dw_meta_key", self.meta_key)
            if name == LABELER_OBJ:
                _set_rodata_u32(self.lib, obj, path, "dw_meta_h1", abi.meta_h1(self.meta_key))
            if name == READER_OBJ:
                _set_rodata_u32(self.lib, obj, path, "dw_nr_slots", self.drop_entries)
                _set_rodata_u32(self.lib, obj, path, "dw_nr_cpus", self.ncpus)
                _set_rodata_u32(self.lib, obj, path, "dw_sample_rate", self.sample_rate)
                _set_rodata_u32(self.lib, obj, path, "dw_sample_burst", self.sample_burst if self.sample_rate else 0)
            for prog_name, on in (autoload or {}).items():
                self.lib.set_autoload(self.lib.find_program(obj, prog_name), on)
            for map_name, n in (max_entries or {}).items():
                self.lib.map_set_max_entries(self.lib.find_map(obj, map_name), n)
            for map_name, fd in (reuse or {}).items():
                self.lib.map_reuse_fd(self.lib.find_map(obj, map_name), fd)
            mark = self.lib.log_mark()
            try:
                self.lib.load_object(obj)
            except OSError as exc:
                lines = self.lib.log_since(mark)
                failed = next((p for p, _ in self.lib.programs(obj) if any(f"prog '{p}'" in ln and "failed" in ln
                                                                            for ln in lines)), "?")
                if exc.errno == errno.EPERM:
                    raise DropwatchError(f"{path}: loading BPF needs root or CAP_BPF+CAP_PERFMON+CAP_NET_ADMIN "
                                         f"({exc.strerror})") from None
                raise VerifierError(failed, str(path), exc, _verifier_tail(lines)) from None
            bo = _BpfObject(path, obj)
            for map_name, m in self.lib.maps(obj):
                bo.maps[map_name] = self.lib.map_fd(m)
                if map_name.startswith(_GLOBAL_TABLE):  # a global table: its own name too
                    bo.maps[map_name.removeprefix(_GLOBAL_TABLE)] = self.lib.map_fd(m)
            return bo
        except BaseException:
            self.lib.close_object(obj)
            raise

    def load(self) -> None:
        """Load both objects (nothing is attached yet)."""
        self.labeler = self._open(LABELER_OBJ, max_entries={
            "dw_flows": self.flow_entries, "dw_pkt_counts": self.ncpus * abi.DW_PKT_CELLS,
            "dw_lpm4_rng": self.lpm4_entries // 16,
            "dw_lpm6_rng": self.lpm6_entries // 8})
        self._labeler_prog_fd = self.lib.program_fd(self.lib.find_program(self.labeler.obj, "dw_labeler"))
        self._init_rule_maps()
        self._store("dw_metachk", 0, abi.meta_check_table(self.meta_key))

    def _load_reader(self, kind: str) -> None:
        btf = kind == "tp_btf"
        # One flow map for both: the labeler fills it, the reader reads it.
        reuse = {"dw_flows": self.labeler.maps["dw_flows"]} if self.labeler else None
        n = self.drop_entries
        self.reader = self._open(READER_OBJ, autoload={"dw_kfree_skb_btf": btf, "dw_kfree_skb_tp": not btf},
                                 reuse=reuse, max_entries={"dw_flows": self.flow_entries, "dw_drop_slots": n,
                                                           "dw_drop_counts": self.ncpus * n, "dw_slot_keys": n,
                                                           "dw_free_slots": n})
        self._write_flow_cfg()
        self._map_drop_slots()
        self.reader_kind = kind

    def attach_reader(self) -> str:
        """Attach the drop reader; returns "tp_btf" or "tracepoint"."""
        kinds = {"auto": ["tp_btf", "tracepoint"], "btf": ["tp_btf"], "classic": ["tracepoint"]}[self.tracepoint_mode]
        last: Exception | None = None
        for kind in kinds:
            try:
                self._load_reader(kind)
                assert self.reader is not None
                if kind == "tp_btf":
                    prog = self.lib.find_program(self.reader.obj, "dw_kfree_skb_btf")
                    self._reader_link = self.lib.attach_trace(prog)
                else:
                    ensure_tracefs()
                    prog = self.lib.find_program(self.reader.obj, "dw_kfree_skb_tp")
                    self._reader_link = self.lib.attach_tracepoint(prog, "skb", "kfree_skb")
                self._reader_prog_fd = self.lib.program_fd(prog)
                log.info("attached drop reader to kfree_skb via %s", kind)
                return kind
            except (OSError, DropwatchError) as exc:
                last = exc
                self._unmap_drop_slots()
                if self.reader is not None:
                    self.lib.close_object(self.reader.obj)
                    self.reader = None
                if len(kinds) > 1 and kind == "tp_btf":
                    log.warning("tp_btf/kfree_skb unavailable (%s); falling back to the classic tracepoint", exc)
        if isinstance(last, DropwatchError):
            raise last
        raise AttachError(f"cannot attach to tracepoint skb:kfree_skb: {last}")

    # ------------------------------------------------------------ XDP

    def attach_xdp(self, iface: str, mode: str = "auto", netns: str | None = None) -> XdpAttachment:
        if mode not in XDP_MODES:
            raise ValueError(f"xdp mode {mode!r}: one of {XDP_MODES}")
        if self._labeler_prog_fd is None:
            raise DropwatchError("load() before attach_xdp()")
        key = (netns, iface)
        if key in self.xdp:
            return self.xdp[key]
        where = f"{iface}" + (f" (netns {netns})" if netns else "")
        with entered(netns):
            try:
                ifindex = socket.if_nametoindex(iface)
            except OSError:
                raise AttachError(f"interface {where} does not exist") from None
            q = self.lib.xdp_query(ifindex)
            if q.prog_id:
                raise AttachError(
                    f"interface {where} already has an XDP program (id {q.prog_id}); dropwatch does not replace "
                    f"it: detach it, or chain both with libxdp's dispatcher (see README)")
            tries = {"auto": [("native", XDP_FLAGS_DRV_MODE), ("generic", XDP_FLAGS_SKB_MODE)],
                     "native": [("native", XDP_FLAGS_DRV_MODE)],
                     "generic": [("generic", XDP_FLAGS_SKB_MODE)]}[mode]
            err: OSError | None = None
            for name, flags in tries:
                try:
                    fd = self.lib.link_create_xdp(self._labeler_prog_fd, ifindex, flags)
                except OSError as exc:
                    err = exc
                    if exc.errno == errno.EBUSY:
                        raise AttachError(f"interface {where} already has an XDP program; dropwatch does not "
                                          f"replace it") from None
                    continue
                att = XdpAttachment(iface, ifindex, netns, name, fd)
                self.xdp[key] = att
                log.info("attached XDP labeler to %s (ifindex %d, %s mode)", where, ifindex, name)
                return att
        assert err is not None
        if mode == "native":
            raise AttachError(f"cannot attach XDP to {where} in native mode: the driver does not support native "
                              f"XDP ({err.strerror}); use --xdp-mode generic or auto")
        raise AttachError(f"cannot attach XDP to {where} ({mode} mode): {err.strerror}")

    # ------------------------------------------------------------ tail-call chaining

    def attach_tailcall(self, map_path: str, index: int) -> None:
        """Chain after another XDP program: put the labeler into slot `index`
        of its pinned BPF_MAP_TYPE_PROG_ARRAY; that program ends with
        bpf_tail_call(ctx, &array, index) where it would return XDP_PASS.
        Its metadata stays in place; ours is prepended in front of it."""
        key = (map_path, index)
        if key in self.tailcalls:
            return
        try:
            fd = self.lib.obj_get(map_path)
        except OSError as exc:
            raise AttachError(f"--xdp-tailcall {map_path}:{index}: no pinned program array there "
                              f"({exc.strerror})") from None
        try:
            cur = ctypes.c_uint32()
            occupied = self.lib.map_lookup(fd, ctypes.c_uint32(index), cur)
            if occupied:
                name = self._prog_name_by_id(cur.value)
                if name != "dw_labeler":
                    raise AttachError(f"--xdp-tailcall {map_path}:{index}: slot holds program {name!r} "
                                      f"(id {cur.value}); dropwatch does not replace it")
                log.warning("%s[%d]: replacing a stale dropwatch labeler (prog id %d)", map_path, index, cur.value)
            self.lib.map_update(fd, ctypes.c_uint32(index), ctypes.c_uint32(self.labeler_prog_fd))
        except OSError as exc:
            os.close(fd)
            raise AttachError(f"--xdp-tailcall {map_path}:{index}: {exc.strerror} (the array must be a "
                              f"BPF_MAP_TYPE_PROG_ARRAY of XDP programs)") from None
        except BaseException:
            os.close(fd)
            raise
        self.tailcalls[key] = fd
        log.info("chained the XDP labeler into %s[%d]", map_path, index)

    def _prog_name_by_id(self, prog_id: int) -> str:
        try:
            fd = self.lib.prog_fd_by_id(prog_id)
        except OSError:
            return "?"
        try:
            return self.lib.prog_info(fd).name
        finally:
            os.close(fd)

    def detach_tailcall(self, map_path: str, index: int) -> None:
        fd = self.tailcalls.pop((map_path, index), None)
        if fd is None:
            return
        try:
            self.lib.map_delete(fd, ctypes.c_uint32(index))
        finally:
            os.close(fd)
        log.info("removed the XDP labeler from %s[%d]", map_path, index)

    def detach_xdp(self, iface: str, netns: str | None = None) -> None:
        att = self.xdp.pop((netns, iface), None)
        if att is not None:
            os.close(att.link_fd)
            log.info("detached XDP labeler from %s", iface)

    def close(self) -> None:
        for key in list(self.xdp):
            self.detach_xdp(key[1], key[0])
        for path, index in list(self.tailcalls):
            self.detach_tailcall(path, index)
        if self._reader_link:
            self.lib.link_destroy(self._reader_link)
            self._reader_link = None
            log.info("detached drop reader")
        self._state_obj = None
        if self._state_mmap is not None:
            self._state_mmap.close()
        self._state_mmap = None
        self._unmap_drop_slots()
        for bo in (self.reader, self.labeler):
            if bo is not None:
                self.lib.close_object(bo.obj)
        self.reader = self.labeler = None
        self._labeler_prog_fd = self._reader_prog_fd = None

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _state(self) -> abi.LabelerState:
        if self._state_obj is None:
            raise DropwatchError("labeler not loaded")
        return self._state_obj

    @property
    def labeler_prog_fd(self) -> int:
        if self._labeler_prog_fd is None:
            raise DropwatchError("labeler not loaded")
        return self._labeler_prog_fd

    @property
    def reader_prog_fd(self) -> int | None:
        return self._reader_prog_fd

    # ------------------------------------------------------------ rules

    def _lmap(self, name: str) -> int:
        assert self.labeler is not None, "load() first"
        return self.labeler.maps[name]

    def _rmap(self, name: str) -> int:
        assert self.reader is not None, "attach_reader() first"
        return self.reader.maps[name]

    def _init_rule_maps(self) -> None:
        """Map the labeler's .bss (struct dw_labeler_state): after load,
        libbpf has mmap'ed the kernel map there, so plain stores reach the
        program; it starts zeroed (generation 0, no rules)."""
        assert self.labeler is not None
        m = self.lib.find_map(self.labeler.obj, ".bss")
        size = self.lib.map_value_size(m)
        if size < ctypes.sizeof(abi.LabelerState):
            raise DropwatchError(f"{self.labeler.path}: .bss is {size} bytes, expected struct dw_labeler_state")
        # libbpf (before skeletons) keeps a private copy; map the kernel's
        # memory ourselves (global-data maps are BPF_F_MMAPABLE).
        self._state_mmap = mmap.mmap(self.lib.map_fd(m), -(-size // mmap.PAGESIZE) * mmap.PAGESIZE,
                                     mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._state_obj = abi.LabelerState.from_buffer(self._state_mmap)
        maps = {n.removeprefix(_GLOBAL_TABLE): m for n, m in self.lib.maps(self.labeler.obj)}
        for name in LPM_MAPS + KEY_MAPS:
            self._lpm_sizes[name] = self.lib.map_max_entries(maps[name]) * self.lib.map_value_size(maps[name])

    @contextmanager
    def _lpm_window(self, name: str, off: int, n: int) -> Iterator[tuple[mmap.mmap, int]]:
        """The pages of array ``name`` holding bytes [off, off + n), mapped
        for one read or write: (mapping, offset of ``off`` in it). A BPF
        array's mmap maps every page at once, and they count as this
        process's resident memory: mapping the whole tables for good would
        add their full size (about 70 MB) to the daemon's RSS."""
        assert self.labeler is not None
        start = off - off % mmap.PAGESIZE
        length = min(-(-(off + n - start) // mmap.PAGESIZE) * mmap.PAGESIZE, self._lpm_sizes[name] - start)
        mm = mmap.mmap(self.labeler.maps[name], max(length, 1), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                       offset=start)
        try:
            yield mm, off - start
        finally:
            mm.close()

    def apply_rules(self, compiled: CompiledRules) -> None:
        """Fill the inactive generation, verify it, flip, then clear the old one.

        On any error the active rules are untouched and the inactive
        generation is emptied again: all or nothing.
        """
        with self._rules_lock:
            gen = 1 - self.active_gen if self.rules_loaded else self.active_gen ^ 1
            self._clear_gen(gen)
            epoch = self._epoch + 1
            try:
                self._write_gen(gen, compiled, epoch)
                self._verify_gen(gen, compiled)
            except BaseException:
                self._clear_gen(gen)
                raise
            # The flip: one aligned 4-byte store into the program's memory.
            self._state.active_gen = gen
            old = self.active_gen
            self.active_gen = gen
            self._epoch = epoch
            self.rules_loaded = True
            # The reader accepts flow entries of the new epoch only: entries
            # classified under the old rules read as stale from here on.
            self.flow_cfg = abi.FlowCfg(mode=compiled.flow_mode, epoch=epoch,
                                        max_age_ns=compiled.flow_max_age_ms * 1_000_000)
            self._write_flow_cfg()
            time.sleep(GEN_GRACE_S)
            # The new rules are live now: a failure to clear the old
            # generation is only garbage (cleared again before that
            # generation is next written), not a failed reload.
            try:
                self._clear_gen(old)
            except OSError as exc:
                log.warning("rules applied; clearing the previous generation failed (retried on the next "
                            "reload): %s", exc)

    def _write_flow_cfg(self) -> None:
        if self.reader is not None:
            self.lib.map_update(self.reader.maps["dw_flow_cfg"], ctypes.c_uint32(0), self.flow_cfg)

    @staticmethod
    def _pop_key(gen: int, family: int, plen: int, addr: bytes) -> abi.PopKey:
        k = abi.PopKey(prefixlen=16 + plen, gen=gen, family=family)
        ctypes.memmove(k.addr, addr, 16)
        return k

    def _write_gen(self, gen: int, c: CompiledRules, epoch: int) -> None:
        pair_fd = self._lmap("dw_pairs")
        pkeys: list[tuple[str, bytes]] = []
        qkeys: list[bytes] = []
        self._gen_keys[gen] = (pkeys, qkeys)
        for (family, plen, addr), pop_id in c.pop_prefixes.items():
            kp = self._pop_key(gen, family, plen, addr)
            self.lib.map_update(self._lmap("dw_pops"), kp, ctypes.c_uint32(pop_id), BPF_NOEXIST)
            pkeys.append(("dw_pops", bytes(kp)))
        for (sid, did), cands in c.pairs.items():
            k2 = abi.PairKey(src_prefix_id=sid, dst_prefix_id=did, gen=gen)
            self.lib.map_update(pair_fd, k2, _cand_list(cands, 0), BPF_NOEXIST)
            qkeys.append(bytes(k2))
        gs = abi.GenState()
        gs.rs.has_pairs = 1 if c.pairs else 0
        gs.rs.default_side = c.default_side
        gs.rs.epoch = epoch
        gs.rs.flow_mode = c.flow_mode
        gs.rs.has_pops = 1 if c.pop_prefixes else 0
        gs.rs.flow_max_age_ms = c.flow_max_age_ms
        gs.rs.n_udp_encaps = len(c.udp_encaps)
        gs.rs.bmp_skip = c.lpm.bmp_skip
        for i, (port, etype, ipproto) in enumerate(c.udp_encaps):
            gs.rs.udp_encaps[i] = abi.UdpEncapEntry(port=port, type=etype, ipproto=ipproto)
        gs.rs.wildcard = _cand_list(c.wildcard, 0)
        # Not yet active: no packet reads this generation until the flip.
        ctypes.memmove(ctypes.addressof(self._state.gen[gen]), ctypes.addressof(gs), ctypes.sizeof(gs))
        regions = self._lpm_regions(gen, c)
        self._gen_regions[gen] = [(name, off, len(data)) for name, off, data in regions]
        for name, off, data in regions:
            self._store(name, off, data)

    def _lpm_regions(self, gen: int, c: CompiledRules) -> list[tuple[str, int, bytes]]:
        """(map, byte offset, bytes) of generation ``gen``'s longest-prefix-
        match tables: each gen owns one half of every array, and chunk
        offsets become absolute entry indexes into its half."""
        t = c.lpm
        half4, half6 = self.lpm4_entries // 2, self.lpm6_entries // 2
        small6 = len(t.v6_small) // 2  # 16-byte entries at the start of the gen's IPv6 part; chunks after them
        if len(t.v4_rng) > half4 or t.v6_entries() > half6:
            raise RulesError(f"the rules need {len(t.v4_rng)} IPv4 and {t.v6_entries()} IPv6 range entries; the "
                             f"labeler holds {half4} and {half6} per generation")
        base4, base6 = gen * half4, gen * half6
        v6_rng = t.v6_rng
        if base6 + small6:  # values that point to a chunk
            v6_rng = array("Q", v6_rng)
            for i in t.v6_ptrs:
                v6_rng[i] += base6 + small6
        res, lists = _results(c.results)
        slots = t.v4_slots
        if base4 and t.v4_chunks:
            slots = array("Q", slots)
            for i in t.v4_chunks:
                slots[i * lpm.SLOT4] += base4 << 16  # off, w0's bits 16-47
        slots6 = t.v6_slots
        if (base6 or small6) and t.v6_ptr_slots:
            slots6 = array("Q", slots6)
            for i in t.v6_ptr_slots:
                e = slots6[i * lpm.SLOT6]
                slots6[i * lpm.SLOT6] = e + base6 + small6 if e & CHUNK else e + 2 * base6
        return [
            ("dw_lpm_ans", gen * abi.DW_MAX_RESULTS * ctypes.sizeof(abi.LpmAns), _answers(c.results, c.default_side)),
            ("dw_slot4", gen * len(t.v4_slots) * 8, slots.tobytes()),
            ("dw_lpm4_rng", base4 * 4, t.v4_rng.tobytes()),
            ("dw_slot6", gen * len(t.v6_slots) * 8, slots6.tobytes()),
            ("dw_lpm6_rng", base6 * 16, t.v6_small.tobytes() + v6_rng.tobytes()),
            ("dw_lpm_bmp", gen * len(t.bmp) * 8, t.bmp.tobytes()),
            ("dw_lpm_res", gen * abi.DW_MAX_RESULTS * ctypes.sizeof(abi.LpmRes), res),
            ("dw_results", gen * abi.DW_MAX_RESULTS * ctypes.sizeof(abi.CandList), lists),
        ]

    def _store(self, name: str, off: int, data: bytes) -> None:
        """One region into the program's memory (through mmap: 10^6 prefixes
        load in one copy, not 10^6 syscalls)."""
        with self._lpm_window(name, off, len(data)) as (mm, d):
            mm[d:d + len(data)] = data

    def _verify_gen(self, gen: int, c: CompiledRules) -> None:
        """Read back what we wrote: a map must never be half-updated."""
        v = abi.CandList()
        pv = ctypes.c_uint32()
        for (family, plen, addr), pop_id in c.pop_prefixes.items():
            kp = self._pop_key(gen, family, plen, addr)
            if not self.lib.map_lookup(self._lmap("dw_pops"), kp, pv) or pv.value != pop_id:
                raise DropwatchError(f"rule map verification failed for PoP prefix len {plen}")
        for name, off, data in self._lpm_regions(gen, c):
            with self._lpm_window(name, off, len(data)) as (mm, d):
                if mm[d:d + len(data)] != data:
                    raise DropwatchError(f"rule map verification failed for {name}")
        pair_fd = self._lmap("dw_pairs")
        for (sid, did), cands in c.pairs.items():
            pk = abi.PairKey(src_prefix_id=sid, dst_prefix_id=did, gen=gen)
            if not self.lib.map_lookup(pair_fd, pk, v) or bytes(v) != bytes(_cand_list(cands, 0)):
                raise DropwatchError(f"rule map verification failed for src/dst pair {sid}/{did}")

    def _clear_gen(self, gen: int) -> None:
        pair_fd = self._lmap("dw_pairs")
        pkeys, qkeys = self._gen_keys.get(gen, ([], []))
        for name, raw in pkeys:
            self.lib.map_delete(self._lmap(name), abi.PopKey.from_buffer_copy(raw))
        for raw in qkeys:
            self.lib.map_delete(pair_fd, abi.PairKey.from_buffer_copy(raw))
        self._gen_keys[gen] = ([], [])
        ctypes.memset(ctypes.addressof(self._state.gen[gen]), 0, ctypes.sizeof(abi.GenState))
        for name, off, n in self._gen_regions.get(gen, []):
            with self._lpm_window(name, off, n) as (mm, d):
                mm[d:d + n] = bytes(n)
        self._gen_regions[gen] = []

    def rule_map_entries(self) -> dict[str, int]:
        """What the rule maps hold, both generations, read from the kernel's
        memory (for tests: what a reload left behind): results in use, range entries
        (small IPv6 chunks included), IPv4 and IPv6 direct entries in use, and pair
        entries."""
        out = {"dw_results": 0, "dw_lpm_ranges": 0, "dw_slot4": 0, "dw_slot6": 0, "dw_pairs": 0}
        rsize = ctypes.sizeof(abi.LpmRes)
        with self._lpm_window("dw_lpm_res", 0, self._lpm_sizes["dw_lpm_res"]) as (mm, _d):
            res = mm[:]
        # A result in use has a prefix id or candidates: bytes 0..7 (prefix_id, n).
        heads = [res[k::rsize] for k in range(abi.LpmRes.n.offset + 4)]
        out["dw_results"] = sum(1 for t in zip(*heads, strict=True) if any(t))
        for name, half, width in (("dw_lpm4_rng", self.lpm4_entries // 2, 4),
                                  ("dw_lpm6_rng", self.lpm6_entries // 2, 16)):
            for gen in range(abi.DW_GENS):
                with self._lpm_window(name, gen * half * width, half * width) as (mm, d):
                    region = mm[d:d + half * width]
                # Whole 64-byte lines, as the builder lays them out.
                out["dw_lpm_ranges"] += -(-len(region.rstrip(b"\0")) // 64) * 64 // width
        for name, words in (("dw_slot4", lpm.SLOT4), ("dw_slot6", lpm.SLOT6)):
            with self._lpm_window(name, 0, self._lpm_sizes[name]) as (mm, _d):
                slots = np.frombuffer(mm[:], dtype=np.uint64).reshape(-1, words)
            out[name] = int(slots.any(axis=1).sum())
        fd = self._lmap("dw_pairs")
        k, nk = abi.PairKey(), abi.PairKey()
        cur = None
        while self.lib.map_next_key(fd, cur, nk):
            out["dw_pairs"] += 1
            ctypes.memmove(ctypes.byref(k), ctypes.byref(nk), ctypes.sizeof(k))
            cur = k
        return out

    # ------------------------------------------------------------ counters

    def _percpu_sum_u64(self, values: ctypes.Array, i: int) -> int:  # type: ignore[type-arg]
        base = i * self.ncpus
        return sum(values[base:base + self.ncpus])

    def read_stats(self, which: str = "both") -> dict[abi.Stat, int]:
        out: dict[abi.Stat, int] = {}
        objs = []
        if which in ("both", "labeler") and self.labeler:
            objs.append(self.labeler)
        if which in ("both", "reader") and self.reader:
            objs.append(self.reader)
        for bo in objs:
            vals = (ctypes.c_uint64 * self.ncpus)()
            for st in abi.Stat:
                if self.lib.map_lookup(bo.maps["dw_stats"], ctypes.c_uint32(int(st)), vals):
                    s = sum(vals)
                    if s:
                        out[st] = out.get(st, 0) + s
        return out

    # ------------------------------------------------------------ drops

    def _map_drop_slots(self) -> None:
        assert self.reader is not None
        self._unmap_drop_slots()
        sizes = {"dw_slot_keys": self.drop_entries * ctypes.sizeof(abi.DropKey),
                 "dw_drop_ctl": ctypes.sizeof(abi.DropCtl)}
        for name, size in sizes.items():
            self._drop_mms[name] = mmap.mmap(self.reader.maps[name], size, mmap.MAP_SHARED,
                                             mmap.PROT_READ | mmap.PROT_WRITE)
        self._drop_ctl = abi.DropCtl.from_buffer(self._drop_mms["dw_drop_ctl"])
        if self._drop_counts_size() <= _DROP_COUNTS_RESIDENT_MAX:
            self._drop_mms["dw_drop_counts"] = self._map_drop_counts()

    def _drop_counts_size(self) -> int:
        return self.ncpus * self.drop_entries * 8

    def _map_drop_counts(self) -> mmap.mmap:
        assert self.reader is not None
        return mmap.mmap(self.reader.maps["dw_drop_counts"], self._drop_counts_size(), mmap.MAP_SHARED,
                         mmap.PROT_READ | mmap.PROT_WRITE)

    def _unmap_drop_slots(self) -> None:
        self._drop_ctl = None
        for mm in self._drop_mms.values():
            mm.close()
        self._drop_mms.clear()

    def _with_drop_counts(self, fn: Callable[[npt.NDArray[np.uint64]], _T]) -> _T:
        """fn(dw_drop_counts as (CPU, slot), over the mapping itself). A BPF
        array's mapping has every page resident (it cannot be paged out and
        in again), and they count as this process's memory: a large one (8
        bytes per slot per CPU, 128 MB for 65,536 slots on 256 CPUs) is
        mapped only for the call. fn must not keep the view."""
        mm = self._drop_mms.get("dw_drop_counts") or self._map_drop_counts()
        try:
            view = np.frombuffer(mm, dtype=np.uint64).reshape(self.ncpus, self.drop_entries)
            out = fn(view)
            del view  # (a mapping cannot close while a view exports it)
            return out
        finally:
            if mm is not self._drop_mms.get("dw_drop_counts"):
                mm.close()

    def drop_slots_used(self) -> int:
        """Slots handed out at least once: [0, this) may hold counts."""
        assert self._drop_ctl is not None, "attach_reader() first"
        return min(int(self._drop_ctl.next_fresh), self.drop_entries)

    def read_drop_slots(self) -> npt.NDArray[np.uint64]:
        """Cumulative drops per slot, summed over CPUs, for slots
        [0, drop_slots_used()): one pass over the mapped counts, no syscall.
        Each CPU's cell only grows (until user space recycles the slot), so
        a slot's sum only grows between two reads."""
        n = self.drop_slots_used()
        return self._with_drop_counts(lambda view: view[:, :n].sum(axis=0, dtype=np.uint64))

    def drop_slot_keys(self, slots: Iterable[int]) -> list[DropKeyT]:
        """The keys the reader gave these slots (meaningful for slots with a
        count: the key is written before the slot's first count)."""
        raw = self._drop_mms["dw_slot_keys"]
        unpack, size = _DROP_KEY_STRUCT.unpack_from, _DROP_KEY_STRUCT.size
        return [_DROP_KEY_ORDER(unpack(raw, s * size)) for s in slots]

    def retire_drop_keys(self, keys: Iterable[DropKeyT]) -> int:
        """Stop counting these keys in their slots: delete them from
        dw_drop_slots, then bump the epoch that invalidates the reader's
        per-CPU caches. A drop of the key from now on gets a new slot. The
        old slots may still take the increments of programs already past
        the lookup: recycle them only after a grace period. Returns how many
        keys were in the map."""
        fd = self._rmap("dw_drop_slots")
        n = 0
        for key in keys:
            n += self.lib.map_delete(fd, _c_drop_key(key))
        assert self._drop_ctl is not None
        self._drop_ctl.epoch = (self._drop_ctl.epoch + 1) & 0xFFFFFFFF
        return n

    def recycle_drop_slots(self, slots: Sequence[int]) -> None:
        """Zero these slots on every CPU and hand them back to the reader.
        Only for slots of keys retired (retire_drop_keys) a grace period ago,
        whose last count the caller has read."""
        if not slots:
            return
        idx = np.asarray(slots, dtype=np.int64)

        def zero(view: npt.NDArray[np.uint64]) -> None:
            view[:, idx] = 0
        self._with_drop_counts(zero)
        fd = self._rmap("dw_free_slots")
        for s in slots:
            self.lib.queue_push(fd, ctypes.c_uint32(s))

    def read_drops(self) -> dict[DropKeyT, int]:
        """Cumulative drop counts: (label_id, side, reason, location, ifindex,
        pop_id, source, netns_ino, flags) -> count, summed over CPUs and over
        the key's slots (a key retired and seen again has two until the old
        one is recycled)."""
        counts = self.read_drop_slots()
        used = np.flatnonzero(counts)
        out: dict[DropKeyT, int] = {}
        for key, n in zip(self.drop_slot_keys(used.tolist()), counts[used].tolist(), strict=True):
            out[key] = out.get(key, 0) + n
        return out

    def write_drop_slots(self, keys: Sequence[DropKeyT], counts: npt.NDArray[np.uint64]) -> None:
        """Give keys[i] slot i with per-CPU counts counts[cpu, i] (shape
        (ncpus, len(keys))), as the reader would have: for benchmarks and
        tests that need more distinct keys than packets can make. Only on a
        reader that has counted nothing yet."""
        assert self._drop_ctl is not None and self._drop_ctl.next_fresh == 0, "a fresh reader only"
        n = len(keys)
        if n > self.drop_entries:
            raise ValueError(f"{n} keys: the reader has {self.drop_entries} slots")
        raw = self._drop_mms["dw_slot_keys"]
        packed = b"".join(bytes(_c_drop_key(k)) for k in keys)
        raw[:len(packed)] = packed
        if n:
            self.lib.map_update_batch(self._rmap("dw_drop_slots"), packed,
                                      np.arange(n, dtype=np.uint32).tobytes(), n)
        self._drop_ctl.next_fresh = n
        def put(view: npt.NDArray[np.uint64]) -> None:
            view[:, :n] = counts
        self._with_drop_counts(put)

    def read_packets(self, max_label_id: int) -> dict[tuple[int, int, int], tuple[int, int]]:
        """Cumulative packets/bytes seen at ingress: (label_id, side, pop_id) ->
        (packets, bytes). Untunnelled packets (pop_id DW_POP_NONE) come from
        the dw_pkt_counts array, tunnelled ones from dw_pop_pkt_counts."""
        n_cells = min((max_label_id + 1) * abi.DW_SIDE_COUNT, abi.DW_PKT_CELLS)
        cells = self._pkt_cells(n_cells)
        out: dict[tuple[int, int, int], tuple[int, int]] = {}
        for idx in np.flatnonzero(cells[:, 0]).tolist():
            out[(idx // abi.DW_SIDE_COUNT, idx % abi.DW_SIDE_COUNT, abi.DW_POP_NONE)] = (
                int(cells[idx, 0]), int(cells[idx, 1]))
        stride = ctypes.sizeof(abi.PktVal) // 8
        values = (ctypes.c_uint64 * (_BATCH * self.ncpus * stride))()
        # Decoded from the batch buffers: per CPU (packets, bytes), summed.
        vsz = 8 * stride * self.ncpus
        vview = memoryview(values).cast("B")
        vfmt = struct.Struct(f"={stride * self.ncpus}Q")
        pfd = self._lmap("dw_pop_pkt_counts")
        pkeys = (abi.PopPktKey * _BATCH)()
        pin_b: object | None = None
        pout_b = abi.PopPktKey()
        while True:
            n, more = self.lib.map_lookup_batch(pfd, pin_b, pout_b, pkeys, values, _BATCH)
            for i, pb in enumerate(vfmt.iter_unpack(vview[:n * vsz])):
                pk = sum(pb[0::2])
                if pk:
                    k = pkeys[i]
                    out[(k.label_id, k.side, k.pop_id)] = (pk, sum(pb[1::2]))
            if not more:
                break
            pin_b = abi.PopPktKey.from_buffer_copy(bytes(pout_b))
        return out

    def _pkt_cells(self, n_cells: int) -> npt.NDArray[np.uint64]:
        """Cells [0, n_cells) of dw_pkt_counts as (packets, bytes) rows,
        summed over the CPUs' stripes. Each stripe's first pages are mapped
        for the call only: the whole array is 1 MB per possible CPU, and a
        BPF array's mapping keeps every page it maps resident."""
        assert self.labeler is not None
        cell = ctypes.sizeof(abi.PktVal)
        length = max(1, -(-n_cells * cell // mmap.PAGESIZE)) * mmap.PAGESIZE
        total = np.zeros((n_cells, 2), dtype=np.uint64)
        for cpu in range(self.ncpus):
            mm = mmap.mmap(self.labeler.maps["dw_pkt_counts"], length, mmap.MAP_SHARED, mmap.PROT_READ,
                           offset=cpu * abi.DW_PKT_CELLS * cell)
            try:
                view = np.frombuffer(mm, dtype=np.uint64, count=2 * n_cells).reshape(n_cells, 2)
                total += view
                del view  # (a mapping cannot close while a view exports it)
            finally:
                mm.close()
        return total

    def lookup_flow(self, key: abi.FlowKey) -> abi.FlowVal | None:
        """The labeler's flow-fallback entry for a flow, if any."""
        v = abi.FlowVal()
        return v if self.lib.map_lookup(self._lmap("dw_flows"), key, v) else None

    def samples_map_fd(self) -> int:
        return self._rmap("dw_samples")

    def read_meta_failures(self) -> dict[int, int]:
        fd = self._lmap("dw_meta_fail")
        out: dict[int, int] = {}
        k, nk = ctypes.c_uint32(), ctypes.c_uint32()
        cur: object | None = None
        vals = (ctypes.c_uint64 * self.ncpus)()
        while self.lib.map_next_key(fd, cur, nk):
            if self.lib.map_lookup(fd, nk, vals):
                out[nk.value] = sum(vals)
            k.value = nk.value
            cur = k
        return out

    def prog_infos(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self._labeler_prog_fd is not None:
            out["labeler"] = self.lib.prog_info(self._labeler_prog_fd)
        if self._reader_prog_fd is not None:
            out["reader"] = self.lib.prog_info(self._reader_prog_fd)
        return out


DropKeyT = tuple[int, int, int, int, int, int, int, int, int]
# struct dw_drop_key as laid out in memory, and the reorder into DropKeyT.
_DROP_KEY_STRUCT = struct.Struct("=QIIIIHBBB3x")
_DROP_KEY_ORDER = operator.itemgetter(1, 6, 2, 0, 3, 5, 7, 4, 8)
assert _DROP_KEY_STRUCT.size == ctypes.sizeof(abi.DropKey)


def _c_drop_key(key: DropKeyT) -> abi.DropKey:
    label_id, side, reason, location, ifindex, pop_id, source, netns_ino, flags = key
    return abi.DropKey(location=location, label_id=label_id, reason=reason, ifindex=ifindex,
                       netns_ino=netns_ino, pop_id=pop_id, side=side, source=source, flags=flags)


def flow_key(saddr: str, daddr: str, proto: int, sport: int | None = None,
             dport: int | None = None) -> abi.FlowKey:
    """The dw_flows key of a flow, as the labeler and the reader build it
    (ports only when given: a first fragment whose L4 header follows the
    fixed IP header)."""
    src, dst = ipaddress.ip_address(saddr), ipaddress.ip_address(daddr)
    k = abi.FlowKey(proto=proto, family=src.version)
    ctypes.memmove(k.saddr, src.packed, len(src.packed))
    ctypes.memmove(k.daddr, dst.packed, len(dst.packed))
    if sport is not None and dport is not None:
        k.sport = socket.htons(sport)
        k.dport = socket.htons(dport)
        k.flags = abi.DW_FLOW_HAS_PORTS
    return k


# The labeler's fixed-size tables are globals in sections .bss.<name>, which
# libbpf turns into maps of that name; the loader knows them by <name>.
_GLOBAL_TABLE = ".bss."
# Written per rule generation, through mmap.
LPM_MAPS = ("dw_lpm_bmp", "dw_slot4", "dw_lpm4_rng", "dw_slot6", "dw_lpm6_rng", "dw_lpm_res",
            "dw_lpm_ans", "dw_results")
# Written once at load, for this load's record key (the check table).
KEY_MAPS = ("dw_metachk",)


def _results(results: Sequence[tuple[int, Sequence[object]]]) -> tuple[bytes, bytes]:
    """dw_lpm_res and dw_results contents from index 0: one candidate
    inline, two or more as a list at the same index."""
    res, lists = [], []
    empty = bytes(ctypes.sizeof(abi.CandList))
    for pid, cands in results:
        r = abi.LpmRes(prefix_id=pid, n=len(cands))
        if len(cands) == 1:
            r.c0 = _cand_list(cands, 0).c[0]
        res.append(bytes(r))
        lists.append(bytes(_cand_list(cands, pid)) if len(cands) > 1 else empty)
    while lists and lists[-1] == empty:  # nothing to write past the last list
        lists.pop()
    return b"".join(res), b"".join(lists)


def _answers(results: Sequence[tuple[int, Sequence[object]]], default_side: int) -> bytes:
    """dw_lpm_ans from index 0 (struct dw_lpm_ans in bpf/dropwatch.h): per
    result, the best label and side its candidates give without a
    condition, or DW_ANS_EVAL if a candidate has a proto or port one."""
    none_l, none_s = abi.DW_PRIO_NONE << 32, abi.DW_PRIO_NONE << 32 | default_side
    out = array("Q")
    for _pid, cands in results:
        lkey, skey = none_l, none_s
        if any(c.proto or c.flags & abi.DW_CAND_NEEDS_PORT for c in cands):  # type: ignore[attr-defined]
            skey |= abi.DW_ANS_EVAL
        else:
            for c in cands:
                if c.label_id:  # type: ignore[attr-defined]
                    lkey = min(lkey, c.prio << 32 | c.label_id)  # type: ignore[attr-defined]
                if c.side:  # type: ignore[attr-defined]
                    skey = min(skey, c.prio << 32 | c.side)  # type: ignore[attr-defined]
        out.extend((lkey, skey))
    return out.tobytes()


def _cand_list(cands: Iterable[object], prefix_id: int) -> abi.CandList:
    cl = abi.CandList(prefix_id=prefix_id)
    n = 0
    for c in cands:
        cl.c[n] = abi.Cand(label_id=c.label_id, prio=c.prio, dport_lo=c.dport_lo,  # type: ignore[attr-defined]
                           dport_hi=c.dport_hi, proto=c.proto, side=c.side,  # type: ignore[attr-defined]
                           flags=c.flags)  # type: ignore[attr-defined]
        n += 1
    cl.n = n
    return cl


def test_run_xdp(loader: Loader, frame: bytes, meta: bytes = b"", repeat: int = 1) -> tuple[int, bytes, bytes, int]:
    """Run the labeler on a frame (with optional pre-existing metadata).

    Returns (verdict, metadata area after the run, packet bytes, ns per run).
    """
    # With ctx_in, data = metalen makes the first metalen bytes of data_in the
    # metadata; data_out then starts at the (possibly grown) metadata.
    ctx = abi_xdp_md(len(meta), len(meta) + len(frame))
    ret, out, dur, ctx_out = loader.lib.test_run(loader.labeler_prog_fd, meta + frame, ctx=ctx, repeat=repeat)
    from .libbpf import XdpMd  # local: only tests use it
    md = XdpMd.from_buffer_copy(ctx_out) if ctx_out else None
    meta_len = md.data - md.data_meta if md else 0
    return ret, out[:meta_len], out[meta_len:], dur


def abi_xdp_md(data: int, data_end: int) -> bytes:
    from .libbpf import XdpMd
    md = XdpMd(data=data, data_end=data_end, data_meta=0)
    return bytes(md)

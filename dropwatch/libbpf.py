"""The one place that talks to the distro's libbpf.so.1 (ctypes).

Everything else in dropwatch calls this module. libbpf's negative returns and
NULL-with-errno become ``OSError(errno, message)`` here, and libbpf's own log
lines (including the verifier log of a rejected program) are captured so a
load error can carry them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_mod
import os
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# UAPI constants (include/uapi/linux/bpf.h, if_link.h): part of the kernel ABI.
BPF_XDP = 37
BPF_ANY = 0
BPF_NOEXIST = 1
XDP_FLAGS_UPDATE_IF_NOEXIST = 1
XDP_FLAGS_SKB_MODE = 2
XDP_FLAGS_DRV_MODE = 4
BPF_STATS_RUN_TIME = 0
XDP_ATTACHED_NONE = 0

_LOG_LINES = 4000


class LibbpfError(OSError):
    """An OSError from libbpf with the log lines libbpf printed meanwhile."""

    def __init__(self, err: int, message: str, log: list[str] | None = None) -> None:
        super().__init__(err, message)
        self.log = log or []


class _Opts(ctypes.Structure):
    pass


class TestRunOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class XdpQueryOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("prog_id", ctypes.c_uint32),
        ("drv_prog_id", ctypes.c_uint32),
        ("hw_prog_id", ctypes.c_uint32),
        ("skb_prog_id", ctypes.c_uint32),
        ("attach_mode", ctypes.c_uint8),
    ]


class LinkCreateOpts(ctypes.Structure):
    # Only the leading fields we set; sz tells libbpf the rest is absent.
    _fields_ = [("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


class BatchOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class XdpMd(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_uint32),
        ("data_end", ctypes.c_uint32),
        ("data_meta", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("rx_queue_index", ctypes.c_uint32),
        ("egress_ifindex", ctypes.c_uint32),
    ]


# struct bpf_prog_info is 232 bytes in the UAPI we build against; we read a few
# fixed offsets and pass a buffer of that size (the kernel fills what it knows).
_PROG_INFO_SIZE = 232
_PROG_INFO_ID = 4
_PROG_INFO_NAME = 64
_PROG_INFO_RUN_TIME_NS = 192
_PROG_INFO_RUN_CNT = 200
_PROG_INFO_RECURSION_MISSES = 208


@dataclass(frozen=True)
class ProgInfo:
    id: int
    name: str
    run_time_ns: int
    run_cnt: int
    recursion_misses: int


@dataclass(frozen=True)
class XdpQuery:
    prog_id: int
    drv_prog_id: int
    skb_prog_id: int
    hw_prog_id: int
    attach_mode: int


_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
RINGBUF_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class Libbpf:
    """Loaded libbpf plus a capture of its log output."""

    def __init__(self, path: str | None = None) -> None:
        name = path or os.environ.get("DROPWATCH_LIBBPF") or "libbpf.so.1"
        try:
            self.lib = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            raise LibbpfError(errno_mod.ENOENT, f"cannot load {name}: {exc} (install libbpf1)") from exc
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        # vasprintf, not a fixed buffer: a rejected program's verifier log
        # comes in one message of up to megabytes, and its last line is
        # the error the user needs.
        self._libc.vasprintf.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_void_p]
        self._libc.vasprintf.restype = ctypes.c_int
        self._libc.free.argtypes = [ctypes.c_void_p]
        self._log: deque[str] = deque(maxlen=_LOG_LINES)
        self._log_total = 0  # lines ever logged: a mark survives the deque's wrap-around
        self._log_lock = threading.Lock()
        self._print_cb = _PRINT_FN(self._on_print)  # kept alive: libbpf holds the pointer
        self._declare()
        self.lib.libbpf_set_print(self._print_cb)

    # -- libbpf log capture -------------------------------------------------

    def _on_print(self, level: int, fmt: bytes, va_list: int) -> int:
        out = ctypes.c_void_p()
        n = self._libc.vasprintf(ctypes.byref(out), fmt, va_list)
        if n < 0 or not out.value:
            return 0
        try:
            text = ctypes.string_at(out.value, n).decode(errors="replace")
        finally:
            self._libc.free(out)
        self._log_lines(text.splitlines())
        return 0

    def _log_lines(self, lines: list[str]) -> None:
        with self._log_lock:
            self._log.extend(lines)
            self._log_total += len(lines)

    def log_mark(self) -> int:
        with self._log_lock:
            return self._log_total

    def log_since(self, mark: int) -> list[str]:
        """The lines logged since log_mark() returned ``mark``: the last
        _LOG_LINES of them if there were more (a verifier log's tail)."""
        with self._log_lock:
            n = self._log_total - mark
            return list(self._log)[-n:] if n > 0 else []

    # -- declarations --------------------------------------------------------

    def _declare(self) -> None:
        L = self.lib
        vp, i, u32, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_size_t
        decl = {
            "libbpf_set_print": (vp, [_PRINT_FN]),
            "bpf_object__open_file": (vp, [ctypes.c_char_p, vp]),
            "bpf_object__load": (i, [vp]),
            "bpf_object__close": (None, [vp]),
            "bpf_object__find_program_by_name": (vp, [vp, ctypes.c_char_p]),
            "bpf_object__find_map_by_name": (vp, [vp, ctypes.c_char_p]),
            "bpf_object__next_map": (vp, [vp, vp]),
            "bpf_object__next_program": (vp, [vp, vp]),
            "bpf_program__name": (ctypes.c_char_p, [vp]),
            "bpf_program__set_autoload": (i, [vp, ctypes.c_bool]),
            "bpf_program__fd": (i, [vp]),
            "bpf_program__attach_trace": (vp, [vp]),
            "bpf_program__attach_tracepoint": (vp, [vp, ctypes.c_char_p, ctypes.c_char_p]),
            "bpf_map__name": (ctypes.c_char_p, [vp]),
            "bpf_map__fd": (i, [vp]),
            "bpf_map__initial_value": (vp, [vp, ctypes.POINTER(sz)]),
            "bpf_map__set_max_entries": (i, [vp, u32]),
            "bpf_map__reuse_fd": (i, [vp, i]),
            "bpf_map__max_entries": (u32, [vp]),
            "bpf_map__key_size": (u32, [vp]),
            "bpf_map__value_size": (u32, [vp]),
            "bpf_link__fd": (i, [vp]),
            "bpf_link__destroy": (i, [vp]),
            "bpf_link_create": (i, [i, i, i, vp]),
            "bpf_map_lookup_elem": (i, [i, vp, vp]),
            "bpf_map_update_elem": (i, [i, vp, vp, ctypes.c_uint64]),
            "bpf_map_delete_elem": (i, [i, vp]),
            "bpf_map_lookup_and_delete_elem": (i, [i, vp, vp]),
            "bpf_map_get_next_key": (i, [i, vp, vp]),
            "bpf_map_lookup_batch": (i, [i, vp, vp, vp, vp, ctypes.POINTER(u32), vp]),
            "bpf_map_update_batch": (i, [i, vp, vp, ctypes.POINTER(u32), vp]),
            "bpf_map_delete_batch": (i, [i, vp, ctypes.POINTER(u32), vp]),
            "bpf_prog_test_run_opts": (i, [i, vp]),
            "bpf_xdp_query": (i, [i, i, vp]),
            "bpf_obj_get_info_by_fd": (i, [i, vp, ctypes.POINTER(u32)]),
            "bpf_enable_stats": (i, [i]),
            "bpf_obj_get": (i, [ctypes.c_char_p]),
            "bpf_prog_get_fd_by_id": (i, [ctypes.c_uint32]),
            "libbpf_num_possible_cpus": (i, []),
            "libbpf_probe_bpf_prog_type": (i, [i, vp]),
            "ring_buffer__new": (vp, [i, RINGBUF_CB, vp, vp]),
            "bpf_object__btf": (vp, [vp]),
            "btf__raw_data": (vp, [vp, ctypes.POINTER(u32)]),
            "ring_buffer__poll": (i, [vp, i]),
            "ring_buffer__free": (None, [vp]),
        }
        for fname, (res, args) in decl.items():
            fn = getattr(L, fname)
            fn.restype = res
            fn.argtypes = args

    # -- helpers -------------------------------------------------------------

    @staticmethod
    def _check(ret: int, what: str) -> int:
        if ret < 0:
            err = -ret
            raise LibbpfError(err, f"{what}: {os.strerror(err)}")
        return ret

    @staticmethod
    def _check_ptr(ptr: int | None, what: str) -> int:
        if not ptr:
            err = ctypes.get_errno() or errno_mod.EINVAL
            raise LibbpfError(err, f"{what}: {os.strerror(err)}")
        return ptr

    def num_possible_cpus(self) -> int:
        return self._check(self.lib.libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")

    # -- objects -------------------------------------------------------------

    def open_object(self, path: Path) -> int:
        return self._check_ptr(self.lib.bpf_object__open_file(str(path).encode(), None), f"open {path}")

    def object_btf(self, obj: int) -> bytes:
        """The object's BTF as libbpf finalized it at open (DATASEC offsets
        filled in from the symbol table, which clang leaves at 0)."""
        btf = self._check_ptr(self.lib.bpf_object__btf(obj), "bpf_object__btf")
        size = ctypes.c_uint32(0)
        raw = self._check_ptr(self.lib.btf__raw_data(btf, ctypes.byref(size)), "btf__raw_data")
        return ctypes.string_at(raw, size.value)

    def load_object(self, obj: int) -> None:
        self._check(self.lib.bpf_object__load(obj), "bpf_object__load")

    def close_object(self, obj: int) -> None:
        self.lib.bpf_object__close(obj)

    def find_program(self, obj: int, name: str) -> int:
        return self._check_ptr(self.lib.bpf_object__find_program_by_name(obj, name.encode()), f"program {name}")

    def programs(self, obj: int) -> Iterator[tuple[str, int]]:
        prog = self.lib.bpf_object__next_program(obj, None)
        while prog:
            yield self.lib.bpf_program__name(prog).decode(), prog
            prog = self.lib.bpf_object__next_program(obj, prog)

    def set_autoload(self, prog: int, autoload: bool) -> None:
        self._check(self.lib.bpf_program__set_autoload(prog, autoload), "bpf_program__set_autoload")

    def program_fd(self, prog: int) -> int:
        return self._check(self.lib.bpf_program__fd(prog), "bpf_program__fd")

    def find_map(self, obj: int, name: str) -> int:
        return self._check_ptr(self.lib.bpf_object__find_map_by_name(obj, name.encode()), f"map {name}")

    def maps(self, obj: int) -> Iterator[tuple[str, int]]:
        m = self.lib.bpf_object__next_map(obj, None)
        while m:
            yield self.lib.bpf_map__name(m).decode(), m
            m = self.lib.bpf_object__next_map(obj, m)

    def map_fd(self, m: int) -> int:
        return self._check(self.lib.bpf_map__fd(m), "bpf_map__fd")

    def map_set_max_entries(self, m: int, n: int) -> None:
        self._check(self.lib.bpf_map__set_max_entries(m, n), "bpf_map__set_max_entries")

    def map_reuse_fd(self, m: int, fd: int) -> None:
        """Before load: this map is the existing map ``fd`` (shared between objects)."""
        self._check(self.lib.bpf_map__reuse_fd(m, fd), "bpf_map__reuse_fd")

    def map_value_size(self, m: int) -> int:
        return int(self.lib.bpf_map__value_size(m))

    def map_max_entries(self, m: int) -> int:
        return int(self.lib.bpf_map__max_entries(m))

    def map_initial_value(self, m: int) -> tuple[int, int]:
        """Address and size of a global data map's contents (before load)."""
        size = ctypes.c_size_t(0)
        addr = self._check_ptr(self.lib.bpf_map__initial_value(m, ctypes.byref(size)), "bpf_map__initial_value")
        return addr, size.value

    # -- links ---------------------------------------------------------------

    def attach_trace(self, prog: int) -> int:
        return self._check_ptr(self.lib.bpf_program__attach_trace(prog), "attach tp_btf")

    def attach_tracepoint(self, prog: int, category: str, name: str) -> int:
        return self._check_ptr(
            self.lib.bpf_program__attach_tracepoint(prog, category.encode(), name.encode()),
            f"attach tracepoint {category}:{name}",
        )

    def link_destroy(self, link: int) -> None:
        self.lib.bpf_link__destroy(link)

    def link_create_xdp(self, prog_fd: int, ifindex: int, flags: int) -> int:
        """A bpf_link for XDP: closing the fd (or dying) detaches it."""
        opts = LinkCreateOpts(sz=ctypes.sizeof(LinkCreateOpts), flags=flags)
        return self._check(
            self.lib.bpf_link_create(prog_fd, ifindex, BPF_XDP, ctypes.byref(opts)),
            f"bpf_link_create(xdp, ifindex {ifindex})",
        )

    def xdp_query(self, ifindex: int) -> XdpQuery:
        opts = XdpQueryOpts(sz=ctypes.sizeof(XdpQueryOpts))
        self._check(self.lib.bpf_xdp_query(ifindex, 0, ctypes.byref(opts)), f"bpf_xdp_query(ifindex {ifindex})")
        return XdpQuery(opts.prog_id, opts.drv_prog_id, opts.skb_prog_id, opts.hw_prog_id, opts.attach_mode)

    # -- maps ----------------------------------------------------------------

    def map_lookup(self, fd: int, key: ctypes.Array | ctypes.Structure | ctypes._SimpleCData,  # type: ignore[type-arg]
                   value: ctypes.Array | ctypes.Structure | ctypes._SimpleCData) -> bool:  # type: ignore[type-arg]
        ret = self.lib.bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value))
        if ret == -errno_mod.ENOENT:
            return False
        self._check(ret, "bpf_map_lookup_elem")
        return True

    def map_update(self, fd: int, key: object, value: object, flags: int = BPF_ANY) -> None:
        self._check(
            self.lib.bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value), flags),  # type: ignore[arg-type]
            "bpf_map_update_elem",
        )

    def queue_push(self, fd: int, value: ctypes.Structure | ctypes._SimpleCData) -> None:
        """Push onto a BPF_MAP_TYPE_QUEUE (an update with no key)."""
        self._check(self.lib.bpf_map_update_elem(fd, None, ctypes.byref(value), 0), "bpf_map_update_elem (queue push)")

    def map_delete(self, fd: int, key: object) -> bool:
        ret = self.lib.bpf_map_delete_elem(fd, ctypes.byref(key))  # type: ignore[arg-type]
        if ret == -errno_mod.ENOENT:
            return False
        self._check(ret, "bpf_map_delete_elem")
        return True

    def map_lookup_and_delete(self, fd: int, key: object, value: object) -> bool:
        """Read and remove one entry in one step (per-CPU hash: 5.14+)."""
        ret = self.lib.bpf_map_lookup_and_delete_elem(fd, ctypes.byref(key), ctypes.byref(value))  # type: ignore[arg-type]
        if ret == -errno_mod.ENOENT:
            return False
        self._check(ret, "bpf_map_lookup_and_delete_elem")
        return True

    def map_next_key(self, fd: int, key: object | None, next_key: object) -> bool:
        kp = ctypes.byref(key) if key is not None else None  # type: ignore[arg-type]
        ret = self.lib.bpf_map_get_next_key(fd, kp, ctypes.byref(next_key))  # type: ignore[arg-type]
        if ret == -errno_mod.ENOENT:
            return False
        self._check(ret, "bpf_map_get_next_key")
        return True

    def map_lookup_batch(self, fd: int, in_batch: object | None, out_batch: object, keys: object,
                         values: object, count: int) -> tuple[int, bool]:
        """One batch; returns (entries read, more entries remain)."""
        n = ctypes.c_uint32(count)
        opts = BatchOpts(sz=ctypes.sizeof(BatchOpts))
        ret = self.lib.bpf_map_lookup_batch(
            fd,
            ctypes.byref(in_batch) if in_batch is not None else None,  # type: ignore[arg-type]
            ctypes.byref(out_batch),  # type: ignore[arg-type]
            ctypes.byref(keys), ctypes.byref(values),  # type: ignore[arg-type]
            ctypes.byref(n), ctypes.byref(opts),
        )
        if ret == -errno_mod.ENOENT:
            return n.value, False
        self._check(ret, "bpf_map_lookup_batch")
        return n.value, True

    def map_update_batch(self, fd: int, keys: bytes, values: bytes, count: int) -> None:
        """bpf_map_update_batch of count packed keys and values (all or an error)."""
        kb = ctypes.create_string_buffer(keys, len(keys))
        vb = ctypes.create_string_buffer(values, len(values))
        n = ctypes.c_uint32(count)
        opts = BatchOpts(sz=ctypes.sizeof(BatchOpts))
        self._check(self.lib.bpf_map_update_batch(fd, kb, vb, ctypes.byref(n), ctypes.byref(opts)),
                    "bpf_map_update_batch")
        if n.value != count:
            raise OSError(errno_mod.EIO, f"bpf_map_update_batch: {n.value}/{count} written")

    # -- programs ------------------------------------------------------------

    def test_run(self, prog_fd: int, data: bytes, ctx: bytes | None = None, repeat: int = 1,
                 data_out_size: int | None = None) -> tuple[int, bytes, int, bytes]:
        """BPF_PROG_TEST_RUN: returns (retval, data_out, duration_ns, ctx_out)."""
        din = ctypes.create_string_buffer(data, len(data))
        out_size = data_out_size if data_out_size is not None else len(data) + 512
        dout = ctypes.create_string_buffer(out_size)
        opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts))
        opts.data_in = ctypes.cast(din, ctypes.c_void_p)
        opts.data_size_in = len(data)
        opts.data_out = ctypes.cast(dout, ctypes.c_void_p)
        opts.data_size_out = out_size
        opts.repeat = repeat
        cin = cout = None
        if ctx is not None:
            cin = ctypes.create_string_buffer(ctx, len(ctx))
            cout = ctypes.create_string_buffer(len(ctx))
            opts.ctx_in = ctypes.cast(cin, ctypes.c_void_p)
            opts.ctx_size_in = len(ctx)
            opts.ctx_out = ctypes.cast(cout, ctypes.c_void_p)
            opts.ctx_size_out = len(ctx)
        self._check(self.lib.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "bpf_prog_test_run")
        ctx_out = cout.raw[: opts.ctx_size_out] if cout is not None else b""
        return opts.retval, dout.raw[: opts.data_size_out], opts.duration, ctx_out

    def prog_info(self, prog_fd: int) -> ProgInfo:
        buf = ctypes.create_string_buffer(_PROG_INFO_SIZE)
        n = ctypes.c_uint32(_PROG_INFO_SIZE)
        self._check(self.lib.bpf_obj_get_info_by_fd(prog_fd, buf, ctypes.byref(n)), "bpf_obj_get_info_by_fd")
        raw = buf.raw

        def u64(off: int) -> int:
            return int.from_bytes(raw[off:off + 8], "little")

        return ProgInfo(
            id=int.from_bytes(raw[_PROG_INFO_ID:_PROG_INFO_ID + 4], "little"),
            name=raw[_PROG_INFO_NAME:_PROG_INFO_NAME + 16].split(b"\0", 1)[0].decode(),
            run_time_ns=u64(_PROG_INFO_RUN_TIME_NS),
            run_cnt=u64(_PROG_INFO_RUN_CNT),
            recursion_misses=u64(_PROG_INFO_RECURSION_MISSES),
        )

    # -- ring buffers ----------------------------------------------------------

    def ringbuf_new(self, map_fd: int, callback: ctypes._CFuncPtr) -> int:  # type: ignore[name-defined]
        """The caller keeps `callback` alive as long as the ring buffer."""
        return self._check_ptr(self.lib.ring_buffer__new(map_fd, callback, None, None), "ring_buffer__new")

    def ringbuf_poll(self, rb: int, timeout_ms: int) -> int:
        ret = self.lib.ring_buffer__poll(rb, timeout_ms)
        if ret == -errno_mod.EINTR:
            return 0
        return self._check(ret, "ring_buffer__poll")

    def ringbuf_free(self, rb: int) -> None:
        self.lib.ring_buffer__free(rb)

    def obj_get(self, path: str) -> int:
        """fd of a pinned BPF object (bpffs path)."""
        return self._check(self.lib.bpf_obj_get(path.encode()), f"bpf_obj_get({path})")

    def prog_fd_by_id(self, prog_id: int) -> int:
        return self._check(self.lib.bpf_prog_get_fd_by_id(prog_id), f"bpf_prog_get_fd_by_id({prog_id})")

    def enable_stats(self) -> int:
        """fd that keeps kernel.bpf_stats_enabled on while open."""
        return self._check(self.lib.bpf_enable_stats(BPF_STATS_RUN_TIME), "bpf_enable_stats")


_instance: list[Libbpf] = []
_instance_lock = threading.Lock()


def libbpf() -> Libbpf:
    """The process-wide binding (libbpf's print callback is process-global)."""
    with _instance_lock:
        if not _instance:
            _instance.append(Libbpf())
        return _instance[0]

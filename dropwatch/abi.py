"""Python mirror of bpf/dropwatch.h: the metadata record and map keys/values.

bpf/dropwatch.h is the definition; tests/bpf/test_abi.py checks every struct
here against the BTF of the compiled objects (size and each field's offset),
and every constant against the header text.
"""

from __future__ import annotations

import ctypes
import enum

DW_META_MAGIC = 0xD70B
DW_META_VERSION = 1
DW_META_MAX = 252

DW_GENS = 2
DW_FD_V4_SRC, DW_FD_V4_DST, DW_FD_V6_SRC, DW_FD_V6_DST = 0, 1, 2, 3
DW_FD_COUNT = 4
DW_MAX_CANDS = 8
DW_CAND_NEEDS_PORT = 0x01
DW_MAX_LABELS = 16384
DW_MAX_PREFIXES = 1 << 20
DW_MAX_PAIRS = 1 << 16
DW_MAX_DROP_KEYS = 65536
DW_NO_SLOT = 0xFFFFFFFF
DW_LPM_CHUNK = 0x80000000
DW_LPM_LANES = 0x40000000
DW_LPM_LANES_MAX = 4
DW_LPM4_PIVOTS = 3
DW_LPM4_SLOT_CHUNK = 0x8000
DW_LPM4_EXACT = 0x8000
DW_LPM4_TREE = 0x80000000
DW_BMP_SKIP_MIN = 49152
DW_LPM4_TREE_MIN = 64
DW_LPM4_TREE_LEVELS = 3
DW_LPM6_LANES = 3
DW_LPM6_SLOT_PTR = 1 << 63
DW_LPM6_PIVOTS = 3
DW_LPM6_SLOT_TREE = 1 << 62
DW_LPM6_SLOT_PACKED = 1 << 61
DW_LPM6_TREE_MIN = 16
DW_LPM6_PAIRS_TREE_MIN = 64
DW_LPM6_TREE_LEVELS = 8
DW_LPM6_SMALL_SHIFT = 26
DW_LPM6_SMALL_OFF = 0x03FFFFFF
DW_LPM6_SMALL_MAX = 16
DW_PRIO_NONE = 0x7FFFFFFF
DW_ANS_EVAL = 1 << 63
DW_LPM4_SLOTS = DW_GENS * 2 * 65536
DW_LPM6_SLOTS = DW_GENS * 2 * 65536
DW_LPM4_ENTRIES = 1 << 22
DW_LPM6_ENTRIES = 1 << 21
DW_LPM_BMP_LINES = DW_GENS * 2 * 2 * 128
DW_MAX_RESULTS = 65536
DW_LPM4_STEPS = 16
DW_LPM6_STEPS = 24
DW_SIDE_COUNT = 4
# Cells of one CPU's stripe of dw_pkt_counts ([label_id][side]).
DW_PKT_CELLS = DW_MAX_LABELS * DW_SIDE_COUNT
DW_POP_NONE = 0
DW_POP_UNKNOWN = 0xFFFF
DW_MAX_POPS = 4096
DW_MAX_POP_PREFIXES = 65536
DW_MAX_UDP_ENCAPS = 8
DW_FLOW_ENTRIES = 65536
DW_FLOW_HAS_PORTS = 0x01
DW_FLOW_POP_AMBIGUOUS = 0x01
DW_DK_META_CORRUPT = 0x01


class EncapType(enum.IntEnum):
    NONE = 0
    VXLAN = 1
    GUE = 2
    FOU = 3
    IPIP = 4
    IP6IP6 = 5
    GRE = 6


class FlowMode(enum.IntEnum):
    OFF = 0
    ENCAP = 1
    ALL = 2


class Side(enum.IntEnum):
    UNKNOWN = 0
    EYEBALL = 1
    ORIGIN = 2

    @property
    def text(self) -> str:
        return self.name.lower()


class Source(enum.IntEnum):
    NONE = 0
    META = 1
    CORRUPT = 2
    FLOW = 3


class Stat(enum.IntEnum):
    XDP_PACKETS = 0
    XDP_META_WRITTEN = 1
    XDP_META_FAILED = 2
    XDP_FOREIGN_META = 3
    XDP_PARSE_STOP = 4
    XDP_LABEL_RANGE = 5
    XDP_ENCAP = 6
    XDP_FLOW_FAIL = 7
    DROPS = 8
    DROPS_LABELED = 9
    CORRUPT_RECORDS = 10
    MAP_FULL = 11
    FOREIGN_META = 12
    META_BAD_BOUNDS = 13
    SAMPLES = 14
    SAMPLE_RATE_LIMITED = 15
    SAMPLE_RING_FULL = 16
    FLOW_HIT = 17
    FLOW_STALE = 18
    FLOW_MISS = 19
    XDP_EVAL = 20


DW_STAT_COUNT = 24
DW_SAMPLE_BYTES = 128
DW_SAMPLE_FROM_MAC = 0x01
DW_SAMPLE_FROM_NET = 0x02

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class Meta(ctypes.Structure):
    _fields_ = [
        ("magic", u16), ("version", u8), ("rec_len", u8), ("label_id", u32),
        ("pop_id", u16), ("side", u8), ("flags", u8), ("check", u16), ("tail_pad", u16),
    ]


class Line32(ctypes.Structure):
    _fields_ = [("v", u32 * 16)]


class Lpm4Slot(ctypes.Structure):
    _fields_ = [("w0", u64), ("w1", u64)]


class Lpm6Slot(ctypes.Structure):
    _fields_ = [("w", u64 * 4)]


class Line128(ctypes.Structure):
    _fields_ = [("v", u64 * 16)]


class Cand(ctypes.Structure):
    _fields_ = [
        ("label_id", u32), ("prio", u32), ("dport_lo", u16), ("dport_hi", u16),
        ("proto", u8), ("side", u8), ("flags", u8), ("pad", u8),
    ]


class CandList(ctypes.Structure):
    _fields_ = [("prefix_id", u32), ("n", u8), ("pad", u8 * 3), ("c", Cand * DW_MAX_CANDS)]


class LpmRes(ctypes.Structure):
    _fields_ = [("prefix_id", u32), ("n", u32), ("c0", Cand)]


class LpmAns(ctypes.Structure):
    _fields_ = [("lkey", u64), ("skey", u64)]


class PairKey(ctypes.Structure):
    _fields_ = [("src_prefix_id", u32), ("dst_prefix_id", u32), ("gen", u32)]


class PopKey(ctypes.Structure):
    _fields_ = [("prefixlen", u32), ("gen", u8), ("family", u8), ("addr", u8 * 16)]


class UdpEncapEntry(ctypes.Structure):
    _fields_ = [("port", u16), ("type", u8), ("ipproto", u8)]


class FlowKey(ctypes.Structure):
    _fields_ = [
        ("saddr", u8 * 16), ("daddr", u8 * 16), ("sport", u16), ("dport", u16),
        ("proto", u8), ("family", u8), ("flags", u8), ("pad", u8),
    ]


class FlowVal(ctypes.Structure):
    _fields_ = [
        ("ts_ns", u64), ("label_id", u32), ("epoch", u32), ("pop_id", u16), ("side", u8),
        ("flags", u8), ("pad", u32),
    ]


class FlowCfg(ctypes.Structure):
    _fields_ = [("mode", u32), ("epoch", u32), ("max_age_ns", u64)]


class Ruleset(ctypes.Structure):
    _fields_ = [
        ("has_pairs", u32), ("default_side", u32), ("epoch", u32), ("flow_mode", u32),
        ("has_pops", u32), ("flow_max_age_ms", u32), ("n_udp_encaps", u32), ("bmp_skip", u32),
        ("udp_encaps", UdpEncapEntry * DW_MAX_UDP_ENCAPS),
        ("wildcard", CandList),
    ]


class GenState(ctypes.Structure):
    _fields_ = [("rs", Ruleset)]


class LabelerState(ctypes.Structure):
    _fields_ = [("active_gen", u32), ("pad", u32), ("gen", GenState * DW_GENS)]


class PktVal(ctypes.Structure):
    _fields_ = [("packets", u64), ("bytes", u64)]


class PopPktKey(ctypes.Structure):
    _fields_ = [("label_id", u32), ("pop_id", u16), ("side", u8), ("pad", u8)]


class DropKey(ctypes.Structure):
    _fields_ = [
        ("location", u64), ("label_id", u32), ("reason", u32), ("ifindex", u32), ("netns_ino", u32),
        ("pop_id", u16), ("side", u8), ("source", u8), ("flags", u8), ("pad", u8 * 3),
    ]


class DropCache(ctypes.Structure):
    _fields_ = [("key", DropKey), ("slot", u32), ("epoch", u32), ("valid", u32), ("pad", u32)]


class DropCtl(ctypes.Structure):
    _fields_ = [("next_fresh", u64), ("epoch", u32), ("pad", u32)]


class Sample(ctypes.Structure):
    _fields_ = [
        ("ts_ns", u64), ("location", u64), ("label_id", u32), ("reason", u32), ("ifindex", u32),
        ("netns_ino", u32), ("pkt_len", u32), ("captured", u16), ("pop_id", u16), ("protocol", u16),
        ("side", u8), ("source", u8), ("flags", u8), ("pad", u8 * 3), ("data", u8 * DW_SAMPLE_BYTES),
    ]


class Bucket(ctypes.Structure):
    _fields_ = [("tokens", u64), ("last_ns", u64)]


# C struct name -> mirror, for the ABI test.
MIRRORS: dict[str, type[ctypes.Structure]] = {
    "dw_meta": Meta,
    "dw_line32": Line32,
    "dw_line128": Line128,
    "dw_lpm4_slot": Lpm4Slot,
    "dw_lpm6_slot": Lpm6Slot,
    "dw_cand": Cand,
    "dw_cand_list": CandList,
    "dw_lpm_res": LpmRes,
    "dw_lpm_ans": LpmAns,
    "dw_pair_key": PairKey,
    "dw_ruleset": Ruleset,
    "dw_gen_state": GenState,
    "dw_labeler_state": LabelerState,
    "dw_pkt_val": PktVal,
    "dw_drop_key": DropKey,
    "dw_drop_cache": DropCache,
    "dw_drop_ctl": DropCtl,
    "dw_pop_key": PopKey,
    "dw_udp_encap": UdpEncapEntry,
    "dw_flow_key": FlowKey,
    "dw_flow_val": FlowVal,
    "dw_flow_cfg": FlowCfg,
    "dw_pop_pkt_key": PopPktKey,
    "dw_sample": Sample,
    "dw_bucket": Bucket,
}


def _mix32(x: int) -> int:
    m = 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & m
    x ^= x >> 15
    x = (x * 0x846CA68B) & m
    x ^= x >> 16
    return x


def _mix(w0: int, w1: int, w2: int, key: int) -> int:
    h = _mix32((key ^ 0x2545F491) & 0xFFFFFFFF)
    h = _mix32(h ^ w0)
    h = _mix32(h ^ w1)
    h = _mix32(h ^ w2)
    return (h ^ (h >> 16)) & 0xFFFF


def meta_h1(key: int) -> int:
    """dw_meta_head() over the labeler's constant first word (magic, version,
    rec_len) and the key: the labeler's dw_meta_h1, set by the loader."""
    head = bytes(Meta(magic=DW_META_MAGIC, version=DW_META_VERSION, rec_len=ctypes.sizeof(Meta)))[:4]
    return _mix32(_mix32((key ^ 0x2545F491) & 0xFFFFFFFF) ^ int.from_bytes(head, "little"))


def meta_check_table(key: int) -> bytes:
    """dw_metachk's contents for this key: the check of the record an
    untunnelled packet gets, for every (label_id, side), at label_id *
    DW_SIDE_COUNT + side (u16 little-endian). The same mix as
    meta_check(), vectorised (65,536 records)."""
    import numpy as np

    def mix32(x: "np.ndarray") -> "np.ndarray":
        x = x ^ (x >> np.uint32(16))
        x = x * np.uint32(0x7FEB352D)
        x = x ^ (x >> np.uint32(15))
        x = x * np.uint32(0x846CA68B)
        return x ^ (x >> np.uint32(16))

    n = DW_MAX_LABELS * DW_SIDE_COUNT
    idx = np.arange(n, dtype=np.uint32)
    with np.errstate(over="ignore"):
        h = mix32(np.full(n, meta_h1(key), dtype=np.uint32) ^ (idx // np.uint32(DW_SIDE_COUNT)))
        h = mix32(h ^ ((idx % np.uint32(DW_SIDE_COUNT)) << np.uint32(16)))
    return ((h ^ (h >> np.uint32(16))) & np.uint32(0xFFFF)).astype("<u2").tobytes()


def meta_check(rec: Meta, key: int) -> int:
    """dw_meta_mix() over the first 12 bytes of a record (see dropwatch.h)."""
    raw = bytes(rec)
    w = [int.from_bytes(raw[i:i + 4], "little") for i in (0, 4, 8)]
    return _mix(w[0], w[1], w[2], key)


def make_meta(label_id: int, side: int, key: int, pop_id: int = 0) -> Meta:
    rec = Meta(magic=DW_META_MAGIC, version=DW_META_VERSION, rec_len=ctypes.sizeof(Meta),
               label_id=label_id, pop_id=pop_id, side=side)
    rec.check = meta_check(rec, key)
    return rec


def decode_meta(raw: bytes, key: int) -> tuple[Source, Meta | None]:
    """What the drop reader concludes from the bytes at the start of the area."""
    if len(raw) < ctypes.sizeof(Meta):
        return Source.NONE, None
    rec = Meta.from_buffer_copy(raw[: ctypes.sizeof(Meta)])
    if rec.magic != DW_META_MAGIC:
        return Source.NONE, None
    if (rec.version != DW_META_VERSION or rec.rec_len != ctypes.sizeof(Meta)
            or rec.check != meta_check(rec, key) or rec.label_id >= DW_MAX_LABELS
            or rec.side >= DW_SIDE_COUNT):
        return Source.CORRUPT, rec
    return Source.META, rec

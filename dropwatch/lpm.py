"""Longest-prefix-match tables for the XDP labeler: built here from a prefix
set, searched by lpm4()/lpm6() in bpf/labeler.bpf.c (layout and encoding in
bpf/dropwatch.h, "rule maps").

DXR-style: a direct table on the top 16 address bits, whose entry is the
answer for that /16 or leads to a chunk of it:

* IPv4: a 16-byte entry per /16 holding its prefixes longer than /16
  themselves and its own result, up to ``LANES_MAX`` of them (most /16s),
  longest first, as 16-bit (address with a length marker, result) lanes
  that the labeler tests all at once, without a branch. A lookup reads
  that one entry.
* IPv6 small chunks: at most ``SMALL6_MAX`` sorted ranges keyed by the top
  64 bits, one u64 each, searched in a fixed number of branch-free steps.
* Chunks: sorted, non-overlapping ranges covering the /16, each already
  resolved to the longest matching prefix's result. IPv4: up to
  ``TREE4_MIN`` ranges binary-searched inside the segment that the pivots
  in the direct entry pick, more as a static search tree of 64-byte nodes
  of 16 keys over leaf lines of 16 ranges. IPv6 (keyed
  by the top 64 bits): more than ``TREE_MIN`` ranges (those a small chunk
  cannot hold) as a static search tree of 64-byte nodes of 8 keys over
  leaf lines of 8 packed ranges; where a range points to a /64's chunk, up
  to ``TREE_PAIRS_MIN`` ranges binary-searched inside the quarter that the
  pivots in the entry pick, more as a tree whose leaf lines hold 4 (key,
  value) pairs; inside a
  /64 that holds prefixes longer than /64, a second chunk keyed by the
  low 64 bits, binary-searched.

A lookup is one direct-table read (IPv4) or one plus one small search
(IPv6), or at most one binary search or tree walk (IPv4, levels <= 3),
one binary search or tree walk (IPv6, levels <= log8 of the /16's leaf
lines: its ranges / 8, or / 4 where a range points to a /64's chunk) and
one binary search (IPv6 inside such a /64), of bounded depth whatever the
prefix lengths. Small IPv6 chunks are packed into
64-byte lines (one of more than 8 ranges into one 128-byte value) so that a
lookup touches one cache line of them.

``lookup()`` is the same walk in Python, step for step, for tests.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from . import abi

CHUNK = abi.DW_LPM_CHUNK
LANES = abi.DW_LPM_LANES
LANES_MAX = abi.DW_LPM_LANES_MAX
PIVOTS = abi.DW_LPM4_PIVOTS
TREE4 = abi.DW_LPM4_TREE
SLOT4_CHUNK = abi.DW_LPM4_SLOT_CHUNK
EXACT4 = abi.DW_LPM4_EXACT  # a lane's result: the lane is a /32
TREE4_MIN = abi.DW_LPM4_TREE_MIN
TREE4_LEVELS = abi.DW_LPM4_TREE_LEVELS
TREE4_PAD = 1 << 16  # an IPv4 tree key above every address's low 16 bits
LANES6 = abi.DW_LPM6_LANES
PIVOTS6 = abi.DW_LPM6_PIVOTS
SLOT6_TREE = abi.DW_LPM6_SLOT_TREE
SLOT6_PACKED = abi.DW_LPM6_SLOT_PACKED
TREE_MIN = abi.DW_LPM6_TREE_MIN
TREE_PAIRS_MIN = abi.DW_LPM6_PAIRS_TREE_MIN
TREE_LEVELS = abi.DW_LPM6_TREE_LEVELS
TREE_PAD = 1 << 48  # a tree key above every address's bits 16..63
SLOT6_PTR = abi.DW_LPM6_SLOT_PTR
M48 = (1 << 48) - 1
SMALL6_SHIFT = abi.DW_LPM6_SMALL_SHIFT
SMALL6_OFF = abi.DW_LPM6_SMALL_OFF
SMALL6_MAX = abi.DW_LPM6_SMALL_MAX
SMALL6_STEPS = SMALL6_MAX.bit_length() - 1  # the BPF search's fixed trip count
L1_SIZE = 1 << 16
MAX_V6_CHUNK = 1 << abi.DW_LPM6_STEPS
LINE = 64  # bytes
SLOT4 = 2  # u64 words of an IPv4 direct entry (struct dw_lpm4_slot: w0, w1)
SLOT6 = 4  # u64 words of an IPv6 direct entry (struct dw_lpm6_slot: w[4])


class LpmCapacityError(ValueError):
    """The prefix set does not fit the tables' encoding."""


@dataclass
class LpmTables:
    """One generation's tables, with chunk offsets relative to the start of
    this generation's part of each table (the loader relocates)."""

    # IPv4 direct entries, SLOT4 words each, at (dir << 16 | top16) * SLOT4.
    v4_slots: array = field(default_factory=lambda: array("Q", bytes(8 * SLOT4 * 2 * L1_SIZE)))
    v4_chunks: list[int] = field(default_factory=list)  # indexes of the entries that point to a chunk
    v4_rng: array = field(default_factory=lambda: array("I"))  # chunks: their ranges (n is in the direct entry)
    # IPv6 direct entries, SLOT6 words each, at (dir << 16 | top16) * SLOT6.
    v6_slots: array = field(default_factory=lambda: array("Q", bytes(8 * SLOT6 * 2 * L1_SIZE)))
    v6_ptr_slots: list[int] = field(default_factory=list)  # entries holding a small chunk or chunk pointer
    # 64-byte lines of small chunks (u64 ranges): the loader puts them at the
    # start of the gen's part of the IPv6 range array, its chunks after them.
    v6_small: array = field(default_factory=lambda: array("Q"))
    v6_rng: array = field(default_factory=lambda: array("Q"))  # chunks: (key, value) pairs
    v6_ptrs: list[int] = field(default_factory=list)  # u64 indexes of values that point to a chunk
    # Bit per /16 with a non-zero direct entry: word ((v6 * 2 + dir) << 10) | top16 >> 6.
    bmp: array = field(default_factory=lambda: array("Q", bytes(8 * 4 * 1024)))
    # Bit dir: that IPv4 direction's bitmap is not read (struct dw_ruleset's bmp_skip).
    bmp_skip: int = 0

    def nbytes(self) -> int:
        """Memory the set needs in one generation (direct tables included)."""
        return sum(a.itemsize * len(a) for a in (self.v4_slots, self.v4_rng, self.v6_slots, self.v6_small,
                                                 self.v6_rng, self.bmp))

    def v4_used(self) -> int:
        """IPv4 direct entries that are not empty."""
        return _used(self.v4_slots, SLOT4)

    def v6_used(self) -> int:
        """IPv6 direct entries that are not empty."""
        return _used(self.v6_slots, SLOT6)

    def v6_entries(self) -> int:
        """16-byte entries of the IPv6 range array: small chunks and chunks."""
        return (len(self.v6_small) + len(self.v6_rng)) // 2


def _used(slots: array, words: int) -> int:
    return sum(1 for i in range(0, len(slots), words) if any(slots[i:i + words]))


class _Lines:
    """First-fit-decreasing placement of small IPv6 chunks into at most
    ``cap`` 64-byte lines, so that no item crosses a line (or, for items of more
    than one line, a 128-byte value): its lookup touches one line, one map
    value. place() says None when no line has room."""

    def __init__(self, cap: int) -> None:
        self.n = 0  # lines used
        self.cap = cap
        self.free: dict[int, list[int]] = defaultdict(list)  # free bytes at a line's end -> lines

    def place(self, size: int) -> int | None:
        """Byte offset of a new item of ``size`` bytes (even; <= 128)."""
        if size > LINE:  # a whole 128-byte value: an even line and the next
            pad = self.n % 2
            if self.n + pad + 2 > self.cap:
                return None
            if pad:
                self.free[LINE].append(self.n)
            line = self.n + pad
            self.n = line + 2
            if 2 * LINE - size:
                self.free[2 * LINE - size].append(line + 1)
            return line * LINE
        for f in range(size, LINE + 1):
            if self.free[f]:
                line = self.free[f].pop()
                break
        else:
            if self.n >= self.cap:
                return None
            line, f = self.n, LINE
            self.n += 1
        if f - size:
            self.free[f - size].append(line)
        return line * LINE + LINE - f


Interval = tuple[int, int, int]  # (first, last, result), nested or disjoint


def ranges(items: list[Interval], base: int, width: int) -> list[tuple[int, int]]:
    """Nested-or-disjoint intervals inside [0, 2^width) -> the sorted range
    starts with the innermost (longest prefix's) result, ``base`` where none
    covers; equal neighbours merged. The first range starts at 0."""
    top = (1 << width) - 1
    out: list[tuple[int, int]] = [(0, base)]
    stack: list[tuple[int, int]] = [(top, base)]

    def put(start: int, res: int) -> None:
        if out[-1][0] == start:
            out[-1] = (start, res)
        else:
            out.append((start, res))

    # Outer (shorter) prefixes first at the same start.
    for first, last, res in sorted(items, key=lambda t: (t[0], -t[1])):
        while stack[-1][0] < first:
            end, _ = stack.pop()
            put(end + 1, stack[-1][1])
        put(first, res)
        stack.append((last, res))
    while len(stack) > 1:
        end, _ = stack.pop()
        if end < top:
            put(end + 1, stack[-1][1])
    merged = [out[0]]
    for start, res in out[1:]:
        if res != merged[-1][1]:
            merged.append((start, res))
    return merged


def _paint_l1(l1: array, dir_: int, short: list[tuple[int, int, int]], width: int) -> None:
    """Prefixes of /16 or shorter fill their /16 blocks, shorter first so
    that longer ones overwrite them."""
    for plen, addr, res in sorted(short):
        first = (dir_ << 16) | (addr >> (width - 16))
        n = 1 << (16 - plen)
        l1[first:first + n] = array("I", [res]) * n


def _lanes(items: list[tuple[int, int, int]], base: int, width: int = 32) -> list[tuple[int, int, int]]:
    """(plen, address bits below the /16's 16, result) of one /16's prefixes
    longer than /16 (IPv4: width 32; IPv6 up to /64: width 64, the top 64
    bits) -> its lanes, longest first, without the prefixes that change no
    answer (same result as the prefix or base they sit in). Prefixes nest
    or are disjoint, so one pass in address order with a stack of the
    enclosing kept ones finds each one's container."""
    out: list[tuple[int, int, int]] = []
    stack: list[tuple[int, int]] = []  # (last address, result) of the kept prefixes enclosing this one
    for plen, low, res in sorted(items, key=lambda t: (t[1], t[0])):  # by start, the shorter first
        last = low | ((1 << (width - plen)) - 1)
        while stack and stack[-1][0] < low:
            stack.pop()
        if res == (stack[-1][1] if stack else base):
            continue
        stack.append((last, res))
        out.append((plen, low, res))
    return sorted(out, key=lambda t: -t[0])


def _bmp_set(t: LpmTables, v6: int, dir_: int, block: int) -> None:
    """The bitmap bit of a /16 whose direct entry is not empty."""
    i = (((v6 << 1) | dir_) << 16) | block
    t.bmp[i >> 6] |= 1 << (i & 63)


def _build_v4(t: LpmTables, dir_: int, pfx: list[tuple[int, int, int]]) -> None:
    own = array("I", bytes(4 * L1_SIZE))  # each /16's result from prefixes of /16 or shorter
    _paint_l1(own, 0, [x for x in pfx if x[0] <= 16], 32)
    slots = t.v4_slots
    blocks: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for block, b in enumerate(own):
        if not b:
            continue
        entry = _lanes4([(16, 0, b)])  # one lane of length 0: it always matches
        if entry is None:
            blocks[block] = []  # too large for a lane: a chunk of one range
        else:
            i = (dir_ << 16) | block
            slots[i * SLOT4:(i + 1) * SLOT4] = array("Q", entry)
            _bmp_set(t, 0, dir_, block)
    for plen, addr, res in pfx:
        if plen > 16:
            blocks[addr >> 16].append((plen, addr & 0xFFFF, res))
    for block in sorted(blocks):
        i = (dir_ << 16) | block
        base = own[block]
        lanes = _lanes(blocks[block], base)
        if not lanes and base < EXACT4:
            continue  # the /16's own result already is the answer
        _bmp_set(t, 0, dir_, block)
        # The /16's own result is a lane of length 0 (it always matches).
        entry = _lanes4(lanes + [(16, 0, base)] if base else lanes)
        if entry is not None:
            slots[i * SLOT4:(i + 1) * SLOT4] = array("Q", entry)
            continue
        rs = ranges([(low, low + (1 << (32 - p)) - 1, r) for p, low, r in blocks[block]], base, 16)
        n = len(rs)
        if n > TREE4_MIN:
            off, levels = _v4_tree(t, rs)
            slots[i * SLOT4:(i + 1) * SLOT4] = array("Q", [(n - 1) << 48 | (TREE4 | off) << 16,
                                                           levels << 16 | SLOT4_CHUNK])
            t.v4_chunks.append(i)
            continue
        # A chunk that fits a 64-byte line starts one if it would cross one:
        # then its search misses the cache once.
        if n <= LINE // 4 and len(t.v4_rng) % (LINE // 4) + n > LINE // 4:
            t.v4_rng.extend([0] * (-len(t.v4_rng) % (LINE // 4)))
        # The pivots, lanes 1-3 of w1: the starts of the ranges that cut the
        # chunk into PIVOTS + 1 segments.
        w1 = SLOT4_CHUNK
        for j in range(1, PIVOTS + 1):
            w1 |= rs[j * n // (PIVOTS + 1)][0] << (16 * j)
        slots[i * SLOT4:(i + 1) * SLOT4] = array("Q", [(n - 1) << 48 | len(t.v4_rng) << 16, w1])
        t.v4_chunks.append(i)
        t.v4_rng.extend((start << 16) | res for start, res in rs)


def _lanes4(lanes: list[tuple[int, int, int]]) -> list[int] | None:
    """(plen, address bits below the /16's 16, result) lanes, longest first
    -> an IPv4 direct entry's words [w0, w1] (layout in dropwatch.h), or
    None if they do not fit: more than LANES_MAX, a result of EXACT4 or
    more, or a /32 of .0 with result 0 in lane 0 (a chunk's entry)."""
    if (len(lanes) > LANES_MAX or any(res >= EXACT4 for _p, _low, res in lanes)
            or lanes[0] == (32, 0, 0)):
        return None
    # Lanes past k repeat lane 0: they match only where it does.
    lanes = lanes + [lanes[0]] * (LANES_MAX - len(lanes))
    w0 = w1 = 0
    for n, (plen, low, res) in enumerate(lanes):
        if plen == 32:  # no room for a length marker: the result says so
            w0 |= low << (16 * n)
            w1 |= (res | EXACT4) << (16 * n)
        else:
            w0 |= (low | 1 << (31 - plen)) << (16 * n)  # the length marker
            w1 |= res << (16 * n)
    return [w0, w1]


def _v6_chunk(t: LpmTables, rs: list[tuple[int, int]]) -> int:
    if len(rs) > MAX_V6_CHUNK:
        raise LpmCapacityError(f"{len(rs)} IPv6 ranges under one /16; at most {MAX_V6_CHUNK}")
    off = len(t.v6_rng) // 2
    t.v6_rng.extend((len(rs), 0))
    for start, res in rs:
        if res & CHUNK:
            t.v6_ptrs.append(len(t.v6_rng) + 1)
        t.v6_rng.extend((start, res))
    return CHUNK | off


def _tree_index(leaves: int, fanout: int, first: Callable[[int], int], pad: int) -> tuple[list[int], int]:
    """A tree's index over ``leaves`` leaf lines (layout in dropwatch.h),
    top level first, and its number of levels: nodes of ``fanout`` keys,
    key c of node j of level l the first key of leaf line (j * fanout + c)
    * fanout^(l - 1), ``first(leaf)``, or ``pad`` past the last."""
    nodes: list[int] = []  # per level from 1 up: ceil(leaves / fanout^l)
    while (nodes[-1] if nodes else leaves) > 1:
        nodes.append(-(-leaves // fanout ** (len(nodes) + 1)))
    keys: list[int] = []
    for lvl in range(len(nodes), 0, -1):
        for j in range(nodes[lvl - 1]):
            for c in range(fanout):
                leaf = (j * fanout + c) * fanout ** (lvl - 1)
                keys.append(first(leaf) if leaf < leaves else pad)
    return keys, len(nodes)


def _v4_tree(t: LpmTables, rs: list[tuple[int, int]]) -> tuple[int, int]:
    """An IPv4 /16's ranges (start, result) as a search tree (layout in
    dropwatch.h) starting a 64-byte line of the range array: its entry
    offset and its number of index levels."""
    n = len(rs)
    t.v4_rng.extend([0] * (-len(t.v4_rng) % 16))
    off = len(t.v4_rng)
    keys, levels = _tree_index(-(-n // 16), 16, lambda leaf: rs[16 * leaf][0], TREE4_PAD)
    assert levels <= TREE4_LEVELS, "a /16 holds at most 2^16 ranges: 16^3 leaf lines"
    t.v4_rng.extend(keys)
    for i in range(-(-n // 16) * 16):
        start, res = rs[min(i, n - 1)]  # past n: the last range again
        t.v4_rng.append(start << 16 | res)
    return off, levels


def _v6_tree(t: LpmTables, rs: list[tuple[int, int]]) -> tuple[int, int, bool]:
    """A /16's ranges (start bits 16..63, value) as a search tree (layout in
    dropwatch.h) starting a 64-byte line of the range array: its entry
    offset, its number of index levels, and whether its leaf lines are
    packed (8 ranges of one u64 each: possible when no value points to a
    /64's chunk; half the leaf lines, so often a level less)."""
    n = len(rs)
    if n > MAX_V6_CHUNK:
        raise LpmCapacityError(f"{n} IPv6 ranges under one /16; at most {MAX_V6_CHUNK}")
    packed = not any(value & CHUNK for _start, value in rs)
    per_leaf = 8 if packed else 4
    t.v6_rng.extend([0] * (-len(t.v6_rng) % 8))
    off = len(t.v6_rng) // 2
    leaves = -(-n // per_leaf)
    keys, levels = _tree_index(leaves, 8, lambda leaf: rs[per_leaf * leaf][0], TREE_PAD)
    assert levels <= TREE_LEVELS, "MAX_V6_CHUNK ranges: at most 8^TREE_LEVELS leaf lines"
    t.v6_rng.extend(keys)
    if packed:  # past n, the last range again: counted, same result
        t.v6_rng.extend(rs[min(i, n - 1)][0] << 16 | rs[min(i, n - 1)][1] for i in range(leaves * 8))
        return off, levels, True
    for i in range(leaves * 4):
        start, value = rs[i] if i < n else (TREE_PAD, 0)
        if value & CHUNK:
            t.v6_ptrs.append(len(t.v6_rng) + 1)
        t.v6_rng.extend((start, value))
    return off, levels, False


def _build_v6(t: LpmTables, dir_: int, pfx: list[tuple[int, int, int]], lines: _Lines) -> None:
    own = array("I", bytes(4 * L1_SIZE))  # each /16's result from prefixes of /16 or shorter
    _paint_l1(own, 0, [x for x in pfx if x[0] <= 16], 128)
    for block, b in enumerate(own):
        if b:
            _slot6_lanes(t, (dir_ << 16) | block, [], b)
            _bmp_set(t, 1, dir_, block)
    mid: dict[int, list[Interval]] = defaultdict(list)  # /16 block -> intervals on the top 64 bits
    mid_lanes: dict[int, list[tuple[int, int, int]]] = defaultdict(list)  # /16 block -> (plen, top 64 bits, result)
    deep: dict[int, list[Interval]] = defaultdict(list)  # /64 -> intervals on the low 64 bits
    for plen, addr, res in pfx:
        if 16 < plen <= 64:
            first = addr >> 64
            mid[first >> 48].append((first, first + (1 << (64 - plen)) - 1, res))
            mid_lanes[first >> 48].append((plen, first, res))
        elif plen > 64:
            low = addr & ((1 << 64) - 1)
            deep[addr >> 64].append((low, low + (1 << (128 - plen)) - 1, res))
    for q in deep:
        mid.setdefault(q >> 48, [])
    deep_by_block: dict[int, list[int]] = defaultdict(list)
    for q in deep:
        deep_by_block[q >> 48].append(q)
    for block in sorted(mid):
        i = (dir_ << 16) | block
        base = own[block]
        if block not in deep_by_block:
            lanes = _lanes(mid_lanes[block], base, 64)
            if not lanes:
                continue  # the /16's own result already is the answer
            if len(lanes) <= LANES6:
                _slot6_lanes(t, i, lanes, base)
                _bmp_set(t, 1, dir_, block)
                continue
        # Relative to the block: a chunk's keys are whole top-64 values.
        rs = ranges([(f - (block << 48), last - (block << 48), r) for f, last, r in mid[block]], base, 48)
        starts = [s for s, _ in rs]
        extra: list[Interval] = []
        for q in sorted(deep_by_block.get(block, [])):
            # The /64's own fallback: the best prefix of /64 or shorter.
            fallback = rs[bisect_right(starts, q - (block << 48)) - 1][1]
            sub = _v6_chunk(t, ranges(deep[q], fallback, 64))
            extra.append((q - (block << 48), q - (block << 48), sub))
        if extra:
            rs = ranges([(f - (block << 48), last - (block << 48), r) for f, last, r in mid[block]] + extra, base, 48)
        # A chunk's pointer and lanes make an entry that is never empty.
        _bmp_set(t, 1, dir_, block)
        at = lines.place(8 * len(rs)) if len(rs) <= SMALL6_MAX and not extra else None
        if at is not None:
            w = at // 8
            if len(t.v6_small) < w + len(rs):
                t.v6_small.extend([0] * (-(-(w + len(rs)) // 8) * 8 - len(t.v6_small)))
            t.v6_small[w:w + len(rs)] = array("Q", [(start << 16) | res for start, res in rs])
            t.v6_slots[i * SLOT6:(i + 1) * SLOT6] = array("Q", [LANES | (len(rs) - 1) << SMALL6_SHIFT | w, 0, 0,
                                                              SLOT6_PTR])
        elif len(rs) > (TREE_PAIRS_MIN if extra else TREE_MIN):
            off, levels, packed = _v6_tree(t, rs)
            t.v6_slots[i * SLOT6:(i + 1) * SLOT6] = array("Q", [len(rs) << 32 | CHUNK | off, levels, 0,
                                                              SLOT6_PTR | SLOT6_TREE | (SLOT6_PACKED if packed else 0)])
        else:
            # n and the pivots: bits 16..63 of the starts of ranges j * n / 4.
            n = len(rs)
            e = _v6_chunk(t, [((block << 48) | s, r) for s, r in rs])
            p1, p2, p3 = (rs[j * n // (PIVOTS6 + 1)][0] for j in range(1, PIVOTS6 + 1))
            t.v6_slots[i * SLOT6:(i + 1) * SLOT6] = array("Q", [n << 32 | e, p1, p2, SLOT6_PTR | p3])
        t.v6_ptr_slots.append(i)


def _slot6_lanes(t: LpmTables, i: int, lanes: list[tuple[int, int, int]], base: int) -> None:
    """IPv6 direct entry i: up to LANES6 lanes (plen, top 64 bits, result),
    longest first, as (key bits 16..63 << 16 | result) words and, in word 3,
    each lane's shift (64 - plen) above the /16's own result; lanes past
    the prefixes repeat lane 0, and with no prefix every lane matches
    (shift 48) with the own result."""
    if not lanes:
        words, shifts = [base] * LANES6, [48] * LANES6
    else:
        lanes = lanes + [lanes[0]] * (LANES6 - len(lanes))
        words = [(top & ((1 << 48) - 1)) << 16 | res for _p, top, res in lanes]
        shifts = [64 - p for p, _top, _res in lanes]
    w3 = base
    for n, sh in enumerate(shifts):
        w3 |= sh << (16 + 8 * n)
    t.v6_slots[i * SLOT6:(i + 1) * SLOT6] = array("Q", words + [w3])


def build(prefixes: Iterable[tuple[int, int, int, int]]) -> LpmTables:
    """(fd, prefix length, address as an int, result index) -> tables.
    Result 0 is "no match", which a prefix may also resolve to."""
    by_fd: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for fd, plen, addr, res in prefixes:
        if not 0 <= res < abi.DW_MAX_RESULTS:
            raise LpmCapacityError(f"result index {res} outside 0..{abi.DW_MAX_RESULTS - 1}")
        by_fd[fd].append((plen, addr, res))
    t = LpmTables()
    for fd in (abi.DW_FD_V4_SRC, abi.DW_FD_V4_DST):
        if by_fd.get(fd):
            _build_v4(t, fd & 1, by_fd[fd])
    lines = _Lines(cap=SMALL6_OFF // 8)  # in the range array: as many as offsets reach
    for fd in (abi.DW_FD_V6_SRC, abi.DW_FD_V6_DST):
        if by_fd.get(fd):
            _build_v6(t, fd & 1, by_fd[fd], lines)
    for dir_ in (0, 1):
        used = sum(w.bit_count() for w in t.bmp[dir_ << 10:(dir_ + 1) << 10])
        if used >= abi.DW_BMP_SKIP_MIN:
            t.bmp_skip |= 1 << dir_
    # Whole lines: what the loader writes and counts (rule_map_entries).
    t.v4_rng.extend([0] * (-len(t.v4_rng) % (LINE // 4)))
    t.v6_rng.extend([0] * (-len(t.v6_rng) % (LINE // 8)))
    return t


# ---------------------------------------------------------------- the BPF walk, in Python

def _search(n: int, start_of: object, key: int, steps: int, reads: list[int] | None) -> int:
    """The BPF search: index of the last range whose start <= key. The
    answer is in [base, base + len); each step halves len (branch-free in
    BPF, so the number of steps depends on n only)."""
    base, length = 0, n
    for _ in range(steps):
        if length <= 1:
            break
        half = length >> 1
        if reads is not None:
            reads[0] += 1
        if start_of(base + half) <= key:  # type: ignore[operator]
            base += half
        length -= half
    return base


def _slot4(t: LpmTables, i: int, key: int) -> int:
    """lpm4()'s lanes: the first lane (longest prefix) whose address equals
    the key's above its length marker (a /32's: all of it), else 0."""
    w0, w1 = t.v4_slots[i * SLOT4:(i + 1) * SLOT4]
    for n in range(LANES_MAX):
        a, r = (w0 >> (16 * n)) & 0xFFFF, (w1 >> (16 * n)) & 0xFFFF
        mask = 0xFFFF if r & EXACT4 else ~(a ^ (a - 1)) & 0xFFFF
        if (key ^ a) & mask == 0:
            return r & ~EXACT4
    return 0


def _tree_leaf(rng: array, line: int, leaves: int, levels: int, fanout: int, key: int,
               reads: list[int] | None) -> int:
    """lpm4_tree()/lpm6_tree()'s walk over a tree of ``leaves`` leaf lines
    at 64-byte line ``line`` of ``rng`` (``fanout`` words, a node's keys, a
    line): the index in ``rng`` of the leaf line it ends at."""
    idx = 0
    for lvl in range(levels, 0, -1):
        keys = rng[fanout * (line + idx):fanout * (line + idx + 1)]
        assert keys[0] <= key, "a node whose first key is above the address"
        idx = idx * fanout + sum(1 for k in keys[1:] if k <= key)
        line += -(-leaves // fanout ** lvl)
        if reads is not None:
            reads[0] += 1
    if reads is not None:
        reads[0] += 1
    return fanout * (line + idx)


def _tree4(rng: array, off: int, n: int, levels: int, key: int, reads: list[int] | None) -> int:
    """lpm4_tree(): the result."""
    at = _tree_leaf(rng, off >> 4, -(-n // 16), levels, 16, key, reads)
    leaf = rng[at:at + 16]
    return leaf[sum(1 for r in leaf[1:] if r >> 16 <= key)] & 0xFFFF


def _tree6(rng: array, w0: int, levels: int, key48: int, packed: bool, reads: list[int] | None) -> int:
    """lpm6_tree(): the value."""
    per_leaf = 8 if packed else 4
    at = _tree_leaf(rng, (w0 & 0x7FFFFFFF) >> 2, -(-(w0 >> 32) // per_leaf), levels, 8, key48, reads)
    leaf = rng[at:at + 8]
    if packed:
        return leaf[sum(1 for w in leaf[1:] if w >> 16 <= key48)] & 0xFFFF
    return leaf[2 * sum(1 for j in (2, 4, 6) if leaf[j] <= key48) + 1]


def _small6(rng: array, e: int, key48: int, reads: list[int] | None) -> int:
    """lpm6_small(): SMALL6_STEPS halvings of exactly n ranges (a step whose
    half is 0 reads and changes nothing), then its result."""
    n = ((e >> SMALL6_SHIFT) & 15) + 1
    off = e & SMALL6_OFF
    assert off // 16 == (off + n - 1) // 16, "a small chunk crosses a 128-byte value"
    base, length = 0, n
    if reads is not None:
        reads[0] += 1  # one line (or value); the steps read inside it
    for _ in range(SMALL6_STEPS):
        half = length >> 1
        if rng[off + base + half] >> 16 <= key48:
            base += half
        length -= half
    return rng[off + base] & 0xFFFF


def lookup(t: LpmTables, fd: int, addr: int, reads: list[int] | None = None) -> int:
    """lpm4()/lpm6() in labeler.bpf.c: the result index for an address (0:
    none). ``reads[0]`` counts dependent table reads: the bitmap, direct
    entries, a small chunk's line, IPv6 chunk headers, search probes, a
    chunk's answer range (often a line a probe already read), and a tree's
    nodes and leaf line."""
    dir_ = fd & 1
    v6 = fd in (abi.DW_FD_V6_SRC, abi.DW_FD_V6_DST)
    top16 = addr >> (112 if v6 else 16)
    i = (((v6 << 1) | dir_) << 16) | top16
    if v6 or not (t.bmp_skip >> dir_) & 1:
        if reads is not None:
            reads[0] += 1
        if not (t.bmp[i >> 6] >> (i & 63)) & 1:
            return 0
    if reads is not None:
        reads[0] += 1
    if not v6:
        slot = (dir_ << 16) | (addr >> 16)
        key = addr & 0xFFFF
        w0, w1 = t.v4_slots[slot * SLOT4:(slot + 1) * SLOT4]
        if (w0 & 0xFFFF) << 16 | (w1 & 0xFFFF) != SLOT4_CHUNK:
            return _slot4(t, slot, key)
        off, n = (w0 >> 16) & 0xFFFFFFFF, (w0 >> 48) + 1
        if off & TREE4:
            return _tree4(t.v4_rng, off & ~TREE4, n, w1 >> 16, key, reads)
        pivots = [(w1 >> (16 * j)) & 0xFFFF for j in range(1, PIVOTS + 1)]
        c = sum(1 for p in pivots if p <= key)
        lo, hi = c * n // (PIVOTS + 1), (c + 1) * n // (PIVOTS + 1)
        rng = t.v4_rng
        i = lo + _search(hi - lo, lambda m: rng[off + lo + m] >> 16, key, abi.DW_LPM4_STEPS, reads)
        if reads is not None:
            reads[0] += 1  # the answer's range (one of the search's lines, or the segment's only range)
        return rng[off + i] & 0xFFFF
    hi64 = addr >> 64
    slot = (dir_ << 16) | (hi64 >> 48)
    w = t.v6_slots[slot * SLOT6:(slot + 1) * SLOT6]
    if not w[3] & SLOT6_PTR:
        res = w[3] & 0xFFFF
        for n in range(LANES6 - 1, -1, -1):  # the shortest first: the longest match writes last
            if ((hi64 & ((1 << 48) - 1)) ^ (w[n] >> 16)) >> ((w[3] >> (16 + 8 * n)) & 63) == 0:
                res = w[n] & 0xFFFF
        return res
    e = w[0] & 0xFFFFFFFF
    if e & LANES:
        return _small6(t.v6_small, e, hi64 & ((1 << 48) - 1), reads)
    if not e & CHUNK:
        return e
    if w[3] & SLOT6_TREE:
        e = _tree6(t.v6_rng, w[0], w[1], hi64 & M48, bool(w[3] & SLOT6_PACKED), reads)
        if not e & CHUNK:
            return e
        keys: tuple[int, ...] = (addr & ((1 << 64) - 1),)
    else:
        keys = (hi64, addr & ((1 << 64) - 1))
    for depth, key in enumerate(keys, start=2 - len(keys)):  # depth 1: a /64's chunk
        off = e & ~CHUNK
        if not depth:  # the /16's chunk: n and the pivots are in its entry
            n = w[0] >> 32
            c = sum(1 for p in w[1:] if p & M48 <= hi64 & M48)
            lo, hi = c * n // (PIVOTS6 + 1), (c + 1) * n // (PIVOTS6 + 1)
        else:
            lo, hi = 0, t.v6_rng[2 * off]
            if reads is not None:
                reads[0] += 1  # the header
        i = lo + _search(hi - lo, lambda m, off=off, lo=lo: t.v6_rng[2 * (off + 1 + lo + m)], key,
                         abi.DW_LPM6_STEPS, reads)
        if reads is not None:
            reads[0] += 1  # the answer's range
        e = t.v6_rng[2 * (off + 1 + i) + 1]
        if not e & CHUNK:
            return e
    raise AssertionError("a low-64 chunk points to another chunk")

"""Longest-prefix-match tables for the XDP labeler: built here from a prefix
set, searched by lpm4()/lpm6() in bpf/labeler.bpf.c (layout and encoding in
bpf/dropwatch.h, "rule maps").

DXR-style: a direct table on the top 16 address bits, whose entry is the
answer itself (a result index, 0 for "no prefix") or a chunk of sorted,
non-overlapping ranges covering that /16, each already resolved to the
longest matching prefix's result. IPv6 ranges are keyed by the top 64 bits;
inside a /64 that holds prefixes longer than /64, a second chunk keyed by
the low 64 bits. A lookup is one direct-table read plus at most one (IPv4)
or two (IPv6) binary searches of bounded depth, whatever the prefix lengths.
A chunk of at most ``SMALL_MAX`` ranges is "small": padded to a power of two,
aligned to its size, its size in the direct entry (no header), and for IPv6
each range one u64; its search takes a fixed number of steps.

``lookup()`` is the same walk in Python, step for step, for tests.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from . import abi

CHUNK = abi.DW_LPM_CHUNK
SMALL = abi.DW_LPM_SMALL
SMALL_SHIFT = abi.DW_LPM_SMALL_SHIFT
SMALL_OFF = abi.DW_LPM_SMALL_OFF
SMALL_MAX = abi.DW_LPM_SMALL_MAX
SMALL_STEPS = SMALL_MAX.bit_length() - 1  # the BPF search's fixed trip count
L1_SIZE = 1 << 16
MAX_V6_CHUNK = 1 << abi.DW_LPM6_STEPS


class LpmCapacityError(ValueError):
    """The prefix set does not fit the tables' encoding."""


@dataclass
class LpmTables:
    """One generation's tables, with chunk offsets relative to the start of
    this generation's part of each range array (the loader relocates)."""

    v4_l1: array = field(default_factory=lambda: array("I", bytes(4 * 2 * L1_SIZE)))  # [dir << 16 | top16]
    v4_rng: array = field(default_factory=lambda: array("I"))
    v6_l1: array = field(default_factory=lambda: array("I", bytes(4 * 2 * L1_SIZE)))
    v6_rng: array = field(default_factory=lambda: array("Q"))  # (key, value) pairs; small chunks: u64 ranges
    v6_ptrs: list[int] = field(default_factory=list)  # u64 indexes of values that point to a chunk
    # Bit per /16 with a non-zero direct entry: word ((v6 * 2 + dir) << 10) | top16 >> 6.
    bmp: array = field(default_factory=lambda: array("Q", bytes(8 * 4 * 1024)))

    def nbytes(self) -> int:
        """Memory the set needs in one generation (direct tables included)."""
        return sum(a.itemsize * len(a) for a in (self.v4_l1, self.v4_rng, self.v6_l1, self.v6_rng, self.bmp))

    def v6_entries(self) -> int:
        return len(self.v6_rng) // 2  # always whole 16-byte entries (small chunks hold 2, 4, 8 or 16 u64s)


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


def _small_size(n: int) -> int:
    """A small chunk's padded size: the power of two >= n, at least 2."""
    return max(2, 1 << (n - 1).bit_length())


def _small_entry(size: int, off: int) -> int:
    if off > SMALL_OFF:
        raise LpmCapacityError(f"range offset {off} beyond the direct entry's {SMALL_OFF}")
    return SMALL | (size.bit_length() - 2) << SMALL_SHIFT | off


def _put_small(rng: array, words: list[int]) -> int:
    """Pad words to a power of two by repeating the last one, append them
    aligned to that size (zeros in the gap, never read); their index."""
    size = _small_size(len(words))
    rng.extend([0] * (-len(rng) % size))
    off = len(rng)
    rng.extend(words + [words[-1]] * (size - len(words)))
    return off


def _build_v4(t: LpmTables, dir_: int, pfx: list[tuple[int, int, int]]) -> None:
    _paint_l1(t.v4_l1, dir_, [x for x in pfx if x[0] <= 16], 32)
    blocks: dict[int, list[Interval]] = defaultdict(list)
    for plen, addr, res in pfx:
        if plen > 16:
            low = addr & 0xFFFF
            blocks[addr >> 16].append((low, low + (1 << (32 - plen)) - 1, res))
    for block in sorted(blocks):
        i = (dir_ << 16) | block
        rs = ranges(blocks[block], t.v4_l1[i], 16)
        if len(rs) == 1:
            t.v4_l1[i] = rs[0][1]
            continue
        if len(rs) <= SMALL_MAX:
            off = _put_small(t.v4_rng, [(start << 16) | res for start, res in rs])
            t.v4_l1[i] = _small_entry(_small_size(len(rs)), off)
            continue
        t.v4_l1[i] = CHUNK | len(t.v4_rng)
        t.v4_rng.append(len(rs))
        t.v4_rng.extend((start << 16) | res for start, res in rs)


def _v6_chunk(t: LpmTables, rs: list[tuple[int, int]]) -> int:
    if len(rs) > MAX_V6_CHUNK:
        raise LpmCapacityError(f"{len(rs)} IPv6 ranges under one /16; at most {MAX_V6_CHUNK}")
    off = t.v6_entries()
    t.v6_rng.extend((len(rs), 0))
    for start, res in rs:
        if res & CHUNK:
            t.v6_ptrs.append(len(t.v6_rng) + 1)
        t.v6_rng.extend((start, res))
    return CHUNK | off


def _v6_small(t: LpmTables, rs: list[tuple[int, int]]) -> int:
    """Ranges relative to their /16 block (starts below 2^48), results only."""
    off = _put_small(t.v6_rng, [(start << 16) | res for start, res in rs])
    return _small_entry(_small_size(len(rs)), off // 2)


def _build_v6(t: LpmTables, dir_: int, pfx: list[tuple[int, int, int]]) -> None:
    _paint_l1(t.v6_l1, dir_, [x for x in pfx if x[0] <= 16], 128)
    mid: dict[int, list[Interval]] = defaultdict(list)  # /16 block -> intervals on the top 64 bits
    deep: dict[int, list[Interval]] = defaultdict(list)  # /64 -> intervals on the low 64 bits
    for plen, addr, res in pfx:
        if 16 < plen <= 64:
            first = addr >> 64
            mid[first >> 48].append((first, first + (1 << (64 - plen)) - 1, res))
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
        base = t.v6_l1[i]
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
        if len(rs) == 1:
            t.v6_l1[i] = rs[0][1]
            continue
        if len(rs) <= SMALL_MAX and not extra:
            t.v6_l1[i] = _v6_small(t, rs)
            continue
        t.v6_l1[i] = _v6_chunk(t, [((block << 48) | s, r) for s, r in rs])


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
    for fd in (abi.DW_FD_V6_SRC, abi.DW_FD_V6_DST):
        if by_fd.get(fd):
            _build_v6(t, fd & 1, by_fd[fd])
    for v6, l1 in ((0, t.v4_l1), (1, t.v6_l1)):
        for i, e in enumerate(l1):
            if e:
                t.bmp[(v6 << 11) | (i >> 6)] |= 1 << (i & 63)
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


def _small(rng: array, e: int, off: int, key: int, reads: list[int] | None) -> int:
    """lpm4_small()/lpm6_small(): SMALL_STEPS halvings of a padded chunk
    (a step whose half is 0 reads and changes nothing), then its result."""
    base, length = 0, 2 << ((e >> SMALL_SHIFT) & 3)
    for _ in range(SMALL_STEPS):
        half = length >> 1
        if reads is not None:
            reads[0] += 1
        if rng[off + base + half] >> 16 <= key:
            base += half
        length -= half
    return rng[off + base] & 0xFFFF


def lookup(t: LpmTables, fd: int, addr: int, reads: list[int] | None = None) -> int:
    """lpm4()/lpm6() in labeler.bpf.c: the result index for an address (0:
    none). ``reads[0]`` counts table reads: the bitmap, direct entries,
    chunk headers and search probes (not the final range, which the search
    already read)."""
    dir_ = fd & 1
    v6 = fd in (abi.DW_FD_V6_SRC, abi.DW_FD_V6_DST)
    top16 = addr >> (112 if v6 else 16)
    i = (((v6 << 1) | dir_) << 16) | top16
    if reads is not None:
        reads[0] += 1
    if not (t.bmp[i >> 6] >> (i & 63)) & 1:
        return 0
    if reads is not None:
        reads[0] += 1
    if not v6:
        e = t.v4_l1[(dir_ << 16) | (addr >> 16)]
        if e & SMALL and not e & CHUNK:
            return _small(t.v4_rng, e, e & SMALL_OFF, addr & 0xFFFF, reads)
        if not e & CHUNK:
            return e
        off = (e & ~CHUNK) + 1
        rng = t.v4_rng
        if reads is not None:
            reads[0] += 1
        i = _search(rng[off - 1], lambda m: rng[off + m] >> 16, addr & 0xFFFF, abi.DW_LPM4_STEPS, reads)
        return rng[off + i] & 0xFFFF
    hi64 = addr >> 64
    e = t.v6_l1[(dir_ << 16) | (hi64 >> 48)]
    if e & SMALL and not e & CHUNK:
        return _small(t.v6_rng, e, 2 * (e & SMALL_OFF), hi64 & ((1 << 48) - 1), reads)
    if not e & CHUNK:
        return e
    for key in (hi64, addr & ((1 << 64) - 1)):
        off = e & ~CHUNK
        n = t.v6_rng[2 * off]
        if reads is not None:
            reads[0] += 1
        i = _search(n, lambda m, off=off: t.v6_rng[2 * (off + 1 + m)], key, abi.DW_LPM6_STEPS, reads)
        e = t.v6_rng[2 * (off + 1 + i) + 1]
        if not e & CHUNK:
            return e
    raise AssertionError("a low-64 chunk points to another chunk")

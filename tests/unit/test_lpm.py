"""dropwatch.lpm against a brute-force longest-prefix match: random prefix
sets (IPv4 /0-/32, IPv6 /0-/128 with many lengths above /64), probed at
prefix edges and at random; the walk never exceeds the search depth the
BPF loops allow. lookup() is the labeler's walk in Python (its BPF twin is
checked against the same reference in tests/bpf/test_labeler.py)."""

from __future__ import annotations

import random

import pytest

from dropwatch import abi, lpm

pytestmark = pytest.mark.unit


def _mask(width: int, plen: int) -> int:
    return ((1 << width) - 1) ^ ((1 << (width - plen)) - 1)


def _brute(pfx: dict[tuple[int, int], int], width: int, addr: int) -> int:
    for plen in range(width, -1, -1):
        r = pfx.get((plen, addr & _mask(width, plen)))
        if r is not None:
            return r
    return 0


def _random_set(rng: random.Random, width: int, n: int, lens: list[int]) -> dict[tuple[int, int], int]:
    out: dict[tuple[int, int], int] = {}
    base = rng.getrandbits(width)
    for _ in range(n):
        plen = rng.choice(lens)
        # Cluster around one address so prefixes nest and touch.
        a = (base ^ rng.getrandbits(min(width, plen + 2))) if rng.random() < 0.7 else rng.getrandbits(width)
        out[(plen, a & _mask(width, plen))] = rng.randrange(1, 50)
    return out


def _probes(rng: random.Random, pfx: dict[tuple[int, int], int], width: int) -> list[int]:
    out = [0, (1 << width) - 1]
    for plen, a in pfx:
        end = a | ((1 << (width - plen)) - 1)
        out += [a, end, (a - 1) % (1 << width), (end + 1) % (1 << width)]
    out += [rng.getrandbits(width) for _ in range(200)]
    return out


@pytest.mark.parametrize("seed", range(30))
def test_v4_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    pfx = _random_set(rng, 32, rng.randrange(1, 120), list(range(0, 33)))
    fd = rng.choice([abi.DW_FD_V4_SRC, abi.DW_FD_V4_DST])
    t = lpm.build((fd, plen, a, r) for (plen, a), r in pfx.items())
    for addr in _probes(rng, pfx, 32):
        reads = [0]
        assert lpm.lookup(t, fd, addr, reads) == _brute(pfx, 32, addr), hex(addr)
        assert reads[0] <= 3 + abi.DW_LPM4_STEPS
        assert lpm.lookup(t, fd ^ 1, addr) == 0  # the other direction holds nothing


@pytest.mark.parametrize("seed", range(30))
def test_v6_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    lens = [0, 8, 16, 17, 32, 48, 63, 64, 65, 80, 96, 127, 128]
    pfx = _random_set(rng, 128, rng.randrange(1, 120), lens)
    fd = rng.choice([abi.DW_FD_V6_SRC, abi.DW_FD_V6_DST])
    t = lpm.build((fd, plen, a, r) for (plen, a), r in pfx.items())
    for addr in _probes(rng, pfx, 128):
        reads = [0]
        assert lpm.lookup(t, fd, addr, reads) == _brute(pfx, 128, addr), hex(addr)
        assert reads[0] <= 2 + 2 * (1 + abi.DW_LPM6_STEPS)


def test_full_chunk_is_a_three_level_tree() -> None:
    """Every other /32 of one /16: 65,536 ranges, the most a /16 holds:
    4,096 leaf lines under 3 levels of 16-key nodes, so every lookup reads
    exactly bitmap + direct entry + 3 nodes + the leaf line."""
    t = lpm.build((abi.DW_FD_V4_DST, 32, (10 << 24) | i, 1) for i in range(0, 1 << 16, 2))
    off, n, levels = _chunk(_slot(t, 1, 10 << 8))
    assert off & lpm.TREE4 and n == 1 << 16 and levels == abi.DW_LPM4_TREE_LEVELS == 3
    for low in (0, 1, 2, 15, 16, 255, 256, 4095, 4096, 0x7FFF, 0xFFFE, 0xFFFF):
        reads = [0]
        assert lpm.lookup(t, abi.DW_FD_V4_DST, (10 << 24) | low, reads) == (0 if low & 1 else 1)
        assert reads[0] == 6


@pytest.mark.parametrize("n", [65, 100, 257, 2000, 20_000, 65_000])
def test_v4_tree(n: int) -> None:
    """n random /17-/32 prefixes in one /16 with more than lpm.TREE4_MIN
    ranges make a tree: levels = the least l with ceil(leaves / 16^l) == 1,
    every node's keys sorted and padded with 2^16, the leaves sorted and
    padded with the last range, and every lookup (prefix edges, just
    outside them, random addresses) equal to brute force in exactly
    3 + levels reads."""
    rng = random.Random(n)
    fd, block = abi.DW_FD_V4_DST, 0x0A14 << 16
    pfx: dict[tuple[int, int], int] = {}
    while len(pfx) < n:
        plen = rng.choice((20, 24, 28, 30, 32, 32, 32))
        a = (block | rng.getrandbits(16)) & ~((1 << (32 - plen)) - 1)
        pfx[(plen, a)] = rng.randrange(1, 60_000)
    t = lpm.build((fd, p, a, r) for (p, a), r in pfx.items())
    off, n_ranges, levels = _chunk(_slot(t, 1, block >> 16))
    line = (off & ~lpm.TREE4) >> 4
    assert off & lpm.TREE4 and n_ranges > lpm.TREE4_MIN
    leaves = -(-n_ranges // 16)
    assert levels == next(lv for lv in range(4) if -(-leaves // 16 ** lv) == 1)
    nodes = sum(-(-leaves // 16 ** lv) for lv in range(1, levels + 1))
    for j in range(nodes):
        node = list(t.v4_rng[16 * (line + j):16 * (line + j + 1)])
        assert node == sorted(node) and node[0] < lpm.TREE4_PAD and node[-1] <= lpm.TREE4_PAD
    rs = list(t.v4_rng[16 * (line + nodes):16 * (line + nodes + leaves)])
    assert rs[0] >> 16 == 0 and rs == sorted(rs)
    assert rs[n_ranges:] == [rs[n_ranges - 1]] * (16 * leaves - n_ranges)
    addrs = [a + d for (p, a) in rng.sample(sorted(pfx), min(n, 300))
             for d in (0, (1 << (32 - p)) - 1, -1, 1 << (32 - p))]
    addrs += [block | rng.getrandbits(16) for _ in range(300)] + [block, block | 0xFFFF]
    for addr in (x for x in addrs if x >> 16 == block >> 16):
        reads = [0]
        assert lpm.lookup(t, fd, addr, reads) == _brute(pfx, 32, addr), hex(addr)
        assert reads[0] == 3 + levels


# The last: the largest chunk (2n + 1 <= TREE4_MIN ranges).
@pytest.mark.parametrize("n", [5, 12, 13, 14, 20, 26, (lpm.TREE4_MIN - 1) // 2])
def test_v4_chunk_pivots(n: int) -> None:
    """A chunk of n ranges (up to lpm.TREE4_MIN: a larger one is a tree):
    its direct entry holds n and the 3 pivots, the starts of ranges
    j * n // 4; every range's first and last address finds its result
    through the quarter the pivots pick, in at most 7 reads (bitmap,
    entry, 4 halvings of a quarter of at most 16, answer; a 3-level tree
    reads 6)."""
    fd, block = abi.DW_FD_V4_DST, 10 << 24
    pfx = {(32, block | (7 * i + 3)): 1 + i % 50 for i in range(n)}
    t = lpm.build((fd, p, a, r) for (p, a), r in pfx.items())
    slot = _slot(t, 1, block >> 16)
    off, n_ranges, _levels = _chunk(slot)
    assert not off & lpm.TREE4 and n_ranges == 2 * n + 1
    starts = [t.v4_rng[off + i] >> 16 for i in range(n_ranges)]
    pivots = [(slot[1] >> (16 * j)) & 0xFFFF for j in range(1, 4)]
    assert pivots == [starts[j * n_ranges // 4] for j in range(1, 4)]
    for i, st in enumerate(starts):
        last = starts[i + 1] - 1 if i + 1 < len(starts) else 0xFFFF
        for addr in (st, last):
            reads = [0]
            assert lpm.lookup(t, fd, block | addr, reads) == _brute(pfx, 32, block | addr), hex(addr)
            assert reads[0] <= 7


def test_ranges_merge_equal_neighbours() -> None:
    # /25 + /25 with the /24's result: one range, so the /16 is a leaf.
    t = lpm.build([(abi.DW_FD_V4_DST, 24, 0x0A000100, 7), (abi.DW_FD_V4_DST, 25, 0x0A000100, 7),
                   (abi.DW_FD_V4_DST, 25, 0x0A000180, 7), (abi.DW_FD_V4_DST, 16, 0x0A000000, 7)])
    assert _lanes(_slot(t, 1, 0x0A00)) == [(0, 0, 7)] and len(t.v4_rng) == 0


def _slot(t: lpm.LpmTables, dir_: int, top16: int) -> tuple[int, ...]:
    """The IPv4 direct entry (w0, w1) of a /16."""
    i = ((dir_ << 16) | top16) * lpm.SLOT4
    return tuple(t.v4_slots[i:i + lpm.SLOT4])


def _chunk(slot: tuple[int, ...]) -> tuple[int, int, int]:
    """A chunk's or tree's direct entry: (off with lpm.TREE4, n, w1: a
    tree's levels)."""
    w0, w1 = slot
    assert (w0 & 0xFFFF) << 16 | (w1 & 0xFFFF) == lpm.SLOT4_CHUNK, "not a chunk's entry"
    return (w0 >> 16) & 0xFFFFFFFF, (w0 >> 48) + 1, w1 >> 16


def _lanes(slot: tuple[int, ...]) -> list[tuple[int, ...]]:
    """A direct entry's distinct lanes, in order (lanes past the /16's
    prefixes repeat lane 0), as (address bits, mask, result), decoded as
    lpm4_lanes() does: the mask from the length marker, or all 16 bits
    for a /32."""
    w0, w1 = slot
    out: list[tuple[int, ...]] = []
    for n in range(lpm.LANES_MAX):
        a, r = (w0 >> (16 * n)) & 0xFFFF, (w1 >> (16 * n)) & 0xFFFF
        if r & lpm.EXACT4:
            mask = 0xFFFF
        else:
            assert a, "a lane without its length marker"
            mask = ~(a ^ (a - 1)) & 0xFFFF
        lane = (a & mask, mask, r & ~lpm.EXACT4)
        if lane not in out:
            out.append(lane)
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 30])
def test_v4_lanes(n: int) -> None:
    """n /31s (their length marker in bit 0) in one /16: up to
    lpm.LANES_MAX of them are lanes of its direct entry (the prefixes
    themselves), more make a chunk of ranges; every address still finds its
    prefix, in 2 reads (bitmap, direct entry) with lanes."""
    fd, block = abi.DW_FD_V4_DST, 10 << 24
    pfx = {(31, block | (6 * i + 2)): 1 + i for i in range(n)}
    t = lpm.build((fd, p, a, r) for (p, a), r in pfx.items())
    slot = _slot(t, 1, block >> 16)
    if n <= lpm.LANES_MAX:
        assert sorted(a for a, _m, _r in _lanes(slot)) == sorted(6 * i + 2 for i in range(n))
        assert all(m == 0xFFFE for _a, m, _r in _lanes(slot))  # no lane of length 0: no own result
    else:
        assert _chunk(slot)[1] == 2 * n + 1
    for (_p, a), _r in pfx.items():
        for addr in (a, a - 1, a + 1):
            reads = [0]
            assert lpm.lookup(t, fd, addr, reads) == _brute(pfx, 32, addr), hex(addr)
            assert reads[0] <= (2 if n <= lpm.LANES_MAX else 3 + abi.DW_LPM4_STEPS)


@pytest.mark.parametrize("case", ["host", "host0", "host0-none", "big-result", "big-own"])
def test_v4_lane_edges(case: str) -> None:
    """The edges of the lane encoding: a /32 (no room for a length marker:
    its result carries lpm.EXACT4) is a lane, at .0 too (address bits 0);
    a /32 of .0 with result 0 would read as a chunk's entry, and a result
    of 0x8000 or more has no room in a lane: those /16s are chunks. Every
    address at and around the prefixes answers as brute force says."""
    fd, block = abi.DW_FD_V4_DST, 10 << 24
    pfx = {"host": {(32, block | 0x0101): 5, (24, block | 0x0100): 6, (16, block): 7},
           "host0": {(32, block): 5, (24, block): 6},
           "host0-none": {(32, block): 0, (24, block): 6},
           "big-result": {(24, block | 0x0100): 0x8000, (20, block): 4},
           "big-own": {(16, block): 0xFFFF}}[case]
    t = lpm.build((fd, p, a, r) for (p, a), r in pfx.items())
    slot = _slot(t, 1, block >> 16)
    if case in ("host", "host0"):
        lanes = _lanes(slot)
        assert lanes[0] == (0x0101 if case == "host" else 0, 0xFFFF, 5) and len(lanes) == len(pfx)
    else:
        assert _chunk(slot)[1] == {"host0-none": 3, "big-result": 4, "big-own": 1}[case]
    for (p, a) in pfx:
        for addr in (a, a | ((1 << (32 - p)) - 1), a - 1, a + 1, a + (1 << (32 - p))):
            assert lpm.lookup(t, fd, addr) == _brute(pfx, 32, addr), hex(addr)


def test_v4_lanes_keep_the_longest_and_drop_the_idle() -> None:
    """Nested prefixes: the longest wins whatever the order; a prefix with
    its container's result is no lane; a /16 whose prefixes all change
    nothing keeps its direct entry."""
    fd = abi.DW_FD_V4_DST
    pfx = {(16, 0x0A000000): 3, (20, 0x0A000000): 5, (24, 0x0A000100): 7, (28, 0x0A000110): 5,
           (30, 0x0A001000): 3}  # /30 in the /16 only, same result: idle
    t = lpm.build((fd, p, a, r) for (p, a), r in pfx.items())
    slot = _slot(t, 1, 0x0A00)
    # Longest first: /28, /24, /20, then the /16's own (3) as a lane of length 0.
    assert _lanes(slot) == [(0x0110, 0xFFF0, 5), (0x0100, 0xFF00, 7), (0x0000, 0xF000, 5), (0, 0, 3)]
    for addr in (0x0A000000, 0x0A0000FF, 0x0A000100, 0x0A00010F, 0x0A000110, 0x0A00011F, 0x0A000120,
                 0x0A000800, 0x0A000FFF, 0x0A001000, 0x0A001003, 0x0A001004, 0x0A00FFFF):
        assert lpm.lookup(t, fd, addr) == _brute(pfx, 32, addr), hex(addr)
    idle = lpm.build([(fd, 16, 0x0B000000, 4), (fd, 24, 0x0B000100, 4)])
    assert _lanes(_slot(idle, 1, 0x0B00)) == [(0, 0, 4)] and len(idle.v4_rng) == 0


def _v4_blocks(rng: random.Random, blocks: int, most: int) -> dict[tuple[int, int], int]:
    """1 to ``most`` random /20-/32 prefixes in each of ``blocks`` /16s."""
    pfx: dict[tuple[int, int], int] = {}
    for block in rng.sample(range(1 << 16), blocks):
        for _ in range(rng.randint(1, most)):
            plen = rng.choice([20, 24, 28, 32])
            pfx[(plen, (block << 16 | rng.getrandbits(16)) & _mask(32, plen))] = rng.randrange(1, 1000)
    return pfx


def test_v4_random_blocks() -> None:
    """Thousands of /16s with one to six prefixes each, under a /8 and some
    /16s of their own: every address at and around each prefix finds the
    longest one; /16s of up to lpm.LANES_MAX kept prefixes are answered by
    their direct entry, the rest by a chunk."""
    fd = abi.DW_FD_V4_SRC
    pfx = _v4_blocks(random.Random(7), 3000, 6)
    pfx[(8, 0x0A000000)] = 11
    for block in random.Random(8).sample(sorted({a >> 16 for _p, a in pfx}), 300):
        pfx[(16, block << 16)] = 12
    t = lpm.build((fd, p, a, r) for (p, a), r in pfx.items())
    for (p, a) in pfx:
        for addr in (a, a | ((1 << (32 - p)) - 1), a - 1, (a + (1 << (32 - p))) & 0xFFFFFFFF):
            assert lpm.lookup(t, fd, addr) == _brute(pfx, 32, addr), hex(addr)
    kinds = {"lanes": 0, "chunk": 0}
    for i in range(1 << 16):
        slot = _slot(t, 0, i)
        if slot[0] and not slot[0] & 0xFFFF:
            kinds["chunk"] += 1
        elif slot[0] and any(m for _a, m, _r in _lanes(slot)):
            kinds["lanes"] += 1
    assert kinds["lanes"] > 1500 and kinds["chunk"] > 100
    assert len(t.v4_chunks) == kinds["chunk"]
    # A chunk of up to 16 entries (header + ranges) stays in one 64-byte line.
    line = lpm.LINE // 4
    spans = [_chunk(tuple(t.v4_slots[i * lpm.SLOT4:(i + 1) * lpm.SLOT4]))[:2] for i in t.v4_chunks]
    assert sum(1 for _off, n in spans if n <= line) > 100
    assert all(off // line == (off + n - 1) // line for off, n in spans if n <= line)


# The last: the largest chunk on the top 64 bits (2n + 3 <= TREE_PAIRS_MIN
# ranges, with the /64's own two).
@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, (lpm.TREE_PAIRS_MIN - 3) // 2])
def test_v6_small_chunks(n: int, deep: bool) -> None:
    """n /48s in one /16: up to lpm.LANES6 of them are lanes of its direct
    entry (answered in 2 reads: bitmap, entry); more give 2n + 1 ranges, of
    which up to lpm.SMALL6_MAX make a small chunk of exactly that many u64
    ranges, inside one line (9 or more: one 128-byte value); more make a
    tree with packed leaves (3 + levels reads). With a /64 that holds a
    longer prefix (``deep``: two more ranges, one pointing to the /64's
    chunk) neither lanes nor a small chunk can hold the /16: up to
    lpm.TREE_PAIRS_MIN ranges it is a chunk whose entry holds n and the
    pivots (a quarter of at most 16 ranges: at most 7 reads outside that
    /64), more a tree of pairs."""
    fd, block, width, plen = abi.DW_FD_V6_DST, 0x2001 << 112, 128, 48
    pfx = {(plen, block | (3 * i + 1) << (width - plen)): 1 + i for i in range(n)}
    deep64 = block | 5 << 64  # in /48 number 0, which no /48 of the set covers
    if deep:
        pfx[(96, deep64 | 7 << 32)] = 999
    t = lpm.build((fd, p, a, r) for (p, a), r in pfx.items())
    slot = t.v6_slots[((1 << 16) | 0x2001) * lpm.SLOT6:((1 << 16) | 0x2002) * lpm.SLOT6]
    e = slot[0] & 0xFFFFFFFF
    n_ranges = 2 * n + 1 + 2 * deep
    probes = [addr for (p, a) in pfx for addr in (a, a | ((1 << (width - p)) - 1), a - 1, a + (1 << (width - p)))]
    if n <= lpm.LANES6 and not deep:
        assert not slot[3] & lpm.SLOT6_PTR
        assert {w >> 16 for w in slot[:3]} == {(3 * i + 1) << 16 for i in range(n)}  # top-64 bits 16..63
        assert {(slot[3] >> (16 + 8 * k)) & 0xFF for k in range(3)} == {64 - plen}
        for addr in probes:
            reads = [0]
            assert lpm.lookup(t, fd, addr, reads) == _brute(pfx, width, addr), hex(addr)
            assert reads[0] == 2
        return
    assert slot[3] & lpm.SLOT6_PTR
    assert e & lpm.LANES or slot[0] >> 32 == n_ranges  # a small chunk's n is in e
    tree = bool(slot[3] & lpm.SLOT6_TREE)
    max_reads = 7
    if n_ranges <= lpm.SMALL6_MAX and not deep:
        assert list(slot[1:]) == [0, 0, lpm.SLOT6_PTR]
        assert e & lpm.LANES and not e & lpm.CHUNK
        assert ((e >> lpm.SMALL6_SHIFT) & 15) + 1 == n_ranges
        off = e & lpm.SMALL6_OFF
        line = 8 if n_ranges <= 8 else 16
        assert off // line == (off + n_ranges - 1) // line
        max_reads = 3
    elif tree:
        assert n_ranges > (lpm.TREE_PAIRS_MIN if deep else lpm.TREE_MIN)
        assert bool(slot[3] & lpm.SLOT6_PACKED) == (not deep)
        max_reads = 3 + slot[1]
    else:
        # A chunk, only with a /64's chunk among its ranges: its n and
        # pivots (bits 16..63 of the starts of ranges j * n // 4: the /64's
        # two, then the /48s' starts and ends alternating) in the entry.
        assert deep and e & lpm.CHUNK and n_ranges <= lpm.TREE_PAIRS_MIN
        starts = [0, 5, 6] + [x for i in range(n) for x in ((3 * i + 1) << 16, (3 * i + 2) << 16)]
        assert [w & lpm.M48 for w in slot[1:]] == [starts[j * n_ranges // 4] for j in (1, 2, 3)]
    for addr in probes:
        reads = [0]
        assert lpm.lookup(t, fd, addr, reads) == _brute(pfx, width, addr), hex(addr)
        if addr >> 64 != deep64 >> 64:
            # Bitmap, entry, then a small chunk's line; or a quarter of at
            # most 16 ranges (4 halvings) and the answer's range; or a
            # tree's levels and its leaf line.
            assert reads[0] <= max_reads


@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("n", [20, 30, 31, 32, 33, 40, 100, 500, 2100, 20_000])
def test_v6_tree(n: int, deep: bool) -> None:
    """n random /32-/64 prefixes in one /16 (RIR space puts real sets in a
    few dozen /16s): more than lpm.TREE_MIN ranges (lpm.TREE_PAIRS_MIN with
    a /64 that has its own chunk) make a tree, levels =
    the least l with ceil(leaves / 8^l) == 1, every node's keys sorted and
    padded with 2^48, and every lookup (prefix edges, just outside them,
    random addresses) equal to brute force in exactly 3 + levels reads
    (more inside a /64 that has its own chunk); fewer make a chunk with
    pivots. The leaf lines hold 8 packed ranges, or, where some /64 holds
    prefixes longer than /64 (``deep``) and so a range points to its
    chunk, 4 (key, value) pairs."""
    rng = random.Random(n)
    fd, block, width = abi.DW_FD_V6_DST, 0x2A01, 128
    pfx: dict[tuple[int, int], int] = {}
    while len(pfx) < n:
        plen = rng.choice((32, 40, 48, 56, 64))
        a = (block << 112 | rng.getrandbits(112)) & ~((1 << (width - plen)) - 1)
        pfx[(plen, a)] = rng.randrange(1, 60_000)
    deep64s: set[int] = set()
    if deep:
        for _ in range(3):
            q = block << 48 | rng.getrandbits(48)
            deep64s.add(q)
            for _ in range(3):
                plen = rng.choice((72, 96, 128))
                a = (q << 64 | rng.getrandbits(64)) & ~((1 << (width - plen)) - 1)
                pfx[(plen, a)] = rng.randrange(1, 60_000)
    t = lpm.build((fd, p, a, r) for (p, a), r in pfx.items())
    i = (1 << 16) | block
    w0, levels = t.v6_slots[i * lpm.SLOT6], t.v6_slots[i * lpm.SLOT6 + 1]
    assert t.v6_slots[i * lpm.SLOT6 + 3] & lpm.SLOT6_PTR and w0 & lpm.CHUNK
    n_ranges, line = w0 >> 32, (w0 & 0x7FFFFFFF) >> 2
    tree = bool(t.v6_slots[i * lpm.SLOT6 + 3] & lpm.SLOT6_TREE)
    assert tree == (n_ranges > (lpm.TREE_PAIRS_MIN if deep else lpm.TREE_MIN))
    addrs = [a + d for (p, a) in rng.sample(sorted(pfx), min(n, 300))
             for d in (0, (1 << (width - p)) - 1, -1, 1 << (width - p))]
    addrs += [block << 112 | rng.getrandbits(112) for _ in range(300)] + [block << 112, (block + 1 << 112) - 1]
    addrs = [x for x in addrs if x >> 112 == block]
    if not tree:
        for addr in addrs:
            assert lpm.lookup(t, fd, addr) == _brute(pfx, width, addr), hex(addr)
        return
    packed = bool(t.v6_slots[i * lpm.SLOT6 + 3] & lpm.SLOT6_PACKED)
    assert packed == (not deep)
    per_leaf = 8 if packed else 4
    leaves = -(-n_ranges // per_leaf)
    assert levels == next(lv for lv in range(9) if -(-leaves // 8 ** lv) == 1)
    # The nodes: sorted keys, the first of each one its parent's key.
    nodes = sum(-(-leaves // 8 ** lv) for lv in range(1, levels + 1))
    keys = t.v6_rng[8 * line:8 * (line + nodes)]
    for j in range(nodes):
        node = list(keys[8 * j:8 * j + 8])
        assert node == sorted(node) and node[0] < lpm.TREE_PAD and node[-1] <= lpm.TREE_PAD
    if packed:  # (start << 16) | result, past n the last range again
        words = list(t.v6_rng[8 * (line + nodes):8 * (line + nodes + leaves)])
        starts = [w >> 16 for w in words]
        assert words[n_ranges:] == [words[n_ranges - 1]] * (8 * leaves - n_ranges)
        starts = starts[:n_ranges]
    else:
        starts = list(t.v6_rng[8 * (line + nodes):8 * (line + nodes + leaves):2])
        assert starts[n_ranges:] == [lpm.TREE_PAD] * (4 * leaves - n_ranges)
    assert starts[0] == 0 and starts == sorted(starts)
    addrs += [q << 64 | rng.getrandbits(64) for q in deep64s for _ in range(20)]
    for addr in addrs:
        reads = [0]
        assert lpm.lookup(t, fd, addr, reads) == _brute(pfx, width, addr), hex(addr)
        if addr >> 64 in deep64s:
            assert reads[0] > 3 + levels
        else:
            assert reads[0] == 3 + levels


@pytest.mark.parametrize("blocks", [abi.DW_BMP_SKIP_MIN - 1, abi.DW_BMP_SKIP_MIN])
def test_v4_bitmap_skipped_when_dense(blocks: int) -> None:
    """A direction with prefixes in lpm's DW_BMP_SKIP_MIN /16s or more is
    walked without its bitmap: an address in an empty /16 then reads its
    zero entry (one read), which answers 0, as the bitmap would have."""
    rng = random.Random(blocks)
    fd = abi.DW_FD_V4_DST
    used = rng.sample(range(1 << 16), blocks)
    pfx = {(24, b << 16 | rng.getrandbits(8) << 8): 1 + b % 7 for b in used}
    t = lpm.build((fd, p, a, r) for (p, a), r in pfx.items())
    dense = blocks >= abi.DW_BMP_SKIP_MIN
    assert t.bmp_skip == (0b10 if dense else 0)
    empty = sorted(set(range(1 << 16)) - set(used))
    for b in rng.sample(empty, 50):
        reads = [0]
        assert lpm.lookup(t, fd, b << 16 | rng.getrandbits(16), reads) == 0
        assert reads[0] == 1  # the entry (dense) or the bitmap (sparse)
    for (_p, a) in rng.sample(sorted(pfx), 200):
        for addr in (a, a | 0xFF, a - 1, a + 0x100):
            reads = [0]
            assert lpm.lookup(t, fd, addr, reads) == _brute(pfx, 32, addr), hex(addr)
            assert reads[0] <= 2

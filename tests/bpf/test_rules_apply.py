"""Rule reloads are all or nothing in the kernel, and the maps' capacity is
enforced before anything is written.

Ruleset A is applied; then ruleset B is applied with a fault injected at
every single map write it makes (Loader.lib.map_update raising, the way a
full or out-of-memory map would, and each region store into the mmap'ed
longest-prefix-match arrays raising), with its read-back verification
failing, and with one of its writes silently corrupted. After each failed
reload the test reads the maps back: the active generation is still A's,
holds exactly A's entries, the inactive generation is empty (no
half-written entries), Loader.rule_map_entries() equals A's result, range
and pair counts, and the labeler (BPF_PROG_TEST_RUN) classifies probe
packets per A. Then B applies cleanly, so a failed reload never wedges the
loader.

Capacity: a ruleset with more prefixes, pairs or overlapping rules than the
maps hold is refused by compile_rules with a RulesError naming the limit,
and nothing reaches the kernel. The drop map filling up is counted
(DW_STAT_MAP_FULL, what /healthz and dropwatch_map_full_total report),
never silent.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import packets as P
from dropwatch import abi, lpm
from dropwatch import rules as rules_mod
from dropwatch import loader as loader_mod
from dropwatch.loader import DropwatchError, Loader
from dropwatch.loader import test_run_xdp as xdp_test_run  # not "test_*": pytest would collect it
from dropwatch.rules import CompiledRules, RulesError, RuleSet, classify_reference, compile_rules, parse_rules

pytestmark = pytest.mark.bpf

XDP_PASS = 2
META_KEY = 0xA11FA11F
IDS = {"custA": 3, "custB": 4, "quic": 9, "peer": 12, "old": 20}

RULES_A = parse_rules({"default_side": "eyeball", "rules": [
    {"label": "custA", "dst": ["10.10.1.0/24", "2001:db8:a::/48"]},
    {"label": "quic", "proto": "udp", "dport": [443], "dst": ["10.20.0.0/16"]},
    {"side": "origin", "src": ["192.0.2.0/24"]},
    {"label": "peer", "src": ["198.51.100.0/24"], "dst": ["10.30.0.0/16"]},
    {"label": "old", "proto": "icmp"},
]})
# B moves custA, adds many prefixes (so a fault can hit the middle of the
# prefix writes) and several pair rules.
RULES_B = parse_rules({"default_side": "origin", "rules": [
    {"label": "custA", "dst": ["10.10.2.0/24"]},
    {"label": "custB", "dst": ["10.10.1.0/24", "10.10.0.0/16", "2001:db8:b::/48", "2a00:1::/48"]
     + [f"172.16.{i}.0/24" for i in range(24)]
     # more than a small chunk holds in one IPv6 /16: a chunk of ranges
     + [f"2001:db8:c:{i}::/64" for i in range(0, 18, 2)]},
    {"label": "quic", "side": "eyeball", "src": ["192.0.2.0/24", "203.0.113.0/24"],
     "dst": ["10.20.0.0/16", "10.10.1.0/24", "10.30.0.0/16"]},
    {"label": "peer", "src": ["198.51.100.0/25", "198.51.100.128/25"], "dst": ["10.30.0.0/16", "10.20.0.0/16"]},
    {"side": "eyeball", "dport": [53], "proto": "udp"},
    # A result of several candidates (dw_results, not only dw_lpm_res).
    {"label": "custA", "proto": "tcp", "dport": [80, 8080], "dst": ["10.10.1.0/24"]},
]})
PROBES = [P.build(4, l4, src=s, dst=d, dport=p) for l4, s, d, p in (
    ("udp", "203.0.113.5", "10.10.1.7", 443), ("udp", "203.0.113.5", "10.10.2.7", 443),
    ("udp", "192.0.2.1", "10.20.0.1", 443), ("tcp", "192.0.2.1", "10.10.1.1", 80),
    ("udp", "198.51.100.200", "10.30.0.1", 53), ("udp", "198.51.100.1", "10.20.0.1", 53),
    ("icmp", "8.8.8.8", "172.16.7.9", 0), ("tcp", "8.8.8.8", "172.16.7.9", 22))]
PROBES.append(P.build(6, "tcp", src="2001:db8::1", dst="2001:db8:a::1"))
PROBES.append(P.build(6, "udp", src="2001:db8::1", dst="2001:db8:b::1", dport=53))
PROBES.append(P.build(6, "udp", src="2001:db8::1", dst="2001:db8:c:6::1", dport=53))


def classify_all(ld: Loader) -> list[tuple[int, int]]:
    out = []
    for pkt in PROBES:
        verdict, meta, frame, _ = xdp_test_run(ld, pkt.frame)
        assert verdict == XDP_PASS and frame == pkt.frame
        source, rec = abi.decode_meta(meta, META_KEY)
        assert source == abi.Source.META and rec is not None, meta.hex()
        out.append((rec.label_id, rec.side))
    return out


def reference(rs: RuleSet) -> list[tuple[int, int]]:
    out = []
    for pkt in PROBES:
        exp = pkt.expect()
        assert exp is not None
        out.append(classify_reference(rs, IDS, exp.family, exp.saddr, exp.daddr, exp.proto, exp.dport))
    return out


def test_probes_tell_a_from_b() -> None:
    assert reference(RULES_A) != reference(RULES_B)
    a, b = compile_rules(RULES_A, IDS), compile_rules(RULES_B, IDS)
    assert len(b.prefixes) > 20 and len(b.pairs) > 3 and a.pairs
    # Both rule sets fill IPv4 and IPv6 lanes, B chunks of ranges too.
    for c in (a, b):
        assert any(c.lpm.v4_slots[i] for i in range(0, len(c.lpm.v4_slots), lpm.SLOT4))
        assert any(c.lpm.v6_slots[i] >> 16 for i in range(0, len(c.lpm.v6_slots), lpm.SLOT6))
    assert len(b.lpm.v4_rng) and b.lpm.v6_entries()


# ---------------------------------------------------------------- reading the maps back

def map_entries(c: CompiledRules) -> dict[str, int]:
    """What Loader.rule_map_entries() reads (both gens) with only ``c`` loaded."""
    return {"dw_results": len(c.results) - 1, "dw_lpm_ranges": len(c.lpm.v4_rng) + c.lpm.v6_entries(),
            "dw_slot4": c.lpm.v4_used(), "dw_slot6": c.lpm.v6_used(), "dw_pairs": len(c.pairs)}


def _iter_keys(ld: Loader, name: str, ktype: type[ctypes.Structure]) -> Iterator[ctypes.Structure]:
    fd = ld.labeler.maps[name]  # type: ignore[union-attr]
    cur: ctypes.Structure | None = None
    nk = ktype()
    while ld.lib.map_next_key(fd, cur, nk):
        k = ktype.from_buffer_copy(bytes(nk))
        yield k
        cur = k


def _labeler_state(ld: Loader) -> abi.LabelerState:
    """struct dw_labeler_state as the kernel holds it (a map lookup on the
    program's .bss, not the loader's own mapping of it)."""
    lb = ld.labeler
    assert lb is not None
    m = ld.lib.find_map(lb.obj, ".bss")
    buf = (ctypes.c_uint8 * ld.lib.map_value_size(m))()
    assert ld.lib.map_lookup(ld.lib.map_fd(m), ctypes.c_uint32(0), buf)
    return abi.LabelerState.from_buffer_copy(bytes(buf)[:ctypes.sizeof(abi.LabelerState)])


def _l1_nonzero(ld: Loader, gen: int) -> int:
    """Non-zero direct-table entries and bitmap bytes of one generation (IPv4
    and IPv6, both directions), through a mapping of our own (not the
    loader's)."""
    lb = ld.labeler
    assert lb is not None
    n = 0
    for name, entry in (("dw_slot4", ctypes.sizeof(abi.Lpm4Slot)), ("dw_slot6", ctypes.sizeof(abi.Lpm6Slot))):
        half = 2 * 65536 * entry
        mm = mmap.mmap(lb.maps[name], abi.DW_GENS * half, mmap.MAP_SHARED, mmap.PROT_READ)
        try:
            words = memoryview(mm)[gen * half:(gen + 1) * half].cast("Q" if entry > 4 else "I")
            n += sum(1 for w in words if w)
            words.release()
        finally:
            mm.close()
    mm = mmap.mmap(lb.maps["dw_lpm_bmp"], abi.DW_LPM_BMP_LINES * 64, mmap.MAP_SHARED, mmap.PROT_READ)
    try:
        half = len(mm) // abi.DW_GENS
        n += sum(1 for b in mm[gen * half:(gen + 1) * half] if b)
    finally:
        mm.close()
    return n


def map_state(ld: Loader) -> dict[str, Any]:
    """The state and pair entries, read from the kernel."""
    maps = ld.labeler.maps  # type: ignore[union-attr]
    v = abi.CandList()
    pairs: dict[bytes, bytes] = {}
    pgens: set[int] = set()
    for k in _iter_keys(ld, "dw_pairs", abi.PairKey):
        assert ld.lib.map_lookup(maps["dw_pairs"], k, v)
        pairs[bytes(k)] = bytes(v)
        pgens.add(k.gen)  # type: ignore[attr-defined]
    state = _labeler_state(ld)
    return {"active_gen": state.active_gen, "state": state, "pairs": pairs, "pair_gens": pgens}


def assert_only(ld: Loader, compiled: CompiledRules, rs: RuleSet, what: str) -> None:
    """The kernel holds exactly ``compiled`` in the active generation, and
    nothing at all in the other one; the labeler answers per ``rs``."""
    st = map_state(ld)
    gen = st["active_gen"]
    assert gen == ld.active_gen, what
    # Results and ranges are counted over both generations: equal to the
    # active one's means the other holds nothing.
    assert ld.rule_map_entries() == map_entries(compiled), what
    assert len(st["pairs"]) == len(compiled.pairs), what
    assert st["pair_gens"] <= {gen}, f"{what}: pair entries of generation {st['pair_gens'] - {gen}} left"
    other = 1 - gen
    assert bytes(st["state"].gen[other]) == bytes(abi.GenState()), f"{what}: inactive generation state not empty"
    assert _l1_nonzero(ld, other) == 0, f"{what}: inactive direct tables not empty"
    active = st["state"].gen[gen]
    assert active.rs.default_side == compiled.default_side, what
    # Every entry is the one compile_rules asked for (the loader's own read-back).
    Loader._verify_gen(ld, gen, compiled)
    assert classify_all(ld) == reference(rs), what


# ---------------------------------------------------------------- fault injection

@pytest.fixture(scope="module")
def ld() -> Iterator[Loader]:
    with pytest.MonkeyPatch.context() as mp, Loader(meta_key=META_KEY) as loader:
        # The grace period protects concurrent XDP runs during a flip; test
        # runs are synchronous.
        mp.setattr("dropwatch.loader.GEN_GRACE_S", 0.0)
        loader.load()
        yield loader


def _fd_names(ld: Loader) -> dict[int, str]:
    return {fd: name for name, fd in ld.labeler.maps.items()}  # type: ignore[union-attr]


def record_calls(ld: Loader, monkeypatch: pytest.MonkeyPatch, compiled: CompiledRules,
                 method: str = "map_update") -> list[str]:
    """The map each ``method`` call of one clean apply_rules() goes to."""
    names = _fd_names(ld)
    seen: list[str] = []
    real = getattr(ld.lib, method)

    def spy(fd: int, *args: Any) -> Any:
        seen.append(names.get(fd, f"fd{fd}"))
        return real(fd, *args)

    with monkeypatch.context() as m:
        m.setattr(ld.lib, method, spy)
        ld.apply_rules(compiled)
    return seen


class Injected(OSError):
    pass


def failing(real: Callable[..., Any], at: int) -> Callable[..., Any]:
    calls = [0]

    def call(fd: int, *args: Any) -> Any:
        n = calls[0]
        calls[0] += 1
        if n == at:
            raise Injected(errno.ENOMEM, f"injected failure of map call #{at}")
        return real(fd, *args)

    return call


def _failing_store(real: Callable[..., Any], at: int) -> Callable[..., Any]:
    """Loader._store, raising at call #at after writing half of that region
    (a partial write, the worst case)."""
    calls = [0]

    def store(self: Loader, name: str, off: int, data: bytes) -> None:
        n = calls[0]
        calls[0] += 1
        if n == at:
            real(self, name, off, data[:len(data) // 2])
            raise Injected(errno.EFAULT, f"injected failure of store #{at} ({name})")
        real(self, name, off, data)

    return store


def test_fault_at_every_write_keeps_a(ld: Loader, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write of a reload happens before the flip (the ruleset state and
    the longest-prefix-match arrays are stores into mapped memory, PoP and
    pair entries map updates): a failure at any of them leaves A active and
    nothing of B behind."""
    a, b = compile_rules(RULES_A, IDS), compile_rules(RULES_B, IDS)
    ld.apply_rules(a)
    writes = record_calls(ld, monkeypatch, b)  # a clean B: learn its write sequence
    assert writes.count("dw_pairs") == len(b.pairs), writes
    stores: list[str] = []
    real_store = Loader._store
    with monkeypatch.context() as m:
        m.setattr(Loader, "_store", lambda self, name, off, data: (stores.append(name), real_store(self, name, off,
                                                                                               data))[1])
        ld.apply_rules(b)
    assert sorted(stores) == sorted(loader_mod.LPM_MAPS), stores
    tried = 0
    for at in range(len(writes) + len(stores)):
        ld.apply_rules(a)
        assert_only(ld, a, RULES_A, "A applied")
        with monkeypatch.context() as m:
            if at < len(writes):
                m.setattr(ld.lib, "map_update", failing(ld.lib.map_update, at))
                what = writes[at]
            else:
                m.setattr(Loader, "_store", _failing_store(real_store, at - len(writes)))
                what = stores[at - len(writes)]
            with pytest.raises(Injected):
                ld.apply_rules(b)
        assert_only(ld, a, RULES_A, f"after a fault at write #{at} ({what}) of B")
        tried += 1
    # The loader is not wedged: B applies cleanly afterwards.
    ld.apply_rules(b)
    assert_only(ld, b, RULES_B, "B after all the faults")
    assert tried == len(writes) + len(stores) > len(b.pairs)
    print(f"\n{tried} faults injected (one per map write and region store of B); A intact after each")


def test_fault_after_the_flip_is_not_reported_as_failure(ld: Loader, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = compile_rules(RULES_A, IDS), compile_rules(RULES_B, IDS)
    ld.apply_rules(a)
    deletes = record_calls(ld, monkeypatch, b, "map_delete")  # B replacing A: deletes A's entries
    assert len(deletes) == len(a.pairs), deletes
    bad = []
    for at in range(len(deletes)):
        ld.apply_rules(a)
        real = ld.lib.map_delete
        with monkeypatch.context() as m:
            m.setattr(ld.lib, "map_delete", failing(real, at))
            try:
                ld.apply_rules(b)
                raised = False
            except Injected:
                raised = True
        # Either it raised and A is what runs, or it returned and B runs.
        active = classify_all(ld)
        if (raised and active != reference(RULES_A)) or (not raised and active != reference(RULES_B)):
            bad.append((at, deletes[at], "raised" if raised else "returned"))
    ld.apply_rules(a)
    assert_only(ld, a, RULES_A, "A after the faults")
    assert not bad, f"cleanup faults after the flip that misreport which rules are active: {bad}"


def test_failed_verification_keeps_a(ld: Loader, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = compile_rules(RULES_A, IDS), compile_rules(RULES_B, IDS)
    ld.apply_rules(a)

    def bad_verify(self: Loader, gen: int, c: CompiledRules) -> None:
        raise DropwatchError("rule map verification failed (injected)")

    with monkeypatch.context() as m:
        m.setattr(Loader, "_verify_gen", bad_verify)
        with pytest.raises(DropwatchError, match="verification failed"):
            ld.apply_rules(b)
    assert_only(ld, a, RULES_A, "after a failed verification of B")


def corrupting_update(real: Callable[..., None], target_fds: set[int], nth: int) -> Callable[..., None]:
    """Pass every write through, but the nth one to ``target_fds`` with the
    first candidate's label id changed (what a wrong write would leave)."""
    calls = [0]

    def update(fd: int, key: object, value: object, flags: int = 0) -> None:
        if fd in target_fds:
            if calls[0] == nth:
                raw = bytearray(bytes(value))  # type: ignore[call-overload]
                raw[8] ^= 0x01  # struct dw_cand_list: c[0].label_id
                value = type(value).from_buffer_copy(bytes(raw))  # type: ignore[attr-defined]
            calls[0] += 1
        real(fd, key, value, flags)

    return update


@pytest.mark.parametrize("target", ["dw_pairs", *loader_mod.LPM_MAPS])
def test_corrupted_write_is_caught_by_read_back(ld: Loader, monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    """README: new rules are "written to the inactive half, read back, and
    made active". A write that lands wrong must be refused, A kept."""
    a, b = compile_rules(RULES_A, IDS), compile_rules(RULES_B, IDS)
    ld.apply_rules(a)
    maps = ld.labeler.maps  # type: ignore[union-attr]
    real_store = Loader._store

    def bad_store(self: Loader, name: str, off: int, data: bytes) -> None:
        if name == target:  # one bit flipped in the middle of the region
            raw = bytearray(data)
            raw[len(raw) // 2] ^= 0x01
            data = bytes(raw)
        real_store(self, name, off, data)

    try:
        with monkeypatch.context() as m:
            if target == "dw_pairs":
                m.setattr(ld.lib, "map_update", corrupting_update(ld.lib.map_update, {maps[target]}, 1))
            else:
                m.setattr(Loader, "_store", bad_store)
            with pytest.raises(DropwatchError, match="verification"):
                ld.apply_rules(b)
        assert_only(ld, a, RULES_A, f"after a corrupted {target} write")
    finally:
        ld.apply_rules(a)


def test_interrupt_mid_write_keeps_a(ld: Loader, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only errors: a KeyboardInterrupt/SystemExit in the middle of the
    writes also leaves A alone (apply_rules catches BaseException)."""
    a, b = compile_rules(RULES_A, IDS), compile_rules(RULES_B, IDS)
    ld.apply_rules(a)
    real = Loader._store
    calls = [0]

    def store(self: Loader, name: str, off: int, data: bytes) -> None:
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        real(self, name, off, data)

    with monkeypatch.context() as m:
        m.setattr(Loader, "_store", store)
        with pytest.raises(KeyboardInterrupt):
            ld.apply_rules(b)
    assert_only(ld, a, RULES_A, "after an interrupt")


# ---------------------------------------------------------------- capacity

def _many_prefixes(n: int) -> RuleSet:
    return parse_rules({"rules": [{"label": "custB", "dst": [f"10.{i // 256}.{i % 256}.0/24" for i in range(n)]}]})


def test_prefix_capacity_refused_before_the_kernel(ld: Loader, monkeypatch: pytest.MonkeyPatch) -> None:
    a = compile_rules(RULES_A, IDS)
    ld.apply_rules(a)
    monkeypatch.setattr(rules_mod, "MAX_PREFIX_ENTRIES", 16)
    fitting = compile_rules(_many_prefixes(16), IDS)  # exactly the limit: fits, all of it
    assert len(fitting.prefixes) == 16
    with pytest.raises(RulesError) as ei:
        compile_rules(_many_prefixes(17), IDS)
    msg = str(ei.value)
    assert "17 distinct prefixes" in msg and "at most 16" in msg, msg
    assert type(ei.value) is RulesError
    assert_only(ld, a, RULES_A, "after a refused over-capacity ruleset")
    # At the limit, everything lands in the kernel (nothing silently truncated).
    ld.apply_rules(fitting)
    assert ld.rule_map_entries() == map_entries(fitting)
    for i in (0, 15):
        pkt = P.build(4, "udp", src="1.1.1.1", dst=f"10.0.{i}.9")
        _, meta, _, _ = xdp_test_run(ld, pkt.frame)
        assert abi.decode_meta(meta, META_KEY)[1].label_id == IDS["custB"]  # type: ignore[union-attr]
    ld.apply_rules(a)


def test_pair_capacity_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules_mod, "MAX_PAIR_ENTRIES", 4)
    rs = parse_rules({"rules": [{"label": "peer", "src": [f"192.0.2.{i * 16}/28" for i in range(3)],
                                 "dst": ["10.30.0.0/16", "10.31.0.0/16"]}]})
    with pytest.raises(RulesError) as ei:
        compile_rules(rs, IDS)
    assert "6 src/dst prefix pairs" in str(ei.value) and "at most 4" in str(ei.value), str(ei.value)


def test_candidate_capacity_refused_naming_the_rule() -> None:
    rs = parse_rules({"rules": [{"label": "custA", "proto": "tcp", "dport": [p], "dst": ["10.10.1.0/24"]}
                                for p in range(1, 10)]})
    with pytest.raises(RulesError) as ei:
        compile_rules(rs, IDS)
    assert ei.value.rule == abi.DW_MAX_CANDS and f"at most {abi.DW_MAX_CANDS}" in str(ei.value), str(ei.value)


def test_compile_limits_match_the_kernel_maps(ld: Loader) -> None:
    """Both generations at their limit fit the kernel maps at the same time:
    results and pairs always; IPv4 ranges for the largest prefix count
    compile_rules accepts (each prefix adds at most 2 range starts, each
    /16 chunk a header and a first range, per direction)."""
    lb = ld.labeler
    assert lb is not None
    size = {name: ld.lib.map_max_entries(ld.lib.find_map(lb.obj, name))
            for name in ("dw_results", "dw_pairs", "dw_lpm4_rng")}
    assert size["dw_results"] == abi.DW_GENS * abi.DW_MAX_RESULTS
    assert abi.DW_GENS * rules_mod.MAX_PAIR_ENTRIES <= size["dw_pairs"]
    assert size["dw_lpm4_rng"] * 16 == ld.lpm4_entries
    assert 2 * rules_mod.MAX_PREFIX_ENTRIES + 2 * 2 * 65536 <= ld.lpm4_entries // abi.DW_GENS


def test_range_capacity_refused_before_the_flip(monkeypatch: pytest.MonkeyPatch) -> None:
    """A set that needs more range entries than the labeler holds is refused
    by apply_rules with a RulesError, before anything is written."""
    with pytest.MonkeyPatch.context() as mp, Loader(meta_key=META_KEY, lpm4_entries=1024) as small:
        mp.setattr("dropwatch.loader.GEN_GRACE_S", 0.0)
        small.load()
        a = compile_rules(RULES_A, IDS)
        small.apply_rules(a)
        # 6 /24s in each of 50 /16s (more than lanes hold): a 14-entry chunk
        # of ranges each, 700 > 512 per gen.
        big = compile_rules(parse_rules({"rules": [{"label": "custB", "dst": [f"10.{i}.{j}.0/24" for i in range(50)
                                                                                for j in range(1, 12, 2)]}]}), IDS)
        with pytest.raises(RulesError, match="range entries"):
            small.apply_rules(big)
        assert_only(small, a, RULES_A, "after an over-capacity set")


@pytest.mark.parametrize(("v4", "v6", "ok"), [(1 << 28, 1 << 25, True), (1 << 28, 1 << 26, False),
                                              ((1 << 28) + 32, 1024, False), (1000, 1024, False)])
def test_range_array_sizes_the_entries_can_address(v4: int, v6: int, ok: bool) -> None:
    """IPv6 at most 2^25 entries: a small chunk's offset (in u64s, relocated
    to the second generation's half) must fit the direct entry's 26 bits;
    IPv4 lanes live elsewhere, so its chunks may take up to 2^28."""
    if ok:
        Loader(meta_key=META_KEY, lpm4_entries=v4, lpm6_entries=v6).close()
    else:
        with pytest.raises(ValueError, match="range array entries"):
            Loader(meta_key=META_KEY, lpm4_entries=v4, lpm6_entries=v6)
    assert (2 * (1 << 25) - 1) <= abi.DW_LPM6_SMALL_OFF


def test_full_drop_map_is_counted(tmp_path: Path) -> None:
    """More distinct drop keys than the reader has slots: the extra drops
    are counted in DW_STAT_MAP_FULL (and reach the collector's map_full
    total, which /healthz and dropwatch_map_full_total export), and the
    reader never hands out a slot it does not have."""
    from dropwatch.collector import Collector
    from dropwatch.kernel import DropReasons, Kallsyms
    from dropwatch.store import Store

    with Loader(meta_key=META_KEY) as loader:
        loader.load()
        loader.attach_reader()
        assert loader.reader is not None
        cap = loader.lib.map_max_entries(loader.lib.find_map(loader.reader.obj, "dw_drop_slots"))
        assert cap == loader.drop_entries == abi.DW_MAX_DROP_KEYS
        # Fill every slot as the reader would (counts of 0: nothing dropped yet).
        keys = [(0, 0, 0, 0xFFFF_FFFF_0000_0000 + i, 0, 0, 0, 0, 0) for i in range(cap)]
        loader.write_drop_slots(keys, np.zeros((loader.ncpus, cap), dtype=np.uint64))
        before = loader.read_stats("reader").get(abi.Stat.MAP_FULL, 0)
        # Real drops: UDP to a closed port on loopback (NO_SOCKET), v4 and v6.
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        port = rx.getsockname()[1]
        rx.close()
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            for _ in range(20):
                tx.sendto(b"x", ("127.0.0.1", port))
            tx6.sendto(b"x", ("::1", port))
        finally:
            tx.close()
            tx6.close()
        stats = loader.read_stats("reader")
        assert stats.get(abi.Stat.MAP_FULL, 0) - before >= 21
        assert loader.drop_slots_used() == cap and loader.read_drops() == {}
        assert sum(1 for _ in iter_drop_keys(loader, loader.reader.maps["dw_drop_slots"])) == cap
        with Store(tmp_path / "h.db") as store:
            col = Collector(loader, store, DropReasons.load(), Kallsyms.load())
            col.poll()
            assert col.totals.map_full >= 21


def iter_drop_keys(ld: Loader, fd: int) -> Iterator[abi.DropKey]:
    cur: abi.DropKey | None = None
    nk = abi.DropKey()
    while ld.lib.map_next_key(fd, cur, nk):
        k = abi.DropKey.from_buffer_copy(bytes(nk))
        yield k
        cur = k

"""Tests for dropwatch.kernel: drop reason naming and kallsyms lookup."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest

from dropwatch.btf import Btf
from dropwatch.kernel import DropReasons, Kallsyms, has_btf, kernel_release

pytestmark = pytest.mark.unit

BTF_DIR = Path("/sys/kernel/btf")
needs_vmlinux = pytest.mark.skipif(not (BTF_DIR / "vmlinux").is_file(),
                                   reason="no /sys/kernel/btf/vmlinux")


class EnumBtfWriter:
    """Tiny raw BTF encoder for INT and ENUM types (split-aware)."""

    def __init__(self, base: EnumBtfWriter | None = None) -> None:
        self.strs = bytearray() if base else bytearray(b"\0")
        self.str_base: int = base.str_base + len(base.strs) if base else 0
        self.next_id: int = base.next_id if base else 1
        self.types = bytearray()

    def _s(self, text: str) -> int:
        off = self.str_base + len(self.strs)
        self.strs += text.encode() + b"\0"
        return off

    def _add(self, words: list[int]) -> int:
        self.types += struct.pack(f"<{len(words)}I", *(x & 0xFFFFFFFF for x in words))
        self.next_id += 1
        return self.next_id - 1

    def int_(self, name: str) -> int:
        return self._add([self._s(name), 1 << 24, 4, 32])

    def enum(self, name: str, values: dict[str, int]) -> int:
        words = [self._s(name) if name else 0, 6 << 24 | len(values), 4]
        for ename, v in values.items():
            words += [self._s(ename), v]
        return self._add(words)

    def build(self) -> bytes:
        n = len(self.types)
        return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, n, n, len(self.strs)) + \
            bytes(self.types) + bytes(self.strs)


CORE = {
    "SKB_NOT_DROPPED_YET": 0,
    "SKB_CONSUMED": 1,
    "SKB_DROP_REASON_NOT_SPECIFIED": 2,
    "SKB_DROP_REASON_NO_SOCKET": 3,
    "SKB_DROP_REASON_NETFILTER_DROP": 4,
    "SKB_DROP_REASON_MAX": 5,
    "SKB_DROP_REASON_SUBSYS_MASK": 0xFFFF0000,
}
SUBSYS = {
    "SKB_DROP_REASON_SUBSYS_CORE": 0,
    "SKB_DROP_REASON_SUBSYS_MAC80211_UNUSABLE": 1,
    "SKB_DROP_REASON_SUBSYS_OPENVSWITCH": 2,
    "SKB_DROP_REASON_SUBSYS_NUM": 3,
}


def make_btf_dir(tmp_path: Path, core: dict[str, int] | None = None,
                 subsys: dict[str, int] | None = None) -> Path:
    """A fake /sys/kernel/btf with vmlinux plus openvswitch/mac80211/dummy."""
    base = EnumBtfWriter()
    base.int_("int")
    if core is not None:
        base.enum("skb_drop_reason", core)
    if subsys is not None:
        base.enum("skb_drop_reason_subsys", subsys)
    d = tmp_path / "btf"
    d.mkdir()
    (d / "vmlinux").write_bytes(base.build())

    ovs = EnumBtfWriter(base)
    ovs.enum("ovs_drop_reason", {"__OVS_DROP_REASON": 0x20000, "OVS_DROP_LAST_ACTION": 0x20001,
                                 "OVS_DROP_ACTION_ERROR": 0x20002})
    (d / "openvswitch").write_bytes(ovs.build())
    mac = EnumBtfWriter(base)
    mac.enum("mac80211_drop_reason", {"RX_CONTINUE": 1, "RX_QUEUED": 0,
                                      "___RX_DROP_UNUSABLE": 0x10000,
                                      "RX_DROP_U_MIC_FAIL": 0x10001})
    (d / "mac80211").write_bytes(mac.build())
    dummy = EnumBtfWriter(base)
    dummy.enum("", {"DUMMY_X": 7})
    (d / "dummy").write_bytes(dummy.build())
    (d / "broken").write_bytes(b"not btf at all")
    return d


# --------------------------------------------------------------------------
# DropReasons on synthetic BTF
# --------------------------------------------------------------------------


def test_core_names_and_reverse(tmp_path: Path) -> None:
    dr = DropReasons.load(make_btf_dir(tmp_path, CORE, SUBSYS))
    assert dr.has_reasons
    assert dr.names() == ["NOT_DROPPED_YET", "CONSUMED", "NOT_SPECIFIED", "NO_SOCKET",
                          "NETFILTER_DROP"]
    assert dr.name(2) == "NOT_SPECIFIED"
    assert dr.name(4) == "NETFILTER_DROP"
    assert dr.name(5) == "UNKNOWN_5"  # MAX is not a reason
    assert dr.name(-1) == "UNKNOWN_-1"
    assert dr.value("netfilter_drop") == 4
    assert dr.value("SKB_DROP_REASON_NO_SOCKET") == 3
    assert dr.value("consumed") == 1
    assert dr.value("UNKNOWN_77") == 77
    assert dr.value("unknown_77") == 77
    assert dr.value("NOPE") is None
    assert dr.value("MAX") is None
    assert (dr.mask, dr.shift) == (0xFFFF0000, 16)
    assert dr.subsystems == {1: "MAC80211_UNUSABLE", 2: "OPENVSWITCH"}


def test_subsystem_reasons_from_module_btf_lazily(tmp_path: Path) -> None:
    dr = DropReasons.load(make_btf_dir(tmp_path, CORE, SUBSYS))
    dr.name(3)
    assert dr.loaded_modules == frozenset()  # no module BTF until needed
    assert dr.name(0x20001) == "OPENVSWITCH:OVS_DROP_LAST_ACTION"
    # The name-matching module is tried first and is enough.
    assert dr.loaded_modules == frozenset({"openvswitch"})
    assert dr.name(0x20002) == "OPENVSWITCH:OVS_DROP_ACTION_ERROR"
    assert dr.name(0x20063) == "OPENVSWITCH:UNKNOWN_99"
    assert dr.name(0x10001) == "MAC80211_UNUSABLE:RX_DROP_U_MIC_FAIL"
    assert dr.name(0x70001) == "UNKNOWN_458753"  # subsystem 7 does not exist
    assert dr.value("openvswitch:ovs_drop_last_action") == 0x20001
    assert dr.value("OPENVSWITCH:UNKNOWN_99") == 0x20063
    assert dr.value("OPENVSWITCH:NOT_A_REASON") is None
    assert dr.value("NOSUCH:UNKNOWN_1") is None


def test_subsystem_value_lookup_loads_modules(tmp_path: Path) -> None:
    dr = DropReasons.load(make_btf_dir(tmp_path, CORE, SUBSYS))
    assert dr.value("MAC80211_UNUSABLE:RX_DROP_U_MIC_FAIL") == 0x10001


def test_subsystem_mask_fallback(tmp_path: Path) -> None:
    core = {k: v for k, v in CORE.items() if k != "SKB_DROP_REASON_SUBSYS_MASK"}
    dr = DropReasons.load(make_btf_dir(tmp_path, core, SUBSYS))
    assert (dr.mask, dr.shift) == (0xFFFF0000, 16)
    assert dr.name(0x20001) == "OPENVSWITCH:OVS_DROP_LAST_ACTION"


def test_mask_in_other_enum_and_custom_shift(tmp_path: Path) -> None:
    core = {k: v for k, v in CORE.items() if k != "SKB_DROP_REASON_SUBSYS_MASK"}
    base = EnumBtfWriter()
    base.enum("skb_drop_reason", core)
    base.enum("skb_drop_reason_subsys", SUBSYS)
    base.enum("", {"SKB_DROP_REASON_SUBSYS_MASK": 0xFF000000})
    dr = DropReasons.from_btf(Btf.from_bytes(base.build()))
    assert (dr.mask, dr.shift) == (0xFF000000, 24)
    assert dr.name(0x2000005) == "OPENVSWITCH:UNKNOWN_5"  # btf_dir None: no module lookup


def test_pre_subsystem_kernel(tmp_path: Path) -> None:
    core = {k: v for k, v in CORE.items() if "SUBSYS" not in k}
    dr = DropReasons.load(make_btf_dir(tmp_path, core, None))
    assert dr.mask == 0 and dr.subsystems == {}
    assert dr.name(0x20001) == "UNKNOWN_131073"
    assert dr.loaded_modules == frozenset()


def test_kernel_without_drop_reasons(tmp_path: Path) -> None:
    dr = DropReasons.load(make_btf_dir(tmp_path, None, None))
    assert not dr.has_reasons
    assert dr.names() == []
    assert dr.name(0) == "UNKNOWN_0"
    assert dr.name(2) == "UNKNOWN_2"
    assert dr.value("UNKNOWN_2") == 2


def test_load_without_vmlinux(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        DropReasons.load(tmp_path)
    assert not has_btf(tmp_path)
    make_btf_dir(tmp_path, CORE, SUBSYS)
    assert has_btf(tmp_path / "btf")


def test_kernel_release() -> None:
    assert kernel_release() == os.uname().release


# --------------------------------------------------------------------------
# DropReasons on the running kernel
# --------------------------------------------------------------------------


@needs_vmlinux
def test_running_kernel_drop_reasons() -> None:
    dr = DropReasons.load()
    assert dr.has_reasons
    names = dr.names()
    for n in ("NOT_SPECIFIED", "NETFILTER_DROP", "NO_SOCKET", "SOCKET_RCVBUFF"):
        assert n in names
    assert "MAX" not in names and not any(n.startswith("SUBSYS") for n in names)
    for n in names:
        v = dr.value(n)
        assert v is not None and dr.name(v) == n
    top = max(dr.value(n) or 0 for n in names)
    assert dr.name(top + 1000) == f"UNKNOWN_{top + 1000}"
    assert dr.value(f"UNKNOWN_{top + 1000}") == top + 1000


# --------------------------------------------------------------------------
# Kallsyms
# --------------------------------------------------------------------------

KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff81000000 t __pi_text_alias
ffffffff81000100 T kfree_skb_reason
ffffffff81000180 t helper_local
ffffffff81000200 W weak_fn
ffffffff81000300 D some_data
ffffffff81000400 R some_rodata
ffffffff81000500 T last_core
ffffffffc0200000 t mod_rx\t[e1000]
ffffffffc0200040 T mod_tx\t[e1000]
ffffffffc0300000 t bpf_prog_abc_foo\t[bpf]
"""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_kallsyms_symbolize(tmp_path: Path) -> None:
    p = tmp_path / "kallsyms"
    p.write_text(KALLSYMS)
    ks = Kallsyms.load(p)
    assert not ks.restricted
    assert len(ks) == 8  # D/R dropped, duplicate address kept once
    assert ks.symbolize(0xFFFFFFFF81000000) == "_stext+0x0"
    assert ks.symbolize(0xFFFFFFFF81000105) == "kfree_skb_reason+0x5"
    assert ks.symbolize(0xFFFFFFFF81000190) == "helper_local+0x10"
    assert ks.symbolize(0xFFFFFFFF81000310) == "weak_fn+0x110"  # data symbols ignored
    assert ks.symbolize(0xFFFFFFFFC0200044) == "mod_tx+0x4 [e1000]"
    assert ks.symbolize(0xFFFFFFFFC0200001) == "mod_rx+0x1 [e1000]"
    assert ks.symbolize(0xFFFFFFFFC0300010) == "bpf_prog_abc_foo+0x10 [bpf]"
    assert ks.symbolize(0x1000) == "0x1000"  # below every symbol
    assert ks.symbolize(0xFFFFFFFFC0500000) == "0xffffffffc0500000"  # too far past last
    assert ks.address_of("mod_tx") == 0xFFFFFFFFC0200040


def test_kallsyms_restricted(tmp_path: Path) -> None:
    p = tmp_path / "kallsyms"
    p.write_text("".join(f"0000000000000000 {line[17:]}\n" for line in KALLSYMS.splitlines()))
    ks = Kallsyms.load(p)
    assert ks.restricted
    assert ks.symbolize(0xFFFFFFFF81000105) == "0xffffffff81000105"


def test_kallsyms_reload_rate_limit(tmp_path: Path) -> None:
    p = tmp_path / "kallsyms"
    p.write_text(KALLSYMS)
    clock = FakeClock()
    ks = Kallsyms.load(p, reload_interval_s=60.0, clock=clock)
    new_mod = 0xFFFFFFFFC0500010
    assert ks.symbolize(new_mod) == hex(new_mod)
    assert ks.reload_count == 0  # just loaded: a miss does not re-read yet

    p.write_text(KALLSYMS + "ffffffffc0500000 t late_fn\t[late]\n")
    clock.now += 30
    assert ks.symbolize(new_mod) == hex(new_mod)
    assert ks.reload_count == 0
    clock.now += 31
    assert ks.symbolize(new_mod) == "late_fn+0x10 [late]"
    assert ks.reload_count == 1
    assert ks.symbolize(new_mod + 1) == "late_fn+0x11 [late]"  # hit: no reload
    clock.now += 5
    assert ks.symbolize(0x10) == "0x10"  # miss, but within the interval
    assert ks.reload_count == 1


def test_kallsyms_cache_is_bounded(tmp_path: Path) -> None:
    p = tmp_path / "kallsyms"
    p.write_text(KALLSYMS)
    ks = Kallsyms(p, cache_size=4)
    for off in range(20):
        assert ks.symbolize(0xFFFFFFFF81000100 + off) == f"kfree_skb_reason+0x{off:x}"
    assert ks.cached_entries == 4


@pytest.mark.skipif(not Path("/proc/kallsyms").is_file(), reason="no /proc/kallsyms")
def test_real_kallsyms() -> None:
    start = time.perf_counter()
    ks = Kallsyms.load()
    elapsed = time.perf_counter() - start
    if ks.restricted:
        pytest.skip("kallsyms addresses are hidden (kptr_restrict / not root)")
    assert elapsed < 1.0, f"loading /proc/kallsyms took {elapsed:.2f}s"
    for name in ("kfree_skb_reason", "sk_skb_reason_drop"):
        addr = ks.address_of(name)
        if addr is not None:
            assert ks.symbolize(addr + 5) == f"{name}+0x5"
            break
    else:
        pytest.fail("neither kfree_skb_reason nor sk_skb_reason_drop in /proc/kallsyms")

"""Tests for dropwatch.btf using synthetic BTF blobs and the running kernel."""

from __future__ import annotations

import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from dropwatch.btf import (
    Btf,
    BtfError,
    CompositeType,
    EnumType,
    IntType,
    Kind,
    RefType,
    Void,
)

pytestmark = pytest.mark.unit

VMLINUX = Path("/sys/kernel/btf/vmlinux")
needs_vmlinux = pytest.mark.skipif(not VMLINUX.is_file(), reason="no /sys/kernel/btf/vmlinux")


class BtfWriter:
    """Minimal raw BTF encoder, just enough to build test fixtures.

    For split BTF pass ``base``: type ids and string offsets then continue
    after the base writer's, as the kernel does for module BTF.
    """

    def __init__(self, base: BtfWriter | None = None, endian: str = "<") -> None:
        self.endian = endian
        self.base = base
        self.strs = bytearray() if base else bytearray(b"\0")
        self.str_base: int = base.str_base + len(base.strs) if base else 0
        self._str_index: dict[str, int] = {} if base else {"": 0}
        self.next_id: int = base.next_id if base else 1
        self.types = bytearray()

    def s(self, text: str) -> int:
        if text == "" and self.base:
            return 0
        if text not in self._str_index:
            self._str_index[text] = self.str_base + len(self.strs)
            self.strs += text.encode() + b"\0"
        return self._str_index[text]

    def raw(self, name: str, kind: int, vlen: int, size_or_type: int,
            extra: list[int] | None = None, kflag: bool = False) -> int:
        info = (int(kflag) << 31) | (kind << 24) | vlen
        words = [self.s(name), info, size_or_type, *(extra or [])]
        self.types += struct.pack(f"{self.endian}{len(words)}I", *(w & 0xFFFFFFFF for w in words))
        tid = self.next_id
        self.next_id += 1
        return tid

    def int_(self, name: str, size: int, signed: bool = False, bits: int | None = None,
             offset: int = 0) -> int:
        enc = (1 if signed else 0) << 24 | offset << 16 | (bits if bits is not None else size * 8)
        return self.raw(name, 1, 0, size, [enc])

    def ptr(self, t: int) -> int:
        return self.raw("", 2, 0, t)

    def array(self, elem: int, index: int, n: int) -> int:
        return self.raw("", 3, 0, 0, [elem, index, n])

    def struct(self, name: str, size: int, members: list[tuple[str, int, int, int]],
               union: bool = False, kflag: bool = False) -> int:
        extra: list[int] = []
        for mname, mtype, bit_off, bf in members:
            off = (bf << 24 | bit_off) if kflag else bit_off
            extra += [self.s(mname), mtype, off]
        return self.raw(name, 5 if union else 4, len(members), size, extra, kflag)

    def enum(self, name: str, values: list[tuple[str, int]], size: int = 4,
             signed: bool = False) -> int:
        extra: list[int] = []
        for ename, v in values:
            extra += [self.s(ename), v]
        return self.raw(name, 6, len(values), size, extra, signed)

    def enum64(self, name: str, values: list[tuple[str, int]], signed: bool = False) -> int:
        extra: list[int] = []
        for ename, value in values:
            v = value & ((1 << 64) - 1)
            extra += [self.s(ename), v & 0xFFFFFFFF, v >> 32]
        return self.raw(name, 19, len(values), 8, extra, signed)

    def fwd(self, name: str, union: bool = False) -> int:
        return self.raw(name, 7, 0, 0, kflag=union)

    def typedef(self, name: str, t: int) -> int:
        return self.raw(name, 8, 0, t)

    def volatile(self, t: int) -> int:
        return self.raw("", 9, 0, t)

    def const(self, t: int) -> int:
        return self.raw("", 10, 0, t)

    def restrict(self, t: int) -> int:
        return self.raw("", 11, 0, t)

    def func(self, name: str, proto: int, linkage: int = 1) -> int:
        return self.raw(name, 12, linkage, proto)

    def func_proto(self, ret: int, params: list[tuple[str, int]]) -> int:
        extra: list[int] = []
        for pname, ptype in params:
            extra += [self.s(pname), ptype]
        return self.raw("", 13, len(params), ret, extra)

    def var(self, name: str, t: int, linkage: int = 1) -> int:
        return self.raw(name, 14, 0, t, [linkage])

    def datasec(self, name: str, size: int, vars_: list[tuple[int, int, int]]) -> int:
        extra: list[int] = []
        for vt, off, sz in vars_:
            extra += [vt, off, sz]
        return self.raw(name, 15, len(vars_), size, extra)

    def float_(self, name: str, size: int) -> int:
        return self.raw(name, 16, 0, size)

    def decl_tag(self, name: str, t: int, component_idx: int = -1) -> int:
        return self.raw(name, 17, 0, t, [component_idx])

    def type_tag(self, name: str, t: int) -> int:
        return self.raw(name, 18, 0, t)

    def build(self) -> bytes:
        hdr = struct.pack(f"{self.endian}HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types),
                          len(self.types), len(self.strs))
        return hdr + bytes(self.types) + bytes(self.strs)


def elf64_with_sections(sections: dict[str, bytes]) -> bytes:
    """A bare ELF64 LE relocatable with the given sections (no symbols)."""
    names = bytearray(b"\0")
    name_offs = {}
    for n in [*sections, ".shstrtab"]:
        name_offs[n] = len(names)
        names += n.encode() + b"\0"
    body = bytearray()
    placed: list[tuple[str, int, int]] = []
    data_start = 64
    for n, content in [*sections.items(), (".shstrtab", bytes(names))]:
        placed.append((n, data_start + len(body), len(content)))
        body += content
        body += b"\0" * (-len(body) % 8)
    shoff = data_start + len(body)
    shnum = len(placed) + 1
    ident = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 1, 247, 1, 0, 0, shoff, 0, 64, 0, 0, 64,
                               shnum, shnum - 1)
    shdrs = b"\0" * 64
    for n, off, size in placed:
        sh_type = 3 if n == ".shstrtab" else 1
        shdrs += struct.pack("<IIQQQQIIQQ", name_offs[n], sh_type, 0, 0, off, size, 0, 0, 1, 0)
    return ehdr + bytes(body) + shdrs


# --------------------------------------------------------------------------
# synthetic blobs
# --------------------------------------------------------------------------


def test_struct_with_bitfields_kflag_and_legacy() -> None:
    w = BtfWriter()
    u8 = w.int_("unsigned char", 1)
    u32 = w.int_("unsigned int", 4)
    flags = w.struct("flags", 8, [
        ("a", u8, 0, 0),
        ("b", u32, 8, 3),    # kflag bitfield: 3 bits at bit 8
        ("c", u32, 11, 5),
        ("d", u32, 32, 0),
    ], kflag=True)
    legacy_bf = w.int_("unsigned int", 4, bits=4, offset=2)
    legacy = w.struct("legacy", 4, [("x", legacy_bf, 8, 0)])
    btf = Btf.from_bytes(w.build())

    t = btf.types[flags]
    assert isinstance(t, CompositeType) and not t.is_union
    assert [(m.name, m.bit_offset, m.bitfield_size) for m in t.members] == [
        ("a", 0, 0), ("b", 8, 3), ("c", 11, 5), ("d", 32, 0)]

    lay = btf.struct_layout("flags")
    assert lay.size == 8
    assert lay.members["a"].offset == 0 and lay.members["a"].size == 1
    assert not lay.members["a"].is_bitfield
    b, c = lay.members["b"], lay.members["c"]
    assert (b.offset, b.bit_offset, b.bitfield_size, b.size) == (1, 8, 3, 4)
    assert (c.offset, c.bit_offset, c.bitfield_size) == (1, 11, 5)
    assert lay.members["d"].offset == 4 and lay.members["d"].type_name == "unsigned int"

    x = btf.struct_layout("legacy").members["x"]
    assert (x.bit_offset, x.bitfield_size, x.offset) == (10, 4, 1)
    assert legacy == btf.find("legacy", "struct")


def test_typedef_chains_and_names() -> None:
    w = BtfWriter()
    i32 = w.int_("int", 4, signed=True)
    td1 = w.typedef("s32", i32)
    vol = w.volatile(td1)
    cst = w.const(vol)
    td2 = w.typedef("cs32_t", cst)
    tag = w.type_tag("user", td2)
    rst = w.restrict(w.ptr(tag))
    btf = Btf.from_bytes(w.build())

    assert btf.resolve_size(td2) == 4
    assert btf.resolve_size(tag) == 4
    assert btf.resolve_size(rst) == 8
    resolved = btf.resolve(td2)
    assert isinstance(resolved, IntType) and resolved.signed and resolved.bits == 32
    assert btf.type_name(td2) == "cs32_t"
    assert btf.type_name(cst) == "const volatile s32"
    assert btf.type_name(rst) == "restrict cs32_t *"
    t = btf.types[td1]
    assert isinstance(t, RefType) and t.kind is Kind.TYPEDEF and t.type == i32


def test_typedef_loop_is_an_error() -> None:
    w = BtfWriter()
    w.typedef("a", 2)  # id 1 -> 2
    w.typedef("b", 1)  # id 2 -> 1
    btf = Btf.from_bytes(w.build(), source="loop.btf")
    with pytest.raises(BtfError, match=r"loop\.btf"):
        btf.resolve_size(1)


def test_arrays() -> None:
    w = BtfWriter()
    u16 = w.int_("unsigned short", 2)
    idx = w.int_("__ARRAY_SIZE_TYPE__", 4)
    td = w.typedef("__u16", u16)
    arr = w.array(td, idx, 6)
    arr2 = w.array(arr, idx, 3)  # __u16[3][6] is an array of arrays
    flex = w.array(u16, idx, 0)
    w.struct("pkt", 40, [("ports", arr, 0, 0), ("grid", arr2, 96, 0), ("tail", flex, 320, 0)])
    btf = Btf.from_bytes(w.build())
    assert btf.resolve_size(arr) == 12
    assert btf.resolve_size(arr2) == 36
    lay = btf.struct_layout("pkt")
    assert lay.members["ports"].size == 12
    assert lay.members["ports"].type_name == "__u16[6]"
    assert lay.members["grid"].offset == 12 and lay.members["grid"].size == 36
    assert lay.members["tail"].size == 0 and lay.members["tail"].offset == 40


def test_enums_signed_unsigned_and_enum64() -> None:
    w = BtfWriter()
    w.enum("uns", [("U_ZERO", 0), ("U_MASK", 0xFFFF0000)])
    w.enum("sig", [("S_NEG", -1), ("S_POS", 7)], signed=True)
    w.enum64("big", [("B_HUGE", 0xFFFF_0000_0000_0001), ("B_ONE", 1)])
    w.enum64("big_signed", [("BS_NEG", -5), ("BS_MAX", (1 << 63) - 1)], signed=True)
    w.enum("", [("ANON_A", 3)])
    w.enum("fwd_only", [])
    btf = Btf.from_bytes(w.build())

    assert btf.enum_values("uns") == {"U_ZERO": 0, "U_MASK": 0xFFFF0000}
    assert btf.enum_values("sig") == {"S_NEG": -1, "S_POS": 7}
    assert btf.enum_values("big") == {"B_HUGE": 0xFFFF_0000_0000_0001, "B_ONE": 1}
    assert btf.enum_values("big_signed") == {"BS_NEG": -5, "BS_MAX": (1 << 63) - 1}
    assert btf.enum_values("fwd_only") == {}
    with pytest.raises(KeyError, match="nope"):
        btf.enum_values("nope")

    enums = dict(btf.all_enums())
    assert enums[""] == {"ANON_A": 3}
    assert set(enums) == {"uns", "sig", "big", "big_signed", "", "fwd_only"}
    t = btf.types[btf.find("big_signed") or 0]
    assert isinstance(t, EnumType) and t.kind is Kind.ENUM64 and t.signed and t.size == 8


def test_anonymous_members_are_flattened() -> None:
    w = BtfWriter()
    u16 = w.int_("unsigned short", 2)
    u64 = w.int_("unsigned long long", 8)
    inner = w.struct("", 4, [("mac_header", u16, 0, 0), ("network_header", u16, 16, 0)])
    uni = w.struct("", 8, [("", inner, 0, 0), ("headers", u64, 0, 0)], union=True)
    w.struct("outer", 24, [("first", u64, 0, 0), ("", uni, 64, 0), ("last", u64, 128, 0)])
    btf = Btf.from_bytes(w.build())
    lay = btf.struct_layout("outer")
    assert set(lay.members) == {"first", "mac_header", "network_header", "headers", "last"}
    assert lay.members["mac_header"].offset == 8
    assert lay.members["network_header"].offset == 10
    assert lay.members["headers"].offset == 8
    assert lay.members["last"].offset == 16


def test_every_kind_is_skipped_correctly() -> None:
    w = BtfWriter()
    i = w.int_("int", 4, signed=True)
    p = w.ptr(i)
    idx = w.int_("__ARRAY_SIZE_TYPE__", 4)
    w.array(i, idx, 2)
    w.struct("s", 4, [("m", i, 0, 0)])
    w.struct("u", 4, [("m", i, 0, 0), ("n", p, 0, 0)], union=True)
    w.enum("e", [("E0", 0), ("E1", 1)])
    w.fwd("f")
    w.fwd("fu", union=True)
    w.typedef("t", i)
    w.volatile(i)
    w.const(i)
    w.restrict(p)
    proto = w.func_proto(i, [("a", i), ("b", p)])
    fn = w.func("fn", proto)
    v = w.var("v", i)
    w.datasec(".data", 4, [(v, 0, 4)])
    dbl = w.float_("double", 8)
    w.decl_tag("tag", fn, 1)
    w.type_tag("user", i)
    w.enum64("e64", [("X", 1 << 40)])
    last = w.struct("after", 8, [("z", dbl, 0, 0)])
    btf = Btf.from_bytes(w.build())
    assert btf.last_id == last
    assert {btf.types[t].kind for t in range(1, last + 1)} == set(Kind) - {Kind.UNKN}
    assert btf.struct_layout("after").members["z"].size == 8
    assert btf.type_name(proto) == "int (*)(int, int *)"
    assert isinstance(btf.types[0], Void)
    assert len(btf.types) == last + 1
    with pytest.raises(KeyError):
        btf.types[last + 1]
    assert btf.find("fu", "fwd") is not None
    assert btf.find("fu", Kind.STRUCT) is None
    with pytest.raises(ValueError, match="kind"):
        btf.find("fu", "bogus")


def test_datasec_vars() -> None:
    w = BtfWriter()
    i = w.int_("int", 4, signed=True)
    a = w.var("counter", i)
    b = w.var("limits", w.array(i, i, 4))
    w.datasec(".bss", 0, [(a, 0, 4), (b, 8, 16)])
    btf = Btf.from_bytes(w.build())
    assert btf.datasec_vars(".bss") == {"counter": (0, 4), "limits": (8, 16)}
    assert btf.resolve_size(b) == 16
    with pytest.raises(KeyError):
        btf.datasec_vars(".data")


def test_split_btf_continues_ids_and_strings() -> None:
    bw = BtfWriter()
    u32 = bw.int_("unsigned int", 4)
    bw.struct("sk_buff", 8, [("len", u32, 0, 0)])
    bw.enum("base_enum", [("BASE_A", 1)])
    base = Btf.from_bytes(bw.build(), source="vmlinux")

    mw = BtfWriter(base=bw)
    first = mw.ptr(u32)
    # Reuse of a base string is by its base offset, as pahole does.
    mw.struct("mod_s", 16, [("len", u32, 0, 0), ("p", first, 64, 0)])
    mw.enum("mod_reason", [("MOD_A", 0x20001)])
    mod = Btf.from_bytes(mw.build(), base=base, source="openvswitch")

    assert mod.start_id == base.last_id + 1 == first
    assert list(mod.own_ids()) == list(range(first, mod.last_id + 1))
    assert mod.find("sk_buff", "struct") == 2
    assert mod.types[u32].name == "unsigned int"
    lay = mod.struct_layout("mod_s")
    assert lay.members["p"].type_name == "unsigned int *"
    assert lay.members["len"].size == 4
    assert dict(mod.all_enums(include_base=False)) == {"mod_reason": {"MOD_A": 0x20001}}
    assert dict(mod.all_enums()) == {"base_enum": {"BASE_A": 1},
                                     "mod_reason": {"MOD_A": 0x20001}}
    assert mod.enum_values("base_enum") == {"BASE_A": 1}


def test_big_endian_blob() -> None:
    w = BtfWriter(endian=">")
    u32 = w.int_("unsigned int", 4)
    w.struct("be", 8, [("a", u32, 0, 0), ("b", u32, 32, 0)])
    w.enum("bee", [("M", 0xFFFF0000)])
    btf = Btf.from_bytes(w.build())
    assert btf.byteorder == "big"
    assert btf.struct_layout("be").members["b"].offset == 4
    assert btf.enum_values("bee") == {"M": 0xFFFF0000}


def test_errors_name_the_source(tmp_path: Path) -> None:
    w = BtfWriter()
    w.int_("int", 4)
    good = w.build()

    bad = tmp_path / "bad_magic.btf"
    bad.write_bytes(b"\x00\x00" + good[2:])
    with pytest.raises(BtfError, match=r"bad_magic\.btf.*bad magic"):
        Btf.from_file(bad)

    short = tmp_path / "short.btf"
    short.write_bytes(good[:10])
    with pytest.raises(BtfError, match=r"short\.btf.*truncated"):
        Btf.from_file(short)

    cut = tmp_path / "cut.btf"
    cut.write_bytes(good[:-3])
    with pytest.raises(BtfError, match=r"cut\.btf.*truncated"):
        Btf.from_file(cut)

    # Header claims a whole type section, but the INT's trailing word is missing.
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 12, 12, 1)
    with pytest.raises(BtfError, match="truncated type id 1"):
        Btf.from_bytes(hdr + good[24:36] + b"\0")

    unknown = BtfWriter()
    unknown.int_("int", 4)
    unknown.raw("x", 25, 0, 0)
    with pytest.raises(BtfError, match="unknown kind 25 at type id 2"):
        Btf.from_bytes(unknown.build())

    with pytest.raises(BtfError, match="version"):
        Btf.from_bytes(good[:2] + b"\x02" + good[3:])

    with pytest.raises(BtfError, match="out of range"):
        Btf.from_bytes(good).type(99)


def test_from_elf_synthetic(tmp_path: Path) -> None:
    w = BtfWriter()
    i = w.int_("int", 4, signed=True)
    v = w.var("counter", i)
    w.datasec(".data", 0, [(v, 0, 4)])
    obj = tmp_path / "prog.o"
    obj.write_bytes(elf64_with_sections({".text": b"\x95" + b"\0" * 7, ".BTF": w.build()}))
    btf = Btf.from_elf(obj)
    assert btf.datasec_vars(".data") == {"counter": (0, 4)}

    no_btf = tmp_path / "nobtf.o"
    no_btf.write_bytes(elf64_with_sections({".text": b"\0" * 8}))
    with pytest.raises(BtfError, match=r"nobtf\.o.*no \.BTF section"):
        Btf.from_elf(no_btf)
    not_elf = tmp_path / "x.o"
    not_elf.write_bytes(b"hello" * 20)
    with pytest.raises(BtfError, match=r"x\.o.*not an ELF"):
        Btf.from_elf(not_elf)


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang not installed")
def test_from_elf_clang_object(tmp_path: Path) -> None:
    src = tmp_path / "t.c"
    src.write_text(
        "struct pt { int a; char b[3]; unsigned c:3, d:5; };\n"
        "int counter = 5;\n"
        "volatile const int cfg = 7;\n"
        "struct pt gpt;\n"
        'char LICENSE[] __attribute__((section("license"))) = "GPL";\n'
        '__attribute__((section("tc"))) int prog(void *ctx)'
        " { return counter + gpt.d + cfg; }\n"
    )
    obj = tmp_path / "t.o"
    proc = subprocess.run(["clang", "-g", "-O2", "-target", "bpf", "-c", str(src), "-o", str(obj)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"clang cannot build BPF objects: {proc.stderr[:200]}")
    btf = Btf.from_elf(obj)
    assert btf.datasec_vars(".data") == {"counter": (0, 4)}
    assert btf.datasec_vars(".rodata") == {"cfg": (0, 4)}
    assert btf.datasec_vars(".bss") == {"gpt": (0, 8)}
    lay = btf.struct_layout("pt")
    assert lay.size == 8
    assert lay.members["b"].offset == 4 and lay.members["b"].size == 3
    assert (lay.members["d"].bit_offset, lay.members["d"].bitfield_size) == (59, 5)


# --------------------------------------------------------------------------
# running kernel
# --------------------------------------------------------------------------


@needs_vmlinux
def test_vmlinux_parse_time() -> None:
    start = time.perf_counter()
    btf = Btf.from_file(VMLINUX)
    btf.find("sk_buff", "struct")  # includes building the name index
    elapsed = time.perf_counter() - start
    assert btf.last_id > 10_000
    assert elapsed < 1.5, f"parsing {VMLINUX} took {elapsed:.2f}s"


@needs_vmlinux
def test_vmlinux_drop_reason_enum() -> None:
    values = Btf.from_file(VMLINUX).enum_values("skb_drop_reason")
    for name in ("NETFILTER_DROP", "NO_SOCKET", "SOCKET_RCVBUFF", "NOT_SPECIFIED"):
        assert f"SKB_DROP_REASON_{name}" in values


@needs_vmlinux
def test_vmlinux_sk_buff_layout() -> None:
    btf = Btf.from_file(VMLINUX)
    lay = btf.struct_layout("sk_buff")
    for field in ("head", "data", "mac_header", "end", "len", "dev"):
        assert field in lay.members, field
    head, end, mac = lay.members["head"], lay.members["end"], lay.members["mac_header"]
    assert head.size == 8 and head.type_name.endswith("*")
    assert mac.size == 2
    assert end.size in (4, 8)  # sk_buff_data_t: offset or pointer
    assert 0 < mac.offset < lay.size and 0 < end.offset < lay.size
    shinfo = btf.struct_layout("skb_shared_info")
    assert shinfo.members["meta_len"].size == 1

"""dropwatch/abi.py against bpf/dropwatch.h and the compiled objects.

The layouts are checked against the BTF that clang emitted into
labeler.bpf.o / drop_reader.bpf.o (what the kernel actually runs with), the
constants against the header text. No root needed. That the record the
labeler writes passes abi.meta_check is in test_labeler.py (it needs a
test run).
"""

from __future__ import annotations

import ast
import ctypes
import enum
import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dropwatch import abi
from dropwatch.btf import ArrayType, Btf, CompositeType, IntType

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
HEADER = ROOT / "bpf" / "dropwatch.h"
OBJECTS = ("labeler.bpf.o", "drop_reader.bpf.o")

# Defines in the header that user space has no use for.
UNMIRRORED_DEFINES = {
    "DW_META_MAX_OLD",  # pre-6.8 metadata limit: documentation for the BPF side
}
# enum name in the header -> (mirror enum, prefix, constant for its __COUNT)
ENUM_MIRRORS: dict[str, tuple[type[enum.IntEnum], str, str | None]] = {
    "dw_side": (abi.Side, "DW_SIDE_", "DW_SIDE_COUNT"),
    "dw_source": (abi.Source, "DW_SRC_", None),
    "dw_stat": (abi.Stat, "DW_STAT_", "DW_STAT_COUNT"),
}

# dw_meta and dw_sample are only locals in the programs; the BPF sources
# anchor them in BTF (dw_btf_anchor_*), so every mirror is checked here.
NOT_IN_OBJECT_BTF: dict[str, str] = {}
# dw_* structs private to the BPF side (never read or written by user space).
BPF_PRIVATE_STRUCTS = {"dw_result", "dw_bucket"}


# ---------------------------------------------------------------- header text

def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.DOTALL)
    return re.sub(r"//[^\n]*", "", text)


def _c_int_expr(expr: str, names: dict[str, int]) -> int:
    """Evaluate a simple C integer constant expression (literals with u/l
    suffixes, + - * << >> | & ~, parentheses, earlier names)."""
    expr = re.sub(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]*\b", r"\1", expr.strip())
    tree = ast.parse(expr, mode="eval")
    ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.LShift: lambda a, b: a << b, ast.RShift: lambda a, b: a >> b,
           ast.BitOr: lambda a, b: a | b, ast.BitAnd: lambda a, b: a & b}

    def ev(n: ast.AST) -> int:
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant) and isinstance(n.value, int):
            return n.value
        if isinstance(n, ast.Name) and n.id in names:
            return names[n.id]
        if isinstance(n, ast.BinOp) and type(n.op) in ops:
            return ops[type(n.op)](ev(n.left), ev(n.right))
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -ev(n.operand)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.Invert):
            return ~ev(n.operand)
        raise ValueError(f"not a simple integer expression: {expr!r}")

    return ev(tree)


# A #define line or an enum body, in the header's order: a name is known
# from where C knows it (a define may use an earlier enum member).
_HEADER_ITEM = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(DW_\w+)(?!\()[ \t]+([^\n]+?)[ \t]*$"
                          r"|\benum\s+(\w+)\s*\{(.*?)\}\s*;", re.MULTILINE | re.DOTALL)


@functools.cache
def _header() -> tuple[dict[str, int | None], dict[str, dict[str, int]]]:
    defines: dict[str, int | None] = {}
    enums: dict[str, dict[str, int]] = {}
    known: dict[str, int] = {}
    for m in _HEADER_ITEM.finditer(_strip_comments(HEADER.read_text())):
        if m.group(1):
            try:
                val: int | None = _c_int_expr(m.group(2), known)
            except (ValueError, SyntaxError):
                val = None
            defines[m.group(1)] = val
            if val is not None:
                known[m.group(1)] = val
            continue
        vals: dict[str, int] = {}
        nxt = 0
        for item in m.group(4).split(","):
            item = item.strip()
            if not item:
                continue
            name, _, expr = item.partition("=")
            name = name.strip()
            nxt = _c_int_expr(expr, {**known, **vals}) if expr.strip() else nxt
            vals[name] = nxt
            nxt += 1
        enums[m.group(3)] = vals
        known.update(vals)
    return defines, enums


def header_defines() -> dict[str, int | None]:
    """DW_* object-like macros -> value (None: not an integer expression)."""
    return _header()[0]


def header_enums() -> dict[str, dict[str, int]]:
    return _header()[1]


def test_header_parser_sanity() -> None:
    defs = header_defines()
    assert defs["DW_META_MAGIC"] == 0xD70B
    assert defs["DW_MAX_PREFIXES"] == 1 << 20
    enums = header_enums()
    assert set(ENUM_MIRRORS) <= set(enums)
    assert enums["dw_stat"]["DW_STAT_XDP_META_WRITTEN"] == 1  # implicit increment
    assert enums["dw_stat"]["DW_STAT_DROPS_LABELED"] == 9  # continues after "= 8"
    assert _c_int_expr("(1 << 20)", {}) == 1 << 20
    assert _c_int_expr("(DW_A * 2u) | 1", {"DW_A": 4}) == 9


def _abi_constants() -> dict[str, int]:
    return {k: v for k, v in vars(abi).items() if k.startswith("DW_") and isinstance(v, int)}


def test_every_abi_constant_equals_the_header() -> None:
    defs = header_defines()
    enum_counts = {cnt: header_enums()[e][f"{prefix}_COUNT"] for e, (_, prefix, cnt) in ENUM_MIRRORS.items()
                   if cnt}
    wrong = {}
    for name, value in _abi_constants().items():
        if name in enum_counts:
            want = enum_counts[name]
        else:
            assert name in defs, f"abi.{name} has no #define in {HEADER.name}"
            want = defs[name]
        if want != value:
            wrong[name] = (value, want)
    assert not wrong, f"abi value != header value: {wrong}"


def test_every_header_define_is_mirrored() -> None:
    abi_consts = _abi_constants()
    defs = header_defines()
    unmirrored = sorted(set(defs) - set(abi_consts) - UNMIRRORED_DEFINES)
    assert not unmirrored, f"#defines in {HEADER.name} without a value in dropwatch/abi.py: {unmirrored}"
    stale = sorted(UNMIRRORED_DEFINES - set(defs))
    assert not stale, f"UNMIRRORED_DEFINES lists names the header no longer has: {stale}"


@pytest.mark.parametrize("enum_name", sorted(ENUM_MIRRORS))
def test_enum_mirrors_header(enum_name: str) -> None:
    mirror, prefix, count_const = ENUM_MIRRORS[enum_name]
    values = header_enums()[enum_name]
    header_members = {k.removeprefix(prefix): v for k, v in values.items() if not k.startswith(prefix + "_")}
    assert {m.name: int(m) for m in mirror} == header_members
    if count_const:
        assert getattr(abi, count_const) == values[prefix + "_COUNT"]
        assert all(int(m) < getattr(abi, count_const) for m in mirror)


# ---------------------------------------------------------------- BTF layouts

@functools.cache
def _object_btf(obj_dir: str, name: str) -> Btf:
    return Btf.from_elf(Path(obj_dir) / name)


def _ctypes_signed(ctype: type) -> bool:
    return ctype(-1).value < 0  # type: ignore[call-arg,attr-defined,no-any-return]


def _check_layout(btf: Btf, struct_name: str, mirror: type[ctypes.Structure]) -> None:
    lay = btf.struct_layout(struct_name)
    where = f"{btf.source}: struct {struct_name}"
    assert lay.size == ctypes.sizeof(mirror), f"{where}: size {lay.size} != ctypes {ctypes.sizeof(mirror)}"
    fields = [f[0] for f in mirror._fields_]  # type: ignore[attr-defined]
    assert sorted(lay.members) == sorted(fields), f"{where}: members differ"
    mirror_by_type = {v: k for k, v in abi.MIRRORS.items()}
    for fname, ftype in mirror._fields_:  # type: ignore[attr-defined]
        desc = getattr(mirror, fname)
        mem = lay.members[fname]
        assert mem.bitfield_size == 0, f"{where}.{fname} is a bitfield"
        assert desc.offset == mem.offset, f"{where}.{fname}: offset {mem.offset} != ctypes {desc.offset}"
        assert desc.size == mem.size, f"{where}.{fname}: size {mem.size} != ctypes {desc.size}"
        # The type itself: unsigned ints of the same width, arrays of the same
        # length, nested structs that are themselves mirrored.
        t = btf.resolve(mem.type_id)
        if issubclass(ftype, ctypes.Array):
            assert isinstance(t, ArrayType), f"{where}.{fname}: BTF {t.kind.name}, ctypes array"
            assert t.nelems == ftype._length_, f"{where}.{fname}: {t.nelems} elements != {ftype._length_}"
            assert btf.resolve_size(t.elem_type) == ctypes.sizeof(ftype._type_), f"{where}.{fname}: element size"
            elem = btf.resolve(t.elem_type)
            if issubclass(ftype._type_, ctypes.Structure):
                assert isinstance(elem, CompositeType) and elem.name == mirror_by_type[ftype._type_]
            else:
                assert isinstance(elem, IntType), f"{where}.{fname}: element BTF {elem.kind.name}"
                assert elem.signed == _ctypes_signed(ftype._type_), f"{where}.{fname}: element signedness"
        elif issubclass(ftype, ctypes.Structure):
            assert isinstance(t, CompositeType) and t.name == mirror_by_type[ftype], f"{where}.{fname}"
        else:
            assert isinstance(t, IntType), f"{where}.{fname}: BTF {t.kind.name}"
            assert t.signed == _ctypes_signed(ftype), f"{where}.{fname}: signedness differs (C signed={t.signed})"


def _mirror_params() -> list[object]:
    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=NOT_IN_OBJECT_BTF[name]))
            if name in NOT_IN_OBJECT_BTF else name for name in abi.MIRRORS]


@pytest.mark.parametrize("struct_name", _mirror_params())
def test_mirror_matches_object_btf(require_bpf_objects: Path, struct_name: str) -> None:
    mirror = abi.MIRRORS[struct_name]
    found = []
    for obj in OBJECTS:
        btf = _object_btf(str(require_bpf_objects), obj)
        try:
            btf.struct_layout(struct_name)
        except KeyError:
            continue
        found.append(obj)
        _check_layout(btf, struct_name, mirror)
    assert found, f"struct {struct_name} is in the BTF of none of {OBJECTS}: its mirror cannot be checked"


def test_mirrors_cover_every_map_type(require_bpf_objects: Path) -> None:
    """Every dw_* struct the objects know has a mirror (a new map value or
    key type cannot slip in unchecked)."""
    seen = set()
    for obj in OBJECTS:
        btf = _object_btf(str(require_bpf_objects), obj)
        for tid in btf.own_ids():
            t = btf.type(tid)
            if isinstance(t, CompositeType) and t.name.startswith("dw_") and t.members:
                seen.add(t.name)
    assert seen - BPF_PRIVATE_STRUCTS <= set(abi.MIRRORS), sorted(seen - BPF_PRIVATE_STRUCTS - set(abi.MIRRORS))


@pytest.mark.parametrize("obj", OBJECTS)
def test_meta_key_is_a_rodata_u32(require_bpf_objects: Path, obj: str) -> None:
    """The loader patches dw_meta_key into .rodata before load."""
    off, size = _object_btf(str(require_bpf_objects), obj).datasec_vars(".rodata")["dw_meta_key"]
    assert size == 4 and off % 4 == 0


def test_meta_h1_is_a_labeler_rodata_u32(require_bpf_objects: Path) -> None:
    """The loader patches dw_meta_h1 (abi.meta_h1 of the key) into the
    labeler's .rodata before load."""
    off, size = _object_btf(str(require_bpf_objects), "labeler.bpf.o").datasec_vars(".rodata")["dw_meta_h1"]
    assert size == 4 and off % 4 == 0


# ---------------------------------------------------------------- the header itself

@pytest.fixture(scope="module")
def header_btf(tmp_path_factory: pytest.TempPathFactory) -> Btf:
    """The header compiled on its own with one global of every mirrored
    struct and enum, so BTF describes all of them (dw_meta included)."""
    clang = os.environ.get("CLANG", "clang")
    if not shutil.which(clang):
        pytest.skip(f"{clang} not found: cannot compile {HEADER.name} for its BTF")
    d = tmp_path_factory.mktemp("hdr")
    src = d / "abi_probe.c"
    src.write_text('#include "dropwatch.h"\n'
                   + "".join(f"struct {n} probe_{n};\n" for n in abi.MIRRORS)
                   + "".join(f"enum {n} probe_enum_{n};\n" for n in ENUM_MIRRORS))
    out = d / "abi_probe.o"
    machine = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True, check=False).stdout.strip() \
        if shutil.which("gcc") else "x86_64-linux-gnu"
    cmd = [clang, "-target", "bpf", "-g", "-O2", "-c", f"-I{HEADER.parent}", f"-I/usr/include/{machine}",
           str(src), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stderr}"
    return Btf.from_elf(out)


@pytest.mark.parametrize("struct_name", list(abi.MIRRORS))
def test_mirror_matches_header_btf(header_btf: Btf, struct_name: str) -> None:
    _check_layout(header_btf, struct_name, abi.MIRRORS[struct_name])


@pytest.mark.parametrize("enum_name", sorted(ENUM_MIRRORS))
def test_header_enums_agree_with_compiler(header_btf: Btf, enum_name: str) -> None:
    """The regex parse of the header equals what clang made of it."""
    assert header_btf.enum_values(enum_name) == header_enums()[enum_name]


@pytest.fixture(scope="module")
def header_mix(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """dw_meta_mix() from the header, compiled for the host and called via ctypes."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        pytest.skip("no host C compiler: cannot compile dw_meta_mix from the header")
    d = tmp_path_factory.mktemp("mix")
    src = d / "mix.c"
    src.write_text("#include <stdint.h>\n"
                   "typedef uint8_t __u8; typedef uint16_t __u16; typedef uint32_t __u32; typedef uint64_t __u64;\n"
                   "#define __DW_USER_TYPES 1\n"
                   '#include "dropwatch.h"\n'
                   "unsigned mix(unsigned a, unsigned b, unsigned c, unsigned k) { return dw_meta_mix(a, b, c, k); }\n"
                   "unsigned tail(unsigned h, unsigned b, unsigned c) { return dw_meta_tail(h, b, c); }\n"
                   "unsigned meta_size(void) { return sizeof(struct dw_meta); }\n")
    so = d / "mix.so"
    cmd = [cc, "-O2", "-shared", "-fPIC", f"-I{HEADER.parent}", str(src), "-o", str(so)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stderr}"
    lib = ctypes.CDLL(str(so))
    lib.mix.restype = ctypes.c_uint
    lib.mix.argtypes = [ctypes.c_uint] * 4
    lib.tail.restype = ctypes.c_uint
    lib.tail.argtypes = [ctypes.c_uint] * 3
    lib.meta_size.restype = ctypes.c_uint
    return lib


def test_meta_check_equals_header_mix(header_mix) -> None:  # type: ignore[no-untyped-def]
    """abi.meta_check is dw_meta_mix over the first three little-endian
    words of the record. (That the BPF program writes exactly this is in
    test_labeler.py: it needs a test run.)"""
    import random

    assert header_mix.meta_size() == ctypes.sizeof(abi.Meta)
    rec = abi.Meta(magic=abi.DW_META_MAGIC, version=1, rec_len=16, label_id=0x01020304, pop_id=0x0506,
                   side=2, flags=0)
    raw = bytes(rec)
    w = [int.from_bytes(raw[i:i + 4], "little") for i in (0, 4, 8)]
    assert w == [0x1001D70B, 0x01020304, 0x00020506]
    for key in (0, 1, 0xFFFFFFFF, 0x12345678):
        assert abi.meta_check(rec, key) == header_mix.mix(*w, key)
    rnd = random.Random(1)
    for _ in range(2000):
        rec = abi.Meta.from_buffer_copy(rnd.randbytes(16))
        raw = bytes(rec)
        w = [int.from_bytes(raw[i:i + 4], "little") for i in (0, 4, 8)]
        key = rnd.getrandbits(32)
        assert abi.meta_check(rec, key) == header_mix.mix(*w, key), (raw.hex(), key)
    # check and tail_pad are not covered
    rec2 = abi.Meta.from_buffer_copy(raw)
    rec2.check, rec2.tail_pad = rec.check ^ 0xFFFF, 0xABCD
    assert abi.meta_check(rec2, 7) == abi.meta_check(rec, 7)


def test_meta_h1_saves_the_constant_head(header_mix) -> None:  # type: ignore[no-untyped-def]
    """The labeler mixes only words 1 and 2 from abi.meta_h1(key): that must
    equal the whole check over its constant first word (magic, version,
    rec_len)."""
    import random

    rnd = random.Random(2)
    for _ in range(500):
        key, w1, w2 = rnd.getrandbits(32), rnd.getrandbits(32), rnd.getrandbits(32)
        assert header_mix.tail(abi.meta_h1(key), w1, w2) == header_mix.mix(0x1001D70B, w1, w2, key)

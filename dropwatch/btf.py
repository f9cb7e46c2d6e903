"""Pure-Python reader for raw BTF (BPF Type Format).

Reads ``/sys/kernel/btf/vmlinux``, split module BTF (``/sys/kernel/btf/<mod>``)
and the ``.BTF`` section of clang ``-target bpf`` objects.  The layout follows
``include/uapi/linux/btf.h``.

Parsing is two-phase on purpose: the constructor only walks the type section
once to record where each type starts (that walk is unavoidable because types
are variable-length), and everything else -- decoding a type, resolving its
name, building the name index -- happens on first use.  vmlinux has ~130k
types and a CLI typically needs a handful of them.
"""

from __future__ import annotations

import enum
import struct
import sys
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ArrayType",
    "Btf",
    "BtfError",
    "BtfMember",
    "BtfType",
    "CompositeType",
    "DatasecType",
    "DeclTagType",
    "EnumType",
    "FloatType",
    "FuncParam",
    "FuncProtoType",
    "FuncType",
    "FwdType",
    "IntType",
    "Kind",
    "Member",
    "RefType",
    "StructLayout",
    "VarSecInfo",
    "VarType",
    "Void",
]

BTF_MAGIC = 0xEB9F
BTF_VERSION = 1
_HEADER = struct.Struct("HBBIIIII")  # endianness prefix is added per blob
_HEADER_MIN_LEN = 24
# libbpf's MAX_RESOLVE_DEPTH: a modifier chain longer than this is a loop.
_MAX_RESOLVE_DEPTH = 32


class BtfError(ValueError):
    """Malformed or unsupported BTF; the message names the source."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source


class Kind(enum.IntEnum):
    UNKN = 0  # only used for type id 0 (void)
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


# Bytes following the 12-byte common header, as (fixed u32 words,
# u32 words per vlen item).  Indexed by kind; None marks an invalid kind.
_TRAILER_WORDS: tuple[tuple[int, int] | None, ...] = (
    None,  # 0 UNKN never appears in the type section
    (1, 0),  # INT: u32 encoding
    (0, 0),  # PTR
    (3, 0),  # ARRAY: btf_array
    (0, 3),  # STRUCT: btf_member[vlen]
    (0, 3),  # UNION
    (0, 2),  # ENUM: btf_enum[vlen]
    (0, 0),  # FWD
    (0, 0),  # TYPEDEF
    (0, 0),  # VOLATILE
    (0, 0),  # CONST
    (0, 0),  # RESTRICT
    (0, 0),  # FUNC
    (0, 2),  # FUNC_PROTO: btf_param[vlen]
    (1, 0),  # VAR: btf_var
    (0, 3),  # DATASEC: btf_var_secinfo[vlen]
    (0, 0),  # FLOAT
    (1, 0),  # DECL_TAG: btf_decl_tag
    (0, 0),  # TYPE_TAG
    (0, 3),  # ENUM64: btf_enum64[vlen]
)

_MODIFIER_KINDS = frozenset(
    {Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG}
)

INT_SIGNED = 1
INT_CHAR = 2
INT_BOOL = 4


# --------------------------------------------------------------------------
# Decoded type objects
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BtfType:
    id: int
    kind: Kind
    name: str


@dataclass(frozen=True, slots=True)
class Void(BtfType):
    pass


@dataclass(frozen=True, slots=True)
class IntType(BtfType):
    size: int
    encoding: int
    bit_offset: int
    bits: int

    @property
    def signed(self) -> bool:
        return bool(self.encoding & INT_SIGNED)


@dataclass(frozen=True, slots=True)
class RefType(BtfType):
    """PTR, TYPEDEF, VOLATILE, CONST, RESTRICT and TYPE_TAG."""

    type: int


@dataclass(frozen=True, slots=True)
class ArrayType(BtfType):
    elem_type: int
    index_type: int
    nelems: int


@dataclass(frozen=True, slots=True)
class BtfMember:
    name: str
    type: int
    bit_offset: int
    bitfield_size: int  # 0 unless encoded via kflag


@dataclass(frozen=True, slots=True)
class CompositeType(BtfType):
    """STRUCT or UNION."""

    size: int
    members: tuple[BtfMember, ...]

    @property
    def is_union(self) -> bool:
        return self.kind is Kind.UNION


@dataclass(frozen=True, slots=True)
class EnumType(BtfType):
    """ENUM or ENUM64; values are already sign-corrected."""

    size: int
    signed: bool
    values: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class FwdType(BtfType):
    is_union: bool


@dataclass(frozen=True, slots=True)
class FuncType(BtfType):
    type: int  # FUNC_PROTO
    linkage: int


@dataclass(frozen=True, slots=True)
class FuncParam:
    name: str
    type: int


@dataclass(frozen=True, slots=True)
class FuncProtoType(BtfType):
    return_type: int
    params: tuple[FuncParam, ...]


@dataclass(frozen=True, slots=True)
class VarType(BtfType):
    type: int
    linkage: int


@dataclass(frozen=True, slots=True)
class VarSecInfo:
    type: int
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class DatasecType(BtfType):
    size: int
    vars: tuple[VarSecInfo, ...]


@dataclass(frozen=True, slots=True)
class FloatType(BtfType):
    size: int


@dataclass(frozen=True, slots=True)
class DeclTagType(BtfType):
    type: int
    component_idx: int


# --------------------------------------------------------------------------
# Struct layout (flattened view for CO-RE-less field access)
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    offset: int  # bytes from the start of the outermost struct
    bit_offset: int  # bits from the start of the outermost struct
    bitfield_size: int  # bits; 0 for ordinary members
    size: int  # bytes of the member's (resolved) type
    type_id: int
    type_name: str

    @property
    def is_bitfield(self) -> bool:
        return self.bitfield_size != 0


@dataclass(frozen=True, slots=True)
class StructLayout:
    name: str
    size: int
    members: dict[str, Member]


def _s32(v: int) -> int:
    return v - 0x1_0000_0000 if v & 0x8000_0000 else v


def _s64(v: int) -> int:
    return v - (1 << 64) if v & (1 << 63) else v


class _TypeView(Mapping[int, BtfType]):
    """Read-only ``id -> type`` mapping that decodes on access."""

    __slots__ = ("_btf",)

    def __init__(self, btf: Btf) -> None:
        self._btf = btf

    def __getitem__(self, type_id: int) -> BtfType:
        if not isinstance(type_id, int) or not 0 <= type_id <= self._btf.last_id:
            raise KeyError(type_id)
        return self._btf.type(type_id)

    def __len__(self) -> int:
        return self._btf.last_id + 1

    def __iter__(self) -> Iterator[int]:
        return iter(range(self._btf.last_id + 1))


class Btf:
    """One BTF blob, optionally split on top of a base (vmlinux) BTF.

    Type ids and string offsets of a split blob continue after the base's, so
    every lookup here transparently falls through to ``base`` for ids below
    ``start_id`` and string offsets below the base's string section length.
    """

    def __init__(self, data: bytes, base: Btf | None = None, source: str = "<bytes>") -> None:
        self.source = source
        self.base = base
        if len(data) < _HEADER_MIN_LEN:
            raise BtfError(source, f"truncated header ({len(data)} bytes)")
        if data[:2] == b"\x9f\xeb":
            endian = "<"
        elif data[:2] == b"\xeb\x9f":
            endian = ">"
        else:
            raise BtfError(source, f"bad magic {data[:2].hex()} (want 0xeb9f)")
        self.byteorder = "little" if endian == "<" else "big"
        _magic, version, self.flags, hdr_len, type_off, type_len, str_off, str_len = (
            struct.unpack_from(endian + _HEADER.format, data)
        )
        if version != BTF_VERSION:
            raise BtfError(source, f"unsupported BTF version {version}")
        if hdr_len < _HEADER_MIN_LEN or hdr_len > len(data):
            raise BtfError(source, f"bad header length {hdr_len}")
        t_start, s_start = hdr_len + type_off, hdr_len + str_off
        if t_start + type_len > len(data):
            raise BtfError(source, f"truncated: type section ends at {t_start + type_len}, "
                           f"file has {len(data)} bytes")
        if s_start + str_len > len(data):
            raise BtfError(source, f"truncated: string section ends at {s_start + str_len}, "
                           f"file has {len(data)} bytes")
        if type_len % 4:
            raise BtfError(source, f"type section length {type_len} is not a multiple of 4")

        self._strings = bytes(data[s_start : s_start + str_len])
        words = array("I")
        words.frombytes(data[t_start : t_start + type_len])
        if (endian == "<") != (sys.byteorder == "little"):
            words.byteswap()
        self._words = words

        self.start_id: int
        self.last_id: int
        self._str_base: int
        if base is None:
            self.start_id = 1
            self._str_base = 0
        else:
            self.start_id = base.last_id + 1
            self._str_base = base._str_base + len(base._strings)
        self._offsets = self._index_types(words)
        self.last_id = self.start_id + len(self._offsets) - 1
        self.types: Mapping[int, BtfType] = _TypeView(self)

        self._cache: dict[int, BtfType] = {}
        self._str_cache: dict[int, str] = {}
        self._names: dict[str, list[int]] | None = None
        self._ptr_size: int | None = None

    # ---- construction -----------------------------------------------------

    @classmethod
    def from_bytes(cls, data: bytes, base: Btf | None = None, source: str = "<bytes>") -> Btf:
        return cls(data, base=base, source=source)

    @classmethod
    def from_file(cls, path: str | Path, base: Btf | None = None) -> Btf:
        p = Path(path)
        return cls(p.read_bytes(), base=base, source=str(p))

    @classmethod
    def from_elf(cls, path: str | Path, base: Btf | None = None) -> Btf:
        """Parse the ``.BTF`` section of an ELF64 object (e.g. clang -target bpf)."""
        p = Path(path)
        data = p.read_bytes()
        return cls(_elf_section(data, ".BTF", str(p)), base=base, source=f"{p}:.BTF")

    def _index_types(self, words: array[int]) -> array[int]:
        # Hot loop (runs once per type in vmlinux): keep it to local lookups.
        offsets = array("I")
        append = offsets.append
        trailer = _TRAILER_WORDS
        n = len(words)
        pos = 0
        while pos < n:
            if pos + 3 > n:
                raise BtfError(self.source, f"truncated type id {self.start_id + len(offsets)}")
            append(pos)
            info = words[pos + 1]
            kind = (info >> 24) & 0x1F
            spec = trailer[kind] if kind < len(trailer) else None
            if spec is None:
                tid = self.start_id + len(offsets) - 1
                raise BtfError(self.source, f"unknown kind {kind} at type id {tid}")
            pos += 3 + spec[0] + spec[1] * (info & 0xFFFF)
        if pos != n:
            raise BtfError(self.source, f"truncated type id {self.start_id + len(offsets) - 1}")
        return offsets

    # ---- strings ----------------------------------------------------------

    def string(self, offset: int) -> str:
        """The string at ``offset`` in the (possibly split) string space."""
        if offset < self._str_base:
            assert self.base is not None
            return self.base.string(offset)
        cached = self._str_cache.get(offset)
        if cached is not None:
            return cached
        local = offset - self._str_base
        end = self._strings.find(b"\0", local)
        if local >= len(self._strings) or end < 0:
            raise BtfError(self.source, f"string offset {offset} out of range")
        s = self._strings[local:end].decode("utf-8", "replace")
        self._str_cache[offset] = s
        return s

    # ---- type access ------------------------------------------------------

    def __len__(self) -> int:
        """Number of type ids including void (id 0) and any base types."""
        return self.last_id + 1

    def own_ids(self) -> range:
        """Type ids defined by this blob (not its base)."""
        return range(self.start_id, self.last_id + 1)

    def type(self, type_id: int) -> BtfType:
        if type_id < self.start_id:
            if type_id == 0:
                return Void(0, Kind.UNKN, "void")
            if self.base is not None and type_id > 0:
                return self.base.type(type_id)
            raise BtfError(self.source, f"type id {type_id} out of range")
        cached = self._cache.get(type_id)
        if cached is not None:
            return cached
        if type_id > self.last_id:
            raise BtfError(self.source, f"type id {type_id} out of range (last is {self.last_id})")
        t = self._decode(type_id)
        self._cache[type_id] = t
        return t

    def _kind_and_name_off(self, type_id: int) -> tuple[int, int, int]:
        """(kind, vlen, name_off) of an own type without full decoding."""
        pos = self._offsets[type_id - self.start_id]
        info = self._words[pos + 1]
        return (info >> 24) & 0x1F, info & 0xFFFF, self._words[pos]

    def _decode(self, tid: int) -> BtfType:
        w = self._words
        pos = self._offsets[tid - self.start_id]
        name_off, info, size_or_type = w[pos], w[pos + 1], w[pos + 2]
        kind = Kind((info >> 24) & 0x1F)
        vlen = info & 0xFFFF
        kflag = bool(info >> 31)
        name = self.string(name_off)
        p = pos + 3
        if kind is Kind.INT:
            enc = w[p]
            return IntType(tid, kind, name, size_or_type, (enc >> 24) & 0x0F, (enc >> 16) & 0xFF,
                           enc & 0xFF)
        if kind is Kind.PTR or kind in _MODIFIER_KINDS:
            return RefType(tid, kind, name, size_or_type)
        if kind is Kind.ARRAY:
            return ArrayType(tid, kind, name, w[p], w[p + 1], w[p + 2])
        if kind is Kind.STRUCT or kind is Kind.UNION:
            members = []
            for i in range(vlen):
                m = p + 3 * i
                off = w[m + 2]
                if kflag:
                    # kflag: top 8 bits carry the bitfield size, low 24 the bit offset.
                    members.append(
                        BtfMember(self.string(w[m]), w[m + 1], off & 0xFFFFFF, off >> 24)
                    )
                else:
                    members.append(BtfMember(self.string(w[m]), w[m + 1], off, 0))
            return CompositeType(tid, kind, name, size_or_type, tuple(members))
        if kind is Kind.ENUM:
            conv = _s32 if kflag else int
            vals = tuple((self.string(w[p + 2 * i]), conv(w[p + 2 * i + 1])) for i in range(vlen))
            return EnumType(tid, kind, name, size_or_type, kflag, vals)
        if kind is Kind.ENUM64:
            vals64 = []
            for i in range(vlen):
                e = p + 3 * i
                v = w[e + 1] | (w[e + 2] << 32)
                vals64.append((self.string(w[e]), _s64(v) if kflag else v))
            return EnumType(tid, kind, name, size_or_type, kflag, tuple(vals64))
        if kind is Kind.FWD:
            return FwdType(tid, kind, name, kflag)
        if kind is Kind.FUNC:
            return FuncType(tid, kind, name, size_or_type, vlen)
        if kind is Kind.FUNC_PROTO:
            params = tuple(
                FuncParam(self.string(w[p + 2 * i]), w[p + 2 * i + 1]) for i in range(vlen)
            )
            return FuncProtoType(tid, kind, name, size_or_type, params)
        if kind is Kind.VAR:
            return VarType(tid, kind, name, size_or_type, w[p])
        if kind is Kind.DATASEC:
            secs = tuple(VarSecInfo(w[p + 3 * i], w[p + 3 * i + 1], w[p + 3 * i + 2])
                         for i in range(vlen))
            return DatasecType(tid, kind, name, size_or_type, secs)
        if kind is Kind.FLOAT:
            return FloatType(tid, kind, name, size_or_type)
        if kind is Kind.DECL_TAG:
            return DeclTagType(tid, kind, name, size_or_type, _s32(w[p]))
        # Unreachable: _index_types already rejected unknown kinds.
        raise BtfError(self.source, f"unknown kind {int(kind)} at type id {tid}")

    # ---- name lookup ------------------------------------------------------

    def _name_index(self) -> dict[str, list[int]]:
        if self._names is None:
            names: dict[str, list[int]] = {}
            words, string, sid = self._words, self.string, self.start_id
            for i, pos in enumerate(self._offsets):
                name_off = words[pos]
                if name_off:
                    names.setdefault(string(name_off), []).append(sid + i)
            self._names = names
        return self._names

    def find_all(self, name: str, kind: str | Kind | None = None) -> list[int]:
        """All type ids named ``name`` (own types first, then the base's)."""
        want = _parse_kind(kind)
        ids = [
            tid
            for tid in self._name_index().get(name, ())
            if want is None or self._kind_and_name_off(tid)[0] == want
        ]
        if self.base is not None:
            ids.extend(self.base.find_all(name, want))
        return ids

    def find(self, name: str, kind: str | Kind | None = None) -> int | None:
        """First type id named ``name`` (optionally of ``kind``, e.g. "struct")."""
        ids = self.find_all(name, kind)
        return ids[0] if ids else None

    # ---- enums ------------------------------------------------------------

    def _find_enum(self, name: str) -> EnumType | None:
        # A forward-declared enum is an ENUM with vlen 0; prefer a definition.
        fallback: EnumType | None = None
        for tid in self.find_all(name):
            t = self.type(tid)
            if isinstance(t, EnumType):
                if t.values:
                    return t
                fallback = fallback or t
        return fallback

    def enum_values(self, name: str) -> dict[str, int]:
        """Enumerators of ENUM/ENUM64 ``name``; KeyError if there is none."""
        t = self._find_enum(name)
        if t is None:
            raise KeyError(f"{self.source}: no enum named {name!r}")
        return dict(t.values)

    def all_enums(self, include_base: bool = True) -> Iterator[tuple[str, dict[str, int]]]:
        """Yield ``(name, values)`` for every ENUM/ENUM64 ("" for anonymous)."""
        if include_base and self.base is not None:
            yield from self.base.all_enums(include_base=True)
        words = self._words
        for i, pos in enumerate(self._offsets):
            kind = (words[pos + 1] >> 24) & 0x1F
            if kind in (Kind.ENUM, Kind.ENUM64):
                t = self.type(self.start_id + i)
                assert isinstance(t, EnumType)
                yield t.name, dict(t.values)

    # ---- sizes and names of types ------------------------------------------

    @property
    def pointer_size(self) -> int:
        # BTF has no explicit pointer size; like libbpf, infer it from `long`.
        if self._ptr_size is None:
            self._ptr_size = 8
            for name in ("long int", "long unsigned int", "long", "unsigned long"):
                tid = self.find(name, Kind.INT)
                if tid is not None:
                    t = self.type(tid)
                    assert isinstance(t, IntType)
                    self._ptr_size = t.size
                    break
        return self._ptr_size

    def _skip_modifiers(self, type_id: int) -> BtfType:
        t = self.type(type_id)
        for _ in range(_MAX_RESOLVE_DEPTH):
            if not (isinstance(t, RefType) and t.kind in _MODIFIER_KINDS):
                return t
            t = self.type(t.type)
        raise BtfError(self.source, f"modifier chain too deep (loop?) from type id {type_id}")

    def resolve(self, type_id: int) -> BtfType:
        """Follow typedef/const/volatile/restrict/type_tag to the real type."""
        return self._skip_modifiers(type_id)

    def resolve_size(self, type_id: int) -> int:
        """Size in bytes; arrays are elem size * nelems. BtfError if unsized."""
        return self._resolve_size(type_id, 0)

    def _resolve_size(self, type_id: int, depth: int) -> int:
        if depth > _MAX_RESOLVE_DEPTH:
            raise BtfError(self.source, f"type chain too deep (loop?) at type id {type_id}")
        t = self._skip_modifiers(type_id)
        if isinstance(t, (IntType, CompositeType, EnumType, FloatType, DatasecType)):
            return t.size
        if isinstance(t, RefType):  # only PTR is left after skipping modifiers
            return self.pointer_size
        if isinstance(t, ArrayType):
            return t.nelems * self._resolve_size(t.elem_type, depth + 1)
        if isinstance(t, (VarType, DeclTagType)):
            return self._resolve_size(t.type, depth + 1)
        raise BtfError(self.source, f"type id {type_id} ({t.kind.name}) has no size")

    def type_name(self, type_id: int) -> str:
        """Best-effort C-like spelling of a type, e.g. ``unsigned char *``."""
        return self._type_name(type_id, 0)

    def _type_name(self, type_id: int, depth: int) -> str:
        if depth > _MAX_RESOLVE_DEPTH:
            return "..."
        t = self.type(type_id)
        name = t.name or "(anon)"
        if isinstance(t, Void):
            return "void"
        if isinstance(t, CompositeType):
            return f"{'union' if t.is_union else 'struct'} {name}"
        if isinstance(t, FwdType):
            return f"{'union' if t.is_union else 'struct'} {name}"
        if isinstance(t, EnumType):
            return f"enum {name}"
        if isinstance(t, ArrayType):
            return f"{self._type_name(t.elem_type, depth + 1)}[{t.nelems}]"
        if isinstance(t, RefType):
            if t.kind is Kind.PTR:
                inner = self._type_name(t.type, depth + 1)
                return inner + ("*" if inner.endswith("*") else " *")
            if t.kind is Kind.TYPEDEF:
                return name
            if t.kind is Kind.TYPE_TAG:
                return self._type_name(t.type, depth + 1)
            return f"{t.kind.name.lower()} {self._type_name(t.type, depth + 1)}"
        if isinstance(t, FuncProtoType):
            args = ", ".join(self._type_name(p.type, depth + 1) for p in t.params)
            return f"{self._type_name(t.return_type, depth + 1)} (*)({args})"
        if isinstance(t, (VarType, FuncType)):
            return name
        return name

    # ---- structs ----------------------------------------------------------

    def _find_composite(self, name: str) -> CompositeType | None:
        fallback: CompositeType | None = None
        for tid in self.find_all(name):
            t = self.type(tid)
            if isinstance(t, CompositeType):
                if t.members:
                    return t
                fallback = fallback or t
        return fallback

    def struct_layout(self, name: str) -> StructLayout:
        """Flattened member layout of struct/union ``name``.

        Anonymous struct/union members are flattened into the parent with their
        offsets added, because that is how C code names those fields
        (``skb->mac_header`` lives inside an anonymous struct in sk_buff).
        KeyError if no such struct/union exists.
        """
        t = self._find_composite(name)
        if t is None:
            raise KeyError(f"{self.source}: no struct or union named {name!r}")
        members: dict[str, Member] = {}
        self._flatten(t, 0, members, 0)
        return StructLayout(t.name, t.size, members)

    def _flatten(
        self, t: CompositeType, base_bits: int, out: dict[str, Member], depth: int
    ) -> None:
        if depth > _MAX_RESOLVE_DEPTH:
            raise BtfError(self.source, f"anonymous member nesting too deep in type id {t.id}")
        for m in t.members:
            bit_off = base_bits + m.bit_offset
            if not m.name:
                inner = self._skip_modifiers(m.type)
                if isinstance(inner, CompositeType):
                    self._flatten(inner, bit_off, out, depth + 1)
                continue  # unnamed padding bitfields carry no accessible field
            bf_size = m.bitfield_size
            if not bf_size:
                # Pre-kflag encoding: a bitfield is an INT whose bits < its size.
                r = self._skip_modifiers(m.type)
                if isinstance(r, IntType) and r.bits and r.bits != r.size * 8:
                    bf_size = r.bits
                    bit_off += r.bit_offset
            try:
                size = self.resolve_size(m.type)
            except BtfError:
                size = 0  # e.g. a member of FWD type in a truncated object file
            out[m.name] = Member(m.name, bit_off // 8, bit_off, bf_size, size, m.type,
                                 self.type_name(m.type))

    # ---- data sections ----------------------------------------------------

    def datasec_vars(self, section_name: str) -> dict[str, tuple[int, int]]:
        """``{var name: (offset, size)}`` for DATASEC ``section_name``.

        Values are exactly as stored; in an unlinked clang object the section
        size may be 0 while offsets are already valid.  KeyError if absent.
        """
        tid = self.find(section_name, Kind.DATASEC)
        if tid is None:
            raise KeyError(f"{self.source}: no DATASEC named {section_name!r}")
        t = self.type(tid)
        assert isinstance(t, DatasecType)
        return {self.type(v.type).name: (v.offset, v.size) for v in t.vars}


def _parse_kind(kind: str | Kind | None) -> Kind | None:
    if kind is None or isinstance(kind, Kind):
        return kind
    try:
        return Kind[kind.upper()]
    except KeyError:
        raise ValueError(f"unknown BTF kind name {kind!r}") from None


# --------------------------------------------------------------------------
# Minimal ELF64 section reader
# --------------------------------------------------------------------------

_SHN_XINDEX = 0xFFFF
_SHT_NOBITS = 8


def _elf_section(data: bytes, wanted: str, source: str) -> bytes:
    """Contents of section ``wanted`` from an ELF64 image."""
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise BtfError(source, "not an ELF file")
    if data[4] != 2:
        raise BtfError(source, f"not ELF64 (EI_CLASS={data[4]})")
    if data[5] not in (1, 2):
        raise BtfError(source, f"bad ELF data encoding {data[5]}")
    e = "<" if data[5] == 1 else ">"
    shoff = struct.unpack_from(e + "Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", data, 0x3A)
    shdr = struct.Struct(e + "IIQQQQIIQQ")
    if shoff == 0:
        raise BtfError(source, "ELF has no section headers")
    if shentsize < shdr.size:
        raise BtfError(source, f"bad ELF section header size {shentsize}")

    def header(i: int) -> tuple[int, ...]:
        off = shoff + i * shentsize
        if off + shdr.size > len(data):
            raise BtfError(source, f"truncated ELF section header {i}")
        return shdr.unpack_from(data, off)

    # Extended numbering: real counts live in section 0 when they overflow.
    sec0 = header(0)
    if shnum == 0:
        shnum = sec0[5]
    if shstrndx == _SHN_XINDEX:
        shstrndx = sec0[6]
    if shstrndx >= shnum:
        raise BtfError(source, f"bad ELF section name table index {shstrndx}")
    strtab = header(shstrndx)
    str_start, str_end = strtab[4], strtab[4] + strtab[5]
    if str_end > len(data):
        raise BtfError(source, "truncated ELF section name table")
    want = wanted.encode()
    for i in range(shnum):
        sh_name, sh_type, _fl, _addr, sh_offset, sh_size, *_ = header(i)
        n0 = str_start + sh_name
        n1 = data.find(b"\0", n0, str_end)
        if n1 < 0 or data[n0:n1] != want:
            continue
        if sh_type == _SHT_NOBITS:
            raise BtfError(source, f"ELF section {wanted} has no data (NOBITS)")
        if sh_offset + sh_size > len(data):
            raise BtfError(source, f"truncated ELF section {wanted}")
        return data[sh_offset : sh_offset + sh_size]
    raise BtfError(source, f"no {wanted} section in ELF file")

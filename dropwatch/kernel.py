"""Kernel facts read at run time: drop reason names and kernel symbols.

Nothing here is a hard-coded table: drop reasons change with every kernel
release (values are renumbered when reasons are added in the middle of the
enum), so names always come from the running kernel's BTF, and symbols from
/proc/kallsyms.
"""

from __future__ import annotations

import bisect
import gc
from array import array
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dropwatch.btf import Btf, BtfError

__all__ = [
    "DEFAULT_BTF_DIR",
    "DEFAULT_KALLSYMS",
    "DropReasons",
    "Kallsyms",
    "has_btf",
    "kernel_release",
]

DEFAULT_BTF_DIR = Path("/sys/kernel/btf")
DEFAULT_KALLSYMS = Path("/proc/kallsyms")

_REASON_ENUM = "skb_drop_reason"
_SUBSYS_ENUM = "skb_drop_reason_subsys"
_REASON_PREFIX = "SKB_DROP_REASON_"
_SUBSYS_PREFIX = "SKB_DROP_REASON_SUBSYS_"
_MASK_NAME = "SKB_DROP_REASON_SUBSYS_MASK"
_SHIFT_NAME = "SKB_DROP_REASON_SUBSYS_SHIFT"
# Only used when the kernel has subsystems (the subsys enum exists) but its
# BTF lacks the mask enumerator; matches include/net/dropreason.h since 6.4.
_FALLBACK_MASK = 0xFFFF0000
_FALLBACK_SHIFT = 16


def kernel_release() -> str:
    return os.uname().release


def has_btf(btf_dir: Path = DEFAULT_BTF_DIR) -> bool:
    return (Path(btf_dir) / "vmlinux").is_file()


def _strip_reason(enumerator: str) -> str:
    # The kernel's own tracepoint strings (drop_reasons[] / __print_symbolic)
    # drop both prefixes: SKB_DROP_REASON_NO_SOCKET -> NO_SOCKET and
    # SKB_CONSUMED -> CONSUMED, so users see the same names as in perf/trace.
    for prefix in (_REASON_PREFIX, "SKB_"):
        if enumerator.startswith(prefix):
            return enumerator[len(prefix):]
    return enumerator


def _parse_unknown(name: str) -> int | None:
    if name.startswith("UNKNOWN_"):
        digits = name[len("UNKNOWN_"):]
        if digits.isdigit():
            return int(digits)
    return None


@dataclass(eq=False)
class DropReasons:
    """Names for ``enum skb_drop_reason`` values of the running kernel.

    Core reasons come from vmlinux BTF.  Values whose top bits carry a
    subsystem (6.4+) are named from the owning module's split BTF, which is
    loaded lazily the first time such a value is seen, because most hosts
    never see one and module BTF is hundreds of files.

    When the kernel has no ``enum skb_drop_reason`` (pre-5.17), ``has_reasons``
    is False and every value is named ``UNKNOWN_<n>`` -- even 0/2 -- rather
    than guessing at names from some other kernel.
    """

    core: dict[int, str]
    subsystems: dict[int, str]
    mask: int
    shift: int
    btf_dir: Path | None = None
    vmlinux: Btf | None = field(default=None, repr=False)
    _by_name: dict[str, int] = field(init=False, repr=False)
    _module_names: dict[int, str] = field(init=False, repr=False, default_factory=dict)
    _parsed_modules: set[str] = field(init=False, repr=False, default_factory=set)
    _misses: set[int] = field(init=False, repr=False, default_factory=set)

    def __post_init__(self) -> None:
        self._by_name = {}
        for value, name in self.core.items():
            self._by_name.setdefault(name.upper(), value)

    # ---- construction -----------------------------------------------------

    @classmethod
    def load(cls, btf_dir: Path = DEFAULT_BTF_DIR) -> DropReasons:
        """Read ``<btf_dir>/vmlinux``; FileNotFoundError if the kernel lacks BTF."""
        btf_dir = Path(btf_dir)
        dr = cls.from_btf(Btf.from_file(btf_dir / "vmlinux"), btf_dir=btf_dir)
        # The parsed vmlinux BTF is ~20 MB of Python objects and only serves
        # as the base of module BTF, which is read once in a blue moon: a
        # module scan parses it again from btf_dir.
        dr.vmlinux = None
        # Its objects form reference cycles: free them now, not whenever the
        # cyclic collector next runs a full pass (resident meanwhile).
        gc.collect()
        return dr

    @classmethod
    def from_btf(cls, btf: Btf, btf_dir: Path | None = None) -> DropReasons:
        """Build from an already parsed vmlinux BTF.

        ``btf_dir`` is where module BTF for subsystem reasons is looked up;
        None disables that lookup (subsystem values become SUBSYS:UNKNOWN_n).
        """
        try:
            enumerators = btf.enum_values(_REASON_ENUM)
        except KeyError:
            enumerators = {}
        try:
            subsys_enum = btf.enum_values(_SUBSYS_ENUM)
        except KeyError:
            subsys_enum = None

        core: dict[int, str] = {}
        for ename, value in enumerators.items():
            if ename.startswith(_SUBSYS_PREFIX) or ename == _REASON_PREFIX + "MAX":
                continue
            core.setdefault(value, _strip_reason(ename))

        subsystems: dict[int, str] = {}
        mask = shift = 0
        if subsys_enum is not None:
            for ename, value in subsys_enum.items():
                # CORE (0) is the core enum itself; NUM is the terminator.
                if value == 0 or ename == _SUBSYS_PREFIX + "NUM":
                    continue
                subsystems[value] = ename.removeprefix(_SUBSYS_PREFIX)
            found_mask = enumerators.get(_MASK_NAME)
            found_shift = enumerators.get(_SHIFT_NAME)
            if found_mask is None:
                # Not in the reason enum on any kernel so far; scanning every
                # enum costs ~0.1 s on vmlinux, so only do it when needed.
                extra = _find_enumerators(btf, {_MASK_NAME, _SHIFT_NAME})
                found_mask = extra.get(_MASK_NAME, found_mask)
                found_shift = extra.get(_SHIFT_NAME, found_shift)
            if found_mask is None:
                mask, shift = _FALLBACK_MASK, _FALLBACK_SHIFT
            else:
                mask = found_mask & 0xFFFFFFFF
                # The shift is a #define (invisible to BTF) on current kernels;
                # it is by construction the mask's lowest set bit.
                shift = found_shift if found_shift is not None else _lowest_bit(mask)
        return cls(core=core, subsystems=subsystems, mask=mask, shift=shift,
                   btf_dir=btf_dir, vmlinux=btf)

    # ---- queries ----------------------------------------------------------

    @property
    def has_reasons(self) -> bool:
        return bool(self.core)

    @property
    def loaded_modules(self) -> frozenset[str]:
        """Module BTF files parsed so far (for diagnostics and tests)."""
        return frozenset(self._parsed_modules)

    def names(self) -> list[str]:
        """Core reason names sorted by value (no MAX/SUBSYS enumerators)."""
        return [self.core[v] for v in sorted(self.core)]

    def name(self, value: int) -> str:
        """Name for a reason value; never raises (unknown -> ``UNKNOWN_<n>``)."""
        core = self.core.get(value)
        if core is not None:
            return core
        if self.mask and value > 0 and value & self.mask and not value >> 32:
            sub = (value & self.mask) >> self.shift
            sub_name = self.subsystems.get(sub)
            if sub_name is not None:
                found = self._module_reason(value, sub_name)
                if found is not None:
                    return f"{sub_name}:{found}"
                return f"{sub_name}:UNKNOWN_{value & ~self.mask & 0xFFFFFFFF}"
        return f"UNKNOWN_{value}"

    def value(self, name: str) -> int | None:
        """Reverse of :meth:`name`; case-insensitive, None if unknown."""
        key = name.strip().upper()
        if ":" in key:
            return self._subsys_value(key)
        key = key.removeprefix(_REASON_PREFIX)
        found = self._by_name.get(key)
        if found is None and key.startswith("SKB_"):
            found = self._by_name.get(key[len("SKB_"):])
        if found is not None:
            return found
        return _parse_unknown(key)

    # ---- subsystem reasons from module BTF --------------------------------

    def _subsys_value(self, key: str) -> int | None:
        sub_name, _, reason = key.partition(":")
        sub = next((v for v, n in self.subsystems.items() if n.upper() == sub_name), None)
        if sub is None:
            return None
        low = _parse_unknown(reason)
        if low is not None:
            return (sub << self.shift) | low
        want = f"{self.subsystems[sub]}:{reason}".upper()
        for attempt in range(2):
            for value, ename in self._module_names.items():
                if (value & self.mask) >> self.shift == sub and \
                        f"{self.subsystems[sub]}:{ename}".upper() == want:
                    return value
            if attempt == 0 and not self._scan_modules(self.subsystems[sub]):
                break
        return None

    def _module_reason(self, value: int, sub_name: str) -> str | None:
        found = self._module_names.get(value)
        if found is not None or value in self._misses:
            return found
        self._scan_modules(sub_name)
        found = self._module_names.get(value)
        if found is None:
            # Remember the miss so a flood of one odd value does not re-list
            # btf_dir per packet; it is retried once new modules show up.
            self._misses.add(value)
        return found

    def _scan_modules(self, sub_name: str) -> bool:
        """Parse not-yet-seen module BTF files; True if any were new.

        Modules whose name looks like the subsystem (openvswitch for
        OPENVSWITCH, mac80211 for MAC80211_UNUSABLE) go first, and the scan
        stops as soon as it yields names for that subsystem.
        """
        if self.btf_dir is None:
            return False
        try:
            files = sorted(p.name for p in self.btf_dir.iterdir() if p.name != "vmlinux")
        except OSError:
            return False
        new = [f for f in files if f not in self._parsed_modules]
        if not new:
            return False
        base = self.vmlinux
        if base is None:
            try:
                base = Btf.from_file(self.btf_dir / "vmlinux")
            except (OSError, BtfError):
                return False
        hint = sub_name.lower()
        new.sort(key=lambda f: not (hint.startswith(f.lower()) or f.lower().startswith(hint)))
        sub = next((v for v, n in self.subsystems.items() if n == sub_name), None)
        for fname in new:
            self._parsed_modules.add(fname)
            self._load_module(self.btf_dir / fname, base)
            if sub is not None and any(
                (v & self.mask) >> self.shift == sub for v in self._module_names
            ):
                break
        self._misses.clear()
        return True

    def _load_module(self, path: Path, base: Btf) -> None:
        try:
            mod = Btf.from_file(path, base=base)
            enums = list(mod.all_enums(include_base=False))
        except (OSError, BtfError):
            # A module unloading mid-read or odd BTF must not break naming.
            return
        for _ename, values in enums:
            for ename, value in values.items():
                if value <= 0 or not value & self.mask or ename.startswith("__"):
                    continue  # sentinels like __OVS_DROP_REASON mark the base
                if ename.startswith(_REASON_PREFIX):
                    continue
                self._module_names.setdefault(value, ename)


def _lowest_bit(mask: int) -> int:
    return (mask & -mask).bit_length() - 1 if mask else 0


def _find_enumerators(btf: Btf, wanted: Iterable[str]) -> dict[str, int]:
    """Search every enum for the named enumerators (slow path, rarely used)."""
    want = set(wanted)
    found: dict[str, int] = {}
    if not want:
        return found
    for _name, values in btf.all_enums():
        for ename in want & values.keys():
            found.setdefault(ename, values[ename])
        if len(found) == len(want):
            break
    return found


# --------------------------------------------------------------------------
# kallsyms
# --------------------------------------------------------------------------

_TEXT_TYPES = frozenset("tTwW")


@dataclass(frozen=True, slots=True)
class _SymbolTable:
    """Sorted text symbols, stored compactly: ~120k symbols as Python lists of
    ints and strs cost ~25 MB of the daemon's memory, as arrays and one
    string ~4 MB. name(i) and module(i) build the strings on demand (the
    Kallsyms cache keeps the results)."""

    addrs: array[int]  # sorted
    names: str  # "\n".join(names), in addrs order
    name_starts: array[int]  # start of names[i] in ``names``; one extra entry at the end
    modules: dict[int, str]  # index -> module, for module symbols only
    restricted: bool

    def name(self, i: int) -> str:
        return self.names[self.name_starts[i]:self.name_starts[i + 1] - 1]

    def module(self, i: int) -> str | None:
        return self.modules.get(i)

    def index(self, name: str) -> int:
        """Index of the first symbol called ``name``; ValueError if none."""
        at = ("\n" + self.names + "\n").find("\n" + name + "\n")
        if at < 0:
            raise ValueError(name)
        return bisect.bisect_left(self.name_starts, at)


def _read_kallsyms(path: Path) -> _SymbolTable:
    # Hot path (~120k lines, re-run on reload): one split per line, read line
    # by line so the whole file is never held as a list of strings.
    addrs: list[int] = []
    names: list[str] = []
    modules: list[str | None] = []
    is_global: list[bool] = []
    text_types = _TEXT_TYPES
    seen_modules: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3 or parts[1] not in text_types:
                continue
            try:
                addrs.append(int(parts[0], 16))
            except ValueError:
                continue
            names.append(parts[2])
            if len(parts) > 3 and parts[3][:1] == "[":
                mod = parts[3][1:-1]
                modules.append(seen_modules.setdefault(mod, mod))
            else:
                modules.append(None)
            is_global.append(parts[1] in "TW")
    if addrs and not any(addrs):
        return _SymbolTable(array("Q"), "", array("L", [0]), {}, True)
    # Stable sort keeps file order among aliases sharing an address
    # (_text/_stext/...); of those we keep the first global one, which is the
    # name humans expect, so bisect always lands on a single entry.
    order = sorted(range(len(addrs)), key=addrs.__getitem__)
    out_a: list[int] = []
    out_n: list[str] = []
    out_m: list[str | None] = []
    replaceable = False  # last kept entry is local and may yield to a global alias
    for i in order:
        a = addrs[i]
        if out_a and out_a[-1] == a:
            if replaceable and is_global[i]:
                out_n[-1], out_m[-1], replaceable = names[i], modules[i], False
            continue
        out_a.append(a)
        out_n.append(names[i])
        out_m.append(modules[i])
        replaceable = not is_global[i]
    starts = array("L", [0])
    pos = 0
    for n in out_n:
        pos += len(n) + 1
        starts.append(pos)
    return _SymbolTable(array("Q", out_a), "\n".join(out_n) + "\n", starts,
                        {i: m for i, m in enumerate(out_m) if m is not None}, False)


class Kallsyms:
    """Address -> ``function+0xoff [module]`` from /proc/kallsyms.

    Only text symbols (t/T/w/W) are kept: we symbolize instruction pointers,
    and data symbols would otherwise "own" the gaps between functions.

    A lookup miss (address below all symbols, or further than
    ``max_offset`` past the nearest one -- typically a module or BPF program
    loaded after we read the file) triggers :meth:`reload`, but at most once
    every ``reload_interval_s`` seconds, so a stream of truly unknown
    addresses cannot make the daemon re-read a 10 MB file per packet.
    """

    def __init__(
        self,
        path: Path = DEFAULT_KALLSYMS,
        *,
        reload_interval_s: float = 60.0,
        cache_size: int = 4096,
        max_offset: int = 1 << 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.reload_interval_s = reload_interval_s
        self.cache_size = cache_size
        self.max_offset = max_offset
        self._clock = clock
        self._cache: OrderedDict[int, str] = OrderedDict()
        self.reload_count = 0
        self._table = _read_kallsyms(self.path)
        self._last_load = clock()

    @classmethod
    def load(
        cls,
        path: Path = DEFAULT_KALLSYMS,
        *,
        reload_interval_s: float = 60.0,
        cache_size: int = 4096,
        max_offset: int = 1 << 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> Kallsyms:
        return cls(path, reload_interval_s=reload_interval_s, cache_size=cache_size,
                   max_offset=max_offset, clock=clock)

    @property
    def restricted(self) -> bool:
        """True when kptr_restrict hides addresses (all read as zero)."""
        return self._table.restricted

    def __len__(self) -> int:
        return len(self._table.addrs)

    @property
    def cached_entries(self) -> int:
        return len(self._cache)

    def reload(self) -> None:
        """Re-read the file (modules/BPF programs come and go)."""
        self._table = _read_kallsyms(self.path)
        self._cache.clear()
        self._last_load = self._clock()
        self.reload_count += 1

    def address_of(self, name: str) -> int | None:
        """Address of a text symbol (linear scan; for tests and setup only)."""
        try:
            return self._table.addrs[self._table.index(name)]
        except ValueError:
            return None

    def symbolize(self, addr: int) -> str:
        cached = self._cache.get(addr)
        if cached is not None:
            self._cache.move_to_end(addr)
            return cached
        result = self._lookup(addr)
        if result is None and self._clock() - self._last_load >= self.reload_interval_s:
            self.reload()
            result = self._lookup(addr)
        if result is None:
            # Misses are not cached so a later (rate-limited) reload can fix them.
            return f"0x{addr:x}"
        self._cache[addr] = result
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return result

    def _lookup(self, addr: int) -> str | None:
        t = self._table
        if t.restricted:
            return None
        i = bisect.bisect_right(t.addrs, addr) - 1
        if i < 0:
            return None
        off = addr - t.addrs[i]
        if off > self.max_offset:
            return None
        module = t.module(i)
        text = f"{t.name(i)}+0x{off:x}"
        return f"{text} [{module}]" if module else text

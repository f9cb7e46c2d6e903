"""Rules: the YAML/JSON format, its validation, and its compilation into the
contents of the labeler's maps.

How overlapping rules resolve (documented in the README, tested in
tests/unit/test_rules.py): the label comes from the most specific matching
rule that sets a label, and the side from the most specific matching rule
that sets a side; they are resolved independently. "Most specific" compares,
in order:

1. the matched prefix length (for a rule with both src and dst, the sum of
   the two; a rule with neither matches at length -1, below /0);
2. a rule with a dport beats one without;
3. a rule with a proto beats one without;
4. the earlier rule in the file.

Packets that match no side rule get ``default_side``.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import abi, lpm

LABEL_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
UNLABELED = "unlabeled"
PROTOS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}
MAX_RULES = 65535
MAX_FILE_BYTES = 32 * 1024 * 1024
MAX_LIST_ENTRIES = 2_000_000
# Both generations must fit during a reload (see dropwatch.h).
MAX_PREFIX_ENTRIES = abi.DW_MAX_PREFIXES // abi.DW_GENS
MAX_PAIR_ENTRIES = abi.DW_MAX_PAIRS // abi.DW_GENS

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class RulesError(ValueError):
    """A rules file or body that cannot be applied. Nothing was applied."""

    def __init__(self, message: str, *, source: str = "", rule: int | None = None,
                 field: str | None = None) -> None:
        self.source = source
        self.rule = rule
        self.field = field
        where = source
        if rule is not None:
            where += f"{': ' if where else ''}rules[{rule}]"
            if field:
                where += f".{field}"
        elif field:
            where += f"{': ' if where else ''}{field}"
        super().__init__(f"{where}: {message}" if where else message)


def _show(value: Any, limit: int = 60) -> str:
    """A bad value for an error message: quoted, and cut if long (a 1 MB
    value must not make a 1 MB error line)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _parse_network(value: Any) -> Network:
    if not isinstance(value, str):
        raise ValueError(f"expected a CIDR string, got {type(value).__name__}")
    try:
        net = ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"invalid CIDR {_show(value)}: {str(exc)[:120]}") from None
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.network_address.ipv4_mapped:
        raise ValueError(f"{_show(value)} is IPv4-mapped IPv6; IPv4 packets are matched by IPv4 prefixes, write "
                         f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
    return net


def _parse_port_range(value: Any) -> tuple[int, int]:
    if isinstance(value, bool):
        raise ValueError("expected a port or a 'lo-hi' range")
    if isinstance(value, int):
        lo = hi = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]{1,5})\s*(?:-\s*([0-9]{1,5})\s*)?", value, re.ASCII)
        if not m:
            raise ValueError(f"invalid port or range {_show(value)}: use 443 or '5000-5999'")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
    else:
        raise ValueError(f"expected a port or a 'lo-hi' range, got {type(value).__name__}")
    if not (0 <= lo <= 65535 and 0 <= hi <= 65535):
        raise ValueError(f"port {_show(value)} out of range 0-65535")
    if lo > hi:
        raise ValueError(f"range {_show(value)} is empty (lo > hi)")
    return lo, hi


def _cidr_item(value: Any) -> str:
    return str(_parse_network(value))


def _port_item(value: Any) -> int | str:
    _parse_port_range(value)
    return value  # type: ignore[no-any-return]


Cidr = Annotated[Any, AfterValidator(_cidr_item)]
PortSpec = Annotated[Any, AfterValidator(_port_item)]


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str | None = None
    side: Literal["eyeball", "origin"] | None = None
    src: list[Cidr] | None = None
    dst: list[Cidr] | None = None
    proto: Literal["tcp", "udp", "icmp", "icmpv6"] | None = None
    dport: list[PortSpec] | None = None

    @field_validator("label")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not LABEL_RE.fullmatch(v):
            raise ValueError(f"invalid label {_show(v)}: 1-64 characters of A-Z a-z 0-9 _ . -")
        if v == UNLABELED:
            raise ValueError(f"{UNLABELED!r} is reserved for drops that match no label")
        return v

    @field_validator("src", "dst")
    @classmethod
    def _nets(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("empty list: omit the field to match any address")
        return v

    @field_validator("dport")
    @classmethod
    def _ports(cls, v: list[int | str] | None) -> list[int | str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("empty list: omit the field to match any port")
        return v

    @model_validator(mode="after")
    def _sets_something(self) -> Rule:
        if self.label is None and self.side is None:
            raise ValueError("a rule must set a label, a side, or both")
        if self.dport is not None and self.proto in ("icmp", "icmpv6"):
            raise ValueError("dport needs proto tcp or udp (or no proto)")
        return self

    def networks(self, which: str) -> list[Network]:
        values = self.src if which == "src" else self.dst
        return [ipaddress.ip_network(x) for x in values or []]

    def port_ranges(self) -> list[tuple[int, int]]:
        """Sorted, with overlapping/adjacent ranges merged."""
        if not self.dport:
            return [(0, 0xFFFF)]
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted(_parse_port_range(x) for x in self.dport):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
            else:
                merged.append((lo, hi))
        return merged


# PoP names the daemon uses itself: packets that were not tunnelled, and
# tunnelled packets whose outer source is in no PoP.
POP_NONE = "none"
POP_UNKNOWN = "unknown"
MAX_POPS = abi.DW_MAX_POPS - 1
MAX_POP_PREFIXES = abi.DW_MAX_POP_PREFIXES // abi.DW_GENS


class Pop(BaseModel):
    """A landing PoP: the outer source addresses of tunnels from it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    src: list[str]

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not LABEL_RE.match(v):
            raise ValueError(f"PoP name must match [A-Za-z0-9_.-]{{1,64}}, got {_show(v)}")
        if v in (POP_NONE, POP_UNKNOWN):
            raise ValueError(f"PoP name {v!r} is reserved (untunnelled / unknown source)")
        return v

    @field_validator("src", mode="before")
    @classmethod
    def _src(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not v:
            raise ValueError("src must be a non-empty list of prefixes")
        return [_cidr_item(x) for x in v]

    @field_validator("src")
    @classmethod
    def _nets(cls, v: list[str]) -> list[str]:
        return [str(_parse_network(x)) for x in v]

    def networks(self) -> list[Network]:
        return [ipaddress.ip_network(x) for x in self.src]


ENCAP_TYPES = {"vxlan": abi.EncapType.VXLAN, "gue": abi.EncapType.GUE, "fou": abi.EncapType.FOU}


class UdpEncap(BaseModel):
    """A UDP encapsulation on a destination port: its inner packet is labeled."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["vxlan", "gue", "fou"]
    port: int = Field(ge=1, le=65535)
    # FOU carries a bare IP packet with no header saying which: 4 or 41.
    ipproto: Literal[4, 41] | None = None

    @model_validator(mode="after")
    def _fou_proto(self) -> UdpEncap:
        if self.type == "fou" and self.ipproto is None:
            raise ValueError("fou needs ipproto: 4 (IPv4) or 41 (IPv6)")
        if self.type != "fou" and self.ipproto is not None:
            raise ValueError(f"ipproto applies to fou only, not {self.type}")
        return self


class FlowFallback(BaseModel):
    """Where metadata is lost at the drop, recover the label by inner flow."""

    model_config = ConfigDict(extra="forbid")

    # encap: tunnelled packets only (decap always moves the metadata);
    # all: every packet (a hash update per packet); off.
    mode: Literal["off", "encap", "all"] = "encap"
    max_age_ms: int = Field(default=1000, ge=1, le=3_600_000)


class RuleSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[Rule] = []
    default_side: Literal["eyeball", "origin", "unknown"] = "unknown"
    pops: list[Pop] = []
    encap: list[UdpEncap] = []
    flow_fallback: FlowFallback = FlowFallback()

    @field_validator("pops", "encap", mode="before")
    @classmethod
    def _none_is_empty_list(cls, v: Any) -> Any:
        return [] if v is None else v

    @field_validator("pops")
    @classmethod
    def _pops(cls, v: list[Pop]) -> list[Pop]:
        if len(v) > MAX_POPS:
            raise ValueError(f"{len(v)} PoPs; at most {MAX_POPS}")
        seen: dict[str, int] = {}
        owner: dict[Network, str] = {}
        total = 0
        for i, pop in enumerate(v):
            if pop.name in seen:
                raise ValueError(f"[{i}] PoP {pop.name!r} defined twice (also [{seen[pop.name]}])")
            seen[pop.name] = i
            for net in pop.networks():
                total += 1
                prev = owner.setdefault(net, pop.name)
                if prev != pop.name:
                    raise ValueError(f"[{i}] prefix {net} is in PoP {prev!r} and {pop.name!r}")
        if total > MAX_POP_PREFIXES:
            raise ValueError(f"{total} PoP prefixes; at most {MAX_POP_PREFIXES}")
        return v

    @field_validator("encap")
    @classmethod
    def _encap(cls, v: list[UdpEncap]) -> list[UdpEncap]:
        if len(v) > abi.DW_MAX_UDP_ENCAPS:
            raise ValueError(f"{len(v)} UDP encapsulations; at most {abi.DW_MAX_UDP_ENCAPS}")
        ports: dict[int, int] = {}
        for i, e in enumerate(v):
            if e.port in ports:
                raise ValueError(f"[{i}] port {e.port} already used by encap[{ports[e.port]}]")
            ports[e.port] = i
        return v

    def pop_names(self) -> list[str]:
        return [p.name for p in self.pops]

    @field_validator("rules", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        if v is None:
            return []  # "rules:" with no value: no rules
        if isinstance(v, list):
            # Before validating item by item: YAML aliases can make a small
            # file expand to millions of entries.
            total = 0
            for i, r in enumerate(v):
                if isinstance(r, Mapping):
                    for fld in ("src", "dst", "dport"):
                        x = r.get(fld)
                        total += len(x) if isinstance(x, (list, tuple)) else 0
                if total > MAX_LIST_ENTRIES:
                    raise ValueError(f"more than {MAX_LIST_ENTRIES} src/dst/dport entries in all (at rules[{i}])")
        return v

    @field_validator("rules")
    @classmethod
    def _count(cls, v: list[Rule]) -> list[Rule]:
        if len(v) > MAX_RULES:
            raise ValueError(f"{len(v)} rules; at most {MAX_RULES}")
        return v

    def labels(self) -> list[str]:
        return sorted({r.label for r in self.rules if r.label})

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump(exclude_none=True)
        # Keep files that never mentioned tunnels free of them on rewrite.
        for key in ("pops", "encap"):
            if not d.get(key):
                d.pop(key, None)
        if d.get("flow_fallback") == FlowFallback().model_dump():
            d.pop("flow_fallback", None)
        return d


def _error_from_validation(exc: ValidationError, source: str) -> RulesError:
    err = exc.errors()[0]
    loc = list(err.get("loc", ()))
    msg = str(err.get("msg", "invalid"))
    msg = msg.removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        msg = f"unknown key {loc[-1]!r}"
    elif err.get("type") == "literal_error":
        msg = f"{msg}, got {_show(err.get('input'))}"
    rule: int | None = None
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        rule = loc[1]
        rest = loc[2:]
    else:
        rest = loc
    fld = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in rest).replace(".[", "[") or None
    more = len(exc.errors()) - 1
    if more:
        msg += f" (and {more} more error{'s' if more > 1 else ''})"
    return RulesError(msg, source=source, rule=rule, field=fld)


def parse_rules(data: Any, source: str = "<body>") -> RuleSet:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise RulesError(f"expected a mapping with 'rules', got {type(data).__name__}", source=source)
    try:
        return RuleSet.model_validate(data)
    except ValidationError as exc:
        raise _error_from_validation(exc, source) from None
    except RecursionError:
        raise RulesError("nested too deeply", source=source) from None


def load_rules_file(path: Path) -> RuleSet:
    src = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise RulesError(f"file is {size} bytes; at most {MAX_FILE_BYTES}", source=src)
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"cannot read: {exc.strerror}", source=src) from None
    except UnicodeDecodeError as exc:
        raise RulesError(f"not UTF-8: {exc}", source=src) from None
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        # libyaml's loader when present: ~10x faster on large rule files.
        data = json.loads(text) if kind == "JSON" else yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise RulesError(f"not valid {kind}: {str(exc)[:300]}", source=src) from None
    except RecursionError:
        raise RulesError(f"not valid {kind}: nested too deeply", source=src) from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise RulesError(f"not valid {kind}: {str(exc)[:200]}", source=src) from None
    return parse_rules(data, src)


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def dump_rules_yaml(rs: RuleSet) -> str:
    return yaml.safe_dump(rs.to_dict(), sort_keys=False)


# ---------------------------------------------------------------- compilation

SIDE_IDS = {"unknown": abi.Side.UNKNOWN, "eyeball": abi.Side.EYEBALL, "origin": abi.Side.ORIGIN}


@dataclass(frozen=True)
class Candidate:
    label_id: int
    side: int
    proto: int
    dport_lo: int
    dport_hi: int
    prio: int
    rule: int
    flags: int = 0  # abi.DW_CAND_NEEDS_PORT when the rule has a dport


def _prio(match_len: int, has_dport: bool, has_proto: bool, rule_index: int) -> int:
    # match_len -1..256 (pairs sum two lengths); lower prio value wins.
    return ((256 - match_len) << 18) | ((0 if has_dport else 1) << 17) | ((0 if has_proto else 1) << 16) | rule_index


@dataclass
class CompiledRules:
    """Map contents for one generation, independent of which one."""

    # (fd, prefixlen, 16-byte masked address) -> (prefix_id, candidates)
    prefixes: dict[tuple[int, int, bytes], tuple[int, list[Candidate]]] = field(default_factory=dict)
    # (src_prefix_id, dst_prefix_id) -> candidates
    pairs: dict[tuple[int, int], list[Candidate]] = field(default_factory=dict)
    wildcard: list[Candidate] = field(default_factory=list)
    # fd -> prefix lengths in use, longest first (for reporting and tests)
    plens: dict[int, list[int]] = field(default_factory=dict)
    default_side: int = 0
    # What the labeler's longest-prefix match returns: results[i] is
    # (prefix_id, candidates) of result index i (results[0]: no match). A
    # prefix_id is kept only where dw_pairs needs it, so most prefixes
    # share a result.
    results: list[tuple[int, list[Candidate]]] = field(default_factory=lambda: [(0, [])])
    lpm: lpm.LpmTables = field(default_factory=lpm.LpmTables)
    label_ids: dict[str, int] = field(default_factory=dict)
    # Landing PoPs: (family, prefixlen, 16-byte masked address) -> pop id
    pop_prefixes: dict[tuple[int, int, bytes], int] = field(default_factory=dict)
    pop_ids: dict[str, int] = field(default_factory=dict)
    # (port, abi.EncapType, ipproto)
    udp_encaps: list[tuple[int, int, int]] = field(default_factory=list)
    flow_mode: int = abi.FlowMode.ENCAP
    flow_max_age_ms: int = 1000
    # rule index -> (label, side) for reporting
    rule_targets: list[tuple[str | None, str | None]] = field(default_factory=list)


def _fd(net: Network, which: str) -> int:
    base = abi.DW_FD_V4_SRC if net.version == 4 else abi.DW_FD_V6_SRC
    return base + (0 if which == "src" else 1)


def _addr16(net: Network) -> bytes:
    return net.network_address.packed.ljust(16, b"\0")


def _cands_for(rule: Rule, idx: int, match_len: int, label_ids: Mapping[str, int]) -> list[Candidate]:
    label_id = label_ids[rule.label] if rule.label else 0
    side = int(SIDE_IDS[rule.side]) if rule.side else 0
    proto = PROTOS[rule.proto] if rule.proto else 0
    prio = _prio(match_len, rule.dport is not None, rule.proto is not None, idx)
    flags = abi.DW_CAND_NEEDS_PORT if rule.dport is not None else 0
    return [Candidate(label_id, side, proto, lo, hi, prio, idx, flags) for lo, hi in rule.port_ranges()]


def _finish(cands: list[Candidate], what: str, source: str, rules: list[Rule] | None = None,
            fld: str = "dst") -> list[Candidate]:
    best: dict[tuple[int, int, int], Candidate] = {}
    for c in cands:
        k = (c.rule, c.dport_lo, c.dport_hi)
        if k not in best or c.prio < best[k].prio:
            best[k] = c
    out = sorted(best.values(), key=lambda c: c.prio)
    if len(out) > abi.DW_MAX_CANDS:
        culprit = out[abi.DW_MAX_CANDS].rule
        idxs = sorted({c.rule for c in out})
        # The rule's port ranges or its prefix list put it over the limit.
        if rules is not None and len(rules[culprit].port_ranges()) > 1:
            fld = "dport"
        raise RulesError(
            f"{len(out)} rule/port-range combinations apply to {what} (rules {idxs}); at most "
            f"{abi.DW_MAX_CANDS} may overlap one prefix: merge port ranges or split the prefix",
            source=source, rule=culprit, field=fld)
    return out


def _capacity_culprit(rs: RuleSet, limit: int) -> tuple[int | None, str | None]:
    """The rule (and field) at which the distinct prefixes pass `limit`."""
    seen: set[str] = set()
    for idx, r in enumerate(rs.rules):
        for fld in ("src", "dst"):
            for x in getattr(r, fld) or []:
                seen.add(f"{fld}:{x}")
                if len(seen) > limit:
                    return idx, fld
    return None, None


def compile_rules(rs: RuleSet, label_ids: Mapping[str, int], source: str = "<rules>",
                  pop_ids: Mapping[str, int] | None = None) -> CompiledRules:
    """Pure function from rules (+ stable label and PoP ids) to map contents."""
    for name in rs.labels():
        lid = label_ids.get(name)
        if lid is None or not (0 < lid < abi.DW_MAX_LABELS):
            raise RulesError(f"label {name!r} has no valid id", source=source)
    pop_ids = pop_ids or {}
    for name in rs.pop_names():
        pid = pop_ids.get(name)
        if pid is None or not (0 < pid < abi.DW_MAX_POPS):
            raise RulesError(f"PoP {name!r} has no valid id", source=source)
    out = CompiledRules(default_side=int(SIDE_IDS[rs.default_side]), label_ids=dict(label_ids))
    out.pop_ids = {n: pop_ids[n] for n in rs.pop_names()}
    for pop in rs.pops:
        for net in pop.networks():
            out.pop_prefixes[(net.version, net.prefixlen, _addr16(net))] = pop_ids[pop.name]
    out.udp_encaps = [(e.port, int(ENCAP_TYPES[e.type]), e.ipproto or 0) for e in rs.encap]
    out.flow_mode = int(abi.FlowMode[rs.flow_fallback.mode.upper()])
    out.flow_max_age_ms = rs.flow_fallback.max_age_ms
    out.rule_targets = [(r.label, r.side) for r in rs.rules]

    # Every prefix that appears anywhere, per direction/family.
    nets: dict[int, set[Network]] = defaultdict(set)
    single: dict[tuple[int, Network], list[Candidate]] = defaultdict(list)
    pair_rules: list[tuple[int, Rule]] = []
    for idx, rule in enumerate(rs.rules):
        srcs, dsts = rule.networks("src"), rule.networks("dst")
        for n in srcs:
            nets[_fd(n, "src")].add(n)
        for n in dsts:
            nets[_fd(n, "dst")].add(n)
        if srcs and dsts:
            pair_rules.append((idx, rule))
        elif srcs or dsts:
            for n in srcs or dsts:
                single[(_fd(n, "src" if srcs else "dst"), n)].extend(_cands_for(rule, idx, n.prefixlen, label_ids))
        else:
            out.wildcard.extend(_cands_for(rule, idx, -1, label_ids))
    out.wildcard = _finish(out.wildcard, "every packet (rules without src/dst)", source, rs.rules,
                           fld="proto")

    total = sum(len(v) for v in nets.values())
    if total > MAX_PREFIX_ENTRIES:
        culprit, cfld = _capacity_culprit(rs, MAX_PREFIX_ENTRIES)
        raise RulesError(f"{total} distinct prefixes; the maps hold at most {MAX_PREFIX_ENTRIES}", source=source,
                         rule=culprit, field=cfld)

    ids: dict[tuple[int, Network], int] = {}
    for fd in sorted(nets):
        lens = sorted({n.prefixlen for n in nets[fd]}, reverse=True)
        out.plens[fd] = lens
        members = {(n.prefixlen, n.network_address.packed) for n in nets[fd]}
        for n in sorted(nets[fd], key=lambda n: (n.prefixlen, n.network_address.packed)):
            pid = len(ids) + 1
            ids[(fd, n)] = pid
            cands: list[Candidate] = list(single.get((fd, n), []))
            # Inherit from covering prefixes: the lookup finds only the
            # longest match, but a shorter prefix's rule must still apply
            # when the longer one's proto/port conditions fail.
            for plen in lens:
                if plen >= n.prefixlen:
                    continue
                sup = n.supernet(new_prefix=plen)
                if (plen, sup.network_address.packed) in members:
                    cands.extend(single.get((fd, sup), []))
            out.prefixes[(fd, n.prefixlen, _addr16(n))] = (pid, _finish(
                cands, f"prefix {n}", source, rs.rules, "src" if fd in (abi.DW_FD_V4_SRC, abi.DW_FD_V6_SRC) else "dst"))

    # Rules with both src and dst: the lookup yields the longest src match s*
    # and dst match d*; the rule applies iff one of its src prefixes covers s*
    # and one of its dst prefixes covers d*. Enumerate those (s*, d*) pairs.
    pair_cands: dict[tuple[int, int], list[Candidate]] = defaultdict(list)
    desc_cache: dict[tuple[int, Network], list[int]] = {}

    def descendants(fd: int, p: Network) -> list[int]:
        # Prefixes of that direction/family inside p (p included); computed
        # once per prefix, so a rule with many src and dst prefixes costs
        # (src + dst) x prefixes, not src x dst x prefixes.
        key = (fd, p)
        if key not in desc_cache:
            desc_cache[key] = [ids[(fd, x)] for x in nets[fd] if x.subnet_of(p)]  # type: ignore[arg-type]
        return desc_cache[key]

    for idx, rule in pair_rules:
        srcs, dsts = rule.networks("src"), rule.networks("dst")
        # Bound the work before doing it: the pairs this rule would add.
        work = sum(len(descendants(_fd(s, "src"), s)) * len(descendants(_fd(d, "dst"), d))
                   for s in srcs for d in dsts if s.version == d.version)
        if work + len(pair_cands) > MAX_PAIR_ENTRIES:
            raise RulesError(f"its src x dst prefixes make {work} src/dst prefix pairs; the pair map holds at most "
                             f"{MAX_PAIR_ENTRIES} in all: split the rule or use fewer, shorter prefixes",
                             source=source, rule=idx, field="src")
        for s in srcs:
            for d in dsts:
                if s.version != d.version:
                    continue
                for si in descendants(_fd(s, "src"), s):
                    for di in descendants(_fd(d, "dst"), d):
                        pair_cands[(si, di)].extend(_cands_for(rule, idx, s.prefixlen + d.prefixlen, label_ids))
    for k, v in pair_cands.items():
        out.pairs[k] = _finish(v, f"src/dst pair {k}", source, rs.rules, "src")
    _compile_lpm(out, source)
    return out


def effective(cands: list[Candidate]) -> list[Candidate]:
    """The candidates eval_list() can still pick, in order: a candidate is
    dropped when, for every field it sets (label, side), a candidate without
    proto/port conditions (which always passes) sets that field at a lower
    prio. eval_list() keeps the lowest prio per field, so the outcome is the
    same for every packet, and many more prefixes share one result (a prefix
    nested in another rule's prefix keeps its own rule's candidate only)."""
    def free(c: Candidate) -> bool:
        return not c.proto and not c.flags & abi.DW_CAND_NEEDS_PORT

    best_label = min((c.prio for c in cands if c.label_id and free(c)), default=None)
    best_side = min((c.prio for c in cands if c.side and free(c)), default=None)
    return [c for c in cands
            if (c.label_id and (best_label is None or c.prio <= best_label))
            or (c.side and (best_side is None or c.prio <= best_side))]


def result_indexes(prefixes: Mapping[tuple[int, int, bytes], tuple[int, list[Candidate]]],
                   pair_ids: set[int]) -> tuple[list[tuple[int, list[Candidate]]], list[int]]:
    """Distinct (prefix_id, effective candidates) results, index 0 = no
    match, and each prefix's result index (in ``prefixes``' order). Prefixes
    outside every src+dst rule drop their prefix id, so they share results;
    a prefix with neither candidates nor a pair gets 0, like no match."""
    results: list[tuple[int, list[Candidate]]] = [(0, [])]
    seen: dict[tuple[int, tuple[Candidate, ...]], int] = {}
    idx: list[int] = []
    for pid, cands in prefixes.values():
        key = (pid if pid in pair_ids else 0, tuple(effective(cands)))
        if key == (0, ()):  # only in src+dst rules that pair with nothing: same as no match
            idx.append(0)
            continue
        i = seen.get(key)
        if i is None:
            i = seen[key] = len(results)
            results.append((key[0], list(key[1])))
        idx.append(i)
    return results, idx


def _compile_lpm(out: CompiledRules, source: str) -> None:
    pair_ids = {i for k in out.pairs for i in k}
    out.results, idx = result_indexes(out.prefixes, pair_ids)
    if len(out.results) > abi.DW_MAX_RESULTS - 1:
        raise RulesError(f"{len(out.results) - 1} distinct prefix results (candidate lists, and prefixes in src+dst "
                         f"rules); at most {abi.DW_MAX_RESULTS - 2}", source=source)
    width = {abi.DW_FD_V4_SRC: 4, abi.DW_FD_V4_DST: 4, abi.DW_FD_V6_SRC: 16, abi.DW_FD_V6_DST: 16}
    try:
        out.lpm = lpm.build((fd, plen, int.from_bytes(addr[:width[fd]], "big"), i)
                            for (fd, plen, addr), i in zip(out.prefixes, idx, strict=True))
    except lpm.LpmCapacityError as exc:
        raise RulesError(str(exc), source=source) from None


def classify_reference(rs: RuleSet, label_ids: Mapping[str, int], family: int, saddr: str | None,
                       daddr: str | None, proto: int | None, dport: int | None) -> tuple[int, int]:
    """The rules' meaning, written plainly (no maps), for tests: (label_id, side)."""
    best_label: tuple[int, int] | None = None
    best_side: tuple[int, int] | None = None
    sa = ipaddress.ip_address(saddr) if saddr else None
    da = ipaddress.ip_address(daddr) if daddr else None
    for idx, rule in enumerate(rs.rules):
        def longest(which: str, addr: Any, rule: Rule = rule) -> int | None:
            nets = rule.networks(which)
            if not nets:
                return -2  # field absent: matches anything
            lens = [n.prefixlen for n in nets if addr is not None and n.version == family and addr in n]
            return max(lens) if lens else None

        ls, ld = longest("src", sa), longest("dst", da)
        if ls is None or ld is None:
            continue
        if rule.proto and PROTOS[rule.proto] != proto:
            continue
        if rule.dport and (dport is None or not any(lo <= dport <= hi for lo, hi in rule.port_ranges())):
            continue
        if ls == -2 and ld == -2:
            match_len = -1
        elif ls == -2:
            match_len = ld  # type: ignore[assignment]
        elif ld == -2:
            match_len = ls
        else:
            match_len = ls + ld
        prio = _prio(match_len, rule.dport is not None, rule.proto is not None, idx)
        if rule.label and (best_label is None or prio < best_label[0]):
            best_label = (prio, label_ids[rule.label])
        if rule.side and (best_side is None or prio < best_side[0]):
            best_side = (prio, int(SIDE_IDS[rule.side]))
    return (best_label[1] if best_label else 0,
            best_side[1] if best_side else int(SIDE_IDS[rs.default_side]))


LabelIdSource = Callable[[list[str]], dict[str, int]]

"""Rules fuzzing: every input either compiles completely or is refused with
a RulesError that names the rule and the field; never another exception.

Covered: huge lists (100k prefixes), duplicate prefixes, overlapping prefix
and port ranges, IPv4-mapped IPv6, /0, unicode names and values, 10 MB
files (JSON and YAML; valid, over capacity, bad), deeply nested documents,
and Hypothesis on arbitrary JSON-like values for parse_rules (then
compile_rules on whatever parses). "Completely" is checked against the
rules themselves: every distinct prefix is in the compiled maps with the
candidate of every rule that names it.

The kernel side of reloads (all or nothing in the maps) is
tests/bpf/test_rules_apply.py.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dropwatch import abi
from dropwatch import rules as rules_mod
from dropwatch.rules import (
    MAX_FILE_BYTES,
    MAX_PREFIX_ENTRIES,
    MAX_RULES,
    CompiledRules,
    RulesError,
    RuleSet,
    compile_rules,
    dump_rules_yaml,
    load_rules_file,
    parse_rules,
)

pytestmark = pytest.mark.unit

FUZZ_EXAMPLES = int(os.environ.get("DROPWATCH_RULES_FUZZ_EXAMPLES", "600"))


def ids_for(rs: RuleSet) -> dict[str, int]:
    return {name: i + 1 for i, name in enumerate(rs.labels())}


def assert_complete(rs: RuleSet, c: CompiledRules) -> None:
    """Every distinct prefix of every rule is in the compiled maps, and every
    single-field rule (src or dst, not both) is a candidate on each of its
    prefixes; every src+dst rule is in some pair."""
    want: dict[tuple[int, int, bytes], set[int]] = {}
    pair_rules = set()
    for idx, r in enumerate(rs.rules):
        srcs, dsts = r.networks("src"), r.networks("dst")
        for which, nets in (("src", srcs), ("dst", dsts)):
            for n in nets:
                fd = (abi.DW_FD_V4_SRC if n.version == 4 else abi.DW_FD_V6_SRC) + (which == "dst")
                key = (fd, n.prefixlen, n.network_address.packed.ljust(16, b"\0"))
                rules_here = want.setdefault(key, set())
                if not (srcs and dsts):
                    rules_here.add(idx)
        if srcs and dsts and any(s.version == d.version for s in srcs for d in dsts):
            pair_rules.add(idx)
    assert set(c.prefixes) == set(want), "compiled prefixes differ from the rules' distinct prefixes"
    for key, rule_idx in want.items():
        got = {cand.rule for cand in c.prefixes[key][1]}
        assert rule_idx <= got, (key, rule_idx, got)
    in_pairs = {cand.rule for cands in c.pairs.values() for cand in cands}
    assert pair_rules == in_pairs
    assert {cand.rule for cand in c.wildcard} == {i for i, r in enumerate(rs.rules) if not r.src and not r.dst}


def assert_refusal_names(exc: RulesError, rule: int | None, field_prefix: str | None) -> None:
    msg = str(exc)
    assert type(exc) is RulesError
    if rule is not None:
        assert exc.rule == rule, msg
        assert f"rules[{rule}]" in msg, msg
    if field_prefix is not None:
        assert exc.field is not None and exc.field.startswith(field_prefix), (exc.field, msg)
        assert exc.field in msg, msg


def refused(data: Any) -> RulesError:
    with pytest.raises(RulesError) as ei:
        rs = parse_rules(data)
        compile_rules(rs, ids_for(rs))
    return ei.value


# ---------------------------------------------------------------- huge lists

def _v4(i: int, plen: int = 24) -> str:
    return str(ipaddress.IPv4Network(((10 << 24) + (i << (32 - plen)), plen)))


def _v6(i: int, plen: int = 64) -> str:
    return str(ipaddress.IPv6Network(((0x20010DB8 << 96) + (i << (128 - plen)), plen)))


def test_100k_prefixes_in_one_rule_compile_completely() -> None:
    pf = [_v4(i) for i in range(60_000)] + [_v6(i) for i in range(40_000)]
    t0 = time.monotonic()
    rs = parse_rules({"rules": [{"label": "big", "dst": pf}, {"side": "origin", "src": pf[:5000]}]})
    c = compile_rules(rs, ids_for(rs))
    assert len(c.prefixes) == 105_000
    assert_complete(rs, c)
    assert time.monotonic() - t0 < 60


def test_100k_prefixes_over_many_rules_with_nesting() -> None:
    # 1000 rules, each with its own /19 and, nested inside it, 25 /24s and
    # a /32 in each; a v6 /48 with 25 /64s; all under one 10.0.0.0/8 rule:
    # inheritance from covering prefixes is exercised on every entry.
    rule_list: list[dict[str, Any]] = [{"side": "origin", "dst": ["10.0.0.0/8", "2001:db8::/32"]}]
    for r in range(1000):
        base = (10 << 24) + (r << 13)
        pf = [str(ipaddress.IPv4Network((base, 19))), str(ipaddress.IPv6Network(((0x20010DB8 << 96) + (r << 80), 48)))]
        for j in range(25):
            pf += [str(ipaddress.IPv4Network((base + (j << 8), 24))), str(ipaddress.IPv4Address(base + (j << 8) + 1)),
                   str(ipaddress.IPv6Network(((0x20010DB8 << 96) + (r << 80) + (j << 64), 64)))]
        rule_list.append({"label": f"l{r % 50}", "dst": pf, **({"proto": "udp"} if r % 3 == 0 else {})})
    rs = parse_rules({"rules": rule_list})
    c = compile_rules(rs, ids_for(rs))
    assert_complete(rs, c)
    assert len(c.prefixes) == 2 + 1000 * 77


def test_max_rules_boundary() -> None:
    ok = parse_rules({"rules": [{"label": "a"}] * MAX_RULES})
    assert len(ok.rules) == MAX_RULES
    e = refused({"rules": [{"label": "a"}] * (MAX_RULES + 1)})
    assert e.field == "rules" and str(MAX_RULES) in str(e), str(e)


# ---------------------------------------------------------------- duplicates, overlaps

def test_duplicate_prefixes() -> None:
    # the same prefix 1000 times in a rule, and spelled differently
    rs = parse_rules({"rules": [{"label": "a", "dst": ["10.1.0.0/16"] * 1000 + [" 10.1.0.0/16", "10.1.0.0/16 "]},
                                {"label": "b", "dst": ["2001:db8::/32", "2001:0db8:0000::/32", "2001:DB8::/32"]}]})
    c = compile_rules(rs, ids_for(rs))
    assert len(c.prefixes) == 2 and all(len(cands) == 1 for _, cands in c.prefixes.values())
    assert_complete(rs, c)
    # the same prefix in DW_MAX_CANDS rules fits; in one more it is refused, naming the rule
    same = [{"label": f"r{i}", "dst": ["10.1.0.0/16"]} for i in range(abi.DW_MAX_CANDS)]
    rs = parse_rules({"rules": same})
    c = compile_rules(rs, ids_for(rs))
    assert_complete(rs, c)
    e = refused({"rules": same + [{"label": "late", "dst": ["10.1.0.0/16"]}]})
    assert_refusal_names(e, abi.DW_MAX_CANDS, None)
    assert f"at most {abi.DW_MAX_CANDS}" in str(e)


def test_overlapping_port_ranges_merge() -> None:
    rs = parse_rules({"rules": [{"label": "a", "proto": "tcp", "dst": ["10.0.0.0/8"],
                                 "dport": ["1-100", "50-200", 80, "201-300", 300, "0-0", 65535, "65000-65535"]}]})
    assert rs.rules[0].port_ranges() == [(0, 300), (65000, 65535)]
    c = compile_rules(rs, ids_for(rs))
    assert [(x.dport_lo, x.dport_hi) for x in next(iter(c.prefixes.values()))[1]] == [(0, 300), (65000, 65535)]
    # 8 disjoint ranges fit one prefix, 9 do not (the rule is named)
    eight = [f"{i * 10}-{i * 10 + 5}" for i in range(abi.DW_MAX_CANDS)]
    compile_rules(parse_rules({"rules": [{"label": "a", "dport": eight, "dst": ["10.0.0.0/8"]}]}), {"a": 1})
    e = refused({"rules": [{"label": "a"}, {"label": "a", "dport": eight + ["100-110"], "dst": ["10.0.0.0/8"]}]})
    assert_refusal_names(e, 1, None)


def test_overlapping_prefixes_inherit() -> None:
    rs = parse_rules({"rules": [
        {"label": "wide", "dst": ["0.0.0.0/0", "::/0"]},
        {"label": "mid", "proto": "udp", "dst": ["10.0.0.0/8", "10.0.0.0/16", "2001:db8::/32"]},
        {"label": "narrow", "proto": "tcp", "dport": [80], "dst": ["10.0.0.0/24", "10.0.0.1/32", "2001:db8::1/128"]},
        {"side": "origin", "src": ["0.0.0.0/0"], "dst": ["10.0.0.0/8"]},
    ]})
    c = compile_rules(rs, ids_for(rs))
    assert_complete(rs, c)
    host = c.prefixes[(abi.DW_FD_V4_DST, 32, ipaddress.IPv4Address("10.0.0.1").packed.ljust(16, b"\0"))][1]
    assert {x.rule for x in host} == {0, 1, 2}  # the /32 carries the rules of every covering prefix


# ---------------------------------------------------------------- mapped v6, /0, bad CIDRs

@pytest.mark.parametrize(("value", "ok"), [
    ("::ffff:10.0.0.0/104", False), ("::ffff:0:0/96", False), ("::ffff:10.0.0.1", False),
    ("::ffff:10.0.0.1/128", False), ("::ffff:0.0.0.0/96", False),
    ("::fffe:0:0/95", True),  # wider than (and covering) the mapped range: an ordinary IPv6 prefix
    ("::10.0.0.0/104", True),  # IPv4-compatible (deprecated), not mapped
    ("64:ff9b::/96", True),  # NAT64
    ("0.0.0.0/0", True), ("::/0", True), ("0.0.0.0/32", True), ("::/128", True), ("255.255.255.255/32", True),
    ("10.0.0.0/0", False), ("10.0.0.1/24", False), ("0.0.0.0/33", False), ("::/129", False), ("10.0.0.0/-1", False),
    ("10.0.0.0/ 8", False), ("10.0.0.0//8", False), ("10.0.0.0/8/8", False), ("", False), ("/", False),
    ("1" * 5000, False), ("10.0.0.0/" + "0" * 5000 + "8", False), ("10.0.0.0/0x8", False),
    ("fe80::1%eth0/128", True),  # ipaddress accepts a scope id; the maps hold the address only
    ("2001:db8::/32\x00", False),
])
def test_cidr_values(value: str, ok: bool) -> None:
    data = {"rules": [{"label": "a", "dst": ["192.0.2.0/24", value]}]}
    if ok:
        rs = parse_rules(data)
        assert_complete(rs, compile_rules(rs, {"a": 1}))
    else:
        assert_refusal_names(refused(data), 0, "dst[1]")


def test_ipv4_mapped_message_says_what_to_write() -> None:
    e = refused({"rules": [{"label": "a", "src": ["::ffff:10.1.0.0/112"]}]})
    assert "10.1.0.0/16" in str(e), str(e)


# ---------------------------------------------------------------- unicode

UNICODE_LABELS = ["kundé", "Kunde-Ä", "客户", "١٢٣", "１２３", "abc\u200b", "a\u0301", "ab\u202ec", "🙂",
                  "unlabeled", "unlabeleď", "a\nb", "a b", "a/b", "", "x" * 65, "ı", "\u212a"]  # Kelvin sign


@pytest.mark.parametrize("label", UNICODE_LABELS)
def test_unicode_labels_refused_naming_the_field(label: str) -> None:
    assert_refusal_names(refused({"rules": [{"side": "origin"}, {"label": label}]}), 1, "label")


@pytest.mark.parametrize(("key", "value", "field"), [
    ("dst", ["１０.0.0.0/8"], "dst[0]"),  # fullwidth digits
    ("dst", ["10.0.0.0/８"], "dst[0]"),
    ("src", ["٢٠٠١:db8::/32"], "src[0]"),
    ("dport", ["４４３"], "dport[0]"),
    ("dport", ["٤٤٣-٥٥٥"], "dport[0]"),
    ("dport", ["443–444"], "dport[0]"),  # en dash
    ("proto", "ｔｃｐ", "proto"),
    ("side", "origın", "side"),  # dotless i
    ("lábel", "x", "lábel"),
])
def test_unicode_values_refused_naming_the_field(key: str, value: Any, field: str) -> None:
    rule: dict[str, Any] = {"label": "ok", key: value}
    assert_refusal_names(refused({"rules": [rule]}), 0, field)


def test_unicode_default_side_refused() -> None:
    e = refused({"rules": [], "default_side": "ｅyeball"})
    assert e.field == "default_side", str(e)


# ---------------------------------------------------------------- files

def _json_file(path: Path, data: Any, size: int) -> Path:
    text = json.dumps(data)
    assert len(text) <= size, len(text)
    path.write_text(text + " " * (size - len(text)))  # JSON allows trailing whitespace
    assert path.stat().st_size == size
    return path


TEN_MB = 10 * 1024 * 1024


def test_10mb_json_valid_compiles_completely(tmp_path: Path) -> None:
    rule_list = [{"label": f"c{r % 100}", "dst": [_v4(r * 100 + j, 28) for j in range(100)],
                  "proto": "udp", "dport": [443, "5000-5999"]} for r in range(1000)]
    p = _json_file(tmp_path / "big.json", {"rules": rule_list, "default_side": "eyeball"}, TEN_MB)
    rs = load_rules_file(p)
    c = compile_rules(rs, ids_for(rs))
    assert len(c.prefixes) == 100_000
    assert_complete(rs, c)


def test_10mb_json_over_capacity_refused(tmp_path: Path) -> None:
    n = MAX_PREFIX_ENTRIES + 1
    pf = [str(ipaddress.IPv4Address((10 << 24) + i)) for i in range(n)]  # bare addresses: /32
    p = _json_file(tmp_path / "over.json", {"rules": [{"label": "a", "dst": pf}]}, TEN_MB)
    rs = load_rules_file(p)
    with pytest.raises(RulesError) as ei:
        compile_rules(rs, {"a": 1}, source=str(p))
    msg = str(ei.value)
    assert f"{n} distinct prefixes" in msg and f"at most {MAX_PREFIX_ENTRIES}" in msg and str(p) in msg, msg


def test_10mb_yaml_huge_label_refused(tmp_path: Path) -> None:
    p = tmp_path / "big.yaml"
    p.write_text("rules:\n  - dst: [10.0.0.0/8]\n    label: " + "x" * TEN_MB + "\n")
    with pytest.raises(RulesError) as ei:
        load_rules_file(p)
    assert_refusal_names(ei.value, 0, "label")
    assert str(p) in str(ei.value)


@pytest.mark.parametrize("field", ["label", "dst"])
def test_refusal_message_is_bounded(field: str) -> None:
    huge = "x" * (1 << 20)
    rule = {"label": huge} if field == "label" else {"label": "a", "dst": [huge]}
    e = refused({"rules": [rule]})
    assert_refusal_names(e, 0, field)
    assert len(str(e)) < 4096, f"{len(str(e))}-character message"


def test_10mb_yaml_comment_then_valid_rules(tmp_path: Path) -> None:
    p = tmp_path / "commented.yaml"
    p.write_text("# " + "-" * TEN_MB + "\nrules:\n  - label: a\n    dst: [10.0.0.0/8]\n")
    rs = load_rules_file(p)
    assert_complete(rs, compile_rules(rs, {"a": 1}))


def test_file_over_size_limit_refused(tmp_path: Path) -> None:
    p = tmp_path / "huge.yaml"
    with open(p, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(RulesError, match=f"at most {MAX_FILE_BYTES}"):
        load_rules_file(p)


@pytest.mark.parametrize(("name", "raw"), [
    ("latin1.yaml", "rules:\n  - label: kund\xe9\n".encode("latin-1")),
    ("bom.json", b"\xef\xbb\xbf" + json.dumps({"rules": []}).encode()),
    ("nul.yaml", b"rules:\n  - label: a\x00b\n"),
    ("tabs.yaml", b"rules:\n\t- label: a\n"),
    ("dupkey.yaml", b"rules: []\nrules: [{label: a}]\n"),
    ("list.yaml", b"- label: a\n"),
    ("scalar.json", b"42"),
    ("empty.yaml", b""),
    ("anchors.yaml", b"x: &a [10.0.0.0/8]\nrules: [{label: a, dst: *a}]\n"),
    ("python.yaml", b"rules: !!python/object/apply:os.system ['true']\n"),
    ("bad.json", b'{"rules": [}'),
    ("trunc.json", json.dumps({"rules": [{"label": "a", "dst": ["10.0.0.0/8"]}]}).encode()[:-3]),
    ("nan.json", b'{"rules": [{"label": "a", "dport": [NaN]}]}'),
    ("float.json", b'{"rules": [{"label": "a", "dport": [443.0]}]}'),
])
def test_odd_files(tmp_path: Path, name: str, raw: bytes) -> None:
    """Each compiles or is refused with a RulesError, nothing else."""
    p = tmp_path / name
    p.write_bytes(raw)
    try:
        rs = load_rules_file(p)
        compile_rules(rs, ids_for(rs))
    except RulesError as exc:
        assert str(p) in str(exc)


DEEP = 100_000


@pytest.mark.parametrize(("name", "text"), [
    ("deep.json", '{"rules": ' + "[" * DEEP + "]" * DEEP + "}"),
    ("deep.yaml", "rules: " + "[" * DEEP + "]" * DEEP + "\n"),
    ("deep-block.yaml", "rules:\n" + "".join("  " * i + "-\n" for i in range(1500))),
    ("bigint.json", '{"rules": [{"label": "a", "dport": [' + "9" * 5000 + "]}]}"),
    ("bigint.yaml", "rules:\n  - label: a\n    dport: [" + "9" * 5000 + "]\n"),
])
def test_decoder_failures_are_rules_errors(tmp_path: Path, name: str, text: str) -> None:
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(RulesError) as ei:
        load_rules_file(p)
    assert str(p) in str(ei.value)


# ---------------------------------------------------------------- capacity errors name rule and field

@contextmanager
def _limit(monkeypatch: pytest.MonkeyPatch, name: str, value: int) -> Iterator[None]:
    with monkeypatch.context() as m:
        m.setattr(rules_mod, name, value)
        yield


@pytest.mark.parametrize("case", [
    "prefixes",
    "pairs",
    "candidates",
])
def test_capacity_refusal_names_rule_and_field(monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    if case == "prefixes":
        data = {"rules": [{"label": "a", "dst": [_v4(i) for i in range(10)]},
                          {"label": "b", "src": [_v4(i + 100) for i in range(10)]}]}
        limit: tuple[str, int] | None = ("MAX_PREFIX_ENTRIES", 15)
        rule = 1
    elif case == "pairs":
        data = {"rules": [{"label": "a", "dst": ["10.0.0.0/8"]},
                          {"label": "b", "src": [_v4(i) for i in range(4)], "dst": [_v4(i + 100) for i in range(4)]}]}
        limit, rule = ("MAX_PAIR_ENTRIES", 10), 1
    else:
        data = {"rules": [{"label": "a", "dport": [i], "dst": ["10.0.0.0/8"]} for i in range(abi.DW_MAX_CANDS + 1)]}
        limit, rule = None, abi.DW_MAX_CANDS
    with _limit(monkeypatch, *limit) if limit else _nothing():
        e = refused(data)
    assert e.rule == rule and e.field is not None and f"rules[{rule}].{e.field}" in str(e), str(e)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


class _Timeout(Exception):
    pass


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    def fire(signum: int, frame: Any) -> None:
        raise _Timeout(f"still compiling after {seconds}s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_pair_heavy_rule_refused_quickly() -> None:
    n = 400
    rs = parse_rules({"rules": [{"label": "a", "src": [_v4(i) for i in range(n)],
                                 "dst": [_v4(i + 1000) for i in range(n)]}]})
    with _deadline(5.0), pytest.raises(RulesError, match="pairs"):
        compile_rules(rs, {"a": 1})


# ---------------------------------------------------------------- Hypothesis: arbitrary values

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-1, 70000), st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["10.0.0.0/8", "10.0.0.1/8", "::/0", "0.0.0.0/0", "::ffff:1.2.3.4/128", "2001:db8::/32",
                     "443", "5000-5999", "6-5", "tcp", "udp", "icmp", "icmpv6", "eyeball", "origin", "unknown",
                     "custA", "unlabeled", "a" * 64, "a" * 65, " 80 ", "1.2.3.4", "", "-", "0-65535"]),
)
_json_like = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=5)),
    max_leaves=25)
_KEYS = ["label", "side", "src", "dst", "proto", "dport"]


@st.composite
def rule_like(draw: st.DrawFn) -> dict[Any, Any]:
    keys = draw(st.lists(st.sampled_from(_KEYS + ["colour", "Label", 1]), max_size=6, unique=True))
    out: dict[Any, Any] = {}
    for k in keys:
        if k in ("src", "dst", "dport") and draw(st.booleans()):
            out[k] = draw(st.lists(_scalars, max_size=4))
        else:
            out[k] = draw(_scalars if draw(st.booleans()) else _json_like)
    return out


ruleset_like = st.one_of(
    _json_like,
    st.fixed_dictionaries({"rules": st.lists(rule_like(), max_size=6)},
                          optional={"default_side": _scalars, "extra": _json_like}),
    st.fixed_dictionaries({"rules": st.one_of(_json_like, st.lists(_json_like, max_size=4))}),
)


def _check_error(exc: RulesError, data: Any) -> None:
    msg = str(exc)
    assert msg
    if exc.rule is not None:
        assert isinstance(data, dict) and isinstance(data.get("rules"), list)
        assert 0 <= exc.rule < len(data["rules"]), (exc.rule, msg)
        assert f"rules[{exc.rule}]" in msg
    if exc.field:
        assert exc.field in msg


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=ruleset_like)
def test_fuzz_parse_and_compile(data: Any) -> None:
    """Anything: a RuleSet that compiles completely (or a capacity
    RulesError), or a RulesError; never another exception."""
    try:
        rs = parse_rules(data)
    except RulesError as exc:
        _check_error(exc, data)
        return
    try:
        c = compile_rules(rs, ids_for(rs))
    except RulesError as exc:
        _check_error(exc, data)
        return
    assert_complete(rs, c)
    # What parses round-trips through the YAML the daemon writes back.
    again = parse_rules(yaml.safe_load(dump_rules_yaml(rs)))
    assert again == rs


@settings(max_examples=FUZZ_EXAMPLES // 2, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=ruleset_like, as_json=st.booleans(), cut=st.integers(0, 1 << 16), junk=st.binary(max_size=4))
def test_fuzz_files(tmp_path_factory: pytest.TempPathFactory, data: Any, as_json: bool, cut: int,
                    junk: bytes) -> None:
    """The same through load_rules_file, with the text cut short and junk
    bytes appended: RulesError or success, nothing else."""
    try:
        text = json.dumps(data) if as_json else yaml.safe_dump(data)
    except (ValueError, yaml.YAMLError):
        return  # not representable (e.g. NaN keys): nothing to write
    raw = text.encode()
    raw = raw[: cut % (len(raw) + 1)] + junk
    p = tmp_path_factory.mktemp("f") / ("r.json" if as_json else "r.yaml")
    p.write_bytes(raw)
    try:
        rs = load_rules_file(p)
        compile_rules(rs, ids_for(rs))
    except RulesError as exc:
        assert str(p) in str(exc)


def test_nan_and_inf_ports() -> None:
    for v in (math.nan, math.inf, -math.inf, 443.0, True, "443.0", b"443"):
        assert_refusal_names(refused({"rules": [{"label": "a", "dport": [v]}]}), 0, "dport[0]")

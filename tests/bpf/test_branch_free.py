"""The classifier's coin tosses compile without a branch.

Which lane of a direct entry matches, and which way each halving of a
search goes, is a coin toss per packet with random flows: as a branch, each
mispredicts half the time (about 20 ns here). The C computes them with
arithmetic, but BPF has no conditional move, and clang turns a select it
recognises (x == 0, a < b from a difference whose bounds it knows, a mask
from a sign) into a compare and a jump. Until session 10 it had done so in
the IPv6 lanes (three jumps a lookup), the IPv6 small chunks' halvings
(four), the IPv4 chunks' halvings and key_min(): 9 ns a packet with 10^5
IPv6 prefixes and random flows, while the comments said "no branch". This
test reads the compiled object, so that a compiler or an edit cannot bring
them back unnoticed. The halvings compare through le48(), which is listed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "bpf" / "labeler.bpf.c"

# Functions whose every instruction must be straight-line code.
BRANCH_FREE = ("lanes_le", "le48", "line32_le", "pivot_le", "lpm4_lanes", "lpm6_lanes", "lpm6_small", "key_min")

_FUNC = re.compile(r"^static __always_inline [\w\s\*]+?\b(\w+)\(")
_LINE = re.compile(r"^; .*?([\w.]+):(\d+)")
_COND_JUMP = re.compile(r"^\s*\d+:\s+if .* goto ")
# A map lookup's NULL check: the verifier requires it, and it never goes
# the other way.
_NULL_CHECK = re.compile(r"^\s*if \(!\w+\)$")


def function_lines(src: Path) -> dict[str, range]:
    """Source line range of every static inline function, by name."""
    out: dict[str, range] = {}
    lines = src.read_text().splitlines()
    for i, text in enumerate(lines):
        m = _FUNC.match(text)
        if not m:
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j] == "}")
        out[m.group(1)] = range(i + 1, end + 2)  # 1-based, header to closing brace
    return out


def conditional_jumps(obj: Path, src_name: str) -> list[tuple[int, str]]:
    """(source line, instruction) of every conditional jump in the object
    that the line table attributes to src_name (inlined code keeps its own
    function's lines)."""
    dump = subprocess.run(["llvm-objdump", "-d", "-l", "--no-show-raw-insn", str(obj)],
                          capture_output=True, text=True, check=True).stdout
    line = None
    out = []
    for text in dump.splitlines():
        m = _LINE.match(text)
        if m:
            line = int(m.group(2)) if m.group(1) == src_name else None
        elif line is not None and _COND_JUMP.match(text):
            out.append((line, text.strip()))
    return out


def test_the_function_table_finds_the_functions() -> None:
    funcs = function_lines(SRC)
    for name in BRANCH_FREE:
        assert name in funcs, f"{name} not found in {SRC}: renamed? update BRANCH_FREE"
        assert len(funcs[name]) < 60, f"{name}: {len(funcs[name])} lines, the parser overran its end"


def test_the_classifiers_coin_tosses_have_no_branch(require_bpf_objects: Path) -> None:
    if not shutil.which("llvm-objdump"):
        pytest.fail("llvm-objdump missing (package llvm; scripts/install-deps.sh installs it)")
    obj = require_bpf_objects / "labeler.bpf.o"
    funcs = function_lines(SRC)
    text = SRC.read_text().splitlines()
    jumps = conditional_jumps(obj, SRC.name)
    assert jumps, "no conditional jump attributed to labeler.bpf.c at all: the line table is not read"
    bad = [f"{name} (line {ln}): {insn}" for ln, insn in jumps for name in BRANCH_FREE
           if ln in funcs[name] and not _NULL_CHECK.match(text[ln - 1])]
    assert not bad, ("data-dependent branches where the C computes with arithmetic (hide the operand "
                     "from clang with barrier_var(), as le48() does):\n  " + "\n  ".join(bad))

"""bench/compare.py refuses a set it cannot run, before building anything:
an IPv6-only set (rir...) in an IPv4 comparison once measured the IPv6 set
as IPv4 and printed "labels != reference!" instead of an error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

COMPARE = Path(__file__).resolve().parents[2] / "bench" / "compare.py"


@pytest.mark.parametrize(("argv", "message"), [
    (["--base", "HEAD", "--family", "4", "--sizes", "10,rir100000"], "rir100000: an IPv6 set"),
    (["--tree-min6", "16,64", "--sizes", "blocks100000:1000"], "blocks100000:1000: an IPv4 set"),
    (["--base", "HEAD", "--sizes", "10,rir1x"], "'rir1x' is not N, rirN[:B] or blocksN[:B]"),
    (["--base", "HEAD", "--family", "5"], "--family 5: 4, 6 or 4,6"),
])
def test_a_set_it_cannot_run_is_refused_up_front(argv: list[str], message: str) -> None:
    p = subprocess.run([sys.executable, str(COMPARE), *argv], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and message in p.stderr, p.stderr

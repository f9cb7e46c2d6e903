"""libbpf's log as dropwatch captures it: what a loader reads back after a
failure is what was logged since it started, however much came before."""

from __future__ import annotations

import pytest

from dropwatch import libbpf as L


@pytest.fixture
def lib() -> L.Libbpf:
    try:
        return L.Libbpf()
    except L.LibbpfError as exc:
        pytest.skip(str(exc))


def test_lines_since_a_mark_survive_the_buffer_wrapping(lib: L.Libbpf) -> None:
    lib._log_lines([f"old {i}" for i in range(L._LOG_LINES + 500)])  # a long process: the buffer is full
    mark = lib.log_mark()
    lib._log_lines(["libbpf: prog 'dw_x': failed to load: -13"])
    assert lib.log_since(mark) == ["libbpf: prog 'dw_x': failed to load: -13"]


def test_more_lines_than_the_buffer_keeps_their_tail(lib: L.Libbpf) -> None:
    mark = lib.log_mark()
    lib._log_lines([f"insn {i}" for i in range(L._LOG_LINES + 10)] + ["the error"])
    since = lib.log_since(mark)
    assert len(since) == L._LOG_LINES and since[-1] == "the error" and since[0] == "insn 11"


def test_nothing_logged_since_the_mark(lib: L.Libbpf) -> None:
    lib._log_lines(["before"])
    mark = lib.log_mark()
    assert lib.log_since(mark) == []

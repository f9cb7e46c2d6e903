"""Run a few calls inside another network namespace (setns on this thread).

setns(CLONE_NEWNET) switches only the calling thread, and an XDP bpf_link
stays bound to the device once created, so the loader can attach to an
interface in a namespace (e.g. a test's receiving end) and come back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/run/netns")


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


def netns_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    return p if p.is_absolute() else NETNS_RUN_DIR / name_or_path


@contextmanager
def entered(name_or_path: str | None) -> Iterator[None]:
    """Enter the named namespace (ip netns name or path) for the with-block."""
    if not name_or_path:
        yield
        return
    libc = _libc()
    target = netns_path(name_or_path)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        fd = os.open(target, os.O_RDONLY)
    except OSError as exc:
        os.close(own)
        raise OSError(exc.errno, f"network namespace {name_or_path}: {exc.strerror}") from None
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name_or_path}): {os.strerror(err)}")
        try:
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:  # pragma: no cover - would leave the thread astray
                err = ctypes.get_errno()
                raise OSError(err, f"setns(back): {os.strerror(err)}")
    finally:
        os.close(fd)
        os.close(own)

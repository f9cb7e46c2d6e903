"""A program the kernel rejects: the error the user reads names the cause.

The verifier's log of a rejected program reaches dropwatch through
libbpf's print callback as one message, often far longer than a line
buffer; its last line is the reason (here an unchecked packet read). Until
session 7 the callback cut each message at 4,096 bytes, so a long log lost
exactly that line.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from dropwatch.loader import Loader, VerifierError

pytestmark = pytest.mark.bpf

# As bpf/Makefile: the multiarch include directory (asm/types.h).
ARCH_INCLUDE = "x86_64-linux-gnu"
if shutil.which("gcc"):
    ARCH_INCLUDE = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True,
                                  check=False).stdout.strip() or ARCH_INCLUDE

# 200 rounds of arithmetic the verifier logs line by line on the failing
# path (tens of KB at log level 1), then a packet read without a bounds
# check.
BAD_PROG = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

const volatile __u32 dw_meta_key = 0;

SEC("xdp")
int dw_bad(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	__u64 x = ctx->ingress_ifindex;

#pragma unroll
	for (int i = 0; i < 200; i++) {
		x = x * 3 + i;
		asm volatile("" : "+r"(x));
	}
	return *(__u32 *)data + x;
}

char LICENSE[] SEC("license") = "GPL";
"""


def test_a_long_verifier_log_keeps_its_error_line(tmp_path: Path) -> None:
    src, obj = tmp_path / "bad.bpf.c", tmp_path / "bad.bpf.o"
    src.write_text(BAD_PROG)
    subprocess.run(["clang", "-target", "bpf", "-g", "-O2", f"-I/usr/include/{ARCH_INCLUDE}", "-c", str(src),
                    "-o", str(obj)], check=True, capture_output=True)
    with Loader(obj_dir=tmp_path) as ld, pytest.raises(VerifierError) as err:
        ld._open("bad.bpf.o")
    assert err.value.program == "dw_bad"
    # The reason is in what the user reads, near its end...
    assert any("invalid access to packet" in ln for ln in err.value.log_tail[-3:]), err.value.log_tail[-3:]
    assert "invalid access to packet" in str(err.value)
    # ...from a log long enough that a 4,096-byte cut would have lost it.
    assert len("\n".join(err.value.log_tail)) > 4096

"""Running together with another XDP program: that program ends with a tail
call into a pinned program array, dropwatch puts its labeler in the slot
(--xdp-tailcall). Its metadata and ours both survive to the stack, drops
are labeled exactly, and a clean stop empties the slot again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dropwatch.lab import LAB_RULES, RX_V4, TX_EYEBALL_V4, Lab, lab
from tests.e2e.helpers import RunningDaemon, free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]

FOREIGN = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u32);
} chain SEC(".maps");
/* Another team's program: 8 bytes of its own metadata, then, where it would
 * return XDP_PASS, a tail call into slot 0 (dropwatch), falling back to PASS. */
SEC("xdp") int foreign_chain(struct xdp_md *ctx)
{
	if (!bpf_xdp_adjust_meta(ctx, -8)) {
		__u32 *m = (void *)(long)ctx->data_meta;
		if ((void *)(m + 2) <= (void *)(long)ctx->data) {
			m[0] = 0xF0F0F0F0;
			m[1] = 0x0BADCAFE;
		}
	}
	bpf_tail_call(ctx, &chain, 0);
	return XDP_PASS;
}
"""

TC_CHECK = r"""
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} seen SEC(".maps");
/* 0: our record then the foreign 8 bytes, intact; 1: foreign only; 2: other */
SEC("tc") int tc_check(struct __sk_buff *skb)
{
	__u8 *meta = (void *)(long)skb->data_meta;
	__u8 *data = (void *)(long)skb->data;
	__u32 k = 2;
	long len = data - meta;
	if (meta + 24 <= data) {
		__u32 *w = (__u32 *)meta;
		if (len == 24 && w[4] == 0xF0F0F0F0 && w[5] == 0x0BADCAFE && meta[0] == 0x0B && meta[1] == 0xD7)
			k = 0;
	} else if (meta + 8 <= data) {
		__u32 *w = (__u32 *)meta;
		if (len == 8 && w[0] == 0xF0F0F0F0 && w[1] == 0x0BADCAFE)
			k = 1;
	}
	__u64 *v = bpf_map_lookup_elem(&seen, &k);
	if (v)
		__sync_fetch_and_add(v, 1);
	return TC_ACT_OK;
}
"""


def _compile(src: str, out: Path) -> None:
    c = out.with_suffix(".c")
    c.write_text(src)
    arch = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True).stdout.strip()
    subprocess.run(["clang", "-target", "bpf", "-O2", "-g", f"-I/usr/include/{arch}", "-c", str(c), "-o", str(out)],
                   check=True)


@pytest.fixture
def chained(tmp_path: Path) -> Iterator[tuple[Lab, Path, Path]]:
    with lab() as lb:
        # A bpffs of the test's own (a machine without systemd may have none
        # at /sys/fs/bpf): unmounted at the end, with every pin in it.
        bpffs = tmp_path / "bpffs"
        bpffs.mkdir()
        subprocess.run(["mount", "-t", "bpf", "bpf", str(bpffs)], check=True)
        pin = bpffs / f"dwtest-{lb.lab_id}"
        pin.mkdir()
        try:
            # nsenter: network namespace only, so bpffs is the host's (ip netns
            # exec remounts /sys and would hide the pins).
            net = ["nsenter", f"--net=/run/netns/{lb.rx_ns}"]
            _compile(FOREIGN, tmp_path / "foreign.o")
            _compile(TC_CHECK, tmp_path / "tccheck.o")
            subprocess.run(["bpftool", "prog", "load", str(tmp_path / "foreign.o"), str(pin / "foreign"), "type",
                            "xdp", "pinmaps", str(pin / "fmaps")], check=True)
            subprocess.run([*net, "ip", "link", "set", "dev", lb.rx_if, "xdpgeneric", "pinned", str(pin / "foreign")],
                           check=True)
            subprocess.run(["bpftool", "prog", "load", str(tmp_path / "tccheck.o"), str(pin / "tccheck"), "type",
                            "classifier", "pinmaps", str(pin / "tmaps")], check=True)
            subprocess.run([*net, "tc", "qdisc", "add", "dev", lb.rx_if, "clsact"], check=True)
            subprocess.run([*net, "tc", "filter", "add", "dev", lb.rx_if, "ingress", "bpf", "direct-action",
                            "object-pinned", str(pin / "tccheck")], check=True)
            yield lb, pin, tmp_path
        finally:
            shutil.rmtree(pin, ignore_errors=True)
            subprocess.run(["umount", str(bpffs)], check=False)


def _seen(pin: Path) -> list[int]:
    out = json.loads(subprocess.run(["bpftool", "-j", "map", "dump", "pinned", str(pin / "tmaps" / "seen")],
                                    capture_output=True, text=True, check=True).stdout)
    vals = [0] * 4
    for e in out:
        key = e["key"] if isinstance(e["key"], int) else int.from_bytes(bytes(int(x, 16) for x in e["key"]), "little")
        val = e["value"] if isinstance(e["value"], int) else int.from_bytes(bytes(int(x, 16) for x in e["value"]),
                                                                             "little")
        vals[key] = val
    return vals


def _slot_empty(pin: Path) -> bool:
    out = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", str(pin / "fmaps" / "chain")],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out) == []


def test_tailcall_chaining_both_metadata_survive(chained: tuple[Lab, Path, Path]) -> None:
    lb, pin, tmp = chained
    rules = tmp / "rules.yaml"
    rules.write_text(yaml.safe_dump(LAB_RULES, sort_keys=False))
    port = free_port()
    log = tmp / "d.log"
    proc = subprocess.Popen([sys.executable, "-m", "dropwatch", "run", "--netns", lb.rx_ns,
                             "--xdp-tailcall", f"{pin / 'fmaps' / 'chain'}:0", "--config", str(rules), "--db",
                             str(tmp / "h.db"), "--listen", f"127.0.0.1:{port}", "--poll-interval", "0.3s"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    d = RunningDaemon(proc, f"http://127.0.0.1:{port}", log)
    try:
        d.wait_for(lambda: d.get("/healthz").status_code == 200, "healthy")
        assert not _slot_empty(pin)
        base = _seen(pin)
        n = 30
        lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, n)
        d.wait_for(lambda: d.drops().get(("customerX", "eyeball", "NO_SOCKET")) == n, "labeled drops")
        seen = _seen(pin)
        # Every one of our packets reached TC with our record in front of the
        # other program's 8 bytes, both intact.
        assert seen[0] - base[0] >= n
        assert seen[1] - base[1] == 0
    finally:
        assert d.stop() == 0
    assert _slot_empty(pin)  # a clean stop leaves the other program as it was
    assert "prog/xdp" in lb.ns(lb.rx_ns, "ip", "-d", "link", "show", lb.rx_if)  # theirs still attached


def test_tailcall_refuses_a_foreign_occupant(chained: tuple[Lab, Path, Path]) -> None:
    lb, pin, tmp = chained
    from dropwatch.loader import AttachError, Loader
    # Put the other program itself in slot 1 (an occupant that is not ours).
    subprocess.run(["bpftool", "map", "update", "pinned", str(pin / "fmaps" / "chain"), "key", "1", "0", "0", "0",
                    "value", "pinned", str(pin / "foreign")], check=True)
    with Loader() as ld:
        ld.load()
        with pytest.raises(AttachError, match="does not replace it"):
            ld.attach_tailcall(str(pin / "fmaps" / "chain"), 1)
        with pytest.raises(AttachError, match="no pinned program array"):
            ld.attach_tailcall(str(pin / "nope"), 0)

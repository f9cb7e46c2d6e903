// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The baseline every XDP number is compared with: does nothing. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("xdp")
int bench_empty(struct xdp_md *ctx)
{
	return XDP_PASS;
}

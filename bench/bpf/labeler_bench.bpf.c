// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Bench-only build of the labeler: bpf/labeler.bpf.c included unchanged (so
 * dw_labeler, its maps and its static helpers are the real ones, compiled
 * with the same flags), plus a front program that makes BPF_PROG_TEST_RUN
 * measure what production sees:
 *
 *  1. BPF_PROG_TEST_RUN repeats one packet and does not reset the xdp_buff
 *     between repetitions: after ~15 runs the labeler's metadata area is
 *     full and every further run takes the bpf_xdp_adjust_meta() failure
 *     path. bench_front shrinks the metadata back to zero first.
 *  2. One packet repeated keeps every map entry it touches in L1. With
 *     cfg.n_flows > 0, bench_front rewrites the packet's source and
 *     destination address from a precomputed table of flows (filled by
 *     bench/xdp_labeler.py), one flow per run from a per-CPU cursor.
 *
 * It then tail-calls bench_jmp[cfg.target] (a constant key per branch: a
 * direct jump): the real dw_labeler, the empty
 * target (the baseline that cancels the front's own cost), or one of the
 * part_* programs below. The loader (dropwatch.loader.Loader with
 * obj_dir=bench/out/labeler_bench) loads this object and fills the rule
 * maps exactly as for the production object.
 */
#include "../../bpf/labeler.bpf.c"

#define BENCH_MAX_FLOWS (1 << 20)

struct bench_cfg {
	__u32 n_flows;		/* 0: do not rewrite (one flow repeated) */
	__u32 l3_off;		/* offset of the IP header in the test frame */
	__u32 family;		/* 4 or 6 */
	__u32 target;		/* index into bench_jmp */
};

struct bench_flow4 {
	__u32 saddr;
	__u32 daddr;
};

struct bench_flow6 {
	__u32 saddr[4];
	__u32 daddr[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_cfg);
} bench_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} bench_cursor SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BENCH_MAX_FLOWS);
	__type(key, __u32);
	__type(value, struct bench_flow4);
} bench_flows4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BENCH_MAX_FLOWS);
	__type(key, __u32);
	__type(value, struct bench_flow6);
} bench_flows6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u32);
} bench_jmp SEC(".maps");

/* Sink for the part_* programs, so the compiler keeps their work. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} bench_sink SEC(".maps");

SEC("xdp")
int bench_front(struct xdp_md *ctx)
{
	__u32 zero = 0;
	/* Undo the previous repetition's metadata (a no-op delta of 0 when
	 * there is none, so every target pays the same helper call). */
	long meta_len = (long)ctx->data - (long)ctx->data_meta;

	bpf_xdp_adjust_meta(ctx, (int)meta_len);

	struct bench_cfg *cfg = bpf_map_lookup_elem(&bench_cfg, &zero);

	if (!cfg)
		return XDP_ABORTED;
	__u32 target = cfg->target;

	if (cfg->n_flows) {
		__u32 *cur = bpf_map_lookup_elem(&bench_cursor, &zero);

		if (!cur)
			return XDP_ABORTED;
		__u32 i = *cur;
		__u32 next = i + 1;

		if (next >= cfg->n_flows)
			next = 0;
		*cur = next;
		void *data = (void *)(long)ctx->data;
		void *end = (void *)(long)ctx->data_end;
		__u32 off = cfg->l3_off & 0x3f;

		if (cfg->family == 6) {
			struct bench_flow6 *f = bpf_map_lookup_elem(&bench_flows6, &i);
			struct ipv6hdr *ip6 = data + off;

			if (!f || (void *)(ip6 + 1) > end)
				return XDP_ABORTED;
			__builtin_memcpy(&ip6->saddr, f->saddr, 16);
			__builtin_memcpy(&ip6->daddr, f->daddr, 16);
		} else {
			struct bench_flow4 *f = bpf_map_lookup_elem(&bench_flows4, &i);
			struct iphdr *iph = data + off;

			if (!f || (void *)(iph + 1) > end)
				return XDP_ABORTED;
			iph->saddr = f->saddr;
			iph->daddr = f->daddr;
		}
	}
	/* Constant keys: the JIT patches each into a direct jump (a variable
	 * key would be an indirect jump, a retpoline on this kernel). */
	switch (target) {
	case 0: bpf_tail_call_static(ctx, &bench_jmp, 0); break;
	case 1: bpf_tail_call_static(ctx, &bench_jmp, 1); break;
	case 2: bpf_tail_call_static(ctx, &bench_jmp, 2); break;
	case 3: bpf_tail_call_static(ctx, &bench_jmp, 3); break;
	case 4: bpf_tail_call_static(ctx, &bench_jmp, 4); break;
	case 5: bpf_tail_call_static(ctx, &bench_jmp, 5); break;
	}
	return XDP_ABORTED;	/* empty slot: the bench sees retval 0 and stops */
}

/* Tail-call target for the baseline: the empty program. */
SEC("xdp")
int bench_target_empty(struct xdp_md *ctx)
{
	return XDP_PASS;
}

static __always_inline void sink(__u64 v)
{
	__u32 zero = 0;
	__u64 *s = bpf_map_lookup_elem(&bench_sink, &zero);

	if (s)
		*s += v;
}

/* Parts of dw_labeler, built from its own static functions. */
SEC("xdp")
int part_parse(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct pkt_info pi = {};

	parse_packet(data, end, &pi);
	sink(pi.family + pi.saddr[0] + pi.daddr[3] + pi.dport + pi.truncated);
	return XDP_PASS;
}

SEC("xdp")
int part_classify(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct pkt_info pi = {};
	struct dw_result r = { .label_prio = 0xffffffff, .side_prio = 0xffffffff };

	parse_packet(data, end, &pi);
	if (pi.family)
		classify(&pi, &r);
	sink(r.label_id + r.side);
	return XDP_PASS;
}

/* Parse + classify + count_packet: everything but the record write. */
SEC("xdp")
int part_count(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct pkt_info pi = {};
	struct dw_result r = { .label_prio = 0xffffffff, .side_prio = 0xffffffff };

	stat_inc(DW_STAT_XDP_PACKETS);
	parse_packet(data, end, &pi);
	if (pi.family)
		classify(&pi, &r);
	if (r.label_id >= DW_MAX_LABELS)
		r.label_id = 0;
	count_packet(r.label_id, r.side, end - data);
	return XDP_PASS;
}

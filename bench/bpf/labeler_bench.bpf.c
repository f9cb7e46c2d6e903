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
	__uint(max_entries, 16);
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
	case 6: bpf_tail_call_static(ctx, &bench_jmp, 6); break;
	case 7: bpf_tail_call_static(ctx, &bench_jmp, 7); break;
	case 8: bpf_tail_call_static(ctx, &bench_jmp, 8); break;
	case 9: bpf_tail_call_static(ctx, &bench_jmp, 9); break;
	case 10: bpf_tail_call_static(ctx, &bench_jmp, 10); break;
	case 11: bpf_tail_call_static(ctx, &bench_jmp, 11); break;
	case 12: bpf_tail_call_static(ctx, &bench_jmp, 12); break;
	case 13: bpf_tail_call_static(ctx, &bench_jmp, 13); break;
	case 14: bpf_tail_call_static(ctx, &bench_jmp, 14); break;
	case 15: bpf_tail_call_static(ctx, &bench_jmp, 15); break;
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
	struct pkt_info pi = {};

	dw_parse_frame(ctx, &pi);
	sink(pi.family + pi.saddr[0] + pi.daddr[3] + pi.dport + pi.truncated);
	return XDP_PASS;
}

SEC("xdp")
int part_classify(struct xdp_md *ctx)
{
	struct pkt_info pi = {};
	struct dw_result r = { .label_prio = 0xffffffff, .side_prio = 0xffffffff };

	dw_parse_frame(ctx, &pi);
	if (pi.family)
		classify(&pi, &r, dw_state.active_gen & 1);
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

	dw_parse_frame(ctx, &pi);
	if (pi.truncated)
		stat_inc(DW_STAT_XDP_PARSE_STOP);
	if (pi.family)
		classify(&pi, &r, dw_state.active_gen & 1);
	if (r.label_id >= DW_MAX_LABELS)
		r.label_id = 0;
	count_packet(r.label_id, r.side, DW_POP_NONE, end - data);
	return XDP_PASS;
}

/*
 * ---- Alternative classifiers (IPv4 only), for comparison ----
 *
 * The same labeler (parse, counters, record) with the per-length hash probes
 * replaced by another longest-prefix-match structure mapping an address to
 * the same prefix id and candidate list the loader computes:
 *   alt_lpm_trie: one BPF_MAP_TYPE_LPM_TRIE lookup per side (the naive design)
 *   alt_dir248:   DIR-24-8 (as DPDK's rte_lpm): tbl24 indexed by the top 24
 *                 bits (one load), a 256-entry tbl8 group for longer prefixes
 * bench/xdp_labeler.py fills these maps from the compiled rules.
 */
#define ALT_MAX_PIDS	(1 << 18)
#define ALT_TBL8_GROUPS	(1 << 15)
#define ALT_IS_GROUP	0x80000000u
/* alt_classify()'s dir past the two designs: the lower bounds below */
#define ALT_FLOOR_NONE	2
#define ALT_FLOOR_READ	3

struct alt_lpm_key {
	__u32 prefixlen;
	__u32 addr;		/* network order */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, ALT_MAX_PIDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct alt_lpm_key);
	__type(value, __u32);
} alt_lpm_src SEC(".maps"), alt_lpm_dst SEC(".maps");

struct alt_line {
	__u32 e[16];		/* one cache line of tbl24 */
};

struct alt_group {
	__u32 e[256];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 20);	/* 2^24 entries, 16 per line */
	__type(key, __u32);
	__type(value, struct alt_line);
} alt_tbl24_src SEC(".maps"), alt_tbl24_dst SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, ALT_TBL8_GROUPS);
	__type(key, __u32);
	__type(value, struct alt_group);
} alt_tbl8_src SEC(".maps"), alt_tbl8_dst SEC(".maps");

/* prefix id -> the prefix's full candidate list (CompiledRules.prefixes) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, ALT_MAX_PIDS);
	__type(key, __u32);
	__type(value, struct dw_cand_list);
} alt_cands SEC(".maps");

static __always_inline __u32 dir248(void *t24, void *t8, __u32 addr_be)
{
	__u32 a = bpf_ntohl(addr_be);
	__u32 i = a >> 8, line = i >> 4;
	struct alt_line *l = bpf_map_lookup_elem(t24, &line);

	if (!l)
		return 0;
	__u32 v = l->e[i & 15];

	if (!(v & ALT_IS_GROUP))
		return v;
	__u32 g = v & ~ALT_IS_GROUP;
	struct alt_group *grp = bpf_map_lookup_elem(t8, &g);

	return grp ? grp->e[a & 255] : 0;
}

static __always_inline __u32 lpm(void *trie, __u32 addr_be)
{
	struct alt_lpm_key k = { .prefixlen = 32, .addr = addr_be };
	__u32 *v = bpf_map_lookup_elem(trie, &k);

	return v ? *v : 0;
}

static __always_inline void alt_eval(__u32 pid, const struct pkt_info *pi, struct dw_result *r)
{
	if (!pid)
		return;
	const struct dw_cand_list *l = bpf_map_lookup_elem(&alt_cands, &pid);

	if (l)
		eval_list(l, pi, r);
}

/*
 * ---- Lower bounds: what any labeler pays on this machine ----
 *
 * Not classifiers: dw_labeler's own parse, counters and record
 * (finish_packet) around no lookup at all (floor_none), or around the
 * least any table-driven lookup over 10^5 prefixes must do (floor_read):
 * one read, indexed by the destination's top 16 bits, of a 2-byte label
 * from a 128 KB table that bench/xdp_labeler.py fills with the rule set's
 * labels. No source lookup, no bitmap, no priorities. IPv4 and IPv6.
 */
__u16 floor_tbl[1 << 16] SEC(".bss.floor_tbl");

/* Self-contained on purpose (no rule-set state of the labeler): the bench's
 * rule sets have no prefix-less rules and default_side eyeball. */
static __always_inline void alt_classify(const struct pkt_info *pi, struct dw_result *r, const int dir)
{
	r->side = DW_SIDE_EYEBALL;
	/* daddr[0] holds an IPv6 address's top 32 bits too: the floors run
	 * for both families, the alternatives for IPv4 only. */
	if (dir == ALT_FLOOR_READ)
		r->label_id = floor_tbl[(bpf_ntohl(pi->daddr[0]) >> 16) & 0xffff];
	if (dir >= ALT_FLOOR_NONE || pi->family != 4)
		return;
	if (dir) {
		alt_eval(dir248(&alt_tbl24_src, &alt_tbl8_src, pi->saddr[0]), pi, r);
		alt_eval(dir248(&alt_tbl24_dst, &alt_tbl8_dst, pi->daddr[0]), pi, r);
	} else {
		alt_eval(lpm(&alt_lpm_src, pi->saddr[0]), pi, r);
		alt_eval(lpm(&alt_lpm_dst, pi->daddr[0]), pi, r);
	}
}

/* dw_labeler with classify() replaced; the rest is the labeler's own
 * finish_packet(), so only the classifier differs. */
static __always_inline int alt_labeler(struct xdp_md *ctx, const int dir)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct pkt_info pi = {};
	struct dw_result r = { .label_prio = 0xffffffff, .side_prio = 0xffffffff };

	dw_parse_frame(ctx, &pi);
	if (pi.truncated)
		stat_inc(DW_STAT_XDP_PARSE_STOP);
	if (pi.family)
		alt_classify(&pi, &r, dir);
	return finish_packet(ctx, data, end, &pi, &r);
}

SEC("xdp")
int alt_lpm_trie(struct xdp_md *ctx)
{
	return alt_labeler(ctx, 0);
}

SEC("xdp")
int alt_dir248(struct xdp_md *ctx)
{
	return alt_labeler(ctx, 1);
}

SEC("xdp")
int floor_none(struct xdp_md *ctx)
{
	return alt_labeler(ctx, ALT_FLOOR_NONE);
}

SEC("xdp")
int floor_read(struct xdp_md *ctx)
{
	return alt_labeler(ctx, ALT_FLOOR_READ);
}

/*
 * ---- Memory probe: what one random memory access costs here ----
 * PROBE_CHAIN dependent loads into the first probe_cfg.mask + 1 cache lines
 * of a 256 MB array, starting from the packet's (rewritten, random)
 * destination address: ns per access vs working-set size.
 */
#define PROBE_LINES	(1 << 22)
#define PROBE_CHAIN	4

struct probe_line {
	__u64 w[8];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PROBE_LINES);
	__type(key, __u32);
	__type(value, struct probe_line);
} probe_mem SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} probe_cfg SEC(".maps");	/* [0] = mask (lines - 1), [1] = chain length 0..PROBE_CHAIN */

SEC("xdp")
int probe_chain(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct iphdr *iph = data + sizeof(struct ethhdr);
	__u32 zero = 0, one = 1;
	__u32 *maskp = bpf_map_lookup_elem(&probe_cfg, &zero);
	__u32 *np = bpf_map_lookup_elem(&probe_cfg, &one);

	if ((void *)(iph + 1) > end || !maskp || !np)
		return XDP_ABORTED;
	__u32 mask = *maskp, n = *np;
	__u32 idx = bpf_ntohl(iph->daddr) * 0x9E3779B1u;
	__u64 acc = 0;

	for (int i = 0; i < PROBE_CHAIN; i++) {
		if (i >= n)
			break;
		__u32 k = idx & mask;
		struct probe_line *l = bpf_map_lookup_elem(&probe_mem, &k);

		if (!l)
			break;
		acc += l->w[0];
		/* the next address depends on the loaded value: a chain */
		idx = (idx ^ (__u32)l->w[0]) * 0x85EBCA77u + i;
	}
	sink(acc);
	return XDP_PASS;
}

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * XDP labeler: classify each packet by source/destination prefix, L4
 * protocol and destination port into (label, side), count it, and write a
 * struct dw_meta record into the XDP metadata area for the drop reader.
 * Observing never changes the verdict: every path returns XDP_PASS.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "dropwatch.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by the loader before load; the same key is given to the reader. */
const volatile __u32 dw_meta_key = 0;

/* The record is only ever a local here, and BTF does not describe locals:
 * this anchor puts struct dw_meta in the object's BTF, so the Python mirror
 * is checked against what was built (tests/bpf/test_abi.py). */
const volatile struct dw_meta dw_btf_anchor_meta = {};

struct dw_labeler_state dw_state = {};

/*
 * The longest-prefix-match tables (layout in dropwatch.h). All are arrays:
 * the verifier inlines an array lookup into an index check and an add, and
 * user space writes them through mmap. The range arrays' sizes are set by
 * the loader before load; the program never assumes them (every lookup is
 * checked).
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DW_LPM_L1_LINES);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct dw_line32);
} dw_lpm4_l1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DW_LPM4_ENTRIES / 16);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct dw_line32);
} dw_lpm4_rng SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DW_LPM_L1_LINES);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct dw_line32);
} dw_lpm6_l1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DW_LPM6_ENTRIES / 4);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct dw_line64);
} dw_lpm6_rng SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DW_LPM_BMP_LINES);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct dw_line64);
} dw_lpm_bmp SEC(".maps");

/* Index gen * DW_MAX_RESULTS + result: what a lookup yields. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DW_GENS * DW_MAX_RESULTS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct dw_lpm_res);
} dw_lpm_res SEC(".maps");

/* Same index: the candidates of results with more than one. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DW_GENS * DW_MAX_RESULTS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct dw_cand_list);
} dw_results SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DW_MAX_PAIRS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct dw_pair_key);
	__type(value, struct dw_cand_list);
} dw_pairs SEC(".maps");

/* Landing PoPs by outer source address; looked up for tunnelled packets
 * only, so the trie's cost stays off the common path. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, DW_MAX_POP_PREFIXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct dw_pop_key);
	__type(value, __u32);
} dw_pops SEC(".maps");

/* Shared with the drop reader (the loader hands it this map's fd). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DW_FLOW_ENTRIES);
	__type(key, struct dw_flow_key);
	__type(value, struct dw_flow_val);
} dw_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct dw_pop_pkt_key);
	__type(value, struct dw_pkt_val);
} dw_pop_pkt_counts SEC(".maps");

/* Indexed by label_id * DW_SIDE__COUNT + side: array lookups are inlined
 * by the verifier, cheaper than a hash on every packet. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DW_MAX_LABELS * DW_SIDE__COUNT);
	__type(key, __u32);
	__type(value, struct dw_pkt_val);
} dw_pkt_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DW_STAT__COUNT);
	__type(key, __u32);
	__type(value, __u64);
} dw_stats SEC(".maps");

/* adjust_meta failures by ingress ifindex: a native-mode driver without
 * metadata support shows up here, so user space can name the interface. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u64);
} dw_meta_fail SEC(".maps");

struct pkt_info {
	__u32 saddr[4];
	__u32 daddr[4];
	__u8 family;		/* 4, 6, or 0: not IP, nothing to classify */
	__u8 proto;
	__u8 has_port;		/* first fragment with an L4 header carrying ports */
	__u8 truncated;
	__u16 dport;
};

struct dw_result {
	__u32 label_id;
	__u32 label_prio;
	__u32 side_prio;
	__u8 side;
};

/* Headers deeper than this are not parsed: bounds the verifier's view of
 * the packet offset and the work per packet. */
#define DW_PARSE_MAX_OFF 512
#define DW_MAX_VLANS	2
#define DW_MAX_V6_EXT	6

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&dw_stats, &idx);

	if (v)
		*v += 1;	/* per-CPU, XDP runs in softirq: no nesting */
}

static __always_inline void parse_l4(void *data, void *end, __u32 off,
				     struct pkt_info *pi)
{
	if (pi->proto != IPPROTO_TCP && pi->proto != IPPROTO_UDP)
		return;
	if (off > DW_PARSE_MAX_OFF) {
		pi->truncated = 1;
		return;
	}
	/* dport sits at bytes 2..3 of both TCP and UDP headers */
	void *l4 = data + off;

	/* Without this clang rebuilds data + off after the bounds check, and
	 * the verifier sees an unchecked pointer. */
	barrier_var(l4);
	if (l4 + 4 > end) {
		pi->truncated = 1;
		return;
	}
	pi->dport = bpf_ntohs(*(__u16 *)(l4 + 2));
	pi->has_port = 1;
}

static __always_inline void parse_ipv4(void *data, void *end, __u32 off,
				       struct pkt_info *pi)
{
	struct iphdr *iph = data + off;

	if ((void *)(iph + 1) > end) {
		pi->truncated = 1;
		return;
	}
	pi->family = 4;
	pi->saddr[0] = iph->saddr;
	pi->daddr[0] = iph->daddr;
	pi->proto = iph->protocol;
	/* An invalid IHL is dropped by ip_rcv_core; we still label it by its
	 * addresses (whose packet was it?) but trust no L4 offset. */
	if (iph->ihl < 5) {
		pi->truncated = 1;
		return;
	}
	/* Only the first fragment carries the L4 header. */
	if (iph->frag_off & bpf_htons(0x1fff))
		return;
	parse_l4(data, end, off + iph->ihl * 4, pi);
}

static __always_inline void parse_ipv6(void *data, void *end, __u32 off,
				       struct pkt_info *pi)
{
	struct ipv6hdr *ip6 = data + off;

	if ((void *)(ip6 + 1) > end) {
		pi->truncated = 1;
		return;
	}
	pi->family = 6;
	__builtin_memcpy(pi->saddr, &ip6->saddr, 16);
	__builtin_memcpy(pi->daddr, &ip6->daddr, 16);
	__u8 nexthdr = ip6->nexthdr;

	off += sizeof(*ip6);
#pragma unroll
	for (int i = 0; i < DW_MAX_V6_EXT; i++) {
		if (nexthdr != IPPROTO_HOPOPTS && nexthdr != IPPROTO_ROUTING &&
		    nexthdr != IPPROTO_DSTOPTS && nexthdr != IPPROTO_FRAGMENT)
			break;
		if (off > DW_PARSE_MAX_OFF) {
			pi->truncated = 1;
			pi->proto = nexthdr;
			return;
		}
		__u8 *ext = data + off;

		if ((void *)(ext + 8) > end) {
			pi->truncated = 1;
			pi->proto = nexthdr;
			return;
		}
		if (nexthdr == IPPROTO_FRAGMENT) {
			__u16 frag = ((__u16)ext[2] << 8 | ext[3]) & 0xfff8;

			nexthdr = ext[0];
			off += 8;
			if (frag) {	/* not the first fragment: no ports */
				pi->proto = nexthdr;
				return;
			}
			continue;
		}
		nexthdr = ext[0];
		off += ((__u32)ext[1] + 1) * 8;
	}
	pi->proto = nexthdr;
	parse_l4(data, end, off, pi);
}

static __always_inline void parse_packet(void *data, void *end, struct pkt_info *pi)
{
	struct ethhdr *eth = data;
	__u32 off = sizeof(*eth);

	if ((void *)(eth + 1) > end) {
		pi->truncated = 1;
		return;
	}
	__u16 h_proto = eth->h_proto;

	/* 802.1ad outer tag, then 802.1Q (QinQ), in any combination of two. */
#pragma unroll
	for (int i = 0; i < DW_MAX_VLANS; i++) {
		if (h_proto != bpf_htons(ETH_P_8021Q) && h_proto != bpf_htons(ETH_P_8021AD))
			break;
		__u16 *tag = data + off;

		if ((void *)(tag + 2) > end) {
			pi->truncated = 1;
			return;
		}
		h_proto = tag[1];
		off += 4;
	}
	if (h_proto == bpf_htons(ETH_P_IP))
		parse_ipv4(data, end, off, pi);
	else if (h_proto == bpf_htons(ETH_P_IPV6))
		parse_ipv6(data, end, off, pi);
}

/* Entry i of an array of 16-word lines; 0 when out of range (the loader
 * never points past its data, so only a bug reads 0 here). */
static __always_inline __u32 line32_get(void *map, __u32 i)
{
	__u32 line = i >> 4;
	const struct dw_line32 *l = bpf_map_lookup_elem(map, &line);

	return l ? l->v[i & 15] : 0;
}

/* Does any prefix of this (gen, family, direction) cover the /16? */
static __always_inline int lpm_bmp_has(__u32 gen, __u32 v6, __u32 dir, __u32 top16)
{
	__u32 line = (((gen * 2 + v6) * 2 + dir) << 7) | (top16 >> 9);
	const struct dw_line64 *l = bpf_map_lookup_elem(&dw_lpm_bmp, &line);

	return l && ((l->v[(top16 >> 6) & 7] >> (top16 & 63)) & 1);
}

/*
 * IPv4: the direct entry for the top 16 bits, then, for a chunk, a binary
 * search of its ranges on the low 16 bits. A chunk holds at most 2^16
 * ranges, so DW_LPM4_STEPS halvings always finish the search.
 */
static __always_inline __u32 lpm4(__u32 gen, __u32 dir, __u32 addr_be)
{
	__u32 a = bpf_ntohl(addr_be);

	if (!lpm_bmp_has(gen, 0, dir, a >> 16))
		return 0;
	__u32 e = line32_get(&dw_lpm4_l1, ((gen * 2 + dir) << 16) | (a >> 16));

	if (!(e & DW_LPM_CHUNK))
		return e;
	__u32 off = (e & ~DW_LPM_CHUNK) + 1;
	__u32 key = a & 0xffff;
	__u32 base = 0, len = line32_get(&dw_lpm4_rng, off - 1);
	/* Range 0 starts at 0: the answer until a later start is <= key. */
	__u32 best = line32_get(&dw_lpm4_rng, off);

	/*
	 * The answer is in [base, base + len). Branch-free halving: with
	 * random addresses each comparison is a coin toss, and a mispredicted
	 * branch costs more than the load. The trip count depends on n only.
	 */
	for (int i = 0; i < DW_LPM4_STEPS; i++) {
		if (len <= 1)
			break;
		__u32 half = len >> 1;
		__u32 r = line32_get(&dw_lpm4_rng, off + base + half);
		/* 1 iff the range starts above key: both are below 2^16, so the
		 * difference wraps into bit 31 exactly then. */
		__u32 above = (key - (r >> 16)) >> 31;

		/* Hide that above is 0 or 1, or clang turns the masks below back
		 * into branches (BPF has no conditional move). */
		barrier_var(above);
		base += half & (above - 1);
		best ^= (best ^ r) & (above - 1);
		len -= half;
	}
	return best & 0xffff;
}

/* One IPv6 chunk: the value of the last range whose u64 start <= key.
 * Entry i is the pair (key, value) at u64 2i of the 4-entry lines. */
static __always_inline __u32 lpm6_chunk(__u32 off, __u64 key)
{
	__u32 line = off >> 2;
	const struct dw_line64 *l = bpf_map_lookup_elem(&dw_lpm6_rng, &line);

	if (!l)
		return 0;
	__u32 base = 0, len = (__u32)l->v[(off & 3) * 2];
	__u64 best = 0;

	off += 1;
	line = off >> 2;
	l = bpf_map_lookup_elem(&dw_lpm6_rng, &line);
	if (!l)
		return 0;
	best = l->v[(off & 3) * 2 + 1];	/* range 0 starts at 0 */
	/* Branch-free halving, as in lpm4(). */
	for (int i = 0; i < DW_LPM6_STEPS; i++) {
		if (len <= 1)
			break;
		__u32 half = len >> 1;
		__u32 j = off + base + half;

		line = j >> 2;
		l = bpf_map_lookup_elem(&dw_lpm6_rng, &line);
		if (!l)
			return 0;
		__u64 start = l->v[(j & 3) * 2];
		/* Bit 63: the borrow of key - start, i.e. key < start (Hacker's
		 * Delight 2-12), without a compare. */
		__u64 above = ((~key & start) | ((~key | start) & (key - start))) >> 63;

		barrier_var(above);
		base += half & ((__u32)above - 1);
		best ^= (best ^ l->v[(j & 3) * 2 + 1]) & (above - 1);
		len -= half;
	}
	return (__u32)best;
}

/*
 * IPv6: the direct entry for the top 16 bits, a chunk on the top 64 bits,
 * and, only inside a /64 that holds longer prefixes, a chunk on the low 64
 * bits (whose ranges already fall back to the best prefix of /64 or less).
 */
static __always_inline __u32 lpm6(__u32 gen, __u32 dir, const __u32 *addr)
{
	__u64 hi64 = (__u64)bpf_ntohl(addr[0]) << 32 | bpf_ntohl(addr[1]);
	__u32 top16 = hi64 >> 48;

	if (!lpm_bmp_has(gen, 1, dir, top16))
		return 0;
	__u32 e = line32_get(&dw_lpm6_l1, ((gen * 2 + dir) << 16) | top16);

	if (!(e & DW_LPM_CHUNK))
		return e;
	e = lpm6_chunk(e & ~DW_LPM_CHUNK, hi64);
	if (!(e & DW_LPM_CHUNK))
		return e;
	return lpm6_chunk(e & ~DW_LPM_CHUNK, (__u64)bpf_ntohl(addr[2]) << 32 | bpf_ntohl(addr[3])) &
	       ~DW_LPM_CHUNK;
}

/* The longest matching prefix's result, as an index into dw_lpm_res /
 * dw_results; 0 when no prefix matched. */
static __always_inline __u32
match_prefix(__u32 gen, __u32 fd, const __u32 *addr, const int v6)
{
	__u32 idx = v6 ? lpm6(gen, fd & 1, addr) : lpm4(gen, fd & 1, addr[0]);

	/* 0: no prefix of this direction covers the address, which for most
	 * /16 blocks costs only the bitmap read above. */
	if (!idx)
		return 0;
	return (gen & 1) * DW_MAX_RESULTS + (idx & (DW_MAX_RESULTS - 1));
}

static __always_inline void eval_cand(const struct dw_cand *c,
				      const struct pkt_info *pi, struct dw_result *r)
{
	if (c->proto && c->proto != pi->proto)
		return;
	if (c->flags & DW_CAND_NEEDS_PORT) {
		if (!pi->has_port || pi->dport < c->dport_lo || pi->dport > c->dport_hi)
			return;
	}
	if (c->label_id && c->prio < r->label_prio) {
		r->label_id = c->label_id;
		r->label_prio = c->prio;
	}
	if (c->side && c->prio < r->side_prio) {
		r->side = c->side;
		r->side_prio = c->prio;
	}
}

static __always_inline void eval_list(const struct dw_cand_list *l,
				      const struct pkt_info *pi, struct dw_result *r)
{
	__u32 n = l->n;

	for (int i = 0; i < DW_MAX_CANDS; i++) {
		if (i >= n)
			break;
		eval_cand(&l->c[i], pi, r);
	}
}

/* Evaluate one lookup's result; returns it (for its prefix id) or NULL. */
static __always_inline const struct dw_lpm_res *
eval_result(__u32 idx, const struct pkt_info *pi, struct dw_result *r)
{
	if (!idx)
		return NULL;
	const struct dw_lpm_res *e = bpf_map_lookup_elem(&dw_lpm_res, &idx);

	if (!e)
		return NULL;
	if (e->n == 1) {
		eval_cand(&e->c0, pi, r);
	} else if (e->n > 1) {
		const struct dw_cand_list *l = bpf_map_lookup_elem(&dw_results, &idx);

		if (l)
			eval_list(l, pi, r);
	}
	return e;
}

/*
 * The whole classifier: (packet) -> (label_id, side). Kept behind this one
 * function so a faster longest-prefix-match design can replace it.
 */
static __always_inline void classify(const struct pkt_info *pi, struct dw_result *r)
{
	__u32 gen = dw_state.active_gen & 1;
	const struct dw_ruleset *rs = &dw_state.gen[gen].rs;

	r->side = rs->default_side;
	eval_list(&rs->wildcard, pi, r);

	__u32 si, di;

	if (pi->family == 6) {
		si = match_prefix(gen, DW_FD_V6_SRC, pi->saddr, 1);
		di = match_prefix(gen, DW_FD_V6_DST, pi->daddr, 1);
	} else {
		si = match_prefix(gen, DW_FD_V4_SRC, pi->saddr, 0);
		di = match_prefix(gen, DW_FD_V4_DST, pi->daddr, 0);
	}

	const struct dw_lpm_res *src = eval_result(si, pi, r);
	const struct dw_lpm_res *dst = eval_result(di, pi, r);

	/* Only prefixes that take part in a src+dst rule carry a prefix id. */
	if (rs->has_pairs && src && dst && src->prefix_id && dst->prefix_id) {
		struct dw_pair_key pk = {
			.src_prefix_id = src->prefix_id,
			.dst_prefix_id = dst->prefix_id,
			.gen = gen,
		};
		const struct dw_cand_list *pair = bpf_map_lookup_elem(&dw_pairs, &pk);

		if (pair)
			eval_list(pair, pi, r);
	}
}

static __always_inline void count_packet(__u32 label_id, __u32 side, __u64 bytes)
{
	__u32 idx = label_id * DW_SIDE__COUNT + (side & (DW_SIDE__COUNT - 1));
	struct dw_pkt_val *v = bpf_map_lookup_elem(&dw_pkt_counts, &idx);

	if (v) {
		v->packets += 1;
		v->bytes += bytes;
	}
}

/*
 * Everything after classification: count the packet and write its record.
 * Shared by dw_labeler and the bench's alternative-classifier programs, so
 * what the bench measures is what ships.
 */
static __always_inline int finish_packet(struct xdp_md *ctx, void *data, void *end,
					 const struct pkt_info *pi, struct dw_result *r)
{
	if (r->label_id >= DW_MAX_LABELS) {
		stat_inc(DW_STAT_XDP_LABEL_RANGE);
		r->label_id = 0;
	}
	count_packet(r->label_id, r->side, end - data);

	/* Nothing to say about a frame we could not read an address from. */
	if (!pi->family)
		return XDP_PASS;

	if ((void *)(long)ctx->data_meta < data)
		stat_inc(DW_STAT_XDP_FOREIGN_META);
	/* Prepend: metadata written by a program before us stays intact right
	 * in front of the MAC header; ours starts the area, where the reader
	 * looks (skb head + mac_header - meta_len). */
	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(struct dw_meta))) {
		__u32 ifindex = ctx->ingress_ifindex;
		__u64 one = 1, *v = bpf_map_lookup_elem(&dw_meta_fail, &ifindex);

		stat_inc(DW_STAT_XDP_META_FAILED);
		if (v)
			*v += 1;
		else
			bpf_map_update_elem(&dw_meta_fail, &ifindex, &one, BPF_NOEXIST);
		return XDP_PASS;
	}
	struct dw_meta *m = (void *)(long)ctx->data_meta;

	if ((void *)(m + 1) > (void *)(long)ctx->data)
		return XDP_PASS;
	m->magic = DW_META_MAGIC;
	m->version = DW_META_VERSION;
	m->rec_len = sizeof(*m);
	m->label_id = r->label_id;
	m->pop_id = 0;
	m->side = r->side;
	m->flags = 0;
	__u32 *w = (__u32 *)m;

	m->check = dw_meta_mix(w[0], w[1], w[2], dw_meta_key);
	m->tail_pad = 0;
	return XDP_PASS;
}

/*
 * Bench builds only (bench/): BPF_PROG_TEST_RUN with repeat=N runs the
 * program N times on one xdp_buff without resetting it, so every run would
 * prepend another record until adjust_meta fails. A bench wrapper defines
 * DW_BENCH_HOOK to shrink the metadata back (and to vary addresses) first.
 */
#ifndef DW_BENCH_HOOK
#define DW_BENCH_HOOK(ctx) do { } while (0)
#endif

SEC("xdp")
int dw_labeler(struct xdp_md *ctx)
{
	DW_BENCH_HOOK(ctx);
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct pkt_info pi = {};
	struct dw_result r = { .label_prio = 0xffffffff, .side_prio = 0xffffffff };

	parse_packet(data, end, &pi);
	if (pi.truncated)
		stat_inc(DW_STAT_XDP_PARSE_STOP);
	if (pi.family)
		classify(&pi, &r);
	return finish_packet(ctx, data, end, &pi, &r);
}

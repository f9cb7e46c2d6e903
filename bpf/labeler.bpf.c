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
#include "flow_map.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by the loader before load; the same key is given to the reader. */
const volatile __u32 dw_meta_key = 0;
/* Also set by the loader: dw_meta_head(first word of our records, key)
 * (dropwatch.abi.meta_h1), which saves two of the check's four rounds of
 * dependent multiplies per packet. */
const volatile __u32 dw_meta_h1 = 0;

/* The record is only ever a local here, and BTF does not describe locals:
 * this anchor puts struct dw_meta in the object's BTF, so the Python mirror
 * is checked against what was built (tests/bpf/test_abi.py). */
const volatile struct dw_meta dw_btf_anchor_meta = {};

struct dw_labeler_state dw_state = {};

/*
 * The fixed-size tables are globals, each in its own .bss.* section, which
 * libbpf makes its own map (named after the section): the program reads
 * them with plain loads at a masked index, with no map lookup and no NULL
 * check, which on the per-packet path is measurably cheaper; the loader
 * writes them through mmap, like dw_state. (Names of at most 10
 * characters: libbpf 1.1 cuts ".bss.<name>" to 15.)
 */
__u64 dw_lpm_bmp[DW_LPM_BMP_LINES * 8] SEC(".bss.dw_lpm_bmp");
struct dw_lpm4_slot dw_slot4[DW_LPM4_SLOTS] SEC(".bss.dw_slot4");
struct dw_lpm6_slot dw_slot6[DW_LPM6_SLOTS] SEC(".bss.dw_slot6");
/* Index gen * DW_MAX_RESULTS + result, as dw_lpm_res: the answer without
 * evaluating candidates (dropwatch.h). */
struct dw_lpm_ans dw_lpm_ans[DW_GENS * DW_MAX_RESULTS] SEC(".bss.dw_lpm_ans");
/* [label_id * DW_SIDE__COUNT + side]: the record check of an untunnelled
 * packet, filled by the loader for this load's key. */
__u16 dw_metachk[DW_MAX_LABELS * DW_SIDE__COUNT] SEC(".bss.dw_metachk");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DW_LPM4_ENTRIES / 16);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct dw_line32);
} dw_lpm4_rng SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DW_LPM6_ENTRIES / 8);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct dw_line128);
} dw_lpm6_rng SEC(".maps");

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

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct dw_pop_pkt_key);
	__type(value, struct dw_pkt_val);
} dw_pop_pkt_counts SEC(".maps");

/*
 * Indexed by cpu * DW_PKT_CELLS + label_id * DW_SIDE__COUNT + side: one
 * stripe per possible CPU (the loader sets max_entries), summed by user
 * space through mmap, as the reader's dw_drop_counts. Not a per-CPU array:
 * its lookup loads the cell's per-CPU pointer first, a dependent read that
 * cost 4-9 ns a packet with random flows (bench/compare.py); here the
 * address is arithmetic on the CPU number.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DW_PKT_CELLS);
	__uint(map_flags, BPF_F_MMAPABLE);
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
	__u32 outer_saddr[4];	/* tunnelled: the outer source (the landing PoP's) */
	__u8 family;		/* 4, 6, or 0: not IP, nothing to classify */
	__u8 proto;		/* L4 protocol, after IPv6 extension headers */
	__u8 has_port;		/* first fragment with an L4 header carrying ports */
	__u8 truncated;
	__u16 dport;		/* host order */
	__u16 sport;		/* network order, as the flow key holds it */
	__u8 l3_proto;		/* IPv4 protocol / IPv6 first next header */
	__u8 l4_direct;		/* the L4 header follows the fixed IP header */
	__u8 l4_ok;		/* an L4 header starts at l4_off (not a later fragment) */
	__u8 encap;		/* enum dw_encap_type of the outer packet, 0: none */
	__u8 outer_family;
	__u8 pad[3];
	__u32 l4_off;
};

struct dw_result {
	__u32 label_id;
	__u32 label_prio;
	__u32 side_prio;
	__u8 side;
	__u8 gen;		/* the rule generation classify() used */
};

/* Headers deeper than this are not parsed: bounds the verifier's view of
 * the packet offset and the work per packet. */
#define DW_PARSE_MAX_OFF 512
#define DW_MAX_VLANS	2
#define DW_MAX_V6_EXT	6

#define DW_IPPROTO_IPIP	4
#define DW_IPPROTO_IPV6	41
#define DW_IPPROTO_GRE	47
#define DW_ETH_P_TEB	0x6558	/* GRE: transparent Ethernet bridging (gretap) */

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&dw_stats, &idx);

	if (v)
		*v += 1;	/* per-CPU, XDP runs in softirq: no nesting */
}

static __always_inline void parse_l4(void *data, void *end, __u32 off,
				     struct pkt_info *pi)
{
	pi->l4_off = off;
	pi->l4_ok = 1;
	if (pi->proto != IPPROTO_TCP && pi->proto != IPPROTO_UDP)
		return;
	if (off > DW_PARSE_MAX_OFF) {
		pi->truncated = 1;
		return;
	}
	/* sport, dport: bytes 0..3 of both TCP and UDP headers */
	void *l4 = data + off;

	/* Without this clang rebuilds data + off after the bounds check, and
	 * the verifier sees an unchecked pointer. */
	barrier_var(l4);
	if (l4 + 4 > end) {
		pi->truncated = 1;
		return;
	}
	pi->sport = *(__u16 *)l4;
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
	pi->l3_proto = iph->protocol;
	pi->l4_direct = 1;
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

	pi->l3_proto = nexthdr;
	pi->l4_direct = 1;
	off += sizeof(*ip6);
#pragma unroll
	for (int i = 0; i < DW_MAX_V6_EXT; i++) {
		if (nexthdr != IPPROTO_HOPOPTS && nexthdr != IPPROTO_ROUTING &&
		    nexthdr != IPPROTO_DSTOPTS && nexthdr != IPPROTO_FRAGMENT)
			break;
		pi->l4_direct = 0;
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

static __always_inline void parse_l3(void *data, void *end, __u32 off, __u16 h_proto,
				     struct pkt_info *pi)
{
	/* Inner headers start at offsets computed from packet bytes: bound
	 * them before the verifier sees data + off. */
	if (off > DW_PARSE_MAX_OFF) {
		pi->truncated = 1;
		return;
	}
	/* ...on the register that is used: clang otherwise checks one
	 * zero-extended copy of off and adds another to data. */
	asm volatile("%[o] &= 0x3ff" : [o] "+r"(off));
	if (h_proto == bpf_htons(ETH_P_IP))
		parse_ipv4(data, end, off, pi);
	else if (h_proto == bpf_htons(ETH_P_IPV6))
		parse_ipv6(data, end, off, pi);
}

/* Returns the ethertype (network order) and sets *off past the Ethernet
 * header and up to `vlans` VLAN tags (802.1ad outer, 802.1Q, in any
 * combination); -1 if the frame ends first. */
static __always_inline int parse_eth(void *data, void *end, __u32 *off, int vlans)
{
	if (*off > DW_PARSE_MAX_OFF)
		return -1;
	struct ethhdr *eth = data + *off;

	barrier_var(eth);
	if ((void *)(eth + 1) > end)
		return -1;
	__u16 h_proto = eth->h_proto;

	*off += sizeof(*eth);
#pragma unroll
	for (int i = 0; i < DW_MAX_VLANS; i++) {
		if (i >= vlans)
			break;
		if (h_proto != bpf_htons(ETH_P_8021Q) && h_proto != bpf_htons(ETH_P_8021AD))
			break;
		if (*off > DW_PARSE_MAX_OFF)
			return -1;
		__u16 *tag = data + *off;

		barrier_var(tag);
		if ((void *)(tag + 2) > end)
			return -1;
		h_proto = tag[1];
		*off += 4;
	}
	return h_proto;
}

static __always_inline void parse_packet(void *data, void *end, struct pkt_info *pi)
{
	__u32 off = 0;
	int h_proto = parse_eth(data, end, &off, DW_MAX_VLANS);

	if (h_proto < 0) {
		pi->truncated = 1;
		return;
	}
	parse_l3(data, end, off, h_proto, pi);
}

/* Bytes at data + off, bounds-checked; NULL if the packet is shorter. */
static __always_inline __u8 *pkt_bytes(void *data, void *end, __u32 off, __u32 n)
{
	if (off > DW_PARSE_MAX_OFF)
		return NULL;
	__u8 *p = data + off;

	barrier_var(p);
	if ((void *)(p + n) > end)
		return NULL;
	return p;
}

/*
 * If the packet parsed into pi is a tunnel we recognise, where its inner
 * packet starts: *off and the inner ethertype (0 if not a tunnel). IPIP,
 * IPv6-in-IPv6/IPv4-in-IPv6 and GRE are told by their protocol numbers;
 * UDP encapsulations only on the ports the rules configure.
 */
static __always_inline __u16 tunnel_inner(void *data, void *end, const struct pkt_info *pi,
					  const struct dw_ruleset *rs, __u32 *off, __u8 *encap)
{
	__u32 l4 = pi->l4_off;
	__u8 *h;

	if (!pi->l4_ok)
		return 0;
	if (pi->proto == DW_IPPROTO_IPIP) {
		*encap = DW_ENCAP_IPIP;
		*off = l4;
		return bpf_htons(ETH_P_IP);
	}
	if (pi->proto == DW_IPPROTO_IPV6) {
		*encap = DW_ENCAP_IP6IP6;
		*off = l4;
		return bpf_htons(ETH_P_IPV6);
	}
	if (pi->proto == DW_IPPROTO_GRE) {
		h = pkt_bytes(data, end, l4, 4);
		if (!h)
			return 0;
		/* RFC 2784/2890: C (checksum), K (key), S (sequence) each add 4
		 * bytes; version must be 0 (1 is PPTP), routing (R) is obsolete. */
		if ((h[0] & 0x40) || (h[1] & 0x07))
			return 0;
		__u32 hlen = 4 + ((h[0] & 0x80) ? 4 : 0) + ((h[0] & 0x20) ? 4 : 0) +
			     ((h[0] & 0x10) ? 4 : 0);
		__u16 proto = *(__u16 *)(h + 2);

		*encap = DW_ENCAP_GRE;
		*off = l4 + hlen;
		if (proto == bpf_htons(DW_ETH_P_TEB)) {
			int inner = parse_eth(data, end, off, 0);

			return inner < 0 ? 0 : inner;
		}
		if (proto == bpf_htons(ETH_P_IP) || proto == bpf_htons(ETH_P_IPV6))
			return proto;
		return 0;
	}
	if (pi->proto != IPPROTO_UDP || !pi->has_port)
		return 0;
	__u32 n = rs->n_udp_encaps;

	for (int i = 0; i < DW_MAX_UDP_ENCAPS; i++) {
		if (i >= n)
			break;
		const struct dw_udp_encap *e = &rs->udp_encaps[i];

		if (e->port != pi->dport)
			continue;
		__u32 payload = l4 + 8;

		*encap = e->type;
		if (e->type == DW_ENCAP_VXLAN) {
			/* RFC 7348: 8-byte header, I flag set, then an Ethernet frame. */
			h = pkt_bytes(data, end, payload, 8);
			if (!h || !(h[0] & 0x08))
				return 0;
			*off = payload + 8;
			int inner = parse_eth(data, end, off, 0);

			return inner < 0 ? 0 : inner;
		}
		if (e->type == DW_ENCAP_FOU) {
			*off = payload;
			return e->ipproto == DW_IPPROTO_IPV6 ? bpf_htons(ETH_P_IPV6) : bpf_htons(ETH_P_IP);
		}
		if (e->type == DW_ENCAP_GUE) {
			h = pkt_bytes(data, end, payload, 4);
			if (!h)
				return 0;
			__u8 ver = h[0] >> 6;

			if (ver == 1) {	/* variant 1: the IP header itself (0x4_ or 0x6_) */
				*off = payload;
				return (h[0] >> 4) == 6 ? bpf_htons(ETH_P_IPV6) : bpf_htons(ETH_P_IP);
			}
			/* variant 0: C bit marks a control message; hlen counts
			 * 4-byte words of optional fields after the 4-byte header. */
			if (ver != 0 || (h[0] & 0x20))
				return 0;
			*off = payload + 4 + (h[0] & 0x1f) * 4;
			if (h[1] == DW_IPPROTO_IPIP)
				return bpf_htons(ETH_P_IP);
			if (h[1] == DW_IPPROTO_IPV6)
				return bpf_htons(ETH_P_IPV6);
			return 0;
		}
		return 0;
	}
	return 0;
}

/*
 * A tunnel: remember the outer source for the PoP, then parse the inner
 * packet in place of the outer one; it is what the kernel will deliver
 * (and maybe drop) after decapsulation. One level: a tunnel in a tunnel
 * is labeled by its first inner header.
 */
static __always_inline void parse_tunnel(void *data, void *end, struct pkt_info *pi)
{
	const struct dw_ruleset *rs = &dw_state.gen[dw_state.active_gen & 1].rs;
	__u32 off = 0;
	__u8 encap = 0;
	__u16 h_proto = tunnel_inner(data, end, pi, rs, &off, &encap);

	if (!h_proto)
		return;
	struct pkt_info inner = {};

	inner.encap = encap;
	inner.outer_family = pi->family;
	__builtin_memcpy(inner.outer_saddr, pi->saddr, 16);
	parse_l3(data, end, off, h_proto, &inner);
	if (!inner.family) {	/* no inner IP header: label the outer packet */
		pi->truncated |= inner.truncated;
		return;
	}
	*pi = inner;
}

/*
 * The tunnel half of the parse, as a global (not inlined) function: the
 * verifier checks it once, on its own, instead of once per path into it,
 * which keeps the tunnel paths from multiplying the classifier's states
 * past the verifier's limits. Called only for packets that can be tunnels.
 */
__attribute__((noinline)) int dw_parse_tunnel(struct xdp_md *ctx, struct pkt_info *pi)
{
	if (!pi)
		return 0;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;

	parse_tunnel(data, end, pi);
	return pi->family;
}

/* The whole parse, outer and (for a tunnel) inner headers. The outer parse
 * stays inline: it is every packet's, and inline its fields stay in
 * registers on their way to classify(). */
static __always_inline void dw_parse_frame(struct xdp_md *ctx, struct pkt_info *pi)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;

	parse_packet(data, end, pi);
	if (!pi->l4_ok || pi->truncated)
		return;
	if (pi->proto == DW_IPPROTO_IPIP || pi->proto == DW_IPPROTO_IPV6 || pi->proto == DW_IPPROTO_GRE ||
	    (pi->proto == IPPROTO_UDP && dw_state.gen[dw_state.active_gen & 1].rs.n_udp_encaps))
		dw_parse_tunnel(ctx, pi);
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
	__u64 w = dw_lpm_bmp[((((gen * 2 + v6) * 2 + dir) << 10) | (top16 >> 6)) & (DW_LPM_BMP_LINES * 8 - 1)];

	return (w >> (top16 & 63)) & 1;
}

#define DW_H16	0x8000800080008000ull	/* the top bit of each u16 lane */
#define DW_L16	0x7fff7fff7fff7fffull
#define DW_ONE16 0x0001000100010001ull

/* How many of the four u16 lanes of p are <= the key's (k: the key in
 * every lane), without a branch: lane-wise unsigned k >= p (Hacker's
 * Delight 2-12; no borrow crosses lanes), then the four bits summed. */
static __always_inline __u32 lanes_le(__u64 k, __u64 p)
{
	__u64 t = (k | DW_H16) - (p & DW_L16);
	__u64 ge = ((k & ~p) | (~(k ^ p) & t)) & DW_H16;

	return ((ge >> 15) * DW_ONE16) >> 48;
}

/* 1 iff k <= key48: key48 is below 2^48 and k at most 2^48 (a tree's
 * padding, above every key: 2^48 for IPv6, 2^16 for IPv4), so bit 63 of
 * the difference is key48 < k. */
static __always_inline __u32 le48(__u64 key48, __u64 k)
{
	__u64 d = key48 - k;

	/* Hide d: with 32-bit operands (IPv4) clang turns the shift back
	 * into a compare and a branch, 15 a node, and the verifier walks
	 * every combination. */
	barrier_var(d);
	return 1 - (d >> 63);
}

/*
 * An IPv4 chunk (a /16 whose prefixes its entry's lanes cannot hold:
 * layout in dropwatch.h): n sorted ranges at entry off of dw_lpm4_rng.
 * Lanes 1-3 of the entry's w1 hold DW_LPM4_PIVOTS range starts that cut
 * the ranges into quarters, so counting those <= key picks the quarter
 * without a read, and the binary search (at most 2^16 ranges:
 * DW_LPM4_STEPS halvings) covers one quarter: a chunk has at most
 * DW_LPM4_TREE_MIN ranges, a quarter 16, and one of up to 16 sits in one
 * 64-byte line.
 */
static __always_inline __u32 lpm4_chunk(__u32 off, __u32 n, __u64 w1, __u32 key)
{
	/* Lane 0 (0 here) is <= every key: one too many. */
	__u32 c = lanes_le((__u64)key * DW_ONE16, w1 & ~0xffffull) - 1;
	__u32 base = c * n / (DW_LPM4_PIVOTS + 1);
	__u32 len = (c + 1) * n / (DW_LPM4_PIVOTS + 1) - base;

	/*
	 * The answer is in [base, base + len). Branch-free halving: with
	 * random addresses each comparison is a coin toss. The trip count
	 * depends on n only.
	 */
	for (int i = 0; i < DW_LPM4_STEPS; i++) {
		if (len <= 1)
			break;
		__u32 half = len >> 1;
		/* 1 iff the range starts above key (le48(): both below 2^16). */
		__u32 above = 1 - le48(key, line32_get(&dw_lpm4_rng, off + base + half) >> 16);

		/* Hide that above is 0 or 1, or clang turns the mask below back
		 * into a branch (BPF has no conditional move). */
		barrier_var(above);
		base += half & (above - 1);
		len -= half;
	}
	return line32_get(&dw_lpm4_rng, off + base) & 0xffff;
}

/* How many of words 1..15 of line l, shifted right by `shift`, are <= key
 * (a node's keys: shift 0; a leaf's range starts: shift 16). */
static __always_inline __u32 line32_le(const struct dw_line32 *l, __u32 key, const int shift)
{
	__u32 c = 0;

#pragma unroll
	for (int i = 1; i < 16; i++)
		c += le48(key, l->v[i] >> shift);
	return c;
}

/*
 * An IPv4 /16 of more than DW_LPM4_TREE_MIN ranges, as a static search tree
 * (layout in dropwatch.h): a 64-byte node of 16 u32 keys per level, then a
 * leaf line of 16 ranges. Provider blocks crowd real sets too (10^5
 * prefixes in 300 /16s: 600 ranges a /16, a segment of 50 after the
 * pivots, 6 halvings over as many lines); the tree reads levels + 1 lines,
 * and its 15 compares a line run side by side where each halving waits
 * for the one before. Measured (bench/compare.py --tree-min4): a tree is
 * already 25 ns faster at 200 ranges, and about even with the chunk at 35;
 * below, the chunk's single line wins when the tables miss the cache.
 */
static __always_inline __u32 lpm4_tree(__u32 off, __u32 n, __u64 levels, __u32 key)
{
	__u32 line = off >> 4, idx = 0, at, c;
	__u32 leaves = (n + 15) >> 4;
	const struct dw_line32 *l;

	for (int lv = DW_LPM4_TREE_LEVELS; lv >= 1; lv--) {
		if (lv > levels)
			continue;
		at = line + idx;
		l = bpf_map_lookup_elem(&dw_lpm4_rng, &at);
		if (!l)
			return 0;
		/* v[0], the node's first key, is <= key: the parent chose it. */
		idx = idx * 16 + line32_le(l, key, 0);
		/* Past this level's nodes: ceil(leaves / 16^lv) of them. */
		line += (leaves + (1u << (4 * lv)) - 1) >> (4 * lv);
	}
	at = line + idx;
	l = bpf_map_lookup_elem(&dw_lpm4_rng, &at);
	if (!l)
		return 0;
	/* Past n, the leaf repeats the last range: counted, same result. */
	c = line32_le(l, key, 16);
	barrier_var(c);	/* or clang folds the & 15 into the sums' bounds */
	return l->v[c & 15] & 0xffff;
}

/*
 * An IPv4 entry's lanes (layout in dropwatch.h), tested at once,
 * ((key ^ a) & m) == 0 per 16-bit lane, m the bits above a's length
 * marker (all 16 for a /32); the first lane that matches (the longest
 * prefix) gives the result, with arithmetic only: which lane matches is a
 * coin toss per packet, and a mispredicted branch would cost more than
 * this whole search (tests/bpf/test_branch_free.py holds the compiled
 * code to that).
 */
static __always_inline __u32 lpm4_lanes(__u64 w0, __u64 w1, __u32 key)
{
	/* -a lane by lane, no borrow crossing lanes (Hacker's Delight 2-18,
	 * x - y with x = 0), xored with a: the bits above a's marker, in
	 * three steps after the load (a ^ (a - 1) took five). */
	__u64 m = (DW_H16 - (w0 & DW_L16)) ^ (w0 | DW_H16);
	/* A /32 compares all 16 bits: 0xffff in each lane whose result has
	 * DW_LPM4_EXACT, as (2^(16i+16) - 2^(16i)); lane 3's 2^64 wraps. */
	_Static_assert(DW_LPM4_EXACT == 1u << 15, "a /32's flag is its result's top bit");
	__u64 e = w1 & DW_H16;

	m |= (e << 1) - (e >> 15);
	__u64 x = ((__u64)key * DW_ONE16 ^ w0) & m;
	/*
	 * Lanes that are 0: flagged by their top bit. A zero lane's borrow may
	 * flag lanes above it too, but none below, so the lowest flag is exact
	 * (Hacker's Delight 6-1), and it is the one kept: the first match, the
	 * longest prefix.
	 */
	__u64 z = (x - DW_ONE16) & ~x & DW_H16;

	z &= 0 - z;
	/* Its result, 15 bits, the other lanes 0; summed into the top lane. */
	return ((w1 & (z - (z >> 15))) * DW_ONE16) >> 48;
}

/*
 * IPv4: the /16's direct entry, whose lanes hold the answer, or for a
 * crowded /16 a chunk or a tree. One entry is all the memory the common
 * case reads: a second read that depends on it (the lanes used to sit in a
 * table of their own) cost 8-10 ns more per packet with 10^5 random flows.
 */
static __always_inline __u32 lpm4(__u32 gen, __u32 dir, __u32 addr_be)
{
	__u32 a = bpf_ntohl(addr_be);

	/* Most destinations' /16s hold prefixes in a set spread over all of
	 * them: skipping the bitmap then saves its read and test (-1.0 ns with
	 * 10^5 random prefixes and flows, bench/compare.py, session 12), where
	 * in a set crowded into few /16s it saves the entry's read (+2.5 ns
	 * without it). */
	if (!((dw_state.gen[gen & 1].rs.bmp_skip >> dir) & 1) && !lpm_bmp_has(gen, 0, dir, a >> 16))
		return 0;
	const struct dw_lpm4_slot *s = &dw_slot4[(((gen * 2 + dir) << 16) | (a >> 16)) & (DW_LPM4_SLOTS - 1)];
	__u64 w0 = s->w0, w1 = s->w1;

	if ((((__u32)w0 << 16) | (w1 & 0xffff)) == DW_LPM4_SLOT_CHUNK) {
		__u32 off = w0 >> 16, n = (w0 >> 48) + 1;

		return off & DW_LPM4_TREE ? lpm4_tree(off & ~DW_LPM4_TREE, n, w1 >> 16, a & 0xffff)
					  : lpm4_chunk(off, n, w1, a & 0xffff);
	}
	return lpm4_lanes(w0, w1, a & 0xffff);
}

/* An IPv6 chunk's search: the value of the last range whose u64 start <=
 * key, among ranges [base, base + len) of the chunk whose header is at
 * entry off. Entry i is the pair (key, value) at u64 2i of the 8-entry
 * values. */
static __always_inline __u32 lpm6_search(__u32 off, __u64 key, __u32 base, __u32 len)
{
	const struct dw_line128 *l;
	__u32 line, j;

	off += 1;
	/* Branch-free halving, as in lpm4_chunk(). */
	for (int i = 0; i < DW_LPM6_STEPS; i++) {
		if (len <= 1)
			break;
		__u32 half = len >> 1;

		j = off + base + half;
		line = j >> 3;
		l = bpf_map_lookup_elem(&dw_lpm6_rng, &line);
		if (!l)
			return 0;
		__u64 start = l->v[(j & 7) * 2];
		/* Bit 63: the borrow of key - start, i.e. key < start (Hacker's
		 * Delight 2-12), without a compare. */
		__u64 above = ((~key & start) | ((~key | start) & (key - start))) >> 63;

		barrier_var(above);
		base += half & ((__u32)above - 1);
		len -= half;
	}
	j = off + base;
	line = j >> 3;
	l = bpf_map_lookup_elem(&dw_lpm6_rng, &line);
	return l ? (__u32)l->v[(j & 7) * 2 + 1] : 0;
}

/* A whole IPv6 chunk (a /64's, keyed by the low 64 bits): n from its header. */
static __always_inline __u32 lpm6_chunk(__u32 off, __u64 key)
{
	__u32 line = off >> 3;
	const struct dw_line128 *l = bpf_map_lookup_elem(&dw_lpm6_rng, &line);

	if (!l)
		return 0;
	return lpm6_search(off, key, 0, (__u32)l->v[(off & 7) * 2]);
}

/* How many of the 48-bit pivots p are <= key48 (both below 2^48: bit 63
 * of the difference is key48 < p). */
static __always_inline __u32 pivot_le(__u64 key48, __u64 p)
{
	return le48(key48, p & 0xffffffffffffull);
}

/* A /16's IPv6 chunk (keyed by the top 64 bits): its entry holds n and
 * DW_LPM6_PIVOTS range starts (bits 16..63) that cut it into equal
 * segments; the pivots <= key pick the segment the search covers. */
static __always_inline __u32 lpm6_chunk_top(const struct dw_lpm6_slot *s, __u64 w0, __u64 hi64)
{
	__u64 key48 = hi64 & 0xffffffffffffull, n = w0 >> 32;
	__u32 c = pivot_le(key48, s->w[1]) + pivot_le(key48, s->w[2]) + pivot_le(key48, s->w[3]);
	__u32 base = c * n / (DW_LPM6_PIVOTS + 1);

	return lpm6_search((__u32)w0 & ~DW_LPM_CHUNK, hi64, base,
			   (c + 1) * n / (DW_LPM6_PIVOTS + 1) - base);
}

/* 64-byte line `line` of dw_lpm6_rng (8 u64), whose values hold two. */
static __always_inline const __u64 *rng6_line(__u32 line)
{
	__u32 v = line >> 1;
	const struct dw_line128 *l = bpf_map_lookup_elem(&dw_lpm6_rng, &v);

	return l ? &l->v[(line & 1) * 8] : NULL;
}

/*
 * A /16's IPv6 chunk on the top 64 bits, as a static search tree (layout
 * in dropwatch.h): one 64-byte node per level picks one of its 8
 * children by counting its keys <= key, then a leaf line of 8 (packed) or
 * 4 ranges gives the answer. RIR space puts real prefix sets in a few
 * dozen /16s, so these chunks hold thousands of ranges: a binary search
 * there read 10-13 dependent lines per address, the tree reads levels + 1
 * (3 + 1 for 10^5 prefixes in 55 /16s), its top levels shared by every
 * address of the /16
 * and so mostly cached. Unless a range points to a /64's chunk, a leaf
 * line packs 8 ranges of one word (packed != 0): half the leaf lines and
 * half the lowest nodes, the reads that miss the cache (for 10^5 RIR
 * prefixes 1.6 MB of leaves and 200 KB of such nodes), and often a level
 * less: -29 to -32 ns with that set (bench/compare.py). Packed trees then
 * beat the chunk's pivots (lpm6_chunk_top) from 17 ranges on, where they
 * take over from the small chunks: -21 to -29 ns at 35-45 ranges, -9 to
 * -12 at 10^6 random prefixes (--tree-min6). Trees of pairs did not: the
 * chunk stays up to DW_LPM6_PAIRS_TREE_MIN ranges for a /16 that holds a
 * /64's chunk (session 8: the chunk 6-12 ns faster at 35-45 ranges).
 */
static __always_inline __u32 lpm6_tree(__u64 w0, __u64 levels, __u64 key48, __u64 packed)
{
	__u32 n = w0 >> 32, line = ((__u32)w0 & ~DW_LPM_CHUNK) >> 2, idx = 0;
	__u32 sh = 2 + (packed != 0);	/* ranges a leaf line: 8 or 4 */
	__u32 leaves = (n + (1u << sh) - 1) >> sh;
	const __u64 *k;

	for (int l = DW_LPM6_TREE_LEVELS; l >= 1; l--) {
		if (l > levels)
			continue;
		k = rng6_line(line + idx);
		if (!k)
			return 0;
		/* k[0], the node's first key, is <= key: the parent chose it. */
		idx = idx * 8 + le48(key48, k[1]) + le48(key48, k[2]) + le48(key48, k[3]) +
		      le48(key48, k[4]) + le48(key48, k[5]) + le48(key48, k[6]) + le48(key48, k[7]);
		/* Past this level's nodes: ceil(leaves / 8^l) of them. */
		line += (leaves + (1u << (3 * l)) - 1) >> (3 * l);
	}
	k = rng6_line(line + idx);
	if (!k)
		return 0;
	/* Which form is per /16, and mostly one per rule set: a branch that
	 * predicts. Past n, a packed leaf repeats the last range: counted,
	 * same result. */
	if (packed) {
		__u32 c = le48(key48, k[1] >> 16) + le48(key48, k[2] >> 16) + le48(key48, k[3] >> 16) +
			  le48(key48, k[4] >> 16) + le48(key48, k[5] >> 16) + le48(key48, k[6] >> 16) +
			  le48(key48, k[7] >> 16);

		barrier_var(c);	/* or clang folds the & 7 into the sums' bounds */
		return k[c & 7] & 0xffff;
	}
	__u32 c = le48(key48, k[2]) + le48(key48, k[4]) + le48(key48, k[6]);

	return (__u32)k[(c & 3) * 2 + 1];
}

/* Halvings of a small IPv6 chunk's search: log2(DW_LPM6_SMALL_MAX). */
#define DW_LPM6_SMALL_STEPS 4

/*
 * A small IPv6 chunk: n <= 16 u64 ranges, (key bits 16..63 << 16) |
 * result, in one line of dw_lpm6_rng (two for more than 8 ranges, but one
 * dw_line128 value: one map lookup); always 4
 * halvings of exactly n ranges (a step whose half is 0 rereads and changes
 * nothing), without a branch: the trip count and every step's outcome
 * would be a coin toss per packet.
 */
static __always_inline __u32 lpm6_small(__u32 e, __u64 key48)
{
	__u32 off = e & DW_LPM6_SMALL_OFF;
	__u32 n = ((e >> DW_LPM6_SMALL_SHIFT) & 15) + 1;
	__u32 line = off >> 4, i0 = off & 15;
	const struct dw_line128 *l = bpf_map_lookup_elem(&dw_lpm6_rng, &line);

	if (!l)
		return 0;
	__u32 base = 0, len = n;

	for (int i = 0; i < DW_LPM6_SMALL_STEPS; i++) {
		__u32 half = len >> 1;
		/* 1 iff key < start (le48(): both below 2^48). */
		__u64 below = 1 - le48(key48, l->v[(i0 + base + half) & 15] >> 16);

		barrier_var(below);
		base += half & ((__u32)below - 1);
		len -= half;
	}
	return l->v[(i0 + base) & 15] & 0xffff;
}

/* An IPv6 entry's lanes: the longest of its up to DW_LPM6_LANES prefixes
 * that matches key48 (address bits 16..63), else the /16's own result. */
static __always_inline __u32 lpm6_lanes(const struct dw_lpm6_slot *s, __u64 w3, __u64 key48)
{
	__u64 res = w3 & 0xffff;

	/* The shortest lane first, so that the longest match writes last;
	 * which lanes match is a coin toss per packet: no branch. */
	for (int i = DW_LPM6_LANES - 1; i >= 0; i--) {
		__u64 w = s->w[i];
		__u64 x = (key48 ^ (w >> 16)) >> ((w3 >> (16 + 8 * i)) & 63);
		__u64 nz = x | (0 - x);	/* bit 63 iff x != 0 */

		/* Hide nz, or clang sees x == 0 and tests it with a branch
		 * (BPF has no conditional move): three coin tosses a lookup,
		 * 9 ns a packet with 10^5 prefixes and random flows. */
		barrier_var(nz);
		__u64 hit = (nz >> 63) - 1;	/* all ones iff x == 0 */

		barrier_var(hit);
		res ^= (res ^ (w & 0xffff)) & hit;
	}
	return res;
}

/*
 * IPv6: the direct entry for the top 16 bits, whose lanes hold the answer
 * for a /16 of up to DW_LPM6_LANES prefixes of /64 or shorter (layout in
 * dropwatch.h); else a small chunk, a tree or a chunk on the top 64 bits, and,
 * only inside a /64 that holds longer prefixes, a chunk on the low 64 bits
 * (whose ranges already fall back to the best prefix of /64 or less).
 */
static __always_inline __u32 lpm6(__u32 gen, __u32 dir, const __u32 *addr)
{
	__u64 hi64 = (__u64)bpf_ntohl(addr[0]) << 32 | bpf_ntohl(addr[1]);
	__u32 top16 = hi64 >> 48;

	if (!lpm_bmp_has(gen, 1, dir, top16))
		return 0;
	const struct dw_lpm6_slot *s = &dw_slot6[(((gen * 2 + dir) << 16) | top16) & (DW_LPM6_SLOTS - 1)];
	__u64 w3 = s->w[3];

	if (!(w3 & DW_LPM6_SLOT_PTR))
		return lpm6_lanes(s, w3, hi64 & 0xffffffffffffull);
	__u64 w0 = s->w[0];
	__u32 e = (__u32)w0;

	if (e & DW_LPM_LANES)
		return lpm6_small(e, hi64 & 0xffffffffffffull);
	/* Which kind a /16 is depends on its size: per rule set, mostly one. */
	if (s->w[3] & DW_LPM6_SLOT_TREE)
		e = lpm6_tree(w0, s->w[1], hi64 & 0xffffffffffffull, s->w[3] & DW_LPM6_SLOT_PACKED);
	else
		e = lpm6_chunk_top(s, w0, hi64);
	if (!(e & DW_LPM_CHUNK))
		return e;
	return lpm6_chunk(e & ~DW_LPM_CHUNK, (__u64)bpf_ntohl(addr[2]) << 32 | bpf_ntohl(addr[3])) &
	       ~DW_LPM_CHUNK;
}

/* The longest matching prefix's result for this gen: gen * DW_MAX_RESULTS
 * + the result (0: no prefix of this direction covers the address, which
 * for most /16 blocks costs only the bitmap read). Index gen *
 * DW_MAX_RESULTS itself is that gen's "no match", whose answer carries the
 * gen's default side. */
static __always_inline __u32
match_prefix(__u32 gen, __u32 fd, const __u32 *addr, const int v6)
{
	__u32 idx = v6 ? lpm6(gen, fd & 1, addr) : lpm4(gen, fd & 1, addr[0]);

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

/* Evaluate one lookup's result (an index from match_prefix()) the long
 * way, candidate by candidate. */
static __always_inline void eval_result(__u32 idx, const struct pkt_info *pi, struct dw_result *r)
{
	if (!(idx & (DW_MAX_RESULTS - 1)))
		return;
	const struct dw_lpm_res *e = bpf_map_lookup_elem(&dw_lpm_res, &idx);

	if (!e)
		return;
	if (e->n == 1) {
		eval_cand(&e->c0, pi, r);
	} else if (e->n > 1) {
		const struct dw_cand_list *l = bpf_map_lookup_elem(&dw_results, &idx);

		if (l)
			eval_list(l, pi, r);
	}
}

/* The smaller of two answer keys (both below 2^63), without a branch. */
static __always_inline __u64 key_min(__u64 a, __u64 b)
{
	__u64 d = a - b;

	/* Hide d, or clang makes the mask a compare and a branch. */
	barrier_var(d);
	return b + (d & (__u64)((__s64)d >> 63));
}

/* The prefix id of a result (0: none), for the src+dst rules. */
static __always_inline __u32 result_prefix_id(__u32 idx)
{
	if (!(idx & (DW_MAX_RESULTS - 1)))
		return 0;
	const struct dw_lpm_res *e = bpf_map_lookup_elem(&dw_lpm_res, &idx);

	return e ? e->prefix_id : 0;
}

/*
 * The whole classifier: (packet) -> (label_id, side). Both sides' answers
 * combine without a branch when neither has a proto/port condition to test
 * (struct dw_lpm_ans); otherwise both candidate lists are evaluated.
 */
static __always_inline void classify(const struct pkt_info *pi, struct dw_result *r, const __u32 gen)
{
	const struct dw_ruleset *rs = &dw_state.gen[gen].rs;
	__u32 si, di;

	r->gen = gen;
	/* The destination first: it is the lookup that misses the cache (most
	 * sources stop at their bitmap bit), and starting its read first lets
	 * the source's lookup run under it: -3 ns at 10^5 random flows (IPv4,
	 * bench/compare.py, three runs). */
	if (pi->family == 6) {
		di = match_prefix(gen, DW_FD_V6_DST, pi->daddr, 1);
		si = match_prefix(gen, DW_FD_V6_SRC, pi->saddr, 1);
	} else {
		di = match_prefix(gen, DW_FD_V4_DST, pi->daddr, 0);
		si = match_prefix(gen, DW_FD_V4_SRC, pi->saddr, 0);
	}
	const struct dw_lpm_ans *as = &dw_lpm_ans[si & (DW_GENS * DW_MAX_RESULTS - 1)];
	const struct dw_lpm_ans *ad = &dw_lpm_ans[di & (DW_GENS * DW_MAX_RESULTS - 1)];

	if ((as->skey | ad->skey) & DW_ANS_EVAL) {
		stat_inc(DW_STAT_XDP_EVAL);
		r->side = rs->default_side;
		eval_result(si, pi, r);
		eval_result(di, pi, r);
	} else {
		__u64 l = key_min(as->lkey, ad->lkey), s = key_min(as->skey, ad->skey);

		r->label_id = (__u32)l;
		r->label_prio = l >> 32;
		r->side = (__u8)s;
		r->side_prio = s >> 32;
	}
	if (rs->wildcard.n)
		eval_list(&rs->wildcard, pi, r);

	/* Only prefixes that take part in a src+dst rule carry a prefix id. */
	if (rs->has_pairs) {
		struct dw_pair_key pk = {
			.src_prefix_id = result_prefix_id(si),
			.dst_prefix_id = result_prefix_id(di),
			.gen = gen,
		};

		if (pk.src_prefix_id && pk.dst_prefix_id) {
			const struct dw_cand_list *pair = bpf_map_lookup_elem(&dw_pairs, &pk);

			if (pair)
				eval_list(pair, pi, r);
		}
	}
}

static __always_inline void count_packet(__u32 label_id, __u32 side, __u16 pop_id, __u64 bytes)
{
	struct dw_pkt_val *v;

	if (pop_id == DW_POP_NONE) {
		/* label_id < DW_MAX_LABELS (finish_packet): the cell is in this
		 * CPU's stripe. */
		__u32 idx = bpf_get_smp_processor_id() * DW_PKT_CELLS + label_id * DW_SIDE__COUNT +
			    (side & (DW_SIDE__COUNT - 1));

		v = bpf_map_lookup_elem(&dw_pkt_counts, &idx);
	} else {
		/* Tunnelled: a hash by PoP, off the common path. */
		struct dw_pop_pkt_key k = { .label_id = label_id, .pop_id = pop_id, .side = side };
		struct dw_pkt_val zero = {};

		v = bpf_map_lookup_elem(&dw_pop_pkt_counts, &k);
		if (!v) {
			bpf_map_update_elem(&dw_pop_pkt_counts, &k, &zero, BPF_NOEXIST);
			v = bpf_map_lookup_elem(&dw_pop_pkt_counts, &k);
		}
	}
	if (v) {
		v->packets += 1;
		v->bytes += bytes;
	}
}

/* The landing PoP of a tunnelled packet, from its outer source. */
static __always_inline __u16 landing_pop(const struct pkt_info *pi, __u32 gen)
{
	if (!pi->encap)
		return DW_POP_NONE;
	if (!dw_state.gen[gen & 1].rs.has_pops)
		return DW_POP_UNKNOWN;
	struct dw_pop_key k = {
		.prefixlen = 16 + (pi->outer_family == 6 ? 128 : 32),
		.gen = gen,
		.family = pi->outer_family,
	};

	__builtin_memcpy(k.addr, pi->outer_saddr, 16);
	__u32 *pop = bpf_map_lookup_elem(&dw_pops, &k);

	return pop && *pop && *pop < DW_MAX_POPS ? *pop : DW_POP_UNKNOWN;
}

/*
 * The flow fallback's entry for this packet. The key must hold everything
 * the classification used, or one key could stand for two labels: a packet
 * whose ports the rules saw but the key cannot (IPv6 extension headers
 * before L4; the reader parses only the fixed header) is not remembered.
 */
static __always_inline void remember_flow(const struct pkt_info *pi, const struct dw_result *r,
					  __u16 pop_id)
{
	const struct dw_ruleset *rs = &dw_state.gen[r->gen & 1].rs;
	__u32 mode = rs->flow_mode;

	if (mode == DW_FLOW_OFF || (mode == DW_FLOW_ENCAP && !pi->encap))
		return;
	if (pi->has_port && !pi->l4_direct)
		return;
	struct dw_flow_key k = {
		.proto = pi->l3_proto,
		.family = pi->family,
	};

	if (pi->has_port && pi->l4_direct) {
		k.sport = pi->sport;
		k.dport = bpf_htons(pi->dport);
		k.flags = DW_FLOW_HAS_PORTS;
	}
	if (pi->family == 4) {
		__builtin_memcpy(k.saddr, pi->saddr, 4);
		__builtin_memcpy(k.daddr, pi->daddr, 4);
	} else {
		__builtin_memcpy(k.saddr, pi->saddr, 16);
		__builtin_memcpy(k.daddr, pi->daddr, 16);
	}
	__u64 now = bpf_ktime_get_ns();
	__u32 epoch = rs->epoch;
	struct dw_flow_val *v = bpf_map_lookup_elem(&dw_flows, &k);

	if (v && v->epoch == epoch && v->label_id == r->label_id && v->side == r->side &&
	    (v->pop_id == pop_id || (v->flags & DW_FLOW_POP_AMBIGUOUS))) {
		/* The common case: only the age moves (one aligned store). */
		v->ts_ns = now;
		return;
	}
	struct dw_flow_val nv = {
		.ts_ns = now,
		.label_id = r->label_id,
		.epoch = epoch,
		.pop_id = pop_id,
		.side = r->side,
	};

	/* The same flow from another PoP within max age: which PoP a drop
	 * came from is unknown, and the entry says so until the flow idles. */
	if (v && v->epoch == epoch && v->pop_id != pop_id &&
	    now - v->ts_ns <= (__u64)rs->flow_max_age_ms * 1000000ULL) {
		nv.pop_id = DW_POP_UNKNOWN;
		nv.flags = DW_FLOW_POP_AMBIGUOUS;
	}
	/* A whole new value: an update replaces the element, so the reader
	 * never sees half of it. */
	if (bpf_map_update_elem(&dw_flows, &k, &nv, BPF_ANY))
		stat_inc(DW_STAT_XDP_FLOW_FAIL);
}

/* The check of an untunnelled record (label_id < DW_MAX_LABELS): one read
 * of the table the loader filled, instead of two rounds of mixing. */
static __always_inline __u32 meta_chk(__u32 label_id, __u32 side)
{
	return dw_metachk[(label_id * DW_SIDE__COUNT + (side & (DW_SIDE__COUNT - 1))) &
			   (DW_MAX_LABELS * DW_SIDE__COUNT - 1)];
}

/*
 * Everything after classification: count the packet and write its record.
 * Shared by dw_labeler and the bench's alternative-classifier programs, so
 * what the bench measures is what ships.
 */
static __always_inline int finish_packet(struct xdp_md *ctx, void *data, void *end,
					 const struct pkt_info *pi, struct dw_result *r)
{
	__u16 pop_id = DW_POP_NONE;

	if (r->label_id >= DW_MAX_LABELS) {
		stat_inc(DW_STAT_XDP_LABEL_RANGE);
		r->label_id = 0;
	}
	if (pi->encap) {
		stat_inc(DW_STAT_XDP_ENCAP);
		pop_id = landing_pop(pi, r->gen);
	}
	count_packet(r->label_id, r->side, pop_id, end - data);

	/* Nothing to say about a frame we could not read an address from. */
	if (!pi->family)
		return XDP_PASS;
	remember_flow(pi, r, pop_id);

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
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	/* Whole words, mixed from registers: reading a word back that was
	 * stored as u16 + u8 + u8 defeats the CPU's store forwarding. */
	__u32 *w = (__u32 *)m;
	__u32 w1 = r->label_id, w2 = pop_id | (__u32)r->side << 16;	/* flags 0 */

	w[0] = DW_META_MAGIC | DW_META_VERSION << 16 | (__u32)sizeof(*m) << 24;
	w[1] = w1;
	w[2] = w2;
	w[3] = pop_id == DW_POP_NONE ? meta_chk(r->label_id, r->side)
				     : dw_meta_tail(dw_meta_h1, w1, w2);	/* tail_pad 0 */
#else
	m->magic = DW_META_MAGIC;
	m->version = DW_META_VERSION;
	m->rec_len = sizeof(*m);
	m->label_id = r->label_id;
	m->pop_id = pop_id;
	m->side = r->side;
	m->flags = 0;
	__u32 *w = (__u32 *)m;

	m->check = dw_meta_tail(dw_meta_h1, w[1], w[2]);
	m->tail_pad = 0;
#endif
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

/* One generation's classification, count and record: gen is a constant in
 * each of dw_label_packet()'s two copies. */
static __always_inline int label_packet(struct xdp_md *ctx, struct pkt_info *pi, const __u32 gen)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct dw_result r = { .label_prio = 0xffffffff, .side_prio = 0xffffffff };

	if (pi->family)
		classify(pi, &r, gen);
	return finish_packet(ctx, data, end, pi, &r);
}

/*
 * Classification, counting and the record, as a global (not inlined)
 * function: the verifier checks it once, with the parsed fields unknown,
 * instead of once for every path through the parse (VLAN tags, IPv4/IPv6,
 * extension headers, tunnels), which multiplied the states past the
 * verifier's limit. The call costs about 2 ns.
 */
__attribute__((noinline)) int dw_label_packet(struct xdp_md *ctx, struct pkt_info *pi)
{
	if (!pi)
		return XDP_PASS;
	/*
	 * Every table address classify() computes has the generation in it.
	 * Read as a value, each lookup's first read waits for this load; as
	 * a branch, taken the same way until the next rules apply, the CPU
	 * runs on without waiting, and each copy below has its addresses as
	 * constants: -1.3 to -2.1 ns per packet with 10^5 IPv4 prefixes and
	 * random flows, IPv6 -0.1 to -2.8 (bench/compare.py, four runs,
	 * session 13). The verifier checks both copies: 204,000 of its
	 * 1,000,000 instructions for the program (73,000 with one).
	 */
	if (dw_state.active_gen & 1)
		return label_packet(ctx, pi, 1);
	return label_packet(ctx, pi, 0);
}

SEC("xdp")
int dw_labeler(struct xdp_md *ctx)
{
	DW_BENCH_HOOK(ctx);
	struct pkt_info pi = {};

	dw_parse_frame(ctx, &pi);
	if (pi.truncated)
		stat_inc(DW_STAT_XDP_PARSE_STOP);
	dw_label_packet(ctx, &pi);
	return XDP_PASS;
}

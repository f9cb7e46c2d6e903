/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The contract between the BPF programs and user space: the metadata record
 * and every map key/value. Nothing else defines these layouts; the Python
 * mirror (dropwatch/abi.py) is checked against the compiled objects' BTF by
 * tests/bpf/test_abi.py.
 */
#ifndef DROPWATCH_H
#define DROPWATCH_H

#ifndef __DW_USER_TYPES
#include <linux/types.h>
#endif

/* ---- metadata record (written by the XDP labeler, read on kfree_skb) ---- */

#define DW_META_MAGIC	0xD70Bu
#define DW_META_VERSION	1
/* Before 6.8 the XDP metadata area holds at most 32 bytes (kernel-notes). */
#define DW_META_MAX_OLD	32
/* From 6.8 (2ebe81c81435) up to 252; the reader accepts anything up to this. */
#define DW_META_MAX	252

enum dw_side {
	DW_SIDE_UNKNOWN = 0,
	DW_SIDE_EYEBALL = 1,
	DW_SIDE_ORIGIN = 2,
	DW_SIDE__COUNT = 4,	/* array stride in dw_pkt_counts */
};

/*
 * 16 bytes, a multiple of 4 as adjust_meta requires. The check value covers
 * the first 12 bytes; the last 2 bytes (tail_pad) carry nothing, because on
 * forwarding neigh_hh_output() copies 16 bytes ending at the new MAC header
 * and so overwrites the 2 bytes just before it.
 */
struct dw_meta {
	__u16 magic;
	__u8 version;
	__u8 rec_len;		/* sizeof(struct dw_meta) */
	__u32 label_id;		/* 0: matched no label rule */
	__u16 pop_id;		/* landing PoP: DW_POP_NONE, DW_POP_UNKNOWN or a PoP id */
	__u8 side;		/* enum dw_side */
	__u8 flags;
	__u16 check;		/* dw_meta_check() over the 12 bytes above + key */
	__u16 tail_pad;		/* may be overwritten; never read */
};

/*
 * A 16-bit check over the first three words and a per-load key. The key
 * makes a record forged by a remote sender (or left over from an earlier
 * daemon) fail the check, so it counts as corrupt, never under someone's
 * label. Each word goes through a full 32-bit avalanche (lowbias32), so
 * every bit of every field, side and flags included, reaches all 16 bits
 * of the check. Mirrored by dropwatch.abi.meta_check().
 */
static __inline __u32 dw_mix32(__u32 x)
{
	x ^= x >> 16; x *= 0x7FEB352Du;
	x ^= x >> 15; x *= 0x846CA68Bu;
	x ^= x >> 16;
	return x;
}

/* The hash state after the key and the first word; the labeler's first
 * word is a constant (magic, version, rec_len), so the loader computes this
 * once (dropwatch.abi.meta_h1) and a packet mixes only the other two. */
static __inline __u32 dw_meta_head(__u32 w0, __u32 key)
{
	return dw_mix32(dw_mix32(key ^ 0x2545F491u) ^ w0);
}

static __inline __u16 dw_meta_tail(__u32 h1, __u32 w1, __u32 w2)
{
	__u32 h = dw_mix32(h1 ^ w1);

	h = dw_mix32(h ^ w2);
	return (__u16)(h ^ (h >> 16));
}

/* The check of a record with pop_id DW_POP_NONE and no flags (every
 * packet that was not tunnelled) depends on the label and side alone: the
 * loader fills dw_metachk[label_id * DW_SIDE__COUNT + side] with it at
 * load (dropwatch.abi.meta_check_table), and the labeler reads it instead
 * of mixing two words per packet. */

static __inline __u16 dw_meta_mix(__u32 w0, __u32 w1, __u32 w2, __u32 key)
{
	return dw_meta_tail(dw_meta_head(w0, key), w1, w2);
}

/* ---- rule maps (filled by user space, read by the labeler) ---- */

/* Rules are double-buffered: a reload fills generation !active, then flips
 * dw_labeler_state.active_gen in one 4-byte write, so a packet never sees
 * half a rule set. */
#define DW_GENS		2
#define DW_FD_V4_SRC	0
#define DW_FD_V4_DST	1
#define DW_FD_V6_SRC	2
#define DW_FD_V6_DST	3
#define DW_FD_COUNT	4

#define DW_MAX_CANDS	8	/* rules that can apply to one prefix */
#define DW_MAX_LABELS	16384	/* label ids 1..16383; 0 = unlabeled */
#define DW_MAX_PREFIXES	(1 << 20)	/* distinct prefixes, both gens */
#define DW_MAX_PAIRS	(1 << 16)
#define DW_MAX_DROP_KEYS 65536

/*
 * Longest-prefix match, DXR-style (Zec, Rizzo, Mikuc 2012), compiled by user
 * space (dropwatch/lpm.py) so that a lookup reads one entry of a direct
 * table on the top 16 address bits and, only for a crowded /16, searches
 * a chunk of ranges. Every answer already is the index of the longest
 * matching prefix's result, so there is no per-length probing and the
 * worst case is bounded by the search depth, not by the prefix lengths in
 * use.
 *
 * What a lookup costs is decided by three things, measured on the machines
 * in bench/README.md: dependent reads of memory that is not in L1 (with
 * 10^5 random flows each costs 10-30 ns here, and a second read that
 * depends on the first costs that again), data-dependent branches (a
 * mispredicted one costs about as much as the whole lookup), and
 * instructions. So an IPv4 /16 holding up to four prefixes (98% of them
 * with 10^5 random prefixes) is answered by its direct entry alone; the
 * coarse decisions branch (they are skewed and predictable per direction:
 * most sources hit no /16, most destinations one that holds prefixes); the
 * search inside a /16, whose outcome is a coin toss per packet, is
 * branch-free.
 *
 * Bitmap (dw_lpm_bmp): one bit per (gen, family, direction, top 16 bits),
 * set iff the direct entry is not empty: 8 KB per direction, so it stays
 * in the L1 cache, and a side whose /16 holds no prefix (most sources)
 * costs no read of the direct table. Line ((gen * 2 + v6) * 2 + dir) *
 * 128 + top16 / 512, word (top16 / 64) % 8, bit top16 % 64.
 *
 * IPv4 direct table (dw_slot4): one struct dw_lpm4_slot (16 bytes, a
 * quarter of a cache line) per (gen, direction, top 16 address bits),
 * index ((gen * 2 + dir) << 16) | top16. 16 bytes, not 32 (until session
 * 12: a mask lane per address lane, and the /16's own result apart),
 * because one direction's entries then take 1 MB of a core's 2 MB L2, not
 * all of it: -1.6 to -2.2 ns a packet with 10^5 random prefixes and flows,
 * -3.6 to -6.2 at 10^6 (bench/compare.py, same rounds). It holds the
 * /16's prefixes longer than /16 themselves, and its own result, up to
 * DW_LPM_LANES_MAX of them, longest first, as four 16-bit lanes: a_i in
 * w0, r_i in w1.
 *
 *   a prefix of k = plen - 16 bits, 1..15: a_i = its low 16 address bits
 *     with a length marker, bit 15 - k set (the bits below it are 0);
 *     r_i = its result. Lane i's mask is ~(a_i ^ (a_i - 1)), the bits
 *     above the marker.
 *   a /32: a_i = its low 16 address bits, r_i = its result | 0x8000
 *     (mask 0xffff).
 *   the /16's own result (from a prefix of /16 or shorter), if any: the
 *     last lane, a_i = 0x8000 (mask 0: it always matches), r_i = the
 *     result.
 *
 * Lane i matches iff ((key ^ a_i) & m_i) == 0; the four are tested at
 * once (SWAR) and the first match, the longest prefix, is extracted with
 * arithmetic; no match gives 0. Lanes past the /16's k lanes repeat lane
 * 0 (a lane that does not match when lane 0 does not). Results in lanes
 * are below 0x8000; a /16 whose lanes would need a larger one is a chunk.
 *
 * A chunk's or tree's entry has lane 0 of w0 = 0 and lane 0 of w1 =
 * 0x8000 (DW_LPM4_SLOT_CHUNK: a /32 of .0 with result 0, which is no
 * lane), off in w0's bits 16-47, n - 1 in its bits 48-63: its n sorted
 * ranges at entry off of dw_lpm4_rng (no header; a chunk of up to 16
 * starts a 64-byte line if it would cross one). A chunk (a /16 of more
 * lanes, or whose lanes cannot hold it) has in lanes 1-3 of w1
 * DW_LPM4_PIVOTS pivots: pivot j (1..3) is the start of range j * n / 4
 * (rounded down), so the pivots <= key, c of them, put the answer in
 * ranges [c * n / 4, (c + 1) * n / 4). A /16 of more than
 * DW_LPM4_TREE_MIN ranges has DW_LPM4_TREE in off too, and its index
 * levels in w1's bits 16-31: a tree at entry off (a multiple of 16, a
 * 64-byte line) as the IPv6 trees below, with 16 u32 keys a node (pad
 * 2^16) and leaf lines of 16 ranges (past n, copies of the last), levels
 * the least l with ceil(leaves / 16^l) == 1.
 *
 * IPv6 direct table (dw_slot6): one struct dw_lpm6_slot (32 bytes) per
 * (gen, direction, top 16 bits), index as above. A /16 whose prefixes are
 * all /64 or shorter, at most DW_LPM6_LANES of them (93% with 10^5 random
 * prefixes), keeps them as lanes, longest first: w[i] = (the prefix's
 * address bits 16..63 << 16) | its result, and in w[3], above the /16's
 * own result (bits 0-15), lane i's shift 64 - plen at bits 16 + 8i. Lane
 * i matches iff ((key bits 16..63) ^ (w[i] >> 16)) >> shift == 0; the
 * longest match wins (all three tested, without a branch), else the own
 * result. Lanes past the prefixes repeat lane 0; a /16 with only its own
 * result has three lanes of shift 48 (always match) and that result; an
 * empty entry answers 0. Any other /16 has DW_LPM6_SLOT_PTR in w[3] and
 * in w[0]'s low half:
 *   DW_LPM_CHUNK | off    with DW_LPM6_SLOT_TREE in w[3] (a /16 of more
 *                         than DW_LPM6_TREE_MIN ranges, or of more than
 *                         DW_LPM6_PAIRS_TREE_MIN if one of them points
 *                         to a /64's chunk): a tree of n
 *                         ranges (below) at entry off of the range array
 *                         (a multiple of 4: a 64-byte line); w[0]'s high
 *                         half is n, w[1] its index levels, and
 *                         DW_LPM6_SLOT_PACKED in w[3] if its leaf lines
 *                         are packed (below). Without: a
 *                         chunk header at entry off; w[0]'s high half is
 *                         its n, and w[1], w[2] and w[3] hold in bits
 *                         0-47 DW_LPM6_PIVOTS pivots: pivot j (1..3) is
 *                         bits 16..63 of the start of range j * n / 4, so
 *                         the c pivots <= key put the answer in ranges
 *                         [c * n / 4, (c + 1) * n / 4)
 *   DW_LPM_LANES | (n - 1) << DW_LPM6_SMALL_SHIFT | off
 *                         a small chunk of n (1..16) ranges at u64 off of
 *                         the range array (each gen's small chunks first)
 * Offsets are absolute: the loader puts each gen in its own half.
 *
 * IPv6 small chunks: up to 16 sorted ranges, each one u64, (key bits
 * 16..63 << 16) | result, inside one 128-byte value and never across a
 * 64-byte line when they fit one; a fixed, branch-free 4-step search over
 * exactly n ranges (no padding). Never used for a /16 that holds prefixes
 * longer than /64.
 *
 * IPv6 trees (a /16 of more than DW_LPM6_TREE_MIN ranges on the top 64
 * bits, DW_LPM6_PAIRS_TREE_MIN if it holds a /64's chunk): its n ranges,
 * sorted, the first starting at 0, in leaf lines of 4 (16 bytes each: u64
 * start, bits 16..63 of the address; u64 value, as in a chunk below), or,
 * when no range's value points to a /64's chunk (DW_LPM6_SLOT_PACKED),
 * packed 8 a line as the small chunks' ranges, (start << 16) | result,
 * past n copies of the last range (they count but answer the same);
 * `leaves` below is then ceil(n / 8), else ceil(n / 4); after `levels`
 * levels of index lines, the top level first: a line is a node
 * of 8 u64 keys, key c of node j of level l the start of the first range
 * below its child j * 8 + c (level l - 1; level 0: the leaf lines). Level l
 * has ceil(leaves / 8^l) nodes and levels is the least l with
 * ceil(leaves / 8^l) == 1 (0 for one leaf line). Keys past the end, and
 * a leaf of pairs' starts past n, are 2^48, above every address. The search counts the keys <= key in
 * each node it visits (the first always is) and descends; in the leaf,
 * the last range starting <= key is the answer.
 *
 * Chunks (the rest): n ranges sorted by start (IPv6: after a header entry
 * holding n); the first starts at 0. An address takes the last range
 * starting at or below it. IPv4 ranges (dw_lpm4_rng): (start of the range
 * in the low 16 bits << 16) | result; a chunk of at most 16 starts a
 * 64-byte line rather than cross one. IPv6 chunks (dw_lpm6_rng) are on the
 * top 64 bits of a /16 (one that holds a /64's chunk, up to
 * DW_LPM6_PAIRS_TREE_MIN ranges; else only when the small chunks' lines
 * are full, up to DW_LPM6_TREE_MIN) or the low 64 bits
 * of a /64 that holds prefixes longer than /64: a header entry (n, 0),
 * then 16-byte ranges, u64 key, u64 value. A top-64 range's value (a
 * tree's too) is a result, or for such a /64 DW_LPM_CHUNK | off of its
 * chunk.
 *
 * Arrays of 64-byte lines, not of single words: an array map rounds each
 * value up to 8 bytes, and a line keeps neighbouring ranges in one cache
 * line. dw_lpm6_rng's values are pairs of lines (struct dw_line128).
 */
#define DW_LPM_CHUNK	0x80000000u
#define DW_LPM_LANES	0x40000000u
#define DW_LPM_LANES_MAX 4	/* IPv4 lanes of one /16 in its direct entry */
#define DW_LPM4_PIVOTS	3	/* IPv4 chunk: range starts in its direct entry */
#define DW_LPM4_SLOT_CHUNK 0x8000u	/* IPv4 entry's lanes 0 (w0 << 16 | w1): a chunk */
#define DW_LPM4_EXACT	0x8000u	/* IPv4 lane's result: the lane is a /32 */
#define DW_LPM4_TREE	0x80000000u	/* IPv4 entry's off: the chunk is a tree */
#define DW_BMP_SKIP_MIN	49152	/* IPv4 /16s in use from which a direction's bitmap is skipped */
#define DW_LPM4_TREE_MIN 64	/* IPv4: a /16 of more ranges is a tree, not a chunk (measured) */
#define DW_LPM4_TREE_LEVELS 3	/* IPv4 tree: index levels, 16^3 leaf lines of 16 >= 2^16 ranges */
#define DW_LPM6_LANES	3	/* IPv6 prefixes of one /16 in its direct entry */
#define DW_LPM6_SLOT_PTR (1ull << 63)
#define DW_LPM6_PIVOTS	3	/* IPv6 chunk: range starts in its direct entry */
#define DW_LPM6_SLOT_TREE (1ull << 62)
#define DW_LPM6_SLOT_PACKED (1ull << 61)	/* a tree's leaf lines hold 8 packed ranges */
#define DW_LPM6_TREE_MIN 16	/* IPv6: a /16 of more ranges is a tree (packed leaves; measured) */
#define DW_LPM6_PAIRS_TREE_MIN 64	/* ... if it holds a /64's chunk (leaves of pairs; measured) */
#define DW_LPM6_TREE_LEVELS 8	/* IPv6 tree: index levels, 8^8 leaf lines >= 2^DW_LPM6_STEPS ranges */
#define DW_LPM6_SMALL_SHIFT 26
#define DW_LPM6_SMALL_OFF 0x03ffffffu
#define DW_LPM6_SMALL_MAX 16
#define DW_LPM4_SLOTS	(DW_GENS * 2 * 65536)	/* IPv4 direct table: struct dw_lpm4_slot */
#define DW_LPM6_SLOTS	(DW_GENS * 2 * 65536)	/* IPv6 direct table: struct dw_lpm6_slot */
#define DW_LPM4_ENTRIES	(1 << 22)	/* u32 ranges + headers, both gens (default size) */
#define DW_LPM6_ENTRIES	(1 << 21)	/* 16-byte ranges + headers, both gens (default size) */
#define DW_LPM_BMP_LINES (DW_GENS * 2 * 2 * 128)	/* 65536 bits per (gen, family, dir) */
#define DW_MAX_RESULTS	65536		/* per gen; result 0 = no prefix */
/* Search depth: a v4 chunk covers 2^16 addresses, so n <= 2^16; the loader
 * refuses a v6 chunk of more than 2^DW_LPM6_STEPS ranges. */
#define DW_LPM4_STEPS	16
#define DW_LPM6_STEPS	24

struct dw_line32 {
	__u32 v[16];
};

/* An IPv4 direct entry (above): four u16 lanes a in w0, r in w1. */
struct dw_lpm4_slot {
	__u64 w0;
	__u64 w1;
};

/* An IPv6 direct entry (above): three lanes and their shifts. */
struct dw_lpm6_slot {
	__u64 w[4];
};

/* dw_lpm6_rng's value: two cache lines, so a small IPv6 chunk of up to 16
 * ranges is always inside one value: one lookup. */
struct dw_line128 {
	__u64 v[16];
};

/*
 * A result's answer without evaluating its candidates: the labeler reads
 * this for both sides and keeps the smaller key of each kind, so the common
 * case (no proto/port condition) costs two loads and four compares, and no
 * branch that depends on the packet. lkey = label_prio << 32 | label_id,
 * skey = side_prio << 32 | side; a kind no candidate sets holds
 * DW_PRIO_NONE << 32 (skey: | the rule set's default side). A result with
 * a candidate that has a proto or port condition has DW_ANS_EVAL in skey:
 * both sides' candidate lists are then evaluated the long way. Other keys
 * stay below 2^63, so the smaller one is found by a signed subtraction.
 * DW_ANS_EVAL is bit 63, above every key: until session 11 it was bit 62,
 * which DW_PRIO_NONE << 32 also sets, so every answer without a side
 * (the "no match" one included) asked for the long way, and only a packet
 * whose source and destination prefixes both set a side took the
 * branch-free path.
 */
#define DW_PRIO_NONE	0x7fffffffu
#define DW_ANS_EVAL	(1ull << 63)
_Static_assert(!((((__u64)DW_PRIO_NONE << 32) | 0xffffffffull) & DW_ANS_EVAL),
	       "DW_ANS_EVAL must be above every answer key");
struct dw_lpm_ans {
	__u64 lkey;
	__u64 skey;
};

/* A candidate rule: the packet must match proto (0 = any) and, with
 * DW_CAND_NEEDS_PORT, carry a destination port in [dport_lo, dport_hi]
 * (ICMP and non-first fragments carry none). */
#define DW_CAND_NEEDS_PORT	0x01
struct dw_cand {
	__u32 label_id;		/* 0: the rule sets no label */
	__u32 prio;		/* lower wins: specificity, then rule order */
	__u16 dport_lo;
	__u16 dport_hi;
	__u8 proto;
	__u8 side;		/* DW_SIDE_UNKNOWN: the rule sets no side */
	__u8 flags;		/* DW_CAND_* */
	__u8 pad;
};

/* A result: the candidates of the longest matching prefix that can still
 * win, shared by every prefix with the same list, except that a prefix
 * taking part in a src+dst rule keeps its own prefix_id, the dw_pairs key.
 * The labeler reads its struct dw_lpm_ans (above) first; struct dw_lpm_res
 * (24 bytes) at the same index only for the prefix ids of src+dst rules and
 * for DW_ANS_EVAL results, and a list of 2 or more candidates is in
 * dw_results, a struct dw_cand_list, at the same index. */
struct dw_cand_list {
	__u32 prefix_id;	/* key for dw_pairs; 0 = takes part in no pair */
	__u8 n;
	__u8 pad[3];
	struct dw_cand c[DW_MAX_CANDS];
};

struct dw_lpm_res {
	__u32 prefix_id;	/* key for dw_pairs; 0 = takes part in no pair */
	__u32 n;		/* candidates; n > 1: all of them in dw_results */
	struct dw_cand c0;	/* the candidate, when n == 1 */
};

struct dw_pair_key {
	__u32 src_prefix_id;
	__u32 dst_prefix_id;
	__u32 gen;
};

/* ---- landing PoP and tunnels ---- */

/* A tunnelled packet's PoP comes from its outer source address. */
#define DW_POP_NONE	0	/* not tunnelled: arrived here directly */
#define DW_POP_UNKNOWN	0xFFFF	/* tunnelled, outer source in no PoP (or two PoPs
				 * wrote one flow entry within its max age) */
#define DW_MAX_POPS	4096	/* PoP ids 1..4095 */
#define DW_MAX_POP_PREFIXES 65536	/* dw_pops entries, both gens */

/* BPF_MAP_TYPE_LPM_TRIE key. gen and family are part of the matched bits
 * (prefixlen = 16 + the prefix's length), so one trie serves both gens and
 * both families. Value: __u32 pop id. */
struct dw_pop_key {
	__u32 prefixlen;
	__u8 gen;
	__u8 family;		/* 4 or 6 */
	__u8 addr[16];		/* network order; IPv4 in the first 4 bytes */
};

/* UDP encapsulations are recognised on configured destination ports only;
 * IPIP, IPv6-in-IPv6, IPv4-in-IPv6 and GRE by their protocol numbers. */
#define DW_MAX_UDP_ENCAPS 8
enum dw_encap_type {
	DW_ENCAP_NONE = 0,
	DW_ENCAP_VXLAN = 1,	/* 8-byte VXLAN header, inner Ethernet frame */
	DW_ENCAP_GUE = 2,	/* GUE variant 0 (header + hlen words) or 1 (bare IP) */
	DW_ENCAP_FOU = 3,	/* bare inner IP packet; ipproto says which */
	DW_ENCAP_IPIP = 4,	/* the kinds below are not configured: reported in flags */
	DW_ENCAP_IP6IP6 = 5,
	DW_ENCAP_GRE = 6,
};

struct dw_udp_encap {
	__u16 port;		/* host order */
	__u8 type;		/* enum dw_encap_type */
	__u8 ipproto;		/* FOU only: 4 (IPv4) or 41 (IPv6) */
};

/* ---- flow fallback ---- */

/*
 * Where the kernel loses or moves the metadata (tunnel decap, a write to a
 * cloned skb), the reader can recover the label from dw_flows, which the
 * labeler fills from the same classification, keyed by the (inner) flow.
 * A label and side are a function of the 5-tuple and the rule set alone, so
 * an entry is valid only for the epoch (rule set) it was classified under
 * and within max_age_ns of its last ingress packet; the PoP, which the
 * 5-tuple does not determine, becomes DW_POP_UNKNOWN when two PoPs wrote
 * the entry within max_age_ns.
 */
enum dw_flow_mode {
	DW_FLOW_OFF = 0,
	DW_FLOW_ENCAP = 1,	/* tunnelled packets only: decap always moves the metadata */
	DW_FLOW_ALL = 2,	/* every classified packet (costs a hash update per packet) */
};

#define DW_FLOW_ENTRIES	65536	/* default; the loader may resize before load */

/* Ports only when the L4 header directly follows the IP header (IPv4
 * options allowed, no IPv6 extension headers) and it is a first fragment:
 * the reader, parsing the dropped skb at its network header, builds the
 * key by the same rule. */
#define DW_FLOW_HAS_PORTS	0x01
struct dw_flow_key {
	__u8 saddr[16];		/* IPv4 in the first 4 bytes, rest zero */
	__u8 daddr[16];
	__u16 sport;		/* network order */
	__u16 dport;
	__u8 proto;
	__u8 family;		/* 4 or 6 */
	__u8 flags;		/* DW_FLOW_HAS_PORTS */
	__u8 pad;
};

#define DW_FLOW_POP_AMBIGUOUS	0x01
struct dw_flow_val {
	__u64 ts_ns;		/* bpf_ktime_get_ns() of the last ingress packet */
	__u32 label_id;
	__u32 epoch;		/* dw_ruleset.epoch it was classified under */
	__u16 pop_id;
	__u8 side;
	__u8 flags;		/* DW_FLOW_POP_AMBIGUOUS */
	__u32 pad;
};

/* The reader's view (one-entry array in the reader object, written by user
 * space after each rule flip): which epoch is current, how old an entry
 * may be. */
struct dw_flow_cfg {
	__u32 mode;		/* enum dw_flow_mode; DW_FLOW_OFF: never look up */
	__u32 epoch;
	__u64 max_age_ns;
};

/* Per generation: rules without any prefix, the default side, tunnels. */
struct dw_ruleset {
	__u32 has_pairs;
	__u32 default_side;
	__u32 epoch;		/* increases with every reload; never 0 once rules are applied */
	__u32 flow_mode;	/* enum dw_flow_mode */
	__u32 has_pops;		/* dw_pops holds entries for this gen */
	__u32 flow_max_age_ms;	/* two PoPs writing one flow within this: PoP unknown */
	__u32 n_udp_encaps;
	/* Bit dir (IPv4): that direction's bitmap is not read. Its /16s are
	 * nearly all non-empty (DW_BMP_SKIP_MIN or more of 65,536), so the bit
	 * would answer "read the entry" for nearly every packet, and an empty
	 * entry answers 0 anyway. */
	__u32 bmp_skip;
	struct dw_udp_encap udp_encaps[DW_MAX_UDP_ENCAPS];
	struct dw_cand_list wildcard;
};

struct dw_gen_state {
	struct dw_ruleset rs;
};

/*
 * The labeler's global state, in .bss: the program reads it with plain
 * loads (no map lookup), user space writes it through libbpf's mmap of the
 * map. A reload fills gen[!active_gen], then flips active_gen with one
 * aligned 4-byte store.
 */
struct dw_labeler_state {
	__u32 active_gen;	/* 0 or 1 */
	__u32 pad;
	struct dw_gen_state gen[DW_GENS];
};

/* ---- counters ---- */

struct dw_pkt_val {
	__u64 packets;
	__u64 bytes;
};

/* Cells of one CPU's stripe of dw_pkt_counts: [label_id][side]. */
#define DW_PKT_CELLS	(DW_MAX_LABELS * DW_SIDE__COUNT)

/* Packets that carry a PoP (tunnelled) are counted here, by PoP; the rest
 * in the dw_pkt_counts array (pop DW_POP_NONE), which stays a plain index. */
struct dw_pop_pkt_key {
	__u32 label_id;
	__u16 pop_id;
	__u8 side;
	__u8 pad;
};

enum dw_source {
	DW_SRC_NONE = 0,	/* no record: never labeled, or lost on the way */
	DW_SRC_META = 1,	/* a valid record */
	DW_SRC_CORRUPT = 2,	/* our magic, failed version/length/check; no flow entry */
	DW_SRC_FLOW = 3,	/* no valid record; label from a valid dw_flows entry */
};

#define DW_DK_META_CORRUPT	0x01	/* a record of ours was there and failed its check */

struct dw_drop_key {
	__u64 location;		/* kernel text address that freed the skb */
	__u32 label_id;
	__u32 reason;		/* enum skb_drop_reason, raw (subsystem bits kept) */
	__u32 ifindex;		/* skb->skb_iif at the drop: only unique per netns */
	__u32 netns_ino;	/* inode of skb->dev's network namespace, 0 if no device */
	__u16 pop_id;
	__u8 side;
	__u8 source;		/* enum dw_source */
	__u8 flags;		/* DW_DK_* */
	__u8 pad[3];
};

/*
 * Drop counting. Each distinct drop key gets a slot when it is first seen;
 * its count lives in dw_drop_counts at [cpu * nr_slots + slot], one u64 per
 * (CPU, slot), written only by that CPU and never concurrently (see
 * stat_inc() in drop_reader.bpf.c). User space maps the counts and reads
 * them all in one pass, without a syscall per key: a per-CPU hash of
 * 100,000 keys took 30-40 ms to batch-read here, the mapped array about 1.
 *
 * dw_drop_slots (hash: key -> slot) finds a key's slot; dw_slot_keys[slot]
 * names the slot's key for user space, written before the key is published
 * in the hash and before its first count. New slots come from
 * dw_drop_ctl.next_fresh, then from dw_free_slots, where user space returns
 * the slots of keys it retired: it deletes the key from the hash, bumps
 * dw_drop_ctl.epoch (invalidating the per-CPU caches below), and only after
 * a grace period (programs in flight when the key was deleted have long
 * finished) reads the slot a last time, zeroes it and pushes it back.
 */
#define DW_NO_SLOT	0xffffffffu

struct dw_drop_ctl {
	__u64 next_fresh;	/* slots [0, min(next_fresh, nr_slots)) were handed out at least once */
	__u32 epoch;		/* bumped by user space after deleting keys from dw_drop_slots */
	__u32 pad;
};

/*
 * The reader's per-CPU one-entry cache: a flood repeats one key, and the
 * hash lookup is most of the reader's cost. It only remembers which slot the
 * last key has; counts always go straight to dw_drop_counts.
 */
struct dw_drop_cache {
	struct dw_drop_key key;
	__u32 slot;
	__u32 epoch;		/* dw_drop_ctl.epoch when the slot was looked up */
	__u32 valid;
	__u32 pad;
};

enum dw_stat {
	/* labeler (packets and records written are not counted per packet:
	 * user space derives them from dw_pkt_counts) */
	DW_STAT_XDP_PACKETS = 0,	/* unused */
	DW_STAT_XDP_META_WRITTEN,	/* unused */
	DW_STAT_XDP_META_FAILED,	/* adjust_meta refused: driver lacks support, or no room */
	DW_STAT_XDP_FOREIGN_META,	/* another program's metadata was already there */
	DW_STAT_XDP_PARSE_STOP,		/* truncated/unknown headers: classified on what was parsed */
	DW_STAT_XDP_LABEL_RANGE,	/* label id out of range in rule maps (a bug) */
	DW_STAT_XDP_ENCAP,		/* tunnelled packets: inner packet labeled */
	DW_STAT_XDP_FLOW_FAIL,		/* dw_flows update failed */
	/* reader */
	DW_STAT_DROPS = 8,
	DW_STAT_DROPS_LABELED,		/* unused: the labeled share of the drops */
	DW_STAT_CORRUPT_RECORDS,
	DW_STAT_MAP_FULL,		/* no free slot for a new drop key: counted here only */
	DW_STAT_FOREIGN_META,		/* meta_len set, not our magic */
	DW_STAT_META_BAD_BOUNDS,	/* meta_len failed the guards */
	DW_STAT_SAMPLES,		/* sampled drop events emitted */
	DW_STAT_SAMPLE_RATE_LIMITED,	/* not sampled: token bucket empty */
	DW_STAT_SAMPLE_RING_FULL,	/* not sampled: ring buffer full */
	DW_STAT_FLOW_HIT,		/* attributed from dw_flows */
	DW_STAT_FLOW_STALE,		/* entry found, wrong epoch or too old: not used */
	DW_STAT_FLOW_MISS,		/* looked up, no entry */
	/* labeler, added later */
	DW_STAT_XDP_EVAL,		/* labeled the long way: a candidate has a proto/port condition */
	DW_STAT__COUNT = 24,
};

/* ---- sampled drop events (ring buffer) ---- */

#define DW_SAMPLE_BYTES	128
#define DW_SAMPLE_FROM_MAC	0x01	/* data starts at the MAC header */
#define DW_SAMPLE_FROM_NET	0x02	/* no MAC header: data starts at the network header */

struct dw_sample {
	__u64 ts_ns;		/* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 location;
	__u32 label_id;
	__u32 reason;
	__u32 ifindex;
	__u32 netns_ino;	/* inode of the device's network namespace, 0 if no device */
	__u32 pkt_len;		/* bytes from the capture start to the end of the packet */
	__u16 captured;		/* bytes valid in data[] */
	__u16 pop_id;
	__u16 protocol;		/* skb->protocol, network order */
	__u8 side;
	__u8 source;
	__u8 flags;		/* DW_SAMPLE_FROM_* */
	__u8 pad[3];
	__u8 data[DW_SAMPLE_BYTES];
};

/* Per-CPU token bucket; tokens are scaled by 1e9 (one event = 1e9). */
struct dw_bucket {
	__u64 tokens;
	__u64 last_ns;
};

#endif /* DROPWATCH_H */

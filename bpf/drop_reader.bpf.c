// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Drop reader: on every kfree_skb (a packet dropped, not consumed), find the
 * labeler's record in the skb headroom, validate it, and count the drop by
 * (label, side, PoP, drop reason, code location, ingress ifindex).
 *
 * One program family, two entry points sharing one body: tp_btf (cheapest,
 * typed arguments) and the classic tracepoint as a fallback where tp_btf
 * cannot attach. The loader autoloads exactly one of them.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "kernel_types.h"
#include "dropwatch.h"
#include "flow_map.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/*
 * tp_btf path: packet and shared-info bytes are read with plain loads
 * through bpf_rdonly_cast() (6.2+; the verifier turns them into
 * exception-handled PROBE_MEM loads) instead of bpf_probe_read_kernel()
 * calls, which cost a helper call each on the path of every drop. A
 * faulting address reads as zeros, like a failed probe_read.
 */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

const volatile __u32 dw_meta_key = 0;
/* Sampled drop events per second per CPU, and the burst; 0 disables. */
const volatile __u32 dw_sample_rate = 0;
const volatile __u32 dw_sample_burst = 0;

/* BTF anchors: these types are only locals/ring-buffer records here, and
 * BTF does not describe locals (see tests/bpf/test_abi.py). */
const volatile struct dw_meta dw_btf_anchor_meta = {};
const volatile struct dw_sample dw_btf_anchor_sample = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} dw_samples SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dw_bucket);
} dw_sample_bucket SEC(".maps");

/* Drop counting by slot: see "Drop counting" in dropwatch.h. The loader
 * sizes all four to its drop_entries (counts: times the possible CPUs). */
const volatile __u32 dw_nr_slots = DW_MAX_DROP_KEYS;
const volatile __u32 dw_nr_cpus = 1;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DW_MAX_DROP_KEYS);
	__type(key, struct dw_drop_key);
	__type(value, __u32);
} dw_drop_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DW_MAX_DROP_KEYS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} dw_drop_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DW_MAX_DROP_KEYS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct dw_drop_key);
} dw_slot_keys SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__uint(max_entries, DW_MAX_DROP_KEYS);
	__type(value, __u32);
} dw_free_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct dw_drop_ctl);
} dw_drop_ctl SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dw_drop_cache);
} dw_drop_cache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dw_flow_cfg);
} dw_flow_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DW_STAT__COUNT);
	__type(key, __u32);
	__type(value, __u64);
} dw_stats SEC(".maps");

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&dw_stats, &idx);

	/* Per-CPU and never concurrent: the kernel does not run this program
	 * nested on one CPU (tp_btf: prog->active; classic tracepoint:
	 * bpf_prog_active). A drop during a run on the same CPU is skipped and
	 * counted in the program's recursion_misses (exported as a metric). */
	if (v)
		*v += 1;
}

/*
 * The skb fields one drop needs. tp_btf hands us a trusted BTF pointer:
 * plain loads, no helper calls. The classic tracepoint gives a bare address:
 * every read goes through bpf_probe_read_kernel (BPF_CORE_READ). `btf` is a
 * constant at each call site, so each entry point compiles one path only.
 */
struct skb_view {
	unsigned long nfct;	/* skb->_nfct, 0 without conntrack */
	unsigned char *head;
	__u32 end;
	__u32 tail;
	__u16 mac_header;
	__u16 network_header;
	__u16 protocol;		/* network order */
	__u32 ifindex;
	__u32 netns_ino;
};

static __always_inline void read_skb(struct sk_buff *skb, const int btf, struct skb_view *v)
{
	struct net_device *dev;

	if (btf) {
		v->head = skb->head;
		v->end = skb->end;
		v->mac_header = skb->mac_header;
		v->network_header = skb->network_header;
		v->tail = skb->tail;
		v->protocol = skb->protocol;
		v->ifindex = skb->skb_iif;
		v->nfct = bpf_core_field_exists(skb->_nfct) ? skb->_nfct : 0;
		dev = skb->dev;
		v->netns_ino = dev ? dev->nd_net.net->ns.inum : 0;
	} else {
		v->head = BPF_CORE_READ(skb, head);
		v->end = BPF_CORE_READ(skb, end);
		v->mac_header = BPF_CORE_READ(skb, mac_header);
		v->network_header = BPF_CORE_READ(skb, network_header);
		v->tail = BPF_CORE_READ(skb, tail);
		v->protocol = BPF_CORE_READ(skb, protocol);
		v->ifindex = BPF_CORE_READ(skb, skb_iif);
		v->nfct = bpf_core_field_exists(skb->_nfct) ? BPF_CORE_READ(skb, _nfct) : 0;
		dev = BPF_CORE_READ(skb, dev);
		v->netns_ino = dev ? BPF_CORE_READ(dev, nd_net.net, ns.inum) : 0;
	}
}

/* 16 bytes at p as four words; nonzero if they could not be read. */
static __always_inline int read16(const void *p, __u32 *w, const int btf)
{
	if (btf) {
		const struct in6_addr *a = bpf_rdonly_cast(p, bpf_core_type_id_kernel(struct in6_addr));

		w[0] = a->in6_u.u6_addr32[0];
		w[1] = a->in6_u.u6_addr32[1];
		w[2] = a->in6_u.u6_addr32[2];
		w[3] = a->in6_u.u6_addr32[3];
		return 0;
	}
	return bpf_probe_read_kernel(w, 16, p);
}

/* Where the metadata area starts, or NULL with *meta_len = 0 if none. */
static __always_inline void *meta_start(const struct skb_view *v, __u32 *meta_len, const int btf)
{
	/* skb_shinfo() = head + end. head is a plain address, not a BTF
	 * pointer: cast (tp_btf) or probe_read (classic tracepoint). */
	struct skb_shared_info *shinfo = (void *)(v->head + v->end);
	__u32 len, meta_end;

	if (btf) {
		shinfo = bpf_rdonly_cast(shinfo, bpf_core_type_id_kernel(struct skb_shared_info));
		len = shinfo->meta_len;
	} else {
		len = BPF_CORE_READ(shinfo, meta_len);
	}

	*meta_len = len;
	if (!len)
		return NULL;
	if (bpf_core_field_exists(struct skb_shared_info___meta_end, meta_end)) {
		/* A kernel that tracks the end of the metadata itself. */
		if (btf)
			meta_end = ((struct skb_shared_info___meta_end *)shinfo)->meta_end;
		else
			meta_end = BPF_CORE_READ((struct skb_shared_info___meta_end *)shinfo, meta_end);
	} else {
		/* 5.15..6.19: the metadata ends where the MAC header starts. */
		meta_end = v->mac_header;
		if (meta_end == 0xffff)	/* mac_header unset */
			goto bad;
	}
	if (len > meta_end || len > DW_META_MAX || (len & 3))
		goto bad;
	return v->head + meta_end - len;
bad:
	stat_inc(DW_STAT_META_BAD_BOUNDS);
	*meta_len = 0;
	return NULL;
}

#define DW_NFCT_PTRMASK	(~7UL)	/* include/linux/skbuff.h */
#define DW_IP_CT_IS_REPLY 3	/* enum ip_conntrack_info */
#define DW_AF_INET	2
#define DW_AF_INET6	10

/*
 * The flow as it arrived, from conntrack: NAT rewrote the headers, but the
 * tuple of the packet's direction (original, or reply) is how the packet
 * looked before NAT, which is how the labeler keyed it at ingress.
 */
static __always_inline int ct_flow_key(const struct skb_view *sv, struct dw_flow_key *k, const int btf)
{
	struct nf_conn *ct = (void *)(sv->nfct & DW_NFCT_PTRMASK);
	int reply = (sv->nfct & 7) >= DW_IP_CT_IS_REPLY;
	struct nf_conntrack_tuple t;

	if (!ct)
		return 0;
	if (btf) {
		/* Cast the tuple, not the nf_conn: vmlinux also has an
		 * "nf_conn___init", which libbpf takes for a flavor of nf_conn,
		 * so a type-id relocation of nf_conn is ambiguous; a field
		 * offset within it is not. */
		__u32 off = reply ? bpf_core_field_offset(struct nf_conn, tuplehash[1].tuple)
				  : bpf_core_field_offset(struct nf_conn, tuplehash[0].tuple);
		const struct nf_conntrack_tuple *p =
			bpf_rdonly_cast((void *)ct + off, bpf_core_type_id_kernel(struct nf_conntrack_tuple));

		t.src.u3.all[0] = p->src.u3.all[0];
		t.src.u3.all[1] = p->src.u3.all[1];
		t.src.u3.all[2] = p->src.u3.all[2];
		t.src.u3.all[3] = p->src.u3.all[3];
		t.dst.u3.all[0] = p->dst.u3.all[0];
		t.dst.u3.all[1] = p->dst.u3.all[1];
		t.dst.u3.all[2] = p->dst.u3.all[2];
		t.dst.u3.all[3] = p->dst.u3.all[3];
		t.src.u.all = p->src.u.all;
		t.dst.u.all = p->dst.u.all;
		t.src.l3num = p->src.l3num;
		t.dst.protonum = p->dst.protonum;
	} else {
		const struct nf_conntrack_tuple *p = reply ? &ct->tuplehash[1].tuple : &ct->tuplehash[0].tuple;

		t.src.u3 = BPF_CORE_READ(p, src.u3);
		t.dst.u3 = BPF_CORE_READ(p, dst.u3);
		t.src.u.all = BPF_CORE_READ(p, src.u.all);
		t.dst.u.all = BPF_CORE_READ(p, dst.u.all);
		t.src.l3num = BPF_CORE_READ(p, src.l3num);
		t.dst.protonum = BPF_CORE_READ(p, dst.protonum);
	}
	__builtin_memset(k, 0, sizeof(*k));
	k->proto = t.dst.protonum;
	if (t.src.l3num == DW_AF_INET) {
		k->family = 4;
		__builtin_memcpy(k->saddr, t.src.u3.all, 4);
		__builtin_memcpy(k->daddr, t.dst.u3.all, 4);
	} else if (t.src.l3num == DW_AF_INET6) {
		k->family = 6;
		__builtin_memcpy(k->saddr, t.src.u3.all, 16);
		__builtin_memcpy(k->daddr, t.dst.u3.all, 16);
	} else {
		return 0;
	}
	if (k->proto == 6 || k->proto == 17) {
		k->sport = t.src.u.all;
		k->dport = t.dst.u.all;
		k->flags = DW_FLOW_HAS_PORTS;
	}
	return 1;
}

/*
 * The flow fallback: the dropped packet's flow, parsed at its network
 * header (after decapsulation this is the inner packet, which the labeler
 * keyed the same way), looked up in the labeler's dw_flows. An entry counts
 * only if it was classified under the current rules (epoch) and its flow
 * was seen at ingress within max_age_ns: a label is a function of the
 * 5-tuple and the rules, so such an entry names the label these rules give
 * this packet. Ports only when L4 follows the fixed header (as the labeler).
 */
static __always_inline int flow_lookup(const struct skb_view *sv, struct dw_drop_key *key, const int btf)
{
	__u32 zero = 0;
	struct dw_flow_cfg *cfg = bpf_map_lookup_elem(&dw_flow_cfg, &zero);

	if (!cfg || cfg->mode == DW_FLOW_OFF)
		return 0;
	__u32 nh = sv->network_header;

	if (nh == 0xffff)
		return 0;
	struct dw_flow_key k = {};
	__u32 hw[12];		/* up to 48 bytes of the network header */
	__u8 *hdr = (__u8 *)hw;
	__u32 l4 = 0;
	int ports = 0;

	if (sv->protocol == bpf_htons(0x0800)) {
		if (nh + 20 > sv->tail || read16(sv->head + nh, hw, btf) || read16(sv->head + nh + 16, hw + 4, btf))
			return 0;
		__u32 ihl = hdr[0] & 0xf;

		if ((hdr[0] >> 4) != 4 || ihl < 5)
			return 0;
		k.family = 4;
		k.proto = hdr[9];
		__builtin_memcpy(k.saddr, hdr + 12, 4);
		__builtin_memcpy(k.daddr, hdr + 16, 4);
		/* Later fragments carry no L4 header (frag offset != 0). */
		ports = !((hdr[6] & 0x1f) | hdr[7]);
		l4 = nh + ihl * 4;
	} else if (sv->protocol == bpf_htons(0x86DD)) {
		if (nh + 40 > sv->tail || read16(sv->head + nh, hw, btf) ||
		    read16(sv->head + nh + 16, hw + 4, btf) || read16(sv->head + nh + 32, hw + 8, btf))
			return 0;
		if ((hdr[0] >> 4) != 6)
			return 0;
		k.family = 6;
		k.proto = hdr[6];
		__builtin_memcpy(k.saddr, hdr + 8, 16);
		__builtin_memcpy(k.daddr, hdr + 24, 16);
		ports = 1;
		l4 = nh + 40;
	} else {
		return 0;
	}
	if (ports && (k.proto == 6 || k.proto == 17) && l4 + 4 <= sv->tail) {
		__u32 pw[4];
		__u16 *pp = (__u16 *)pw;

		if (!read16(sv->head + l4, pw, btf)) {
			k.sport = pp[0];
			k.dport = pp[1];
			k.flags = DW_FLOW_HAS_PORTS;
		}
	}
	struct dw_flow_val *v = bpf_map_lookup_elem(&dw_flows, &k);

	/* Not under its own headers: NAT may have rewritten them. */
	if (!v && sv->nfct && ct_flow_key(sv, &k, btf))
		v = bpf_map_lookup_elem(&dw_flows, &k);
	if (!v) {
		stat_inc(DW_STAT_FLOW_MISS);
		return 0;
	}
	if (v->epoch != cfg->epoch || bpf_ktime_get_ns() - v->ts_ns > cfg->max_age_ns ||
	    v->label_id >= DW_MAX_LABELS) {
		stat_inc(DW_STAT_FLOW_STALE);
		return 0;
	}
	key->source = DW_SRC_FLOW;
	key->label_id = v->label_id;
	key->side = v->side;
	key->pop_id = v->pop_id;
	stat_inc(DW_STAT_FLOW_HIT);
	return 1;
}

/* Token bucket: a drop flood costs at most dw_sample_rate events/s per CPU. */
static __always_inline int sample_allowed(void)
{
	__u32 zero = 0;
	struct dw_bucket *b = bpf_map_lookup_elem(&dw_sample_bucket, &zero);
	__u64 now = bpf_ktime_get_ns(), elapsed, cap, tokens;

	if (!b)
		return 0;
	elapsed = now - b->last_ns;
	if (elapsed > 10000000000ULL)	/* bounds the multiply below */
		elapsed = 10000000000ULL;
	cap = (__u64)dw_sample_burst * 1000000000ULL;
	tokens = b->tokens + elapsed * dw_sample_rate;
	if (tokens > cap)
		tokens = cap;
	b->last_ns = now;
	if (tokens < 1000000000ULL) {
		b->tokens = tokens;
		return 0;
	}
	b->tokens = tokens - 1000000000ULL;
	return 1;
}

static __always_inline void emit_sample(struct sk_buff *skb, const struct dw_drop_key *key)
{
	if (!sample_allowed()) {
		stat_inc(DW_STAT_SAMPLE_RATE_LIMITED);
		return;
	}
	struct dw_sample *s = bpf_ringbuf_reserve(&dw_samples, sizeof(*s), 0);

	if (!s) {
		stat_inc(DW_STAT_SAMPLE_RING_FULL);
		return;
	}
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 mac = BPF_CORE_READ(skb, mac_header);
	__u32 tail = BPF_CORE_READ(skb, tail);
	__u32 start;

	s->ts_ns = bpf_ktime_get_ns();
	s->location = key->location;
	s->label_id = key->label_id;
	s->reason = key->reason;
	s->ifindex = key->ifindex;
	s->netns_ino = key->netns_ino;
	s->pop_id = key->pop_id;
	s->protocol = BPF_CORE_READ(skb, protocol);
	s->side = key->side;
	s->source = key->source;
	s->pad[0] = s->pad[1] = s->pad[2] = 0;
	if (mac != 0xffff) {
		start = mac;
		s->flags = DW_SAMPLE_FROM_MAC;
	} else {
		start = BPF_CORE_READ(skb, network_header);
		s->flags = DW_SAMPLE_FROM_NET;
	}
	/* skb->len counts from skb->data, past headers the stack already
	 * pulled; report the length from where the capture starts. */
	unsigned char *data = BPF_CORE_READ(skb, data);
	__u32 pulled = data > head + start ? data - (head + start) : 0;

	s->pkt_len = BPF_CORE_READ(skb, len) + (pulled & 0xffff);
	/* Only the linear part (head..tail) is read; paged data is not. */
	__u32 n = tail > start ? tail - start : 0;

	if (n > DW_SAMPLE_BYTES)
		n = DW_SAMPLE_BYTES;
	s->captured = 0;
	if (n && !bpf_probe_read_kernel(s->data, n & (DW_SAMPLE_BYTES * 2 - 1), head + start))
		s->captured = n;
	bpf_ringbuf_submit(s, 0);
	stat_inc(DW_STAT_SAMPLES);
}

static __always_inline int key_eq(const struct dw_drop_key *a, const struct dw_drop_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

/* The slot of a key not in this CPU's cache: the hash, or a new slot. */
static __always_inline __u32 drop_slot(const struct dw_drop_key *key, struct dw_drop_ctl *ctl)
{
	__u32 *sp = bpf_map_lookup_elem(&dw_drop_slots, key);
	struct dw_drop_key *sk;
	__u32 slot;

	if (sp)
		return *sp;
	/* A plain read first: once every slot was handed out, misses must not
	 * keep bouncing the counter's cache line between CPUs. */
	__u64 fresh = ctl->next_fresh;

	if (fresh < dw_nr_slots)
		fresh = __sync_fetch_and_add(&ctl->next_fresh, 1);
	if (fresh < dw_nr_slots)
		slot = fresh;
	else if (bpf_map_pop_elem(&dw_free_slots, &slot))
		return DW_NO_SLOT;	/* every slot in use: the collector evicts before this */
	sk = slot < dw_nr_slots ? bpf_map_lookup_elem(&dw_slot_keys, &slot) : NULL;
	if (!sk)
		return DW_NO_SLOT;	/* (user space pushed a bad slot: a bug) */
	/* Named before it is published: the hash insert orders this store
	 * before any count user space can see. */
	*sk = *key;
	if (!bpf_map_update_elem(&dw_drop_slots, key, &slot, BPF_NOEXIST))
		return slot;
	/* Another CPU inserted the key first: give the slot back, use theirs.
	 * Its count is 0, so user space never looks at its name. */
	bpf_map_push_elem(&dw_free_slots, &slot, 0);
	sp = bpf_map_lookup_elem(&dw_drop_slots, key);
	return sp ? *sp : DW_NO_SLOT;
}

static __always_inline void add_drop(const struct dw_drop_key *key)
{
	__u32 zero = 0;
	struct dw_drop_ctl *ctl = bpf_map_lookup_elem(&dw_drop_ctl, &zero);
	struct dw_drop_cache *c = bpf_map_lookup_elem(&dw_drop_cache, &zero);
	__u32 slot, idx, cpu;
	__u64 *v;

	if (!ctl || !c)
		return;
	/* The epoch is read before the hash: a key user space deleted before
	 * bumping it cannot be cached under the new epoch. */
	__u32 epoch = *(volatile __u32 *)&ctl->epoch;

	if (c->valid && c->epoch == epoch && key_eq(&c->key, key)) {
		slot = c->slot;		/* the common case: no hash lookup */
	} else {
		slot = drop_slot(key, ctl);
		if (slot == DW_NO_SLOT) {
			stat_inc(DW_STAT_MAP_FULL);
			return;
		}
		c->key = *key;
		c->slot = slot;
		c->epoch = epoch;
		c->valid = 1;
	}
	cpu = bpf_get_smp_processor_id();
	idx = cpu * dw_nr_slots + slot;
	v = cpu < dw_nr_cpus && slot < dw_nr_slots ? bpf_map_lookup_elem(&dw_drop_counts, &idx) : NULL;
	if (v)
		*v += 1;	/* this CPU's cell; see stat_inc() */
	else
		stat_inc(DW_STAT_MAP_FULL);
}

static __always_inline void count_drop(struct sk_buff *skb, __u64 location, __u32 reason, const int btf)
{
	struct dw_drop_key key = {
		.location = location,
		.reason = reason,
		.source = DW_SRC_NONE,
	};
	struct skb_view sv;
	struct dw_meta m;
	__u32 meta_len;
	void *meta;

	stat_inc(DW_STAT_DROPS);
	read_skb(skb, btf, &sv);
	key.ifindex = sv.ifindex;
	key.netns_ino = sv.netns_ino;
	meta = meta_start(&sv, &meta_len, btf);
	if (meta && meta_len >= sizeof(m) && !read16(meta, (__u32 *)&m, btf)) {
		if (m.magic != DW_META_MAGIC) {
			stat_inc(DW_STAT_FOREIGN_META);
		} else {
			__u32 *w = (__u32 *)&m;

			/* Our magic but a wrong version, length or check: stale
			 * bytes (e.g. after decap moved the MAC header) or a
			 * forgery. Unlabeled, never someone else's label. */
			if (m.version != DW_META_VERSION || m.rec_len != sizeof(m) ||
			    m.check != dw_meta_mix(w[0], w[1], w[2], dw_meta_key) ||
			    m.label_id >= DW_MAX_LABELS || m.side >= DW_SIDE__COUNT) {
				key.source = DW_SRC_CORRUPT;
				key.flags = DW_DK_META_CORRUPT;
				stat_inc(DW_STAT_CORRUPT_RECORDS);
			} else {
				key.source = DW_SRC_META;
				key.label_id = m.label_id;
				key.side = m.side;
				key.pop_id = m.pop_id;
			}
		}
	}

	if (key.source != DW_SRC_META)
		flow_lookup(&sv, &key, btf);

	add_drop(&key);
	/* Counting is done; a sample is only an example of it. */
	if (dw_sample_rate)
		emit_sample(skb, &key);
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(dw_kfree_skb_btf, struct sk_buff *skb, void *location)
{
	__u32 reason = 0;

	/* The reason argument arrived in 5.17 together with the classic
	 * event's field; before that ctx[2] does not exist and the verifier
	 * prunes this dead branch. */
	if (bpf_core_field_exists(struct trace_event_raw_kfree_skb, reason))
		reason = (__u32)ctx[2];
	count_drop(skb, (__u64)location, reason, 1);
	return 0;
}

SEC("tracepoint/skb/kfree_skb")
int dw_kfree_skb_tp(struct trace_event_raw_kfree_skb *ctx)
{
	__u32 reason = 0;

	if (bpf_core_field_exists(ctx->reason))
		reason = (__u32)ctx->reason;
	count_drop((struct sk_buff *)ctx->skbaddr, (__u64)ctx->location, reason, 0);
	return 0;
}

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
#include "kernel_types.h"
#include "dropwatch.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

const volatile __u32 dw_meta_key = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, DW_MAX_DROP_KEYS);
	__type(key, struct dw_drop_key);
	__type(value, __u64);
} dw_drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DW_STAT__COUNT);
	__type(key, __u32);
	__type(value, __u64);
} dw_stats SEC(".maps");

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&dw_stats, &idx);

	/* Atomic although per-CPU: kfree_skb in process context can be
	 * interrupted by a softirq drop on the same CPU. */
	if (v)
		__sync_fetch_and_add(v, 1);
}

/* Where the metadata area starts, or NULL with *meta_len = 0 if none. */
static __always_inline void *meta_start(struct sk_buff *skb, __u32 *meta_len)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u32 end = BPF_CORE_READ(skb, end);
	struct skb_shared_info *shinfo = (void *)(head + end);
	__u32 len = BPF_CORE_READ(shinfo, meta_len);
	__u32 meta_end;

	*meta_len = len;
	if (!len)
		return NULL;
	if (bpf_core_field_exists(struct skb_shared_info___meta_end, meta_end)) {
		/* A kernel that tracks the end of the metadata itself. */
		meta_end = BPF_CORE_READ((struct skb_shared_info___meta_end *)shinfo, meta_end);
	} else {
		/* 5.15..6.19: the metadata ends where the MAC header starts. */
		meta_end = BPF_CORE_READ(skb, mac_header);
		if (meta_end == 0xffff)	/* mac_header unset */
			goto bad;
	}
	if (len > meta_end || len > DW_META_MAX || (len & 3))
		goto bad;
	return head + meta_end - len;
bad:
	stat_inc(DW_STAT_META_BAD_BOUNDS);
	*meta_len = 0;
	return NULL;
}

static __always_inline void count_drop(struct sk_buff *skb, __u64 location, __u32 reason)
{
	struct dw_drop_key key = {
		.location = location,
		.reason = reason,
		.source = DW_SRC_NONE,
	};
	struct dw_meta m;
	__u32 meta_len;
	void *meta;

	stat_inc(DW_STAT_DROPS);
	key.ifindex = BPF_CORE_READ(skb, skb_iif);
	meta = meta_start(skb, &meta_len);
	if (meta && meta_len >= sizeof(m) &&
	    !bpf_probe_read_kernel(&m, sizeof(m), meta)) {
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
				stat_inc(DW_STAT_CORRUPT_RECORDS);
			} else {
				key.source = DW_SRC_META;
				key.label_id = m.label_id;
				key.side = m.side;
				key.pop_id = m.pop_id;
				stat_inc(DW_STAT_DROPS_LABELED);
			}
		}
	}

	__u64 *v = bpf_map_lookup_elem(&dw_drops, &key);

	if (v) {
		__sync_fetch_and_add(v, 1);
		return;
	}
	__u64 one = 1;

	if (!bpf_map_update_elem(&dw_drops, &key, &one, BPF_NOEXIST))
		return;
	/* Lost the insert race to another CPU, or the map is full. */
	v = bpf_map_lookup_elem(&dw_drops, &key);
	if (v)
		__sync_fetch_and_add(v, 1);
	else
		stat_inc(DW_STAT_MAP_FULL);
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
	count_drop(skb, (__u64)location, reason);
	return 0;
}

SEC("tracepoint/skb/kfree_skb")
int dw_kfree_skb_tp(struct trace_event_raw_kfree_skb *ctx)
{
	__u32 reason = 0;

	if (bpf_core_field_exists(ctx->reason))
		reason = (__u32)ctx->reason;
	count_drop((struct sk_buff *)ctx->skbaddr, (__u64)ctx->location, reason);
	return 0;
}

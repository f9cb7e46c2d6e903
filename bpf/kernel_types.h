/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The few kernel structs the drop reader touches, declared with
 * preserve_access_index so libbpf relocates every field offset against the
 * running kernel's BTF at load. Only fields we read are listed; their real
 * offsets (and e.g. mac_header living in an anonymous struct_group) come from
 * the kernel, not from here.
 */
#ifndef DW_KERNEL_TYPES_H
#define DW_KERNEL_TYPES_H

#include <linux/types.h>

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct ns_common {
	unsigned int inum;
};

struct net {
	struct ns_common ns;
};

typedef struct {
	struct net *net;
} possible_net_t;

struct net_device {
	possible_net_t nd_net;
};

struct sk_buff {
	unsigned char *head;
	unsigned char *data;
	__u16 mac_header;
	__u16 network_header;
	unsigned int end;	/* sk_buff_data_t: an offset from head on 64-bit */
	unsigned int tail;
	unsigned int len;
	__u16 protocol;		/* __be16 */
	int skb_iif;
	struct net_device *dev;
	unsigned long _nfct;	/* CONFIG_NF_CONNTRACK: struct nf_conn * | ctinfo (3 bits) */
};

/* Conntrack's tuples: after NAT rewrote a packet, the tuple of its
 * direction still holds the addresses and ports it arrived with. */
union nf_inet_addr {
	__u32 all[4];
};

struct nf_conntrack_man {
	union nf_inet_addr u3;
	union {
		__u16 all;
	} u;
	__u16 l3num;
};

struct nf_conntrack_tuple {
	struct nf_conntrack_man src;
	struct {
		union nf_inet_addr u3;
		union {
			__u16 all;
		} u;
		__u8 protonum;
	} dst;
};

struct nf_conntrack_tuple_hash {
	struct nf_conntrack_tuple tuple;
};

struct nf_conn {
	struct nf_conntrack_tuple_hash tuplehash[2];	/* IP_CT_DIR_ORIGINAL, IP_CT_DIR_REPLY */
};

struct skb_shared_info {
	__u8 meta_len;
};

/* Only a 16-byte kernel type to cast the metadata record's address to
 * (bpf_rdonly_cast needs a kernel BTF type): read as four words. */
struct in6_addr {
	union {
		__u32 u6_addr32[4];
	} in6_u;
};


/*
 * Proposed upstream (RFC "Decouple skb metadata tracking from MAC header
 * offset", not merged as of 6.19): the metadata ends at head + meta_end
 * instead of at the MAC header. Only used if the running kernel has it.
 */
struct skb_shared_info___meta_end {
	__u16 meta_end;
};

enum skb_drop_reason {
	SKB_DROP_REASON___DW_PLACEHOLDER = 0,
};

/* The classic tracepoint's record; reason arrived in 5.17 (c504e5c2f964),
 * rx_sk in 6.11 moved protocol/reason: offsets come from BTF. */
struct trace_event_raw_kfree_skb {
	void *skbaddr;
	void *location;
	enum skb_drop_reason reason;
};

#pragma clang attribute pop

#endif

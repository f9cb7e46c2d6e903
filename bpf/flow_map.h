/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The flow-fallback map, defined once for both programs: the labeler fills
 * it, the reader reads it. Each object declares it, and the loader hands
 * the labeler's fd to the reader before load (bpf_map__reuse_fd), so both
 * see one map; the loader also sets its size (--flow-map-entries).
 */
#ifndef DW_FLOW_MAP_H
#define DW_FLOW_MAP_H

#include "dropwatch.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DW_FLOW_ENTRIES);
	__type(key, struct dw_flow_key);
	__type(value, struct dw_flow_val);
} dw_flows SEC(".maps");

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Shared between the XDP program (ebpf/mesh_xdp.c) and its Rust loader
 * (dataplane/src/xdp/abi.rs, which mirrors every struct below with
 * #[repr(C)] and checks sizes and offsets in a test).
 *
 * Wire constants mirror dataplane/src/wire.rs; change both or neither.
 */
#ifndef MESH_WIRE_H
#define MESH_WIRE_H

#include <linux/types.h>

/* ---- wire format (dataplane/src/wire.rs) ---- */
#define MESH_MAGIC_0 'M'
#define MESH_MAGIC_1 'S'
#define MESH_MAGIC_2 'H'
#define MESH_MAGIC_3 '1'
#define MESH_WIRE_VERSION 1
#define MESH_KIND_DATA 1 /* the only kind; 2..=6 were the retired peer table's */
#define MESH_HEADER_LEN 64
#define MESH_SIGNATURE_LEN 64
#define MESH_MIN_DATAGRAM (MESH_HEADER_LEN + MESH_SIGNATURE_LEN) /* 128 */
#define MESH_MAX_DATAGRAM 1232

/* ---- header offsets inside the UDP payload ---- */
#define MESH_OFF_HOP_LIMIT 4
#define MESH_OFF_RESERVED0 5 /* 3 bytes */
#define MESH_OFF_VERSION 8
#define MESH_OFF_KIND 9
#define MESH_OFF_FLAGS 10
#define MESH_OFF_RESERVED1 11
#define MESH_OFF_PAYLOAD_LEN 12 /* u16 little endian */
#define MESH_OFF_RESERVED2 14   /* u16 */

/* ---- program limits ---- */
/* UDP destination ports recognised as mesh traffic (0 = unused slot). */
#define MESH_MAX_PORTS 4
/* XSKMAP size: one slot per RX queue. */
#define MESH_MAX_QUEUES 64
/* Default size of the token-bucket LRU and the deny hash (loader may resize). */
#define MESH_DEFAULT_BUCKETS 65536
#define MESH_DEFAULT_DENY 65536

/*
 * Verdict / reason numbers: index into the per-CPU counter array. Every
 * packet the program sees increments exactly one of these. Stable: the
 * loader names them (dataplane::xdp::Reason) and registry/ exports them.
 */
enum mesh_xdp_reason {
	MESH_PASS_NOT_MESH = 0,      /* not UDP to a mesh port (incl. non-IP, non-first fragments) */
	MESH_PASS_NO_SOCKET = 1,     /* well-formed, but no AF_XDP socket on this RX queue */
	MESH_REDIRECT = 2,           /* well-formed, redirected to the queue's AF_XDP socket */
	MESH_DROP_TRUNCATED = 3,     /* frame ends inside a header, or UDP payload < 128 */
	MESH_DROP_OVERSIZED = 4,     /* UDP payload > 1232 */
	MESH_DROP_BAD_MAGIC = 5,     /* magic is not "MSH1" */
	MESH_DROP_BAD_VERSION = 6,   /* version is not 1 */
	MESH_DROP_BAD_RESERVED = 7,  /* reserved bytes or flags not zero */
	MESH_DROP_BAD_KIND = 8,      /* kind is not 1 (data) */
	MESH_DROP_LENGTH_MISMATCH = 9, /* payload_len, UDP length and IP length disagree */
	MESH_DROP_BAD_L3 = 10,       /* bad IP header (IHL, version) or fragmented mesh datagram */
	MESH_DROP_DENIED = 11,       /* source on the deny map */
	MESH_DROP_RATE_LIMITED = 12, /* source over its token bucket */
	MESH_XDP_REASON_COUNT = 13,
};

/*
 * Key of the deny hash and of the token-bucket LRU: the source address,
 * IPv4 as v4-mapped IPv6 (::ffff:a.b.c.d), network byte order.
 */
struct mesh_addr {
	__u8 addr[16];
};

/* Value of the token-bucket LRU. */
struct mesh_bucket {
	/* Available tokens, in units of 1/1e9 packet (so refill is elapsed_ns * rate). */
	__u64 tokens;
	/* bpf_ktime_get_ns() at the last refill. */
	__u64 last_ns;
};

/* The single entry (key 0) of the config array map. */
struct mesh_config {
	/* UDP destination ports in host byte order; 0 = unused slot. */
	__u16 ports[MESH_MAX_PORTS];
	/* Sustained packets per second allowed per source; 0 = no rate limit. */
	__u64 rate_pps;
	/* Bucket depth in packets (burst a fresh or idle source may send). */
	__u64 burst;
	/* Reserved for future use; must be zero. */
	__u32 flags;
	__u32 pad;
};

#endif /* MESH_WIRE_H */

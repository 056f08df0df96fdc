// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0)
/*
 * Mesh XDP filter: drops junk aimed at the mesh port at the driver, before
 * any socket buffer is allocated, and hands everything else of ours to the
 * AF_XDP socket of the RX queue.
 *
 *   not UDP to a mesh port          -> XDP_PASS   (pass_not_mesh)
 *   truncated / malformed header    -> XDP_DROP   (drop_truncated, ...)
 *   source on the deny map          -> XDP_DROP   (drop_denied)
 *   source over its token bucket    -> XDP_DROP   (drop_rate_limited)
 *   AF_XDP socket on this RX queue  -> XDP_REDIRECT via XSKMAP (redirect)
 *   no socket bound                 -> XDP_PASS   (pass_no_socket)
 *
 * Every packet increments exactly one per-CPU counter (enum mesh_xdp_reason).
 * The checks on the mesh header are the same, in the same order, as
 * dataplane/src/wire.rs `Packet::parse`, so a packet that this program
 * redirects always parses in user space (the signature is checked there).
 *
 * Built by dataplane/build.rs: clang -O2 -g -target bpf.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "mesh_wire.h"

#define NSEC_PER_SEC 1000000000ULL
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define MAX_VLAN_TAGS 2
#define MAX_IPV6_EXT 4

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mesh_config);
} mesh_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MESH_XDP_REASON_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} mesh_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MESH_DEFAULT_BUCKETS);
	__type(key, struct mesh_addr);
	__type(value, struct mesh_bucket);
} mesh_buckets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MESH_DEFAULT_DENY);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mesh_addr);
	__type(value, __u8);
} mesh_deny SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MESH_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} mesh_xsks SEC(".maps");

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

static __always_inline int verdict(__u32 reason, int action)
{
	__u64 *c = bpf_map_lookup_elem(&mesh_counters, &reason);

	if (c)
		*c += 1; /* per-CPU slot: no atomic needed */
	return action;
}

static __always_inline int is_mesh_port(const struct mesh_config *cfg, __u16 dport)
{
	if (dport == 0)
		return 0;
#pragma unroll
	for (int i = 0; i < MESH_MAX_PORTS; i++)
		if (cfg->ports[i] == dport)
			return 1;
	return 0;
}

/*
 * Token bucket per source. Tokens are kept in units of 1e-9 packet so the
 * refill is exactly elapsed_ns * rate_pps. Two CPUs updating one source at
 * the same instant may lose an update (the value is not locked); that errs
 * by at most one packet per race and never lets a source exceed burst for
 * long, which is the accepted trade for a lock-free fast path.
 */
static __always_inline int over_rate(const struct mesh_config *cfg, const struct mesh_addr *src)
{
	__u64 rate = cfg->rate_pps;
	__u64 burst = cfg->burst ? cfg->burst : 1;
	__u64 cap = burst * NSEC_PER_SEC;
	__u64 now = bpf_ktime_get_ns();
	struct mesh_bucket *b;

	if (rate == 0)
		return 0;
	b = bpf_map_lookup_elem(&mesh_buckets, src);
	if (!b) {
		struct mesh_bucket fresh = { .tokens = cap - NSEC_PER_SEC, .last_ns = now };

		bpf_map_update_elem(&mesh_buckets, src, &fresh, BPF_NOEXIST);
		return 0;
	}
	__u64 tokens = b->tokens;
	if (tokens > cap)
		tokens = cap;
	if (now > b->last_ns) {
		__u64 elapsed = now - b->last_ns;

		/* Full refill without overflowing elapsed * rate. */
		if (elapsed >= (cap - tokens) / rate + 1)
			tokens = cap;
		else
			tokens += elapsed * rate;
		if (tokens > cap)
			tokens = cap;
	}
	b->last_ns = now;
	if (tokens < NSEC_PER_SEC) {
		b->tokens = tokens;
		return 1;
	}
	b->tokens = tokens - NSEC_PER_SEC;
	return 0;
}

SEC("xdp")
int mesh_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct mesh_addr src = {};
	struct udphdr *udp;
	__u32 zero = 0;
	__u32 l4_len; /* UDP header + payload, as the IP header states it */
	__u16 proto;
	void *cur;

	const struct mesh_config *cfg = bpf_map_lookup_elem(&mesh_config, &zero);
	if (!cfg)
		return verdict(MESH_PASS_NOT_MESH, XDP_PASS);

	if ((void *)(eth + 1) > end)
		return verdict(MESH_PASS_NOT_MESH, XDP_PASS);
	proto = eth->h_proto;
	cur = eth + 1;

#pragma unroll
	for (int i = 0; i < MAX_VLAN_TAGS; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		struct vlan_hdr *vlan = cur;

		if ((void *)(vlan + 1) > end)
			return verdict(MESH_PASS_NOT_MESH, XDP_PASS);
		proto = vlan->proto;
		cur = vlan + 1;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = cur;
		__u32 ihl, tot;

		if ((void *)(ip + 1) > end)
			return verdict(MESH_PASS_NOT_MESH, XDP_PASS);
		if (ip->protocol != IPPROTO_UDP || ip->version != 4 || ip->ihl < 5)
			return verdict(MESH_PASS_NOT_MESH, XDP_PASS);
		/* A non-first fragment has no UDP header: the port is unknown. */
		if (ip->frag_off & bpf_htons(IP_OFFSET))
			return verdict(MESH_PASS_NOT_MESH, XDP_PASS);
		ihl = ip->ihl * 4;
		udp = cur + ihl;
		if ((void *)(udp + 1) > end)
			return verdict(MESH_PASS_NOT_MESH, XDP_PASS);
		if (!is_mesh_port(cfg, bpf_ntohs(udp->dest)))
			return verdict(MESH_PASS_NOT_MESH, XDP_PASS);
		/* Mesh datagrams fit the minimum MTU and are never fragmented. */
		if (ip->frag_off & bpf_htons(IP_MF))
			return verdict(MESH_DROP_BAD_L3, XDP_DROP);
		tot = bpf_ntohs(ip->tot_len);
		if (tot < ihl + sizeof(struct udphdr))
			return verdict(MESH_DROP_LENGTH_MISMATCH, XDP_DROP);
		l4_len = tot - ihl;
		src.addr[10] = 0xff;
		src.addr[11] = 0xff;
		__builtin_memcpy(&src.addr[12], &ip->saddr, 4);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = cur;
		__u32 ext_len = 0;
		__u8 next;

		if ((void *)(ip6 + 1) > end)
			return verdict(MESH_PASS_NOT_MESH, XDP_PASS);
		next = ip6->nexthdr;
		cur = ip6 + 1;
#pragma unroll
		for (int i = 0; i < MAX_IPV6_EXT; i++) {
			if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING &&
			    next != IPPROTO_DSTOPTS)
				break;
			struct ipv6_opt_hdr *opt = cur;

			if ((void *)(opt + 1) > end)
				return verdict(MESH_PASS_NOT_MESH, XDP_PASS);
			__u32 len = ((__u32)opt->hdrlen + 1) * 8;

			next = opt->nexthdr;
			cur += len;
			ext_len += len;
		}
		/* Fragment header (44) and anything else: not a UDP datagram we can see. */
		if (next != IPPROTO_UDP)
			return verdict(MESH_PASS_NOT_MESH, XDP_PASS);
		udp = cur;
		if ((void *)(udp + 1) > end)
			return verdict(MESH_PASS_NOT_MESH, XDP_PASS);
		if (!is_mesh_port(cfg, bpf_ntohs(udp->dest)))
			return verdict(MESH_PASS_NOT_MESH, XDP_PASS);
		__u32 plen6 = bpf_ntohs(ip6->payload_len);
		if (plen6 < ext_len + sizeof(struct udphdr))
			return verdict(MESH_DROP_LENGTH_MISMATCH, XDP_DROP);
		l4_len = plen6 - ext_len;
		__builtin_memcpy(src.addr, &ip6->saddr, 16);
	} else {
		return verdict(MESH_PASS_NOT_MESH, XDP_PASS);
	}

	/* From here on the packet is addressed to the mesh: judge it. */
	__u32 ulen = bpf_ntohs(udp->len);
	if (ulen != l4_len)
		return verdict(MESH_DROP_LENGTH_MISMATCH, XDP_DROP);
	__u32 dlen = ulen - sizeof(struct udphdr); /* ulen >= 8: l4_len was checked */
	if (dlen < MESH_MIN_DATAGRAM)
		return verdict(MESH_DROP_TRUNCATED, XDP_DROP);
	if (dlen > MESH_MAX_DATAGRAM)
		return verdict(MESH_DROP_OVERSIZED, XDP_DROP);

	__u8 *m = (__u8 *)(udp + 1);
	/* The frame must hold the whole datagram the lengths promise. */
	if ((void *)m + dlen > end)
		return verdict(MESH_DROP_TRUNCATED, XDP_DROP);
	if ((void *)(m + MESH_HEADER_LEN) > end)
		return verdict(MESH_DROP_TRUNCATED, XDP_DROP);

	if (m[0] != MESH_MAGIC_0 || m[1] != MESH_MAGIC_1 || m[2] != MESH_MAGIC_2 ||
	    m[3] != MESH_MAGIC_3)
		return verdict(MESH_DROP_BAD_MAGIC, XDP_DROP);
	if (m[MESH_OFF_VERSION] != MESH_WIRE_VERSION)
		return verdict(MESH_DROP_BAD_VERSION, XDP_DROP);
	if (m[MESH_OFF_RESERVED0] | m[MESH_OFF_RESERVED0 + 1] | m[MESH_OFF_RESERVED0 + 2] |
	    m[MESH_OFF_FLAGS] | m[MESH_OFF_RESERVED1] | m[MESH_OFF_RESERVED2] |
	    m[MESH_OFF_RESERVED2 + 1])
		return verdict(MESH_DROP_BAD_RESERVED, XDP_DROP);
	if (m[MESH_OFF_KIND] != MESH_KIND_DATA)
		return verdict(MESH_DROP_BAD_KIND, XDP_DROP);
	__u32 payload_len = (__u32)m[MESH_OFF_PAYLOAD_LEN] | ((__u32)m[MESH_OFF_PAYLOAD_LEN + 1] << 8);
	if (MESH_HEADER_LEN + payload_len + MESH_SIGNATURE_LEN != dlen)
		return verdict(MESH_DROP_LENGTH_MISMATCH, XDP_DROP);

	if (bpf_map_lookup_elem(&mesh_deny, &src))
		return verdict(MESH_DROP_DENIED, XDP_DROP);
	if (over_rate(cfg, &src))
		return verdict(MESH_DROP_RATE_LIMITED, XDP_DROP);

	__u32 queue = ctx->rx_queue_index;
	if (bpf_map_lookup_elem(&mesh_xsks, &queue)) {
		verdict(MESH_REDIRECT, 0);
		return bpf_redirect_map(&mesh_xsks, queue, XDP_PASS);
	}
	return verdict(MESH_PASS_NO_SOCKET, XDP_PASS);
}

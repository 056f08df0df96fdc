// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0)
/*
 * Benchmark helpers (dataplane/examples/xdp_pps.rs), never attached by meshd:
 *
 * - gen_redirect: the load generator. Run with BPF_PROG_TEST_RUN and
 *   BPF_F_TEST_XDP_LIVE_FRAMES, it redirects every frame into the veth whose
 *   ifindex is in bench_cfg[0]; the frames come out of the veth's peer, where
 *   the XDP program under test runs (a veth redirect target needs an XDP
 *   program on its peer).
 * - bare_drop: the baseline receiver: counts and drops.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} bench_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} bench_count SEC(".maps");

SEC("xdp")
int gen_redirect(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u32 *ifindex = bpf_map_lookup_elem(&bench_cfg, &zero);

	if (!ifindex)
		return XDP_ABORTED;
	return bpf_redirect(*ifindex, 0);
}

SEC("xdp")
int bare_drop(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u64 *c = bpf_map_lookup_elem(&bench_count, &zero);

	if (c)
		*c += 1;
	return XDP_DROP;
}

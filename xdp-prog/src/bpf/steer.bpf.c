// SPDX-License-Identifier: MIT OR GPL-2.0
//
// XDP steering: TCP segments for one of the configured endpoints (address, port), or in client
// mode from one of the configured servers, go to the AF_XDP socket of the receive queue they
// arrived on (XSKMAP[rx_queue_index]); everything else (ARP, ICMP, other ports, the admin
// endpoint, ssh) goes to the kernel. With no socket bound on a queue, bpf_redirect_map falls
// back to XDP_PASS, so the kernel still answers.
//
// Only what the userspace stack parses is steered (stack/src/wire.rs, `parse`: one definition,
// tested on both sides): untagged IPv4 TCP, not a fragment. The stack answers untagged frames
// only; the kernel owns the VLAN interfaces and reassembles fragments, so those are its own.
//
// Every access is bounds-checked against data_end, as the verifier requires.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "steer.h"

// IPv4 flags-and-offset: more fragments, and the fragment offset (the kernel's IP_MF, IP_OFFSET
// are not in the UAPI headers). Don't-fragment (0x4000) is neither.
#define FRAG_MORE 0x2000
#define FRAG_OFFSET 0x1fff

// AF_XDP sockets by receive queue.
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, STEER_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

// Steered endpoints. Address 0 matches any address on that port. Entries of kind STEER_SOURCE
// match the sender of a segment instead (a client stack's servers), STEER_LOCAL entries (port 0)
// the client stack's own addresses.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STEER_MAX_ENDPOINTS);
	__type(key, struct steer_endpoint);
	__type(value, __u8);
} endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STEER_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

// Written and read by the loader only (where the program is attached); the program ignores it.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct steer_config);
} config SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &which);
	if (c)
		*c += 1;
}

static __always_inline int pass(__u32 why)
{
	count(why);
	return XDP_PASS;
}

static __always_inline int to_socket(struct xdp_md *ctx, __u32 ok_counter)
{
	int action = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	count(action == XDP_REDIRECT ? ok_counter : STEER_NO_SOCKET);
	return action;
}

static __always_inline int endpoint_known(__be32 addr, __be16 port)
{
	struct steer_endpoint key = { .addr = addr, .port = port, .kind = STEER_DEST };
	if (bpf_map_lookup_elem(&endpoints, &key))
		return 1;
	key.addr = 0;
	return bpf_map_lookup_elem(&endpoints, &key) != 0;
}

// Client mode: a userspace stack that connects out owns every segment its server sends to one of
// the stack's addresses, whatever port; the kernel keeps the host's other addresses (a kernel
// client beside it on the same interface).
static __always_inline int source_known(__be32 saddr, __be16 sport, __be32 daddr)
{
	struct steer_endpoint key = { .addr = saddr, .port = sport, .kind = STEER_SOURCE };
	if (!bpf_map_lookup_elem(&endpoints, &key))
		return 0;
	struct steer_endpoint local = { .addr = daddr, .port = 0, .kind = STEER_LOCAL };
	return bpf_map_lookup_elem(&endpoints, &local) != 0;
}

SEC("xdp")
int wsb_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return pass(STEER_MALFORMED);

	// VLAN-tagged (802.1Q, 802.1ad): the kernel's, whatever the tags carry. The stack answers
	// untagged frames only, and the kernel terminates VLANs on its VLAN interfaces.
	if (eth->h_proto == bpf_htons(ETH_P_8021Q) || eth->h_proto == bpf_htons(ETH_P_8021AD))
		return pass(STEER_PASSED_VLAN);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return pass(STEER_PASSED);

	// IPv4 fields the stack's parser would reject as malformed.
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl < 5)
		return pass(STEER_MALFORMED);
	__u32 hlen = ip->ihl * 4;
	__u32 total = bpf_ntohs(ip->tot_len);
	if (total < hlen || (void *)ip + total > end)
		return pass(STEER_MALFORMED);
	// Any fragment, the first (more-fragments set, offset 0) included: the kernel reassembles
	// them; the stack (smoltcp without reassembly) would drop every one.
	if (ip->frag_off & bpf_htons(FRAG_MORE | FRAG_OFFSET))
		return pass(STEER_PASSED_FRAGMENT);
	if (ip->protocol != IPPROTO_TCP)
		return pass(STEER_PASSED);
	if (total < hlen + sizeof(struct tcphdr))
		return pass(STEER_MALFORMED);
	struct tcphdr *tcp = (void *)ip + hlen;
	if ((void *)(tcp + 1) > end)
		return pass(STEER_MALFORMED);
	if (!endpoint_known(ip->daddr, tcp->dest) && !source_known(ip->saddr, tcp->source, ip->daddr))
		return pass(STEER_PASSED);
	return to_socket(ctx, STEER_REDIRECTED);
}

// How the program runs as a component under libxdp's dispatcher (`xdp-loader load IFACE
// wsb_steer.o`, beside other programs on one interface): before the default priority (50), and
// whatever it passes (not ours) goes on to the next program. libxdp reads this section from the
// object's BTF; the server's own attachment ignores it. (libxdp's XDP_RUN_CONFIG macro, written
// out so the build needs no libxdp headers.)
struct {
	__uint(priority, 20);
	__uint(XDP_PASS, 1);
} _wsb_steer SEC(".xdp_run_config");

char LICENSE[] SEC("license") = "Dual MIT/GPL";

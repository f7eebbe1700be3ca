// SPDX-License-Identifier: MIT OR GPL-2.0
// Shared between the XDP program and its loader (src/maps.rs mirrors these with bytemuck).
#ifndef STEER_H
#define STEER_H

#define STEER_MAX_QUEUES 64
#define STEER_MAX_ENDPOINTS 256

// Per-CPU counters, by index. Every frame is counted once, in exactly one of them.
enum steer_counter {
	STEER_REDIRECTED = 0,      // TCP segments handed to an AF_XDP socket
	STEER_PASSED = 1,          // frames for the kernel (not ours: ARP, ICMP, other ports...)
	STEER_NO_SOCKET = 2,       // ours, but no socket on that queue: passed to the kernel
	STEER_MALFORMED = 3,       // too short for their headers, or bad IPv4 fields: passed to the kernel
	STEER_PASSED_VLAN = 4,     // VLAN-tagged (802.1Q/802.1ad), whatever inside: passed to the kernel
	STEER_PASSED_FRAGMENT = 5, // IPv4 fragments (MF set or an offset), any protocol: passed to the kernel
	STEER_COUNTERS = 6,
};

// A steered endpoint, in network byte order. `kind` says which side of the segment it matches:
// STEER_DEST (a server: segments to it) or STEER_SOURCE (a client: segments from its server,
// when they are addressed to one of the client stack's own addresses, STEER_LOCAL with port 0).
struct steer_endpoint {
	__be32 addr;
	__be16 port;
	__u16 kind;
};

#define STEER_DEST 0
#define STEER_SOURCE 1
#define STEER_LOCAL 2

// The one entry of the config map. The program reads nothing from it (`flags` is unused and 0);
// the loader keeps where it attached here, so a pinned attachment describes itself.
struct steer_config {
	__u32 flags;
	__u32 ifindex;
	__u32 attach_mode; // 1 native, 2 generic
};

#endif

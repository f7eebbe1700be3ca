//! The server core on the userspace TCP stack: XDP steers the WebSocket port into one AF_XDP
//! socket per receive queue, and a worker process per queue runs the stack (`stack::Stack`) and
//! the same `ServerCore` as the kernel baseline. The supervisor (admin endpoint, periodic push,
//! device directory) is the kernel baseline's, unchanged; the admin endpoint stays on the kernel.

pub mod serve;
pub mod spill;
pub mod worker;

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use stack::{LinkCounters, MemoryReport, StackStats};

/// The `--stack xdp` settings of a server.
#[derive(Clone, Debug)]
pub struct XdpOptions {
    pub iface: String,
    /// Receive queues served, one worker process each (queue i by worker i).
    pub queues: u32,
    pub mode: xdp_prog::Mode,
    /// Adopt the program `testbed/attach.sh` pinned here instead of attaching our own.
    pub pin: Option<std::path::PathBuf>,
    pub rx_buf: usize,
    pub tx_buf: usize,
    pub spill_buffers: usize,
}

/// What an xdp worker needs beyond the common worker settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct XdpWorkerConfig {
    pub iface: String,
    pub queue: u32,
    /// The steering program's XSKMAP, where the worker registers its socket.
    pub xsks_map_id: u32,
    /// Our address on the interface, and its prefix length.
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub port: u16,
    pub rx_buf: usize,
    pub tx_buf: usize,
    pub spill_buffers: usize,
}

/// An xdp worker's side of `/stats`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct XdpWorkerStats {
    pub queue: u32,
    pub stack: StackStats,
    pub link: LinkCounters,
    /// Resident bytes of the stack's structures (mincore), at this moment.
    pub resident: MemoryReport,
    /// The AF_XDP UMEM (fixed).
    pub umem_bytes: u64,
    /// Input spill buffers (request heads and frames larger than the receive buffer).
    pub spill_in_use: u64,
    pub spill_capacity: u64,
    /// Connections reset because every input spill buffer was taken.
    pub spill_exhausted: u64,
    /// Output spill buffers (messages waiting for room in the send buffer).
    pub out_spill_in_use: u64,
    /// Connections reset because every output spill buffer was taken.
    pub out_spill_exhausted: u64,
    /// Connections whose output waits for the link, and for room in their send buffer.
    pub tx_pending_conns: u64,
    /// From the last broadcast's start until the stack had sent every frame of it.
    pub last_broadcast_tx_ms: Option<f64>,
}

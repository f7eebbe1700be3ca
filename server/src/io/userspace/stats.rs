//! What an xdp worker adds to its `/stats`.

use serde::{Deserialize, Serialize};
use stack::{LinkCounters, MemoryReport, StackStats};

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
    /// Times a head or frame found every input spill buffer taken (its connection waited).
    pub spill_exhausted: u64,
    /// Connections reset for keeping a spill buffer without a whole head (2 s) or frame (10 s)
    /// while others waited for one.
    #[serde(default)]
    pub spill_evicted: u64,
    /// Connections whose output waits for the link, or for room in their send buffer (behind in
    /// the message log).
    pub tx_pending_conns: u64,
    /// From the last broadcast's start until the stack had sent every frame of it.
    pub last_broadcast_tx_ms: Option<f64>,
}

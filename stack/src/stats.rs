//! Counters and the memory breakdown of a stack.

use serde::{Deserialize, Serialize};

/// What the stack did. Counters only grow, except `in_use` and `timers_pending` (levels).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StackStats {
    /// Frames received from the link.
    pub rx_frames: u64,
    /// Buffer pages given back to the kernel after every buffer on them stayed empty
    /// (`StackConfig::release_idle_buffers`).
    pub buffer_pages_released: u64,
    /// Segments handed to a connection's socket.
    pub rx_segments: u64,
    pub rx_not_ipv4: u64,
    /// IPv4 but not TCP, or fragmented.
    pub rx_not_tcp: u64,
    pub rx_malformed: u64,
    /// Segments for no connection (answered with RST unless they were one).
    pub rx_no_connection: u64,
    /// SYNs that took a slot.
    pub syn_received: u64,
    /// SYNs refused because every slot was in use.
    pub syn_refused: u64,
    /// SYNs (or cookie ACKs) refused because their source held `max_per_source` slots.
    #[serde(default)]
    pub refused_per_source: u64,
    /// Passive handshakes completed.
    pub accepted: u64,
    /// Passive handshakes that never completed (reset, or timed out).
    pub handshakes_failed: u64,
    /// `connect` calls that took a slot, and those that completed or failed.
    pub connects: u64,
    pub connected: u64,
    pub connect_failed: u64,
    /// Connections the peer closed with FIN, and those reset or timed out.
    pub closed_by_peer: u64,
    pub aborted: u64,
    pub app_aborts: u64,
    /// Released connections that did not finish closing in time and were reset.
    pub linger_resets: u64,
    /// SYNs answered with a SYN cookie (no slot taken: `max_half_open` handshakes were pending),
    /// cookie ACKs that became connections, and ACKs for no connection on a listening port that
    /// carried no valid cookie (answered with RST).
    #[serde(default)]
    pub syn_cookies_sent: u64,
    #[serde(default)]
    pub syn_cookies_accepted: u64,
    #[serde(default)]
    pub syn_cookies_rejected: u64,
    /// New connections on a 4-tuple we held in TIME-WAIT.
    pub time_wait_reused: u64,
    /// Connections parked in TIME-WAIT outside the slots; parked ones ended early for room
    /// (more than `max_conns` at once); final ACKs sent again for parked ones.
    #[serde(default)]
    pub time_wait_parked: u64,
    #[serde(default)]
    pub time_wait_evicted: u64,
    #[serde(default)]
    pub time_wait_acks: u64,
    /// SYNs for a 4-tuple in TIME-WAIT whose sequence number was not beyond the old
    /// connection's (RFC 6191): answered with a challenge ACK instead.
    #[serde(default)]
    pub time_wait_syn_refused: u64,
    /// RSTs in a synchronized state whose sequence number was not exactly RCV.NXT (RFC 5961 §3.2),
    /// and SYNs in a synchronized state (§4): the connection lives, the peer gets a challenge ACK.
    #[serde(default)]
    pub rst_challenged: u64,
    #[serde(default)]
    pub syn_challenged: u64,
    /// Challenge ACKs not sent because the budget across connections was spent (§7).
    #[serde(default)]
    pub challenge_acks_limited: u64,
    /// Tail-loss probes sent (duplicate ACKs handed to smoltcp for a fast retransmit), and those
    /// not sent for the per-second limit.
    #[serde(default)]
    pub tail_probes: u64,
    #[serde(default)]
    pub tail_probes_limited: u64,
    /// Times the next hop's MAC was learned or changed (from a validated segment only).
    #[serde(default)]
    pub next_hop_learned: u64,
    /// Segments of our connections from another MAC that did not prove themselves: the next hop
    /// stayed where it was.
    #[serde(default)]
    pub rx_foreign_mac: u64,
    /// Slots returned to the free list.
    pub retired: u64,
    pub timer_fires: u64,
    /// Egress passes over a single socket (flushes and timers).
    pub egress_passes: u64,
    /// Times a socket had output but the link had no TX buffer.
    pub tx_starved: u64,
    /// Flushes that stopped with sockets still dirty because the egress window was used up.
    #[serde(default)]
    pub egress_paced: u64,
    /// Slots in use now, and of them passive handshakes still pending.
    pub in_use: u64,
    #[serde(default)]
    pub half_open: u64,
    /// Connections parked in TIME-WAIT now (they hold no slot).
    #[serde(default)]
    pub time_waits: u64,
    /// Wheel entries now, stale ones included.
    pub timers_pending: u64,
}

/// Bytes reserved by each structure of a stack, for its whole capacity. The arena and the free
/// parts of the tables are untouched memory until used, so resident memory is measured
/// separately (RSS); this says where the bytes of a fully used stack go.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemoryReport {
    pub slots: usize,
    /// smoltcp sockets, one per slot.
    pub socket_bytes: usize,
    /// Receive and send buffers.
    pub arena_bytes: usize,
    /// The 4-tuple table's buckets.
    pub table_bytes: usize,
    /// Per-slot 4-tuple and flags/timer/user fields.
    pub slot_bytes: usize,
    /// 0 since the free list is threaded through the free slots (kept for the JSON's shape).
    pub free_list_bytes: usize,
    pub wheel_bytes: usize,
    /// Dirty list, due list and event queue (grow with bursts, then stay).
    pub queue_bytes: usize,
}

impl MemoryReport {
    pub fn total(&self) -> usize {
        self.socket_bytes
            + self.arena_bytes
            + self.table_bytes
            + self.slot_bytes
            + self.free_list_bytes
            + self.wheel_bytes
            + self.queue_bytes
    }
}

/// The system's page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    }
}

/// Bytes of `ptr..ptr+len` resident in memory (mincore), counted by whole pages touching it.
pub fn resident_bytes(ptr: *const u8, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let page = page_size();
    let start = ptr as usize & !(page - 1);
    let end = (ptr as usize + len).div_ceil(page) * page;
    let pages = (end - start) / page;
    let mut vec = vec![0u8; pages];
    // SAFETY: the range covers memory of a live allocation of ours, page-aligned outward; mincore
    // only reports on it, writing one byte per page into `vec`.
    let rc = unsafe { libc::mincore(start as *mut libc::c_void, end - start, vec.as_mut_ptr()) };
    if rc != 0 {
        return 0;
    }
    vec.iter().filter(|b| **b & 1 != 0).count() * page
}

/// Ask for transparent huge pages on a large structure: a random connection then costs one TLB
/// entry per 2 MiB instead of per 4 KiB. Advisory; ignored where THP is off.
pub fn advise_huge_pages(ptr: *const u8, len: usize) {
    const HUGE: usize = 2 << 20;
    let start = (ptr as usize).div_ceil(HUGE) * HUGE;
    let end = (ptr as usize + len) / HUGE * HUGE;
    if end > start {
        // SAFETY: madvise on whole huge pages inside a live allocation of ours; MADV_HUGEPAGE
        // changes only how the kernel backs it, never its contents.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}

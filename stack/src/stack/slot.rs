//! A connection's slot: everything per connection besides its smoltcp socket, its buffers and
//! its 4-tuple, and the free list threaded through free slots. Also the stack's millisecond tick
//! clock, which slots keep their deadlines in.

use smoltcp::time::{Duration, Instant};

use super::sequence::SeqState;

/// Per-slot flags.
pub(super) mod flag {
    /// The slot holds a connection (not on the free list).
    pub const IN_USE: u16 = 1 << 0;
    /// Its 4-tuple is in the table.
    pub const IN_TABLE: u16 = 1 << 1;
    /// The application holds the id (between Accepted/connect and close/abort).
    pub const OWNED: u16 = 1 << 2;
    /// The handshake completed and was reported.
    pub const ESTABLISHED: u16 = 1 << 3;
    /// `Closed` was reported.
    pub const CLOSED_SENT: u16 = 1 << 4;
    /// On the dirty list: the socket may have something to send.
    pub const DIRTY: u16 = 1 << 5;
    /// A write came up short: report `Writable` when room appears.
    pub const WANT_WRITE: u16 = 1 << 6;
    /// Opened by `connect` (reports `Connected`, not `Accepted`).
    pub const ACTIVE: u16 = 1 << 7;
    /// The application gave the id back; `Slot::user` holds the close deadline.
    pub const RELEASED: u16 = 1 << 8;
    /// The peer's last acknowledgement advertised a zero window: it is not reading.
    pub const PEER_WINDOW_ZERO: u16 = 1 << 9;
    /// Our ISN on the wire is chosen: `Slot::seq` translates (`sequence.rs`).
    pub const ISN_SET: u16 = 1 << 10;
    /// Counted against its source address's `max_per_source` until retired.
    pub const PER_SOURCE: u16 = 1 << 11;
    /// A tail probe is armed (data sent, no acknowledgement since): `tail_probe.rs`.
    pub const PROBE: u16 = 1 << 12;
    /// Flips at each arming; the wheel entry carries it, so an entry of an earlier arming is
    /// told from the current one.
    pub const PROBE_GEN: u16 = 1 << 13;
    /// `Slot::last_ack` holds an acknowledgement the peer sent.
    pub const ACK_SEEN: u16 = 1 << 14;
    /// A probe was sent and nothing new is acknowledged since: no more probes (smoltcp's
    /// timeout, with its back-off, takes over; a vanished peer is not probed forever).
    pub const PROBED: u16 = 1 << 15;
}

/// No wheel entry is pending for the slot.
pub(super) const NO_TIMER: u32 = u32::MAX;

/// Everything per connection besides the socket and its buffers: 28 bytes (the 4-tuple, 12 more,
/// lives in `Net::tuples` next to the table that compares it).
#[derive(Clone, Copy)]
#[repr(C)]
pub(super) struct Slot {
    /// The application's few bytes while it owns the id; after release, the tick by which the
    /// connection must have finished closing (the application no longer needs the field); while
    /// the slot is free, the next free slot.
    pub(super) user: u32,
    /// Tick of the earliest wheel entry scheduled for smoltcp's deadline, or `NO_TIMER`.
    pub(super) timer: u32,
    pub(super) flags: u16,
    /// The window of the peer's latest acknowledgement, as sent (2 bytes in what was padding):
    /// a tail probe's duplicate ACKs must repeat it.
    pub(super) peer_window: u16,
    /// Our sequence numbers on the wire and the two edges RFC 5961/6191 checks need: 12 bytes.
    pub(super) seq: SeqState,
    /// The peer's latest acknowledgement, in smoltcp's numbers (4 bytes): what a tail probe's
    /// duplicate ACKs repeat.
    pub(super) last_ack: u32,
}

pub(super) const SLOT_EMPTY: Slot = Slot {
    user: 0,
    timer: NO_TIMER,
    flags: 0,
    peer_window: 0,
    last_ack: 0,
    seq: SeqState {
        offset: 0,
        rcv_nxt: 0,
        snd_nxt: 0,
    },
};

/// A vector of `n` copies of `v`, on huge pages if asked (advised before the first write).
pub(super) fn filled<T: Clone>(n: usize, v: T, huge: bool) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    if huge {
        crate::stats::advise_huge_pages(out.as_ptr() as *const u8, n * std::mem::size_of::<T>());
    }
    out.resize(n, v);
    out
}

/// The end of the free list.
pub(super) const NO_SLOT: u32 = u32::MAX;

/// Slots all free, chained in order (slot 0 is handed out first).
pub(super) fn free_chain(mut slots: Vec<Slot>) -> Vec<Slot> {
    let n = slots.len();
    for (i, slot) in slots.iter_mut().enumerate() {
        slot.user = if i + 1 < n { i as u32 + 1 } else { NO_SLOT };
    }
    slots
}

pub(super) fn tick_of(now: Instant) -> u32 {
    now.total_millis() as u32
}

pub(super) fn tick_after(now: Instant, d: Duration) -> u32 {
    tick_of(now).wrapping_add(d.total_millis() as u32)
}

/// `a` is at or before `b`, on the wrapping tick clock.
pub(super) fn not_after(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) >= 0
}

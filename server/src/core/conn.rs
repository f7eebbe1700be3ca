//! What the core keeps per connection (32 bytes, asserted in a test) and how its timers find it:
//! a timer entry carries the connection's generation, and its due time is derived from the state
//! when it comes up (so a heartbeat only updates a timestamp, never the wheel).

use super::frame::Utf8Carry;
use timing::wheel::Entry;

use super::TICK_MS;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Phase {
    /// No connection has this id.
    Free,
    /// Waiting for a request head (new connection, or a long-poll connection between requests).
    Http,
    /// Upgraded.
    Ws,
    /// A long-poll request is being held.
    Poll,
}

/// Which data message is being received in fragments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Frag {
    None,
    Text,
    Binary,
}

/// Per-connection state of the core: 32 bytes (asserted in a test). Buffers are not here: bytes
/// of an incomplete frame stay in the transport's receive buffer until the frame is whole.
#[derive(Clone, Copy, Debug)]
pub(super) struct Conn {
    /// Keyed hash of the device id, 0 for none: unregistering on close, checking targeted pushes.
    pub(super) device: u64,
    /// Incarnation of this id; timer entries carry it so a reused id ignores old timers.
    pub(super) gen: u32,
    /// Tick of the last byte received: the heartbeat clock that expiry reads.
    pub(super) last_active: u32,
    /// Tick the held long-poll is answered at (Poll phase), or the request head must be complete
    /// by (Http phase).
    pub(super) deadline: u32,
    /// Payload bytes so far of the fragmented message in progress (limit: `max_message`).
    pub(super) msg_len: u32,
    /// Unfinished UTF-8 sequence at the end of the last text fragment.
    pub(super) utf8: Utf8Carry,
    pub(super) phase: Phase,
    pub(super) frag: Frag,
    /// Answer the held long-poll with keep-alive (HTTP/1.1 without `Connection: close`).
    pub(super) keep_alive: bool,
}

impl Conn {
    pub(super) const FREE: Conn = Conn {
        device: 0,
        gen: 0,
        last_active: 0,
        deadline: 0,
        msg_len: 0,
        utf8: Utf8Carry::EMPTY,
        phase: Phase::Free,
        frag: Frag::None,
        keep_alive: false,
    };
}

/// Timer kinds, in the low bit of an entry's tag; the generation is in the other 31 bits.
pub(super) const TIMER_IDLE: u32 = 0;
pub(super) const TIMER_DEADLINE: u32 = 1;
pub(super) const GEN_MASK: u32 = u32::MAX >> 1;

pub(super) fn tag(gen: u32, kind: u32) -> u32 {
    (gen << 1) | kind
}

/// Why a connection ended, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ended {
    Peer,
    Client,
    Server,
    Expired,
}

/// Timeouts in ticks (0: off).
#[derive(Clone, Copy, Debug)]
pub(super) struct Timeouts {
    pub(super) idle: u32,
    pub(super) request: u32,
}

/// When a timer entry is due, from its connection's state; `None` if the entry is stale (the id was
/// reused, the connection ended, the long-poll it was for was answered, the request came).
/// `deadline` is the long-poll answer time in the Poll phase and the request-head deadline in the
/// Http phase: one field, since a connection is in one phase at a time.
pub(super) fn due_of(conns: &[Conn], ticks: Timeouts, entry: Entry) -> Option<u32> {
    let c = conns.get(entry.id as usize)?;
    if c.phase == Phase::Free || entry.tag >> 1 != c.gen {
        return None;
    }
    match entry.tag & 1 {
        TIMER_IDLE => Some(c.last_active.wrapping_add(ticks.idle)),
        _ => match c.phase {
            Phase::Poll => Some(c.deadline),
            Phase::Http if ticks.request > 0 => Some(c.deadline),
            _ => None,
        },
    }
}

pub(super) fn tick_of(now_ms: u64) -> u32 {
    (now_ms / TICK_MS) as u32
}

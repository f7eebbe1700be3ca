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
    Free = 0,
    /// Waiting for a request head (new connection, or a long-poll connection between requests).
    Http = 1,
    /// Upgraded.
    Ws = 2,
    /// A long-poll request is being held.
    Poll = 3,
    /// Closed by the core: its last output (a close frame, an HTTP answer) is leaving; then the
    /// transport is told to close. Already counted as closed.
    Closing = 4,
}

/// Which data message is being received in fragments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Frag {
    None = 0,
    Text = 1,
    Binary = 2,
}

/// Per-connection state of the core: 32 bytes (asserted in a test). Buffers are not here: bytes
/// of an incomplete frame stay in the transport's receive buffer until the frame is whole, and
/// output stays in the worker's message log (`log.rs`) until the transport takes it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Conn {
    /// 8 bytes: keyed hash of the device id, 0 for none: unregistering on close, checking
    /// targeted pushes.
    pub(super) device: u64,
    /// 4: incarnation of this id; timer entries carry it so a reused id ignores old timers.
    pub(super) gen: u32,
    /// 4: tick of the last byte received: the heartbeat clock that expiry reads.
    pub(super) last_active: u32,
    /// 4, by phase (one field, since a connection is in one phase at a time): Http, the tick the
    /// request head must be complete by; Poll, the tick the held long-poll is answered at;
    /// Closing, the tick its last output must have left by; Ws, the payload bytes so far of the
    /// fragmented message in progress (limit: `max_message`).
    pub(super) timed: u32,
    /// 4: Ws, the unfinished UTF-8 sequence at the end of the last text fragment; Poll, which
    /// origin asked (`poll_origin`), for the CORS header of the answer.
    pub(super) utf8: Utf8Carry,
    /// 4: Ws (and Closing after it), the next broadcast to send (low 32 bits of its entry number
    /// in the message log); Http, when it was accepted (low 32 bits of its ms), for the handshake
    /// time; Poll, unused.
    pub(super) cursor: u32,
    /// 4: bits 0-19, bytes of the broadcast at `cursor` already written (a frame is at most 1 MiB);
    /// 20-22, the phase; 23, keep-alive; 24, an output timer is armed; 25-26, the fragmented
    /// message's kind; 27, output taken since the last output check; 28-31, output checks in a
    /// row that found none taken (the write timeout).
    pub(super) bits: u32,
}

const OFFSET_BITS: u32 = 20;
/// The largest broadcast frame whose progress `Conn` can hold.
pub(super) const MAX_BROADCAST_FRAME: usize = 1 << OFFSET_BITS;
const OFFSET_MASK: u32 = (1 << OFFSET_BITS) - 1;
const PHASE_SHIFT: u32 = 20;
const KEEP_ALIVE: u32 = 1 << 23;
const OUTPUT_TIMER: u32 = 1 << 24;
const FRAG_SHIFT: u32 = 25;
const PROGRESS: u32 = 1 << 27;
const STALL_SHIFT: u32 = 28;
/// The most output checks in a row without progress that `Conn` counts.
pub(super) const MAX_STALLS: u32 = 15;

impl Conn {
    pub(super) const FREE: Conn = Conn {
        device: 0,
        gen: 0,
        last_active: 0,
        timed: 0,
        utf8: Utf8Carry::EMPTY,
        cursor: 0,
        bits: 0,
    };

    pub(super) fn phase(&self) -> Phase {
        match (self.bits >> PHASE_SHIFT) & 7 {
            1 => Phase::Http,
            2 => Phase::Ws,
            3 => Phase::Poll,
            4 => Phase::Closing,
            _ => Phase::Free,
        }
    }

    pub(super) fn set_phase(&mut self, phase: Phase) {
        self.bits = (self.bits & !(7 << PHASE_SHIFT)) | ((phase as u32) << PHASE_SHIFT);
    }

    pub(super) fn frag(&self) -> Frag {
        match (self.bits >> FRAG_SHIFT) & 3 {
            1 => Frag::Text,
            2 => Frag::Binary,
            _ => Frag::None,
        }
    }

    pub(super) fn set_frag(&mut self, frag: Frag) {
        self.bits = (self.bits & !(3 << FRAG_SHIFT)) | ((frag as u32) << FRAG_SHIFT);
    }

    /// A held long-poll's origin grant (`ServerCore::cors_grant`): 0, no Origin header;
    /// `ANY_ORIGIN`, any origin may connect; else the allowed origin's index + 1.
    pub(super) fn poll_origin(&self) -> u16 {
        self.utf8.stashed()
    }

    pub(super) fn set_poll_origin(&mut self, grant: u16) {
        self.utf8 = Utf8Carry::stashing(grant);
    }

    pub(super) fn keep_alive(&self) -> bool {
        self.bits & KEEP_ALIVE != 0
    }

    pub(super) fn set_keep_alive(&mut self, on: bool) {
        self.set_bit(KEEP_ALIVE, on);
    }

    pub(super) fn output_timer(&self) -> bool {
        self.bits & OUTPUT_TIMER != 0
    }

    pub(super) fn set_output_timer(&mut self, on: bool) {
        self.set_bit(OUTPUT_TIMER, on);
    }

    /// Output was taken since the last output check.
    pub(super) fn progressed(&self) -> bool {
        self.bits & PROGRESS != 0
    }

    pub(super) fn set_progressed(&mut self, on: bool) {
        self.set_bit(PROGRESS, on);
    }

    /// Output checks in a row that found no output taken.
    pub(super) fn stalls(&self) -> u32 {
        self.bits >> STALL_SHIFT
    }

    pub(super) fn set_stalls(&mut self, n: u32) {
        self.bits = (self.bits & !(MAX_STALLS << STALL_SHIFT)) | (n.min(MAX_STALLS) << STALL_SHIFT);
    }

    /// Bytes of the broadcast at `cursor` already written (0: at a frame boundary).
    pub(super) fn offset(&self) -> u32 {
        self.bits & OFFSET_MASK
    }

    pub(super) fn set_offset(&mut self, offset: u32) {
        debug_assert!(offset <= OFFSET_MASK);
        self.bits = (self.bits & !OFFSET_MASK) | (offset & OFFSET_MASK);
    }

    fn set_bit(&mut self, bit: u32, on: bool) {
        if on {
            self.bits |= bit;
        } else {
            self.bits &= !bit;
        }
    }
}

/// Timer kinds, in the low two bits of an entry's tag; the generation is in the other 30 bits.
pub(super) const TIMER_IDLE: u32 = 0;
pub(super) const TIMER_DEADLINE: u32 = 1;
/// Output is waiting for the transport: is the connection still within the message log?
pub(super) const TIMER_OUTPUT: u32 = 2;
pub(super) const GEN_MASK: u32 = u32::MAX >> 2;

pub(super) fn tag(gen: u32, kind: u32) -> u32 {
    (gen << 2) | kind
}

/// Why a connection ended, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ended {
    Peer,
    Client,
    Server,
    Expired,
    /// Fell out of the message log: it did not take its output in time.
    SlowReader,
}

/// Timeouts in ticks (0: off).
#[derive(Clone, Copy, Debug)]
pub(super) struct Timeouts {
    pub(super) idle: u32,
    pub(super) request: u32,
    pub(super) output: OutputChecks,
}

/// How often a connection whose output waits is looked at (has it fallen out of the log?), and
/// after how many looks in a row without progress it is closed (the write timeout). The count
/// lives in 4 bits of `Conn`, so the interval is a fifteenth of the timeout, at least 1 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct OutputChecks {
    pub(super) every: u32,
    /// 0: no write timeout.
    pub(super) stalls: u32,
}

impl OutputChecks {
    pub(super) fn new(timeout_ticks: u32) -> OutputChecks {
        const AT_LEAST: u32 = 10; // ticks: 1 s
                                  // Less than a turn of the core's wheel (an entry further out would come up early).
        const AT_MOST: u32 = 4000;
        let every = timeout_ticks.div_ceil(MAX_STALLS).clamp(AT_LEAST, AT_MOST);
        OutputChecks {
            every,
            stalls: timeout_ticks.div_ceil(every),
        }
    }
}

/// When a timer entry is due, from its connection's state; `None` if the entry is stale (the id was
/// reused, the connection ended, the long-poll it was for was answered, the request came).
/// An output entry is due at once: it was scheduled for the moment to look.
pub(super) fn due_of(conns: &[Conn], ticks: Timeouts, entry: Entry, now: u32) -> Option<u32> {
    let c = conns.get(entry.id as usize)?;
    if c.phase() == Phase::Free || entry.tag >> 2 != c.gen {
        return None;
    }
    match entry.tag & 3 {
        TIMER_IDLE if c.phase() != Phase::Closing => Some(c.last_active.wrapping_add(ticks.idle)),
        TIMER_DEADLINE => match c.phase() {
            Phase::Poll | Phase::Closing => Some(c.timed),
            Phase::Http if ticks.request > 0 => Some(c.timed),
            _ => None,
        },
        TIMER_OUTPUT if c.output_timer() => Some(now),
        _ => None,
    }
}

pub(super) fn tick_of(now_ms: u64) -> u32 {
    (now_ms / TICK_MS) as u32
}

//! The server core over one userspace stack, whatever its link: stack events in, core calls out,
//! and the buffers that let tiny per-connection buffers carry large heads, frames and bursts.
//! The AF_XDP driver (`mod.rs`) runs it; tests run it over an in-memory wire.
//!
//! Input is parsed where it lies: the bytes in a connection's receive buffer are copied to one
//! scratch buffer (`peek`), the core consumes whole request heads and frames, and only those are
//! dropped from the stack (`discard`); an incomplete head or frame stays in the receive buffer, or
//! moves to a spill buffer when it is bigger than that (see `spill.rs`). Output is written from the
//! core's message log straight into the connection's send buffer; what does not fit stays in the
//! log until the peer's ACKs make room (`Writable`), and while output of its own waits, input from
//! that connection waits too.

use stack::{CloseReason, ConnId, Event, Link, Stack};

use super::spill::{SpillPool, FRAME_HOLD_LIMIT_MS, HEAD_HOLD_LIMIT_MS};
use crate::control::Outbox;
use crate::core::frame::{self, Role};
use crate::core::ratelog::RateLimitedLog;
use crate::core::{ConnId as CoreId, Io, ServerCore};
use crate::io::{settle, Transport};

/// The stack as the core's [`Io`]: a write goes from the core's message log into the
/// connection's (small) send buffer; what does not fit stays in the log until the peer's ACKs make
/// room (`Writable`).
pub struct StackIo<L: Link> {
    pub stack: Stack<L>,
    /// Input waiting for the rest of a head or frame larger than the receive buffer.
    pub inp: SpillPool,
    /// Failed during a core call (never set by this transport today: the stack reports resets as
    /// events); kept for the contract.
    pub doomed: Vec<u32>,
    /// Messages for the supervisor produced inside core calls (device claims).
    pub outbox: Outbox,
    pub log: RateLimitedLog,
    pub now_ms: u64,
}

impl<L: Link> StackIo<L> {
    /// Forget whatever waits for a connection that is gone (so nothing of it can reach the next
    /// connection that gets its id).
    pub fn forget(&mut self, id: u32) {
        self.inp.release(id);
    }
}

impl<L: Link> Io for StackIo<L> {
    fn peer_window_closed(&mut self, id: u32) -> bool {
        self.stack.peer_window_closed(ConnId(id))
    }

    fn write(&mut self, id: u32, bytes: &[u8]) -> usize {
        // A short write asks the stack for `Writable` by itself.
        self.stack.write(ConnId(id), bytes)
    }

    fn close(&mut self, id: u32) {
        self.inp.release(id);
        let cid = ConnId(id);
        if self.stack.is_owned(cid) {
            self.stack.close(cid);
        }
    }

    fn abort(&mut self, id: u32) {
        self.inp.release(id);
        let cid = ConnId(id);
        if self.stack.is_owned(cid) {
            self.stack.abort(cid);
        }
    }

    fn device_claimed(&mut self, hash: u64, id: &[u8]) {
        self.outbox.device_claimed(hash, id);
    }

    fn device_released(&mut self, hash: u64) {
        self.outbox.device_released(hash);
    }
}

impl<L: Link> Transport for StackIo<L> {
    fn take_failed(&mut self) -> Option<CoreId> {
        self.doomed.pop()
    }

    /// The stack already reset it; only what waits for it here is left.
    fn release_failed(&mut self, id: CoreId) {
        self.forget(id);
    }

    fn outbox(&mut self) -> &mut Outbox {
        &mut self.outbox
    }
}

/// The stack of one worker, and the buffers its connections share for the core.
pub struct ServedStack<L: Link> {
    pub io: StackIo<L>,
    /// One connection's receive buffer, copied for the core to parse (and unmask) in place.
    scratch: Box<[u8]>,
    /// The same for a spilled head or frame (one spill buffer's size).
    big: Box<[u8]>,
    rx_buf: usize,
    /// Connections whose head or frame found every spill buffer taken: their bytes wait in the
    /// socket (its window shut: TCP holds the peer back) until a buffer is free again, and the
    /// request timeout still bounds the wait. 4 bytes each, only while waiting.
    waiting: std::collections::VecDeque<u32>,
    /// The ids in `waiting`: each at most once, so the queue is bounded by the slots.
    queued: std::collections::HashSet<u32>,
    /// When holders past the hold limit may next be looked for (once a second at most).
    next_eviction_ms: u64,
    /// Scratch list of those holders (reused: no allocation per sweep).
    stale: Vec<u32>,
}

impl<L: Link> ServedStack<L> {
    /// `spill_buffers` of `spill_size` bytes for input.
    pub fn new(stack: Stack<L>, spill_buffers: usize, spill_size: usize) -> ServedStack<L> {
        let rx_buf = stack.config().rx_buf;
        ServedStack {
            io: StackIo {
                stack,
                inp: SpillPool::new(spill_buffers, spill_size),
                doomed: Vec::new(),
                outbox: Outbox::default(),
                log: RateLimitedLog::new(5),
                now_ms: 0,
            },
            scratch: vec![0u8; rx_buf].into_boxed_slice(),
            big: vec![0u8; spill_size].into_boxed_slice(),
            rx_buf,
            waiting: std::collections::VecDeque::new(),
            queued: std::collections::HashSet::new(),
            next_eviction_ms: 0,
            stale: Vec::new(),
        }
    }

    /// Run a core call (broadcast, push, tick…) with the stack as its `Io`, then report to the
    /// core the connections that call reset.
    pub fn call<R>(
        &mut self,
        core: &mut ServerCore,
        now_ms: u64,
        f: impl FnOnce(&mut ServerCore, &mut StackIo<L>) -> R,
    ) -> R {
        self.io.now_ms = now_ms;
        let r = f(core, &mut self.io);
        settle(core, &mut self.io, now_ms);
        r
    }

    /// One event of the stack, carried out with the core.
    pub fn event(&mut self, core: &mut ServerCore, ev: Event, now_ms: u64) {
        match ev {
            Event::Accepted(id) => {
                // Nothing of an earlier connection on this id may reach this one.
                self.io.forget(id.0);
                core.open(id.0, now_ms, &mut self.io);
                settle(core, &mut self.io, now_ms);
                self.feed(core, id.0, now_ms);
            }
            Event::Readable(id) => self.feed(core, id.0, now_ms),
            Event::Writable(id) => {
                core.writable(id.0, now_ms, &mut self.io);
                settle(core, &mut self.io, now_ms);
                self.feed(core, id.0, now_ms);
            }
            Event::Closed(id, reason) => {
                if reason == CloseReason::PeerClosed {
                    // What came before the FIN (a close frame, say) is still the peer's to say.
                    self.feed(core, id.0, now_ms);
                }
                if core.is_open(id.0) {
                    core.closed(id.0, now_ms, &mut self.io);
                    settle(core, &mut self.io, now_ms);
                }
                self.io.forget(id.0);
                if self.io.stack.is_owned(id) {
                    self.io.stack.close(id);
                }
            }
            Event::Connected(_) => {}
        }
    }

    /// Feed the connections that waited for a spill buffer, as long as buffers are free. While
    /// some wait and none is free, the holders past the hold limit are reset first.
    pub fn feed_waiting(&mut self, core: &mut ServerCore, now_ms: u64) {
        if !self.waiting.is_empty() && !self.io.inp.has_free() && now_ms >= self.next_eviction_ms {
            self.next_eviction_ms = now_ms + 1_000;
            self.evict_stale_holders(core, now_ms);
        }
        let mut rounds = self.waiting.len();
        while rounds > 0 && self.io.inp.has_free() {
            rounds -= 1;
            let Some(id) = self.waiting.pop_front() else { break };
            self.queued.remove(&id);
            // A connection closed meanwhile (or its id reused) is fed harmlessly: `feed` checks.
            self.feed(core, id, now_ms);
        }
        if self.waiting.is_empty() && self.waiting.capacity() > 4096 {
            self.waiting.shrink_to(4096);
            self.queued.shrink_to(4096);
        }
    }

    /// Reset the connections that kept a spill buffer without a whole head (2 s) or frame (10 s)
    /// while others wait for one: a client trickling a head or a large frame cannot hold the
    /// pool from the devices that need it (a head with a token needs one).
    fn evict_stale_holders(&mut self, core: &mut ServerCore, now_ms: u64) {
        let mut stale = std::mem::take(&mut self.stale);
        self.io.inp.stale(now_ms, HEAD_HOLD_LIMIT_MS, &mut stale);
        for id in stale.drain(..) {
            let held_ms = self.io.inp.held_for(id, now_ms);
            let head = core.in_request(id);
            if !head && held_ms < FRAME_HOLD_LIMIT_MS {
                continue;
            }
            self.io.inp.evicted += 1;
            let what = if head { "request head" } else { "frame" };
            self.io.log.warn(
                now_ms,
                format_args!(
                    "conn {id}: kept a spill buffer {held_ms} ms without a whole {what} while others waited: reset"
                ),
            );
            core.reset(id, now_ms, &mut self.io);
            settle(core, &mut self.io, now_ms);
        }
        self.stale = stale;
    }

    /// Connections waiting for a spill buffer now.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Give the core what the connection has received, as far as it can take it.
    fn feed(&mut self, core: &mut ServerCore, id: u32, now_ms: u64) {
        let cid = ConnId(id);
        loop {
            if !core.is_open(id) || !self.io.stack.is_owned(cid) {
                self.io.inp.release(id);
                return;
            }
            if self.io.inp.holds(id) {
                if !self.feed_spilled(core, id, now_ms) {
                    return;
                }
                continue;
            }
            let n = self.io.stack.peek(cid, &mut self.scratch);
            if n == 0 {
                return;
            }
            if core.input_paused(id) {
                // Its own output is backed up: read on once the peer has taken it (TCP pushes
                // back). `Writable` comes when there is room again.
                self.io.stack.want_write(cid);
                return;
            }
            let used = core.data(id, &mut self.scratch[..n], now_ms, &mut self.io);
            settle(core, &mut self.io, now_ms);
            if !core.is_open(id) {
                return;
            }
            self.io.stack.discard(cid, used);
            if used == n {
                return;
            }
            if core.input_paused(id) {
                continue; // the rest waits in the receive buffer until `Writable`
            }
            if n < self.rx_buf {
                return; // an incomplete head or frame: the rest is on its way
            }
            // The receive buffer is full and still holds no whole head or frame: spill it, or,
            // with every spill buffer taken (a connect storm of long heads: tokens), wait for one.
            if !self.io.inp.take(id, &self.scratch[used..n], now_ms) {
                if self.queued.insert(id) {
                    self.waiting.push_back(id);
                }
                return;
            }
            self.io.stack.discard(cid, n - used);
        }
    }

    /// Move received bytes behind what the spill buffer holds and let the core parse it all.
    /// Returns whether to go on (the buffer emptied, or the core made progress on new bytes).
    fn feed_spilled(&mut self, core: &mut ServerCore, id: u32, now_ms: u64) -> bool {
        let cid = ConnId(id);
        if core.input_paused(id) {
            self.io.stack.want_write(cid);
            return false;
        }
        let Some((buf, len)) = self.io.inp.get(id) else {
            return false;
        };
        let got = self.io.stack.read(cid, &mut buf[*len..]);
        *len += got;
        let held = *len;
        // A frame whose header says it is not whole yet waits for the rest here, without a copy
        // or a parse: each arrival (256 bytes at a time) would otherwise copy and re-parse all
        // that is held, O(n²) for a large frame (a 16 MiB echo took 34 s, most of it that). A
        // frame longer than the buffer goes to the core, which refuses it.
        // Its header must pass the core's checks first (mask, reserved bits, control frame
        // rules, the size limit): a frame that breaks them is refused now, not when whole.
        if !core.in_request(id) {
            if let Some((_, head, payload)) = frame::header(&buf[..held]) {
                let whole = (head as u64).saturating_add(payload);
                let max_frame = core.config().max_frame;
                let header_ok = matches!(frame::decode(&mut buf[..head], Role::Server, max_frame), Ok(None));
                if header_ok && (held as u64) < whole && whole <= buf.len() as u64 {
                    if got > 0 {
                        // The bytes count as the client being alive (idle expiry).
                        core.heard_from(id, now_ms);
                    }
                    return got > 0 && self.io.stack.readable(cid) > 0;
                }
            }
        }
        // The core parses (and unmasks) a copy: the buffer stays the transport's while the core
        // calls it. Only the few spilled connections pay for this copy.
        self.big[..held].copy_from_slice(&buf[..held]);
        let used = core.data(id, &mut self.big[..held], now_ms, &mut self.io);
        settle(core, &mut self.io, now_ms);
        if !core.is_open(id) {
            self.io.inp.release(id);
            return false;
        }
        self.io.inp.consume(id, used, now_ms);
        if !self.io.inp.holds(id) {
            return true; // emptied: back to parsing in the receive buffer
        }
        // Still incomplete: go on only if more bytes came and more are waiting.
        got > 0 && self.io.stack.readable(cid) > 0
    }
}

//! The server core over one userspace stack, whatever its link: stack events in, core calls out,
//! and the buffers that let tiny per-connection buffers carry large heads, frames and bursts.
//! The AF_XDP driver (`mod.rs`) runs it; tests run it over an in-memory wire.
//!
//! Input is parsed where it lies: the bytes in a connection's receive buffer are copied to one
//! scratch buffer (`peek`), the core consumes whole request heads and frames, and only those are
//! dropped from the stack (`discard`); an incomplete head or frame stays in the receive buffer, or
//! moves to a spill buffer when it is bigger than that (see `spill.rs`). Output is written straight
//! into the connection's send buffer; what does not fit waits in an output spill buffer until the
//! peer's ACKs make room (and input from that connection waits too). A connection whose output
//! does not fit even there (or finds the pool empty) is a slow consumer and is reset, counted.

use stack::{CloseReason, ConnId, Event, Link, Stack};

use super::spill::SpillPool;
use crate::control::Outbox;
use crate::core::ratelog::RateLimitedLog;
use crate::core::{ConnId as CoreId, Io, ServerCore};
use crate::io::{settle, Transport};

/// How long a connection the core closed may take to send its waiting output before it is
/// reset (a peer that stops reading and keeps its window shut would hold it forever).
pub const CLOSE_AFTER_OUT_MS: u64 = 10_000;

/// The stack as the core's [`Io`].
pub struct StackIo<L: Link> {
    pub stack: Stack<L>,
    /// Input waiting for the rest of a head or frame larger than the receive buffer.
    pub inp: SpillPool,
    /// Output waiting for room in a connection's send buffer.
    pub out: SpillPool,
    /// Closed by the core while output was still waiting: FIN once it is sent, or a reset at
    /// this deadline (ms).
    pub close_after_out: std::collections::HashMap<u32, u64>,
    /// Reset as slow consumers during a core call; reported to the core right after it.
    pub doomed: Vec<u32>,
    /// Messages for the supervisor produced inside core calls (device claims).
    pub outbox: Outbox,
    pub slow_dropped: u64,
    pub log: RateLimitedLog,
    pub now_ms: u64,
}

impl<L: Link> StackIo<L> {
    /// The peer is too slow (or the pools are empty): reset, and report it after the core call.
    fn slow_consumer(&mut self, id: u32, total: usize) {
        self.slow_dropped += 1;
        self.log.warn(
            self.now_ms,
            format_args!(
                "conn {id}: {total} bytes fit neither its send buffer nor a spill buffer: reset as a slow consumer"
            ),
        );
        self.forget(id);
        self.stack.abort(ConnId(id));
        self.doomed.push(id);
    }

    /// Move waiting output into the send buffer; FIN when it is all out and the core closed.
    pub fn drain_out(&mut self, id: u32) {
        let cid = ConnId(id);
        let Some((buf, len)) = self.out.get(id) else { return };
        let n = self.stack.write(cid, &buf[..*len]);
        self.out.consume(id, n);
        if !self.out.holds(id) && self.close_after_out.remove(&id).is_some() {
            self.stack.close(cid);
        }
    }

    /// Reset the closed connections whose output did not get out in time. O(pool), per tick.
    pub fn expire_close_after_out(&mut self, now_ms: u64) {
        let late: Vec<u32> = self
            .close_after_out
            .iter()
            .filter(|(_, &at)| at <= now_ms)
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            self.log.warn(
                now_ms,
                format_args!("conn {id}: closed, but its peer took nothing for {CLOSE_AFTER_OUT_MS} ms: reset"),
            );
            self.forget(id);
            let cid = ConnId(id);
            if self.stack.is_owned(cid) {
                self.stack.abort(cid);
            }
        }
    }

    /// Forget whatever waits for a connection that is gone (so nothing of it can reach the next
    /// connection that gets its id).
    pub fn forget(&mut self, id: u32) {
        self.inp.release(id);
        self.out.release(id);
        self.close_after_out.remove(&id);
    }
}

impl<L: Link> Io for StackIo<L> {
    fn send(&mut self, id: u32, parts: &[&[u8]]) {
        let cid = ConnId(id);
        if !self.stack.is_owned(cid) {
            return;
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if !self.out.holds(id) {
            if self.stack.write_space(cid) >= total {
                for part in parts {
                    self.stack.write(cid, part);
                }
                return;
            }
            // What fits goes now, the rest waits in an output spill buffer.
            if !self.out.take(id, &[]) {
                return self.slow_consumer(id, total);
            }
            let mut queued = true;
            for part in parts {
                let n = if self.out.get(id).is_some_and(|(_, len)| *len == 0) {
                    self.stack.write(cid, part)
                } else {
                    0
                };
                queued &= self.out.append(id, &part[n..]);
            }
            if !queued {
                return self.slow_consumer(id, total);
            }
            if self.out.get(id).is_some_and(|(_, len)| *len == 0) {
                self.out.release(id);
            }
            return;
        }
        for part in parts {
            if !self.out.append(id, part) {
                return self.slow_consumer(id, total);
            }
        }
    }

    fn close(&mut self, id: u32) {
        let cid = ConnId(id);
        self.inp.release(id);
        if self.out.holds(id) {
            self.close_after_out.insert(id, self.now_ms + CLOSE_AFTER_OUT_MS);
        } else if self.stack.is_owned(cid) {
            self.stack.close(cid);
        }
    }

    fn device_claimed(&mut self, hash: u64) {
        self.outbox.device_claimed(hash);
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
}

impl<L: Link> ServedStack<L> {
    /// `spill_buffers` of `spill_size` bytes for input, as many for output.
    pub fn new(stack: Stack<L>, spill_buffers: usize, spill_size: usize) -> ServedStack<L> {
        let rx_buf = stack.config().rx_buf;
        ServedStack {
            io: StackIo {
                stack,
                inp: SpillPool::new(spill_buffers, spill_size),
                out: SpillPool::new(spill_buffers, spill_size),
                close_after_out: std::collections::HashMap::with_capacity(spill_buffers),
                doomed: Vec::new(),
                outbox: Outbox::default(),
                slow_dropped: 0,
                log: RateLimitedLog::new(5),
                now_ms: 0,
            },
            scratch: vec![0u8; rx_buf].into_boxed_slice(),
            big: vec![0u8; spill_size].into_boxed_slice(),
            rx_buf,
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
                self.io.drain_out(id.0);
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
            if self.io.out.holds(id) {
                // Output is backed up: read on once the peer has taken it (TCP pushes back).
                // `Writable` comes only when there is room again, and draining fills it.
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
            if n < self.rx_buf {
                return; // an incomplete head or frame: the rest is on its way
            }
            // The receive buffer is full and still holds no whole head or frame: spill it.
            if !self.io.inp.take(id, &self.scratch[used..n]) {
                self.io.log.warn(
                    now_ms,
                    format_args!("conn {id}: no spill buffer free for a large head or frame: reset"),
                );
                self.io.stack.abort(cid);
                self.io.forget(id);
                core.closed(id, now_ms, &mut self.io);
                settle(core, &mut self.io, now_ms);
                return;
            }
            self.io.stack.discard(cid, n - used);
        }
    }

    /// Move received bytes behind what the spill buffer holds and let the core parse it all.
    /// Returns whether to go on (the buffer emptied, or the core made progress on new bytes).
    fn feed_spilled(&mut self, core: &mut ServerCore, id: u32, now_ms: u64) -> bool {
        let cid = ConnId(id);
        if self.io.out.holds(id) {
            self.io.stack.want_write(cid);
            return false;
        }
        let Some((buf, len)) = self.io.inp.get(id) else {
            return false;
        };
        let got = self.io.stack.read(cid, &mut buf[*len..]);
        *len += got;
        let held = *len;
        // The core parses (and unmasks) a copy: the buffer stays the transport's while the core
        // calls it. Only the few spilled connections pay for this copy.
        self.big[..held].copy_from_slice(&buf[..held]);
        let used = core.data(id, &mut self.big[..held], now_ms, &mut self.io);
        settle(core, &mut self.io, now_ms);
        if !core.is_open(id) {
            self.io.inp.release(id);
            return false;
        }
        self.io.inp.consume(id, used);
        if !self.io.inp.holds(id) {
            return true; // emptied: back to parsing in the receive buffer
        }
        // Still incomplete: go on only if more bytes came and more are waiting.
        got > 0 && self.io.stack.readable(cid) > 0
    }
}

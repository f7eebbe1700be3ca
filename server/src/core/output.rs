//! What a connection has to send, and how it leaves: everything is written through
//! [`Io::write`], which takes what the transport has room for *now*; what it does not take stays
//! in the message log (`log.rs`) and is written when the transport reports room again
//! ([`ServerCore::writable`]). A message is never copied per connection:
//!
//! - a broadcast is written from its one copy in the log, as far as the connection's cursor;
//! - targeted output (a push, a pong, a close frame, an echo, an HTTP answer) is first offered to
//!   the transport directly; only the part it does not take is stored, once, in the log, and queued
//!   for that connection alone.
//!
//! Order on one connection: the order things were queued in. A broadcast frame already started is
//! finished first; a targeted item queued on a WebSocket waits for the broadcasts queued before it
//! (so a push does not overtake them, and a close frame comes after everything before it). A connection whose output falls out of the log (it
//! stopped reading for longer than the log holds) is a slow reader: it is closed, and nobody else
//! waits for it.

use std::collections::HashMap;

use super::conn::{tag, tick_of, Ended, Phase, TIMER_OUTPUT};
use super::frame::{self, close_code, Op, MAX_CONTROL_PAYLOAD};
use super::{ConnId, Io, ServerCore};
use timing::wheel::Entry;

/// Why a connection is closed as a slow reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SlowReason {
    /// What it must write next is no longer in the log (or never fit in it).
    OutOfLog,
    /// It took none of its output for the write timeout.
    WriteTimeout,
}

/// How many of the largest messages of its own echo a connection may have waiting before its
/// input stops (see `input_paused`).
pub const ECHO_ALLOWANCE_MESSAGES: u64 = 2;

/// A piece of targeted output in the log, in its connection's queue.
#[derive(Clone, Copy, Debug)]
struct Item {
    at: u64,
    len: u32,
    /// The next item of the same connection (`NONE`: the last), or the next free item.
    next: u32,
    /// Queued on a WebSocket when the log's next broadcast was this entry (low 32 bits): it goes
    /// once the connection's cursor is there. `NONE`: nothing waits before it.
    after: u32,
    /// It starts inside a frame (the transport took the frame's first bytes at once): a close
    /// frame cannot be written in its place. (Fits the padding: an item is 24 bytes.)
    mid_frame: bool,
}

const NONE: u32 = u32::MAX;

/// One connection's targeted output: a list of items, how far into the first one it is, and
/// how many bytes wait in all.
#[derive(Clone, Copy, Debug)]
struct Queue {
    head: u32,
    tail: u32,
    offset: u32,
    waiting: u64,
}

/// The targeted output of every connection that has some (none for the others: 0 bytes each).
#[derive(Default)]
pub(super) struct Targeted {
    queues: HashMap<ConnId, Queue>,
    /// Bytes waiting over every queue.
    total_waiting: u64,
    /// Item nodes, reused through a free list: no allocation per item once warm.
    items: Vec<Item>,
    free: Option<u32>,
}

impl Targeted {
    pub(super) fn with_capacity(conns: usize) -> Targeted {
        Targeted {
            total_waiting: 0,
            queues: HashMap::with_capacity(conns),
            items: Vec::with_capacity(conns),
            free: None,
        }
    }

    pub(super) fn holds(&self, id: ConnId) -> bool {
        self.queues.contains_key(&id)
    }

    /// Bytes of targeted output waiting for `id`.
    pub(super) fn waiting_bytes(&self, id: ConnId) -> u64 {
        self.queues.get(&id).map_or(0, |q| q.waiting)
    }

    /// The item `id` is writing, and how far into it.
    fn front(&self, id: ConnId) -> Option<(Item, u32)> {
        let q = self.queues.get(&id)?;
        Some((self.items[q.head as usize], q.offset))
    }

    fn push(&mut self, id: ConnId, at: u64, len: u32, after: u32, mid_frame: bool) {
        self.total_waiting += u64::from(len);
        let item = Item {
            at,
            len,
            next: NONE,
            after,
            mid_frame,
        };
        let index = match self.free {
            Some(i) => {
                self.free = Some(self.items[i as usize].next).filter(|&n| n != NONE);
                self.items[i as usize] = item;
                i
            }
            None => {
                self.items.push(item);
                (self.items.len() - 1) as u32
            }
        };
        match self.queues.get_mut(&id) {
            Some(q) => {
                self.items[q.tail as usize].next = index;
                q.tail = index;
                q.waiting += u64::from(len);
            }
            None => {
                self.queues.insert(
                    id,
                    Queue {
                        head: index,
                        tail: index,
                        offset: 0,
                        waiting: u64::from(len),
                    },
                );
            }
        }
    }

    /// `n` more bytes of `id`'s front item were written.
    fn advance(&mut self, id: ConnId, n: u32) {
        let Some(q) = self.queues.get_mut(&id) else { return };
        q.offset += n;
        q.waiting = q.waiting.saturating_sub(u64::from(n));
        self.total_waiting = self.total_waiting.saturating_sub(u64::from(n));
        let head = q.head;
        if q.offset < self.items[head as usize].len {
            return;
        }
        let next = self.items[head as usize].next;
        if next == NONE {
            self.queues.remove(&id);
        } else {
            q.head = next;
            q.offset = 0;
        }
        self.release(head);
    }

    /// Drop everything queued for `id`.
    pub(super) fn forget(&mut self, id: ConnId) {
        let Some(q) = self.queues.remove(&id) else { return };
        self.total_waiting = self.total_waiting.saturating_sub(q.waiting);
        let mut i = q.head;
        while i != NONE {
            let next = self.items[i as usize].next;
            self.release(i);
            i = next;
        }
    }

    fn release(&mut self, index: u32) {
        self.items[index as usize].next = self.free.unwrap_or(NONE);
        self.free = Some(index);
    }

    /// Bytes of the item table and the map, for the memory breakdown.
    pub(super) fn heap_bytes(&self) -> usize {
        self.items.capacity() * std::mem::size_of::<Item>()
            + self.queues.capacity() * (std::mem::size_of::<(ConnId, Queue)>() + 1)
    }

    /// Connections with targeted output waiting.
    pub(super) fn waiting(&self) -> usize {
        self.queues.len()
    }
}

/// The next bytes a connection has to write.
enum Next {
    Nothing,
    /// Its output is no longer in the log.
    Gone,
    Broadcast {
        at: u64,
        len: u32,
    },
    Targeted {
        at: u64,
        len: u32,
    },
}

impl ServerCore {
    /// Targeted output for `id`: offered to the transport at once when nothing is ahead of it;
    /// what is not taken is stored in the log for `id` alone.
    pub(super) fn emit(&mut self, id: ConnId, parts: &[&[u8]], io: &mut impl Io) {
        self.stats.bytes_out += parts.iter().map(|p| p.len() as u64).sum::<u64>();
        let mut first = 0;
        let mut skip = 0;
        let after = self.waits_after(id);
        if self.conns[id as usize].offset() == 0 && !self.targeted.holds(id) && after == NONE {
            while first < parts.len() {
                let part = parts[first];
                let n = if part.is_empty() { 0 } else { io.write(id, part) };
                if n < part.len() {
                    skip = n;
                    break;
                }
                first += 1;
            }
            if first == parts.len() {
                return;
            }
        }
        let rest: [&[u8]; 4] = std::array::from_fn(|i| {
            let p = parts.get(first + i).copied().unwrap_or(&[]);
            if i == 0 {
                &p[skip..]
            } else {
                p
            }
        });
        let stored = &rest[..(parts.len() - first).min(4)];
        match self.msglog.store(stored) {
            Ok(at) => {
                let len = stored.iter().map(|p| p.len()).sum::<usize>() as u32;
                self.targeted.push(id, at, len, after, first > 0 || skip > 0);
                self.arm_output_timer(id);
            }
            // Larger than the whole log: this connection can never get it.
            Err(_) => self.slow_reader(id, SlowReason::OutOfLog, io),
        }
    }

    /// Queue bytes already in the log (a broadcast's payload answering a long-poll) for `id`.
    pub(super) fn emit_stored(&mut self, id: ConnId, at: u64, len: u32, io: &mut impl Io) {
        self.stats.bytes_out += u64::from(len);
        let after = self.waits_after(id);
        self.targeted.push(id, at, len, after, false);
        self.pump(id, io);
    }

    /// What targeted output queued now on `id` must wait for: on a WebSocket behind in the log,
    /// the broadcasts queued so far (`NONE` otherwise).
    fn waits_after(&self, id: ConnId) -> u32 {
        let c = &self.conns[id as usize];
        let next = self.msglog.next_entry();
        if c.phase() == Phase::Ws && self.full_cursor(c.cursor) < next {
            next as u32
        } else {
            NONE
        }
    }

    /// The transport has room for `id` again: write what waits.
    pub fn writable(&mut self, id: ConnId, now_ms: u64, io: &mut impl Io) {
        self.now_ms = now_ms;
        if self.is_open(id) {
            self.pump(id, io);
        }
    }

    /// Write what `id` has waiting, as far as the transport takes it; a connection that was
    /// closing and has nothing left is handed to the transport to close.
    pub(super) fn pump(&mut self, id: ConnId, io: &mut impl Io) {
        loop {
            let (at, len, broadcast) = match self.next_output(id) {
                Next::Nothing => break,
                Next::Gone => return self.slow_reader(id, SlowReason::OutOfLog, io),
                Next::Broadcast { at, len } => (at, len, true),
                Next::Targeted { at, len } => (at, len, false),
            };
            let Some(bytes) = self.msglog.bytes(at, len) else {
                return self.slow_reader(id, SlowReason::OutOfLog, io);
            };
            let n = io.write(id, bytes) as u32;
            if n > 0 {
                self.conns[id as usize].set_progressed(true);
                self.written += u64::from(n);
            }
            if broadcast {
                let next_entry = self.msglog.next_entry();
                let c = &mut self.conns[id as usize];
                if n == len {
                    c.cursor = c.cursor.wrapping_add(1);
                    c.set_offset(0);
                    if c.cursor == next_entry as u32 && c.phase() == Phase::Ws {
                        self.behind -= 1;
                    }
                } else {
                    c.set_offset(c.offset() + n);
                }
            } else {
                self.targeted.advance(id, n);
            }
            if n < len {
                // The transport will say when it has room; meanwhile, see that it is not gone.
                self.arm_output_timer(id);
                return;
            }
        }
        if self.conns[id as usize].phase() == Phase::Closing {
            self.conns[id as usize] = self.freed(id);
            io.close(id);
        }
    }

    /// What `id` writes next: the rest of a started broadcast frame, then its targeted output,
    /// then the broadcasts after its cursor (WebSockets only).
    fn next_output(&self, id: ConnId) -> Next {
        let c = &self.conns[id as usize];
        let offset = c.offset();
        let cursor = self.full_cursor(c.cursor);
        if offset > 0 {
            return match self.msglog.entry(cursor) {
                Some(b) => Next::Broadcast {
                    at: b.at + u64::from(offset),
                    len: b.len - offset,
                },
                None => Next::Gone,
            };
        }
        if let Some((item, done)) = self.targeted.front(id) {
            if done > 0 || item.after == NONE || cursor >= self.full_cursor(item.after) {
                return Next::Targeted {
                    at: item.at + u64::from(done),
                    len: item.len - done,
                };
            }
            // Broadcasts queued before it go first (on a WebSocket, closing or not).
        } else if c.phase() != Phase::Ws || cursor >= self.msglog.next_entry() {
            return Next::Nothing;
        }
        match self.msglog.entry(cursor) {
            Some(b) => Next::Broadcast { at: b.at, len: b.len },
            None => Next::Gone,
        }
    }

    /// The full entry number of a connection's 32-bit cursor (the log holds far fewer than 2^31
    /// entries, so the nearest number with those low bits is the one).
    pub(super) fn full_cursor(&self, cursor: u32) -> u64 {
        let next = self.msglog.next_entry();
        let behind = (next as u32).wrapping_sub(cursor);
        next.wrapping_sub(u64::from(behind))
    }

    /// Whether the transport should stop reading from `id` for now: output of its own (a pong,
    /// an answer, an echo) is waiting, so reading more would only pile up more (TCP pushes back
    /// on a client that sends and does not read), and one client cannot fill the shared log.
    /// An echo server allows a connection two of the largest messages of its own echo first: a
    /// client may send a whole message before it reads the echo of its first fragments
    /// (Autobahn's 9.3: 4 MiB in 4 KiB fragments), and stopping at the first echo left both
    /// sides' windows shut. Never past a quarter of the log over all connections (`main.rs`
    /// sizes the log for it). Broadcasts waiting do not pause it.
    pub fn input_paused(&self, id: ConnId) -> bool {
        let waiting = self.targeted.waiting_bytes(id);
        if waiting == 0 {
            return false;
        }
        if !self.cfg.echo {
            return true;
        }
        let allowance = ECHO_ALLOWANCE_MESSAGES * (self.cfg.max_message as u64 + frame::MAX_HEADER as u64);
        waiting > allowance || self.targeted.total_waiting > self.cfg.log_size as u64 / 4
    }

    fn arm_output_timer(&mut self, id: ConnId) {
        let c = &mut self.conns[id as usize];
        if c.output_timer() {
            return;
        }
        c.set_output_timer(true);
        // Progress is counted from now: what it wrote before it had to wait does not count.
        c.set_progressed(false);
        let due = tick_of(self.now_ms).wrapping_add(self.ticks.output.every);
        let entry = Entry {
            id,
            tag: tag(c.gen, TIMER_OUTPUT),
        };
        self.wheel.insert(due, entry);
    }

    /// The output timer of `id` came up: close it if its output left the log, or if it has taken
    /// none for the write timeout with its window shut (at every check), else look again later
    /// if it still waits.
    pub(super) fn check_output(&mut self, id: ConnId, io: &mut impl Io) {
        let c = &mut self.conns[id as usize];
        c.set_output_timer(false);
        let progressed = c.progressed();
        c.set_progressed(false);
        let shut = !progressed && io.peer_window_closed(id);
        let c = &mut self.conns[id as usize];
        let stalls = if shut { c.stalls() + 1 } else { 0 };
        c.set_stalls(stalls);
        // A closing connection has its own deadline (its close frame must leave in time).
        let timed_out =
            self.ticks.output.stalls > 0 && stalls >= self.ticks.output.stalls && c.phase() != Phase::Closing;
        match self.next_output(id) {
            Next::Nothing => self.conns[id as usize].set_stalls(0),
            Next::Gone => self.slow_reader(id, SlowReason::OutOfLog, io),
            Next::Targeted { at, len } | Next::Broadcast { at, len } if !self.msglog.holds(at, len) => {
                self.slow_reader(id, SlowReason::OutOfLog, io)
            }
            _ if timed_out => self.slow_reader(id, SlowReason::WriteTimeout, io),
            // Try again (it may have room that no event announced, or have been left for a
            // fan-out slice still to come): `pump` looks again later if it still waits.
            _ => self.pump(id, io),
        }
    }

    /// `id` fell out of the log or took no output for the write timeout: close it with 4008 if
    /// its next frame can still go out whole and cleanly, else reset it. Counted; nobody else
    /// waits for it.
    pub(super) fn slow_reader(&mut self, id: ConnId, why: SlowReason, io: &mut impl Io) {
        if self.conns[id as usize].phase() == Phase::Closing {
            // Already closed and counted (its close frame waits behind output that left the
            // log): it cannot finish cleanly, so it ends as a close that timed out.
            self.stats.close_timeouts += 1;
            self.conns[id as usize] = self.freed(id);
            io.abort(id);
            return;
        }
        self.stats.slow_readers_closed += 1;
        let why = match why {
            SlowReason::OutOfLog => "its output fell out of the message log",
            SlowReason::WriteTimeout => "it took no output for the write timeout",
        };
        self.log
            .warn(self.now_ms, format_args!("conn {id}: {why}: closed as a slow reader"));
        let c = self.conns[id as usize];
        let clean = c.offset() == 0
            && self
                .targeted
                .front(id)
                .is_none_or(|(item, done)| done == 0 && !item.mid_frame);
        let ws = c.phase() == Phase::Ws;
        self.end(id, Ended::SlowReader, io);
        let mut frame = [0u8; 2 + MAX_CONTROL_PAYLOAD];
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        let n = frame::close_payload(&mut payload, close_code::SLOW_READER, "slow reader");
        let len = frame::encode_header(
            (&mut frame[..frame::MAX_HEADER]).try_into().expect("MAX_HEADER bytes"),
            true,
            Op::Close,
            n,
            None,
        );
        let mut whole = Vec::new();
        whole.extend_from_slice(&frame[..len]);
        whole.extend_from_slice(&payload[..n]);
        self.conns[id as usize] = self.freed(id);
        if ws && clean && io.write(id, &whole) == whole.len() {
            io.close(id);
        } else {
            io.abort(id);
        }
    }
}

#[cfg(test)]
#[path = "output_tests.rs"]
mod tests;

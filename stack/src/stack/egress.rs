//! Egress and timers: sockets with something to send are on the dirty list and transmit at
//! `flush`, after the application has seen the events (so a reply rides with the ACK); due wheel
//! entries run smoltcp's timers (retransmission, TIME-WAIT) and the close deadlines of released
//! connections.

use smoltcp::time::{Duration, Instant};

use super::one_slot::sock_mut;
use super::slot::{flag, not_after, tick_of, NO_TIMER};
use super::Net;
use timing::wheel::Due;

use crate::link::Sender;

/// How often a quarter of the egress window comes back by itself (see `drain_dirty`).
const CREDIT_REFILL_MS: u64 = 5;

/// A sender that counts the frames built through it.
pub(super) struct Counted<'a, S: Sender> {
    pub(super) inner: &'a mut S,
    pub(super) sent: u32,
}

impl<S: Sender> Sender for Counted<'_, S> {
    fn can_send(&mut self) -> bool {
        self.inner.can_send()
    }
    fn send(&mut self, len: usize, build: &mut dyn FnMut(&mut [u8])) {
        self.sent += 1;
        self.inner.send(len, build);
    }
}

impl Net {
    pub(super) fn mark_dirty(&mut self, s: usize) {
        if self.slots[s].flags & flag::DIRTY == 0 {
            self.slots[s].flags |= flag::DIRTY;
            self.dirty.push(s as u32);
        }
    }

    /// Run every wheel entry that is due.
    pub(super) fn run_timers<S: crate::link::Sender>(&mut self, now: Instant, sender: &mut S) {
        self.now = now;
        let tick = tick_of(now);
        self.time_waits.expire(tick);
        let due = &mut self.due;
        due.clear();
        self.wheel.advance(tick, |e, _| {
            if not_after(e.tag, tick) {
                due.push(e);
                Due::Drop
            } else {
                Due::At(e.tag)
            }
        });
        let mut due = std::mem::take(&mut self.due);
        for e in due.drain(..) {
            if e.id & super::tail_probe::PROBE_ENTRY != 0 {
                self.fire_probe(e.id, now, sender);
                continue;
            }
            let s = e.id as usize;
            let slot = self.slots[s];
            if slot.flags & flag::IN_USE == 0 {
                continue;
            }
            let released = slot.flags & flag::RELEASED != 0;
            if released && e.tag == slot.user && not_after(slot.user, tick) {
                self.stats.linger_resets += 1;
                sock_mut(&mut self.sockets[s], self.handle).abort();
                self.process(s, now, sender, None);
            } else if e.tag == slot.timer {
                self.slots[s].timer = NO_TIMER;
                self.stats.timer_fires += 1;
                self.process(s, now, sender, None);
            }
        }
        trim(&mut due);
        self.due = due;
    }

    /// Egress for every dirty slot, as far as the link and the egress window allow.
    pub(super) fn drain_dirty<S: crate::link::Sender>(&mut self, now: Instant, sender: &mut S) {
        self.now = now;
        let window = self.config.egress_window;
        let paced = window > 0;
        if paced && now >= self.credit_at + Duration::from_millis(CREDIT_REFILL_MS) {
            // Losses leak credit (their ACKs never come): a quarter of the window comes back
            // every few milliseconds, so the clock never stops.
            self.credit = self.credit.max(window / 4);
            self.credit_at = now;
        }
        let mut counted = Counted { inner: sender, sent: 0 };
        let mut dirty = std::mem::take(&mut self.dirty);
        let mut next = self.dirty_next;
        while next < dirty.len() {
            // The link is full: the rest waits for the next flush (after the kick drains the
            // ring). Going on would move every remaining socket through smoltcp only to find no
            // room, which made a broadcast to N connections cost N per ring-full of frames.
            if !counted.can_send() {
                break;
            }
            if paced && counted.sent >= self.credit {
                self.stats.egress_paced += 1;
                break;
            }
            let s = dirty[next] as usize;
            next += 1;
            if self.slots[s].flags & flag::DIRTY == 0 {
                continue;
            }
            self.slots[s].flags &= !flag::DIRTY;
            self.process(s, now, &mut counted, None);
        }
        if paced {
            self.credit = self.credit.saturating_sub(counted.sent);
        }
        // The unvisited tail stays where it is (a cursor, not a copy: after a broadcast the
        // list holds every connection, and the link takes a ring-full per flush). Slots marked
        // again while draining go behind it.
        if next == dirty.len() {
            dirty.clear();
            next = 0;
        } else if next > dirty.len() / 2 {
            dirty.drain(..next);
            next = 0;
        }
        dirty.append(&mut self.dirty);
        trim(&mut dirty);
        self.dirty = dirty;
        self.dirty_next = next;
    }
}

/// Scratch lists keep at most this many entries of capacity once empty: a broadcast to a million
/// connections fills them once, and kept at that peak they held ~70 bytes per connection of
/// memory after it (measured at 1M); growing again costs about 20 allocations per burst.
pub(super) const KEEP_SCRATCH: usize = 4096;

/// Give back the capacity of an emptied scratch list beyond `KEEP_SCRATCH`.
pub(super) fn trim<T>(v: &mut Vec<T>) {
    if v.is_empty() && v.capacity() > KEEP_SCRATCH {
        v.shrink_to(KEEP_SCRATCH);
    }
}

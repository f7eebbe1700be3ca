//! Egress and timers: sockets with something to send are on the dirty list and transmit at
//! `flush`, after the application has seen the events (so a reply rides with the ACK); due wheel
//! entries run smoltcp's timers (retransmission, TIME-WAIT) and the close deadlines of released
//! connections.

use smoltcp::time::Instant;

use super::one_slot::sock_mut;
use super::slot::{flag, not_after, tick_of, NO_TIMER};
use super::Net;
use timing::wheel::Due;

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
        self.due = due;
    }

    /// Egress for every dirty slot.
    pub(super) fn drain_dirty<S: crate::link::Sender>(&mut self, now: Instant, sender: &mut S) {
        self.now = now;
        let mut dirty = std::mem::take(&mut self.dirty);
        let mut next = self.dirty_next;
        while next < dirty.len() {
            // The link is full: the rest waits for the next flush (after the kick drains the
            // ring). Going on would move every remaining socket through smoltcp only to find no
            // room, which made a broadcast to N connections cost N per ring-full of frames.
            if !sender.can_send() {
                break;
            }
            let s = dirty[next] as usize;
            next += 1;
            if self.slots[s].flags & flag::DIRTY == 0 {
                continue;
            }
            self.slots[s].flags &= !flag::DIRTY;
            self.process(s, now, sender, None);
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
        self.dirty = dirty;
        self.dirty_next = next;
    }
}

//! One connection's turn through smoltcp: the socket processes a frame (ingress) or sends what
//! it has (egress); then its next deadline goes into the timer wheel and what changed becomes
//! events for the application; a finished socket leaves the table and goes back to the free list.

use smoltcp::socket::tcp;
use smoltcp::time::Instant;

use super::one_slot::{in_set, sock_mut};
use super::slot::{flag, not_after, tick_after, tick_of, Slot, NO_TIMER, SLOT_EMPTY};
use super::time_wait::Parked;
use super::{CloseReason, ConnId, Event, Net};
use crate::port::Port;
use timing::wheel::Entry;

/// At most this many segments per socket per egress pass; more waits for the next flush.
const EGRESS_BURST: usize = 32;

impl Net {
    /// Run smoltcp on slot `s`'s socket: ingress of `frame` if given, else egress.
    pub(super) fn process<S: crate::link::Sender>(
        &mut self,
        s: usize,
        now: Instant,
        sender: &mut S,
        frame: Option<&[u8]>,
    ) {
        let handle = self.handle;
        let rx_before = sock_mut(&mut self.sockets[s], handle).recv_queue();
        // Until our first SYN leaves, the ISN it will carry (RFC 6528; `sequence.rs`).
        let new_isn = (self.slots[s].flags & flag::ISN_SET == 0)
            .then(|| self.isn_override.unwrap_or_else(|| self.isn.isn(&self.tuples[s], now)));
        let mut port = Port {
            frame,
            sender,
            shim: self.shim,
            mtu: self.config.mtu,
            verify_rx_checksum: self.config.verify_rx_checksum,
            starved: false,
            seq: Some(&mut self.slots[s].seq),
            new_isn,
            sent_data: false,
        };
        let ingress = frame.is_some();
        let mut deadline = None;
        let (iface, config, stats) = (&mut self.iface, &self.config, &mut self.stats);
        // SAFETY: the closure lends the set to smoltcp's poll calls and keeps nothing of it.
        unsafe {
            in_set(&mut self.sockets[s], |set| {
                if ingress {
                    iface.poll_ingress_single(now, &mut port, set);
                } else {
                    stats.egress_passes += 1;
                    for _ in 0..EGRESS_BURST {
                        if iface.poll_egress(now, &mut port, set) == smoltcp::iface::PollResult::None {
                            break;
                        }
                    }
                    // smoltcp's timeout counts from the last segment received, even on an idle
                    // connection: left on, it would abort every quiet connection after `tcp_timeout`,
                    // and switched on late (say, at close) it would fire at once. So it is on during
                    // handshakes, while data is unacknowledged (queueing into an empty buffer restarts
                    // its clock), and always when keep-alive probes are what detects a dead peer.
                    // Closing connections are bounded by `close_linger` instead.
                    let sock = set.get_mut::<tcp::Socket<'static>>(handle);
                    let handshake = matches!(sock.state(), tcp::State::SynSent | tcp::State::SynReceived);
                    let timeout = if handshake {
                        Some(config.tcp_timeout)
                    } else if sock.send_queue() > 0 {
                        Some(config.data_timeout)
                    } else {
                        config.keep_alive.map(|_| config.tcp_timeout)
                    };
                    sock.set_timeout(timeout);
                    deadline = iface.poll_at(now, set);
                }
            })
        };
        let starved = port.starved;
        let sent_data = port.sent_data;
        if new_isn.is_some() && port.new_isn.is_none() {
            self.slots[s].flags |= flag::ISN_SET;
        }
        // A segment whose payload did not all become readable (out of order, or a duplicate):
        // smoltcp may keep its bytes in the ring past the readable ones (`residency.rs`).
        if let Some(payload) = frame.map(crate::wire::ipv4_tcp_payload_len).filter(|&p| p > 0) {
            let rx_after = sock_mut(&mut self.sockets[s], self.handle).recv_queue();
            if rx_after.saturating_sub(rx_before) < payload {
                self.residency.hold_rx(s);
            }
        }
        self.settle(s, rx_before);
        self.note_buffers(s, now);
        let in_use = self.slots[s].flags & flag::IN_USE != 0;
        if !in_use {
            return;
        }
        if sent_data {
            self.arm_probe(s, now);
        }
        if ingress || starved {
            // Answer at the next flush (after the application has seen the events).
            if starved {
                self.stats.tx_starved += 1;
            }
            self.mark_dirty(s);
        } else if self.slots[s].flags & flag::OWNED == 0
            && sock_mut(&mut self.sockets[s], self.handle).state() == tcp::State::TimeWait
        {
            // The final ACK has left: the rest of TIME-WAIT needs no slot.
            self.park_time_wait(s, now);
        } else {
            self.schedule(s, now, deadline);
        }
    }

    /// Move slot `s`, in TIME-WAIT and released by the application, to a compact record, and
    /// free the slot without a word to the peer.
    fn park_time_wait(&mut self, s: usize, now: Instant) {
        let t = self.tuples[s];
        let seq = self.slots[s].seq;
        let sock = sock_mut(&mut self.sockets[s], self.handle);
        // `abort` alone would send an RST at the next dispatch; listening in between forgets
        // the remote end (the port is never 0: the connection had it).
        sock.abort();
        let (addr, port) = t.local();
        let _ = sock.listen(smoltcp::wire::IpListenEndpoint {
            addr: Some(smoltcp::wire::Ipv4Address::from(addr.octets()).into()),
            port,
        });
        sock.abort();
        let record = Parked {
            rcv_nxt: seq.rcv_nxt,
            snd_nxt: seq.snd_nxt,
            until: tick_after(now, super::TIME_WAIT),
        };
        if self.time_waits.park(t, record) {
            self.stats.time_wait_evicted += 1;
        }
        self.stats.time_wait_parked += 1;
        self.retire(s);
    }

    /// Keep slot `s`'s next smoltcp deadline in the wheel (one live entry at most: a deadline
    /// that moved later leaves the earlier entry to fire, find nothing and re-arm).
    fn schedule(&mut self, s: usize, now: Instant, deadline: Option<Instant>) {
        let Some(at) = deadline else {
            // Nothing left to time: any entry still in the wheel is stale and fires nothing.
            self.slots[s].timer = NO_TIMER;
            return;
        };
        let tick = if at <= now {
            tick_of(now).wrapping_add(1)
        } else {
            // Round up: a timer that fires early only finds nothing to do yet.
            tick_of(at).wrapping_add(u32::from(at.total_micros() % 1000 != 0))
        };
        let current = self.slots[s].timer;
        if current == NO_TIMER || !not_after(current, tick) || !not_after(tick_of(now), current) {
            self.slots[s].timer = tick;
            self.wheel.insert(
                tick,
                Entry {
                    id: s as u32,
                    tag: tick,
                },
            );
        }
    }

    /// Report what changed on slot `s` and release it once its connection is over.
    pub(super) fn settle(&mut self, s: usize, rx_before: usize) {
        let id = ConnId(s as u32);
        let sock = sock_mut(&mut self.sockets[s], self.handle);
        let state = sock.state();
        let (recv_queue, can_send) = (sock.recv_queue(), sock.can_send());
        // The peer's FIN has come (even with bytes still unread: an application waiting for
        // the rest of a message must hear that none will come).
        let peer_done = !sock.may_recv() || fin_received(state);
        let no_remote = sock.remote_endpoint().is_none();
        let flags = self.slots[s].flags;
        let synchronized = !matches!(
            state,
            tcp::State::Closed | tcp::State::Listen | tcp::State::SynSent | tcp::State::SynReceived
        );
        if flags & flag::ESTABLISHED == 0 && synchronized {
            self.slots[s].flags |= flag::ESTABLISHED;
            if flags & flag::ACTIVE != 0 {
                self.stats.connected += 1;
                if flags & flag::OWNED != 0 {
                    self.events.push(Event::Connected(id));
                }
            } else {
                self.stats.accepted += 1;
                self.half_open -= 1;
                self.slots[s].flags |= flag::OWNED;
                self.slots[s].user = 0;
                self.events.push(Event::Accepted(id));
            }
        }
        let flags = self.slots[s].flags;
        if flags & flag::OWNED != 0 && flags & flag::CLOSED_SENT == 0 {
            if flags & flag::ESTABLISHED != 0 {
                if recv_queue > rx_before {
                    self.events.push(Event::Readable(id));
                }
                if flags & flag::WANT_WRITE != 0 && can_send {
                    self.slots[s].flags &= !flag::WANT_WRITE;
                    self.events.push(Event::Writable(id));
                }
                if state == tcp::State::Closed {
                    self.report_closed(s, CloseReason::Aborted);
                } else if peer_done {
                    self.report_closed(s, CloseReason::PeerClosed);
                }
            } else if state == tcp::State::Closed {
                // An active open that was refused or timed out.
                self.stats.connect_failed += 1;
                self.report_closed(s, CloseReason::Aborted);
            }
        }
        // Done when nothing is left to send either (an abort's RST goes out first). A passive
        // socket reset during its handshake falls back to LISTEN: it is done too.
        let done = matches!(state, tcp::State::Closed | tcp::State::Listen) && no_remote;
        if done {
            if state == tcp::State::Listen {
                sock_mut(&mut self.sockets[s], self.handle).abort();
            }
            self.retire(s);
        }
    }

    pub(super) fn report_closed(&mut self, s: usize, why: CloseReason) {
        self.slots[s].flags |= flag::CLOSED_SENT;
        match why {
            CloseReason::PeerClosed => self.stats.closed_by_peer += 1,
            CloseReason::Aborted => self.stats.aborted += 1,
        }
        self.events.push(Event::Closed(ConnId(s as u32), why));
    }

    /// The socket is closed: leave the table, and go back to the free list unless the
    /// application still holds the id.
    pub(super) fn retire(&mut self, s: usize) {
        if self.slots[s].flags & flag::IN_TABLE != 0 {
            self.table.remove(s as u32, &self.tuples);
            self.slots[s].flags &= !flag::IN_TABLE;
        }
        let flags = self.slots[s].flags;
        if flags & flag::OWNED == 0 && flags & flag::IN_USE != 0 {
            if flags & flag::PER_SOURCE != 0 {
                self.uncount_source(s);
            }
            if flags & flag::ESTABLISHED == 0 && flags & flag::ACTIVE == 0 {
                self.stats.handshakes_failed += 1;
                self.half_open -= 1;
            }
            self.slots[s] = Slot {
                user: self.free_head,
                ..SLOT_EMPTY
            };
            // Whatever its buffers still hold is dead (the next connection's reset clears it).
            self.note_buffers(s, self.now);
            self.free_head = s as u32;
            self.free_count += 1;
            self.stats.retired += 1;
        }
    }
}

/// Whether the peer's FIN has been received in `state`.
pub(super) fn fin_received(state: tcp::State) -> bool {
    matches!(
        state,
        tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing | tcp::State::TimeWait
    )
}

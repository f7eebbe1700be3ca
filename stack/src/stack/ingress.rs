//! Ingress: a received frame is parsed (`wire`), its connection found in the 4-tuple table (O(1)),
//! and the frame handed to smoltcp on that one socket (`conn.rs`). A SYN for a listening port takes
//! a free slot; a segment for no connection gets smoltcp's RST from an empty socket set.

use smoltcp::iface::SocketSet;
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::Ipv4Address;

use super::cookie;
use super::one_slot::sock_mut;
use super::sequence::{self, seq_after};
use super::slot::{flag, NO_TIMER, SLOT_EMPTY};
use super::time_wait::{self, Parked};
use super::Net;
use crate::port::Port;
use crate::wire::{self, FourTuple, NotTcp, ETH_HEADER, TCP_ACK, TCP_RST, TCP_SYN};

/// Whether the TCP checksum of this IPv4 packet is right (checked before a SYN may end a
/// TIME-WAIT, since smoltcp checks it only after we would have torn the old socket down).
fn tcp_checksum_ok(ip: &[u8]) -> bool {
    use smoltcp::wire::{Ipv4Packet, TcpPacket};
    let Ok(ipv4) = Ipv4Packet::new_checked(ip) else {
        return false;
    };
    let (src, dst) = (ipv4.src_addr(), ipv4.dst_addr());
    match TcpPacket::new_checked(ipv4.payload()) {
        Ok(tcp) => tcp.verify_checksum(&src.into(), &dst.into()),
        Err(_) => false,
    }
}

/// Validated segments a new MAC must bring before it replaces a known next hop.
const NEXT_HOP_VOTES: u8 = 3;

impl Net {
    pub(super) fn on_frame<S: crate::link::Sender>(&mut self, frame: &mut [u8], sender: &mut S, now: Instant) {
        self.stats.rx_frames += 1;
        let seg = match wire::parse(frame) {
            Ok(seg) => seg,
            Err(why) => {
                // Counted always; logged only at debug level, so a flood cannot flood the log.
                log::debug!("dropped a frame of {} bytes: {why:?}", frame.len());
                match why {
                    NotTcp::NotIpv4 => self.stats.rx_not_ipv4 += 1,
                    NotTcp::NotTcp => self.stats.rx_not_tcp += 1,
                    NotTcp::Malformed => self.stats.rx_malformed += 1,
                }
                return;
            }
        };
        let ip = &mut frame[seg.ip_start..seg.ip_end];
        let pure_syn = seg.flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN;
        let found = self.table.get(&seg.tuple, &self.tuples);
        if found.is_none() {
            if let Some(parked) = self.time_waits.get(&seg.tuple) {
                let fresh = pure_syn
                    && seq_after(seg.seq, parked.rcv_nxt)
                    && self.listening.contains(&seg.tuple.local_port)
                    && (!self.config.verify_rx_checksum || tcp_checksum_ok(ip));
                if !fresh {
                    self.answer_time_wait(&seg, &parked, ip, sender, now);
                    return;
                }
                // A new connection beyond the old one's sequence space (RFC 6191): the record
                // ends and the SYN is handled as any other, unless it is refused anyway.
                if self.free_count == 0 || !self.source_may_open(&seg.tuple) {
                    if self.free_count == 0 {
                        self.stats.syn_refused += 1;
                    }
                    self.without_socket(ip, sender, now);
                    return;
                }
                self.time_waits.remove(&seg.tuple);
                self.stats.time_wait_reused += 1;
            }
        }
        let slot = match found {
            Some(s) => {
                let s = s as usize;
                let time_wait = sock_mut(&mut self.sockets[s], self.handle).state() == tcp::State::TimeWait;
                if pure_syn
                    && time_wait
                    && self.slots[s].flags & flag::OWNED == 0
                    && self.listening.contains(&seg.tuple.local_port)
                    && (!self.config.verify_rx_checksum || tcp_checksum_ok(ip))
                {
                    if seq_after(seg.seq, self.slots[s].seq.rcv_nxt) {
                        // A new connection on a 4-tuple we hold in TIME-WAIT, beyond the old one's
                        // sequence space (RFC 6191; what Linux does): start it afresh.
                        self.stats.time_wait_reused += 1;
                        self.table.remove(s as u32, &self.tuples);
                        self.slots[s].flags &= !flag::IN_TABLE;
                        self.open_passive(s, seg.tuple);
                    } else {
                        // An old duplicate, or a forgery: the challenge below answers it.
                        self.stats.time_wait_syn_refused += 1;
                    }
                }
                s
            }
            None if pure_syn && self.listening.contains(&seg.tuple.local_port) => {
                if !self.source_may_open(&seg.tuple) {
                    self.without_socket(ip, sender, now);
                    return;
                }
                if self.free_count > 0 && self.half_open >= self.half_open_limit {
                    self.send_cookie(&seg, ip, sender, now);
                    return;
                }
                let Some(s) = self.take_free() else {
                    // Capacity is the backlog: past it, refuse (smoltcp answers RST when no
                    // socket takes the SYN) and leave every existing connection alone.
                    self.stats.syn_refused += 1;
                    self.without_socket(ip, sender, now);
                    return;
                };
                let s = s as usize;
                self.slots[s] = SLOT_EMPTY;
                self.open_passive(s, seg.tuple);
                s
            }
            None if seg.flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_ACK
                && self.listening.contains(&seg.tuple.local_port) =>
            {
                let cookie = if self.source_may_open(&seg.tuple) {
                    self.open_from_cookie(&seg, ip, now)
                } else {
                    None
                };
                match cookie {
                    Some(s) => s,
                    None => {
                        self.stats.rx_no_connection += 1;
                        self.without_socket(ip, sender, now);
                        return;
                    }
                }
            }
            None => {
                self.stats.rx_no_connection += 1;
                self.without_socket(ip, sender, now);
                return;
            }
        };
        let state = sock_mut(&mut self.sockets[slot], self.handle).state();
        let synchronized = !matches!(
            state,
            tcp::State::Closed | tcp::State::Listen | tcp::State::SynSent | tcp::State::SynReceived
        );
        let seq = self.slots[slot].seq;
        // RFC 5961: an RST must carry exactly RCV.NXT, and a SYN has no place in a synchronized
        // connection. Either may be a blind attack; a true peer answers the challenge ACK (with
        // an exact RST, or by giving up its old connection), so nothing is lost by asking.
        let challenge = synchronized
            && if seg.flags & TCP_RST != 0 {
                seg.seq != seq.rcv_nxt && {
                    self.stats.rst_challenged += 1;
                    true
                }
            } else {
                seg.flags & TCP_SYN != 0 && {
                    self.stats.syn_challenged += 1;
                    true
                }
            };
        if challenge {
            if self.mac_learned && seg.src_mac != self.shim.next_hop {
                self.stats.rx_foreign_mac += 1;
            }
            // The budget counts challenge ACKs that leave, not forged segments (smoltcp sends at
            // most one a second per connection): one connection's flood cannot spend everyone's.
            if !self.challenges.available(now) {
                self.stats.challenge_acks_limited += 1;
                return;
            }
            sequence::into_challenge(&seq, ip);
            let mut counted = super::egress::Counted { inner: sender, sent: 0 };
            self.process(slot, now, &mut counted, Some(ip));
            self.challenges.spend(now, counted.sent);
            return;
        } else if self.slots[slot].flags & flag::ISN_SET != 0 {
            sequence::on_ingress(&seq, ip);
            if seg.flags & TCP_ACK != 0 {
                self.note_ack(slot, seg.ack.wrapping_sub(seq.offset), seg.window);
            }
        }
        self.stats.rx_segments += 1;
        // The ACK clock: what came back makes room for one more frame out.
        self.credit = self.credit.saturating_add(1).min(self.config.egress_window);
        // Whether the peer has stopped reading: the server closes a connection that keeps its
        // window shut and takes nothing (a reading peer under loss is not that). A forged
        // segment can set this only until the peer's next acknowledgement.
        if !challenge && seg.flags & (TCP_ACK | TCP_RST) == TCP_ACK {
            let f = &mut self.slots[slot].flags;
            if seg.window == 0 {
                *f |= flag::PEER_WINDOW_ZERO;
            } else {
                *f &= !flag::PEER_WINDOW_ZERO;
            }
        }
        // Until a next hop is known, answers go to the sender of the latest segment (the SYN-ACK
        // leaves at the next flush): provisional, nothing is learned from it.
        if !self.mac_learned {
            self.shim.next_hop = seg.src_mac;
        }
        let queued_before = sock_mut(&mut self.sockets[slot], self.handle).recv_queue();
        self.process(slot, now, sender, Some(ip));
        self.follow_rcv_nxt(slot, &seg, &seq, state, queued_before);
        if !self.mac_fixed && (!self.mac_learned || self.shim.next_hop != seg.src_mac) {
            self.learn_next_hop(slot, state, &seg, ip, seq.rcv_nxt, challenge);
        }
    }

    /// The peer's acknowledgement `ack` (smoltcp's numbers) and window: what a tail probe repeats;
    /// anything new acknowledged disarms the probe.
    fn note_ack(&mut self, slot: usize, ack: u32, window: u16) {
        let s = &mut self.slots[slot];
        s.peer_window = window;
        if s.flags & flag::ACK_SEEN == 0 || seq_after(ack, s.last_ack) {
            s.last_ack = ack;
            s.flags = (s.flags | flag::ACK_SEEN) & !(flag::PROBE | flag::PROBED);
        }
    }

    /// RCV.NXT as tracked is the last ACK we sent; data accepted in order moves the real one on
    /// before our ACK leaves (delayed, or paced), and an RST right behind that data must match
    /// it. So an in-order segment smoltcp took whole advances the tracked edge at once (a FIN
    /// that moved the state on counts one more).
    fn follow_rcv_nxt(
        &mut self,
        slot: usize,
        seg: &wire::Segment,
        seq: &sequence::SeqState,
        before: tcp::State,
        queued_before: usize,
    ) {
        if self.slots[slot].flags & flag::IN_USE == 0 || seg.seq != seq.rcv_nxt || seg.flags & (TCP_SYN | TCP_RST) != 0
        {
            return;
        }
        let sock = sock_mut(&mut self.sockets[slot], self.handle);
        let took = sock.recv_queue().saturating_sub(queued_before);
        if took != seg.payload_len {
            return; // not taken whole (out of window, or read meanwhile): wait for our ACK
        }
        let fin =
            seg.flags & wire::TCP_FIN != 0 && sock.state() != before && crate::stack::conn::fin_received(sock.state());
        let advance = took as u32 + u32::from(fin);
        if advance > 0 {
            self.slots[slot].seq.rcv_nxt = seq.rcv_nxt.wrapping_add(advance);
        }
    }

    /// One next hop: whoever sends us segments of our connections (the router, or the veth
    /// peer), believed only from a segment a blind sender could not have made: the ACK that
    /// completes a handshake (it must carry our RFC 6528 ISN + 1), or an in-order acknowledgement
    /// of an established connection (its SEQ exactly RCV.NXT). A stray frame, a SYN, a segment
    /// with a bad checksum (smoltcp drops it, so it completes nothing) redirects nothing.
    fn learn_next_hop(
        &mut self,
        slot: usize,
        before: tcp::State,
        seg: &wire::Segment,
        ip: &[u8],
        rcv_nxt: u32,
        challenged: bool,
    ) {
        let completed = before == tcp::State::SynReceived
            && self.slots[slot].flags & flag::IN_USE != 0
            && !matches!(
                sock_mut(&mut self.sockets[slot], self.handle).state(),
                tcp::State::Closed | tcp::State::Listen | tcp::State::SynReceived
            );
        let in_order = before == tcp::State::Established
            && !challenged
            && seg.flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_ACK
            && seg.seq == rcv_nxt
            && (!self.config.verify_rx_checksum || tcp_checksum_ok(ip));
        if completed || in_order {
            if self.mac_learned {
                // A known next hop gives way only to a MAC that proves itself NEXT_HOP_VOTES
                // times (a router that failed over does at once; one on-link host that
                // completes one handshake does not take every connection's output).
                if self.mac_candidate.0 != seg.src_mac {
                    self.mac_candidate = (seg.src_mac, 0);
                }
                self.mac_candidate.1 += 1;
                if self.mac_candidate.1 < NEXT_HOP_VOTES {
                    return;
                }
                self.mac_candidate.1 = 0;
                if self.now.total_millis() >= self.mac_logged_at + 10_000 {
                    self.mac_logged_at = self.now.total_millis();
                    log::info!(
                        "next hop changed: {} -> {} (logged at most every 10 s; /stats next_hop_learned counts them)",
                        wire::mac_string(self.shim.next_hop),
                        wire::mac_string(seg.src_mac)
                    );
                }
            }
            self.shim.next_hop = seg.src_mac;
            self.mac_learned = true;
            self.stats.next_hop_learned += 1;
        } else if self.mac_learned {
            self.stats.rx_foreign_mac += 1;
        }
    }

    /// Whether the remote address of `t` may take one more slot (`max_per_source`); counted
    /// when it may not.
    fn source_may_open(&mut self, t: &FourTuple) -> bool {
        let Some(limit) = self.config.max_per_source else {
            return true;
        };
        let held = self.per_source.get(&t.remote_addr).copied().unwrap_or(0);
        if held < limit {
            return true;
        }
        self.stats.refused_per_source += 1;
        false
    }

    /// Slot `s` gives back its place in its source's count.
    pub(super) fn uncount_source(&mut self, s: usize) {
        self.slots[s].flags &= !flag::PER_SOURCE;
        let addr = self.tuples[s].remote_addr;
        if let Some(n) = self.per_source.get_mut(&addr) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&addr);
            }
        }
    }

    /// A passive open: the recycled socket listens on the SYN's local endpoint, then takes it.
    fn open_passive(&mut self, s: usize, t: FourTuple) {
        let (addr, port) = t.local();
        let sock = sock_mut(&mut self.sockets[s], self.handle);
        sock.abort();
        let local = smoltcp::wire::IpListenEndpoint {
            addr: Some(Ipv4Address::from(addr.octets()).into()),
            port,
        };
        // Cannot fail: the socket is closed and the port is not 0 (it is in `listening`).
        let _ = sock.listen(local);
        self.tuples[s] = t;
        // A 4-tuple reused out of TIME-WAIT keeps its place in its source's count.
        let kept = self.slots[s].flags & (flag::DIRTY | flag::PER_SOURCE);
        self.slots[s].flags = kept | flag::IN_USE | flag::IN_TABLE;
        self.slots[s].seq = SLOT_EMPTY.seq;
        self.slots[s].timer = NO_TIMER;
        self.table.insert(s as u32, &self.tuples);
        self.stats.syn_received += 1;
        self.half_open += 1;
        if self.config.max_per_source.is_some() && self.slots[s].flags & flag::PER_SOURCE == 0 {
            *self.per_source.entry(t.remote_addr).or_insert(0) += 1;
            self.slots[s].flags |= flag::PER_SOURCE;
        }
    }

    /// A segment for a parked TIME-WAIT: RSTs are ignored (RFC 1337); anything else, a
    /// retransmitted FIN above all, gets the final ACK again (within the challenge budget).
    fn answer_time_wait<S: crate::link::Sender>(
        &mut self,
        seg: &wire::Segment,
        parked: &Parked,
        ip: &[u8],
        sender: &mut S,
        now: Instant,
    ) {
        if seg.flags & TCP_RST != 0 || (self.config.verify_rx_checksum && !tcp_checksum_ok(ip)) {
            return;
        }
        if seg.flags & TCP_SYN != 0 {
            self.stats.time_wait_syn_refused += 1;
        }
        if !self.challenges.take(now) {
            self.stats.challenge_acks_limited += 1;
            return;
        }
        let window = self.config.rx_buf.min(usize::from(u16::MAX)) as u16;
        let n = time_wait::final_ack(&seg.tuple, parked, window, &mut self.scratch);
        if self.send_raw(n, seg.src_mac, sender) {
            self.stats.time_wait_acks += 1;
        }
    }

    /// Send the IPv4 packet at the start of `scratch` (a stateless answer) to the next hop, or
    /// to `asker` while none is known.
    fn send_raw<S: crate::link::Sender>(&mut self, n: usize, asker: [u8; 6], sender: &mut S) -> bool {
        if !sender.can_send() {
            self.stats.tx_starved += 1;
            return false; // the peer asks again
        }
        let shim = if self.mac_learned {
            self.shim
        } else {
            wire::EthShim {
                next_hop: asker,
                ..self.shim
            }
        };
        let packet = &self.scratch[..n];
        sender.send(ETH_HEADER + n, &mut |frame: &mut [u8]| {
            shim.write(frame);
            frame[ETH_HEADER..].copy_from_slice(packet);
        });
        true
    }

    /// Answer a SYN statelessly: a SYN-ACK whose sequence number is the cookie (`cookie.rs`).
    fn send_cookie<S: crate::link::Sender>(&mut self, seg: &wire::Segment, ip: &[u8], sender: &mut S, now: Instant) {
        if self.config.verify_rx_checksum && !tcp_checksum_ok(ip) {
            return; // smoltcp would have dropped it too
        }
        let cookie = self.cookies.make(&seg.tuple, seg.seq, cookie::mss_of(ip), now);
        self.cookies.note_sent(now);
        let our_mss = (self.config.mtu - 40).min(usize::from(u16::MAX)) as u16;
        let window = self.config.rx_buf.min(usize::from(u16::MAX)) as u16;
        let n = cookie::syn_ack(&seg.tuple, cookie, seg.seq, window, our_mss, &mut self.scratch);
        if self.send_raw(n, seg.src_mac, sender) {
            self.stats.syn_cookies_sent += 1;
        }
    }

    /// An ACK for no connection: if it returns a cookie of ours, the connection it completes
    /// takes a slot, and smoltcp is taken through the handshake it did not see.
    fn open_from_cookie(&mut self, seg: &wire::Segment, ip: &[u8], now: Instant) -> Option<usize> {
        // Only while cookies are being sent (this period or the last, as Linux does): without a
        // flood a stray ACK is just that, and an old cookie's ACK cannot bring back a connection
        // long gone.
        if !self.cookies.sent_recently(now) {
            return None;
        }
        let client_isn = seg.seq.wrapping_sub(1);
        let cookie = seg.ack.wrapping_sub(1);
        // smoltcp would drop a segment with a bad checksum: it must not take a slot either.
        if self.config.verify_rx_checksum && !tcp_checksum_ok(ip) {
            return None;
        }
        let Some(mss) = self.cookies.check(&seg.tuple, client_isn, cookie, now) else {
            self.stats.syn_cookies_rejected += 1;
            return None;
        };
        let Some(s) = self.take_free() else {
            self.stats.syn_refused += 1;
            return None;
        };
        let s = s as usize;
        self.slots[s] = SLOT_EMPTY;
        self.open_passive(s, seg.tuple);
        let mut scratch = std::mem::take(&mut self.scratch);
        let (syn, sink) = scratch.split_at_mut(cookie::SCRATCH / 2);
        let n = cookie::rebuilt_syn(&seg.tuple, client_isn, seg.window, mss, syn);
        // smoltcp answers the rebuilt SYN with a SYN-ACK that goes nowhere, its sequence number
        // becoming the cookie on the wire (the one the client already has).
        self.isn_override = Some(cookie);
        let mut discard = cookie::Discard(sink);
        self.process(s, now, &mut discard, Some(&syn[..n]));
        self.process(s, now, &mut discard, None);
        self.isn_override = None;
        self.scratch = scratch;
        if self.slots[s].flags & flag::ISN_SET == 0 {
            // smoltcp did not take the SYN (cannot happen for a listening socket): give it up.
            log::debug!("a cookie's rebuilt handshake did not take; dropping it");
            sock_mut(&mut self.sockets[s], self.handle).abort();
            self.retire(s);
            return None;
        }
        self.stats.syn_cookies_accepted += 1;
        Some(s)
    }

    /// A segment no socket takes: smoltcp answers with RST (never to a RST) from an empty set.
    fn without_socket<S: crate::link::Sender>(&mut self, ip: &[u8], sender: &mut S, now: Instant) {
        let mut empty = SocketSet::new(&mut [][..]);
        let mut port = Port {
            frame: Some(ip),
            sender,
            shim: self.shim,
            mtu: self.config.mtu,
            verify_rx_checksum: self.config.verify_rx_checksum,
            starved: false,
            seq: None,
            new_isn: None,
            sent_data: false,
        };
        self.iface.poll_ingress_single(now, &mut port, &mut empty);
    }
}

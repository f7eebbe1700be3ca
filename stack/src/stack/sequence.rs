//! Our layer between the wire's sequence numbers and smoltcp's (RFC 6528, RFC 5961, RFC 6191).
//!
//! smoltcp draws initial sequence numbers from one PCG stream per interface: two observed SYN-ACKs
//! predict every later one. We choose the ISN on the wire ourselves, `M + F(4-tuple, secret)`
//! (RFC 6528: `F` a keyed SipHash-2-4, `M` a clock ticking every 4 µs), and translate: each
//! segment a connection sends has `offset` added to its sequence number, each acknowledgement it
//! receives has it taken off, with an incremental checksum update (RFC 1624). smoltcp never
//! knows; a segment for no connection (answered statelessly) is not translated.
//!
//! The same pass over outgoing segments records what RFC 5961 (exact-match RST, challenge ACKs)
//! and RFC 6191 (TIME-WAIT reuse) need and smoltcp does not show: the RCV.NXT we last
//! acknowledged and the SND.NXT we reached.

use siphasher::sip::SipHasher24;
use smoltcp::time::Instant;
use std::hash::Hasher;

use crate::wire::{FourTuple, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// Per connection: 12 bytes, in the slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct SeqState {
    /// Wire sequence number = smoltcp's + `offset` (our ISN on the wire minus smoltcp's).
    pub(crate) offset: u32,
    /// The acknowledgement number of the last segment we sent: the peer's next byte as far as the
    /// peer has been told. An RST must carry exactly this (RFC 5961 §3.2); a SYN ending our
    /// TIME-WAIT must start beyond it (RFC 6191).
    pub(crate) rcv_nxt: u32,
    /// The end of the sequence space we have sent, on the wire (a challenge ACK's SEQ).
    pub(crate) snd_nxt: u32,
}

/// `a` comes after `b` in sequence space.
pub(super) fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// A SipHash key from the kernel's random source (for ISNs and SYN cookies).
pub(super) fn os_key() -> std::io::Result<(u64, u64)> {
    use std::io::Read;
    let mut buf = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    let (a, b) = buf.split_at(8);
    Ok((
        u64::from_ne_bytes(a.try_into().unwrap_or_default()),
        u64::from_ne_bytes(b.try_into().unwrap_or_default()),
    ))
}

/// The RFC 6528 generator: a secret from the kernel's random source, read once per stack.
pub(super) struct IsnSource {
    key: (u64, u64),
}

impl IsnSource {
    pub(super) fn from_os() -> std::io::Result<IsnSource> {
        Ok(IsnSource::with_key(os_key()?))
    }

    pub(super) fn with_key(key: (u64, u64)) -> IsnSource {
        IsnSource { key }
    }

    /// The ISN for `t` at `now`: the keyed hash of the 4-tuple plus the 4 µs clock.
    pub(super) fn isn(&self, t: &FourTuple, now: Instant) -> u32 {
        let mut h = SipHasher24::new_with_keys(self.key.0, self.key.1);
        h.write(&t.local_addr);
        h.write(&t.remote_addr);
        h.write_u32(u32::from(t.local_port) << 16 | u32::from(t.remote_port));
        let clock = (now.total_micros() / 4) as u32;
        (h.finish() as u32).wrapping_add(clock)
    }
}

/// Rate limit for challenge ACKs across all connections (RFC 5961 §7): smoltcp limits each socket
/// to one per second; a spray of forged RSTs over a million connections would still draw a
/// million ACKs a second without this.
pub(super) struct ChallengeBudget {
    per_second: u32,
    left: u32,
    second: i64,
}

impl ChallengeBudget {
    pub(super) fn new(per_second: u32) -> ChallengeBudget {
        ChallengeBudget {
            per_second,
            left: per_second,
            second: 0,
        }
    }

    fn refill(&mut self, now: Instant) {
        let second = now.total_millis() / 1000;
        if second != self.second {
            self.second = second;
            self.left = self.per_second;
        }
    }

    /// Whether a challenge ACK may still leave this second.
    pub(super) fn available(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.left > 0
    }

    /// `n` challenge ACKs left.
    pub(super) fn spend(&mut self, now: Instant, n: u32) {
        self.refill(now);
        self.left = self.left.saturating_sub(n);
    }

    /// Take one, if any is left (for answers we send ourselves).
    pub(super) fn take(&mut self, now: Instant) -> bool {
        if !self.available(now) {
            return false;
        }
        self.left -= 1;
        true
    }
}

/// The TCP header of an IPv4 packet, for in-place rewriting: its offset, or `None` if the
/// packet is too short to hold one (the caller's parser has already refused such packets).
fn tcp_at(ip: &[u8]) -> Option<usize> {
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    (ip.len() >= ihl + 20).then_some(ihl)
}

fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Replace a 32-bit field of a TCP header, updating its checksum (RFC 1624, eqn. 3). A wrong
/// checksum stays wrong by the same amount: a forged segment is not made valid by us.
fn put32(tcp: &mut [u8], at: usize, new: u32) {
    let old = get32(tcp, at);
    tcp[at..at + 4].copy_from_slice(&new.to_be_bytes());
    let check = u16::from_be_bytes([tcp[16], tcp[17]]);
    let check = adjust(
        adjust(check, (old >> 16) as u16, (new >> 16) as u16),
        old as u16,
        new as u16,
    );
    tcp[16..18].copy_from_slice(&check.to_be_bytes());
}

/// Replace the 16-bit word holding the data offset and the flags.
fn put_flags(tcp: &mut [u8], flags: u8) {
    let old = u16::from_be_bytes([tcp[12], tcp[13]]);
    tcp[13] = flags;
    let new = u16::from_be_bytes([tcp[12], tcp[13]]);
    let check = u16::from_be_bytes([tcp[16], tcp[17]]);
    tcp[16..18].copy_from_slice(&adjust(check, old, new).to_be_bytes());
}

/// The checksum after one 16-bit word changed from `old` to `new`: ~(~HC + ~m + m').
pub(super) fn adjust(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Bytes of TCP payload in an IPv4 packet (0 if it does not hold a whole TCP header).
pub(crate) fn payload_len(ip: &[u8]) -> usize {
    let Some(at) = tcp_at(ip) else { return 0 };
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let doff = usize::from(ip[at + 12] >> 4) * 4;
    total.saturating_sub(at + doff)
}

/// A segment smoltcp built for this connection, before it leaves: choose the ISN on its SYN
/// (`new_isn`, given while none is chosen: returns true once used), move its sequence number to
/// the wire's, and note RCV.NXT and SND.NXT.
pub(crate) fn on_egress(st: &mut SeqState, ip: &mut [u8], new_isn: Option<u32>) -> bool {
    let Some(at) = tcp_at(ip) else { return false };
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    if total < at + 20 {
        return false;
    }
    let tcp = &mut ip[at..total];
    let flags = tcp[13];
    let seq = get32(tcp, 4);
    let mut chosen = false;
    if flags & TCP_SYN != 0 {
        if let Some(isn) = new_isn {
            st.offset = isn.wrapping_sub(seq);
            chosen = true;
        }
    }
    let wire = seq.wrapping_add(st.offset);
    if st.offset != 0 {
        put32(tcp, 4, wire);
    }
    if flags & TCP_ACK != 0 {
        st.rcv_nxt = get32(tcp, 8);
    }
    if flags & TCP_RST == 0 {
        let doff = usize::from(tcp[12] >> 4) * 4;
        let len = tcp.len().saturating_sub(doff) as u32;
        let end = wire
            .wrapping_add(len)
            .wrapping_add(u32::from(flags & TCP_SYN != 0))
            .wrapping_add(u32::from(flags & TCP_FIN != 0));
        if chosen || seq_after(end, st.snd_nxt) {
            st.snd_nxt = end;
        }
    }
    chosen
}

/// A segment arriving for this connection, before smoltcp sees it: its acknowledgement moves to
/// smoltcp's sequence space.
pub(super) fn on_ingress(st: &SeqState, ip: &mut [u8]) {
    if st.offset == 0 {
        return;
    }
    let Some(at) = tcp_at(ip) else { return };
    let tcp = &mut ip[at..];
    if tcp[13] & TCP_ACK != 0 {
        let ack = get32(tcp, 8);
        put32(tcp, 8, ack.wrapping_sub(st.offset));
    }
}

/// Turn a segment we refuse (an RST that does not match RCV.NXT exactly, a SYN on a synchronized
/// connection) into one smoltcp answers with a challenge ACK, after `on_ingress`: a bare ACK at
/// RCV.NXT acknowledging data never sent (smoltcp's reply carries its true SEQ and ACK, and it
/// limits itself to one a second per connection).
pub(super) fn into_challenge(st: &SeqState, ip: &mut [u8]) {
    let Some(at) = tcp_at(ip) else { return };
    let tcp = &mut ip[at..];
    put_flags(tcp, TCP_ACK);
    put32(tcp, 4, st.rcv_nxt);
    let beyond = st.snd_nxt.wrapping_sub(st.offset).wrapping_add(1 << 30);
    put32(tcp, 8, beyond);
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{IpAddress, Ipv4Address, TcpPacket};
    use std::net::Ipv4Addr;

    const SRC: Ipv4Address = Ipv4Address::new(198, 19, 0, 2);
    const DST: Ipv4Address = Ipv4Address::new(198, 18, 0, 1);

    /// An IPv4 packet holding a TCP segment with `payload`, checksums filled.
    fn packet(flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
        let total = 40 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[9] = 6;
        p[12..16].copy_from_slice(&SRC.octets());
        p[16..20].copy_from_slice(&DST.octets());
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&8080u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&ack.to_be_bytes());
        p[32] = 0x50;
        p[33] = flags;
        p[34..36].copy_from_slice(&512u16.to_be_bytes());
        p[40..].copy_from_slice(payload);
        let mut tcp = TcpPacket::new_unchecked(&mut p[20..]);
        tcp.fill_checksum(&IpAddress::Ipv4(SRC), &IpAddress::Ipv4(DST));
        p
    }

    fn checksum_ok(p: &[u8]) -> bool {
        TcpPacket::new_unchecked(&p[20..]).verify_checksum(&IpAddress::Ipv4(SRC), &IpAddress::Ipv4(DST))
    }

    #[test]
    fn rewriting_keeps_a_good_checksum_good_and_a_bad_one_bad() {
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..2000 {
            let payload: Vec<u8> = (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect();
            let mut p = packet(TCP_ACK, rng.u32(..), rng.u32(..), &payload);
            let st = SeqState {
                offset: rng.u32(1..),
                rcv_nxt: rng.u32(..),
                snd_nxt: rng.u32(..),
            };
            let ack = get32(&p, 28);
            on_ingress(&st, &mut p);
            assert_eq!(get32(&p, 28), ack.wrapping_sub(st.offset));
            assert!(checksum_ok(&p));
            into_challenge(&st, &mut p);
            assert!(checksum_ok(&p));
            assert_eq!(p[33], TCP_ACK);
            let mut bad = packet(TCP_RST, rng.u32(..), rng.u32(..), &payload);
            let at = 40.min(bad.len() - 1);
            bad[at] ^= 1;
            on_ingress(&st, &mut bad);
            into_challenge(&st, &mut bad);
            assert!(!checksum_ok(&bad), "a forged checksum must stay wrong");
        }
    }

    #[test]
    fn egress_moves_to_the_chosen_isn_and_tracks_both_edges() {
        let mut st = SeqState::default();
        // smoltcp's SYN-ACK at its own ISN 1000, acknowledging the peer's ISN 5000.
        let mut synack = packet(TCP_SYN | TCP_ACK, 1000, 5001, &[]);
        assert!(on_egress(&mut st, &mut synack, Some(7_000_000)));
        assert_eq!(get32(&synack, 24), 7_000_000);
        assert!(checksum_ok(&synack));
        assert_eq!((st.rcv_nxt, st.snd_nxt), (5001, 7_000_001));
        // A retransmitted SYN-ACK keeps the same ISN.
        let mut again = packet(TCP_SYN | TCP_ACK, 1000, 5001, &[]);
        assert!(!on_egress(&mut st, &mut again, None));
        assert_eq!(get32(&again, 24), 7_000_000);
        // Data: 10 bytes from smoltcp's 1001.
        let mut data = packet(TCP_ACK, 1001, 5020, b"0123456789");
        on_egress(&mut st, &mut data, None);
        assert_eq!(get32(&data, 24), 7_000_001);
        assert!(checksum_ok(&data));
        assert_eq!((st.rcv_nxt, st.snd_nxt), (5020, 7_000_011));
        // A retransmission of older data does not move SND.NXT back; an RST does not move it.
        let mut old = packet(TCP_ACK, 1001, 5020, b"01234");
        on_egress(&mut st, &mut old, None);
        let mut rst = packet(TCP_RST | TCP_ACK, 1011, 5020, &[]);
        on_egress(&mut st, &mut rst, None);
        assert_eq!(st.snd_nxt, 7_000_011);
        // The peer's acknowledgement of it comes back to smoltcp's numbers.
        let mut ack = packet(TCP_ACK, 5020, 7_000_011, &[]);
        on_ingress(&st, &mut ack);
        assert_eq!(get32(&ack, 28), 1011);
        assert!(checksum_ok(&ack));
    }

    fn tuple(port: u16) -> FourTuple {
        FourTuple::new(
            (Ipv4Addr::new(198, 18, 0, 1), 8080),
            (Ipv4Addr::new(198, 19, 0, 2), port),
        )
    }

    /// RFC 6528: one 4-tuple's ISNs advance with the 4 µs clock (a new incarnation starts beyond
    /// the old one); other 4-tuples, and the same one under another secret, are unrelated.
    #[test]
    fn isns_follow_the_clock_per_tuple_and_are_unrelated_across_tuples_and_secrets() {
        let a = IsnSource::with_key((1, 2));
        let b = IsnSource::with_key((3, 4));
        let t0 = Instant::from_millis(5_000);
        let t1 = Instant::from_millis(5_001);
        assert_eq!(a.isn(&tuple(40000), t1).wrapping_sub(a.isn(&tuple(40000), t0)), 250);
        assert_ne!(a.isn(&tuple(40000), t0), b.isn(&tuple(40000), t0));
        // Neighbouring ports at one instant: no two ISNs and no two steps between neighbours
        // alike (a counter or any linear scheme gives equal steps).
        let isns: Vec<u32> = (40000..41000).map(|p| a.isn(&tuple(p), t0)).collect();
        let mut steps: Vec<u32> = isns.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
        let mut sorted = isns.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), isns.len());
        steps.sort_unstable();
        steps.dedup();
        assert_eq!(steps.len(), isns.len() - 1);
        // The secret comes from the OS, different per stack.
        let (x, y) = (IsnSource::from_os().unwrap(), IsnSource::from_os().unwrap());
        assert_ne!(x.isn(&tuple(40000), t0), y.isn(&tuple(40000), t0));
    }

    #[test]
    fn challenge_budget_refills_each_second() {
        let mut b = ChallengeBudget::new(3);
        let t = Instant::from_millis(10_000);
        assert!((0..3).all(|_| b.take(t)));
        assert!(!b.take(t + smoltcp::time::Duration::from_millis(999)));
        assert!(b.take(t + smoltcp::time::Duration::from_millis(1000)));
    }

    #[test]
    fn no_input_panics() {
        let mut st = SeqState::default();
        for len in 0..60 {
            let mut p = vec![0x45u8; len];
            on_ingress(&SeqState { offset: 9, ..st }, &mut p);
            into_challenge(&st, &mut p);
            on_egress(&mut st, &mut p, Some(1));
        }
    }
}

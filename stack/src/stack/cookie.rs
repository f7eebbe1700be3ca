//! SYN cookies: under a SYN flood a half-open connection costs nothing until it proves itself.
//!
//! While fewer than `max_half_open` handshakes are pending a SYN takes a slot as usual (smoltcp
//! retransmits its SYN-ACK, options are kept). Past that, the SYN is answered statelessly: our
//! SYN-ACK's sequence number is the cookie, and nothing is remembered. An ACK for no connection
//! whose acknowledgement is a valid cookie + 1 then takes a slot; smoltcp is taken through the
//! handshake it missed (a SYN rebuilt from the cookie, its SYN-ACK discarded, the cookie chosen
//! as our ISN by the sequence layer) and the ACK completes it.
//!
//! The cookie (32 bits): a 5-bit counter of 64-second periods, a 3-bit index into a table of
//! MSS values, and 24 bits of SipHash-2-4 over the 4-tuple, the client's ISN and the full counter
//! and the MSS index under a secret from `/dev/urandom`. It is valid for the period it was made in and the next
//! (64 to 128 s); a blind forger hits one in 2^24. What a cookie cannot carry is lost for that
//! connection, as with Linux's cookies without timestamps: window scaling and SACK (neither
//! matters for our small per-connection buffers).

use std::hash::Hasher;

use siphasher::sip::SipHasher24;
use smoltcp::time::Instant;
use smoltcp::wire::{Ipv4Packet, TcpPacket};

use super::segment::{self, Fields, Way};

use crate::wire::{FourTuple, ETH_HEADER};

/// MSS values a cookie can name; a client's MSS is rounded down to the nearest.
const MSS_TABLE: [u16; 8] = [536, 1200, 1300, 1360, 1400, 1440, 1460, 8960];
const PERIOD_MS: i64 = 64_000;

pub(super) struct CookieJar {
    key: (u64, u64),
    /// The last period a cookie was sent in: ACKs are checked as cookies only in it and the next.
    sent_in: Option<u64>,
}

impl CookieJar {
    pub(super) fn from_os() -> std::io::Result<CookieJar> {
        Ok(CookieJar {
            key: super::sequence::os_key()?,
            sent_in: None,
        })
    }

    pub(super) fn note_sent(&mut self, now: Instant) {
        self.sent_in = Some(Self::period(now));
    }

    /// Whether a cookie was sent in this period or the last (any valid one was).
    pub(super) fn sent_recently(&self, now: Instant) -> bool {
        self.sent_in.is_some_and(|p| Self::period(now) <= p + 1)
    }

    fn hash(&self, t: &FourTuple, client_isn: u32, period: u64, index: u32) -> u32 {
        let mut h = SipHasher24::new_with_keys(self.key.0, self.key.1);
        h.write(&t.local_addr);
        h.write(&t.remote_addr);
        h.write_u32(u32::from(t.local_port) << 16 | u32::from(t.remote_port));
        h.write_u32(client_isn);
        h.write_u64(period);
        h.write_u32(index);
        h.finish() as u32 & 0x00ff_ffff
    }

    fn period(now: Instant) -> u64 {
        (now.total_millis().max(0) / PERIOD_MS) as u64
    }

    /// The cookie for a SYN of `t` with ISN `client_isn` and MSS option `mss` (536 if absent).
    pub(super) fn make(&self, t: &FourTuple, client_isn: u32, mss: u16, now: Instant) -> u32 {
        let period = Self::period(now);
        let index = MSS_TABLE.iter().rposition(|&m| m <= mss).unwrap_or(0) as u32;
        ((period as u32 & 31) << 27) | (index << 24) | self.hash(t, client_isn, period, index)
    }

    /// The MSS a cookie carries, if it is one we made for this 4-tuple and client ISN in this
    /// period or the previous one.
    pub(super) fn check(&self, t: &FourTuple, client_isn: u32, cookie: u32, now: Instant) -> Option<u16> {
        let current = Self::period(now);
        let age = (current as u32).wrapping_sub(cookie >> 27) & 31;
        if age > 1 || u64::from(age) > current {
            return None;
        }
        let period = current - u64::from(age);
        let index = cookie >> 24 & 7;
        (self.hash(t, client_isn, period, index) == cookie & 0x00ff_ffff).then(|| MSS_TABLE[index as usize])
    }
}

/// Our stateless SYN-ACK to a SYN of `t`, as an IPv4 packet in `out` (returns its length).
pub(super) fn syn_ack(t: &FourTuple, cookie: u32, client_isn: u32, window: u16, mss: u16, out: &mut [u8]) -> usize {
    let fields = Fields {
        syn: true,
        seq: cookie,
        ack: Some(client_isn.wrapping_add(1)),
        window,
        mss: Some(mss),
    };
    segment::build(t, Way::Out, fields, out)
}

/// The SYN smoltcp never saw, rebuilt from the cookie's ACK: the client's ISN, its window and the
/// MSS the cookie carried, no window scaling (our SYN-ACK offered none).
pub(super) fn rebuilt_syn(t: &FourTuple, client_isn: u32, window: u16, mss: u16, out: &mut [u8]) -> usize {
    let fields = Fields {
        syn: true,
        seq: client_isn,
        ack: None,
        window,
        mss: Some(mss),
    };
    segment::build(t, Way::In, fields, out)
}

/// The MSS option of a SYN (the IPv4 packet `ip`), or 536 (RFC 9293's default) without one.
pub(super) fn mss_of(ip: &[u8]) -> u16 {
    let Ok(ipv4) = Ipv4Packet::new_checked(ip) else {
        return 536;
    };
    let Ok(tcp) = TcpPacket::new_checked(ipv4.payload()) else {
        return 536;
    };
    let mut options = tcp.options();
    while !options.is_empty() {
        match smoltcp::wire::TcpOption::parse(options) {
            Ok((_, smoltcp::wire::TcpOption::EndOfList)) | Err(_) => break,
            Ok((_, smoltcp::wire::TcpOption::MaxSegmentSize(m))) => return m.max(64),
            Ok((rest, _)) => options = rest,
        }
    }
    536
}

/// Where smoltcp's SYN-ACK for a rebuilt SYN goes: nowhere (the cookie SYN-ACK already left).
pub(super) struct Discard<'a>(pub(super) &'a mut [u8]);

impl crate::link::Sender for Discard<'_> {
    fn can_send(&mut self) -> bool {
        true
    }
    fn send(&mut self, len: usize, build: &mut dyn FnMut(&mut [u8])) {
        let n = len.min(self.0.len());
        build(&mut self.0[..n]);
    }
}

/// Room for one frame of the largest MTU, twice (a rebuilt SYN and smoltcp's discarded answer).
pub(super) const SCRATCH: usize = 2 * (ETH_HEADER + crate::config::MAX_MTU);

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{IpAddress, Ipv4Address};
    use std::net::Ipv4Addr;

    fn t(port: u16) -> FourTuple {
        FourTuple::new(
            (Ipv4Addr::new(198, 18, 0, 1), 8080),
            (Ipv4Addr::new(198, 19, 0, 2), port),
        )
    }

    #[test]
    fn a_cookie_is_valid_for_its_tuple_isn_and_two_periods_only() {
        let jar = CookieJar::from_os().unwrap();
        let now = Instant::from_secs(100_000);
        let c = jar.make(&t(1000), 77, 1460, now);
        assert_eq!(jar.check(&t(1000), 77, c, now), Some(1460));
        assert_eq!(
            jar.check(&t(1000), 77, c, now + smoltcp::time::Duration::from_secs(64)),
            Some(1460)
        );
        assert_eq!(
            jar.check(&t(1000), 77, c, now + smoltcp::time::Duration::from_secs(129)),
            None
        );
        assert_eq!(jar.check(&t(1001), 77, c, now), None);
        assert_eq!(jar.check(&t(1000), 78, c, now), None);
        assert_eq!(jar.check(&t(1000), 77, c ^ 1, now), None);
        assert_eq!(
            jar.check(&t(1000), 77, c ^ (1 << 24), now),
            None,
            "the MSS is signed too"
        );
        // The MSS is rounded down to the table.
        assert_eq!(jar.check(&t(5), 1, jar.make(&t(5), 1, 1459, now), now), Some(1440));
        assert_eq!(jar.check(&t(5), 1, jar.make(&t(5), 1, 100, now), now), Some(536));
        // Blind guesses: about one in 2^24 passes.
        let mut rng = fastrand::Rng::with_seed(1);
        let hits = (0..200_000)
            .filter(|_| jar.check(&t(1000), 77, rng.u32(..), now).is_some())
            .count();
        assert!(hits <= 2, "{hits} random cookies passed");
    }

    #[test]
    fn the_frames_parse_back() {
        let mut out = [0u8; 100];
        let n = syn_ack(&t(4000), 0xdead_beef, 41, 512, 1460, &mut out);
        let ip = Ipv4Packet::new_checked(&out[..n]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.syn() && tcp.ack());
        assert_eq!((tcp.seq_number().0 as u32, tcp.ack_number().0), (0xdead_beef, 42));
        assert!(tcp.verify_checksum(&IpAddress::Ipv4(ip.src_addr()), &IpAddress::Ipv4(ip.dst_addr())));
        assert_eq!(mss_of(&out[..n]), 1460);
        let n = rebuilt_syn(&t(4000), 41, 1000, 1400, &mut out);
        assert_eq!(mss_of(&out[..n]), 1400);
        let ip = Ipv4Packet::new_checked(&out[..n]).unwrap();
        assert_eq!(ip.dst_addr(), Ipv4Address::new(198, 18, 0, 1));
    }
}

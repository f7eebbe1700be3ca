//! TIME-WAIT as a compact record, outside the connection slots (as Linux keeps a small tw socket).
//!
//! RFC 6455 has the server close TCP first, so every WebSocket the server closes leaves its
//! TIME-WAIT with us. In a slot that costs a smoltcp socket and both buffers for the whole
//! TIME-WAIT (~1 KB; with `--max-conns 12000` and rounds of 10,000 reconnects, 8,000 of 10,000
//! new clients were refused). Once the final ACK has left, the connection is parked here
//! instead: its 4-tuple, the RCV.NXT and SND.NXT it ended with, and when it expires (24 bytes in
//! the map, 16 in the expiry queue), and its slot is free at once.
//!
//! A parked connection answers as TIME-WAIT must: a retransmitted FIN (or anything else but an
//! RST) gets the final ACK again; a SYN beyond the old sequence space (RFC 6191) ends it and
//! opens a new connection; an older SYN gets that ACK as a challenge; RSTs are ignored
//! (RFC 1337). At most `capacity` are kept (Linux's `tcp_max_tw_buckets`); past that the oldest
//! ends early, counted.

use std::collections::{HashMap, VecDeque};

use super::segment::{self, Fields, Way};
use super::slot::not_after;
use crate::wire::FourTuple;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Parked {
    pub(super) rcv_nxt: u32,
    pub(super) snd_nxt: u32,
    /// Tick at which it ends (also tells a record from a newer one on the same 4-tuple).
    pub(super) until: u32,
}

#[derive(Default)]
pub(super) struct TimeWaits {
    records: HashMap<FourTuple, Parked>,
    expiry: VecDeque<(FourTuple, u32)>,
    capacity: usize,
}

impl TimeWaits {
    pub(super) fn new(capacity: usize) -> TimeWaits {
        TimeWaits {
            capacity,
            ..TimeWaits::default()
        }
    }

    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    /// Park a connection until tick `until` (TIME-WAIT lasts the same for every connection, so
    /// the queue stays in expiry order). Returns true if the oldest had to end early for room.
    pub(super) fn park(&mut self, t: FourTuple, p: Parked) -> bool {
        let mut evicted = false;
        while self.records.len() >= self.capacity {
            let Some((old, until)) = self.expiry.pop_front() else {
                break;
            };
            if self.records.get(&old).is_some_and(|r| r.until == until) {
                self.records.remove(&old);
                evicted = true;
            }
        }
        if self.capacity > 0 {
            self.records.insert(t, p);
            self.expiry.push_back((t, p.until));
        }
        evicted
    }

    pub(super) fn get(&self, t: &FourTuple) -> Option<Parked> {
        if self.records.is_empty() {
            return None;
        }
        self.records.get(t).copied()
    }

    pub(super) fn remove(&mut self, t: &FourTuple) {
        self.records.remove(t);
    }

    /// End every record due by `tick`; returns how many ended.
    pub(super) fn expire(&mut self, tick: u32) -> usize {
        let mut n = 0;
        while let Some(&(t, until)) = self.expiry.front() {
            if !not_after(until, tick) {
                break;
            }
            self.expiry.pop_front();
            if self.records.get(&t).is_some_and(|r| r.until == until) {
                self.records.remove(&t);
                n += 1;
            }
        }
        if self.records.is_empty() && self.expiry.capacity() > 1024 {
            // A reconnect storm is over: give its memory back.
            self.expiry = VecDeque::new();
            self.records = HashMap::new();
        }
        n
    }

    /// Bytes held (map and queue, by capacity).
    pub(super) fn bytes(&self) -> usize {
        self.records.capacity() * (std::mem::size_of::<(FourTuple, Parked)>() + 1)
            + self.expiry.capacity() * std::mem::size_of::<(FourTuple, u32)>()
    }
}

/// The final ACK of a parked connection, as an IPv4 packet in `out` (returns its length).
pub(super) fn final_ack(t: &FourTuple, p: &Parked, window: u16, out: &mut [u8]) -> usize {
    let fields = Fields {
        syn: false,
        seq: p.snd_nxt,
        ack: Some(p.rcv_nxt),
        window,
        mss: None,
    };
    segment::build(t, Way::Out, fields, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{IpAddress, Ipv4Packet, TcpPacket};
    use std::net::Ipv4Addr;

    fn t(port: u16) -> FourTuple {
        FourTuple::new(
            (Ipv4Addr::new(198, 18, 0, 1), 8080),
            (Ipv4Addr::new(198, 19, 0, 2), port),
        )
    }

    fn parked(until: u32) -> Parked {
        Parked {
            rcv_nxt: 1,
            snd_nxt: 2,
            until,
        }
    }

    #[test]
    fn records_end_in_order_and_a_newer_record_on_the_same_tuple_survives_the_older_expiry() {
        let mut tw = TimeWaits::new(10);
        tw.park(t(1), parked(100));
        tw.park(t(2), parked(150));
        tw.remove(&t(1));
        tw.park(t(1), parked(200)); // the same 4-tuple, parked again later
        assert_eq!(tw.expire(99), 0);
        assert_eq!(tw.expire(100), 0, "the first record of t(1) is gone already");
        assert_eq!(tw.get(&t(1)), Some(parked(200)));
        assert_eq!(tw.expire(150), 1);
        assert_eq!(tw.expire(200), 1);
        assert_eq!(tw.len(), 0);
    }

    #[test]
    fn past_capacity_the_oldest_ends_early() {
        let mut tw = TimeWaits::new(3);
        for i in 0..3 {
            assert!(!tw.park(t(i), parked(100 + u32::from(i))));
        }
        assert!(tw.park(t(9), parked(200)));
        assert_eq!(tw.len(), 3);
        assert_eq!(tw.get(&t(0)), None);
        assert!(tw.get(&t(9)).is_some());
    }

    #[test]
    fn the_final_ack_parses_back() {
        let mut out = [0u8; 64];
        let n = final_ack(&t(7), &parked(0), 512, &mut out);
        let ip = Ipv4Packet::new_checked(&out[..n]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.ack() && !tcp.syn() && !tcp.rst() && !tcp.fin());
        assert_eq!((tcp.seq_number().0, tcp.ack_number().0), (2, 1));
        assert!(tcp.verify_checksum(&IpAddress::Ipv4(ip.src_addr()), &IpAddress::Ipv4(ip.dst_addr())));
    }
}

//! Blind attacks on established connections, in memory: forged RSTs and SYNs (RFC 5961), SYNs on
//! a TIME-WAIT (RFC 6191), and frames from a foreign MAC address that must not redirect output.

mod common;

use std::net::Ipv4Addr;

use common::*;
use smoltcp::time::Duration;
use smoltcp::wire::{Ipv4Packet, TcpPacket};
use stack::wire::{FourTuple, TCP_ACK, TCP_RST, TCP_SYN};
use stack::{CloseReason, Event, StackConfig};

const EVIL_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x66];
const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x77];

/// A frame from `mac` carrying a TCP segment towards the server on tuple `t` (seen from the
/// server), checksums filled unless `bad_checksum`.
fn segment(mac: [u8; 6], t: FourTuple, flags: u8, seq: u32, ack: u32, bad_checksum: bool) -> Vec<u8> {
    let mut f = tcp_frame(mac, t.remote(), t.local(), flags, seq, ack, 1024, &[], &[]);
    if bad_checksum {
        f[50] ^= 0x55;
    }
    f
}

/// (destination MAC, flags, seq, ack, payload length) of a captured frame.
fn fields(f: &[u8]) -> ([u8; 6], u8, u32, u32, usize) {
    let be32 = |i: usize| u32::from_be_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]]);
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let doff = usize::from(f[46] >> 4) * 4;
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&f[0..6]);
    (mac, f[47], be32(38), be32(42), total - 20 - doff)
}

/// Establish, exchange a little data both ways, and return (client id, server id, the server's
/// tuple, RCV.NXT and SND.NXT as the server last sent them).
fn established(p: &mut Pair) -> (stack::ConnId, stack::ConnId, FourTuple, u32, u32) {
    let (c, s) = p.establish();
    p.server.link().capture_outgoing(true);
    assert_eq!(transfer(p, c, s, b"hello server", true, 100), b"hello server");
    assert_eq!(transfer(p, c, s, b"hello client", false, 100), b"hello client");
    p.settle(100);
    let sent = p.server.link().take_captured();
    let (_, _, seq, ack, len) = fields(sent.last().expect("the server sent something"));
    (c, s, p.server.tuple(s).unwrap(), ack, seq.wrapping_add(len as u32))
}

fn still_talks(p: &mut Pair, c: stack::ConnId, s: stack::ConnId) {
    let data = pattern(3000, 9);
    assert_eq!(transfer(p, c, s, &data, false, 2000), data, "server to client");
    assert_eq!(transfer(p, c, s, &data, true, 2000), data, "client to server");
}

#[test]
fn an_rst_off_rcv_nxt_draws_a_challenge_ack_and_the_connection_lives_an_exact_one_resets() {
    let mut p = Pair::new(server_config(8), client_config(8, 1));
    let (c, s, t, rcv_nxt, snd_nxt) = established(&mut p);
    p.server.link().capture_outgoing(true);
    // The client's side of the wire is cut for the challenge: a real peer would answer it with an
    // exact RST if it had no connection; ours has one, so it just takes the ACK.
    p.server
        .link()
        .inject(&segment(CLIENT_MAC, t, TCP_RST, rcv_nxt.wrapping_add(100), 0, false));
    p.settle(10);
    assert_eq!(p.server.stats().rst_challenged, 1);
    let sent = p.server.link().take_captured();
    assert_eq!(sent.len(), 1, "one challenge ACK");
    let (mac, flags, seq, ack, _) = fields(&sent[0]);
    assert_eq!((mac, flags, seq, ack), (CLIENT_MAC, TCP_ACK, snd_nxt, rcv_nxt));
    assert!(!p.server_events.iter().any(|e| matches!(e, Event::Closed(..))));
    still_talks(&mut p, c, s);

    // Exactly RCV.NXT: the connection is reset.
    p.settle(100);
    p.server.link().capture_outgoing(true);
    assert_eq!(transfer(&mut p, c, s, b"x", true, 100), b"x");
    p.settle(100);
    let (_, _, _, rcv_nxt, _) = fields(p.server.link().take_captured().last().unwrap());
    p.server_events.clear();
    p.server
        .link()
        .inject(&segment(CLIENT_MAC, t, TCP_RST, rcv_nxt, 0, false));
    p.settle(10);
    assert!(p.server_events.contains(&Event::Closed(s, CloseReason::Aborted)));
}

#[test]
fn a_syn_on_an_established_connection_draws_a_challenge_ack_and_the_connection_lives() {
    let mut p = Pair::new(server_config(8), client_config(8, 1));
    let (c, s, t, rcv_nxt, snd_nxt) = established(&mut p);
    p.server.link().capture_outgoing(true);
    p.server
        .link()
        .inject(&segment(CLIENT_MAC, t, TCP_SYN, 12345, 0, false));
    p.settle(10);
    assert_eq!(p.server.stats().syn_challenged, 1);
    let sent = p.server.link().take_captured();
    let (_, flags, seq, ack, _) = fields(&sent[0]);
    assert_eq!((flags, seq, ack), (TCP_ACK, snd_nxt, rcv_nxt));
    assert!(!p.server_events.iter().any(|e| matches!(e, Event::Closed(..))));
    assert_eq!(p.server.stats().syn_received, 1, "no new connection");
    still_talks(&mut p, c, s);
}

/// RFC 5961 §7: smoltcp sends at most one challenge ACK a second per connection, and the stack
/// at most 1000 a second across all of them, counting ACKs sent (a flood of forgeries on one
/// connection does not spend the others' budget).
#[test]
fn challenge_acks_are_limited_per_connection_and_in_total() {
    let mut p = Pair::new(server_config(1200), client_config(1200, 1));
    let (c, s, t, rcv_nxt, _) = established(&mut p);
    p.server.link().capture_outgoing(true);
    for i in 0..1500u32 {
        let f = segment(CLIENT_MAC, t, TCP_RST, rcv_nxt.wrapping_add(1 + i), 0, false);
        p.server.link().inject(&f);
    }
    p.settle(100);
    let stats = p.server.stats();
    assert_eq!(stats.rst_challenged, 1500);
    assert_eq!(stats.challenge_acks_limited, 0);
    assert_eq!(
        p.server.link().take_captured().len(),
        1,
        "one per connection per second"
    );
    // 1,100 other connections, each sent a SYN in the same second: 1,000 challenge ACKs, and the
    // rest wait for the next second.
    let others: Vec<_> = (0..1100).map(|_| p.connect()).collect();
    p.settle(2000);
    let tuples: Vec<FourTuple> = others
        .iter()
        .map(|c| {
            let t = p.client.tuple(*c).unwrap();
            FourTuple::new(t.remote(), t.local())
        })
        .collect();
    p.advance(Duration::from_millis(1100));
    p.server.link().take_captured();
    let limited = p.server.stats().challenge_acks_limited;
    for t in &tuples {
        p.server.link().inject(&segment(CLIENT_MAC, *t, TCP_SYN, 1, 0, false));
    }
    p.client.link().cut_outgoing(true);
    p.settle(100);
    let acks = p.server.link().take_captured().len();
    assert_eq!(acks, 1000, "the budget across connections");
    assert_eq!(p.server.stats().challenge_acks_limited - limited, 100);
    p.client.link().cut_outgoing(false);
    p.advance(Duration::from_millis(1100));
    p.server
        .link()
        .inject(&segment(CLIENT_MAC, t, TCP_RST, rcv_nxt.wrapping_add(7), 0, false));
    p.settle(10);
    assert_eq!(p.server.link().take_captured().len(), 1, "a second later, again");
    still_talks(&mut p, c, s);
}

/// RFC 6191 without timestamps: a SYN ends our TIME-WAIT only beyond the old connection's
/// sequence space; an old duplicate (or a guess) gets a challenge ACK.
#[test]
fn a_syn_ends_a_time_wait_only_beyond_the_old_sequence_space() {
    let mut p = Pair::new(server_config(8), client_config(8, 1));
    let (c, s, t, _, _) = established(&mut p);
    p.server.link().capture_outgoing(true);
    p.server.close(s);
    p.settle(100);
    p.client.close(c);
    p.settle(100);
    assert_eq!(p.server.stats().time_waits, 1, "server in TIME-WAIT");
    let (_, _, _, rcv_nxt, _) = fields(p.server.link().take_captured().last().unwrap());
    p.client.link().cut_outgoing(true);
    p.server
        .link()
        .inject(&segment(CLIENT_MAC, t, TCP_SYN, rcv_nxt.wrapping_sub(1), 0, false));
    p.settle(10);
    assert_eq!(p.server.stats().time_wait_syn_refused, 1);
    assert_eq!(p.server.stats().time_wait_reused, 0);
    p.server.link().take_captured();
    let isn = rcv_nxt.wrapping_add(100_000);
    p.server.link().inject(&segment(CLIENT_MAC, t, TCP_SYN, isn, 0, false));
    p.settle(10);
    assert_eq!(p.server.stats().time_wait_reused, 1);
    let sent = p.server.link().take_captured();
    let (_, flags, _, ack, _) = fields(&sent[0]);
    assert_eq!((flags, ack), (TCP_SYN | TCP_ACK, isn.wrapping_add(1)));
}

/// The next hop is learned only from segments a blind sender could not have made; a foreign MAC
/// with a SYN, a bad checksum, a wrong sequence number or a forged RST redirects nothing.
#[test]
fn frames_from_a_foreign_mac_do_not_redirect_output() {
    let mut p = Pair::new(server_config(8), client_config(8, 1));
    let (c, s, t, rcv_nxt, snd_nxt) = established(&mut p);
    assert_eq!(p.server.next_hop(), Some(CLIENT_MAC));
    let learned = p.server.stats().next_hop_learned;
    p.client.link().cut_outgoing(true);
    let forgeries = [
        segment(EVIL_MAC, t, TCP_SYN, 1, 0, true),
        segment(EVIL_MAC, t, TCP_SYN, 1, 0, false),
        segment(EVIL_MAC, t, TCP_ACK, rcv_nxt, snd_nxt, true),
        segment(EVIL_MAC, t, TCP_ACK, rcv_nxt.wrapping_add(10), snd_nxt, false),
        segment(EVIL_MAC, t, TCP_RST, rcv_nxt.wrapping_add(10), 0, false),
        segment(EVIL_MAC, t, TCP_RST | TCP_ACK, rcv_nxt.wrapping_add(1), snd_nxt, true),
    ];
    for f in &forgeries {
        p.server.link().inject(f);
        p.settle(10);
        assert_eq!(p.server.next_hop(), Some(CLIENT_MAC));
    }
    // A SYN from the foreign MAC for a new 4-tuple: its SYN-ACK goes to the next hop we know.
    let other = FourTuple {
        remote_port: t.remote_port.wrapping_add(1),
        ..t
    };
    p.server.link().capture_outgoing(true);
    p.server.link().inject(&segment(EVIL_MAC, other, TCP_SYN, 5, 0, false));
    p.settle(10);
    assert_eq!(fields(&p.server.link().take_captured()[0]).0, CLIENT_MAC);
    assert_eq!(p.server.stats().next_hop_learned, learned);
    assert!(p.server.stats().rx_foreign_mac >= 4);
    p.client.link().cut_outgoing(false);
    p.server.link().capture_outgoing(true);
    still_talks(&mut p, c, s);
    assert!(p
        .server
        .link()
        .take_captured()
        .iter()
        .all(|f| fields(f).0 == CLIENT_MAC));
    assert!(!p
        .server_events
        .iter()
        .any(|e| matches!(e, Event::Closed(i, _) if *i == s)));
}

/// Before anything is learned a SYN is answered to its sender, and teaches nothing; the first
/// completed handshake sets the next hop.
#[test]
fn a_syn_teaches_nothing_and_a_completed_handshake_sets_the_next_hop() {
    let mut p = Pair::new(server_config(8), client_config(8, 1));
    let t = FourTuple::new((SERVER, PORT), (Ipv4Addr::new(198, 19, 9, 9), 999));
    p.server.link().capture_outgoing(true);
    p.server.link().inject(&segment(EVIL_MAC, t, TCP_SYN, 5, 0, false));
    p.settle(10);
    let sent = p.server.link().take_captured();
    assert_eq!(fields(&sent[0]).0, EVIL_MAC, "the SYN-ACK goes back to whoever asked");
    assert_eq!(p.server.next_hop(), None);
    p.establish();
    assert_eq!(p.server.next_hop(), Some(CLIENT_MAC));
}

#[test]
fn a_configured_next_hop_is_never_learned_over() {
    let server = StackConfig {
        next_hop_mac: Some(ROUTER_MAC),
        ..server_config(8)
    };
    let mut p = Pair::new(server, client_config(8, 1));
    let (c, s) = p.establish();
    still_talks(&mut p, c, s);
    assert_eq!(p.server.next_hop(), Some(ROUTER_MAC));
    assert_eq!(p.server.stats().next_hop_learned, 0);
}

/// Data and then an RST right behind it, before our ACK of the data has left: the RST carries
/// the real RCV.NXT (past the data), and resets the connection at once.
#[test]
fn an_rst_right_behind_data_resets_before_our_ack_leaves() {
    let mut p = Pair::new(server_config(8), client_config(8, 1));
    let (_, s, t, rcv_nxt, snd_nxt) = established(&mut p);
    p.client.link().cut_outgoing(true);
    let mut data = segment(CLIENT_MAC, t, TCP_ACK, rcv_nxt, snd_nxt, false);
    // Ten bytes of payload: rebuild with a longer IP packet.
    data.truncate(54);
    data.extend_from_slice(b"0123456789");
    data[16..18].copy_from_slice(&50u16.to_be_bytes());
    data[47] = TCP_ACK | 0x08; // PSH
    data[24..26].copy_from_slice(&[0, 0]);
    data[50..52].copy_from_slice(&[0, 0]);
    let (src, dst) = (
        std::net::Ipv4Addr::from(t.remote_addr),
        std::net::Ipv4Addr::from(t.local_addr),
    );
    TcpPacket::new_unchecked(&mut data[34..]).fill_checksum(&src.into(), &dst.into());
    Ipv4Packet::new_unchecked(&mut data[14..34]).fill_checksum();
    p.server.link().inject(&data);
    p.server
        .link()
        .inject(&segment(CLIENT_MAC, t, TCP_RST, rcv_nxt.wrapping_add(10), 0, false));
    // One poll takes both frames; no flush (so no ACK) in between.
    p.server.poll(p.now, &mut p.server_events);
    assert_eq!(p.server.stats().rst_challenged, 0, "{:?}", p.server.stats());
    assert!(
        p.server_events.contains(&Event::Closed(s, CloseReason::Aborted)),
        "{:?}",
        p.server_events
    );
}

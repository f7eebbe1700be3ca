//! SYN floods and SYN cookies, in memory: past `max_half_open` pending handshakes a SYN costs no
//! slot, established connections keep working, and a legitimate client still gets in.

mod common;

use std::net::Ipv4Addr;

use common::*;
use smoltcp::time::Duration;
use stack::wire::{FourTuple, TCP_ACK, TCP_SYN};
use stack::{Event, StackConfig};

/// A SYN or ACK frame towards the server from `src` (MSS 1460), checksums filled.
fn frame(src: (Ipv4Addr, u16), flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    tcp_frame(
        CLIENT_MAC,
        src,
        (SERVER, PORT),
        flags,
        seq,
        ack,
        8192,
        &[2, 4, 0x05, 0xb4],
        &[],
    )
}

/// Spoofed sources live in 198.18.200.0/24; nothing there ever answers.
fn to_the_real_client(f: &[u8]) -> bool {
    f.len() < 34 || f[30..33] != [198, 18, 200]
}

fn spoofed(rng: &mut fastrand::Rng) -> (Ipv4Addr, u16) {
    (Ipv4Addr::new(198, 18, 200, rng.u8(1..255)), rng.u16(1024..))
}

#[test]
fn a_spoofed_syn_flood_at_90_percent_capacity_stops_no_one() {
    let mut p = Pair::new(server_config(1000), client_config(1000, 1));
    p.server.link().filter_outgoing(Some(to_the_real_client));
    let limit = server_config(1000).half_open_limit();
    assert_eq!(limit, 62);
    let held: Vec<_> = (0..900).map(|_| p.connect()).collect();
    p.settle(2000);
    assert_eq!(p.server.stats().accepted, 900);
    // 900 SYNs at once: all but the first `limit` came in on cookies already.
    let from_cookies = p.server.stats().syn_cookies_accepted;
    assert_eq!(from_cookies, 900 - limit as u64);
    // The server's id for each client connection, matched by 4-tuple.
    let by_tuple: std::collections::HashMap<_, _> = p
        .server_events
        .iter()
        .filter_map(|e| match e {
            Event::Accepted(id) => Some((p.server.tuple(*id).unwrap().remote(), *id)),
            _ => None,
        })
        .collect();
    let server_ids: Vec<_> = held
        .iter()
        .map(|c| by_tuple[&p.client.tuple(*c).unwrap().local()])
        .collect();
    p.server_events.clear();
    p.client_events.clear();
    let mut rng = fastrand::Rng::with_seed(5);
    let mut newcomer = None;
    // 20,000 spoofed SYNs over 20 ms of virtual time; a legitimate connect in the middle, and
    // established connections exchanging data all along.
    for round in 0..20 {
        for _ in 0..1000 {
            let f = frame(spoofed(&mut rng), TCP_SYN, rng.u32(..), 0);
            p.server.link().inject(&f);
        }
        if round == 10 {
            newcomer = Some(p.connect());
        }
        let k = round * 40;
        let data = pattern(600, round as u8);
        assert_eq!(transfer(&mut p, held[k], server_ids[k], &data, false, 500), data);
        assert_eq!(transfer(&mut p, held[k], server_ids[k], &data, true, 500), data);
        let stats = p.server.stats();
        assert!(stats.half_open <= limit as u64, "{stats:?}");
        assert!(
            p.server.in_use() <= 900 + limit + 1,
            "slots in use: {}",
            p.server.in_use()
        );
    }
    p.settle(2000);
    let newcomer = newcomer.unwrap();
    assert!(
        p.client_events.contains(&Event::Connected(newcomer)),
        "the legitimate client got in"
    );
    let stats = p.server.stats();
    assert!(stats.syn_cookies_sent >= 19_000, "{stats:?}");
    assert_eq!(
        stats.syn_cookies_accepted,
        from_cookies + 1,
        "the newcomer came in on a cookie"
    );
    assert_eq!(stats.accepted, 901);
    // The half-open slots the flood took time out; nothing else is left behind.
    p.advance(Duration::from_secs(31));
    assert_eq!(p.server.stats().half_open, 0);
    assert_eq!(p.server.in_use(), 901);
}

fn always_cookies() -> StackConfig {
    StackConfig {
        max_half_open: Some(0),
        ..server_config(8)
    }
}

#[test]
fn a_connection_from_a_cookie_carries_data_both_ways_and_closes_cleanly() {
    let mut p = Pair::new(always_cookies(), client_config(8, 1));
    let (c, s) = p.establish();
    let stats = p.server.stats();
    assert_eq!(
        (stats.syn_cookies_sent, stats.syn_cookies_accepted, stats.syn_received),
        (1, 1, 1)
    );
    let data = pattern(100_000, 3);
    assert_eq!(transfer(&mut p, c, s, &data, false, 20_000), data);
    assert_eq!(transfer(&mut p, c, s, &data, true, 20_000), data);
    p.client.close(c);
    p.settle(100);
    p.server.close(s);
    p.settle(100);
    p.advance(Duration::from_secs(61));
    assert_eq!((p.server.in_use(), p.client.in_use()), (0, 0));
}

#[test]
fn forged_and_expired_cookies_take_no_slot() {
    let mut p = Pair::new(always_cookies(), client_config(8, 1));
    p.server.link().filter_outgoing(Some(to_the_real_client));
    let mut rng = fastrand::Rng::with_seed(9);
    let forgeries = |p: &mut Pair, rng: &mut fastrand::Rng| {
        for _ in 0..10_000 {
            let f = frame(spoofed(rng), TCP_ACK, rng.u32(..), rng.u32(..));
            p.server.link().inject(&f);
        }
        p.settle(1000);
    };
    // No cookie sent yet: stray ACKs are not even checked as cookies.
    forgeries(&mut p, &mut rng);
    assert_eq!(p.server.in_use(), 0);
    assert_eq!(p.server.stats().syn_cookies_rejected, 0);
    assert_eq!(p.server.stats().rx_no_connection, 10_000);
    // While cookies are being sent, forged ones are checked and refused.
    p.server
        .link()
        .inject(&frame((Ipv4Addr::new(198, 18, 200, 1), 1), TCP_SYN, 1, 0));
    p.settle(10);
    assert_eq!(p.server.stats().syn_cookies_sent, 1);
    forgeries(&mut p, &mut rng);
    assert_eq!(p.server.in_use(), 0);
    assert_eq!(p.server.stats().syn_cookies_rejected, 10_000);

    // A real cookie, returned too late, then in time.
    let src = (Ipv4Addr::new(198, 18, 200, 7), 4242);
    p.server.link().capture_outgoing(true);
    p.server.link().inject(&frame(src, TCP_SYN, 1000, 0));
    p.settle(10);
    let synack = p.server.link().take_captured().pop().expect("a SYN-ACK");
    assert_eq!(synack[47], TCP_SYN | TCP_ACK);
    let cookie = u32::from_be_bytes([synack[38], synack[39], synack[40], synack[41]]);
    assert_eq!(p.server.in_use(), 0, "the SYN took no slot");
    let ack = frame(src, TCP_ACK, 1001, cookie.wrapping_add(1));
    // A bad checksum takes no slot, whatever the cookie.
    let mut bad = ack.clone();
    bad[51] ^= 0x33;
    p.server.link().inject(&bad);
    p.settle(10);
    assert_eq!(p.server.in_use(), 0, "a cookie ACK with a bad checksum took a slot");
    let now = p.now;
    p.now += Duration::from_secs(130);
    p.server.link().inject(&ack);
    p.settle(10);
    assert_eq!(p.server.in_use(), 0);
    p.now = now + Duration::from_secs(1);
    p.server.link().inject(&ack);
    p.settle(10);
    assert_eq!(p.server.in_use(), 1);
    assert_eq!(p.server.stats().accepted, 1);
    let t = FourTuple::new((SERVER, PORT), src);
    let id = p
        .server_events
        .iter()
        .find_map(|e| match e {
            Event::Accepted(id) => Some(*id),
            _ => None,
        })
        .unwrap();
    assert_eq!(p.server.tuple(id), Some(t));
}

/// `max_per_source`: one address holds at most N slots (handshakes included); past it its SYNs
/// get RST, other addresses are unaffected, and closing gives the places back.
#[test]
fn one_source_holds_at_most_max_per_source_slots() {
    let server = StackConfig {
        max_per_source: Some(5),
        ..server_config(64)
    };
    let mut p = Pair::new(server, client_config(64, 2));
    let mut held = Vec::new();
    for _ in 0..7 {
        held.push(p.connect());
        p.settle(100);
    }
    // The client's pool has two addresses and alternates between them per port range: count
    // what each got.
    let connected: Vec<_> = held
        .iter()
        .filter(|c| p.client_events.contains(&Event::Connected(**c)))
        .collect();
    let by_addr = |addr: [u8; 4]| {
        connected
            .iter()
            .filter(|c| p.client.tuple(***c).unwrap().local_addr == addr)
            .count()
    };
    let (a, b) = (by_addr([198, 19, 0, 1]), by_addr([198, 19, 0, 2]));
    assert!(a <= 5 && b <= 5, "{a} and {b}");
    assert_eq!(a + b + p.server.stats().refused_per_source as usize, 7);
    // 12 more from a spoofed address: 5 take a slot (half-open), the rest are refused.
    let before = p.server.stats().refused_per_source;
    p.server.link().filter_outgoing(Some(to_the_real_client));
    for port in 0..12 {
        let f = frame((Ipv4Addr::new(198, 18, 200, 9), 3000 + port), TCP_SYN, 1, 0);
        p.server.link().inject(&f);
    }
    p.settle(10);
    assert_eq!(p.server.stats().refused_per_source - before, 7);
    assert_eq!(p.server.stats().half_open, 5);
    // The handshakes time out: the address may open again.
    p.advance(Duration::from_secs(31));
    p.server
        .link()
        .inject(&frame((Ipv4Addr::new(198, 18, 200, 9), 4000), TCP_SYN, 1, 0));
    p.settle(10);
    assert_eq!(p.server.stats().refused_per_source - before, 7);
    assert_eq!(p.server.stats().half_open, 1);
}

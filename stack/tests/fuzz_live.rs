//! A stateful fuzz of live connections in memory: a million hostile segments (any flags, options,
//! windows and lengths) against established connections that keep talking. Half the connections
//! are attacked blind, as an off-path attacker must guess: acknowledgement numbers far from ours,
//! and sequence numbers inside the receive window but never exactly RCV.NXT (where smoltcp alone
//! would take an RST; RFC 5961 must not): every one of those survives. The other half are attacked by one
//! who knows the numbers (near or exactly the real ones): each either continues or is reset. No
//! panic, the counters add up, no slot is leaked.
//!
//! `FUZZ_SEGMENTS` sets the count (default 1,000,000); `FUZZ_SEED` the seed (printed on failure).

mod common;

use std::collections::HashMap;

use common::*;
use smoltcp::time::Duration;
use stack::wire::{FourTuple, TCP_ACK};
use stack::{ConnId, Event};

/// What the server last told the client on a connection: (its SEQ end, its ACK).
fn learn(edges: &mut HashMap<[u8; 6], (u32, u32)>, frames: Vec<Vec<u8>>) {
    for f in frames {
        if f.len() < 54 {
            continue;
        }
        let be32 = |i: usize| u32::from_be_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]]);
        let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
        let doff = usize::from(f[46] >> 4) * 4;
        let len = total.saturating_sub(20 + doff) as u32;
        // Keyed by (client address, client port).
        let mut k = [0u8; 6];
        k[..4].copy_from_slice(&f[30..34]);
        k[4..].copy_from_slice(&f[36..38]);
        if f[47] & TCP_ACK != 0 {
            edges.insert(k, (be32(38).wrapping_add(len), be32(42)));
        }
    }
}

fn key(t: &FourTuple) -> [u8; 6] {
    let mut k = [0u8; 6];
    k[..4].copy_from_slice(&t.remote_addr);
    k[4..].copy_from_slice(&t.remote_port.to_be_bytes());
    k
}

/// A segment from the client side of `t` with the given fields, checksums filled (or not).
#[allow(clippy::too_many_arguments)]
fn segment(
    t: &FourTuple,
    flags: u8,
    seq: u32,
    ack: u32,
    window: u16,
    options: &[u8],
    payload: &[u8],
    good: bool,
) -> Vec<u8> {
    let mut f = tcp_frame(
        CLIENT_MAC,
        t.remote(),
        t.local(),
        flags,
        seq,
        ack,
        window,
        options,
        payload,
    );
    if !good {
        f[51] ^= 0x5a;
    }
    f
}

/// A number near `base` most of the time (where checks are decided), anywhere otherwise.
fn near(rng: &mut fastrand::Rng, base: u32) -> u32 {
    match rng.u8(..4) {
        0 => rng.u32(..),
        1 => base,
        2 => base.wrapping_add(rng.u32(..2048)),
        _ => base.wrapping_sub(rng.u32(..2048)),
    }
}

#[test]
fn a_million_hostile_segments_against_live_connections() {
    let total: usize = std::env::var("FUZZ_SEGMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20261128);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut p = Pair::new(server_config(64), client_config(64, 1));
    let pairs: Vec<(ConnId, ConnId)> = (0..16).map(|_| p.establish()).collect();
    let tuples: Vec<FourTuple> = pairs.iter().map(|(_, s)| p.server.tuple(*s).unwrap()).collect();
    let mut edges = HashMap::new();
    p.server.link().capture_outgoing(true);
    let mut alive: Vec<bool> = vec![true; pairs.len()];
    let mut buf = [0u8; 4096];
    for i in 0..total {
        let k = rng.usize(..tuples.len());
        let t = tuples[k];
        let (snd_end, rcv_nxt): (u32, u32) = edges.get(&key(&t)).copied().unwrap_or((0, 0));
        let blind = k < tuples.len() / 2;
        let flags = rng.u8(..) & 0x3f;
        let (seq, ack) = if blind {
            let far = |rng: &mut fastrand::Rng, base: u32| base.wrapping_add(rng.u32(1 << 16..=u32::MAX - (1 << 16)));
            // The real RCV.NXT runs ahead of what we learned by whole 4-byte pings: an offset that
            // is no multiple of 4 is in the window and never exact.
            let in_window = rcv_nxt.wrapping_add(4 * rng.u32(0..100) + rng.u32(1..4));
            let seq = if rng.bool() { in_window } else { far(&mut rng, rcv_nxt) };
            (seq, far(&mut rng, snd_end))
        } else {
            (near(&mut rng, rcv_nxt), near(&mut rng, snd_end))
        };
        let options: Vec<u8> = (0..rng.usize(..3) * 4).map(|_| rng.u8(..)).collect();
        let payload: Vec<u8> = (0..[0, 0, 1, rng.usize(..600)][rng.usize(..4)])
            .map(|_| rng.u8(..))
            .collect();
        let f = segment(
            &t,
            flags,
            seq,
            ack,
            [0, rng.u16(..), 512][rng.usize(..3)],
            &options,
            &payload,
            rng.u8(..8) != 0,
        );
        p.server.link().inject(&f);
        if i % 64 == 63 {
            p.step();
            p.now += Duration::from_millis(1);
            learn(&mut edges, p.server.link().take_captured());
            // Real traffic goes on between the forgeries.
            for (j, (c, s)) in pairs.iter().enumerate() {
                if alive[j] {
                    p.client.write(*c, b"ping");
                    p.server.write(*s, b"pong");
                    while p.server.read(*s, &mut buf) > 0 {}
                    while p.client.read(*c, &mut buf) > 0 {}
                }
            }
            p.server.take_events(&mut p.server_events);
            for e in p.server_events.drain(..) {
                if let Event::Closed(id, _) = e {
                    if let Some(j) = pairs.iter().position(|(_, s)| *s == id) {
                        alive[j] = false;
                    }
                }
            }
            let st = p.server.stats();
            assert!(
                st.in_use <= 64 && st.half_open <= st.in_use,
                "seed {seed}, segment {i}: {st:?}"
            );
        }
    }
    p.settle(1000);
    for (c, s) in &pairs {
        while p.server.read(*s, &mut buf) > 0 {}
        while p.client.read(*c, &mut buf) > 0 {}
    }
    // Blind forgeries closed nothing; survivors still carry data both ways.
    let survivors = alive.iter().filter(|a| **a).count();
    assert!(
        alive[..pairs.len() / 2].iter().all(|a| *a),
        "seed {seed}: a blind attack closed a connection: {alive:?}"
    );
    for (j, (c, s)) in pairs.iter().enumerate() {
        if alive[j] && p.server.state(*s) == Some(smoltcp::socket::tcp::State::Established) {
            let data = pattern(2000, j as u8);
            let got = transfer(&mut p, *c, *s, &data, false, 3000);
            assert!(
                got == data,
                "seed {seed}: connection {j} carried {} of {} bytes",
                got.len(),
                data.len()
            );
        }
    }
    // Everything closed, time passed: no slot is left behind, and the counters add up.
    for (c, s) in &pairs {
        p.client.close(*c);
        p.server.close(*s);
    }
    p.advance(Duration::from_secs(200));
    let st = p.server.stats();
    assert_eq!(p.server.in_use(), 0, "seed {seed}: {st:?}");
    assert_eq!(st.half_open, 0);
    assert_eq!(
        st.syn_received, st.retired,
        "seed {seed}: every slot taken came back: {st:?}"
    );
    assert!(st.rx_frames >= total as u64);
    println!(
        "{total} segments, seed {seed}: {survivors} of {} connections survived; {st:?}",
        pairs.len()
    );
}

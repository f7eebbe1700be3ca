//! TIME-WAIT parked outside the slots: reconnect churn at capacity is accepted in full, and a
//! parked connection still answers as TIME-WAIT must.

mod common;

use common::*;
use smoltcp::time::Duration;
use stack::wire::{FourTuple, TCP_ACK, TCP_FIN, TCP_RST};
use stack::{ConnId, Event, StackConfig};

/// Rounds of 250 connections against 300 slots: each opens, holds 2 s, and is closed by the
/// server first (as RFC 6455 has it), so every one leaves a TIME-WAIT with the server.
#[test]
fn churn_at_capacity_every_round_is_accepted_and_memory_does_not_grow() {
    let mut client = client_config(300, 1);
    client.source_ports = (20000, 60000);
    let mut p = Pair::new(server_config(300), client);
    let mut tw_bytes = Vec::new();
    for round in 0..10 {
        let ids: Vec<ConnId> = (0..250).map(|_| p.connect()).collect();
        p.settle(2000);
        let connected = p
            .client_events
            .iter()
            .filter(|e| matches!(e, Event::Connected(_)))
            .count();
        assert_eq!(connected, 250, "round {round}: {:?}", p.server.stats());
        let accepted: Vec<ConnId> = p
            .server_events
            .iter()
            .filter_map(|e| match e {
                Event::Accepted(id) => Some(*id),
                _ => None,
            })
            .collect();
        p.server_events.clear();
        p.client_events.clear();
        p.advance(Duration::from_secs(2));
        for s in accepted {
            p.server.close(s);
        }
        p.settle(200);
        for c in ids {
            p.client.close(c);
        }
        p.settle(200);
        p.server_events.clear();
        p.client_events.clear();
        assert_eq!(p.server.in_use(), 0, "round {round}: every slot free again");
        tw_bytes.push(p.server.memory().queue_bytes);
    }
    let st = p.server.stats();
    assert_eq!(st.accepted, 2500);
    assert_eq!(st.syn_refused, 0);
    assert_eq!(st.time_wait_parked, 2500);
    assert_eq!(st.time_wait_evicted, 0);
    // TIME-WAIT lasts 10 s: after five rounds of ~2 s as many records end as start, and the
    // memory they take stops growing.
    assert!(tw_bytes[5..].iter().all(|b| *b <= tw_bytes[4]), "{tw_bytes:?}");
}

fn segment(t: &FourTuple, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    tcp_frame(CLIENT_MAC, t.remote(), t.local(), flags, seq, ack, 1024, &[], &[])
}

fn seq_ack(f: &[u8]) -> (u8, u32, u32) {
    let be32 = |i: usize| u32::from_be_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]]);
    (f[47], be32(38), be32(42))
}

#[test]
fn a_parked_time_wait_answers_a_retransmitted_fin_ignores_rsts_and_ends_in_time() {
    let mut p = Pair::new(server_config(8), client_config(8, 1));
    let (c, s) = p.establish();
    let t = p.server.tuple(s).unwrap();
    p.server.close(s);
    p.settle(100);
    p.server.link().capture_outgoing(true);
    p.client.close(c);
    p.settle(100);
    let (flags, seq, ack) = seq_ack(p.server.link().take_captured().last().expect("the final ACK"));
    assert_eq!(flags, TCP_ACK);
    assert_eq!((p.server.in_use(), p.server.stats().time_waits), (0, 1));
    // The client's FIN again (its ACK got lost): the final ACK again.
    p.client.link().cut_outgoing(true);
    p.server
        .link()
        .inject(&segment(&t, TCP_FIN | TCP_ACK, ack.wrapping_sub(1), seq));
    p.settle(10);
    let again = p.server.link().take_captured();
    assert_eq!(again.len(), 1);
    assert_eq!(seq_ack(&again[0]), (TCP_ACK, seq, ack));
    // RSTs, exact or not, are ignored (RFC 1337).
    p.server.link().inject(&segment(&t, TCP_RST, ack, 0));
    p.settle(10);
    assert_eq!(p.server.stats().time_waits, 1);
    assert!(p.server.link().take_captured().is_empty());
    // 10 s later it is gone: the same segment finds no connection and gets an RST.
    p.advance(Duration::from_secs(11));
    assert_eq!(p.server.stats().time_waits, 0);
    p.server
        .link()
        .inject(&segment(&t, TCP_FIN | TCP_ACK, ack.wrapping_sub(1), seq));
    p.settle(10);
    let after = p.server.link().take_captured();
    assert_eq!(after.len(), 1);
    assert_ne!(after[0][47] & TCP_RST, 0);
}

#[test]
fn past_max_time_waits_the_oldest_ends_early_and_is_counted() {
    let server = StackConfig {
        max_time_waits: Some(3),
        ..server_config(8)
    };
    let mut p = Pair::new(server, client_config(8, 1));
    for _ in 0..5 {
        let (c, s) = p.establish();
        p.server.close(s);
        p.settle(100);
        p.client.close(c);
        p.settle(100);
    }
    let st = p.server.stats();
    assert_eq!((st.time_waits, st.time_wait_parked, st.time_wait_evicted), (3, 5, 2));
}

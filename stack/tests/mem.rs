//! The stack against itself over the in-memory wire: TCP behaviour, the connection table, buffers,
//! timers, capacity, and hostile frames. No privileges needed.
//! (Over 600 lines: one scenario per test over the same two-stack rig, `common/mod.rs`.)

mod common;

use std::net::SocketAddrV4;

use common::*;
use smoltcp::socket::tcp::State;
use smoltcp::time::Duration;
use stack::mem_link::Impairments;
use stack::{CloseReason, ConnectError, Event, StackConfig};

#[test]
fn handshake_reports_both_ends_with_matching_tuples() {
    let mut p = Pair::new(server_config(16), client_config(16, 1));
    let (c, s) = p.establish();
    let ct = p.client.tuple(c).unwrap();
    let st = p.server.tuple(s).unwrap();
    assert_eq!(ct.local(), st.remote());
    assert_eq!(ct.remote(), st.local());
    assert_eq!(st.local(), (SERVER, PORT));
    assert_eq!(p.server.state(s), Some(State::Established));
    assert_eq!(p.client.state(c), Some(State::Established));
    assert_eq!(p.server.stats().accepted, 1);
    assert_eq!(p.client.stats().connected, 1);
    assert_eq!(p.server.in_use(), 1);
    assert_eq!(p.server.conns().collect::<Vec<_>>(), vec![s]);
    // The server learned the client's MAC from its SYN.
    assert_eq!(p.server.next_hop(), Some(CLIENT_MAC));
}

#[test]
fn data_both_ways_much_larger_than_the_buffers() {
    let mut p = Pair::new(server_config(4), client_config(4, 1));
    let (c, s) = p.establish();
    let up = pattern(200_000, 1);
    let down = pattern(150_000, 2);
    assert_eq!(transfer(&mut p, c, s, &up, true, 100_000), up);
    assert_eq!(transfer(&mut p, c, s, &down, false, 100_000), down);
    // The 512-byte buffers filled up and the writer was told when room came back.
    assert!(p.client_events.contains(&Event::Writable(c)));
    assert!(p.server_events.contains(&Event::Writable(s)));
}

#[test]
fn data_survives_loss_duplication_and_reordering() {
    for seed in 1..=3 {
        let impair = Impairments {
            loss: 0.05,
            duplicate: 0.05,
            reorder: 0.05,
        };
        let mut p = Pair::with_wire(server_config(4), client_config(4, 1), impair, seed);
        // The handshake itself may lose segments: let the retransmission timers run.
        let c = p.connect();
        p.advance(Duration::from_secs(5));
        assert!(p.client_events.contains(&Event::Connected(c)), "seed {seed}");
        let s = p.server.conns().next().expect("accepted");
        let up = pattern(30_000, 3);
        let down = pattern(30_000, 4);
        assert_eq!(transfer(&mut p, c, s, &up, true, 2_000_000), up, "seed {seed}");
        assert_eq!(transfer(&mut p, c, s, &down, false, 2_000_000), down, "seed {seed}");
        let lost = p.client.link_counters().tx_dropped + p.server.link_counters().tx_dropped;
        assert!(lost > 0, "the wire dropped nothing: the test did not test loss");
        let recoveries = |s: stack::StackStats| s.timer_fires + s.tail_probes;
        assert!(recoveries(p.server.stats()) + recoveries(p.client.stats()) > 0);
    }
}

#[test]
fn a_lost_segment_is_retransmitted_by_the_timer() {
    // Without the tail probe (`loss.rs` tests it), smoltcp's own timer.
    let client = StackConfig {
        tail_probe: None,
        ..client_config(4, 1)
    };
    let mut p = Pair::new(server_config(4), client);
    let (c, s) = p.establish();
    p.client.link().cut_outgoing(true);
    assert_eq!(p.client.write(c, b"hello"), 5);
    p.settle(100);
    assert_eq!(p.server.readable(s), 0, "the segment was dropped");
    p.client.link().cut_outgoing(false);
    // Nothing happens until the retransmission timeout (1 s minimum in smoltcp).
    p.advance(Duration::from_millis(500));
    assert_eq!(p.server.readable(s), 0);
    p.advance(Duration::from_millis(1_000));
    let mut buf = [0u8; 16];
    assert_eq!(p.server.read(s, &mut buf), 5);
    assert_eq!(&buf[..5], b"hello");
    assert!(p.client.stats().timer_fires > 0);
}

#[test]
fn reset_by_the_peer_is_reported_and_frees_both_slots() {
    let mut p = Pair::new(server_config(4), client_config(4, 1));
    let (c, s) = p.establish();
    p.client.abort(c);
    p.settle(100);
    assert!(p.server_events.contains(&Event::Closed(s, CloseReason::Aborted)));
    assert_eq!(p.server.state(s), Some(State::Closed));
    p.server.close(s);
    p.settle(100);
    assert_eq!(p.server.in_use(), 0);
    assert_eq!(p.client.in_use(), 0);
    // A released id is dead: reads and writes do nothing.
    assert_eq!(p.server.write(s, b"x"), 0);
    assert_eq!(p.server.state(s), None);
}

#[test]
fn connecting_to_a_port_nobody_listens_on_is_refused_with_rst() {
    let mut p = Pair::new(server_config(4), client_config(4, 1));
    let c = p.client.connect(SocketAddrV4::new(SERVER, 9999)).unwrap();
    p.settle(100);
    assert!(p.client_events.contains(&Event::Closed(c, CloseReason::Aborted)));
    assert_eq!(p.server.stats().rx_no_connection, 1);
    assert_eq!(p.client.stats().connect_failed, 1);
    assert_eq!(p.server.in_use(), 0);
    p.client.close(c);
    p.settle(10);
    assert_eq!(p.client.in_use(), 0);
}

#[test]
fn active_close_then_passive_close_ends_in_time_wait_then_frees() {
    let mut p = Pair::new(server_config(4), client_config(4, 1));
    let (c, s) = p.establish();
    // Bytes queued before the FIN are delivered before it.
    p.client.write(c, b"last words");
    p.client.close(c);
    p.settle(100);
    assert_eq!(p.server.state(s), Some(State::CloseWait));
    // The FIN is reported at once (an application waiting for the rest of a message must hear
    // none will come), and the bytes before it are still there to read.
    assert!(p.server_events.contains(&Event::Closed(s, CloseReason::PeerClosed)));
    let mut buf = [0u8; 32];
    assert_eq!(p.server.read(s, &mut buf), 10);
    assert_eq!(&buf[..10], b"last words");
    p.server.take_events(&mut p.server_events);
    let closed = p
        .server_events
        .iter()
        .filter(|e| matches!(e, Event::Closed(..)))
        .count();
    assert_eq!(closed, 1, "reported once: {:?}", p.server_events);
    p.server.close(s);
    p.settle(100);
    // The server (passive closer) is done; the client holds the 4-tuple in TIME-WAIT, parked
    // outside the slots.
    assert_eq!(p.server.in_use(), 0);
    assert_eq!((p.client.in_use(), p.client.stats().time_waits), (0, 1));
    assert_eq!(p.client.stats().retired, 1);
    p.advance(Duration::from_secs(11));
    assert_eq!(p.client.stats().time_waits, 0);
}

#[test]
fn fin_while_the_peer_is_still_sending_half_closes() {
    let mut p = Pair::new(server_config(4), client_config(4, 1));
    let (c, s) = p.establish();
    // Server closes its side first (FIN-WAIT), the client keeps sending, then closes.
    p.server.write(s, b"bye");
    p.server.close(s);
    p.settle(100);
    let mut buf = [0u8; 8];
    assert_eq!(p.client.read(c, &mut buf), 3);
    p.client.take_events(&mut p.client_events);
    assert!(p.client_events.contains(&Event::Closed(c, CloseReason::PeerClosed)));
    assert_eq!(p.client.state(c), Some(State::CloseWait));
    p.client.close(c);
    p.settle(100);
    assert_eq!(p.client.in_use(), 0, "LAST-ACK answered: the client slot is free");
    // The server went FIN-WAIT-2 → TIME-WAIT, parked outside the slots until it ends.
    assert_eq!((p.server.in_use(), p.server.stats().time_waits), (0, 1));
    p.advance(Duration::from_secs(11));
    assert_eq!(p.server.stats().time_waits, 0);
}

#[test]
fn closing_during_the_handshake_frees_the_slot() {
    let mut p = Pair::new(server_config(4), client_config(4, 1));
    p.server.link().cut_outgoing(true); // no SYN-ACK reaches the client
    let c = p.connect();
    p.settle(20);
    assert_eq!(p.client.state(c), Some(State::SynSent));
    assert_eq!(p.server.in_use(), 1, "SYN-RECEIVED holds a slot");
    p.client.close(c);
    p.settle(20);
    assert_eq!(p.client.in_use(), 0);
    // The server's half-open socket gives up after the TCP timeout (SYN-ACK retransmissions).
    p.server.link().cut_outgoing(false);
    p.advance(Duration::from_secs(31));
    assert_eq!(p.server.in_use(), 0);
    assert!(p.server.stats().handshakes_failed >= 1);
}

#[test]
fn simultaneous_close_ends_with_both_slots_free() {
    let mut p = Pair::new(server_config(4), client_config(4, 1));
    let (c, s) = p.establish();
    // Both FINs cross on the wire.
    p.client.close(c);
    p.server.close(s);
    p.settle(100);
    p.advance(Duration::from_secs(11));
    assert_eq!(p.client.in_use(), 0);
    assert_eq!(p.server.in_use(), 0);
}

#[test]
fn a_peer_that_never_closes_is_reset_after_the_linger_time() {
    let mut server = server_config(4);
    server.close_linger = Duration::from_secs(5);
    let mut p = Pair::new(server, client_config(4, 1));
    let (c, s) = p.establish();
    p.server.close(s);
    p.settle(100);
    // The client never calls close: the server sits in FIN-WAIT-2 (smoltcp has no timeout there).
    p.advance(Duration::from_secs(3));
    assert_eq!(p.server.in_use(), 1);
    p.advance(Duration::from_secs(3));
    assert_eq!(p.server.in_use(), 0);
    assert_eq!(p.server.stats().linger_resets, 1);
    // The client got the RST.
    assert!(
        p.client_events.contains(&Event::Closed(c, CloseReason::Aborted)) || p.client.state(c) == Some(State::Closed)
    );
}

#[test]
fn time_wait_holds_the_tuple_then_it_can_be_reused() {
    let mut client = client_config(4, 1);
    client.source_ports = (40000, 40000); // one source port: every connection is the same 4-tuple
    let mut p = Pair::new(server_config(4), client);
    let (c, s) = p.establish();
    let first = p.client.tuple(c).unwrap();
    p.client.close(c);
    p.settle(100);
    p.server.close(s);
    p.settle(100);
    // The client is in TIME-WAIT on the only tuple it has.
    assert_eq!(
        p.client.connect(SocketAddrV4::new(SERVER, PORT)),
        Err(ConnectError::NoSourcePort(SocketAddrV4::new(SERVER, PORT)))
    );
    p.advance(Duration::from_secs(11));
    let (c2, s2) = p.establish();
    assert_eq!(p.client.tuple(c2), Some(first));
    assert_eq!(p.client.write(c2, b"again"), 5);
    p.settle(100);
    assert_eq!(p.server.readable(s2), 5);
}

#[test]
fn a_syn_on_a_tuple_the_server_holds_in_time_wait_starts_a_new_connection() {
    let mut client = client_config(4, 1);
    client.source_ports = (40001, 40001);
    let mut p = Pair::new(server_config(4), client);
    let (c, s) = p.establish();
    // The server closes first, so the server ends in TIME-WAIT and the client is free at once.
    p.server.close(s);
    p.settle(100);
    p.client.take_events(&mut p.client_events);
    p.client.close(c);
    p.settle(100);
    assert_eq!(p.client.in_use(), 0);
    assert_eq!(p.server.stats().time_waits, 1, "server in TIME-WAIT");
    let (c2, s2) = p.establish();
    assert_eq!(p.server.stats().time_wait_reused, 1);
    assert_eq!(p.client.write(c2, b"new"), 3);
    p.settle(100);
    assert_eq!(p.server.readable(s2), 3);
}

#[test]
fn syn_flood_past_capacity_is_refused_and_existing_connections_keep_working() {
    let cap = 8;
    let mut p = Pair::new(server_config(cap), client_config(64, 1));
    let mut held = vec![];
    for _ in 0..cap {
        held.push(p.establish());
    }
    assert_eq!(p.server.in_use(), cap);
    let flood: Vec<_> = (0..40).map(|_| p.connect()).collect();
    p.settle(200);
    assert_eq!(p.server.stats().syn_refused, 40);
    assert_eq!(p.server.in_use(), cap);
    for c in &flood {
        assert!(p.client_events.contains(&Event::Closed(*c, CloseReason::Aborted)));
    }
    for (i, (c, s)) in held.iter().enumerate() {
        let msg = format!("still here {i}");
        assert_eq!(p.client.write(*c, msg.as_bytes()), msg.len());
        p.settle(100);
        let mut buf = [0u8; 64];
        let n = p.server.read(*s, &mut buf);
        assert_eq!(&buf[..n], msg.as_bytes());
    }
}

#[test]
fn hostile_frames_are_counted_and_answered_at_most_with_rst() {
    let mut p = Pair::new(server_config(4), client_config(4, 1));
    let (c, s) = p.establish();
    let mut rng = fastrand::Rng::with_seed(9);
    // Frames with an IPv4 header and random rest, random junk, and truncations.
    for i in 0..5_000 {
        let len = rng.usize(0..200);
        let mut f: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        if i % 2 == 0 && f.len() >= 34 {
            f[12] = 0x08;
            f[13] = 0x00;
            f[14] = 0x45;
            f[23] = 6;
            f[30..34].copy_from_slice(&SERVER.octets());
            let total = (f.len() - 14) as u16;
            f[16..18].copy_from_slice(&total.to_be_bytes());
            f[20] = 0;
            f[21] = 0;
        }
        p.server.link().inject(&f);
    }
    p.settle(1000);
    let st = p.server.stats();
    assert_eq!(
        st.rx_frames,
        st.rx_segments + st.rx_not_ipv4 + st.rx_not_tcp + st.rx_malformed + st.rx_no_connection + st.syn_refused
    );
    assert!(st.rx_malformed > 0 && st.rx_not_ipv4 > 0);
    // The real connection is untouched.
    assert_eq!(p.client.write(c, b"ok"), 2);
    p.settle(100);
    assert_eq!(p.server.readable(s), 2);
}

#[test]
fn a_segment_for_no_connection_gets_a_rst() {
    let mut p = Pair::new(server_config(4), client_config(4, 1));
    let (c, s) = p.establish();
    p.server.abort(s);
    // Drop the server's RST so the client does not learn about the abort.
    p.server.link().cut_outgoing(true);
    p.settle(10);
    p.server.link().cut_outgoing(false);
    assert_eq!(p.server.in_use(), 0);
    assert_eq!(p.client.write(c, b"anyone?"), 7);
    p.settle(100);
    assert_eq!(p.server.stats().rx_no_connection, 1);
    assert!(p.client_events.contains(&Event::Closed(c, CloseReason::Aborted)));
}

#[test]
fn memory_report_adds_up() {
    let p = Pair::new(server_config(1000), client_config(4, 1));
    let m = p.server.memory();
    assert_eq!(m.slots, 1000);
    assert_eq!(m.arena_bytes, 1000 * (512 + 512));
    assert_eq!(m.table_bytes, 2048 * 4);
    let sock = m.socket_bytes / 1000;
    assert!(sock <= 400, "a smoltcp socket grew to {sock} bytes");
    assert_eq!(m.slot_bytes, 1000 * 40);
    assert!(m.total() >= m.socket_bytes + m.arena_bytes + m.table_bytes + m.slot_bytes);
}

#[test]
fn user_data_is_per_connection() {
    let mut p = Pair::new(server_config(8), client_config(8, 1));
    let (_, s1) = p.establish();
    let (_, s2) = p.establish();
    p.server.set_user(s1, 11);
    p.server.set_user(s2, 22);
    assert_eq!(p.server.user(s1), Some(11));
    assert_eq!(p.server.user(s2), Some(22));
    p.server.close(s1);
    assert_eq!(p.server.user(s1), None);
}

#[test]
fn bad_configuration_is_refused_with_a_reason() {
    let (a, _b) = stack::mem_link::pair(Impairments::default(), 1);
    let bad = stack::StackConfig {
        rx_buf: 10,
        ..server_config(4)
    };
    let err = stack::Stack::new(bad, a, smoltcp::time::Instant::from_millis(0))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("rx_buf"), "{err}");
}

#[test]
fn a_hundred_thousand_connections_each_carry_their_own_bytes() {
    let n = 100_000;
    let mut p = Pair::new(server_config(n), client_config(n, 2));
    let ids = p.connect_many(n);
    assert_eq!(p.server.stats().accepted, n as u64);
    assert_eq!(p.client.stats().connected, n as u64);
    assert_eq!(p.server.in_use(), n);
    // Every client sends its index; the server answers with what it read plus its own view of
    // the client's port, so a demux mistake anywhere shows.
    for (i, c) in ids.iter().enumerate() {
        p.client.write(*c, &(i as u32).to_be_bytes());
        if i % 2000 == 1999 {
            p.settle(100);
        }
    }
    p.settle(1000);
    let server_ids: Vec<_> = p.server.conns().collect();
    assert_eq!(server_ids.len(), n);
    for s in server_ids {
        let mut buf = [0u8; 8];
        assert_eq!(p.server.read(s, &mut buf), 4);
        let port = p.server.tuple(s).unwrap().remote_port;
        buf[4..6].copy_from_slice(&port.to_be_bytes());
        assert_eq!(p.server.write(s, &buf[..6]), 6);
    }
    p.settle(100_000);
    for (i, c) in ids.iter().enumerate() {
        let mut buf = [0u8; 8];
        let got = p.client.read(*c, &mut buf);
        assert_eq!(
            got,
            6,
            "connection {i}: state {:?} tuple {:?} client {:?} server {:?}",
            p.client.state(*c),
            p.client.tuple(*c),
            p.client.stats(),
            p.server.stats()
        );
        assert_eq!(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]), i as u32);
        assert_eq!(
            u16::from_be_bytes([buf[4], buf[5]]),
            p.client.tuple(*c).unwrap().local_port
        );
    }
    // Idle now: no timers left to run (no delayed ACKs, no keep-alives, nothing in flight).
    let fires = p.server.stats().timer_fires;
    p.advance(Duration::from_secs(2));
    assert_eq!(p.server.stats().timer_fires, fires, "idle connections woke the server");
}

#[test]
fn idle_connections_outlive_the_tcp_timeout_and_cost_no_timers() {
    let mut p = Pair::new(server_config(4), client_config(4, 1));
    let (c, s) = p.establish();
    assert_eq!(p.client.write(c, b"ping"), 4);
    p.settle(100);
    let fires = p.server.stats().timer_fires + p.client.stats().timer_fires;
    p.advance(Duration::from_secs(45));
    assert_eq!(p.server.state(s), Some(State::Established));
    assert_eq!(p.client.state(c), Some(State::Established));
    assert_eq!(p.server.stats().timer_fires + p.client.stats().timer_fires, fires);
    assert_eq!(p.server.write(s, b"pong"), 4);
    p.settle(100);
    assert_eq!(p.client.readable(c), 4);
}

#[test]
fn unacknowledged_data_to_a_vanished_peer_gives_up_after_the_data_timeout() {
    let mut p = Pair::new(server_config(4), client_config(4, 1));
    let (c, s) = p.establish();
    p.client.link().cut_outgoing(true); // the client's ACKs never arrive
    assert_eq!(p.server.write(s, b"are you there"), 13);
    p.advance(Duration::from_secs(110));
    assert_eq!(p.server.state(s), Some(State::Established), "still retransmitting");
    p.advance(Duration::from_secs(15));
    assert!(p.server_events.contains(&Event::Closed(s, CloseReason::Aborted)));
    let _ = c;
}

#[test]
fn the_echo_app_relays_far_more_than_its_buffers_with_flow_control() {
    let mut p = Pair::new(server_config(4), client_config(4, 1));
    let (c, _s) = p.establish();
    let data = pattern(50_000, 5);
    let (mut sent, mut back) = (0, Vec::new());
    let mut stats = stack::echo::EchoStats::default();
    let mut buf = [0u8; 4096];
    for _ in 0..200_000 {
        if sent < data.len() {
            sent += p.client.write(c, &data[sent..]);
        }
        p.step();
        let events = std::mem::take(&mut p.server_events);
        stack::echo::handle(&mut p.server, &events, &mut stats);
        loop {
            let n = p.client.read(c, &mut buf);
            if n == 0 {
                break;
            }
            back.extend_from_slice(&buf[..n]);
        }
        if back.len() == data.len() {
            break;
        }
        p.now += Duration::from_millis(1);
    }
    assert_eq!(back, data);
    assert_eq!(stats.bytes, data.len() as u64);
}

#[test]
fn closing_a_long_idle_connection_is_graceful_even_on_a_slow_link() {
    let mut p = Pair::new(server_config(4), client_config(4, 1));
    let (c, s) = p.establish();
    p.advance(Duration::from_secs(31));
    // The client's ACK of our FIN is late (a slow link): no RST may follow the FIN meanwhile.
    p.client.link().cut_outgoing(true);
    p.server.close(s);
    p.advance(Duration::from_millis(500));
    p.client.take_events(&mut p.client_events);
    assert_eq!(p.client.state(c), Some(State::CloseWait), "{:?}", p.client_events);
    assert!(!p.client_events.contains(&Event::Closed(c, CloseReason::Aborted)));
    // The FIN is retransmitted, the client closes too, and both end cleanly.
    p.client.link().cut_outgoing(false);
    p.client.close(c);
    p.advance(Duration::from_secs(12));
    assert_eq!(p.server.in_use(), 0);
    assert_eq!(p.client.in_use(), 0);
    assert_eq!(p.server.stats().linger_resets, 0);
}

#[test]
fn want_write_with_room_already_reports_writable() {
    let mut p = Pair::new(server_config(4), client_config(4, 1));
    let (_c, s) = p.establish();
    p.server.want_write(s);
    p.settle(10);
    assert!(p.server_events.contains(&Event::Writable(s)), "{:?}", p.server_events);
}

#[test]
fn keep_alive_gives_up_on_a_dead_peer_and_keeps_a_live_one() {
    let mut server = server_config(4);
    server.keep_alive = Some(Duration::from_secs(5));
    let mut p = Pair::new(server, client_config(4, 1));
    let (_c1, live) = p.establish();
    let (c2, dead) = p.establish();
    // The second client vanishes without a trace: its RST is lost on the wire.
    p.client.link().cut_outgoing(true);
    p.client.abort(c2);
    p.settle(10);
    p.client.link().cut_outgoing(false);
    p.advance(Duration::from_secs(40));
    assert!(
        p.server_events.contains(&Event::Closed(dead, CloseReason::Aborted)),
        "{:?}",
        p.server_events
    );
    assert_eq!(p.server.state(live), Some(State::Established));
}

#[test]
fn a_syn_on_a_time_wait_tuple_of_a_port_nobody_listens_on_is_not_accepted() {
    let mut p = Pair::new(server_config(4), client_config(4, 1));
    let (c, s) = p.establish();
    // The client closes first, so the client holds the tuple in TIME-WAIT on its source port.
    let t = p.client.tuple(c).unwrap();
    p.client.close(c);
    p.settle(100);
    p.server.close(s);
    p.settle(100);
    assert_eq!(p.client.stats().time_waits, 1);
    // A well-formed SYN from the server's address and port to that source port.
    let f = tcp_frame(SERVER_MAC, t.remote(), t.local(), 0x02, 7, 0, 1024, &[], &[]);
    // The client answers with a challenge ACK (RFC 5961 §4), to which the real server, holding
    // nothing, would answer with an exact RST that ends the TIME-WAIT: keep it from arriving.
    p.client.link().cut_outgoing(true);
    p.client.link().inject(&f);
    p.settle(10);
    assert_eq!(p.client.stats().time_wait_syn_refused, 1);
    assert_eq!(p.client.stats().time_wait_acks, 1);
    assert_eq!(p.client.stats().accepted, 0);
    assert_eq!(p.client.stats().time_wait_reused, 0);
    assert_eq!(p.client.stats().time_waits, 1, "the TIME-WAIT is still there");
}

/// A broadcast writes to every connection at once; with a link that takes few frames per flush,
/// each flush must stop at the full link instead of walking every remaining socket (which made a
/// fan-out cost N per ring-full of frames). Every connection still gets its bytes.
#[test]
fn a_fan_out_larger_than_the_link_costs_one_pass_per_connection() {
    const N: usize = 2_000;
    let mut p = Pair::new(server_config(N), client_config(N, 1));
    let mut server_ids = Vec::new();
    for _ in 0..N {
        p.connect();
    }
    p.settle(10_000);
    for e in p.server_events.drain(..) {
        if let Event::Accepted(id) = e {
            server_ids.push(id);
        }
    }
    assert_eq!(server_ids.len(), N);
    p.client_events.clear();
    p.server.link().set_capacity(64);
    let passes_before = p.server.stats().egress_passes;
    let message = pattern(100, 3);
    for &s in &server_ids {
        assert_eq!(p.server.write(s, &message), message.len());
    }
    p.settle(100_000);
    let passes = p.server.stats().egress_passes - passes_before;
    // One pass sends each message, one more answers the client's ACK at most.
    assert!(
        passes <= 2 * N as u64 + 64,
        "{passes} egress passes for {N} connections"
    );
    let mut received = 0;
    for e in p.client_events.drain(..).collect::<Vec<_>>() {
        if let Event::Readable(c) = e {
            let mut buf = [0u8; 256];
            let n = p.client.read(c, &mut buf);
            assert_eq!(&buf[..n], &message[..]);
            received += 1;
        }
    }
    assert_eq!(received, N);
}

/// `peek` copies across the ring's wrap without consuming; `discard` consumes exactly.
#[test]
fn peek_sees_both_parts_of_a_wrapped_ring_and_discard_consumes() {
    let mut p = Pair::new(server_config(4), client_config(4, 1));
    let (c, s) = p.establish();
    let rx = p.server.rx_capacity();
    // Fill most of the ring and consume it, so the next bytes wrap around its end.
    let first = pattern(rx - 10, 1);
    p.client.write(c, &first);
    p.settle(100);
    assert_eq!(p.server.discard(s, first.len()), first.len());
    let second = pattern(40, 2);
    p.client.write(c, &second);
    p.settle(100);
    let mut buf = vec![0u8; rx];
    assert_eq!(p.server.peek(s, &mut buf), 40);
    assert_eq!(&buf[..40], &second[..]);
    assert_eq!(p.server.readable(s), 40, "peek consumed nothing");
    assert_eq!(p.server.discard(s, 25), 25);
    assert_eq!(p.server.peek(s, &mut buf), 15);
    assert_eq!(&buf[..15], &second[25..]);
    assert_eq!(p.server.discard(s, 100), 15);
    assert!(p.server.is_owned(s));
    p.server.close(s);
    assert!(!p.server.is_owned(s));
}

#[test]
fn a_peer_that_stops_reading_is_seen_to_close_its_window_and_to_open_it_again() {
    let mut p = Pair::new(server_config(4), client_config(4, 1));
    let (c, s) = p.establish();
    assert!(!p.server.peer_window_closed(s), "a fresh peer has room");
    // The client reads nothing: its receive buffer fills and it advertises a zero window.
    let data = pattern(10_000, 5);
    let mut sent = 0;
    for _ in 0..50 {
        sent += p.server.write(s, &data[sent..]);
        p.settle(200);
    }
    assert!(sent < data.len(), "the client cannot have taken everything");
    assert!(p.server.peer_window_closed(s), "the window is shut");
    // It reads everything the server had queued: the window opens again.
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    for _ in 0..20 {
        got += p.client.read(c, &mut buf);
        p.advance(Duration::from_millis(100));
    }
    assert_eq!(got, sent, "everything written arrived");
    assert!(!p.server.peer_window_closed(s), "the window is open again");
}

/// Buffers hold bytes for moments: once every buffer on a page has stayed empty for a second the
/// page goes back to the kernel, and the connections carry their bytes again afterwards (a
/// released page reads back as zeros; no byte of a live buffer is lost). Switched off, the
/// pages stay.
#[test]
fn idle_connections_give_their_buffer_pages_back_and_carry_bytes_again() {
    // A read takes the contiguous part of the ring: two reads across its wrap.
    fn read_200(stack: &mut stack::Stack<stack::mem_link::MemLink>, id: stack::ConnId, buf: &mut [u8; 256]) -> usize {
        let first = stack.read(id, buf);
        first + stack.read(id, &mut buf[first..200])
    }
    for release in [true, false] {
        let n = 8_000;
        let mut server = server_config(n);
        if !release {
            server.release_idle_buffers = None;
        }
        let mut p = Pair::new(server, client_config(n, 1));
        let ids = p.connect_many(n);
        let server_ids: Vec<_> = p.server.conns().collect();
        assert_eq!(server_ids.len(), n);
        let round = |p: &mut Pair, seed: u8| {
            for &c in &ids {
                assert_eq!(p.client.write(c, &pattern(200, seed)), 200, "seed {seed}");
            }
            p.settle(100_000);
            for &s in &server_ids {
                let mut buf = [0u8; 256];
                assert_eq!(read_200(&mut p.server, s, &mut buf), 200, "seed {seed}");
                assert_eq!(&buf[..200], &pattern(200, seed)[..], "seed {seed}");
                assert_eq!(p.server.write(s, &buf[..200]), 200);
            }
            p.settle(100_000);
            for &c in &ids {
                let mut buf = [0u8; 256];
                assert_eq!(read_200(&mut p.client, c, &mut buf), 200, "seed {seed}");
                assert_eq!(&buf[..200], &pattern(200, seed)[..], "seed {seed}");
            }
        };
        round(&mut p, 1);
        let busy = p.server.resident_memory().arena_bytes;
        // Every buffer was written: all of them resident.
        assert!(busy >= n * 512, "{busy}");
        p.advance(Duration::from_millis(1500));
        let idle = p.server.resident_memory().arena_bytes;
        if release {
            assert!(idle < busy / 50, "released: {idle} of {busy} bytes still resident");
            assert!(p.server.stats().buffer_pages_released as usize >= busy / 4096 - 2);
        } else {
            assert_eq!(idle, busy, "kept");
            assert_eq!(p.server.stats().buffer_pages_released, 0);
        }
        // Bytes again, through pages that were given back.
        round(&mut p, 2);
        round(&mut p, 3);
    }
}

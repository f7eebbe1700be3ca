//! The server core over the userspace stack on an in-memory wire, against a client stack: what
//! tiny per-connection buffers must still carry (large heads and frames, bursts of pushes), and
//! what happens to a client that stops reading.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::time::{Duration, Instant};
use stack::mem_link::{self, MemLink};
use stack::{CloseReason, ConnId, Event, Stack, StackConfig};

use super::serve::ServedStack;
use crate::core::device::DeviceHasher;
use crate::core::frame::{self, Op, Role};
use crate::core::{CoreConfig, ServerCore};

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

struct Rig {
    srv: ServedStack<MemLink>,
    core: ServerCore,
    cli: Stack<MemLink>,
    now: Instant,
    cli_events: Vec<Event>,
}

impl Rig {
    /// A server with 256-byte buffers and `spill` spill buffers of `spill_size` bytes each, and
    /// a small (16 KiB) message log, so that a client that stops reading falls out of it within a
    /// test.
    fn new(echo: bool, spill: usize, spill_size: usize, client_rx: usize) -> Rig {
        Rig::build(echo, spill, spill_size, client_rx, 16, 16 << 10)
    }

    fn build(echo: bool, spill: usize, spill_size: usize, client_rx: usize, conns: usize, log_size: usize) -> Rig {
        let (a, b) = mem_link::pair(Default::default(), 7);
        let now = Instant::from_millis(1_000);
        let srv_cfg = StackConfig {
            max_conns: conns,
            rx_buf: 256,
            tx_buf: 256,
            our_mac: [2, 0, 0, 0, 0, 1],
            rx_batch: 4 * conns,
            ..StackConfig::default()
        };
        let mut stack = Stack::new(srv_cfg, a, now).unwrap();
        stack.listen(8080);
        let core = ServerCore::new(
            CoreConfig {
                echo,
                max_frame: 4096,
                idle_timeout_ms: 0,
                request_timeout_ms: 5_000,
                device_hasher: DeviceHasher::new([1, 2]),
                log_size,
                ..CoreConfig::default()
            },
            conns,
            0,
        );
        let cli_cfg = StackConfig {
            max_conns: conns,
            rx_batch: 4 * conns,
            rx_buf: client_rx,
            tx_buf: 4096,
            addr: Ipv4Addr::new(198, 19, 0, 1),
            source_addrs: vec![Ipv4Addr::new(198, 19, 0, 1)],
            our_mac: [2, 0, 0, 0, 0, 2],
            next_hop_mac: Some([2, 0, 0, 0, 0, 1]),
            ..StackConfig::default()
        };
        Rig {
            srv: ServedStack::new(stack, spill, spill_size),
            core,
            cli: Stack::new(cli_cfg, b, now).unwrap(),
            now,
            cli_events: Vec::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.now.total_millis() as u64
    }

    fn step(&mut self) {
        let mut events = Vec::new();
        self.srv.io.stack.poll(self.now, &mut events);
        let now_ms = self.now_ms();
        for ev in events {
            self.srv.event(&mut self.core, ev, now_ms);
        }
        // As the worker does every turn and tick: connections waiting for a spill buffer, timers
        // of the core, closes waiting for output.
        self.srv.feed_waiting(&mut self.core, now_ms);
        self.srv.call(&mut self.core, now_ms, |core, t| core.tick(now_ms, t));
        self.srv.io.stack.flush(self.now);
        self.cli.poll(self.now, &mut self.cli_events);
        self.cli.flush(self.now);
        self.now += Duration::from_millis(1);
    }

    fn settle(&mut self, rounds: usize) {
        for _ in 0..rounds {
            self.step();
        }
    }

    fn connect(&mut self) -> ConnId {
        let c = self.cli.connect(SocketAddrV4::new(SERVER, 8080)).unwrap();
        self.settle(20);
        assert!(self.cli_events.contains(&Event::Connected(c)));
        c
    }

    /// Everything the client has received so far.
    fn drain(&mut self, c: ConnId) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = self.cli.read(c, &mut buf);
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    fn send(&mut self, c: ConnId, bytes: &[u8]) {
        assert_eq!(self.cli.write(c, bytes), bytes.len());
        self.settle(50);
    }

    /// Upgrade `c` with a request head of about `head_len` bytes; returns the server's answer.
    fn upgrade(&mut self, c: ConnId, head_len: usize) -> Vec<u8> {
        let mut req = format!(
            "GET /ws?id=d{} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n",
            c.0
        );
        let pad = head_len.saturating_sub(req.len() + 14);
        req.push_str(&format!("X-Pad: {}\r\n\r\n", "p".repeat(pad)));
        self.send(c, req.as_bytes());
        self.drain(c)
    }
}

fn masked(op: Op, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode(&mut out, true, op, payload, Some([9, 8, 7, 6]));
    out
}

/// Server frames in `wire`, as (opcode, payload).
fn frames(mut wire: Vec<u8>) -> Vec<(Op, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Ok(Some(f)) = frame::decode(&mut wire[pos..], Role::Client, 1 << 20) {
        out.push((f.op, f.payload.to_vec()));
        pos += f.wire_len;
    }
    assert_eq!(pos, wire.len(), "whole frames only");
    out
}

#[test]
fn a_request_head_longer_than_the_receive_buffer_upgrades_through_a_spill_buffer() {
    let mut r = Rig::new(false, 4, 4096, 4096);
    let c = r.connect();
    let answer = r.upgrade(c, 1500);
    assert!(
        answer.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(r.core.stats().upgrades, 1);
    assert_eq!(
        r.srv.io.inp.in_use(),
        0,
        "the buffer went back once the head was parsed"
    );
}

#[test]
fn a_frame_longer_than_both_buffers_is_echoed_whole() {
    let mut r = Rig::new(true, 4, 4096, 4096);
    let c = r.connect();
    r.upgrade(c, 200);
    let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    r.send(c, &masked(Op::Binary, &payload));
    r.settle(200);
    let got = frames(r.drain(c));
    assert_eq!(got, vec![(Op::Binary, payload)]);
    assert_eq!(r.core.stats().echoed, 1);
    assert_eq!(r.srv.io.inp.in_use(), 0);
    assert_eq!(r.core.output_behind(), 0, "nothing waits in the log");
}

#[test]
fn a_burst_of_pushes_beyond_the_send_buffer_arrives_whole_and_in_order() {
    let mut r = Rig::new(false, 4, 4096, 4096);
    let c = r.connect();
    r.upgrade(c, 200);
    let now = r.now_ms();
    for i in 0..10 {
        let msg = format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(80));
        r.srv
            .call(&mut r.core, now, |core, t| core.broadcast(msg.as_bytes(), i, now, t))
            .unwrap();
    }
    assert_eq!(
        r.core.output_behind(),
        1,
        "~1 KB waits in the log behind the 256-byte send buffer"
    );
    r.settle(300);
    let got = frames(r.drain(c));
    assert_eq!(got.len(), 10);
    for (i, (op, payload)) in got.iter().enumerate() {
        assert_eq!(*op, Op::Text);
        assert!(payload.starts_with(format!("{{\"n\":{i},").as_bytes()));
    }
    assert_eq!(r.core.output_behind(), 0);
    assert_eq!(r.core.stats().slow_readers_closed, 0);
}

#[test]
fn closing_with_output_waiting_sends_it_all_then_fin() {
    let mut r = Rig::new(false, 4, 4096, 4096);
    let c = r.connect();
    r.upgrade(c, 200);
    let now = r.now_ms();
    for seq in 0..6 {
        r.srv
            .call(&mut r.core, now, |core, t| core.broadcast(&[b'm'; 100], seq, now, t))
            .unwrap();
    }
    r.srv.call(&mut r.core, now, |core, t| core.shutdown(now, t));
    r.settle(300);
    let got = frames(r.drain(c));
    r.settle(5);
    assert_eq!(got.len(), 7, "six messages, then the close frame");
    assert_eq!(got[6].0, Op::Close);
    assert_eq!(&got[6].1[..2], &1001u16.to_be_bytes());
    assert!(
        r.cli_events.contains(&Event::Closed(c, CloseReason::PeerClosed)),
        "FIN after the last byte: {:?}",
        r.cli_events
    );
}

#[test]
fn a_client_that_stops_reading_is_closed_as_a_slow_reader_once_it_falls_out_of_the_log() {
    // Its 4 KiB window fills, then the server's 256-byte send buffer; its messages wait in the
    // (16 KiB) log, while another client that reads gets every one of them.
    let mut r = Rig::new(false, 4, 1024, 4096);
    let stuck = r.connect();
    r.upgrade(stuck, 200);
    let _ = r.drain(stuck);
    let reader = r.connect();
    r.upgrade(reader, 200);
    let _ = r.drain(reader);
    let mut got = 0;
    for seq in 0..300u64 {
        let now = r.now_ms();
        r.srv
            .call(&mut r.core, now, |core, t| core.broadcast(&[b'z'; 500], seq, now, t))
            .unwrap();
        r.settle(10);
        got += frames(r.drain(reader)).len();
        if r.core.stats().slow_readers_closed > 0 {
            break;
        }
    }
    assert_eq!(r.core.stats().slow_readers_closed, 1);
    assert_eq!(r.core.stats().connections, 1, "only the one that stopped reading went");
    assert!(
        r.cli_events.contains(&Event::Closed(stuck, CloseReason::Aborted)),
        "it is reset (even its close frame cannot go): {:?}",
        r.cli_events
    );
    r.settle(200);
    got += frames(r.drain(reader)).len();
    let sent = r.core.stats().broadcasts as usize;
    assert!(
        sent > 30,
        "the window, the send buffer and the log held {sent} messages of 500 B"
    );
    assert_eq!(got, sent, "the reader got every broadcast");
}

/// A long head (a token in the query, say) with every spill buffer taken waits, its bytes in the
/// socket and its window shut, and goes on once a buffer is free: nobody is reset for it (a
/// connect storm of 1M clients with tokens had 106,647 resets when it reset).
#[test]
fn with_every_spill_buffer_taken_a_long_head_waits_for_one() {
    let mut r = Rig::new(false, 1, 4096, 4096);
    let a = r.connect();
    let head = |c: ConnId| {
        format!(
            "GET /ws?id=d{} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nX-Pad: {}\r\n\r\n",
            c.0,
            "p".repeat(600)
        )
    };
    // Half of a's long head: it holds the only input spill buffer.
    let a_head = head(a);
    let (first, rest) = a_head.split_at(400);
    r.send(a, first.as_bytes());
    assert_eq!(r.srv.io.inp.in_use(), 1);
    // b's whole long head finds no buffer: it waits.
    let b = r.connect();
    assert_eq!(r.cli.write(b, head(b).as_bytes()), head(b).len());
    r.settle(50);
    assert_eq!(r.srv.io.inp.exhausted, 1);
    assert_eq!(r.srv.waiting(), 1);
    assert!(
        !r.cli_events.iter().any(|e| matches!(e, Event::Closed(..))),
        "{:?}",
        r.cli_events
    );
    // a's head completes and gives the buffer back; b goes on.
    r.send(a, rest.as_bytes());
    r.settle(200);
    assert!(String::from_utf8_lossy(&r.drain(a)).starts_with("HTTP/1.1 101 "));
    assert!(String::from_utf8_lossy(&r.drain(b)).starts_with("HTTP/1.1 101 "));
    assert_eq!((r.core.stats().upgrades, r.srv.waiting()), (2, 0));
}

/// Review finding: a spilled head whose connection the core closed (request timeout) gave its
/// buffer back only on a later event, and the next connection on the same id got its bytes.
#[test]
fn a_head_cut_off_by_the_request_timeout_leaves_nothing_for_the_next_connection() {
    let mut r = Rig::new(false, 4, 4096, 4096);
    let a = r.connect();
    let partial = format!("GET /evil?id=attacker HTTP/1.1\r\nX-Pad: {}", "p".repeat(600));
    r.send(a, partial.as_bytes());
    assert_eq!(r.srv.io.inp.in_use(), 1);
    r.settle(5_100);
    let answer = String::from_utf8_lossy(&r.drain(a)).to_string();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert_eq!(r.srv.io.inp.in_use(), 0, "the buffer went back with the close");
    r.settle(200);
    // The next client gets a clean start (often on the same id).
    let b = r.connect();
    let answer = r.upgrade(b, 200);
    assert!(
        answer.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(r.core.stats().devices, 1, "its own device id, not the attacker's");
}

/// Review finding: a connection the core closed while its output waited could be held forever
/// by a peer that keeps its window shut; it is reset when its close has taken 10 s.
#[test]
fn a_closed_connection_whose_peer_takes_nothing_is_reset_after_a_while() {
    let mut r = Rig::new(false, 4, 4096, 256);
    let c = r.connect();
    r.upgrade(c, 200);
    let _ = r.drain(c);
    let now = r.now_ms();
    for seq in 0..8 {
        r.srv
            .call(&mut r.core, now, |core, t| core.broadcast(&[b'q'; 100], seq, now, t))
            .unwrap();
    }
    r.settle(50);
    let now = r.now_ms();
    r.srv.call(&mut r.core, now, |core, t| core.shutdown(now, t));
    assert_eq!(r.core.stats().connections, 0, "counted as closed at once");
    r.settle(10_500);
    assert_eq!(r.core.stats().close_timeouts, 1);
    assert!(
        r.cli_events.contains(&Event::Closed(c, CloseReason::Aborted)),
        "{:?}",
        r.cli_events
    );
}

/// Review finding: a FIN in the middle of a frame was reported only once the bytes before it
/// were read, which the core never does for a partial frame.
#[test]
fn a_fin_in_the_middle_of_a_frame_ends_the_connection() {
    let mut r = Rig::new(false, 4, 4096, 4096);
    let c = r.connect();
    r.upgrade(c, 200);
    let frame = masked(Op::Text, b"never finished");
    r.send(c, &frame[..6]);
    r.cli.close(c);
    r.settle(50);
    assert_eq!(r.core.stats().connections, 0);
    assert_eq!(r.core.stats().closed_by_peer, 1);
}

/// Review finding: a head exactly as long as a spill buffer waited for the timeout instead of
/// getting 431 at once.
#[test]
fn a_head_longer_than_allowed_gets_431_at_once() {
    let mut r = Rig::new(false, 4, 4097, 4096);
    let c = r.connect();
    let endless = format!("GET /ws HTTP/1.1\r\nX-Pad: {}", "p".repeat(4200));
    for chunk in endless.as_bytes().chunks(2000) {
        r.send(c, chunk);
    }
    r.settle(100);
    let answer = String::from_utf8_lossy(&r.drain(c)).to_string();
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert_eq!(r.srv.io.inp.in_use(), 0);
}

/// The issue this design answers: messages of any size, to many connections, through 256-byte
/// buffers, over TCP. Every connection gets every byte, in order; nobody is reset.
#[test]
fn messages_of_every_size_reach_a_thousand_connections_over_tcp() {
    const N: usize = 1000;
    let mut r = Rig::build(false, 4, 4096, 4096, N, 4 << 20);
    let conns: Vec<ConnId> = (0..N)
        .map(|_| r.cli.connect(SocketAddrV4::new(SERVER, 8080)).unwrap())
        .collect();
    r.settle(30);
    for &c in &conns {
        let req = format!(
            "GET /ws?id=m{} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            c.0
        );
        assert_eq!(r.cli.write(c, req.as_bytes()), req.len());
    }
    r.settle(30);
    for &c in &conns {
        assert!(r.drain(c).starts_with(b"HTTP/1.1 101 "), "connection {}", c.0);
    }
    assert_eq!(r.core.stats().websockets, N as u64);
    for (seq, len) in [100usize, 300, 1024, 16 << 10, 64 << 10].into_iter().enumerate() {
        let msg: Vec<u8> = (0..len).map(|i| b'a' + ((i * 7 + seq) % 26) as u8).collect();
        let now = r.now_ms();
        r.srv
            .call(&mut r.core, now, |core, t| core.broadcast(&msg, seq as u64, now, t))
            .unwrap();
        let mut got: Vec<Vec<u8>> = vec![Vec::new(); N];
        let whole = len
            + if len < 126 {
                2
            } else if len < 65536 {
                4
            } else {
                10
            };
        for _ in 0..5_000 {
            r.step();
            for (i, &c) in conns.iter().enumerate() {
                got[i].extend(r.drain(c));
            }
            if got.iter().all(|g| g.len() >= whole) {
                break;
            }
        }
        for (i, g) in got.iter().enumerate() {
            assert_eq!(
                frames(g.clone()),
                vec![(Op::Text, msg.clone())],
                "{len} B to connection {i}"
            );
        }
        assert_eq!(r.core.output_behind(), 0, "{len} B: everything left the log");
    }
    assert_eq!(r.core.stats().slow_readers_closed, 0);
    assert_eq!(r.core.stats().connections, N as u64, "nobody was closed");
    assert!(
        !r.cli_events.iter().any(|e| matches!(e, Event::Closed(..))),
        "no client saw a close"
    );
}

/// A client that trickles a large frame keeps its spill buffer only while nobody else needs one:
/// with another connection's frame waiting, it is reset once it held the buffer 10 s without a
/// whole frame, and the waiting frame goes on.
#[test]
fn a_trickled_frame_loses_its_spill_buffer_to_a_waiting_one_after_the_hold_limit() {
    let mut r = Rig::new(true, 1, 4096, 4096);
    let (slow, fast) = (r.connect(), r.connect());
    r.upgrade(slow, 200);
    r.upgrade(fast, 200);
    let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    let frame = masked(Op::Binary, &payload);
    r.send(slow, &frame[..600]);
    assert_eq!(r.srv.io.inp.in_use(), 1, "the slow frame holds the only buffer");
    r.send(fast, &frame);
    assert_eq!(r.srv.waiting(), 1);
    // Alone, a holder keeps its buffer; the limit counts only while another waits.
    r.now += Duration::from_millis(9_000);
    r.settle(100);
    assert_eq!((r.srv.io.inp.evicted, r.srv.waiting()), (0, 1));
    r.now += Duration::from_millis(1_000);
    r.settle(200);
    assert_eq!(r.srv.io.inp.evicted, 1);
    assert!(
        r.cli_events.contains(&Event::Closed(slow, CloseReason::Aborted)),
        "{:?}",
        r.cli_events
    );
    assert_eq!(frames(r.drain(fast)), vec![(Op::Binary, payload)]);
    assert_eq!(
        (r.core.stats().connections, r.srv.waiting(), r.srv.io.inp.in_use()),
        (1, 0, 0)
    );
}

/// A request head trickled into a spill buffer loses it after 2 s while another head waits for
/// one (well before the request timeout, 5 s here): slow heads cannot keep devices with tokens,
/// whose heads need a spill buffer, from connecting.
#[test]
fn a_trickled_head_loses_its_spill_buffer_to_a_waiting_one_after_2_s() {
    let mut r = Rig::new(false, 1, 4096, 4096);
    let (slow, fast) = (r.connect(), r.connect());
    let long_head = |c: ConnId| {
        format!(
            "GET /ws?id=d{} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nX-Pad: {}\r\n\r\n",
            c.0,
            "p".repeat(400)
        )
    };
    r.send(slow, &long_head(slow).as_bytes()[..300]);
    assert_eq!(r.srv.io.inp.in_use(), 1);
    r.send(fast, long_head(fast).as_bytes());
    assert_eq!(r.srv.waiting(), 1);
    r.now += Duration::from_millis(2_000);
    r.settle(100);
    assert_eq!(r.srv.io.inp.evicted, 1);
    assert_eq!(r.core.stats().closed_by_server, 1, "counted as the server's doing");
    assert!(r.cli_events.contains(&Event::Closed(slow, CloseReason::Aborted)));
    assert!(String::from_utf8_lossy(&r.drain(fast)).starts_with("HTTP/1.1 101 "));
}

/// A large frame whose header breaks the rules (a reserved bit here) is refused as soon as its
/// header is in, though its payload waits in a spill buffer: not when (if ever) it is whole.
#[test]
fn a_bad_header_of_a_large_frame_is_refused_before_its_payload_arrives() {
    let mut r = Rig::new(true, 4, 4096, 4096);
    let c = r.connect();
    r.upgrade(c, 200);
    let mut frame = masked(Op::Binary, &[7u8; 1000]);
    frame[0] |= 0x40; // RSV1, with no extension negotiated
    r.send(c, &frame[..600]);
    r.settle(100);
    let got = frames(r.drain(c));
    assert_eq!(got.first().map(|(op, _)| *op), Some(Op::Close), "{got:?}");
    let code = u16::from_be_bytes([got[0].1[0], got[0].1[1]]);
    assert_eq!(code, 1002);
    assert_eq!(r.core.stats().protocol_errors, 1);
}

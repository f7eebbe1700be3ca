//! The message log through the core: messages of every size to many connections through small
//! send buffers, back to back, in order; a reader that stops is closed and nobody else waits;
//! `since` inside and outside the log.

use std::collections::HashMap;

use crate::core::device::DeviceHasher;
use crate::core::frame::{close_code, decode, Op, Role};
use crate::core::{ConnId, CoreConfig, Io, ServerCore};

/// A transport whose connections have small send buffers: a write takes what fits, and the
/// test plays the peer taking it (`ack`), which makes room again.
struct Pipes {
    buffer: usize,
    room: HashMap<ConnId, usize>,
    /// Everything each connection was given, in order.
    got: HashMap<ConnId, Vec<u8>>,
    closed: Vec<ConnId>,
    aborted: Vec<ConnId>,
    /// Connections waiting for room (a short write asks to be told).
    waiting: Vec<ConnId>,
    /// Connections whose peer keeps its window open though it takes nothing (the network loses
    /// what is sent): not slow readers.
    open_window: Vec<ConnId>,
}

impl Pipes {
    fn new(buffer: usize) -> Pipes {
        Pipes {
            buffer,
            room: HashMap::new(),
            got: HashMap::new(),
            closed: Vec::new(),
            aborted: Vec::new(),
            waiting: Vec::new(),
            open_window: Vec::new(),
        }
    }

    /// The peers of `ids` read everything; the core is told of the room. Returns whether
    /// anything moved.
    fn ack(&mut self, core: &mut ServerCore, ids: &[ConnId], now: u64) -> bool {
        let waiting = std::mem::take(&mut self.waiting);
        let mut moved = false;
        for id in waiting {
            if !ids.contains(&id) || self.closed.contains(&id) {
                self.waiting.push(id);
                continue;
            }
            self.room.insert(id, self.buffer);
            moved = true;
            core.writable(id, now, self);
        }
        moved
    }

    /// The server frames `id` received.
    fn frames(&self, id: ConnId) -> Vec<(Op, Vec<u8>)> {
        let mut bytes = self.got.get(&id).cloned().unwrap_or_default();
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < bytes.len() {
            let Ok(Some(f)) = decode(&mut bytes[pos..], Role::Client, 1 << 20) else {
                break;
            };
            out.push((f.op, f.payload.to_vec()));
            pos += f.wire_len;
        }
        out
    }
}

impl Io for Pipes {
    fn write(&mut self, id: ConnId, bytes: &[u8]) -> usize {
        assert!(!self.closed.contains(&id), "write after close on {id}");
        let room = self.room.entry(id).or_insert(self.buffer);
        let n = bytes.len().min(*room);
        *room -= n;
        self.got.entry(id).or_default().extend_from_slice(&bytes[..n]);
        if n < bytes.len() && !self.waiting.contains(&id) {
            self.waiting.push(id);
        }
        n
    }
    fn close(&mut self, id: ConnId) {
        assert!(!self.closed.contains(&id), "double close of {id}");
        self.closed.push(id);
    }
    fn abort(&mut self, id: ConnId) {
        self.close(id);
        self.aborted.push(id);
    }
    fn peer_window_closed(&mut self, id: ConnId) -> bool {
        self.room.get(&id) == Some(&0) && !self.open_window.contains(&id)
    }
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade_request(query: &str) -> Vec<u8> {
    format!("GET /ws{query} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").into_bytes()
}

fn core_with(log_size: usize, conns: usize) -> ServerCore {
    let cfg = CoreConfig {
        idle_timeout_ms: 0,
        log_size,
        device_hasher: DeviceHasher::new([3, 4]),
        ..CoreConfig::default()
    };
    ServerCore::new(cfg, conns, 0)
}

/// Open and upgrade `ids` (with `query` after /ws), and clear what they got.
fn upgrade_all(core: &mut ServerCore, io: &mut Pipes, ids: &[ConnId], query: &str) {
    for &id in ids {
        core.open(id, 0, io);
        let mut req = upgrade_request(query);
        assert_eq!(core.data(id, &mut req, 0, io), req.len());
        // The 101 answer may be longer than the buffer: let it out.
        while io.waiting.contains(&id) {
            io.ack(core, &[id], 0);
        }
        // Keep what came after the 101 answer (a replay of `since`).
        let got = io.got.remove(&id).unwrap_or_default();
        assert!(got.starts_with(b"HTTP/1.1 101 "), "{}", String::from_utf8_lossy(&got));
        let head = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        if head < got.len() {
            io.got.insert(id, got[head..].to_vec());
        }
    }
}

/// A payload of `len` bytes whose every byte says where it is and in which message.
fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + ((i as u64 * 7 + seq) % 26) as u8).collect()
}

#[test]
fn messages_of_every_size_reach_a_thousand_connections_through_256_byte_buffers() {
    let ids: Vec<ConnId> = (0..1000).collect();
    for len in [100, 300, 1024, 16 << 10, 64 << 10] {
        let mut core = core_with(4 << 20, ids.len());
        let mut io = Pipes::new(256);
        upgrade_all(&mut core, &mut io, &ids, "");
        let msg = payload(len as u64, len);
        let log_before = core.log_bytes();
        let fanout = core.broadcast(&msg, 1, 10, &mut io).unwrap();
        assert_eq!(fanout.websockets, 1000);
        let mut rounds = 0;
        while io.ack(&mut core, &ids, 20) {
            rounds += 1;
            assert!(rounds < 1000, "{len} B: stuck");
        }
        assert_eq!(core.output_behind(), 0, "{len} B: everything left");
        for &id in &ids {
            assert_eq!(io.frames(id), vec![(Op::Text, msg.clone())], "{len} B to {id}");
        }
        assert_eq!(core.stats().slow_readers_closed, 0);
        assert!(io.closed.is_empty(), "{len} B: nobody was closed");
        // Stored once: one frame more in the log, not a copy per connection.
        let grew = core.log_bytes() - log_before;
        assert!(grew <= len + 14, "{len} B: the log grew by {grew} bytes");
        assert!(core.heap_bytes() < 1 << 20, "{len} B: {} heap bytes", core.heap_bytes());
    }
}

#[test]
fn ten_broadcasts_back_to_back_arrive_whole_and_in_order() {
    let ids: Vec<ConnId> = (0..50).collect();
    let mut core = core_with(1 << 20, ids.len());
    let mut io = Pipes::new(256);
    upgrade_all(&mut core, &mut io, &ids, "");
    let msgs: Vec<Vec<u8>> = (0..10).map(|seq| payload(seq, 300 + seq as usize * 100)).collect();
    for (seq, m) in msgs.iter().enumerate() {
        core.broadcast(m, seq as u64, 10, &mut io).unwrap();
    }
    while io.ack(&mut core, &ids, 20) {}
    for &id in &ids {
        let got: Vec<Vec<u8>> = io.frames(id).into_iter().map(|(_, p)| p).collect();
        assert_eq!(got, msgs, "connection {id}");
    }
}

#[test]
fn a_reader_that_stops_is_closed_when_it_falls_out_of_the_log_and_nobody_waits_for_it() {
    let ids: Vec<ConnId> = (0..10).collect();
    let mut core = core_with(64 << 10, ids.len());
    let mut io = Pipes::new(256);
    upgrade_all(&mut core, &mut io, &ids, "");
    let readers = &ids[1..];
    let mut now = 10;
    for seq in 0..20 {
        core.broadcast(&payload(seq, 4096), seq, now, &mut io).unwrap();
        while io.ack(&mut core, readers, now) {}
        now += 100;
        core.tick(now, &mut io);
    }
    for _ in 0..20 {
        now += 100;
        core.tick(now, &mut io);
    }
    assert_eq!(core.stats().slow_readers_closed, 1);
    assert_eq!(io.aborted, vec![0], "reset: it was in the middle of a frame");
    for &id in readers {
        assert_eq!(io.frames(id).len(), 20, "reader {id} got every message");
    }
    assert_eq!(core.stats().connections, 9);
    assert_eq!(core.output_behind(), 0);
}

#[test]
fn a_client_that_takes_nothing_for_the_write_timeout_is_closed_and_a_slow_one_is_not() {
    let ids: Vec<ConnId> = (0..4).collect();
    let cfg = CoreConfig {
        idle_timeout_ms: 0,
        log_size: 1 << 20,
        write_timeout_ms: 3_000,
        ..CoreConfig::default()
    };
    let mut core = ServerCore::new(cfg, ids.len(), 0);
    let mut io = Pipes::new(256);
    upgrade_all(&mut core, &mut io, &ids, "");
    io.open_window.push(3);
    // 0 never reads; 1 reads 256 bytes every 2 s (slow, but it moves); 2 reads at once; 3 takes
    // nothing but keeps its window open (what an overloaded path looks like: not its fault).
    // The log holds everything: only the write timeout can close anyone.
    let mut now = 10;
    for seq in 0..3 {
        core.broadcast(&payload(seq, 1000), seq, now, &mut io).unwrap();
    }
    while io.ack(&mut core, &[2], now) {}
    let mut closed_at = None;
    while now < 12_000 {
        now += 100;
        if (now - 10) % 2_000 == 0 {
            io.ack(&mut core, &[1], now);
        }
        core.tick(now, &mut io);
        if closed_at.is_none() && io.closed.contains(&0) {
            closed_at = Some(now);
        }
    }
    let closed_at = closed_at.expect("the client that took nothing was closed");
    assert!(
        (3_000..=4_200).contains(&closed_at),
        "closed at {closed_at} ms (timeout 3 s, checks every 1 s)"
    );
    assert_eq!(io.aborted, vec![0], "reset: it was in the middle of a frame");
    assert_eq!(core.stats().slow_readers_closed, 1);
    assert!(!io.closed.contains(&1), "a slow reader that moves stays");
    assert!(!io.closed.contains(&3), "a peer with an open window stays");
    assert_eq!(io.frames(2).len(), 3);
    assert!(
        io.got[&1].len() >= 5 * 256,
        "the slow one got {} bytes",
        io.got[&1].len()
    );
}

/// A client that sends and never reads: its own output (pongs here) piles up to two of the
/// largest messages, then its input stops being read (TCP pushes back) and the log holds no
/// more of it; once it reads, the rest is taken and every ping answered in order.
#[test]
fn a_client_that_sends_pings_and_never_reads_stops_being_read_past_two_messages_of_output() {
    let cfg = CoreConfig {
        idle_timeout_ms: 0,
        log_size: 1 << 20,
        max_frame: 1024,
        max_message: 1024,
        device_hasher: DeviceHasher::new([3, 4]),
        ..CoreConfig::default()
    };
    let mut core = ServerCore::new(cfg, 1, 0);
    let mut io = Pipes::new(256);
    upgrade_all(&mut core, &mut io, &[0], "");
    // A thousand pings with 100-byte payloads in one read; the pongs fill the 256-byte buffer.
    let mut wire = Vec::new();
    for _ in 0..1000 {
        crate::core::frame::encode(&mut wire, true, Op::Ping, &[b'p'; 100], Some([1, 2, 3, 4]));
    }
    let used = core.data(0, &mut wire.clone(), 10, &mut io);
    let limit = 2 * (1024 + crate::core::frame::MAX_HEADER);
    assert!(
        used < wire.len() / 10,
        "input stops once two messages of its own output wait: took {used} bytes"
    );
    assert!(core.input_paused(0));
    assert!(
        core.log_bytes() < 2 * limit,
        "the log holds about two messages of pongs, not a thousand: {}",
        core.log_bytes()
    );
    // It reads: the rest is taken, every ping answered in order.
    let mut pos = used;
    for _ in 0..10_000 {
        if pos == wire.len() {
            break;
        }
        while io.ack(&mut core, &[0], 20) {}
        pos += core.data(0, &mut wire[pos..].to_vec(), 20, &mut io);
    }
    while io.ack(&mut core, &[0], 20) {}
    assert_eq!(pos, wire.len());
    let pongs = io.frames(0).iter().filter(|(op, _)| *op == Op::Pong).count();
    assert_eq!(pongs, 1000);
}

#[test]
fn a_closing_connection_that_falls_out_of_the_log_is_reset_and_counted_once() {
    let ids: Vec<ConnId> = (0..2).collect();
    let mut core = core_with(64 << 10, ids.len());
    let mut io = Pipes::new(256);
    upgrade_all(&mut core, &mut io, &ids, "");
    core.broadcast(&payload(0, 4096), 0, 10, &mut io).unwrap();
    // 0 stops reading and is then closed by the server (shutdown): its close frame waits
    // behind the broadcast.
    core.shutdown(10, &mut io);
    let closed = core.stats().closed;
    assert_eq!(closed, 2);
    let mut now = 10;
    for seq in 1..40 {
        core.broadcast(&payload(seq, 4096), seq, now, &mut io).unwrap();
        while io.ack(&mut core, &[1], now) {}
        now += 100;
        core.tick(now, &mut io);
    }
    assert!(io.closed.contains(&0), "reset once its output left the log");
    let s = core.stats();
    assert_eq!((s.closed, s.connections), (closed, 0), "counted once");
    assert_eq!(s.slow_readers_closed, 0, "it was closed already");
    assert_eq!(s.close_timeouts, 1);
}

#[test]
fn a_push_that_went_out_in_part_is_never_followed_by_a_close_frame_in_its_middle() {
    let mut core = core_with(1 << 20, 1);
    let mut io = Pipes::new(256);
    let dev = upgrade_request("?id=dev-2");
    core.open(0, 0, &mut io);
    core.data(0, &mut dev.clone(), 0, &mut io);
    while io.ack(&mut core, &[0], 0) {}
    io.got.clear();
    // The transport takes the first bytes of a 60 KiB push at once; the rest is stored.
    assert!(core.push(b"dev-2", &payload(1, 60 * 1024), 10, &mut io));
    let at_once = io.got[&0].len();
    assert!(at_once > 0 && at_once < 1024, "{at_once}");
    // Then it falls out of the log (broadcasts fill it) while the socket has room again.
    for seq in 0..20 {
        core.broadcast(&payload(seq, 64 * 1024), seq, 10, &mut io).unwrap();
    }
    io.room.insert(0, 1 << 20);
    let mut now = 10;
    while now < 3_000 && !io.closed.contains(&0) {
        now += 100;
        core.tick(now, &mut io);
    }
    assert_eq!(
        io.aborted,
        vec![0],
        "reset: a close frame here would land inside the push"
    );
    assert_eq!(
        io.got[&0].len(),
        at_once,
        "nothing written after the push's first bytes"
    );
}

#[test]
fn a_large_fan_out_goes_in_slices_and_a_push_meanwhile_keeps_its_place() {
    let ids: Vec<ConnId> = (0..100).collect();
    let mut core = core_with(4 << 20, ids.len());
    let mut io = Pipes::new(64 << 10);
    let mut ids_dev = ids.clone();
    let last = ids_dev.pop().unwrap();
    upgrade_all(&mut core, &mut io, &ids_dev, "");
    upgrade_all(&mut core, &mut io, &[last], "?id=dev-last");
    let msg = payload(1, 60 << 10);
    core.broadcast(&msg, 1, 10, &mut io).unwrap();
    // 100 × 60 KiB is more than one slice: the worker gets control back in between.
    assert!(core.fan_out_pending(), "one slice took it all");
    assert!(!io.got.contains_key(&last), "the last connection is in a later slice");
    assert!(core.push(b"dev-last", b"after the broadcast", 10, &mut io));
    let mut slices = 1;
    while core.fan_out_pending() {
        core.fan_out(&mut io);
        slices += 1;
    }
    assert!(slices >= 2);
    while io.ack(&mut core, &ids, 20) {}
    for &id in &ids_dev {
        assert_eq!(io.frames(id), vec![(Op::Text, msg.clone())], "connection {id}");
    }
    let got: Vec<Vec<u8>> = io.frames(last).into_iter().map(|(_, p)| p).collect();
    assert_eq!(got, vec![msg, b"after the broadcast".to_vec()]);
    assert_eq!(core.output_behind(), 0);
}

#[test]
fn a_push_does_not_overtake_broadcasts_and_a_close_frame_comes_after_them() {
    let mut core = core_with(1 << 20, 4);
    let mut io = Pipes::new(256);
    let dev = upgrade_request("?id=dev-1");
    core.open(1, 0, &mut io);
    let mut req = dev.clone();
    core.data(1, &mut req, 0, &mut io);
    while io.ack(&mut core, &[1], 0) {}
    io.got.clear();
    core.broadcast(&payload(1, 1000), 1, 10, &mut io).unwrap();
    assert!(core.push(b"dev-1", b"the push", 10, &mut io));
    core.broadcast(&payload(2, 1000), 2, 10, &mut io).unwrap();
    core.shutdown(10, &mut io);
    assert!(io.closed.is_empty(), "the close waits for what is queued before it");
    while io.ack(&mut core, &[1], 20) {}
    let got = io.frames(1);
    let ops: Vec<Op> = got.iter().map(|(op, _)| *op).collect();
    assert_eq!(ops, vec![Op::Text, Op::Text, Op::Text, Op::Close]);
    assert_eq!(got[0].1, payload(1, 1000));
    assert_eq!(got[1].1, b"the push");
    assert_eq!(got[2].1, payload(2, 1000));
    assert_eq!(&got[3].1[..2], &close_code::GOING_AWAY.to_be_bytes());
    assert_eq!(io.closed, vec![1], "closed once the close frame left");
}

#[test]
fn a_long_poll_answered_by_a_broadcast_gets_it_whole_through_a_small_buffer() {
    let mut core = core_with(1 << 20, 4);
    let mut io = Pipes::new(256);
    core.open(2, 0, &mut io);
    let mut req = b"GET /poll HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec();
    core.data(2, &mut req, 0, &mut io);
    let msg = payload(9, 5000);
    let fanout = core.broadcast(&msg, 9, 10, &mut io).unwrap();
    assert_eq!(fanout.polls, 1);
    while io.ack(&mut core, &[2], 20) {}
    let got = io.got.remove(&2).unwrap();
    let text = String::from_utf8(got).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("Content-Length: 5000"), "{head}");
    assert_eq!(body.as_bytes(), &msg[..]);
    assert_eq!(io.closed, vec![2], "Connection: close: closed after the answer");
}

#[test]
fn since_replays_what_the_log_still_holds_or_says_there_is_a_gap() {
    // This run numbers its broadcasts after 5.
    let cfg = CoreConfig {
        idle_timeout_ms: 0,
        log_size: 1 << 20,
        first_seq: 5,
        ..CoreConfig::default()
    };
    let mut core = ServerCore::new(cfg, 8, 0);
    let mut io = Pipes::new(1 << 20);
    for seq in [10, 12, 15] {
        core.broadcast(&payload(seq, 50), seq, 10, &mut io).unwrap();
    }
    // Inside the log: everything after 10, then the live ones.
    upgrade_all(&mut core, &mut io, &[1], "?since=10");
    // Caught up: nothing to replay.
    upgrade_all(&mut core, &mut io, &[2], "?since=15");
    assert!(io.frames(2).is_empty());
    // Ahead of this log: 17 is on its way here (the client got it from another worker).
    upgrade_all(&mut core, &mut io, &[4], "?since=17");
    for seq in [16, 17, 18] {
        core.broadcast(&payload(seq, 50), seq, 20, &mut io).unwrap();
    }
    let got: Vec<Vec<u8>> = io.frames(1).into_iter().map(|(_, p)| p).collect();
    let all_after = |since: u64| -> Vec<Vec<u8>> {
        [10, 12, 15, 16, 17, 18]
            .into_iter()
            .filter(|&s| s > since)
            .map(|s| payload(s, 50))
            .collect()
    };
    assert_eq!(got, all_after(10));
    let got: Vec<Vec<u8>> = io.frames(2).into_iter().map(|(_, p)| p).collect();
    assert_eq!(got, all_after(15));
    let got: Vec<Vec<u8>> = io.frames(4).into_iter().map(|(_, p)| p).collect();
    assert_eq!(got, all_after(17), "no duplicate of 16 or 17, nothing missed");
    assert_eq!(core.output_behind(), 0);
    // From an earlier run of the server (at or before this run's first number): a gap message.
    upgrade_all(&mut core, &mut io, &[3], "?since=3");
    let gap = io.frames(3);
    assert_eq!(gap.len(), 1);
    let v: serde_json::Value = serde_json::from_slice(&gap[0].1).unwrap();
    assert_eq!(
        (v["kind"].as_str(), v["since"].as_u64(), v["oldest"].as_u64()),
        (Some("gap"), Some(3), Some(10))
    );
    assert_eq!((core.stats().resumed, core.stats().resume_gaps), (3, 1));
    // Outside the log: older broadcasts were overwritten.
    let mut small = core_with(1024, 4);
    let mut io = Pipes::new(1 << 20);
    for seq in 1..=20 {
        small.broadcast(&payload(seq, 100), seq, 10, &mut io).unwrap();
    }
    upgrade_all(&mut small, &mut io, &[1], "?since=2");
    let gap = io.frames(1);
    let v: serde_json::Value = serde_json::from_slice(&gap[0].1).unwrap();
    assert_eq!(v["kind"], "gap");
    assert!(v["oldest"].as_u64().unwrap() > 3, "{v}");
}

/// On an echo server, clients that send and never read cannot take the shared log from the
/// others: each may have two of the largest messages of its echo waiting, all of them together a
/// quarter of the log (each connection one message more: its input is checked after a frame, as
/// before the allowance); past that their input stops, and a reading client still gets every
/// broadcast whole.
#[test]
fn echo_clients_that_never_read_keep_to_a_quarter_of_the_log() {
    const LOG: usize = 256 << 10;
    const MESSAGE: usize = 2048;
    let cfg = CoreConfig {
        idle_timeout_ms: 0,
        echo: true,
        log_size: LOG,
        max_frame: MESSAGE,
        max_message: MESSAGE,
        device_hasher: DeviceHasher::new([3, 4]),
        ..CoreConfig::default()
    };
    let mut core = ServerCore::new(cfg, 41, 0);
    let mut io = Pipes::new(256);
    let ids: Vec<ConnId> = (0..41).collect();
    upgrade_all(&mut core, &mut io, &ids, "");
    // 40 clients each send twenty 2 KiB messages and never read.
    let mut wire = Vec::new();
    for _ in 0..20 {
        crate::core::frame::encode(&mut wire, true, Op::Binary, &[b'e'; MESSAGE], Some([1, 2, 3, 4]));
    }
    let mut taken = 0;
    for id in 0..40 {
        if !core.input_paused(id) {
            taken += core.data(id, &mut wire.clone(), 10, &mut io);
        }
    }
    assert!(
        taken < 40 * wire.len() / 4,
        "input stopped: took {taken} of {} bytes",
        40 * wire.len()
    );
    let waiting: u64 = (0..40).map(|id| core.targeted.waiting_bytes(id)).sum();
    let frame = (MESSAGE + crate::core::frame::MAX_HEADER) as u64;
    assert!(
        waiting <= LOG as u64 / 4 + 40 * frame,
        "echo waiting over all: {waiting}"
    );
    assert!((0..40).all(|id| core.input_paused(id)));
    // The reader (40) gets three broadcasts whole: nothing it needs fell out of the log.
    for seq in 0..3 {
        core.broadcast(&payload(seq, 4096), seq, 20, &mut io).unwrap();
        while io.ack(&mut core, &[40], 20) {}
    }
    let got = io.frames(40);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(core.stats().slow_readers_closed, 0);
}

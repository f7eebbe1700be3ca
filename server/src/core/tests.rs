//! The core driven by byte slices and a fake clock.
//! (Over 600 lines: the behaviour tests of one API, in the order of a connection's life.)

use std::collections::HashMap;

use super::frame::{decode, Op, Role};
use super::*;

/// Send a keep-alive long-poll request on `id`.
fn poll(core: &mut ServerCore, io: &mut Recorder, id: ConnId, now: u64) {
    let mut req = b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    assert_eq!(core.data(id, &mut req, now, io), req.len());
}

/// A transport that records what the core asks of it. A connection with a `room` takes at most
/// that many more bytes (a send buffer that fills); the others take everything.
#[derive(Default)]
struct Recorder {
    out: HashMap<ConnId, Vec<u8>>,
    room: HashMap<ConnId, usize>,
    closed: Vec<ConnId>,
    aborted: Vec<ConnId>,
    claimed: Vec<u64>,
    released: Vec<u64>,
}

impl Io for Recorder {
    fn peer_window_closed(&mut self, id: ConnId) -> bool {
        self.room.get(&id) == Some(&0)
    }
    fn write(&mut self, id: ConnId, bytes: &[u8]) -> usize {
        assert!(!self.closed.contains(&id), "write after close on {id}");
        let n = match self.room.get_mut(&id) {
            Some(room) => {
                let n = bytes.len().min(*room);
                *room -= n;
                n
            }
            None => bytes.len(),
        };
        self.out.entry(id).or_default().extend_from_slice(&bytes[..n]);
        n
    }
    fn close(&mut self, id: ConnId) {
        assert!(!self.closed.contains(&id), "double close of {id}");
        self.closed.push(id);
    }
    fn abort(&mut self, id: ConnId) {
        assert!(!self.closed.contains(&id), "abort after close of {id}");
        self.closed.push(id);
        self.aborted.push(id);
    }
    fn device_claimed(&mut self, hash: u64, _id: &[u8]) {
        self.claimed.push(hash);
    }
    fn device_released(&mut self, hash: u64) {
        self.released.push(hash);
    }
}

impl Recorder {
    fn take(&mut self, id: ConnId) -> Vec<u8> {
        self.out.remove(&id).unwrap_or_default()
    }

    /// Decode everything sent on `id` as server frames: (op, payload) pairs.
    fn frames(&mut self, id: ConnId) -> Vec<(Op, Vec<u8>)> {
        let mut bytes = self.take(id);
        let mut pos = 0;
        let mut frames = vec![];
        while pos < bytes.len() {
            let f = decode(&mut bytes[pos..], Role::Client, 1 << 20)
                .expect("valid server frame")
                .expect("whole frame");
            frames.push((f.op, f.payload.to_vec()));
            pos += f.wire_len;
        }
        frames
    }

    fn text(&mut self, id: ConnId) -> String {
        String::from_utf8(self.take(id)).unwrap()
    }

    /// Remove a closed id so the test can reuse it.
    fn forget_closed(&mut self, id: ConnId) {
        self.closed.retain(|&c| c != id);
    }
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade(device: Option<&str>) -> Vec<u8> {
    let path = match device {
        Some(d) => format!("/ws?id={d}"),
        None => "/ws".to_string(),
    };
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").into_bytes()
}

fn masked(fin: bool, op: Op, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    super::frame::encode(&mut out, fin, op, payload, Some([9, 8, 7, 6]));
    out
}

fn cfg() -> CoreConfig {
    CoreConfig {
        idle_timeout_ms: 10_000,
        poll_hold_ms: (2_000, 2_000),
        device_hasher: DeviceHasher::new([7, 7]),
        ..CoreConfig::default()
    }
}

/// A core with `ids` connections opened and upgraded at t=0.
fn upgraded(cfg: CoreConfig, ids: &[ConnId]) -> (ServerCore, Recorder) {
    let mut core = ServerCore::new(cfg, 16, 0);
    let mut io = Recorder::default();
    for &id in ids {
        core.open(id, 0, &mut io);
        let mut req = upgrade(None);
        assert_eq!(core.data(id, &mut req, 0, &mut io), req.len());
        assert!(io.text(id).starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
    }
    (core, io)
}

/// Feed bytes as a transport would: what is not consumed is presented again with what follows.
fn feed_in_pieces(core: &mut ServerCore, io: &mut Recorder, id: ConnId, bytes: &[u8], piece: usize, now: u64) {
    let mut pending = Vec::new();
    for chunk in bytes.chunks(piece) {
        pending.extend_from_slice(chunk);
        let used = core.data(id, &mut pending, now, io);
        pending.drain(..used);
    }
    assert!(pending.is_empty(), "{} bytes left unconsumed", pending.len());
}

#[test]
fn per_connection_state_is_32_bytes() {
    assert_eq!(std::mem::size_of::<Conn>(), 32);
}

#[test]
fn upgrade_ping_pong_and_client_close() {
    let (mut core, mut io) = upgraded(cfg(), &[3]);
    assert_eq!(core.stats().upgrades, 1);
    assert_eq!(core.stats().websockets, 1);

    let mut ping = masked(true, Op::Ping, b"hb");
    core.data(3, &mut ping, 100, &mut io);
    assert_eq!(io.frames(3), vec![(Op::Pong, b"hb".to_vec())]);

    let mut close = masked(true, Op::Close, &[0x03, 0xe8, b'b', b'y', b'e']);
    core.data(3, &mut close, 200, &mut io);
    assert_eq!(io.frames(3), vec![(Op::Close, vec![0x03, 0xe8])]);
    assert_eq!(io.closed, vec![3]);
    let s = core.stats();
    assert_eq!((s.connections, s.websockets, s.closed_by_client, s.pings), (0, 0, 1, 1));
    assert!(!core.is_open(3));
}

#[test]
fn upgrade_and_frames_split_at_every_byte() {
    let mut core = ServerCore::new(CoreConfig { echo: true, ..cfg() }, 4, 0);
    let mut io = Recorder::default();
    core.open(1, 0, &mut io);
    let mut wire = upgrade(None);
    wire.extend(masked(true, Op::Text, b"hello"));
    wire.extend(masked(true, Op::Binary, &[0u8; 300]));
    feed_in_pieces(&mut core, &mut io, 1, &wire, 1, 0);
    let out = io.take(1);
    let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    io.out.insert(1, out[head_end..].to_vec());
    assert_eq!(
        io.frames(1),
        vec![(Op::Text, b"hello".to_vec()), (Op::Binary, vec![0u8; 300])]
    );
    assert_eq!(core.stats().messages_in, 2);
    assert_eq!(core.stats().echoed, 2);
}

#[test]
fn frames_in_the_same_segment_as_the_upgrade_are_processed() {
    let mut core = ServerCore::new(cfg(), 4, 0);
    let mut io = Recorder::default();
    core.open(0, 0, &mut io);
    let mut wire = upgrade(None);
    wire.extend(masked(true, Op::Ping, b"now"));
    assert_eq!(core.data(0, &mut wire, 0, &mut io), wire.len());
    let out = io.take(0);
    assert!(out.ends_with(&[0x8a, 3, b'n', b'o', b'w']), "pong follows the 101");
}

#[test]
fn fragmented_text_with_interleaved_ping_is_echoed_fragment_by_fragment() {
    let (mut core, mut io) = upgraded(CoreConfig { echo: true, ..cfg() }, &[1]);
    let mut wire = masked(false, Op::Text, "ñ".as_bytes().split_at(1).0);
    wire.extend(masked(true, Op::Ping, b"p"));
    wire.extend(masked(false, Op::Continue, "ñ".as_bytes().split_at(1).1));
    wire.extend(masked(true, Op::Continue, b"!"));
    feed_in_pieces(&mut core, &mut io, 1, &wire, 3, 0);
    let frames = io.frames(1);
    let ops: Vec<Op> = frames.iter().map(|f| f.0).collect();
    assert_eq!(ops, vec![Op::Text, Op::Pong, Op::Continue, Op::Continue]);
    let text: Vec<u8> = frames
        .iter()
        .filter(|f| f.0 != Op::Pong)
        .flat_map(|f| f.1.clone())
        .collect();
    assert_eq!(text, "ñ!".as_bytes());
    assert_eq!(core.stats().messages_in, 1);
    assert!(io.closed.is_empty());
}

/// Each kind of bad frame closes with the right code and counts a protocol error.
#[test]
fn protocol_violations_close_with_the_right_code() {
    let mut unmasked = vec![0x81, 0x02, b'h', b'i'];
    let mut bad_rsv = masked(true, Op::Text, b"x");
    bad_rsv[0] |= 0x20;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked", std::mem::take(&mut unmasked), 1002),
        ("rsv", bad_rsv, 1002),
        ("continuation first", masked(true, Op::Continue, b"x"), 1002),
        (
            "text inside fragmented",
            [masked(false, Op::Text, b"a"), masked(true, Op::Text, b"b")].concat(),
            1002,
        ),
        ("oversize", masked(true, Op::Binary, &vec![0; 16 * 1024 + 1]), 1009),
        ("bad utf8", masked(true, Op::Text, &[0xc3, 0x28]), 1007),
        ("bad close code", masked(true, Op::Close, &1005u16.to_be_bytes()), 1002),
        ("long ping", masked(true, Op::Ping, &[0; 126]), 1002),
        (
            "message over max_message",
            (0..5)
                .map(|i| masked(i == 4, if i == 0 { Op::Binary } else { Op::Continue }, &[0; 16 * 1024]))
                .collect::<Vec<_>>()
                .concat(),
            1009,
        ),
    ];
    for (name, mut wire, code) in cases {
        let (mut core, mut io) = upgraded(cfg(), &[5]);
        core.data(5, &mut wire, 0, &mut io);
        let frames = io.frames(5);
        let (op, payload) = frames.last().unwrap_or_else(|| panic!("{name}: nothing sent"));
        assert_eq!(*op, Op::Close, "{name}");
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code, "{name}");
        assert_eq!(io.closed, vec![5], "{name}");
        assert_eq!(core.stats().protocol_errors, 1, "{name}");
        assert_eq!(core.stats().closed_by_server, 1, "{name}");
    }
}

#[test]
fn bad_requests_get_a_status_and_a_close() {
    let mut core = ServerCore::new(cfg(), 4, 0);
    let mut io = Recorder::default();
    core.open(1, 0, &mut io);
    let mut req = b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    core.data(1, &mut req, 0, &mut io);
    assert!(io.text(1).starts_with("HTTP/1.1 426 "));
    assert_eq!(io.closed, vec![1]);
    assert_eq!(core.stats().rejected_requests, 1);

    // A head that never ends is cut off at max_request.
    core.open(2, 0, &mut io);
    let mut endless = b"GET /ws HTTP/1.1\r\n".to_vec();
    endless.extend(std::iter::repeat_n(b'a', 5000));
    core.data(2, &mut endless, 0, &mut io);
    assert!(io.text(2).starts_with("HTTP/1.1 431 "));
    assert!(io.closed.contains(&2));
}

#[test]
fn silent_connections_expire_and_heartbeating_ones_do_not() {
    let (mut core, mut io) = upgraded(cfg(), &[1, 2]);
    // Connection 1 heartbeats every 4 s; connection 2 is silent.
    for t in (4_000..=12_000).step_by(4_000) {
        let mut ping = masked(true, Op::Ping, b"");
        core.data(1, &mut ping, t, &mut io);
        core.tick(t, &mut io);
        if t < 10_000 {
            assert!(io.closed.is_empty(), "nothing expires before 10 s (t={t})");
        }
    }
    core.tick(10_000, &mut io);
    assert_eq!(io.closed, vec![2], "the silent one expired at 10 s");
    let frames = io.frames(2);
    assert_eq!(frames.last().unwrap().0, Op::Close);
    assert_eq!(&frames.last().unwrap().1[..2], &4001u16.to_be_bytes());
    assert_eq!(core.stats().expired, 1);
    // Connection 1 last spoke at 12 s: it expires at 22 s, not before.
    core.tick(21_900, &mut io);
    assert_eq!(io.closed, vec![2]);
    core.tick(22_000, &mut io);
    assert_eq!(io.closed, vec![2, 1]);
    assert_eq!(core.stats().expired, 2);
    assert_eq!(core.stats().connections, 0);
}

#[test]
fn a_reused_id_does_not_inherit_old_timers() {
    let (mut core, mut io) = upgraded(cfg(), &[4]);
    core.closed(4, 5_000, &mut io);
    core.open(4, 9_000, &mut io);
    // The first incarnation's idle timer comes up at 10 s: it must not expire the new one.
    core.tick(10_500, &mut io);
    assert!(core.is_open(4));
    core.tick(19_000, &mut io);
    assert!(!core.is_open(4), "the new incarnation expires 10 s after it opened");
    assert_eq!(core.stats().expired, 1);
    assert_eq!(core.stats().closed_by_peer, 1);
}

#[test]
fn idle_timeout_zero_never_expires() {
    let (mut core, mut io) = upgraded(
        CoreConfig {
            idle_timeout_ms: 0,
            ..cfg()
        },
        &[1],
    );
    core.tick(10_000_000, &mut io);
    assert!(core.is_open(1));
}

#[test]
fn long_poll_is_held_then_answered_at_its_deadline() {
    let mut core = ServerCore::new(cfg(), 4, 0);
    let mut io = Recorder::default();
    core.open(1, 0, &mut io);
    poll(&mut core, &mut io, 1, 0);
    assert_eq!(core.stats().polls_held, 1);
    core.tick(1_900, &mut io);
    assert!(io.take(1).is_empty(), "still held at 1.9 s");
    core.tick(2_000, &mut io);
    let answer = io.text(1);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("{\"kind\":\"timeout\"}"));
    assert_eq!(core.stats().polls_timed_out, 1);
    assert!(
        io.closed.is_empty(),
        "keep-alive: the connection stays for the next poll"
    );

    // The next poll on the same connection, answered early by a broadcast.
    poll(&mut core, &mut io, 1, 2_500);
    let fanout = core.broadcast(b"{\"ts\":1}", 1, 3_000, &mut io).unwrap();
    assert_eq!(
        fanout,
        Fanout {
            websockets: 0,
            polls: 1
        }
    );
    assert!(io
        .text(1)
        .ends_with("Content-Length: 8\r\nConnection: keep-alive\r\n\r\n{\"ts\":1}"));
    // Its timer (due at 4.5 s) finds nothing to answer.
    core.tick(5_000, &mut io);
    assert!(io.take(1).is_empty());
    assert_eq!(core.stats().polls_timed_out, 1);
    assert_eq!(core.stats().polls_held, 0);
}

#[test]
fn long_poll_random_hold_stays_in_range_and_close_means_close() {
    let mut core = ServerCore::new(
        CoreConfig {
            poll_hold_ms: (1_000, 3_000),
            idle_timeout_ms: 0,
            ..cfg()
        },
        64,
        0,
    );
    let mut io = Recorder::default();
    for id in 0..50 {
        core.open(id, 0, &mut io);
        let mut req = b"GET /poll HTTP/1.0\r\n\r\n".to_vec();
        core.data(id, &mut req, 0, &mut io);
    }
    core.tick(900, &mut io);
    assert!(io.closed.is_empty());
    core.tick(3_000, &mut io);
    assert_eq!(io.closed.len(), 50, "HTTP/1.0 polls are answered and closed by 3 s");
    let mut answered_times = std::collections::HashSet::new();
    let mut core = ServerCore::new(
        CoreConfig {
            poll_hold_ms: (1_000, 3_000),
            idle_timeout_ms: 0,
            ..cfg()
        },
        64,
        0,
    );
    let mut io = Recorder::default();
    for id in 0..50 {
        core.open(id, 0, &mut io);
        poll(&mut core, &mut io, id, 0);
    }
    for t in (0..=3_000).step_by(100) {
        core.tick(t, &mut io);
        let answered: Vec<ConnId> = io.out.keys().copied().collect();
        for id in answered {
            io.take(id);
            answered_times.insert(t);
        }
    }
    assert!(answered_times.iter().all(|t| (1_000..=3_000).contains(t)));
    assert!(answered_times.len() > 3, "holds are spread out: {answered_times:?}");
}

#[test]
fn a_request_while_a_poll_is_held_is_rejected() {
    let mut core = ServerCore::new(cfg(), 4, 0);
    let mut io = Recorder::default();
    core.open(1, 0, &mut io);
    let mut req = b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\nGET /poll HTTP/1.1\r\n".to_vec();
    core.data(1, &mut req, 0, &mut io);
    assert!(io.text(1).starts_with("HTTP/1.1 400 "));
    assert_eq!(io.closed, vec![1]);
    assert_eq!(core.stats().polls_held, 0);
}

#[test]
fn broadcast_reaches_websockets_and_polls_but_not_pending_handshakes() {
    let (mut core, mut io) = upgraded(cfg(), &[0, 2, 7]);
    core.open(3, 0, &mut io); // no request yet
    let fanout = core.broadcast(b"{\"ts\":42}", 1, 10, &mut io).unwrap();
    assert_eq!(
        fanout,
        Fanout {
            websockets: 3,
            polls: 0
        }
    );
    for id in [0, 2, 7] {
        assert_eq!(io.frames(id), vec![(Op::Text, b"{\"ts\":42}".to_vec())]);
    }
    assert!(io.take(3).is_empty());
    assert_eq!(core.stats().messages_out, 3);
}

#[test]
fn one_connection_per_device_and_targeted_push() {
    let mut core = ServerCore::new(cfg(), 8, 0);
    let mut io = Recorder::default();
    for (id, dev) in [(1, "dev-a"), (2, "dev-b"), (3, "dev-a")] {
        core.open(id, 0, &mut io);
        let mut req = upgrade(Some(dev));
        core.data(id, &mut req, 0, &mut io);
        io.take(id);
    }
    // dev-a moved from connection 1 to 3: connection 1 got 4002 and is gone.
    assert_eq!(io.closed, vec![1]);
    let frames = io.frames(1);
    assert_eq!(&frames[0].1[..2], &4002u16.to_be_bytes());
    assert_eq!(core.stats().devices, 2);
    assert_eq!(core.stats().devices_replaced, 1);

    assert!(core.push(b"dev-a", b"for a", 1, &mut io));
    assert!(core.push(b"dev-b", b"for b", 1, &mut io));
    assert!(!core.push(b"dev-zzz", b"nobody", 1, &mut io));
    assert_eq!(io.frames(3), vec![(Op::Text, b"for a".to_vec())]);
    assert_eq!(io.frames(2), vec![(Op::Text, b"for b".to_vec())]);
    assert!(io.take(1).is_empty());
    assert_eq!((core.stats().pushes_queued, core.stats().pushes_missed), (2, 1));

    // Closing releases the id; a push then misses.
    core.closed(3, 2, &mut io);
    assert_eq!(io.released, vec![core.device_hash(b"dev-a")]);
    assert!(!core.push(b"dev-a", b"late", 3, &mut io));
    assert_eq!(core.stats().devices, 1);
}

#[test]
fn evicting_a_device_closes_its_connection() {
    let mut core = ServerCore::new(cfg(), 8, 0);
    let mut io = Recorder::default();
    core.open(1, 0, &mut io);
    let mut req = upgrade(Some("dev-x"));
    core.data(1, &mut req, 0, &mut io);
    assert_eq!(io.claimed, vec![core.device_hash(b"dev-x")]);
    io.take(1);
    assert!(core.evict_device(core.device_hash(b"dev-x"), 5, &mut io));
    assert_eq!(io.closed, vec![1]);
    assert!(!core.evict_device(core.device_hash(b"dev-x"), 6, &mut io));
    assert_eq!(core.stats().devices, 0);
}

#[test]
fn shutdown_sends_going_away_to_everyone() {
    let (mut core, mut io) = upgraded(cfg(), &[1, 2]);
    core.shutdown(0, &mut io);
    for id in [1, 2] {
        let frames = io.frames(id);
        assert_eq!(&frames[0].1[..2], &1001u16.to_be_bytes());
    }
    assert_eq!(core.stats().connections, 0);
    assert_eq!(core.stats().closed_by_server, 2);
}

#[test]
fn a_drain_closes_a_few_at_a_time_and_refuses_newcomers() {
    let (mut core, mut io) = upgraded(cfg(), &[1, 2, 3, 4, 5]);
    core.start_draining();
    assert_eq!(core.drain_some(0, 0, &mut io), (0, false), "nothing due yet");
    assert_eq!(core.drain_some(2, 0, &mut io), (2, false));
    assert_eq!(core.stats().connections, 3);
    for id in [1, 2] {
        assert_eq!(&io.frames(id)[0].1[..2], &1001u16.to_be_bytes());
    }
    assert!(io.frames(3).is_empty(), "the others are still served");
    // A newcomer is refused while draining.
    core.open(9, 0, &mut io);
    let mut req = upgrade(None);
    core.data(9, &mut req, 0, &mut io);
    assert!(
        io.text(9).starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{}",
        io.text(9)
    );
    assert_eq!(core.stats().refused_draining, 1);
    // One that has sent nothing yet is refused as the drain passes it, outside the rate.
    core.open(10, 0, &mut io);
    assert_eq!(core.drain_some(10, 1, &mut io), (3, false), "the rest");
    assert!(io.text(10).starts_with("HTTP/1.1 503 "), "{}", io.text(10));
    assert_eq!(
        core.drain_some(10, 2, &mut io),
        (0, true),
        "a whole pass found nobody open"
    );
    assert_eq!(core.stats().connections, 0);
}

#[test]
fn a_drained_long_poll_is_answered_503() {
    let mut core = ServerCore::new(cfg(), 16, 0);
    let mut io = Recorder::default();
    core.open(1, 0, &mut io);
    poll(&mut core, &mut io, 1, 0);
    core.start_draining();
    assert_eq!(core.drain_some(0, 0, &mut io), (0, false), "a held poll is a client");
    assert_eq!(core.drain_some(1, 0, &mut io), (1, false));
    let answer = io.text(1);
    assert!(answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{answer}");
    assert!(answer.contains("Retry-After: 1\r\n"), "{answer}");
    assert_eq!(core.drain_some(1, 0, &mut io), (0, true));
}

#[test]
fn counters_add_up() {
    let (mut core, mut io) = upgraded(cfg(), &[1, 2, 3]);
    core.closed(1, 1, &mut io);
    let mut close = masked(true, Op::Close, &[]);
    core.data(2, &mut close, 1, &mut io);
    core.tick(20_000, &mut io);
    let s = core.stats();
    assert_eq!(s.accepted, 3);
    assert_eq!(
        s.closed,
        s.closed_by_peer + s.closed_by_client + s.closed_by_server + s.expired
    );
    assert_eq!((s.closed_by_peer, s.closed_by_client, s.expired), (1, 1, 1));
    assert_eq!(s.connections, 0);
}

/// Random bytes from the wire never panic the core; every connection ends up open or closed.
#[test]
fn hostile_bytes_never_panic() {
    let mut rng = fastrand::Rng::with_seed(99);
    let mut core = ServerCore::new(CoreConfig { echo: true, ..cfg() }, 256, 0);
    let mut io = Recorder::default();
    for round in 0..2_000u32 {
        let id = round % 200;
        if !core.is_open(id) {
            io.forget_closed(id);
            core.open(id, u64::from(round), &mut io);
            if rng.bool() {
                let mut req = upgrade(None);
                core.data(id, &mut req, u64::from(round), &mut io);
            }
        }
        let len = rng.usize(0..300);
        let mut junk: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        if rng.u8(..4) == 0 && junk.len() > 2 {
            junk[0] = 0x80 | rng.u8(0..16);
            junk[1] = 0x80 | rng.u8(0..128);
        }
        let used = core.data(id, &mut junk, u64::from(round), &mut io);
        assert!(used <= junk.len());
        io.out.clear();
    }
    core.tick(1_000_000, &mut io);
    assert_eq!(core.stats().connections, 0);
}

/// A poll answered early and re-polled in the same tick leaves two timer entries with one
/// deadline: exactly one answer may come of them.
#[test]
fn two_timer_entries_due_in_one_tick_answer_a_poll_once() {
    let mut core = ServerCore::new(
        CoreConfig {
            idle_timeout_ms: 0,
            ..cfg()
        },
        4,
        0,
    );
    let mut io = Recorder::default();
    core.open(1, 0, &mut io);
    poll(&mut core, &mut io, 1, 0);
    core.broadcast(b"{\"ts\":1}", 1, 10, &mut io).unwrap();
    io.take(1);
    poll(&mut core, &mut io, 1, 50);
    core.tick(2_000, &mut io);
    let answers = io.text(1);
    assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 1, "{answers}");
    assert_eq!(core.stats().polls_held, 0);
    assert_eq!(core.stats().polls_timed_out, 1);
    core.closed(1, 2_100, &mut io);
    assert_eq!(core.stats().connections, 0);
}

/// Idle expiry and a long-poll deadline in the same tick: the expired connection is not answered.
#[test]
fn expiry_and_poll_deadline_in_one_tick() {
    let mut core = ServerCore::new(
        CoreConfig {
            idle_timeout_ms: 2_000,
            ..cfg()
        },
        4,
        0,
    );
    let mut io = Recorder::default();
    core.open(1, 0, &mut io);
    poll(&mut core, &mut io, 1, 0);
    core.tick(2_000, &mut io);
    assert_eq!(io.closed, vec![1]);
    let s = core.stats();
    assert_eq!((s.polls_held, s.connections, s.closed), (0, 0, 1));
    assert_eq!(
        s.expired + s.polls_timed_out,
        1,
        "one of the two timers acted, not both"
    );
}

/// A request head trickled a byte at a time (each byte a "heartbeat") is cut off at the request
/// timeout with 408; an upgraded connection is not affected by it.
#[test]
fn slow_request_heads_get_408_at_the_request_timeout() {
    let mut core = ServerCore::new(
        CoreConfig {
            request_timeout_ms: 3_000,
            ..cfg()
        },
        4,
        0,
    );
    let mut io = Recorder::default();
    core.open(1, 0, &mut io);
    core.open(2, 0, &mut io);
    let mut req = upgrade(None);
    core.data(2, &mut req, 100, &mut io);
    io.take(2);
    let head = upgrade(None);
    let mut pending = Vec::new();
    for (i, b) in head[..20].iter().enumerate() {
        let t = i as u64 * 140;
        pending.push(*b);
        let used = core.data(1, &mut pending, t, &mut io);
        pending.drain(..used);
        core.tick(t, &mut io);
    }
    assert!(io.closed.is_empty(), "still within 3 s at {} ms", 19 * 140);
    core.tick(3_000, &mut io);
    assert_eq!(io.closed, vec![1]);
    assert!(io.text(1).starts_with("HTTP/1.1 408 Request Timeout\r\n"));
    assert_eq!(core.stats().request_timeouts, 1);
    assert!(core.is_open(2), "the upgraded connection stays");
}

/// Between long-polls a keep-alive connection must send its next request within the timeout.
#[test]
fn keep_alive_poll_connections_wait_at_most_the_request_timeout() {
    let mut core = ServerCore::new(
        CoreConfig {
            request_timeout_ms: 3_000,
            idle_timeout_ms: 0,
            ..cfg()
        },
        4,
        0,
    );
    let mut io = Recorder::default();
    core.open(1, 0, &mut io);
    poll(&mut core, &mut io, 1, 0);
    core.tick(2_000, &mut io); // answered (hold is 2 s)
    assert!(io.text(1).starts_with("HTTP/1.1 200 OK"));
    core.tick(4_900, &mut io);
    assert!(io.closed.is_empty());
    core.tick(5_000, &mut io);
    assert_eq!(io.closed, vec![1], "no next request within 3 s of the answer");
    assert_eq!(core.stats().request_timeouts, 1);
    assert_eq!(core.stats().polls_held, 0);
}

/// With a device key, an id needs a token for it: a second connection presenting a bad or
/// borrowed token for dev-a gets 401, and the first keeps the id and its pushes; a valid newer
/// token still replaces the older connection (a device reconnecting). Ids are unchecked without
/// a key, and connections without an id are never asked.
#[test]
fn a_device_id_needs_its_token_and_a_hijack_gets_401() {
    use super::auth::tests::token;
    const SECRET: &[u8] = b"the device key of this test, 32b";
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let with_token = |dev: &str, t: &str| {
        format!("GET /ws?id={dev}&token={t} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").into_bytes()
    };
    let cfg = CoreConfig {
        device_auth: Some(super::auth::DeviceAuth::hs256(SECRET).unwrap()),
        ..cfg()
    };
    let mut core = ServerCore::new(cfg, 16, 0);
    let mut io = Recorder::default();
    let open = |core: &mut ServerCore, io: &mut Recorder, id: ConnId, req: Vec<u8>| {
        let mut req = req;
        core.open(id, 0, io);
        core.data(id, &mut req, 0, io);
        io.text(id)
    };
    let a = open(
        &mut core,
        &mut io,
        1,
        with_token("dev-a", &token(SECRET, "dev-a", later)),
    );
    assert!(a.starts_with("HTTP/1.1 101 "), "{a}");
    let refused = [
        (2, upgrade(Some("dev-a"))),                             // no token
        (3, with_token("dev-a", "x.y.z")),                       // malformed
        (4, with_token("dev-a", &token(SECRET, "dev-a", 1000))), // expired
        (
            5,
            with_token("dev-a", &token(b"someone else's key, 32 bytes!!!", "dev-a", later)),
        ), // forged
        (6, with_token("dev-a", &token(SECRET, "dev-b", later))), // borrowed
    ];
    for (id, req) in refused {
        let answer = open(&mut core, &mut io, id, req);
        assert!(
            answer.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
            "conn {id}: {answer}"
        );
        assert!(io.closed.contains(&id));
    }
    let s = core.stats();
    assert_eq!(
        (
            s.auth_missing,
            s.auth_malformed,
            s.auth_expired,
            s.auth_bad_signature,
            s.auth_wrong_device
        ),
        (1, 1, 1, 1, 1)
    );
    assert_eq!(s.devices_replaced, 0);
    assert!(core.push(b"dev-a", b"still yours", 1, &mut io));
    assert_eq!(io.frames(1), vec![(Op::Text, b"still yours".to_vec())]);
    // A listener without an id is not asked; a valid newer token replaces the old connection.
    let anon = open(&mut core, &mut io, 7, upgrade(None));
    assert!(anon.starts_with("HTTP/1.1 101 "), "{anon}");
    let again = open(
        &mut core,
        &mut io,
        8,
        with_token("dev-a", &token(SECRET, "dev-a", later)),
    );
    assert!(again.starts_with("HTTP/1.1 101 "), "{again}");
    assert_eq!(core.stats().devices_replaced, 1);
    assert!(io.closed.contains(&1));
}

/// `--allowed-origin`: a browser page from another origin gets 403 on the upgrade and the
/// long-poll; an allowed origin, and a client that sends no Origin, are served.
#[test]
fn an_origin_not_allowed_gets_403_and_no_origin_is_not_asked() {
    let cfg = CoreConfig {
        allowed_origins: vec![b"https://app.example".to_vec()],
        ..cfg()
    };
    let mut core = ServerCore::new(cfg, 16, 0);
    let mut io = Recorder::default();
    let with_origin = |path: &str, origin: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nOrigin: {origin}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").into_bytes()
    };
    let cases: [(ConnId, Vec<u8>, &str); 5] = [
        (1, with_origin("/ws", "https://evil.example"), "HTTP/1.1 403 "),
        (2, with_origin("/ws", "https://app.example"), "HTTP/1.1 101 "),
        (3, with_origin("/ws", "HTTPS://APP.EXAMPLE"), "HTTP/1.1 101 "),
        (4, upgrade(None), "HTTP/1.1 101 "),
        (
            5,
            b"GET /poll HTTP/1.1\r\nHost: t\r\nOrigin: https://evil.example\r\n\r\n".to_vec(),
            "HTTP/1.1 403 ",
        ),
    ];
    for (id, mut req, want) in cases {
        core.open(id, 0, &mut io);
        core.data(id, &mut req, 0, &mut io);
        let answer = io.text(id);
        assert!(answer.starts_with(want), "conn {id}: {answer}");
    }
    assert_eq!(core.stats().origin_refused, 2);
}

/// Long-poll answers carry CORS headers for the page that asked, when its origin may connect:
/// its own origin (with `Vary: Origin`), or `*` when no `--allowed-origin` is given; none for a
/// client without Origin. A preflight (`OPTIONS /poll`, for a token in `Authorization`) is
/// answered 204 for an allowed origin, 403 for another.
#[test]
fn long_poll_answers_carry_cors_headers_for_allowed_origins() {
    let poll_from = |origin: Option<&str>| {
        let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
        format!("GET /poll HTTP/1.1\r\nHost: t\r\n{origin}\r\n").into_bytes()
    };
    let preflight = |origin: &str| {
        format!("OPTIONS /poll HTTP/1.1\r\nHost: t\r\nOrigin: {origin}\r\nAccess-Control-Request-Headers: authorization\r\n\r\n").into_bytes()
    };
    for (allowed, origin, want) in [
        (true, Some("https://APP.example"), Some("https://app.example")),
        (true, None, None),
        (false, Some("https://any.example"), Some("*")),
        (false, None, None),
    ] {
        let allowed_origins = if allowed {
            vec![b"https://other.example".to_vec(), b"https://app.example".to_vec()]
        } else {
            vec![]
        };
        let mut core = ServerCore::new(
            CoreConfig {
                allowed_origins,
                ..cfg()
            },
            16,
            0,
        );
        let mut io = Recorder::default();
        core.open(1, 0, &mut io);
        core.data(1, &mut poll_from(origin), 0, &mut io);
        core.broadcast(b"{}", 1, 100, &mut io).unwrap();
        let answer = io.text(1);
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        match want {
            Some(o) => assert!(
                answer.contains(&format!("\r\nAccess-Control-Allow-Origin: {o}\r\nVary: Origin\r\n")),
                "{answer}"
            ),
            None => assert!(!answer.contains("Access-Control"), "{answer}"),
        }
        // The keep-alive connection's next poll, from no origin, is answered without them: the
        // grant of the last one does not linger.
        core.data(1, &mut poll_from(None), 200, &mut io);
        core.broadcast(b"{}", 2, 300, &mut io).unwrap();
        assert!(!io.text(1).contains("Access-Control"));
    }
    let allowed_origins = vec![b"https://app.example".to_vec()];
    let mut core = ServerCore::new(
        CoreConfig {
            allowed_origins,
            ..cfg()
        },
        16,
        0,
    );
    let mut io = Recorder::default();
    core.open(1, 0, &mut io);
    core.data(1, &mut preflight("https://app.example"), 0, &mut io);
    let answer = io.text(1);
    assert!(answer.starts_with("HTTP/1.1 204 "), "{answer}");
    assert!(
        answer.contains("Access-Control-Allow-Origin: https://app.example\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("Access-Control-Allow-Headers: Authorization\r\n"),
        "{answer}"
    );
    assert!(io.closed.contains(&1));
    core.open(2, 0, &mut io);
    core.data(2, &mut preflight("https://evil.example"), 0, &mut io);
    assert!(io.text(2).starts_with("HTTP/1.1 403 "));
    assert_eq!(core.stats().origin_refused, 1);
}

/// The default without a device key: an id is refused (401), since anyone could claim it; a
/// listener without an id is served unless the server is for devices only.
#[test]
fn without_a_key_ids_are_refused_unless_insecure_and_anonymous_listeners_unless_devices_only() {
    for (insecure_ids, anonymous, with_id, without_id) in [
        (false, true, "HTTP/1.1 401 ", "HTTP/1.1 101 "),
        (true, true, "HTTP/1.1 101 ", "HTTP/1.1 101 "),
        (false, false, "HTTP/1.1 401 ", "HTTP/1.1 401 "),
    ] {
        let cfg = CoreConfig {
            insecure_ids,
            anonymous,
            ..cfg()
        };
        let mut core = ServerCore::new(cfg, 4, 0);
        let mut io = Recorder::default();
        for (id, mut req, want) in [(1, upgrade(Some("dev-1")), with_id), (2, upgrade(None), without_id)] {
            core.open(id, 0, &mut io);
            core.data(id, &mut req, 0, &mut io);
            let answer = io.text(id);
            assert!(
                answer.starts_with(want),
                "insecure {insecure_ids}, anonymous {anonymous}, conn {id}: {answer}"
            );
        }
    }
}

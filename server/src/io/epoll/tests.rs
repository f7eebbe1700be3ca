//! The epoll transport against real loopback sockets, driven by hand (no worker process).

use std::io::Write;
use std::time::Duration;

use super::*;
use crate::control::WorkerConfig;
use crate::io::Driver;

struct Rig {
    e: Epoll,
    core: ServerCore,
}

fn rig(idle_timeout_ms: u64) -> Rig {
    let cfg = WorkerConfig {
        idle_timeout_ms,
        max_conns: 100,
        listen: "127.0.0.1:0".parse().unwrap(),
        ..WorkerConfig::for_tests()
    };
    let mut e = Epoll::new(&cfg, -1).unwrap();
    e.sockets.linger = Duration::from_millis(200);
    let core = ServerCore::new(crate::worker::core_config(&cfg), e.id_space(), 0);
    Rig { e, core }
}

fn accept_one(r: &mut Rig) -> (std::net::TcpStream, ConnId) {
    let client = std::net::TcpStream::connect(r.e.listener.local_addr().unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    r.e.accept(&mut r.core);
    let id = (0..r.e.sockets.slots.len())
        .find(|&i| r.e.sockets.slots[i].state == SlotState::Live)
        .unwrap() as ConnId;
    (client, id)
}

/// A connection closed while output is pending, whose peer never reads, is still dropped
/// once its close has taken too long (found in review: it used to stay forever).
#[test]
fn closing_with_output_a_peer_never_reads_is_dropped_after_a_while() {
    let mut r = rig(1_000);
    let (mut client, id) = accept_one(&mut r);
    client.write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    r.e.readable(&mut r.core, id);
    assert!(r.core.is_open(id));
    let payload = "x".repeat(60_000);
    let mut seq = 0;
    while r.core.output_behind() == 0 {
        seq += 1;
        r.core.broadcast(payload.as_bytes(), seq, 10, &mut r.e.sockets).unwrap();
    }
    // Idle expiry while output waits in the log: closing, but the close frame cannot go yet.
    r.e.call(&mut r.core, 5_000, |core, t| core.tick(5_000, t));
    assert_eq!(r.core.stats().expired, 1);
    assert_eq!(r.e.sockets.slots[id as usize].state, SlotState::Live);
    r.e.call(&mut r.core, 16_000, |core, t| core.tick(16_000, t));
    assert_eq!(r.core.stats().close_timeouts, 1);
    assert_eq!(r.e.sockets.slots[id as usize].state, SlotState::Free);
    assert_eq!(r.e.sockets.live, 0);
    drop(client);
}

/// Bytes trickled into an incomplete request head keep a buffer of their own size, not of
/// the read size (found in review: 2 bytes held 128 KiB).
#[test]
fn trickled_bytes_keep_a_buffer_of_their_size() {
    let mut r = rig(300_000);
    let (mut client, id) = accept_one(&mut r);
    for b in [b"G", b"E", b"T"] {
        client.write_all(b).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        r.e.readable(&mut r.core, id);
    }
    let inp = &r.e.sockets.slots[id as usize].bufs.as_ref().unwrap().inp;
    assert_eq!(inp.as_slice(), b"GET");
    assert!(inp.capacity() < 1024, "3 buffered bytes hold {} bytes", inp.capacity());
}

/// The transport's per-connection budget (the fd-indexed slot table): 24 bytes in release.
/// Debug builds of mio add an 8-byte registration check to every socket.
#[test]
fn a_slot_is_24_bytes() {
    let mio_debug_field = if cfg!(debug_assertions) { 8 } else { 0 };
    assert_eq!(std::mem::size_of::<Slot>(), 24 + mio_debug_field);
}

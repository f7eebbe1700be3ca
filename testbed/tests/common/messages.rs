//! Messages of every size, end to end, on both stacks (`e2e_kernel.rs`, `e2e_xdp.rs`): large
//! broadcasts to thousands of reading clients, a standard client library receiving 60 KiB
//! messages, and clients that never read, which are closed while nobody else is held back.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use testbed::load::pattern;
use testkit::{in_ns, wait_for, Netns};

use super::*;

/// Who plays the reading clients: ws-load on the Linux TCP stack, or on the userspace stack
/// (which reads a message larger than its receive buffer in pieces).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clients {
    Kernel,
    Xdp,
}

pub fn load_args(ns: &Netns, clients: Clients) -> Vec<String> {
    match clients {
        Clients::Kernel => vec!["--stack".into(), "kernel".into()],
        Clients::Xdp => vec!["--stack".into(), "xdp".into(), "--iface".into(), ns.client_dev()],
    }
}

/// Pattern bytes a client checks in one message of `body` bytes (after the `pattern:` prefix).
fn checked(body: usize) -> u64 {
    (body - pattern::PREFIX.len()) as u64
}

fn broadcast_pattern(ns: &Netns, len: usize) -> serde_json::Value {
    admin_post(ns, "/broadcast", pattern::text(len).as_bytes())
}

/// 2,000 reading connections; broadcasts of 300 B, 4 KiB and 60 KiB bodies, back to back: every
/// connection receives every byte of every one, in order, and nobody is closed.
pub fn large_broadcasts_reach_everyone(prefix: &str, server_args: &[&str], clients: Clients) {
    const CONNS: u64 = 2000;
    const SIZES: [usize; 3] = [300, 4096, 60 * 1024];
    let dir = scratch(&format!("large-{prefix}"));
    let ns = Netns::setup(prefix, 1).unwrap();
    let _server = start_server(&ns, server_args, &dir.join("server.log"));
    let json = dir.join("load.json");
    let mut args = load_args(&ns, clients);
    args.extend(
        [
            "--conns",
            "2000",
            "--rate",
            "0",
            "--hold",
            "120s",
            "--expect-broadcasts",
            "3",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let load = start_load(&ns, &args.iter().map(String::as_str).collect::<Vec<_>>(), &json);
    wait_conns(&ns, CONNS, Duration::from_secs(60));
    for len in SIZES {
        let b = broadcast_pattern(&ns, len);
        assert_eq!(b["queued"], CONNS, "{len} B: {b}");
        assert!(b["payload_bytes"].as_u64().unwrap() > len as u64, "{b}");
    }
    let summary = finish_load(load, &json, Duration::from_secs(150));
    let c = &summary["counters"];
    assert_eq!(summary["established"], CONNS, "{summary}");
    assert_eq!(
        c["broadcasts"],
        3 * CONNS,
        "every connection got every broadcast: {summary}"
    );
    assert_eq!(c["corrupt"], 0, "{summary}");
    let per_conn: u64 = SIZES.iter().map(|&s| checked(s)).sum();
    assert_eq!(c["checked_bytes"], CONNS * per_conn, "every byte checked: {summary}");
    assert_eq!(c["closed_by_server"], serde_json::json!({}), "nobody closed: {summary}");
    let stats = admin_json(&ns, "/stats");
    assert_eq!(stats["slow_readers_closed"], 0, "{stats}");
    assert_eq!(stats["protocol_errors"], 0, "{stats}");
    assert_eq!(stats["output_waiting"], 0, "{stats}");
}

/// Python's `websockets` receives a 60 KiB broadcast and a 60 KiB targeted push, every byte.
pub fn a_standard_client_receives_60_kib_messages(prefix: &str, server_args: &[&str]) {
    const LEN: usize = 60 * 1024;
    let dir = scratch(&format!("py-big-{prefix}"));
    let ns = Netns::setup(prefix, 1).unwrap();
    let _server = start_server(&ns, server_args, &dir.join("server.log"));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/ws_big_messages.py");
    let mut cmd = ns.command(&ns.cli, std::path::Path::new("python3"));
    cmd.arg(&script).arg(format!("ws://{SERVER}/ws?id=py-big")).arg("2");
    let (mut py, mut next) = talk_to("python websockets client", cmd);
    assert_eq!(next(), "connected");
    assert_eq!(broadcast_pattern(&ns, LEN)["queued"], 1);
    assert_eq!(next(), format!("message broadcast {LEN} ok"));
    let pushed = admin_post(&ns, "/push?id=py-big", pattern::text(LEN).as_bytes());
    assert_eq!(pushed["queued"], true, "{pushed}");
    assert_eq!(pushed["result"], "queued to a connected device", "{pushed}");
    assert_eq!(next(), format!("message push {LEN} ok"));
    let status = py.wait_timeout(Duration::from_secs(10)).expect("python client exits");
    assert!(
        status.success(),
        "python client failed: {status} (its standard error is above)"
    );
}

/// Connections from `src` that upgrade and then never read, with a small receive buffer (4 KiB)
/// so that the server's output backs up quickly. Made in the client namespace.
fn never_readers(ns: &Netns, src: &'static str, n: usize) -> Vec<TcpStream> {
    in_ns(&ns.cli, move || {
        (0..n)
            .map(|i| {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                s.set_recv_buffer_size(4096).unwrap();
                s.bind(&format!("{src}:0").parse::<std::net::SocketAddr>().unwrap().into())
                    .unwrap();
                s.connect(&SERVER.parse::<std::net::SocketAddr>().unwrap().into())
                    .unwrap();
                let mut s: TcpStream = s.into();
                let req = format!(
                    "GET /ws?id=stuck-{i} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                );
                s.write_all(req.as_bytes()).unwrap();
                s
            })
            .collect()
    })
}

/// How a never-reading connection ended, read after the fact: it was reset, or its data ends
/// with a 4008 close frame and then EOF.
fn ended_as_slow_reader(mut s: TcpStream) -> Result<(), String> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        Err(e) => Err(format!("{e} after {} bytes", got.len())),
        // A close frame with code 4008 (0x0fa8) and the reason "slow reader" (13 bytes).
        Ok(_) if got.windows(4).any(|w| w == [0x88, 0x0d, 0x0f, 0xa8]) => Ok(()),
        Ok(_) => Err(format!("EOF without a 4008 close frame after {} bytes", got.len())),
    }
}

/// 1,000 reading connections and 50 that never read; 20 broadcasts of 4 KiB. The 50 are closed
/// as slow readers (4008 or a reset) within the write timeout; every reader gets all 20; the
/// server's memory stays flat (the log is allocated once; nothing is copied per connection).
pub fn never_readers_are_closed_and_nobody_else_waits(prefix: &str, server_args: &[&str], clients: Clients) {
    const READERS: u64 = 1000;
    const STUCK: usize = 50;
    let dir = scratch(&format!("never-read-{prefix}"));
    // The readers from the first client address, the never-readers from the second (the
    // userspace-stack client takes all TCP to its own addresses).
    let ns = Netns::setup(prefix, 2).unwrap();
    let mut args: Vec<&str> = server_args.to_vec();
    args.extend(["--log-size", "1M", "--write-timeout", "2s"]);
    let _server = start_server(&ns, &args, &dir.join("server.log"));
    let json = dir.join("load.json");
    let mut load_args = load_args(&ns, clients);
    load_args.extend(
        [
            "--src",
            "198.19.0.1",
            "--conns",
            "1000",
            "--rate",
            "0",
            "--hold",
            "120s",
            "--expect-broadcasts",
            "20",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let load = start_load(&ns, &load_args.iter().map(String::as_str).collect::<Vec<_>>(), &json);
    let stuck = never_readers(&ns, "198.19.0.2", STUCK);
    wait_conns(&ns, READERS + STUCK as u64, Duration::from_secs(60));
    let rss_before = admin_json(&ns, "/stats")["memory"]["rss_bytes"].as_u64().unwrap();
    for i in 0..20 {
        let b = broadcast_pattern(&ns, 4096);
        assert_eq!(b["queued"], READERS + STUCK as u64, "broadcast {i}: {b}");
    }
    let summary = finish_load(load, &json, Duration::from_secs(120));
    let c = &summary["counters"];
    assert_eq!(c["broadcasts"], 20 * READERS, "every reader got all 20: {summary}");
    assert_eq!(c["corrupt"], 0, "{summary}");
    assert_eq!(
        c["closed_by_server"],
        serde_json::json!({}),
        "no reader closed: {summary}"
    );
    let closed = wait_for(Duration::from_secs(20), Duration::from_millis(200), || {
        let s = admin_json(&ns, "/stats");
        (s["slow_readers_closed"] == STUCK as u64).then_some(s)
    });
    let stats =
        closed.unwrap_or_else(|| panic!("the never-readers were not all closed: {}", admin_json(&ns, "/stats")));
    let rss_after = stats["memory"]["rss_bytes"].as_u64().unwrap();
    // The log (1 MiB) is touched as it is written; everything else stays put. A copy per stuck
    // connection alone would be 50 × 80 KiB = 4 MiB.
    assert!(
        rss_after < rss_before + (2 << 20),
        "server memory grew from {rss_before} to {rss_after} bytes"
    );
    for (i, s) in stuck.into_iter().enumerate() {
        if let Err(e) = ended_as_slow_reader(s) {
            panic!("never-reader {i}: {e}");
        }
    }
}

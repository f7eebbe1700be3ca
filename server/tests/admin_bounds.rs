//! The admin endpoint is bounded: a local client cannot exhaust the supervisor with an endless
//! header line, a head sent a byte a second, hundreds of idle connections, or requests that never
//! send their body; meanwhile `/stats` keeps answering everyone else, and `/stats` counts what
//! was refused. On loopback, without root: a kernel-stack server with one worker.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::start_server;
use testkit::http::http;

/// The admin endpoint's head timeout (`AdminLimits::default`).
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Its connection limit.
const MAX_CONNS: usize = 64;

/// GET /stats, which must answer 200 within `within`; returns the report.
fn stats_within(admin: SocketAddr, within: Duration) -> serde_json::Value {
    let started = Instant::now();
    let (status, body) = http("GET", admin, "/stats", b"").expect("GET /stats");
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(took <= within, "/stats took {took:?}");
    serde_json::from_str(&body).expect("JSON")
}

/// Whether the server closed `s` (EOF or reset), waiting up to `timeout`; what it sent first.
fn closed_within(s: &mut TcpStream, timeout: Duration) -> (bool, String) {
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return (true, String::from_utf8_lossy(&got).into()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (true, String::from_utf8_lossy(&got).into()),
        }
    }
    (false, String::from_utf8_lossy(&got).into())
}

/// Whether the server has closed `s` by now (EOF or reset), not waiting.
fn is_closed(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let closed = match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

/// An endless header line is cut off (431 or a close) after a few KiB, a head sent a byte a
/// second is dropped after the head timeout, and all the while `/stats` answers at once.
#[test]
fn an_endless_header_line_and_a_byte_a_second_leave_stats_answering() {
    let server = start_server("endless", &["--workers", "1"]);
    let admin = server.admin;

    let endless = std::thread::spawn(move || {
        let mut s = TcpStream::connect(admin).unwrap();
        s.write_all(b"GET /stats HTTP/1.1\r\nHost: localhost\r\nX-Endless: ")
            .unwrap();
        let chunk = [b'a'; 1024];
        let started = Instant::now();
        let mut sent = 0usize;
        // The server must stop taking it long before 64 MiB or 10 s.
        while sent < 64 << 20 && started.elapsed() < Duration::from_secs(10) {
            match s.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        let (closed, answer) = closed_within(&mut s, Duration::from_secs(2));
        (sent, started.elapsed(), closed, answer)
    });
    let drip = std::thread::spawn(move || {
        let mut s = TcpStream::connect(admin).unwrap();
        s.write_all(b"GET /stats HTTP/1.1\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1000))).unwrap();
        let started = Instant::now();
        let header =
            b"X-Drip: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let mut buf = [0u8; 1024];
        for byte in header {
            if s.write_all(&[*byte]).is_err() {
                break;
            }
            // A byte a second; the server closing ends the read at once.
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => return (started.elapsed(), Some(String::from_utf8_lossy(&buf[..n]).to_string())),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        (started.elapsed(), None)
    });

    // Others are served all along.
    let until = Instant::now() + HEAD_TIMEOUT + Duration::from_secs(2);
    let mut asked = 0;
    while Instant::now() < until {
        stats_within(admin, Duration::from_secs(1));
        asked += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(asked >= 20, "{asked}");

    let (sent, took, closed, answer) = endless.join().unwrap();
    assert!(
        closed && (answer.is_empty() || answer.starts_with("HTTP/1.1 431 ")),
        "an endless header line is answered 431 or closed: closed {closed}, answer {answer:?}"
    );
    assert!(
        sent < 64 << 20 && took < Duration::from_secs(10),
        "the server kept taking the endless line: {sent} bytes in {took:?}"
    );
    let (took, answer) = drip.join().unwrap();
    assert!(answer.is_none(), "the dripped head was answered: {answer:?}");
    assert!(
        took >= HEAD_TIMEOUT - Duration::from_secs(1) && took <= HEAD_TIMEOUT + Duration::from_secs(2),
        "a head sent a byte a second is dropped after the head timeout, not {took:?}"
    );

    let stats = stats_within(admin, Duration::from_secs(1));
    let a = &stats["admin"];
    assert!(a["oversize_heads"].as_u64() >= Some(1), "{a}");
    assert!(a["head_timeouts"].as_u64() >= Some(1), "{a}");
    assert_eq!(a["refused"], 0, "{a}");
}

/// 200 idle connections (more than the limit of 64) do not keep `/stats` out: the oldest idle
/// ones make room. 64 requests that hold their place (a POST whose body never comes) do: the
/// next connection is refused with 503 and counted, and once their body timeout answers them
/// (408), `/stats` is served again.
#[test]
fn idle_connections_make_room_and_busy_ones_get_the_next_refused() {
    let server = start_server("idle", &["--workers", "1"]);
    let admin = server.admin;
    let mut idle: Vec<TcpStream> = (0..200).map(|_| TcpStream::connect(admin).unwrap()).collect();
    for _ in 0..5 {
        stats_within(admin, Duration::from_secs(1));
    }
    // At most the limit of them is still open; the others were closed to make room.
    std::thread::sleep(Duration::from_millis(200));
    let open = idle.iter_mut().map(is_closed).filter(|&closed| !closed).count();
    assert!(open <= MAX_CONNS, "{open} idle connections still open");
    let stats = stats_within(admin, Duration::from_secs(1));
    assert!(
        stats["admin"]["evicted_idle"].as_u64() >= Some((200 - MAX_CONNS) as u64),
        "{}",
        stats["admin"]
    );
    drop(idle);

    // 64 requests in progress (their bodies never come).
    let mut busy: Vec<TcpStream> = (0..MAX_CONNS)
        .map(|_| {
            let mut s = TcpStream::connect(admin).unwrap();
            s.write_all(b"POST /broadcast HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nabc")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut refused = TcpStream::connect(admin).unwrap();
    let _ = refused.write_all(b"GET /stats HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let (closed, answer) = closed_within(&mut refused, Duration::from_secs(2));
    assert!(closed, "the connection over the limit is closed");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 503 "),
        "refused cleanly: {answer:?}"
    );
    // The bodies time out: each is answered 408, and the endpoint is free again.
    for s in &mut busy {
        let (closed, answer) = closed_within(s, Duration::from_secs(8));
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
        assert!(closed, "closed after the 408");
    }
    let stats = stats_within(admin, Duration::from_secs(1));
    let a = &stats["admin"];
    assert!(a["refused"].as_u64() >= Some(1), "{a}");
    assert_eq!(a["body_timeouts"], MAX_CONNS, "{a}");
    let (status, metrics) = http("GET", admin, "/metrics", b"").unwrap();
    assert_eq!(status, 200);
    let refused_total = metrics
        .lines()
        .find_map(|l| l.strip_prefix("wsserver_admin_refusals_total{reason=\"over_limit\"} "))
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert!(refused_total >= Some(1), "{metrics}");
}

/// Every endpoint still behaves as before the HTTP server changed: statuses, bodies, methods,
/// HEAD, keep-alive, a body over 64 KiB.
#[test]
fn every_endpoint_answers_as_before() {
    let server = start_server("endpoints", &["--workers", "1"]);
    let admin = server.admin;
    let (status, help) = http("GET", admin, "/", b"").unwrap();
    assert_eq!(status, 200);
    assert!(help.contains("POST /push?id=DEVICE"), "{help}");
    assert_eq!(http("GET", admin, "/nope", b"").unwrap().0, 404);
    assert_eq!(http("DELETE", admin, "/stats", b"").unwrap().0, 405);
    assert_eq!(http("POST", admin, "/push", b"x").unwrap().0, 400);
    let (status, conns) = http("GET", admin, "/conns", b"").unwrap();
    assert_eq!(status, 200);
    assert_eq!(conns, r#"{"closed":0,"conns":0}"#);
    let (status, body) = http("POST", admin, "/push?id=nobody", b"hi").unwrap();
    assert_eq!(status, 200);
    let push: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(push["queued"], false);
    assert_eq!(push["result"], "not connected");
    let (status, body) = http("POST", admin, "/broadcast", b"to all").unwrap();
    assert_eq!(status, 200, "{body}");
    let b: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(b["queued"], 0);
    assert!(b["seq"].as_u64() > push["seq"].as_u64(), "{b} {push}");
    let big = vec![b'a'; 64 * 1024 + 1];
    assert_eq!(http("POST", admin, "/broadcast", &big).unwrap().0, 413);
    let (status, metrics) = http("GET", admin, "/metrics", b"").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("wsserver_broadcasts_total 1\n"), "{metrics}");
    assert!(
        metrics.contains("# TYPE wsserver_broadcasts_total counter\n"),
        "{metrics}"
    );

    // Two requests on one kept-alive connection, the first a HEAD (no body, a Content-Length).
    let mut s = TcpStream::connect(admin).unwrap();
    s.write_all(b"HEAD /stats HTTP/1.1\r\nHost: localhost\r\n\r\nGET /conns HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let answers: Vec<&str> = raw.matches("HTTP/1.1 200 OK").collect();
    assert_eq!(answers.len(), 2, "{raw}");
    assert!(raw.to_ascii_lowercase().contains("content-length:"), "{raw}");
    assert!(raw.ends_with(r#"{"closed":0,"conns":0}"#), "{raw}");
}

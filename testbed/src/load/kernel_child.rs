//! One load process on the kernel stack: opens its share of connections at its rate with bounded
//! concurrency, holds them (pings, data rounds, long-polls), measures, and closes them cleanly.
//! Reports progress and a final line as JSON on stdout.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use host::monotonic_ns;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::session::{self, ended, eof, fail, set_state, Fate, Peer, Proto, Shared, State};
use super::{ChildLine, ChildPlan};

const READ_CHUNK: usize = 64 * 1024;
const TICK: Duration = Duration::from_millis(100);
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// How long closing may take before the process reports and exits anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

struct Conn {
    stream: TcpStream,
    p: Proto,
    /// Bytes received and not yet consumed (a partial frame or response).
    inp: Vec<u8>,
    /// Bytes the kernel did not take yet.
    out: Vec<u8>,
    writable: bool,
}

impl Peer for Conn {
    fn proto(&mut self) -> &mut Proto {
        &mut self.p
    }

    fn send(&mut self, bytes: &[u8]) -> Fate {
        send(self, bytes)
    }
}

pub fn run(plan: ChildPlan) -> anyhow::Result<()> {
    host::process::raise_fd_limit();
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop))?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stop))?;
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut slab: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut inflight: VecDeque<(usize, u64, u64)> = VecDeque::new();
    let mut scratch = vec![0u8; READ_CHUNK];
    let mut sh = Shared::new(plan);
    let start = Instant::now();
    let end_n = sh.plan.first + sh.plan.count;
    let mut next_n = sh.plan.first;
    let mut hold_started: Option<Instant> = None;
    let mut closing_started: Option<Instant> = None;
    let mut next_tick = start;
    let mut tick_no: u64 = 0;
    let mut next_progress = start;
    let mut stdout = io::stdout().lock();
    let connect_timeout_ns = sh.plan.connect_timeout_ms * 1_000_000;
    let duration = Duration::from_millis(sh.plan.duration_ms);

    loop {
        let now = Instant::now();
        // Open new connections within the rate and the concurrency bound.
        if closing_started.is_none() && next_n < end_n {
            let allowed = if sh.plan.rate > 0.0 {
                ((now - start).as_secs_f64() * sh.plan.rate).floor() as u64 + 1
            } else {
                u64::MAX
            };
            while next_n < end_n && sh.handshaking < sh.plan.concurrency && next_n - sh.plan.first < allowed {
                let n = next_n;
                next_n += 1;
                sh.c.attempted += 1;
                if sh.c.first_attempt_ns == 0 {
                    sh.c.first_attempt_ns = monotonic_ns();
                }
                match open(&sh.plan, n) {
                    Ok(stream) => {
                        let slot = free.pop().unwrap_or_else(|| {
                            slab.push(None);
                            slab.len() - 1
                        });
                        let mut conn = Conn {
                            stream,
                            p: Proto::new(n),
                            inp: Vec::new(),
                            out: Vec::new(),
                            writable: true,
                        };
                        if let Err(e) = poll.registry().register(
                            &mut conn.stream,
                            Token(slot),
                            Interest::READABLE | Interest::WRITABLE,
                        ) {
                            fail(&mut sh.c, &format!("register: {e}"));
                            free.push(slot);
                            continue;
                        }
                        inflight.push_back((slot, n, conn.p.since_ns + connect_timeout_ns));
                        sh.handshaking += 1;
                        slab[slot] = Some(conn);
                    }
                    Err(cause) => fail(&mut sh.c, cause),
                }
            }
        }
        if !sh.c.done_connecting && next_n >= end_n && inflight.is_empty() {
            sh.c.done_connecting = true;
            hold_started = Some(now);
        }

        let wait = if next_n < end_n && closing_started.is_none() {
            Duration::from_millis(5)
        } else {
            TICK
        };
        if let Err(e) = poll.poll(&mut events, Some(wait)) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e).context("epoll_wait");
            }
        }
        for event in events.iter() {
            let slot = event.token().0;
            let Some(conn) = slab.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            let mut fate = Fate::Keep;
            if event.is_writable() {
                fate = writable(conn, &mut sh);
            }
            if fate == Fate::Keep && (event.is_readable() || event.is_read_closed() || event.is_error()) {
                fate = readable(conn, &mut sh, &mut scratch);
            }
            if fate == Fate::Keep && conn.writable != (!conn.out.is_empty() || conn.p.state == State::Connecting) {
                let want = !conn.writable;
                let interest = if want {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                if poll
                    .registry()
                    .reregister(&mut conn.stream, Token(slot), interest)
                    .is_ok()
                {
                    conn.writable = want;
                }
            }
            if fate == Fate::Drop {
                if let Some(mut conn) = slab[slot].take() {
                    // Handlers account for what they end; anything still open failed on a write.
                    ended(&mut conn.p, &mut sh, "write_error");
                    let _ = poll.registry().deregister(&mut conn.stream);
                }
                free.push(slot);
            }
        }

        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + TICK;
            tick_no += 1;
            // Handshake timeouts, oldest first.
            let now_ns = monotonic_ns();
            while let Some(&(slot, n, deadline)) = inflight.front() {
                let pending = slab.get(slot).and_then(Option::as_ref).filter(|c| c.p.n == n);
                match pending {
                    Some(c) if matches!(c.p.state, State::Connecting | State::Handshake) => {
                        if deadline > now_ns {
                            break;
                        }
                        fail(
                            &mut sh.c,
                            if c.p.state == State::Connecting {
                                "connect_timeout"
                            } else {
                                "handshake_timeout"
                            },
                        );
                        if let Some(mut conn) = slab[slot].take() {
                            set_state(&mut conn.p, State::Done, &mut sh);
                            let _ = poll.registry().deregister(&mut conn.stream);
                        }
                        free.push(slot);
                        inflight.pop_front();
                    }
                    _ => {
                        inflight.pop_front();
                    }
                }
            }
            if closing_started.is_none() {
                periodic(&mut slab, &mut sh, tick_no, &poll);
            }
        }

        // When to stop holding.
        let stop_now = stop.load(Ordering::Relaxed);
        if closing_started.is_none() {
            let held = hold_started.is_some_and(|t| t.elapsed() >= Duration::from_millis(sh.plan.hold_ms));
            let got_all = sh.plan.expect_broadcasts > 0 && sh.c.done_connecting && sh.c.reached_expected >= sh.c.open;
            if held || got_all || stop_now || start.elapsed() >= duration {
                closing_started = Some(Instant::now());
                sh.closing = true;
                begin_close(&mut slab, &mut sh);
            }
        }
        let live = slab.len() - free.len();
        if let Some(t) = closing_started {
            if live == 0 || t.elapsed() >= CLOSE_GRACE {
                break;
            }
        }
        if Instant::now() >= next_progress {
            next_progress += PROGRESS_EVERY;
            emit(&mut stdout, &ChildLine::Progress(Box::new(sh.c.clone())))?;
        }
    }

    let final_line = session::final_line(&sh);
    emit(&mut stdout, &ChildLine::Final(Box::new(final_line)))?;
    Ok(())
}

fn emit(out: &mut impl Write, line: &ChildLine) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// A non-blocking connect from this connection's source address.
fn open(plan: &ChildPlan, n: u64) -> Result<TcpStream, &'static str> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM.nonblocking(), Some(Protocol::TCP)).map_err(errno_cause)?;
    if let Some((src, port)) = source_of(&plan.sources, n) {
        // Pick the port ourselves: bind() of a given port is one hash lookup, while letting the
        // kernel search for a free one gets slow once an address's range is half used (measured:
        // ~15K connects/s falling to ~650/s past 30K connections per address).
        let explicit = port.is_some_and(|p| socket.bind(&SocketAddr::from((src, p)).into()).is_ok());
        if !explicit {
            // Taken (or beyond the range): let connect() pick the port for the full 4-tuple.
            let on: libc::c_int = 1;
            // SAFETY: setsockopt reads an int we own for the duration of the call.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            socket.bind(&SocketAddr::from((src, 0)).into()).map_err(errno_cause)?;
        }
    }
    let _ = socket.set_tcp_nodelay(true);
    match socket.connect(&plan.server.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(errno_cause(e)),
    }
    // SAFETY: the fd comes from a socket we own and hand over whole.
    Ok(TcpStream::from_std(unsafe {
        std::net::TcpStream::from_raw_fd(socket.into_raw_fd())
    }))
}

/// First source port we assign; the testbed's namespaces use 1024-65535 for local ports.
const FIRST_PORT: u64 = 1024;

/// Source address and port of connection `n`: addresses round-robin, and on each address the
/// connections take consecutive ports, so no two connections of a run share (address, port).
fn source_of(sources: &[std::net::Ipv4Addr], n: u64) -> Option<(std::net::Ipv4Addr, Option<u16>)> {
    if sources.is_empty() {
        return None;
    }
    let len = sources.len() as u64;
    let port = FIRST_PORT + n / len;
    Some((sources[(n % len) as usize], u16::try_from(port).ok()))
}

/// A short, stable name for why a connection failed.
fn errno_cause(e: io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused",
        Some(libc::ETIMEDOUT) => "connect_timeout",
        Some(libc::ECONNRESET) => "reset",
        Some(libc::EADDRNOTAVAIL) => "no_free_port",
        Some(libc::EADDRINUSE) => "address_in_use",
        Some(libc::EMFILE) | Some(libc::ENFILE) => "fd_limit",
        Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => "unreachable",
        Some(libc::ENOBUFS) | Some(libc::ENOMEM) => "out_of_memory",
        _ => "other_error",
    }
}

fn send(conn: &mut Conn, bytes: &[u8]) -> Fate {
    if !conn.out.is_empty() {
        conn.out.extend_from_slice(bytes);
        return Fate::Keep;
    }
    match conn.stream.write(bytes) {
        Ok(n) if n == bytes.len() => Fate::Keep,
        Ok(n) => {
            conn.out.extend_from_slice(&bytes[n..]);
            Fate::Keep
        }
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
            conn.out.extend_from_slice(bytes);
            Fate::Keep
        }
        Err(_) => Fate::Drop,
    }
}

fn writable(conn: &mut Conn, sh: &mut Shared) -> Fate {
    if conn.p.state == State::Connecting {
        match conn.stream.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => {
                fail(&mut sh.c, errno_cause(e));
                set_state(&mut conn.p, State::Done, sh);
                return Fate::Drop;
            }
        }
        if conn.stream.peer_addr().is_err() {
            return Fate::Keep; // not connected yet (spurious wakeup)
        }
        return session::connected(conn, sh);
    }
    let mut written = 0;
    while written < conn.out.len() {
        match conn.stream.write(&conn.out[written..]) {
            Ok(0) => return Fate::Drop,
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Fate::Drop,
        }
    }
    conn.out.drain(..written);
    Fate::Keep
}

fn readable(conn: &mut Conn, sh: &mut Shared, scratch: &mut [u8]) -> Fate {
    loop {
        match conn.stream.read(scratch) {
            Ok(0) => return eof(&mut conn.p, sh, "eof"),
            Ok(n) => {
                sh.c.bytes_in += n as u64;
                let fate = if conn.inp.is_empty() {
                    let (fate, used) = session::consume(conn, sh, &mut scratch[..n]);
                    if fate == Fate::Keep {
                        conn.inp.extend_from_slice(&scratch[used..n]);
                    }
                    fate
                } else {
                    conn.inp.extend_from_slice(&scratch[..n]);
                    let mut inp = std::mem::take(&mut conn.inp);
                    let (fate, used) = session::consume(conn, sh, &mut inp);
                    inp.drain(..used);
                    conn.inp = inp;
                    fate
                };
                if fate == Fate::Drop {
                    return Fate::Drop;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Fate::Keep,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let cause = if e.raw_os_error() == Some(libc::ECONNRESET) {
                    "reset"
                } else {
                    "error"
                };
                return eof(&mut conn.p, sh, cause);
            }
        }
    }
}

/// Pings and data rounds, spread evenly over the ticks (`session::periodic_slots`).
fn periodic(slab: &mut [Option<Conn>], sh: &mut Shared, tick_no: u64, poll: &Poll) {
    for (slot, is_ping) in session::periodic_slots(&sh.plan, TICK.as_millis() as u64, tick_no, slab.len()) {
        let Some(conn) = slab[slot].as_mut() else {
            continue;
        };
        let _ = session::periodic_frame(conn, sh, is_ping);
        if !conn.out.is_empty() && !conn.writable {
            let _ = poll
                .registry()
                .reregister(&mut conn.stream, Token(slot), Interest::READABLE | Interest::WRITABLE);
            conn.writable = true;
        }
    }
}

/// Start the close handshake on every open connection; drop the others.
fn begin_close(slab: &mut [Option<Conn>], sh: &mut Shared) {
    for entry in slab.iter_mut() {
        if let Some(conn) = entry.as_mut() {
            if session::begin_close(conn, sh) == Fate::Drop {
                *entry = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::Ipv4Addr;

    fn plan() -> ChildPlan {
        serde_json::from_value(serde_json::json!({
            "index": 0, "server": "127.0.0.1:1", "host": "h", "path": "/ws", "first": 0, "count": 3,
            "sources": [], "rate": 0.0, "concurrency": 10, "connect_timeout_ms": 1000, "hold_ms": 0,
            "duration_ms": 1000, "ping_interval_ms": 0, "send_interval_ms": 0, "payload": 0,
            "id_prefix": null, "poll": false, "expect_broadcasts": 0
        }))
        .unwrap()
    }

    fn conn(state: State, n: u64) -> Conn {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        stream.set_nonblocking(true).unwrap();
        // The peer must outlive the test, or the kernel resets the connection.
        std::mem::forget(listener);
        Conn {
            stream: TcpStream::from_std(stream),
            p: Proto {
                n,
                state,
                since_ns: 0,
                broadcasts: 0,
            },
            inp: Vec::new(),
            out: Vec::new(),
            writable: false,
        }
    }

    /// Closing early (duration or signal) counts connections still shaking hands as failed, and
    /// the handshake window is released exactly once per connection (found in review).
    #[test]
    fn closing_accounts_for_every_attempt() {
        let mut sh = Shared::new(plan());
        sh.c.attempted = 3;
        sh.handshaking = 2;
        let mut open = conn(State::Handshake, 2);
        set_state(&mut open.p, State::Open, &mut sh);
        session::established(&open.p, &mut sh);
        assert_eq!((sh.handshaking, sh.c.open), (1, 1));
        let mut slab = vec![Some(conn(State::Connecting, 0)), Some(open), None];
        sh.c.failed.insert("refused".into(), 1); // the third attempt
        begin_close(&mut slab, &mut sh);
        assert_eq!(sh.handshaking, 0);
        assert_eq!(sh.c.open, 0);
        assert_eq!(sh.c.attempted, sh.c.established + sh.c.failed_total(), "{:?}", sh.c);
        assert_eq!(sh.c.failed.get("aborted_in_handshake"), Some(&1));
        assert!(slab[0].is_none() && slab[1].as_ref().is_some_and(|c| c.p.state == State::Closing));
    }

    /// A broken frame on an established connection is the server's fault, not a failed connection.
    #[test]
    fn bad_frames_on_established_connections_are_not_failures() {
        let mut sh = Shared::new(plan());
        sh.c.open = 1;
        let mut c = conn(State::Open, 0);
        let mut junk = vec![0x8f, 0x00]; // reserved opcode
        let (fate, _) = session::consume(&mut c, &mut sh, &mut junk);
        assert!(fate == Fate::Drop);
        assert_eq!(sh.c.failed_total(), 0);
        assert_eq!(sh.c.closed_by_server.get("bad_server_frame"), Some(&1));
        assert_eq!(sh.c.open, 0);
    }

    #[test]
    fn every_connection_gets_its_own_source_address_and_port() {
        let sources: Vec<Ipv4Addr> = (1..=3).map(|i| Ipv4Addr::new(198, 19, 0, i)).collect();
        let mut seen = HashSet::new();
        for n in 0..150_000 {
            let (addr, port) = source_of(&sources, n).unwrap();
            assert!(seen.insert((addr, port.unwrap())), "connection {n} repeats a pair");
        }
        assert_eq!(source_of(&sources, 0), Some((sources[0], Some(1024))));
        assert_eq!(source_of(&sources, 4), Some((sources[1], Some(1025))));
        assert_eq!(
            source_of(&sources, 3 * 64_512),
            Some((sources[0], None)),
            "past 65535 the kernel picks"
        );
        assert_eq!(source_of(&[], 5), None);
    }
}

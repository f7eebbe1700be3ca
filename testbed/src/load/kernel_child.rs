//! One load process on the kernel stack: an epoll loop over its share of the connections (kernel
//! sockets, so at most ~20,000 per process here). `schedule.rs` decides when to connect, time out,
//! ping, stop and close; `session.rs` speaks the protocol; this file does the socket I/O. Reports
//! progress and a final line as JSON on stdout.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use host::monotonic_ns;
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::schedule::{Conns, Round, Schedule, Step, Timing};
use super::session::{self, ended, eof, fail, set_state, Fate, Peer, Proto, Shared, State};
use super::tls::Transport;
use super::{emit, ChildLine, ChildPlan};

const READ_CHUNK: usize = 64 * 1024;
const TIMING: Timing = Timing {
    tick: Duration::from_millis(100),
    close_grace: Duration::from_secs(3),
    // Connecting is cheap here (a non-blocking connect): only the rate and concurrency bound it.
    connect_burst: usize::MAX,
    connect_poll: Duration::from_millis(5),
};

struct Conn {
    /// The socket, or a TLS session over it (`--tls-ca`).
    stream: Transport,
    p: Proto,
    /// Bytes received and not yet consumed (a partial frame or response).
    inp: Vec<u8>,
    /// Bytes the kernel did not take yet.
    out: Vec<u8>,
    /// Registered for writable events (while connecting, or with output waiting).
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

/// The process's connections: a slab of sockets whose slot is the epoll token.
struct Client {
    poll: Poll,
    slab: Vec<Option<Conn>>,
    free: Vec<usize>,
    sh: Shared,
    scratch: Vec<u8>,
    /// `--tls-ca`: the client configuration every connection's session starts from.
    tls: Option<(
        std::sync::Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl Conns for Client {
    fn live(&self) -> usize {
        self.slab.len() - self.free.len()
    }

    fn handshaking(&self) -> usize {
        self.sh.handshaking
    }

    fn open(&self) -> u64 {
        self.sh.c.open
    }

    fn reached_expected(&self) -> u64 {
        self.sh.c.reached_expected
    }

    fn state(&self, slot: usize, n: u64) -> Option<State> {
        let conn = self.slab.get(slot)?.as_ref()?;
        (conn.p.n == n).then_some(conn.p.state)
    }
}

pub fn run(plan: ChildPlan) -> anyhow::Result<()> {
    host::process::raise_fd_limit();
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop))?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stop))?;
    let mut sched = Schedule::new(&plan, TIMING, monotonic_ns());
    let mut k = Client::new(plan)?;
    let mut events = Events::with_capacity(4096);
    let mut stdout = io::stdout().lock();
    loop {
        if stop.load(Ordering::Relaxed) {
            sched.stop();
        }
        match sched.next(monotonic_ns(), &k) {
            Step::Wait(wait) => k.io(&mut events, wait)?,
            Step::Connect(n) => k.connect(n, &mut sched),
            Step::TimeOut { slot, cause } => k.time_out(slot, cause),
            Step::Periodic(round) => k.periodic(round),
            Step::BeginClose(_) => k.begin_close(),
            Step::Progress => {
                k.sh.c.done_connecting = sched.done_connecting();
                emit(&mut stdout, &ChildLine::Progress(Box::new(k.sh.c.clone())))?;
            }
            Step::Finish => break,
        }
    }
    k.sh.c.done_connecting = sched.done_connecting();
    emit(&mut stdout, &ChildLine::Final(Box::new(session::final_line(&k.sh))))
}

impl Client {
    fn new(plan: ChildPlan) -> anyhow::Result<Client> {
        let tls = plan.tls.as_ref().map(super::tls::client_config).transpose()?;
        Ok(Client {
            tls,
            poll: Poll::new()?,
            slab: Vec::new(),
            free: Vec::new(),
            sh: Shared::new(plan),
            scratch: vec![0u8; READ_CHUNK],
        })
    }

    /// Start connection `n`: a non-blocking connect, registered for its completion.
    fn connect(&mut self, n: u64, sched: &mut Schedule) {
        session::attempt(&mut self.sh);
        let stream = match open(&self.sh.plan, n) {
            Ok(stream) => stream,
            Err(cause) => return fail(&mut self.sh.c, cause),
        };
        let stream = match Transport::new(stream, self.tls.as_ref()) {
            Ok(stream) => stream,
            Err(_) => return fail(&mut self.sh.c, "tls_setup"),
        };
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slab.push(None);
            self.slab.len() - 1
        });
        let mut conn = Conn {
            stream,
            p: Proto::new(n),
            inp: Vec::new(),
            out: Vec::new(),
            writable: true,
        };
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self
            .poll
            .registry()
            .register(conn.stream.socket(), Token(slot), interest)
        {
            fail(&mut self.sh.c, &format!("register: {e}"));
            self.free.push(slot);
            return;
        }
        sched.opened(slot, n, conn.p.since_ns);
        self.sh.handshaking += 1;
        self.slab[slot] = Some(conn);
    }

    /// Take a connection out of the slab (its socket closes when it is dropped).
    fn remove(&mut self, slot: usize) -> Option<Conn> {
        let mut conn = self.slab.get_mut(slot)?.take()?;
        let _ = self.poll.registry().deregister(conn.stream.socket());
        self.free.push(slot);
        Some(conn)
    }

    fn time_out(&mut self, slot: usize, cause: &str) {
        if let Some(mut conn) = self.remove(slot) {
            session::timed_out(&mut conn.p, &mut self.sh, cause);
        }
    }

    /// Pings and data rounds of this tick.
    fn periodic(&mut self, round: Round) {
        for (slot, is_ping) in round.slots(self.slab.len()) {
            let Some(conn) = self.slab[slot].as_mut() else {
                continue;
            };
            let _ = session::periodic_frame(conn, &mut self.sh, is_ping);
            if (!conn.out.is_empty() || conn.stream.wants_write()) && !conn.writable {
                let interest = Interest::READABLE | Interest::WRITABLE;
                let _ = self
                    .poll
                    .registry()
                    .reregister(conn.stream.socket(), Token(slot), interest);
                conn.writable = true;
            }
        }
    }

    /// Start the close handshake on every open connection; drop the others.
    fn begin_close(&mut self) {
        self.sh.closing = true;
        for slot in 0..self.slab.len() {
            let Some(conn) = self.slab[slot].as_mut() else {
                continue;
            };
            if session::begin_close(conn, &mut self.sh) == Fate::Drop {
                self.remove(slot);
            }
        }
    }

    /// Wait for socket events at most `wait`, and handle them.
    fn io(&mut self, events: &mut Events, wait: Duration) -> anyhow::Result<()> {
        if let Err(e) = self.poll.poll(events, Some(wait)) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e).context("epoll_wait");
            }
        }
        for event in events.iter() {
            self.event(event);
        }
        Ok(())
    }

    fn event(&mut self, event: &Event) {
        let slot = event.token().0;
        let Some(conn) = self.slab.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let mut fate = Fate::Keep;
        if event.is_writable() {
            fate = writable(conn, &mut self.sh);
        }
        if fate == Fate::Keep && (event.is_readable() || event.is_read_closed() || event.is_error()) {
            fate = readable(conn, &mut self.sh, &mut self.scratch);
        }
        // Writable events only while they are wanted: connecting, or output (or TLS records)
        // waiting.
        let want = !conn.out.is_empty() || conn.p.state == State::Connecting || conn.stream.wants_write();
        if fate == Fate::Keep && conn.writable != want {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if self
                .poll
                .registry()
                .reregister(conn.stream.socket(), Token(slot), interest)
                .is_ok()
            {
                conn.writable = want;
            }
        }
        if fate == Fate::Drop {
            if let Some(mut conn) = self.remove(slot) {
                // Handlers account for what they end; anything still open failed on a write.
                ended(&mut conn.p, &mut self.sh, "write_error");
            }
        }
    }
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
        match conn.stream.socket().take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => {
                fail(&mut sh.c, errno_cause(e));
                set_state(&mut conn.p, State::Done, sh);
                return Fate::Drop;
            }
        }
        if conn.stream.socket().peer_addr().is_err() {
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
    if conn.stream.flush_records().is_err() {
        return Fate::Drop;
    }
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
                } else if e.kind() == io::ErrorKind::InvalidData {
                    // Only the TLS session says this: a certificate refused, a bad record.
                    "tls_error"
                } else {
                    "error"
                };
                return eof(&mut conn.p, sh, cause);
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
            stream: Transport::Plain(TcpStream::from_std(stream)),
            p: Proto {
                n,
                state,
                since_ns: 0,
                broadcasts: 0,
                stream_left: 0,
                stream_check: 0,
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
        let mut k = Client::new(plan()).unwrap();
        k.sh.c.attempted = 3;
        k.sh.handshaking = 2;
        let mut open = conn(State::Handshake, 2);
        set_state(&mut open.p, State::Open, &mut k.sh);
        session::established(&open.p, &mut k.sh);
        assert_eq!((k.sh.handshaking, k.sh.c.open), (1, 1));
        k.slab = vec![Some(conn(State::Connecting, 0)), Some(open), None];
        k.free = vec![2];
        k.sh.c.failed.insert("refused".into(), 1); // the third attempt
        k.begin_close();
        let sh = &k.sh;
        assert_eq!(sh.handshaking, 0);
        assert_eq!(sh.c.open, 0);
        assert_eq!(sh.c.attempted, sh.c.established + sh.c.failed_total(), "{:?}", sh.c);
        assert_eq!(sh.c.failed.get("aborted_in_handshake"), Some(&1));
        assert!(k.slab[0].is_none() && k.slab[1].as_ref().is_some_and(|c| c.p.state == State::Closing));
        // The dropped one's slot is free again, so closing ends once the open one is done.
        assert_eq!(k.live(), 1);
    }

    /// The schedule sees a slot only for the connection in it, and its time-out counts the cause
    /// once and frees the slot.
    #[test]
    fn a_time_out_counts_its_cause_once_and_frees_the_slot() {
        let mut k = Client::new(plan()).unwrap();
        k.sh.handshaking = 2;
        k.slab = vec![Some(conn(State::Connecting, 7)), Some(conn(State::Handshake, 8))];
        assert_eq!(k.state(0, 7), Some(State::Connecting));
        assert_eq!(k.state(0, 8), None, "another connection's slot");
        assert_eq!(k.state(5, 7), None);
        k.time_out(1, "handshake_timeout");
        k.time_out(1, "handshake_timeout");
        assert_eq!(k.sh.c.failed.get("handshake_timeout"), Some(&1));
        assert_eq!((k.sh.handshaking, k.live(), k.free.as_slice()), (1, 1, &[1][..]));
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

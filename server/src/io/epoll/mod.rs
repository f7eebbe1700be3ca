//! The kernel-stack transport: a `SO_REUSEPORT` listener and an epoll loop (mio) over kernel
//! sockets. A process may hold at most 20,000 files on these machines, so the supervisor runs
//! several workers with one of these each; the kernel spreads new connections over their
//! listeners by 4-tuple hash.
//!
//! A packet's path: the kernel's TCP → epoll reports the socket readable (`turn`) → `readable`
//! reads it into one scratch buffer → `consume` hands the bytes to the core → the core answers
//! through [`Sockets`] (`sockets.rs`), which writes to the socket (`writev`) or keeps what the
//! kernel would not take until EPOLLOUT.

mod sockets;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::Context;
use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

pub use sockets::Sockets;
use sockets::{Bufs, PerSource, Slot, SlotState};

use super::{settle, Clock, Driver, Turn};
use crate::control::{Outbox, WorkerConfig, WorkerStats};
use crate::core::ratelog::RateLimitedLog;
use crate::core::{ConnId, ServerCore};

const LISTENER: Token = Token(usize::MAX - 1);
const CONTROL: Token = Token(usize::MAX - 2);
/// Bytes read per `read` call; one scratch buffer serves every connection of the worker.
const READ_CHUNK: usize = 64 * 1024;
/// After we close (FIN sent), how long we keep reading until the peer's FIN.
const LINGER: Duration = Duration::from_secs(5);
/// File descriptors kept for the listener, epoll, control sockets, stdio and /proc reads.
const RESERVED_FDS: usize = 32;

/// Refuse an accepted connection the way the userspace stack refuses a SYN past its capacity:
/// with a reset (SO_LINGER 0), not a FIN the client would take for a clean close.
fn refuse(stream: mio::net::TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
}

/// One worker's kernel sockets and the epoll loop over them.
pub struct Epoll {
    poll: Poll,
    events: Events,
    listener: TcpListener,
    sockets: Sockets,
    scratch: Vec<u8>,
    /// Accepting stopped for lack of file descriptors; retried every tick.
    accept_paused: bool,
    /// Connections held at most (below the file limit).
    max_conns: usize,
    fd_limit: usize,
}

impl Epoll {
    /// Listen on `cfg.listen` (sharing the port with the other workers) and watch `control` (the
    /// supervisor's channel) in the same epoll set, so a command wakes the worker at once.
    pub fn new(cfg: &WorkerConfig, control: RawFd) -> anyhow::Result<Epoll> {
        let fd_limit = host::process::raise_fd_limit();
        let listener = reuseport_listener(cfg.listen).with_context(|| format!("listening on {}", cfg.listen))?;
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        if control >= 0 {
            poll.registry()
                .register(&mut SourceFd(&control), CONTROL, Interest::READABLE)?;
        }
        let sockets = Sockets {
            slots: (0..fd_limit).map(|_| Slot::FREE).collect(),
            registry: poll.registry().try_clone()?,
            live: 0,
            doomed: Vec::new(),
            lingering: VecDeque::new(),
            linger: LINGER,
            outbox: Outbox::default(),
            refused: 0,
            per_source: PerSource::new(cfg.max_conns_per_source, fd_limit),
            log: RateLimitedLog::new(5),
            now_ms: 0,
        };
        Ok(Epoll {
            poll,
            events: Events::with_capacity(1024),
            listener,
            sockets,
            scratch: vec![0; READ_CHUNK],
            accept_paused: false,
            max_conns: cfg.max_conns.min(fd_limit.saturating_sub(RESERVED_FDS)),
            fd_limit,
        })
    }

    /// Take every connection waiting in the backlog.
    fn accept(&mut self, core: &mut ServerCore) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    let id = stream.as_raw_fd() as usize;
                    let key = PerSource::key(peer.ip());
                    if self.sockets.live >= self.max_conns || id >= self.sockets.slots.len() {
                        self.sockets.refused += 1;
                        refuse(stream);
                        continue;
                    }
                    if !self.sockets.per_source.admit(id as ConnId, key) {
                        refuse(stream);
                        continue;
                    }
                    // Pushes are small and latency matters more than segment count.
                    let _ = stream.set_nodelay(true);
                    if let Err(e) = self
                        .sockets
                        .registry
                        .register(&mut stream, Token(id), Interest::READABLE)
                    {
                        let now = self.sockets.now_ms;
                        self.sockets.log.warn(now, format_args!("epoll register failed: {e}"));
                        self.sockets.per_source.release(id as ConnId);
                        continue;
                    }
                    let slot = &mut self.sockets.slots[id];
                    *slot = Slot {
                        stream: Some(stream),
                        bufs: None,
                        epoch: slot.epoch.wrapping_add(1),
                        state: SlotState::Live,
                        writable: false,
                    };
                    self.sockets.live += 1;
                    core.open(id as ConnId, self.sockets.now_ms, &mut self.sockets);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_paused = false;
                    return;
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    // Out of descriptors: the backlog keeps the connections; retry on the next tick.
                    let now = self.sockets.now_ms;
                    self.sockets
                        .log
                        .warn(now, format_args!("accept: {e}; retrying on the next tick"));
                    self.accept_paused = true;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // ECONNABORTED and friends: that one connection is gone, the listener is fine.
                    let now = self.sockets.now_ms;
                    self.sockets.log.warn(now, format_args!("accept: {e}"));
                }
            }
        }
    }

    /// Read everything the socket has (epoll is edge-triggered) and feed it to the core. While
    /// the core holds output the connection has not taken (its echoes, its pongs), its input
    /// waits in the kernel: TCP pushes back on a client that sends but does not read, and the
    /// shared message log is not filled by one connection. Reading resumes in `writable`.
    fn readable(&mut self, core: &mut ServerCore, id: ConnId) {
        loop {
            let slot = &mut self.sockets.slots[id as usize];
            match slot.state {
                SlotState::Free | SlotState::Doomed => return,
                SlotState::Closing => return self.drain_closing(id),
                SlotState::Live => {}
            }
            if core.input_paused(id) {
                return;
            }
            let Some(stream) = slot.stream.as_mut() else {
                return;
            };
            let result = stream.read(&mut self.scratch);
            let now = self.sockets.now_ms;
            match result {
                Ok(0) => return self.lost(core, id),
                Ok(n) => {
                    self.consume(core, id, n, now);
                    settle(core, &mut self.sockets, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.lost(core, id),
            }
        }
    }

    /// The kernel has room again: the core writes what waits; input paused behind it resumes.
    fn writable(&mut self, core: &mut ServerCore, id: ConnId) {
        let now = self.sockets.now_ms;
        self.sockets.set_writable(id, false);
        core.writable(id, now, &mut self.sockets);
        settle(core, &mut self.sockets, now);
        if self.sockets.slots[id as usize].state == SlotState::Live && !core.input_paused(id) {
            // First what was read before the pause, then what the kernel holds.
            let kept = self.sockets.slots[id as usize]
                .bufs
                .as_ref()
                .is_some_and(|b| !b.inp.is_empty());
            if kept {
                self.consume(core, id, 0, now);
                settle(core, &mut self.sockets, now);
            }
            self.readable(core, id);
        }
    }

    /// The peer closed or reset the connection.
    fn lost(&mut self, core: &mut ServerCore, id: ConnId) {
        let now = self.sockets.now_ms;
        core.closed(id, now, &mut self.sockets);
        self.sockets.drop_conn(id);
        settle(core, &mut self.sockets, now);
    }

    /// Hand the `n` bytes just read into the scratch buffer to the core, behind any bytes kept
    /// from before (an incomplete request head or frame). Only a split frame allocates, and only
    /// what it holds: the core bounds it by `max_request` / `max_frame`.
    fn consume(&mut self, core: &mut ServerCore, id: ConnId, n: usize, now: u64) {
        let slot = &mut self.sockets.slots[id as usize];
        let kept = slot
            .bufs
            .as_mut()
            .map(|b| std::mem::take(&mut b.inp))
            .unwrap_or_default();
        if kept.is_empty() {
            let used = core.data(id, &mut self.scratch[..n], now, &mut self.sockets);
            self.sockets.keep_input(id, &self.scratch[used..n]);
        } else {
            let mut inp = kept;
            inp.extend_from_slice(&self.scratch[..n]);
            let used = core.data(id, &mut inp, now, &mut self.sockets);
            inp.drain(..used);
            self.restore_input(id, inp);
        }
    }

    /// Keep what the core left unconsumed (releasing memory it no longer needs).
    fn restore_input(&mut self, id: ConnId, mut inp: Vec<u8>) {
        let slot = &mut self.sockets.slots[id as usize];
        if slot.state != SlotState::Live {
            return;
        }
        if inp.is_empty() {
            inp = Vec::new();
        } else if inp.capacity() > 2 * inp.len() + 1024 {
            inp.shrink_to_fit();
        }
        match slot.bufs.as_mut() {
            Some(bufs) => bufs.inp = inp,
            None if !inp.is_empty() => slot.bufs = Some(Box::new(Bufs { inp })),
            None => {}
        }
        if slot.bufs.as_ref().is_some_and(|b| b.inp.is_empty()) {
            slot.bufs = None;
        }
    }

    /// We closed this one: discard what the peer still sends until its FIN.
    fn drain_closing(&mut self, id: ConnId) {
        loop {
            let Some(stream) = self.sockets.slots[id as usize].stream.as_mut() else {
                return;
            };
            match stream.read(&mut self.scratch) {
                Ok(0) => return self.sockets.drop_conn(id),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.sockets.drop_conn(id),
            }
        }
    }
}

impl Driver for Epoll {
    type Io = Sockets;

    /// Connections are numbered by their file descriptor.
    fn id_space(&self) -> usize {
        self.fd_limit
    }

    fn turn(&mut self, core: &mut ServerCore, clock: &Clock, wait: Duration) -> anyhow::Result<Turn> {
        let mut turn = Turn::default();
        if let Err(e) = self.poll.poll(&mut self.events, Some(wait)) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e).context("epoll_wait");
            }
        }
        // After the wait: what arrived is stamped with when it arrived.
        let now_ms = clock.now_ms();
        self.sockets.now_ms = now_ms;
        // Handling an event needs `self` whole: lend the events out (an empty `Events` allocates
        // nothing) and put them back.
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept(core),
                CONTROL => turn.control = true,
                Token(fd) => {
                    let id = fd as ConnId;
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        self.readable(core, id);
                    }
                    if event.is_writable() && self.sockets.slots[fd].state == SlotState::Live {
                        self.writable(core, id);
                    }
                }
            }
        }
        self.events = events;
        Ok(turn)
    }

    fn io(&mut self) -> &mut Sockets {
        &mut self.sockets
    }

    /// Drop closed connections whose linger time is over; retry a paused accept.
    fn housekeeping(&mut self, core: &mut ServerCore, now_ms: u64) {
        self.sockets.now_ms = now_ms;
        let instant = Instant::now();
        while let Some(&(id, epoch, deadline)) = self.sockets.lingering.front() {
            if deadline > instant {
                break;
            }
            self.sockets.lingering.pop_front();
            let slot = &self.sockets.slots[id as usize];
            if slot.epoch == epoch && slot.state == SlotState::Closing {
                self.sockets.drop_conn(id);
            }
        }
        if self.accept_paused {
            self.accept(core);
        }
    }

    fn stats(&self, _core: &ServerCore, into: &mut WorkerStats) {
        into.refused = self.sockets.refused;
        into.refused_per_source = self.sockets.per_source.refused;
        into.buffered_conns = self.sockets.slots.iter().filter(|s| s.bufs.is_some()).count() as u64;
        into.lingering = self.sockets.lingering.len() as u64;
        into.open_fds = self.sockets.live as u64;
        into.fd_limit = self.fd_limit as u64;
    }

    /// Give the core up to `grace` to write the close frames (as the kernel makes room), reading
    /// until the peers' FINs.
    fn drain(&mut self, core: &mut ServerCore, now_ms: u64, grace: Duration) -> usize {
        self.sockets.now_ms = now_ms;
        let deadline = Instant::now() + grace;
        while self.sockets.live > 0 && Instant::now() < deadline {
            if self
                .poll
                .poll(&mut self.events, Some(Duration::from_millis(50)))
                .is_err()
            {
                break;
            }
            let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
            for event in events.iter() {
                let Token(fd) = event.token();
                if fd < self.sockets.slots.len() {
                    let id = fd as ConnId;
                    if event.is_writable() && self.sockets.slots[fd].state == SlotState::Live {
                        self.sockets.set_writable(id, false);
                        core.writable(id, now_ms, &mut self.sockets);
                        settle(core, &mut self.sockets, now_ms);
                    }
                    if event.is_readable() || event.is_read_closed() {
                        // The peer's close frame and FIN: the core drops data while closing.
                        self.readable(core, id);
                    }
                }
            }
            self.events = events;
        }
        self.sockets.live
    }

    fn describe(&self) -> String {
        format!(
            "kernel sockets on {} (at most {} connections, {} files)",
            self.listener
                .local_addr()
                .map_or_else(|_| "?".to_string(), |a| a.to_string()),
            self.max_conns,
            self.fd_limit
        )
    }
}

/// A listener that shares its port with the other workers' listeners.
pub fn reuseport_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    // The kernel caps this at net.core.somaxconn (the testbed raises it in its namespaces).
    socket.listen(65_535)?;
    Ok(socket.into())
}

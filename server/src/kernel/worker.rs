//! One kernel-stack worker process: a `SO_REUSEPORT` listener and an epoll loop (mio) driving the
//! server core over kernel sockets. A process may hold at most 20,000 files on these machines, so
//! the supervisor runs several of these; the kernel spreads new connections over their listeners.
//!
//! Connections are numbered by their file descriptor, which indexes a flat slot table: no hash map,
//! and a slot is 24 bytes. User-space buffers exist only while needed (output the kernel would not
//! take yet, or an incomplete frame), so an idle connection costs its slot, the core's 32 bytes and
//! the kernel's socket.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use mio::net::{TcpListener, TcpStream, UnixStream};
use mio::{Events, Interest, Poll, Registry, Token};

use super::control::{self, send_line, FromWorker, ToWorker, WorkerConfig, WorkerStats};
use crate::core::device::DeviceHasher;
use crate::core::ratelog::RateLimitedLog;
use crate::core::{ConnId, CoreConfig, Io, ServerCore, TICK_MS};

const LISTENER: Token = Token(usize::MAX - 1);
const CONTROL: Token = Token(usize::MAX - 2);
/// Bytes read per `read` call; one scratch buffer serves every connection of the worker.
const READ_CHUNK: usize = 64 * 1024;
/// After we close (FIN sent), how long we keep reading until the peer's FIN.
const LINGER: Duration = Duration::from_secs(5);
/// File descriptors kept for the listener, epoll, control sockets, stdio and /proc reads.
const RESERVED_FDS: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    /// The core owns the connection.
    Live,
    /// The core closed it: flush what is queued, send FIN, read until the peer's FIN or `LINGER`.
    Closing,
    /// The transport failed (reset, slow consumer) while the core still owns it: report it to the
    /// core as closed right after the current core call.
    Doomed,
}

/// Per-connection transport state, in a table indexed by fd: 24 bytes.
struct Slot {
    /// 4 bytes: the socket (an fd; `None` uses the fd's niche).
    stream: Option<TcpStream>,
    /// 8 bytes: buffers, allocated only while output is pending or a frame is incomplete.
    bufs: Option<Box<Bufs>>,
    /// 4 bytes: incarnation of this fd, so a linger deadline never hits a later connection.
    epoch: u32,
    state: SlotState,
    /// Whether epoll is also watching for writability (only while output is pending).
    writable: bool,
}

#[derive(Default)]
struct Bufs {
    /// Output the kernel's socket buffer did not take yet.
    out: Vec<u8>,
    /// Received bytes the core did not consume yet (an incomplete request head or frame).
    inp: Vec<u8>,
}

impl Slot {
    const FREE: Slot = Slot {
        stream: None,
        bufs: None,
        epoch: 0,
        state: SlotState::Free,
        writable: false,
    };
}

/// The worker's sockets, as the core's [`Io`].
pub struct Transport {
    slots: Vec<Slot>,
    registry: Registry,
    max_pending: usize,
    live: usize,
    /// Failed while the core owned them; reported to the core after the current call.
    doomed: Vec<ConnId>,
    lingering: VecDeque<(ConnId, u32, Instant)>,
    /// How long a closed connection may linger (`LINGER`; tests shorten it).
    linger: Duration,
    /// Messages for the supervisor produced inside core calls (device claims).
    outbox: control::Outbox,
    refused: u64,
    slow_dropped: u64,
    log: RateLimitedLog,
    started: Instant,
}

impl Transport {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn doom(&mut self, id: ConnId) {
        let slot = &mut self.slots[id as usize];
        if slot.state == SlotState::Live {
            slot.state = SlotState::Doomed;
            self.doomed.push(id);
        } else if slot.state == SlotState::Closing {
            self.drop_conn(id);
        }
    }

    /// Close the socket and free the slot.
    fn drop_conn(&mut self, id: ConnId) {
        let slot = &mut self.slots[id as usize];
        if let Some(mut stream) = slot.stream.take() {
            // Deregistering cannot fail for a registered socket; closing the fd removes it anyway.
            let _ = self.registry.deregister(&mut stream);
            self.live -= 1;
        }
        slot.bufs = None;
        slot.state = SlotState::Free;
        slot.writable = false;
    }

    fn set_writable(&mut self, id: ConnId, on: bool) {
        let slot = &mut self.slots[id as usize];
        if slot.writable == on {
            return;
        }
        let Some(stream) = slot.stream.as_mut() else {
            return;
        };
        let interest = if on {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if self.registry.reregister(stream, Token(id as usize), interest).is_ok() {
            slot.writable = on;
        }
    }

    /// FIN after the last queued byte, then wait for the peer's FIN (bounded by `LINGER`).
    /// Output is flushed: send FIN. The linger deadline was set when the core closed it.
    fn finish(&mut self, id: ConnId) {
        let slot = &mut self.slots[id as usize];
        if let Some(stream) = slot.stream.as_ref() {
            if stream.shutdown(Shutdown::Write).is_err() {
                self.drop_conn(id);
                return;
            }
        }
        slot.bufs = None;
    }

    /// Write queued output; returns false if the connection failed.
    fn flush(&mut self, id: ConnId) {
        let slot = &mut self.slots[id as usize];
        let (Some(stream), Some(bufs)) = (slot.stream.as_mut(), slot.bufs.as_mut()) else {
            return;
        };
        let mut written = 0;
        let failed = loop {
            if written == bufs.out.len() {
                break false;
            }
            match stream.write(&bufs.out[written..]) {
                Ok(0) => break true,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        bufs.out.drain(..written);
        let drained = bufs.out.is_empty();
        if bufs.out.is_empty() && bufs.inp.is_empty() {
            slot.bufs = None;
        }
        if failed {
            self.doom(id);
        } else if drained {
            self.set_writable(id, false);
            if self.slots[id as usize].state == SlotState::Closing {
                self.finish(id);
            }
        }
    }

    /// Keep `bytes` as the start of the connection's unconsumed input.
    fn keep_input(&mut self, id: ConnId, bytes: &[u8]) {
        let slot = &mut self.slots[id as usize];
        if slot.state != SlotState::Live || bytes.is_empty() {
            return;
        }
        slot.bufs.get_or_insert_with(Box::default).inp.extend_from_slice(bytes);
    }
}

impl Io for Transport {
    fn send(&mut self, id: ConnId, parts: &[&[u8]]) {
        let max_pending = self.max_pending;
        let slot = &mut self.slots[id as usize];
        if slot.state != SlotState::Live {
            return;
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if let Some(bufs) = slot.bufs.as_mut().filter(|b| !b.out.is_empty()) {
            if bufs.out.len() + total > max_pending {
                self.slow_dropped += 1;
                self.doom(id);
            } else {
                parts.iter().for_each(|p| bufs.out.extend_from_slice(p));
            }
            return;
        }
        let Some(stream) = slot.stream.as_mut() else {
            return;
        };
        let mut slices = [IoSlice::new(&[]); 4];
        let n_parts = parts.len().min(slices.len());
        for (s, p) in slices.iter_mut().zip(parts) {
            *s = IoSlice::new(p);
        }
        let sent = match stream.write_vectored(&slices[..n_parts]) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => 0,
            Err(_) => {
                self.doom(id);
                return;
            }
        };
        if sent == total && parts.len() <= slices.len() {
            return;
        }
        // Queue whatever the kernel did not take.
        let bufs = slot.bufs.get_or_insert_with(Box::default);
        let mut skip = sent;
        for p in parts {
            let from = skip.min(p.len());
            bufs.out.extend_from_slice(&p[from..]);
            skip -= from;
        }
        self.set_writable(id, true);
    }

    fn close(&mut self, id: ConnId) {
        let slot = &mut self.slots[id as usize];
        match slot.state {
            SlotState::Live => {
                slot.state = SlotState::Closing;
                // Whatever happens next (a peer that never reads would keep the output pending
                // forever), the slot is dropped LINGER after this.
                self.lingering.push_back((id, slot.epoch, Instant::now() + self.linger));
                if slot.bufs.as_ref().is_some_and(|b| !b.out.is_empty()) {
                    self.set_writable(id, true);
                } else {
                    self.finish(id);
                }
            }
            // Already failed: the pending report to the core finds it forgotten and ignores it.
            SlotState::Doomed | SlotState::Closing | SlotState::Free => {}
        }
    }

    fn device_claimed(&mut self, hash: u64) {
        self.outbox.device_claimed(hash);
    }

    fn device_released(&mut self, hash: u64) {
        self.outbox.device_released(hash);
    }
}

/// Connections expired per second over the last 10 seconds.
pub(crate) struct RecentExpiries {
    buckets: [u64; 10],
    second: u64,
    last_total: u64,
}

impl RecentExpiries {
    pub(crate) fn new() -> RecentExpiries {
        RecentExpiries {
            buckets: [0; 10],
            second: 0,
            last_total: 0,
        }
    }

    pub(crate) fn record(&mut self, now_ms: u64, total: u64) {
        let second = now_ms / 1000;
        while self.second < second {
            self.second += 1;
            self.buckets[(self.second % 10) as usize] = 0;
            if second - self.second > 10 {
                self.second = second - 10;
            }
        }
        self.buckets[(second % 10) as usize] += total - self.last_total;
        self.last_total = total;
    }

    pub(crate) fn sum(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

pub struct Worker {
    cfg: WorkerConfig,
    poll: Poll,
    listener: TcpListener,
    control_in: UnixStream,
    control_out: std::os::unix::net::UnixStream,
    control: control::ControlReader,
    core: ServerCore,
    t: Transport,
    scratch: Vec<u8>,
    accept_paused: bool,
    expiry_busy_ns: u64,
    recent_expiries: RecentExpiries,
    fd_limit: usize,
    stop: bool,
}

/// Entry point of a worker process (`ws-server` re-executed with `--worker`).
pub fn run() -> anyhow::Result<()> {
    // SAFETY: the supervisor passed these two fds (dup2'ed before exec) and nothing else owns them.
    let (control_in, control_out) = unsafe {
        (
            std::os::unix::net::UnixStream::from_raw_fd(control::FD_FROM_SUPERVISOR),
            std::os::unix::net::UnixStream::from_raw_fd(control::FD_TO_SUPERVISOR),
        )
    };
    let mut first = String::new();
    io::BufRead::read_line(&mut io::BufReader::new(&control_in), &mut first).context("reading worker config")?;
    let ToWorker::Config(cfg) = serde_json::from_str(&first).context("parsing worker config")? else {
        anyhow::bail!("the first control message was not the config");
    };
    let mut out = control_out;
    let reply_to = out.try_clone()?;
    if cfg.xdp.is_some() {
        return start(
            &mut out,
            crate::xdp::worker::Worker::new(cfg, control_in, reply_to),
            |w| w.run(),
        );
    }
    start(&mut out, Worker::new(cfg, control_in, reply_to), |w| w.run())
}

/// Tell the supervisor whether the worker could start, then run it.
fn start<W>(
    out: &mut std::os::unix::net::UnixStream,
    made: anyhow::Result<W>,
    run: impl FnOnce(&mut W) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    match made {
        Ok(mut worker) => {
            send_line(
                out,
                &FromWorker::Ready {
                    pid: std::process::id(),
                },
            )?;
            run(&mut worker)
        }
        Err(e) => {
            send_line(
                out,
                &FromWorker::Failed {
                    error: format!("{e:#}"),
                },
            )?;
            Err(e)
        }
    }
}

impl Worker {
    fn new(
        cfg: WorkerConfig,
        control_in: std::os::unix::net::UnixStream,
        control_out: std::os::unix::net::UnixStream,
    ) -> anyhow::Result<Worker> {
        let fd_limit = host::process::raise_fd_limit();
        let listener = super::reuseport_listener(cfg.listen)?;
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        control_in.set_nonblocking(true)?;
        let mut control_in = UnixStream::from_std(control_in);
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        poll.registry().register(&mut control_in, CONTROL, Interest::READABLE)?;
        let max_conns = cfg.max_conns.min(fd_limit.saturating_sub(RESERVED_FDS));
        let core_cfg = CoreConfig {
            idle_timeout_ms: cfg.idle_timeout_ms,
            poll_hold_ms: cfg.poll_hold_ms,
            echo: cfg.echo,
            max_frame: cfg.max_frame,
            max_message: cfg.max_message,
            max_request: 4096,
            request_timeout_ms: cfg.request_timeout_ms,
            device_hasher: DeviceHasher::new(cfg.device_key),
            seed: cfg.seed ^ cfg.index as u64,
        };
        let t = Transport {
            slots: (0..fd_limit).map(|_| Slot::FREE).collect(),
            registry: poll.registry().try_clone()?,
            max_pending: cfg.max_pending_bytes,
            live: 0,
            doomed: Vec::new(),
            lingering: VecDeque::new(),
            linger: LINGER,
            outbox: control::Outbox::default(),
            refused: 0,
            slow_dropped: 0,
            log: RateLimitedLog::new(5),
            started: Instant::now(),
        };
        let core = ServerCore::new(core_cfg, fd_limit, 0);
        let cfg = WorkerConfig { max_conns, ..cfg };
        Ok(Worker {
            cfg,
            poll,
            listener,
            control_in,
            control_out,
            control: control::ControlReader::default(),
            core,
            t,
            scratch: vec![0; READ_CHUNK],
            accept_paused: false,
            expiry_busy_ns: 0,
            recent_expiries: RecentExpiries::new(),
            fd_limit,
            stop: false,
        })
    }

    fn run(&mut self) -> anyhow::Result<()> {
        // SIGINT from a terminal reaches the whole process group: the supervisor decides. SIGTERM
        // (also sent if the supervisor dies) stops this worker.
        let terminated = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&terminated))?;
        signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::new(AtomicBool::new(false)))?;
        let mut events = Events::with_capacity(1024);
        let mut next_tick = 0u64;
        while !self.stop && !terminated.load(Ordering::Relaxed) {
            let now = self.t.now_ms();
            let wait = Duration::from_millis(next_tick.saturating_sub(now).min(TICK_MS));
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e).context("epoll_wait");
                }
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    CONTROL => control::read_commands(self)?,
                    Token(fd) => {
                        let id = fd as ConnId;
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.readable(id);
                        }
                        if event.is_writable() && self.t.slots[fd].state != SlotState::Free {
                            self.t.flush(id);
                            self.settle();
                        }
                    }
                }
            }
            let now = self.t.now_ms();
            if now >= next_tick {
                next_tick = now + TICK_MS;
                self.tick(now);
            }
            self.t.outbox.send(&mut self.control_out, None)?;
        }
        self.shutdown()
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let id = stream.as_raw_fd() as usize;
                    if self.t.live >= self.cfg.max_conns || id >= self.t.slots.len() {
                        self.t.refused += 1;
                        continue; // dropping the stream closes it
                    }
                    // Pushes are small and latency matters more than segment count.
                    let _ = stream.set_nodelay(true);
                    if let Err(e) = self.t.registry.register(&mut stream, Token(id), Interest::READABLE) {
                        self.t
                            .log
                            .warn(self.t.now_ms(), format_args!("epoll register failed: {e}"));
                        continue;
                    }
                    let slot = &mut self.t.slots[id];
                    *slot = Slot {
                        stream: Some(stream),
                        bufs: None,
                        epoch: slot.epoch.wrapping_add(1),
                        state: SlotState::Live,
                        writable: false,
                    };
                    self.t.live += 1;
                    let now = self.t.now_ms();
                    self.core.open(id as ConnId, now, &mut self.t);
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
                    self.t
                        .log
                        .warn(self.t.now_ms(), format_args!("accept: {e}; retrying on the next tick"));
                    self.accept_paused = true;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // ECONNABORTED and friends: that one connection is gone, the listener is fine.
                    self.t.log.warn(self.t.now_ms(), format_args!("accept: {e}"));
                }
            }
        }
    }

    /// Read everything the socket has (epoll is edge-triggered) and feed it to the core.
    fn readable(&mut self, id: ConnId) {
        loop {
            let slot = &mut self.t.slots[id as usize];
            match slot.state {
                SlotState::Free | SlotState::Doomed => return,
                SlotState::Closing => return self.drain_closing(id),
                SlotState::Live => {}
            }
            let Some(stream) = slot.stream.as_mut() else {
                return;
            };
            let result = stream.read(&mut self.scratch);
            let now = self.t.now_ms();
            match result {
                Ok(0) => {
                    self.core.closed(id, now, &mut self.t);
                    self.t.drop_conn(id);
                    self.settle();
                    return;
                }
                Ok(n) => {
                    self.consume(id, n, now);
                    self.settle();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.core.closed(id, now, &mut self.t);
                    self.t.drop_conn(id);
                    self.settle();
                    return;
                }
            }
        }
    }

    /// Hand the `n` bytes just read into the scratch buffer to the core, behind any bytes kept
    /// from before (an incomplete request head or frame). Only a split frame allocates, and only
    /// what it holds: the core bounds it by `max_request` / `max_frame`.
    fn consume(&mut self, id: ConnId, n: usize, now: u64) {
        let slot = &mut self.t.slots[id as usize];
        let kept = slot
            .bufs
            .as_mut()
            .map(|b| std::mem::take(&mut b.inp))
            .unwrap_or_default();
        if kept.is_empty() {
            let used = self.core.data(id, &mut self.scratch[..n], now, &mut self.t);
            self.t.keep_input(id, &self.scratch[used..n]);
        } else {
            let mut inp = kept;
            inp.extend_from_slice(&self.scratch[..n]);
            let used = self.core.data(id, &mut inp, now, &mut self.t);
            inp.drain(..used);
            self.restore_input(id, inp);
        }
    }

    /// Keep what the core left unconsumed (releasing memory it no longer needs).
    fn restore_input(&mut self, id: ConnId, mut inp: Vec<u8>) {
        let slot = &mut self.t.slots[id as usize];
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
            None if !inp.is_empty() => slot.bufs = Some(Box::new(Bufs { out: Vec::new(), inp })),
            None => {}
        }
        if slot.bufs.as_ref().is_some_and(|b| b.inp.is_empty() && b.out.is_empty()) {
            slot.bufs = None;
        }
    }

    /// We closed this one: discard what the peer still sends until its FIN.
    fn drain_closing(&mut self, id: ConnId) {
        loop {
            let Some(stream) = self.t.slots[id as usize].stream.as_mut() else {
                return;
            };
            match stream.read(&mut self.scratch) {
                Ok(0) => return self.t.drop_conn(id),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.t.drop_conn(id),
            }
        }
    }

    /// Report connections that failed during the last core call, then drop them.
    fn settle(&mut self) {
        while let Some(id) = self.t.doomed.pop() {
            let now = self.t.now_ms();
            self.core.closed(id, now, &mut self.t);
            self.t.drop_conn(id);
        }
    }

    fn tick(&mut self, now: u64) {
        let expired_before = self.core.stats().expired;
        let started = Instant::now();
        self.core.tick(now, &mut self.t);
        let expired = self.core.stats().expired;
        if expired > expired_before {
            self.expiry_busy_ns += started.elapsed().as_nanos() as u64;
        }
        self.recent_expiries.record(now, expired);
        self.settle();
        let instant = Instant::now();
        while let Some(&(id, epoch, deadline)) = self.t.lingering.front() {
            if deadline > instant {
                break;
            }
            self.t.lingering.pop_front();
            let slot = &self.t.slots[id as usize];
            if slot.epoch == epoch && slot.state == SlotState::Closing {
                self.t.drop_conn(id);
            }
        }
        if self.accept_paused {
            self.accept();
        }
    }

    fn worker_stats(&self) -> WorkerStats {
        let (pending, buffered) = self
            .t
            .slots
            .iter()
            .filter_map(|s| s.bufs.as_ref())
            .fold((0u64, 0u64), |(p, n), b| (p + b.out.len() as u64, n + 1));
        WorkerStats {
            index: self.cfg.index,
            pid: std::process::id(),
            core: self.core.stats().clone(),
            refused: self.t.refused,
            slow_consumers_dropped: self.t.slow_dropped,
            pending_output_bytes: pending,
            buffered_conns: buffered,
            lingering: self.t.lingering.len() as u64,
            expiry_busy_ns: self.expiry_busy_ns,
            expired_last_10s: self.recent_expiries.sum(),
            core_heap_bytes: self.core.heap_bytes() as u64,
            rss_bytes: host::process::own_rss_bytes(),
            open_fds: self.t.live as u64,
            fd_limit: self.fd_limit as u64,
            xdp: None,
        }
    }

    /// Close every connection with 1001, give the kernel up to two seconds to flush, and exit.
    fn shutdown(&mut self) -> anyhow::Result<()> {
        let now = self.t.now_ms();
        self.core.shutdown(now, &mut self.t);
        self.settle();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut events = Events::with_capacity(1024);
        while self.t.live > 0 && Instant::now() < deadline {
            if self.poll.poll(&mut events, Some(Duration::from_millis(50))).is_err() {
                break;
            }
            for event in events.iter() {
                let Token(fd) = event.token();
                if fd < self.t.slots.len() {
                    let id = fd as ConnId;
                    if event.is_writable() {
                        self.t.flush(id);
                    }
                    if event.is_readable() || event.is_read_closed() {
                        self.drain_closing(id);
                    }
                }
            }
        }
        log::info!(
            "worker {}: stopped ({} connections still open at exit)",
            self.cfg.index,
            self.t.live
        );
        Ok(())
    }
}

impl control::Controlled for Worker {
    type Io = Transport;

    fn index(&self) -> usize {
        self.cfg.index
    }

    fn now_ms(&self) -> u64 {
        self.t.now_ms()
    }

    fn channel(&mut self) -> (&mut control::ControlReader, &mut dyn Read) {
        (&mut self.control, &mut self.control_in)
    }

    fn core_call<R>(&mut self, _now_ms: u64, f: impl FnOnce(&mut ServerCore, &mut Transport) -> R) -> R {
        let r = f(&mut self.core, &mut self.t);
        self.settle();
        r
    }

    fn stats(&self) -> WorkerStats {
        self.worker_stats()
    }

    fn send(&mut self, reply: Option<FromWorker>) -> anyhow::Result<()> {
        self.t.outbox.send(&mut self.control_out, reply)
    }

    fn stop(&mut self) {
        self.stop = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_worker(idle_timeout_ms: u64) -> Worker {
        let (to_worker, control_in) = std::os::unix::net::UnixStream::pair().unwrap();
        let (control_out, from_worker) = std::os::unix::net::UnixStream::pair().unwrap();
        // The supervisor's ends stay open for the test's lifetime.
        std::mem::forget((to_worker, from_worker));
        let cfg = WorkerConfig {
            index: 0,
            listen: "127.0.0.1:0".parse().unwrap(),
            max_conns: 100,
            max_pending_bytes: 256 << 20,
            idle_timeout_ms,
            request_timeout_ms: 10_000,
            poll_hold_ms: (30_000, 30_000),
            echo: false,
            max_frame: 16 * 1024,
            max_message: 64 * 1024,
            device_key: [1, 2],
            seed: 1,
            xdp: None,
        };
        let mut w = Worker::new(cfg, control_in, control_out).unwrap();
        w.t.linger = Duration::from_millis(200);
        w
    }

    fn accept_one(w: &mut Worker) -> (std::net::TcpStream, ConnId) {
        let client = std::net::TcpStream::connect(w.listener.local_addr().unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        w.accept();
        let id = (0..w.t.slots.len())
            .find(|&i| w.t.slots[i].state == SlotState::Live)
            .unwrap() as ConnId;
        (client, id)
    }

    /// A connection closed while output is pending, whose peer never reads, is still dropped
    /// once its linger time is over (found in review: it used to stay forever).
    #[test]
    fn closing_with_output_a_peer_never_reads_is_dropped_after_linger() {
        let mut w = test_worker(1_000);
        let (mut client, id) = accept_one(&mut w);
        client.write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        w.readable(id);
        assert!(w.core.is_open(id));
        let payload = "x".repeat(60_000);
        while w.t.slots[id as usize].bufs.as_ref().is_none_or(|b| b.out.is_empty()) {
            w.core.broadcast(payload.as_bytes(), 10, &mut w.t);
        }
        w.tick(5_000); // idle expiry while output is pending
        assert_eq!(w.core.stats().expired, 1);
        assert_eq!(w.t.slots[id as usize].state, SlotState::Closing);
        std::thread::sleep(Duration::from_millis(300));
        w.tick(5_100);
        assert_eq!(w.t.slots[id as usize].state, SlotState::Free);
        assert_eq!(w.t.live, 0);
    }

    /// Bytes trickled into an incomplete request head keep a buffer of their own size, not of
    /// the read size (found in review: 2 bytes held 128 KiB).
    #[test]
    fn trickled_bytes_keep_a_buffer_of_their_size() {
        let mut w = test_worker(300_000);
        let (mut client, id) = accept_one(&mut w);
        for b in [b"G", b"E", b"T"] {
            client.write_all(b).unwrap();
            std::thread::sleep(Duration::from_millis(30));
            w.readable(id);
        }
        let inp = &w.t.slots[id as usize].bufs.as_ref().unwrap().inp;
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

    #[test]
    fn recent_expiries_cover_ten_seconds() {
        let mut r = RecentExpiries {
            buckets: [0; 10],
            second: 0,
            last_total: 0,
        };
        r.record(500, 3);
        r.record(5_000, 10);
        assert_eq!(r.sum(), 10);
        r.record(12_000, 10);
        assert_eq!(r.sum(), 7, "the first second's 3 fell out of the window");
        r.record(60_000, 11);
        assert_eq!(r.sum(), 1);
    }
}

//! The kernel-stack baseline: the server core over epoll on kernel sockets.
//!
//! One process may hold at most 20,000 files here, so a supervisor process runs `workers` worker
//! processes, each with its own `SO_REUSEPORT` listener on the same port (the kernel spreads new
//! connections over them by 4-tuple hash). The supervisor serves the admin endpoint, runs the
//! periodic push, and keeps the device directory that makes "one connection per device id" hold
//! across workers: workers report the ids they register, and the supervisor tells the worker with
//! the older connection to close it.

pub mod control;
pub mod worker;

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::admin::{self, AdminRequest, BroadcastResult, Report, StatsFormat};
use crate::core::device::DeviceHasher;
use crate::core::message::{self, Kind};
use control::{FromWorker, ToWorker, WorkerConfig, WorkerStats};

/// Settings of a kernel-stack server.
#[derive(Clone, Debug)]
pub struct KernelConfig {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub workers: usize,
    pub max_conns_per_worker: usize,
    pub max_pending_bytes: usize,
    pub push_interval: Option<Duration>,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub poll_hold: (Duration, Duration),
    pub echo: bool,
    pub max_frame: usize,
    pub max_message: usize,
    /// Serve the WebSocket port on the userspace stack (`--stack xdp`); `None`: kernel sockets.
    pub xdp: Option<crate::xdp::XdpOptions>,
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

/// Turn a bind error into a sentence that says what to do.
pub fn explain_bind_error(what: &str, addr: SocketAddr, e: &io::Error) -> anyhow::Error {
    let hint = match e.kind() {
        io::ErrorKind::AddrInUse => "the port is already in use (another ws-server, or another service?)".to_string(),
        io::ErrorKind::PermissionDenied => "ports below 1024 need root or CAP_NET_BIND_SERVICE".to_string(),
        io::ErrorKind::AddrNotAvailable => {
            format!("{} is not an address of this host or network namespace", addr.ip())
        }
        _ => e.to_string(),
    };
    anyhow::anyhow!("cannot listen on {addr} ({what}): {hint}")
}

enum Event {
    FromWorker(usize, FromWorker),
    WorkerGone(usize),
    /// An admin request, its body already read and routed on a thread of its own.
    Admin(tiny_http::Request, AdminRequest),
    Signal,
}

struct WorkerHandle {
    child: Child,
    to: UnixStream,
    pid: u32,
}

enum PendingKind {
    Stats(StatsFormat),
    Broadcast { seq: u64 },
    Push { id: String },
}

/// An admin request (or a periodic push) waiting for worker replies.
struct Pending {
    kind: PendingKind,
    remaining: usize,
    replies: Vec<FromWorker>,
    request: Option<tiny_http::Request>,
    started: Instant,
}

/// How long an admin request waits for its worker replies.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

struct Supervisor {
    cfg: KernelConfig,
    workers: Vec<WorkerHandle>,
    events: mpsc::Receiver<Event>,
    hasher: DeviceHasher,
    /// device hash → (worker, registration time): which worker holds the newest connection.
    directory: HashMap<u64, (usize, u64)>,
    pending: HashMap<u64, Pending>,
    next_req: u64,
    push_seq: u64,
    broadcasts_done: u64,
    last_broadcast: Option<BroadcastResult>,
    started: Instant,
    stopping: bool,
    /// The XDP steering of an xdp server (detached after the workers stop).
    xdp: Option<xdp_prog::Attachment>,
}

/// Steering attached and the workers' common xdp settings (`--stack xdp`).
fn prepare_xdp(
    x: &crate::xdp::XdpOptions,
    listen: SocketAddr,
) -> anyhow::Result<(xdp_prog::Attachment, crate::xdp::XdpWorkerConfig)> {
    let SocketAddr::V4(listen) = listen else {
        bail!("--stack xdp serves IPv4 only (got --listen {listen})");
    };
    if xdp_prog::ifindex(&x.iface).is_err() {
        bail!("--iface {}: no such interface in this network namespace", x.iface);
    }
    let addrs = host::iface::iface_ipv4(&x.iface);
    let (addr, prefix_len) = if listen.ip().is_unspecified() {
        addrs.first().copied().with_context(|| {
            format!(
                "--iface {} has no IPv4 address: give it one (the kernel keeps the address, ARP and ICMP)",
                x.iface
            )
        })?
    } else {
        addrs.iter().find(|(a, _)| a == listen.ip()).copied().with_context(|| {
            format!(
                "{} is not an address of --iface {} (it has: {:?})",
                listen.ip(),
                x.iface,
                addrs.iter().map(|(a, _)| a.to_string()).collect::<Vec<_>>()
            )
        })?
    };
    let endpoint = std::net::SocketAddrV4::new(addr, listen.port());
    let att = xdp_prog::Attachment::prepare(
        &x.iface,
        x.mode,
        xdp_prog::Steer::To(endpoint),
        x.pin.as_deref(),
        x.queues,
    )?;
    let base = crate::xdp::XdpWorkerConfig {
        iface: x.iface.clone(),
        queue: 0,
        xsks_map_id: att.xsks_map_id()?,
        addr,
        prefix_len,
        port: listen.port(),
        rx_buf: x.rx_buf,
        tx_buf: x.tx_buf,
        spill_buffers: x.spill_buffers,
    };
    Ok((att, base))
}

/// Run a server until SIGINT/SIGTERM: kernel-stack workers, or xdp workers (one per queue).
pub fn run(cfg: KernelConfig) -> anyhow::Result<()> {
    let (attachment, xdp_base) = match &cfg.xdp {
        Some(x) => {
            let (att, base) = prepare_xdp(x, cfg.listen)?;
            (Some(att), Some(base))
        }
        None => {
            // Fail early and clearly if the port is taken by something that is not ours.
            drop(
                std::net::TcpListener::bind(cfg.listen)
                    .map_err(|e| explain_bind_error("WebSocket port", cfg.listen, &e))?,
            );
            (None, None)
        }
    };
    let admin_listener =
        std::net::TcpListener::bind(cfg.admin).map_err(|e| explain_bind_error("admin endpoint", cfg.admin, &e))?;
    let admin_server = std::sync::Arc::new(
        tiny_http::Server::from_listener(admin_listener, None)
            .map_err(|e| anyhow::anyhow!("starting the admin endpoint: {e}"))?,
    );
    let (tx, rx) = mpsc::channel();
    let hasher = DeviceHasher::random();
    let seed = fastrand::u64(..);
    let exe = std::env::current_exe().context("finding our own executable to start workers")?;
    let mut workers = Vec::new();
    for index in 0..cfg.workers {
        let wcfg = WorkerConfig {
            index,
            listen: cfg.listen,
            max_conns: cfg.max_conns_per_worker,
            max_pending_bytes: cfg.max_pending_bytes,
            idle_timeout_ms: cfg.idle_timeout.as_millis() as u64,
            request_timeout_ms: cfg.request_timeout.as_millis() as u64,
            poll_hold_ms: (cfg.poll_hold.0.as_millis() as u64, cfg.poll_hold.1.as_millis() as u64),
            echo: cfg.echo,
            max_frame: cfg.max_frame,
            max_message: cfg.max_message,
            device_key: hasher.key(),
            seed,
            xdp: xdp_base.clone().map(|b| crate::xdp::XdpWorkerConfig {
                queue: index as u32,
                ..b
            }),
        };
        workers.push(spawn_worker(&exe, wcfg, tx.clone()).with_context(|| format!("starting worker {index}"))?);
    }
    let mut sup = Supervisor {
        cfg,
        workers,
        events: rx,
        hasher,
        directory: HashMap::new(),
        pending: HashMap::new(),
        next_req: 1,
        push_seq: 0,
        broadcasts_done: 0,
        last_broadcast: None,
        started: Instant::now(),
        stopping: false,
        xdp: attachment,
    };
    if let Err(e) = sup.wait_ready() {
        sup.stop_workers();
        return Err(e);
    }
    {
        let tx = tx.clone();
        let server = std::sync::Arc::clone(&admin_server);
        std::thread::spawn(move || {
            for request in server.incoming_requests() {
                // Reading a body can block on a slow client: never on the supervisor's loop.
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut request = request;
                    let method = request.method().clone();
                    let url = request.url().to_string();
                    let declared = request.body_length();
                    let routed = admin::route(&method, &url, request.as_reader(), declared);
                    let _ = tx.send(Event::Admin(request, routed));
                });
            }
        });
    }
    {
        let mut signals =
            signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
        std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                let _ = tx.send(Event::Signal);
            }
        });
    }
    log::info!(
        "ws-server ({} stack): {} workers on {}, admin on http://{}/, push every {}, idle timeout {}",
        if sup.xdp.is_some() { "xdp" } else { "kernel" },
        sup.workers.len(),
        sup.cfg.listen,
        sup.cfg.admin,
        sup.cfg.push_interval.map_or("never".to_string(), |d| format!("{d:?}")),
        if sup.cfg.idle_timeout.is_zero() {
            "off".to_string()
        } else {
            format!("{:?}", sup.cfg.idle_timeout)
        },
    );
    let result = sup.run();
    admin_server.unblock();
    sup.stop_workers();
    if let Some(att) = sup.xdp.as_mut() {
        att.finish();
    }
    result
}

fn spawn_worker(exe: &std::path::Path, cfg: WorkerConfig, events: mpsc::Sender<Event>) -> anyhow::Result<WorkerHandle> {
    let index = cfg.index;
    let (mut to_worker, worker_in) = UnixStream::pair()?;
    let (worker_out, from_worker) = UnixStream::pair()?;
    let (fd_in, fd_out) = (worker_in.as_raw_fd(), worker_out.as_raw_fd());
    let mut cmd = Command::new(exe);
    cmd.arg("--worker");
    // SAFETY: only async-signal-safe calls between fork and exec (fcntl, dup2, close, prctl).
    unsafe {
        cmd.pre_exec(move || {
            // Move the two ends above any fd number we are about to overwrite, then onto 3 and 4.
            let a = libc::fcntl(fd_in, libc::F_DUPFD, 10);
            let b = libc::fcntl(fd_out, libc::F_DUPFD, 10);
            if a < 0
                || b < 0
                || libc::dup2(a, control::FD_FROM_SUPERVISOR) < 0
                || libc::dup2(b, control::FD_TO_SUPERVISOR) < 0
            {
                return Err(io::Error::last_os_error());
            }
            libc::close(a);
            libc::close(b);
            // If the supervisor dies, its workers go too.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd.spawn().context("spawning the worker process")?;
    drop((worker_in, worker_out));
    let mut line = serde_json::to_vec(&ToWorker::Config(cfg))?;
    line.push(b'\n');
    to_worker.write_all(&line)?;
    let pid = child.id();
    std::thread::spawn(move || {
        for line in BufReader::new(from_worker).lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str(&line) {
                Ok(msg) => {
                    if events.send(Event::FromWorker(index, msg)).is_err() {
                        return;
                    }
                }
                Err(e) => log::error!("worker {index}: unreadable control message: {e}"),
            }
        }
        let _ = events.send(Event::WorkerGone(index));
    });
    Ok(WorkerHandle {
        child,
        to: to_worker,
        pid,
    })
}

impl Supervisor {
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut ready = vec![false; self.workers.len()];
        while !ready.iter().all(|&r| r) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Event::FromWorker(i, FromWorker::Ready { .. })) => ready[i] = true,
                Ok(Event::FromWorker(i, FromWorker::Failed { error })) => {
                    bail!("worker {i} failed to start: {error}")
                }
                Ok(Event::WorkerGone(i)) => {
                    bail!("worker {i} exited during start-up (see its log above)")
                }
                Ok(Event::FromWorker(i, msg)) => self.worker_message(i, msg),
                Ok(_) => {}
                Err(_) => bail!("workers did not report ready within 20 s"),
            }
        }
        Ok(())
    }

    fn run(&mut self) -> anyhow::Result<()> {
        let mut next_push = self.cfg.push_interval.map(|d| Instant::now() + d);
        loop {
            let now = Instant::now();
            if let Some(at) = next_push.filter(|at| *at <= now) {
                self.start_broadcast(None, None);
                next_push = self.cfg.push_interval.map(|d| at.max(now - d) + d);
            }
            self.expire_pending();
            let wait = next_push
                .map_or(Duration::from_secs(1), |at| at.saturating_duration_since(now))
                .min(Duration::from_secs(1));
            match self.events.recv_timeout(wait) {
                Ok(Event::FromWorker(i, msg)) => self.worker_message(i, msg),
                Ok(Event::Admin(request, routed)) => self.admin(request, routed),
                Ok(Event::WorkerGone(i)) => {
                    let status = self.workers[i].child.try_wait().ok().flatten();
                    bail!(
                        "worker {i} (pid {}) exited unexpectedly ({status:?}); stopping",
                        self.workers[i].pid
                    );
                }
                Ok(Event::Signal) => {
                    log::info!("signal received: closing connections and stopping workers");
                    return Ok(());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("event channel closed"),
            }
        }
    }

    fn send(&mut self, worker: usize, msg: &ToWorker) {
        let mut line = match serde_json::to_vec(msg) {
            Ok(l) => l,
            Err(e) => return log::error!("cannot encode control message: {e}"),
        };
        line.push(b'\n');
        if let Err(e) = self.workers[worker].to.write_all(&line) {
            if !self.stopping {
                log::error!("worker {worker}: control write failed: {e}");
            }
        }
    }

    fn new_pending(&mut self, kind: PendingKind, remaining: usize, request: Option<tiny_http::Request>) -> u64 {
        let req = self.next_req;
        self.next_req += 1;
        self.pending.insert(
            req,
            Pending {
                kind,
                remaining,
                replies: Vec::new(),
                request,
                started: Instant::now(),
            },
        );
        req
    }

    fn admin(&mut self, request: tiny_http::Request, routed: AdminRequest) {
        match routed {
            AdminRequest::Stats(format) => {
                let req = self.new_pending(PendingKind::Stats(format), self.workers.len(), Some(request));
                for w in 0..self.workers.len() {
                    self.send(w, &ToWorker::Stats { req });
                }
            }
            AdminRequest::Broadcast { text } => self.start_broadcast(text, Some(request)),
            AdminRequest::Push { id, text } => {
                self.push_seq += 1;
                let payload = message::format_push(message::unix_ns(), self.push_seq, Kind::Push, text.as_deref());
                let hash = self.hasher.hash(id.as_bytes());
                match self.directory.get(&hash) {
                    Some(&(worker, _)) => {
                        let req = self.new_pending(PendingKind::Push { id }, 1, Some(request));
                        self.send(worker, &ToWorker::Push { req, hash, payload });
                    }
                    None => respond_json(request, 200, &serde_json::json!({"id": id, "delivered": false})),
                }
            }
            AdminRequest::Help => respond(request, 200, admin::HELP.to_string(), "text/plain"),
            AdminRequest::Error { status, message } => respond(request, status, format!("{message}\n"), "text/plain"),
        }
    }

    fn start_broadcast(&mut self, text: Option<String>, request: Option<tiny_http::Request>) {
        self.push_seq += 1;
        let seq = self.push_seq;
        let payload = message::format_push(message::unix_ns(), seq, Kind::Broadcast, text.as_deref());
        let req = self.new_pending(PendingKind::Broadcast { seq }, self.workers.len(), request);
        for w in 0..self.workers.len() {
            self.send(
                w,
                &ToWorker::Broadcast {
                    req,
                    payload: payload.clone(),
                },
            );
        }
    }

    fn worker_message(&mut self, worker: usize, msg: FromWorker) {
        match msg {
            FromWorker::Claim { hash, at_ns } => match self.directory.get(&hash).copied() {
                Some((holder, held_since)) if holder != worker => {
                    // Known limit: a device that reconnects twice within the control latency
                    // (~1 ms) onto different workers may lose both of its newest connections.
                    if at_ns >= held_since {
                        self.directory.insert(hash, (worker, at_ns));
                        self.send(holder, &ToWorker::Evict { hash });
                    } else {
                        self.send(worker, &ToWorker::Evict { hash });
                    }
                }
                _ => {
                    self.directory.insert(hash, (worker, at_ns));
                }
            },
            FromWorker::Release { hash } => {
                if self.directory.get(&hash).is_some_and(|&(holder, _)| holder == worker) {
                    self.directory.remove(&hash);
                }
            }
            FromWorker::Ready { .. } | FromWorker::Failed { .. } => {}
            FromWorker::Broadcast { req, .. } | FromWorker::Push { req, .. } | FromWorker::Stats { req, .. } => {
                let done = match self.pending.get_mut(&req) {
                    Some(p) => {
                        p.replies.push(msg);
                        p.remaining -= 1;
                        p.remaining == 0
                    }
                    None => false,
                };
                if done {
                    if let Some(p) = self.pending.remove(&req) {
                        self.complete(p, false);
                    }
                }
            }
        }
    }

    fn expire_pending(&mut self) {
        let late: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.started.elapsed() > REPLY_TIMEOUT)
            .map(|(k, _)| *k)
            .collect();
        for req in late {
            if let Some(p) = self.pending.remove(&req) {
                log::warn!(
                    "admin request {req}: {} worker(s) did not answer in {REPLY_TIMEOUT:?}",
                    p.remaining
                );
                self.complete(p, true);
            }
        }
    }

    fn complete(&mut self, p: Pending, partial: bool) {
        let elapsed_ms = p.started.elapsed().as_secs_f64() * 1000.0;
        match p.kind {
            PendingKind::Stats(format) => {
                let stats: Vec<WorkerStats> = p
                    .replies
                    .into_iter()
                    .filter_map(|m| match m {
                        FromWorker::Stats { stats, .. } => Some(*stats),
                        _ => None,
                    })
                    .collect();
                let mut report = Report::new(
                    if self.xdp.is_some() { "xdp" } else { "kernel" },
                    self.started.elapsed().as_secs_f64(),
                    stats,
                    self.broadcasts_done,
                    self.last_broadcast.clone(),
                    host::process::own_rss_bytes(),
                );
                report.steering = self.xdp.as_ref().and_then(|a| a.counters());
                let (body, content_type) = report.render(format);
                if let Some(request) = p.request {
                    respond(request, if partial { 504 } else { 200 }, body, content_type);
                }
            }
            PendingKind::Broadcast { seq } => {
                let mut result = BroadcastResult {
                    seq,
                    elapsed_ms,
                    ..Default::default()
                };
                for m in &p.replies {
                    if let FromWorker::Broadcast {
                        websockets,
                        polls,
                        fanout_us,
                        ..
                    } = m
                    {
                        result.websockets += websockets;
                        result.polls += polls;
                        result.fanout_ms = result.fanout_ms.max(*fanout_us as f64 / 1000.0);
                    }
                }
                log::info!(
                    "broadcast #{seq}: {} websockets and {} polls in {:.1} ms (slowest worker {:.1} ms)",
                    result.websockets,
                    result.polls,
                    result.elapsed_ms,
                    result.fanout_ms
                );
                self.broadcasts_done += 1;
                self.last_broadcast = Some(result.clone());
                if let Some(request) = p.request {
                    respond_json(
                        request,
                        if partial { 504 } else { 200 },
                        &serde_json::to_value(&result).unwrap_or_default(),
                    );
                }
            }
            PendingKind::Push { id } => {
                let delivered = p
                    .replies
                    .iter()
                    .any(|m| matches!(m, FromWorker::Push { delivered: true, .. }));
                if let Some(request) = p.request {
                    respond_json(
                        request,
                        if partial { 504 } else { 200 },
                        &serde_json::json!({"id": id, "delivered": delivered}),
                    );
                }
            }
        }
    }

    fn stop_workers(&mut self) {
        self.stopping = true;
        for w in 0..self.workers.len() {
            self.send(w, &ToWorker::Shutdown);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for w in &mut self.workers {
            loop {
                match w.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        log::warn!("worker pid {} did not stop in time; killing it", w.pid);
                        let _ = w.child.kill();
                        let _ = w.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

fn respond(request: tiny_http::Request, status: u16, body: String, content_type: &str) {
    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes()).unwrap_or_else(|_| {
        tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"text/plain"[..]).expect("static header")
    });
    // A known length, never chunked (tiny_http chunks bodies over 32 KiB by default, and /stats
    // of a server with dozens of workers is bigger): simple clients and scripts read it whole.
    let response = tiny_http::Response::from_string(body)
        .with_status_code(status)
        .with_header(header)
        .with_chunked_threshold(usize::MAX);
    // Writing can block on a client that does not read: not on the supervisor's loop.
    std::thread::spawn(move || {
        if let Err(e) = request.respond(response) {
            log::debug!("admin client went away: {e}");
        }
    });
}

fn respond_json(request: tiny_http::Request, status: u16, value: &serde_json::Value) {
    respond(request, status, value.to_string(), "application/json");
}

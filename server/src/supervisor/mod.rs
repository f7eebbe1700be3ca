//! The supervisor process: it starts the workers (`workers.rs`), serves the admin endpoint on the
//! kernel whatever the stack, runs the periodic push, keeps the device directory that makes "one
//! connection per device id" hold across workers (`directory.rs`), and answers admin requests once
//! the workers replied (`pending.rs`). With `--stack xdp` it also attaches the steering program
//! before the workers start and detaches it after they stop (`steering.rs`).
//!
//! One process may hold at most 20,000 files here: the kernel stack runs several workers, each
//! with its own `SO_REUSEPORT` listener on the same port; the xdp stack runs one per receive queue.

mod directory;
mod pending;
#[cfg(feature = "xdp")]
mod steering;
mod workers;

use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::admin::{self, respond, respond_json, AdminRequest, BroadcastResult};
use crate::config::ServerConfig;
use crate::control::{FromWorker, ToWorker, WorkerConfig};
use crate::core::device::DeviceHasher;
use crate::core::message::{self, Kind};
use directory::Directory;
use pending::{PendingCalls, PendingKind};
use workers::{spawn_worker, WorkerHandle};

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

/// What the supervisor's loop waits for.
pub(super) enum Event {
    FromWorker(usize, FromWorker),
    WorkerGone(usize),
    /// An admin request, its body already read and routed on a thread of its own.
    Admin(tiny_http::Request, AdminRequest),
    Signal,
}

struct Supervisor {
    cfg: ServerConfig,
    workers: Vec<WorkerHandle>,
    events: mpsc::Receiver<Event>,
    hasher: DeviceHasher,
    directory: Directory,
    pending: PendingCalls,
    push_seq: u64,
    broadcasts_done: u64,
    last_broadcast: Option<BroadcastResult>,
    started: Instant,
    stopping: bool,
    /// The XDP steering of an xdp server (detached after the workers stop).
    #[cfg(feature = "xdp")]
    xdp: Option<xdp_prog::Attachment>,
}

/// What every worker is told, but for its index (and, on xdp, its queue).
struct WorkerPlan {
    base: WorkerConfig,
}

impl WorkerPlan {
    fn new(cfg: &ServerConfig, hasher: &DeviceHasher, first_seq: u64) -> WorkerPlan {
        WorkerPlan {
            base: WorkerConfig {
                index: 0,
                listen: cfg.listen,
                max_conns: cfg.max_conns_per_worker,
                idle_timeout_ms: cfg.idle_timeout.as_millis() as u64,
                request_timeout_ms: cfg.request_timeout.as_millis() as u64,
                poll_hold_ms: (cfg.poll_hold.0.as_millis() as u64, cfg.poll_hold.1.as_millis() as u64),
                echo: cfg.echo,
                max_frame: cfg.max_frame,
                max_message: cfg.max_message,
                device_key: hasher.key(),
                seed: fastrand::u64(..),
                log_size: cfg.log_size,
                write_timeout_ms: cfg.write_timeout.as_millis() as u64,
                first_seq,
                #[cfg(feature = "xdp")]
                xdp: None,
            },
        }
    }

    fn worker(&self, index: usize) -> WorkerConfig {
        #[allow(unused_mut)] // the xdp build sets the queue
        let mut cfg = WorkerConfig {
            index,
            ..self.base.clone()
        };
        #[cfg(feature = "xdp")]
        if let Some(x) = cfg.xdp.as_mut() {
            x.queue = index as u32;
        }
        cfg
    }
}

/// Run a server until SIGINT/SIGTERM: kernel-stack workers, or xdp workers (one per queue).
pub fn run(cfg: ServerConfig) -> anyhow::Result<()> {
    let hasher = DeviceHasher::random();
    let first_seq = message::first_seq();
    #[allow(unused_mut)] // the xdp build adds the queue settings
    let mut plan = WorkerPlan::new(&cfg, &hasher, first_seq);
    #[cfg(feature = "xdp")]
    let attachment = match &cfg.xdp {
        Some(x) => {
            let (att, base) = steering::prepare_xdp(x, cfg.listen)?;
            plan.base.xdp = Some(base);
            Some(att)
        }
        None => None,
    };
    if cfg.stack_name() == "kernel" {
        // Fail early and clearly if the port is taken by something that is not ours.
        drop(
            std::net::TcpListener::bind(cfg.listen)
                .map_err(|e| explain_bind_error("WebSocket port", cfg.listen, &e))?,
        );
    }
    let admin_listener =
        std::net::TcpListener::bind(cfg.admin).map_err(|e| explain_bind_error("admin endpoint", cfg.admin, &e))?;
    let admin_server = std::sync::Arc::new(
        tiny_http::Server::from_listener(admin_listener, None)
            .map_err(|e| anyhow::anyhow!("starting the admin endpoint: {e}"))?,
    );
    let (tx, rx) = mpsc::channel();
    let exe = std::env::current_exe().context("finding our own executable to start workers")?;
    let mut workers = Vec::new();
    for index in 0..cfg.workers {
        let worker = spawn_worker(&exe, plan.worker(index), tx.clone());
        workers.push(worker.with_context(|| format!("starting worker {index}"))?);
    }
    let mut sup = Supervisor {
        cfg,
        workers,
        events: rx,
        hasher,
        directory: Directory::default(),
        pending: PendingCalls::default(),
        push_seq: first_seq,
        broadcasts_done: 0,
        last_broadcast: None,
        started: Instant::now(),
        stopping: false,
        #[cfg(feature = "xdp")]
        xdp: attachment,
    };
    if let Err(e) = sup.wait_ready() {
        sup.stop_workers();
        return Err(e);
    }
    serve_admin(&admin_server, tx.clone());
    forward_signals(tx)?;
    sup.log_start();
    let result = sup.run();
    admin_server.unblock();
    sup.stop_workers();
    #[cfg(feature = "xdp")]
    if let Some(att) = sup.xdp.as_mut() {
        att.finish();
    }
    result
}

/// Admin requests come in on a thread; each is read and routed on a thread of its own, since
/// reading a body can block on a slow client: never on the supervisor's loop.
fn serve_admin(server: &std::sync::Arc<tiny_http::Server>, tx: mpsc::Sender<Event>) {
    let server = std::sync::Arc::clone(server);
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
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

/// SIGINT and SIGTERM become an event of the loop.
fn forward_signals(tx: mpsc::Sender<Event>) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            let _ = tx.send(Event::Signal);
        }
    });
    Ok(())
}

impl Supervisor {
    fn log_start(&self) {
        log::info!(
            "ws-server ({} stack): {} workers on {}, admin on http://{}/, push every {}, idle timeout {}",
            self.cfg.stack_name(),
            self.workers.len(),
            self.cfg.listen,
            self.cfg.admin,
            self.cfg.push_interval.map_or("never".to_string(), |d| format!("{d:?}")),
            if self.cfg.idle_timeout.is_zero() {
                "off".to_string()
            } else {
                format!("{:?}", self.cfg.idle_timeout)
            },
        );
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
                    let status = self.workers[i].exit_status();
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

    fn admin(&mut self, request: tiny_http::Request, routed: AdminRequest) {
        match routed {
            AdminRequest::Stats(format) => {
                let req = self
                    .pending
                    .start(PendingKind::Stats(format), self.workers.len(), Some(request));
                for w in 0..self.workers.len() {
                    self.send(w, &ToWorker::Stats { req });
                }
            }
            AdminRequest::Broadcast { text } => self.start_broadcast(text, Some(request)),
            AdminRequest::Push { id, text } => {
                self.push_seq += 1;
                let payload = message::format_push(message::unix_ns(), self.push_seq, Kind::Push, text.as_deref());
                let hash = self.hasher.hash(id.as_bytes());
                match self.directory.holder(hash) {
                    Some(worker) => {
                        let seq = self.push_seq;
                        let req = self.pending.start(PendingKind::Push { id, seq }, 1, Some(request));
                        self.send(worker, &ToWorker::Push { req, hash, payload });
                    }
                    None => respond_json(
                        request,
                        200,
                        &serde_json::to_value(admin::PushResult::new(id, self.push_seq, false)).unwrap_or_default(),
                    ),
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
        let payload_bytes = payload.len() as u64;
        let req = self.pending.start(
            PendingKind::Broadcast { seq, payload_bytes },
            self.workers.len(),
            request,
        );
        for w in 0..self.workers.len() {
            self.send(
                w,
                &ToWorker::Broadcast {
                    req,
                    seq,
                    payload: payload.clone(),
                },
            );
        }
    }

    fn worker_message(&mut self, worker: usize, msg: FromWorker) {
        match msg {
            FromWorker::Claim { hash, at_ns } => {
                if let Some(evict) = self.directory.claim(worker, hash, at_ns) {
                    self.send(evict.worker, &ToWorker::Evict { hash: evict.hash });
                }
            }
            FromWorker::Release { hash } => self.directory.release(worker, hash),
            FromWorker::Ready { .. } | FromWorker::Failed { .. } => {}
            FromWorker::Broadcast { req, .. } | FromWorker::Push { req, .. } | FromWorker::Stats { req, .. } => {
                if let Some(p) = self.pending.reply(req, msg) {
                    self.complete(p, false);
                }
            }
        }
    }
}

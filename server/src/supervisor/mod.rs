//! The supervisor process: it starts the workers (`workers.rs`), serves the admin endpoint on the
//! kernel whatever the stack, runs the periodic push, keeps the device directory that makes "one
//! connection per device id" hold across workers (`directory.rs`), and answers admin requests once
//! the workers replied (`pending.rs`). With `--stack xdp` it also attaches the steering program
//! before the workers start and detaches it after they stop (`steering.rs`).
//!
//! One process may hold at most 20,000 files here: the kernel stack runs several workers, each
//! with its own `SO_REUSEPORT` listener on the same port; the xdp stack runs one per receive queue.

mod admin_http;
pub mod cluster;
mod directory;
mod liveness;
mod pending;
mod restart;
#[cfg(feature = "xdp")]
mod steering;
mod workers;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub use admin_http::{AdminLimits, Answer, Responder};

use crate::admin::{self, AdminCounters, AdminRequest, BroadcastResult, RestartCounts, RestartRecord};
use crate::config::ServerConfig;
use crate::control::{ToWorker, WorkerConfig};
use crate::core::device::DeviceHasher;
use crate::core::message::{self, Kind};
use directory::{Directory, PushRoute};
use pending::{Pending, PendingCalls, PendingKind};
use restart::RestartPolicy;
use workers::{spawn_worker, SendError, Slot, WorkerRef};

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
enum Event {
    /// What one read of a worker's control socket held, in order (a loop's claims come in one
    /// write: one wake-up of this loop for them all).
    FromWorker(WorkerRef, Vec<crate::control::FromWorker>),
    /// The worker's control channel closed and its process exited (not yet reaped).
    WorkerGone(WorkerRef),
    /// An admin request, its body already read and routed on the admin thread.
    Admin(Responder, AdminRequest),
    /// From the cluster's broker client (`--cluster`).
    Cluster(cluster::ClusterEvent),
    Signal,
}

/// How far back `--max-restarts` counts a worker's deaths.
const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// The loop's longest sleep: pings, deadlines and restarts are checked this often at least.
const WATCH_EVERY: Duration = Duration::from_millis(100);

struct Supervisor {
    cfg: ServerConfig,
    exe: std::path::PathBuf,
    plan: WorkerPlan,
    slots: Vec<Slot>,
    events: mpsc::Receiver<Event>,
    /// For the reader threads of restarted workers.
    events_tx: mpsc::Sender<Event>,
    hasher: DeviceHasher,
    directory: Directory,
    pending: PendingCalls,
    push_seq: u64,
    /// Pushes answered "not connected" (counted here: a miss asks every worker, and all but one
    /// of them miss even when the device is connected).
    pushes_missed: u64,
    /// The newest broadcast's number: a restarted worker's log starts after it.
    last_broadcast_seq: u64,
    broadcasts_done: u64,
    /// Per broadcast, the slowest worker's fan-out (`/metrics`).
    fanout_ms: crate::core::stats::MsHistogram,
    last_broadcast: Option<BroadcastResult>,
    started: Instant,
    stopping: bool,
    policy: RestartPolicy,
    max_restarts: usize,
    /// No pong for this long: the worker is hung (None: not checked), with the guards against
    /// silence that lies (`liveness.rs`).
    hang_timeout: Option<Duration>,
    liveness: liveness::Liveness,
    restart_counts: RestartCounts,
    /// The last restarts, numbered.
    restarts: VecDeque<(u64, RestartRecord)>,
    restart_number: u64,
    admin_counters: Arc<AdminCounters>,
    /// The broker client of a cluster node (`--cluster`).
    cluster: Option<cluster::Cluster>,
    /// Since when the node drains (the first SIGTERM/SIGINT).
    draining: bool,
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
                max_conns_per_source: cfg.max_conns_per_source,
                device_jwt_key: cfg.device_jwt_key.clone(),
                allowed_origins: cfg.allowed_origins.clone(),
                insecure_ids: cfg.insecure_ids,
                anonymous: cfg.anonymous,
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
                cluster: false,
                claims: true,
                restarted: false,
                #[cfg(feature = "xdp")]
                xdp: None,
            },
        }
    }

    /// Worker `index`'s settings; its broadcasts are numbered after `first_seq` (the run's first,
    /// or for a restarted worker the newest broadcast so far: an older `since=` is a gap there).
    fn worker(&self, index: usize, first_seq: u64) -> WorkerConfig {
        #[allow(unused_mut)] // the xdp build sets the queue
        let mut cfg = WorkerConfig {
            index,
            first_seq,
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
    let (tx, rx) = mpsc::channel();
    // A cluster node numbers broadcasts as the cluster does: it needs the broker before it
    // serves anyone.
    let (cluster, first_seq) = match cfg.cluster.clone() {
        Some(opts) => {
            let started = cluster::Cluster::start(opts, tx.clone())?;
            plan.base.cluster = true;
            plan.base.first_seq = started.first_seq;
            (Some(started.cluster), started.first_seq)
        }
        None => (None, first_seq),
    };
    // The directory is for routing pushes and settling a device held twice: with one worker
    // on one node there is neither, and a push asks that worker.
    plan.base.claims = cfg.workers > 1 || cluster.is_some();
    let exe = std::env::current_exe().context("finding our own executable to start workers")?;
    let mut slots = Vec::new();
    for index in 0..cfg.workers {
        let who = WorkerRef { index, gen: 0 };
        #[cfg(feature = "xdp")]
        let xsks_fd = attachment
            .as_ref()
            .map(|a| std::os::fd::AsRawFd::as_raw_fd(&a.xsks_fd()));
        #[cfg(not(feature = "xdp"))]
        let xsks_fd = None;
        let proc = spawn_worker(&exe, plan.worker(index, first_seq), who, tx.clone(), xsks_fd)
            .with_context(|| format!("starting worker {index}"))?;
        slots.push(Slot::new(proc));
    }
    let workers = cfg.workers;
    let max_restarts = cfg.max_restarts;
    let hang_timeout = cfg.hang_timeout;
    let mut sup = Supervisor {
        cfg,
        exe,
        plan,
        slots,
        events: rx,
        events_tx: tx.clone(),
        hasher,
        directory: Directory::default(),
        pending: PendingCalls::default(),
        push_seq: first_seq,
        pushes_missed: 0,
        last_broadcast_seq: first_seq,
        broadcasts_done: 0,
        fanout_ms: Default::default(),
        last_broadcast: None,
        started: Instant::now(),
        stopping: false,
        policy: RestartPolicy::new(workers, max_restarts, RESTART_WINDOW),
        max_restarts,
        hang_timeout,
        liveness: liveness::Liveness::new(hang_timeout, Instant::now()),
        restart_counts: RestartCounts::default(),
        restarts: VecDeque::new(),
        restart_number: 0,
        admin_counters: Arc::new(AdminCounters::default()),
        cluster,
        draining: false,
        #[cfg(feature = "xdp")]
        xdp: attachment,
    };
    if let Err(e) = sup.wait_ready() {
        sup.stop_workers();
        return Err(e);
    }
    let mut admin_server = match admin_http::start(
        admin_listener,
        tx.clone(),
        Arc::clone(&sup.admin_counters),
        AdminLimits::default(),
        sup.cfg.admin_access.clone(),
    ) {
        Ok(server) => server,
        Err(e) => {
            sup.stop_workers();
            return Err(e);
        }
    };
    forward_signals(tx)?;
    sup.log_start();
    // Type=notify: every worker is up (and on xdp the steering attached).
    let status = format!("serving on {} with {} workers", sup.cfg.listen, sup.slots.len());
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)]) {
        log::warn!("telling systemd we are ready (NOTIFY_SOCKET): {e}");
    }
    let result = sup.run();
    if let Err(e) = &result {
        log::error!("{e:#}");
    }
    admin_server.stop();
    sup.stop_workers();
    if let Some(cluster) = sup.cluster.as_mut() {
        cluster.stop();
    }
    #[cfg(feature = "xdp")]
    if let Some(att) = sup.xdp.as_mut() {
        att.finish();
    }
    result
}

/// SIGINT and SIGTERM become an event of the loop.
fn forward_signals(tx: mpsc::Sender<Event>) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    // Every signal: the first starts the drain, a second one ends it at once.
    std::thread::spawn(move || {
        for _ in signals.forever() {
            if tx.send(Event::Signal).is_err() {
                break;
            }
        }
    });
    Ok(())
}

impl Supervisor {
    fn log_start(&self) {
        match (&self.cfg.device_jwt_key, self.cfg.insecure_ids) {
            (Some(_), _) => log::info!("device ids need a token signed with the device key"),
            (None, true) => log::warn!(
                "--insecure-ids: device ids are taken on the client's word; anyone can take any device's id and read its pushes (benchmarks and demos only)"
            ),
            (None, false) => log::info!(
                "no --device-key-file: requests with a device id are refused (401); pass --device-key-file, or --insecure-ids for a demo"
            ),
        }
        if let Some(c) = &self.cluster {
            log::info!(
                "cluster node {}: broadcasts and pushes reach every node of the cluster{}",
                c.node(),
                if self.cfg.push_interval.is_some() {
                    "; every node's periodic push is published to all (set --push-interval on one node)"
                } else {
                    ""
                }
            );
        }
        log::info!(
            "ws-server ({} stack): {} workers on {}, admin on http://{}/, push every {}, idle timeout {}, {}, restarts: at most {} per worker per minute",
            self.cfg.stack_name(),
            self.slots.len(),
            self.cfg.listen,
            self.cfg.admin,
            self.cfg.push_interval.map_or("never".to_string(), |d| format!("{d:?}")),
            if self.cfg.idle_timeout.is_zero() {
                "off".to_string()
            } else {
                format!("{:?}", self.cfg.idle_timeout)
            },
            self.hang_timeout.map_or("hung workers not detected".to_string(), |t| format!(
                "a worker silent for {t:?} is hung"
            )),
            self.max_restarts,
        );
    }

    fn run(&mut self) -> anyhow::Result<()> {
        let mut next_push = self.cfg.push_interval.map(|d| Instant::now() + d);
        let mut next_watch = Instant::now();
        loop {
            let now = Instant::now();
            if let Some(at) = next_push.filter(|at| *at <= now) {
                self.start_broadcast(None, None);
                next_push = self.cfg.push_interval.map(|d| at.max(now - d) + d);
            }
            // Pings, deadlines and due restarts every WATCH_EVERY, not per event (a storm of
            // device claims from many workers must not cost a pass over every worker each).
            if self.draining && self.slots.iter().all(|s| s.proc.is_none()) {
                log::info!("drained: every worker has closed its connections and exited");
                return Ok(());
            }
            if now >= next_watch {
                next_watch = now + WATCH_EVERY;
                self.expire_pending();
                if let Some(c) = &self.cluster {
                    c.set_devices(self.directory.devices() as u64);
                }
                self.watch_workers()?;
            }
            let wait = next_push
                .map_or(WATCH_EVERY, |at| at.saturating_duration_since(now))
                .min(next_watch.saturating_duration_since(now));
            match self.events.recv_timeout(wait) {
                Ok(Event::FromWorker(who, msgs)) => {
                    for msg in msgs {
                        self.worker_message(who, msg);
                    }
                }
                Ok(Event::Admin(request, routed)) => self.admin(request, routed),
                Ok(Event::Cluster(event)) => self.cluster_event(event),
                Ok(Event::WorkerGone(who)) => self.worker_gone(who)?,
                Ok(Event::Signal) if !self.draining && self.cfg.drain_rate > 0.0 => self.begin_drain(),
                Ok(Event::Signal) => {
                    log::info!("signal received: closing every connection now and stopping workers");
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                    return Ok(());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("event channel closed"),
            }
        }
    }

    /// The drain rate, shared among the workers still draining (again whenever one finishes, so
    /// that the others take up its share).
    fn drain_share_changed(&mut self) {
        let running: Vec<usize> = (0..self.slots.len())
            .filter(|&w| self.slots[w].proc.is_some())
            .collect();
        let per_second = self.cfg.drain_rate / running.len().max(1) as f64;
        for w in running {
            let _ = self.send(w, &ToWorker::Drain { per_second });
        }
    }

    /// The XSKMAP descriptor xdp workers inherit (None on the kernel stack).
    fn xsks_fd(&self) -> Option<i32> {
        #[cfg(feature = "xdp")]
        return self.xdp.as_ref().map(|a| std::os::fd::AsRawFd::as_raw_fd(&a.xsks_fd()));
        #[cfg(not(feature = "xdp"))]
        None
    }

    /// SIGTERM: `/readyz` says 503 from now on, workers refuse new clients and close their
    /// connections at `--drain-rate` (shared among them), then exit; the loop ends when all have.
    fn begin_drain(&mut self) {
        self.draining = true;
        self.stopping = true; // workers that exit now are not restarted
        log::info!(
            "signal received: draining (readiness 503, new clients refused, connections closed at {:.0}/s); a second signal closes the rest at once",
            self.cfg.drain_rate
        );
        self.drain_share_changed();
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status("draining"),
        ]);
    }

    /// `/readyz`: why this node should not get new clients, if it should not.
    fn not_ready(&self) -> Vec<String> {
        let mut why = Vec::new();
        if self.draining {
            why.push("draining (shutting down)".to_string());
        }
        let down: Vec<usize> = (0..self.slots.len()).filter(|&w| !self.slots[w].is_running()).collect();
        if !down.is_empty() {
            why.push(format!("workers not running: {down:?}"));
        }
        if self.cluster.as_ref().is_some_and(|c| !c.connected()) {
            why.push("the cluster broker is unreachable".to_string());
        }
        #[cfg(feature = "xdp")]
        if self.cfg.xdp.is_some() && self.xdp.as_ref().is_none_or(|a| a.counters().is_none()) {
            why.push("the XDP steering program is not attached".to_string());
        }
        why
    }

    /// Push `payload` to device `id` if a worker of this node holds it; `request` gets the
    /// answer (`admin::PushResult`). `asked_by_peer`: another node's question, asked of every
    /// node: only the directory's holder is asked here (not every worker, for a device that is
    /// almost always elsewhere), and a miss is not this node's to count.
    fn push_here(&mut self, id: String, seq: u64, payload: String, request: Responder, asked_by_peer: bool) {
        let hash = self.hasher.hash(id.as_bytes());
        let req = self.pending.next_req();
        let kind = PendingKind::Push {
            id,
            seq,
            count_miss: !asked_by_peer && self.cluster.is_none(),
        };
        let running = |w: usize| self.slots.get(w).is_some_and(Slot::is_running);
        let route = self.directory.push_route(hash, running);
        if asked_by_peer && route == PushRoute::Everyone {
            return self.complete(Pending::now(kind, vec![], Some(request)), false);
        }
        let PushRoute::Holder(worker) = route else {
            let (sent, _) = self.send_to(Slot::is_running, |_| ToWorker::Push {
                req,
                hash,
                payload: payload.clone(),
            });
            // Workers not running hold no device: "not connected", not "lost".
            return self.begin(req, kind, sent, vec![], Some(request));
        };
        match self.send(worker, &ToWorker::Push { req, hash, payload }) {
            Ok(()) | Err(SendError::Overflow) => self.begin(req, kind, vec![worker], vec![], Some(request)),
            Err(SendError::Gone) => self.complete(Pending::now(kind, vec![worker], Some(request)), false),
        }
    }

    fn cluster_event(&mut self, event: cluster::ClusterEvent) {
        match event {
            cluster::ClusterEvent::Broadcast {
                seq,
                ts_ns,
                text,
                request,
            } => self.fan_out(seq, ts_ns, text, request),
            cluster::ClusterEvent::PushAsk { id, text, ts_ns, reply } => {
                // Numbered here: after the broadcasts this node has handed out, never before.
                let seq = self.last_broadcast_seq;
                let payload = message::format_push(ts_ns, seq, Kind::Push, text.as_deref());
                self.push_here(id, seq, payload, reply, true);
            }
            cluster::ClusterEvent::Claims { node, claims } => {
                let (unix_now, mono_now) = (message::unix_ns(), host::monotonic_ns());
                for (id, at_unix_ns) in claims {
                    let hash = self.hasher.hash(id.as_bytes());
                    // Their Unix time on our monotonic clock (the directory's).
                    let at_ns = mono_now.saturating_sub(unix_now.saturating_sub(at_unix_ns));
                    match self.directory.claimed_elsewhere(hash, at_ns) {
                        Ok(None) => {}
                        Ok(Some(worker)) => {
                            log::info!(
                                "device {id} connected to node {node}: closing its older connection here (4002)"
                            );
                            let sent = self.send(worker, &ToWorker::Evict { hash }).is_ok();
                            if let (Some(c), true) = (&self.cluster, sent) {
                                c.moved_away();
                            }
                        }
                        Err(ours) => {
                            if let Some(c) = &self.cluster {
                                c.claim(id, unix_now.saturating_sub(mono_now.saturating_sub(ours)));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Send `msg` (made for each worker by `make`) to the workers `to` selects; returns the
    /// workers it went to (and so whose reply a call can wait for) and those it did not.
    fn send_to(&mut self, to: impl Fn(&Slot) -> bool, make: impl Fn(usize) -> ToWorker) -> (Vec<usize>, Vec<usize>) {
        let (mut sent, mut missing) = (Vec::new(), Vec::new());
        for index in 0..self.slots.len() {
            if !to(&self.slots[index]) {
                missing.push(index);
                continue;
            }
            match self.send(index, &make(index)) {
                // A worker whose queue overflowed is being killed: its death answers for it.
                Ok(()) | Err(SendError::Overflow) => sent.push(index),
                Err(SendError::Gone) => missing.push(index),
            }
        }
        (sent, missing)
    }

    /// Start a call; answer it at once if it waits for nobody.
    fn begin(
        &mut self,
        req: u64,
        kind: PendingKind,
        sent: Vec<usize>,
        missing: Vec<usize>,
        request: Option<Responder>,
    ) {
        if let Some(p) = self.pending.start(req, kind, sent, missing, request) {
            self.complete(p, false);
        }
    }

    fn admin(&mut self, request: Responder, routed: AdminRequest) {
        match routed {
            AdminRequest::Stats(format) => {
                let req = self.pending.next_req();
                let (sent, missing) = self.send_to(Slot::is_running, |_| ToWorker::Stats { req });
                self.begin(req, PendingKind::Stats(format), sent, missing, Some(request));
            }
            AdminRequest::Broadcast { text } => self.start_broadcast(text, Some(request)),
            AdminRequest::Push { id, text } => {
                let seq = match self.cluster {
                    // A push does not take a number of the cluster's sequence (only broadcasts
                    // do): it carries the newest broadcast's, so a client resuming with the
                    // highest `seq` it saw misses no broadcast.
                    Some(_) => self.last_broadcast_seq,
                    None => {
                        self.push_seq += 1;
                        self.push_seq
                    }
                };
                let ts_ns = message::unix_ns();
                let payload = message::format_push(ts_ns, seq, Kind::Push, text.as_deref());
                match &self.cluster {
                    Some(cluster) => {
                        let (here, answer) = Responder::pair();
                        cluster.push(id.clone(), text, ts_ns, answer, request);
                        self.push_here(id, seq, payload, here, false);
                    }
                    None => self.push_here(id, seq, payload, request, false),
                }
            }
            AdminRequest::Ready => match self.not_ready() {
                why if why.is_empty() => request.respond(200, "ready\n".to_string(), "text/plain"),
                why => request.respond(503, format!("not ready: {}\n", why.join("; ")), "text/plain"),
            },
            // The admin thread answers these itself; nothing to do if one comes here.
            AdminRequest::Help => request.respond(200, admin::HELP.to_string(), "text/plain"),
            AdminRequest::Error { status, message } => request.respond(status, format!("{message}\n"), "text/plain"),
        }
    }

    /// A broadcast goes to every worker with a process, a starting one too (so that a worker
    /// started after broadcast N, whose log begins there, misses nothing after N); the call
    /// waits for the running ones.
    fn start_broadcast(&mut self, text: Option<String>, request: Option<Responder>) {
        if let Some(cluster) = &self.cluster {
            // Numbered by the stream and fanned out when it comes back (`cluster_event`).
            return cluster.broadcast(text, request);
        }
        self.push_seq += 1;
        self.fan_out(self.push_seq, message::unix_ns(), text, request);
    }

    /// Hand broadcast `seq` to every worker.
    fn fan_out(&mut self, seq: u64, ts_ns: u64, text: Option<String>, request: Option<Responder>) {
        self.push_seq = self.push_seq.max(seq);
        self.last_broadcast_seq = seq;
        let payload = message::format_push(ts_ns, seq, Kind::Broadcast, text.as_deref());
        let payload_bytes = payload.len() as u64;
        let req = self.pending.next_req();
        let (sent, missing) = self.send_to(
            |slot| slot.proc.is_some(),
            |_| ToWorker::Broadcast {
                req,
                seq,
                payload: payload.clone(),
            },
        );
        // Wait only for the running ones: a starting worker applies it once it runs.
        let (awaited, starting): (Vec<usize>, Vec<usize>) = sent.into_iter().partition(|&w| self.slots[w].is_running());
        let mut missing = missing;
        missing.extend(starting);
        self.begin(
            req,
            PendingKind::Broadcast { seq, payload_bytes },
            awaited,
            missing,
            request,
        );
    }
}

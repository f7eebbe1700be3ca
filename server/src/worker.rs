//! The one worker process, whatever its transport: `ws-server` re-executed with `--worker` by the
//! supervisor. It reads its settings from the control channel, builds the core and the transport
//! (`io::epoll` or `io::userspace`), and loops: network I/O, the core's tick every 100 ms, the
//! supervisor's commands (broadcast, push, evict, stats, shutdown). SIGTERM (also sent if the
//! supervisor dies) closes every connection with 1001 and exits; SIGINT from a terminal is the
//! supervisor's to decide.

use std::io::{self, BufRead};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::control::{self, send_line, ControlReader, FromWorker, ToWorker, WorkerConfig, WorkerStats};
use crate::core::device::DeviceHasher;
use crate::core::{CoreConfig, ServerCore, TICK_MS};
use crate::io::{Clock, Driver, Transport};

/// Largest HTTP request head (a WebSocket upgrade from a browser is 200-600 bytes).
pub const MAX_REQUEST: usize = 4096;
/// How often the control channel is read at least. The epoll transport also wakes on it at once;
/// the userspace transport waits 1 ms at most, so a command waits up to about this long there.
const CONTROL_EVERY: Duration = Duration::from_millis(2);
/// At shutdown, how long the transport may take to deliver the close frames and FINs.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The core's settings for a worker.
pub fn core_config(cfg: &WorkerConfig) -> CoreConfig {
    CoreConfig {
        idle_timeout_ms: cfg.idle_timeout_ms,
        poll_hold_ms: cfg.poll_hold_ms,
        echo: cfg.echo,
        max_frame: cfg.max_frame,
        max_message: cfg.max_message,
        max_request: MAX_REQUEST,
        request_timeout_ms: cfg.request_timeout_ms,
        device_hasher: DeviceHasher::new(cfg.device_key),
        seed: cfg.seed ^ cfg.index as u64,
        log_size: cfg.log_size,
        write_timeout_ms: cfg.write_timeout_ms,
        first_seq: cfg.first_seq,
        // Checked at start-up by the supervisor: a key that fails here is a bug, and fails closed.
        allowed_origins: cfg.allowed_origins.iter().map(|o| o.as_bytes().to_vec()).collect(),
        insecure_ids: cfg.insecure_ids,
        anonymous: cfg.anonymous,
        device_auth: cfg
            .device_jwt_key
            .as_deref()
            .map(|k| crate::core::auth::DeviceAuth::hs256(k).unwrap_or_else(|e| panic!("device key: {e}"))),
    }
}

/// Entry point of a worker process.
pub fn run() -> anyhow::Result<()> {
    // `--worker` is a hidden flag, but anyone can pass it: make sure the two fds are open.
    for fd in [control::FD_FROM_SUPERVISOR, control::FD_TO_SUPERVISOR] {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            anyhow::bail!("--worker is started by ws-server itself, with its control channel on fds 3 and 4");
        }
    }
    // SAFETY: the supervisor passed these two fds (dup2'ed before exec; open, checked above) and
    // nothing else in this process owns them.
    let (control_in, control_out) = unsafe {
        (
            UnixStream::from_raw_fd(control::FD_FROM_SUPERVISOR),
            UnixStream::from_raw_fd(control::FD_TO_SUPERVISOR),
        )
    };
    let mut first = String::new();
    io::BufReader::new(&control_in)
        .read_line(&mut first)
        .context("reading worker config")?;
    let ToWorker::Config(cfg) = serde_json::from_str(&first).context("parsing worker config")? else {
        anyhow::bail!("the first control message was not the config");
    };
    let cfg = *cfg;
    crate::logging::set_worker(cfg.index);
    control_in.set_nonblocking(true)?;
    let mut out = control_out;
    #[cfg(feature = "xdp")]
    if let Some(x) = cfg.xdp.clone() {
        let driver = open_userspace(&cfg, &x);
        return start(cfg, driver, control_in, &mut out);
    }
    let driver = crate::io::epoll::Epoll::new(&cfg, control_in.as_raw_fd());
    start(cfg, driver, control_in, &mut out)
}

/// How long a restarted xdp worker keeps trying to bind its queue: the kernel frees a dead
/// socket's hold on the queue in the background (its buffer pool is released by a work item),
/// and a bind before that fails with EBUSY. Measured here: under 250 ms.
/// Whether an error comes from a queue another AF_XDP socket still holds (EBUSY).
#[cfg(feature = "xdp")]
fn queue_busy(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.raw_os_error() == Some(libc::EBUSY))
}

#[cfg(feature = "xdp")]
const REBIND_FOR: Duration = Duration::from_secs(2);

/// The userspace transport on this worker's queue. A restarted worker retries for `REBIND_FOR`
/// while binding says EBUSY (the kernel frees its predecessor's hold on the queue in the
/// background); any other error, and any error of a first start, is reported at once.
#[cfg(feature = "xdp")]
fn open_userspace(
    cfg: &WorkerConfig,
    x: &crate::io::userspace::XdpWorkerConfig,
) -> anyhow::Result<crate::io::userspace::Userspace> {
    let started = Instant::now();
    let mut tries = 0u32;
    loop {
        tries += 1;
        match crate::io::userspace::Userspace::open(cfg, x, MAX_REQUEST) {
            Ok(driver) => {
                if tries > 1 {
                    log::info!(
                        "worker {}: queue {} bound after {tries} tries in {} ms (its predecessor's socket was still being freed)",
                        cfg.index,
                        x.queue,
                        started.elapsed().as_millis()
                    );
                }
                return Ok(driver);
            }
            Err(e) if cfg.restarted && started.elapsed() < REBIND_FOR && queue_busy(&e) => {
                log::debug!(
                    "worker {}: opening queue {} failed, retrying: {e:#}",
                    cfg.index,
                    x.queue
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Tell the supervisor whether the transport could start, then run the worker.
fn start<D: Driver>(
    cfg: WorkerConfig,
    made: anyhow::Result<D>,
    control_in: UnixStream,
    out: &mut UnixStream,
) -> anyhow::Result<()> {
    let mut driver = match made {
        Ok(driver) => driver,
        Err(e) => {
            let error = format!("{e:#}");
            send_line(out, &FromWorker::Failed { error })?;
            return Err(e);
        }
    };
    driver.io().outbox().ids = cfg.cluster;
    driver.io().outbox().quiet = !cfg.claims;
    // Everything is built before the worker says it is ready.
    let core = ServerCore::new(core_config(&cfg), driver.id_space(), 0);
    send_line(
        out,
        &FromWorker::Ready {
            pid: std::process::id(),
        },
    )?;
    let mut worker = Worker {
        cfg,
        driver,
        core,
        control_in,
        control_out: out.try_clone()?,
        control: ControlReader::default(),
        clock: Clock::start(),
        expiry_busy_ns: 0,
        recent_expiries: RecentExpiries::new(),
        drain: None,
        lag_since: None,
        log_lag_ms: Default::default(),
        stop: false,
    };
    worker.run()
}

struct Worker<D: Driver> {
    cfg: WorkerConfig,
    driver: D,
    core: ServerCore,
    control_in: UnixStream,
    control_out: UnixStream,
    control: ControlReader,
    clock: Clock,
    /// Time spent in ticks that expired at least one connection.
    expiry_busy_ns: u64,
    recent_expiries: RecentExpiries,
    /// Draining (`ToWorker::Drain`): connections closed so far at the rate asked.
    drain: Option<Drain>,
    /// The last broadcast's arrival while some connection still waits for it, and the lags
    /// measured so far (`WorkerStats::log_lag_ms`).
    lag_since: Option<Instant>,
    log_lag_ms: crate::core::stats::MsHistogram,
    stop: bool,
}

struct Drain {
    started_ms: u64,
    per_second: f64,
    /// Closed since `started_ms`, and before it (at an earlier rate).
    closed: u64,
    closed_before: u64,
    /// Past this, whatever is left is closed at once (a drain ends, whatever the clients do).
    deadline_ms: u64,
}

/// A drain's deadline beyond what its rate needs.
const DRAIN_SLACK_MS: u64 = 10_000;

impl<D: Driver> Worker<D> {
    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn run(&mut self) -> anyhow::Result<()> {
        let terminated = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&terminated))?;
        signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::new(AtomicBool::new(false)))?;
        log::info!("worker {}: {}", self.cfg.index, self.driver.describe());
        let mut next_tick = 0u64;
        let mut next_control = Instant::now();
        while !self.stop && !terminated.load(Ordering::Relaxed) {
            let now = self.now_ms();
            let wait = if self.core.fan_out_pending() {
                Duration::ZERO
            } else {
                Duration::from_millis(next_tick.saturating_sub(now).min(TICK_MS))
            };
            let turn = self.driver.turn(&mut self.core, &self.clock, wait)?;
            let now = self.now_ms();
            if now >= next_tick {
                next_tick = now + TICK_MS;
                self.tick(now);
            }
            if turn.control || Instant::now() >= next_control {
                next_control = Instant::now() + CONTROL_EVERY;
                self.read_commands()?;
            }
            if self.core.fan_out_pending() {
                self.driver.call(&mut self.core, now, |core, io| core.fan_out(io));
            }
            // Claims before the frames: a client should not hear its 101 before the directory
            // can (the directory's routing copes when it does not, `directory.rs`).
            self.send(None)?;
            self.driver.flush(&self.core);
            if let Some(since) = self.lag_since.filter(|_| self.core.broadcast_behind() == 0) {
                // Rounded up: 1.9 ms is in the 2 ms bucket, not the 1 ms one.
                self.log_lag_ms
                    .record(since.elapsed().as_micros().div_ceil(1000) as u64);
                self.lag_since = None;
            }
        }
        self.shutdown()
    }

    /// The core's timers (idle expiry, long-poll answers), then the transport's own.
    fn tick(&mut self, now: u64) {
        let expired_before = self.core.stats().expired;
        let started = Instant::now();
        self.driver.call(&mut self.core, now, |core, io| core.tick(now, io));
        let expired = self.core.stats().expired;
        if expired > expired_before {
            self.expiry_busy_ns += started.elapsed().as_nanos() as u64;
        }
        self.recent_expiries.record(now, expired);
        self.driver.housekeeping(&mut self.core, now);
        if let Some(d) = self.drain.as_mut() {
            // As many as the rate allows by now: the closes are spread evenly over the drain.
            let due = (d.per_second * now.saturating_sub(d.started_ms) as f64 / 1000.0) as u64;
            let n = due.saturating_sub(d.closed);
            let (closed, done) = self
                .driver
                .call(&mut self.core, now, |core, io| core.drain_some(n, now, io));
            d.closed += closed;
            let total = d.closed_before + d.closed;
            if done {
                log::info!(event = "drained", closed = total; "worker {}: drained ({total} clients closed)", self.cfg.index);
                self.stop = true;
            } else if now >= d.deadline_ms {
                log::warn!(
                    event = "drain_deadline", closed = total;
                    "worker {}: the drain's deadline passed with clients left; closing them all now",
                    self.cfg.index
                );
                self.stop = true;
            }
        }
    }

    /// Read what the supervisor sent and carry out every complete command.
    fn read_commands(&mut self) -> anyhow::Result<()> {
        if !self
            .control
            .fill(&mut self.control_in)
            .context("reading the control socket")?
        {
            log::info!("worker {}: supervisor went away; shutting down", self.cfg.index);
            self.stop = true;
        }
        while let Some(cmd) = self.control.next_command() {
            match cmd {
                Ok(cmd) => {
                    let reply = self.apply(cmd);
                    self.send(reply)?;
                }
                Err(e) => log::error!("worker {}: bad control message: {e}", self.cfg.index),
            }
        }
        Ok(())
    }

    /// Carry out one command; returns the reply for the supervisor, if it expects one.
    fn apply(&mut self, cmd: ToWorker) -> Option<FromWorker> {
        let now = self.now_ms();
        let (core, driver) = (&mut self.core, &mut self.driver);
        match cmd {
            ToWorker::Config(_) => None,
            ToWorker::Broadcast { req, seq, payload } => {
                let started = Instant::now();
                let queued = driver.call(core, now, |core, io| core.broadcast(payload.as_bytes(), seq, now, io));
                let fanout = queued.unwrap_or_else(|e| {
                    log::error!("worker {}: broadcast #{seq} not queued: {e}", self.cfg.index);
                    Default::default()
                });
                let fanout_us = started.elapsed().as_micros() as u64;
                // A broadcast while the previous one is still waiting somewhere: measured from
                // the older one (what a client at the back waits).
                self.lag_since.get_or_insert(started);
                driver.broadcast_written(started);
                Some(FromWorker::Broadcast {
                    req,
                    websockets: fanout.websockets,
                    polls: fanout.polls,
                    fanout_us,
                })
            }
            ToWorker::Push { req, hash, payload } => {
                let queued = driver.call(core, now, |core, io| core.push_hash(hash, payload.as_bytes(), now, io));
                Some(FromWorker::Push { req, queued })
            }
            ToWorker::Evict { hash } => {
                driver.call(core, now, |core, io| core.evict_device(hash, now, io));
                None
            }
            ToWorker::Stats { req } => Some(FromWorker::Stats {
                req,
                stats: Box::new(self.stats()),
            }),
            ToWorker::Ping { n } => Some(FromWorker::Pong { n }),
            ToWorker::Drain { per_second } => {
                let clients = core.stats().websockets + core.stats().polls_held;
                if self.drain.is_none() {
                    core.start_draining();
                    log::info!(
                        event = "drain_start", clients = clients;
                        "worker {}: draining: no new clients, closing {clients} at {per_second:.0}/s",
                        self.cfg.index
                    );
                }
                // From now on at this rate (again when another worker finished: its share is
                // ours too); done by the deadline whatever the clients do.
                let closed_before = self.drain.as_ref().map_or(0, |d| d.closed_before + d.closed);
                self.drain = Some(Drain {
                    started_ms: now,
                    per_second,
                    closed: 0,
                    closed_before,
                    deadline_ms: now + (clients as f64 / per_second.max(1.0) * 1000.0) as u64 + DRAIN_SLACK_MS,
                });
                None
            }
            ToWorker::Shutdown => {
                self.stop = true;
                None
            }
        }
    }

    /// Write what the core produced for the supervisor (device claims), then `reply`.
    fn send(&mut self, reply: Option<FromWorker>) -> anyhow::Result<()> {
        self.driver.io().outbox().send(&mut self.control_out, reply)
    }

    fn stats(&self) -> WorkerStats {
        let mut stats = WorkerStats {
            index: self.cfg.index,
            pid: std::process::id(),
            core: self.core.stats().clone(),
            log_lag_ms: self.log_lag_ms.clone(),
            expiry_busy_ns: self.expiry_busy_ns,
            expired_last_10s: self.recent_expiries.sum(),
            core_heap_bytes: self.core.heap_bytes() as u64,
            output_waiting: self.core.output_behind(),
            log_bytes: self.core.log_bytes() as u64,
            rss_bytes: host::process::own_rss_bytes(),
            ..WorkerStats::default()
        };
        self.driver.stats(&self.core, &mut stats);
        stats
    }

    /// Close every connection with 1001, let the transport deliver that for a while, and exit.
    fn shutdown(&mut self) -> anyhow::Result<()> {
        let now = self.now_ms();
        self.driver.call(&mut self.core, now, |core, io| core.shutdown(now, io));
        let left = self.driver.drain(&mut self.core, now, SHUTDOWN_GRACE);
        let _ = self.send(None);
        log::info!(
            "worker {}: stopped ({left} connections still open at exit)",
            self.cfg.index
        );
        Ok(())
    }
}

/// Connections expired per second over the last 10 seconds.
struct RecentExpiries {
    buckets: [u64; 10],
    second: u64,
    last_total: u64,
}

impl RecentExpiries {
    fn new() -> RecentExpiries {
        RecentExpiries {
            buckets: [0; 10],
            second: 0,
            last_total: 0,
        }
    }

    fn record(&mut self, now_ms: u64, total: u64) {
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

    fn sum(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_expiries_cover_ten_seconds() {
        let mut r = RecentExpiries::new();
        r.record(500, 3);
        r.record(5_000, 10);
        assert_eq!(r.sum(), 10);
        r.record(12_000, 10);
        assert_eq!(r.sum(), 7, "the first second's 3 fell out of the window");
        r.record(60_000, 11);
        assert_eq!(r.sum(), 1);
    }
}

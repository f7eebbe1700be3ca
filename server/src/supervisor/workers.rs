//! The worker processes: started as `ws-server --worker` with a control channel on fds 3 and 4,
//! watched, restarted when they die or hang, and stopped at the end.
//!
//! - **Writing** to a worker never blocks the supervisor: each worker has a writer thread fed
//!   through a queue bounded in bytes (`ControlWriter`). A worker that does not read fills it,
//!   and is then treated as hung.
//! - **Reading**: a thread per worker turns its lines into events; at end of file it waits (with
//!   `waitid(WNOWAIT)`, without reaping) until the process has exited, then reports it gone.
//!   Only the supervisor's loop reaps, so a pid it signals is always still its own child.
//! - **Liveness**: every running worker is pinged every second; one that has not answered for
//!   `--worker-hang-timeout` is killed (SIGKILL) and restarted like a dead one.
//! - **Restart**: on the same index, so on the same queue (xdp: the new worker binds an AF_XDP
//!   socket to it and replaces the XSKMAP entry) or as one more `SO_REUSEPORT` listener on the
//!   same port (kernel); the other workers and their connections are not touched.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::restart::Decision;
use super::{Event, Supervisor};
use crate::admin::{RestartReason, RestartRecord, RECENT_RESTARTS};
use crate::control::{FromWorker, ToWorker, WorkerConfig, FD_FROM_SUPERVISOR, FD_TO_SUPERVISOR, FD_XSKMAP};

/// How long workers may take to report ready (at start, and after a restart).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long workers may take to stop before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a running worker is pinged (at most; twice per hang timeout if that is shorter).
const PING_EVERY: Duration = Duration::from_secs(1);
/// Control bytes queued for one worker at most; past it the worker is treated as hung. A few
/// hundred 64 KiB broadcasts: a worker that reads its commands every few milliseconds never
/// comes near it.
const QUEUE_LIMIT: usize = 16 << 20;

/// One incarnation of a worker: its index and how many times that index was started before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct WorkerRef {
    pub index: usize,
    pub gen: u64,
}

/// A running worker process.
pub(super) struct WorkerProc {
    child: Child,
    pub(super) pid: u32,
    writer: ControlWriter,
    started: Instant,
}

#[derive(Debug)]
pub(super) enum SlotState {
    /// Started, not ready yet; killed as hung past `deadline`.
    Starting {
        deadline: Instant,
    },
    Running,
    /// Dead; started again at `restart_at`.
    Down {
        restart_at: Instant,
    },
}

/// A worker index: its process (if any) and what the supervisor knows of it.
pub(super) struct Slot {
    pub(super) gen: u64,
    pub(super) state: SlotState,
    pub(super) proc: Option<WorkerProc>,
    last_pong: Instant,
    next_ping: Instant,
    ping_seq: u64,
    /// Why the supervisor killed it (it hung), once it did.
    killed: Option<String>,
    /// The restart in progress: its number in `Supervisor::restarts`, and when the old one died.
    restarting: Option<(u64, Instant)>,
}

impl Slot {
    pub(super) fn new(proc: WorkerProc) -> Slot {
        let now = Instant::now();
        Slot {
            gen: 0,
            state: SlotState::Starting {
                deadline: now + START_TIMEOUT,
            },
            proc: Some(proc),
            last_pong: now,
            next_ping: now,
            ping_seq: 0,
            killed: None,
            restarting: None,
        }
    }

    pub(super) fn is_running(&self) -> bool {
        matches!(self.state, SlotState::Running)
    }
}

/// Why a control message did not go out.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SendError {
    /// The worker's queue is full: it does not read.
    Overflow,
    /// The worker is gone (its socket closed) or has no process now.
    Gone,
}

/// The writing end of a worker's control channel: a queue bounded in bytes, written out by a
/// thread of its own, so that a worker that does not read blocks nobody but that thread.
struct ControlWriter {
    shared: Arc<(Mutex<Outgoing>, Condvar)>,
    /// Bytes queued at most.
    limit: usize,
}

#[derive(Default)]
struct Outgoing {
    lines: VecDeque<Vec<u8>>,
    bytes: usize,
    /// No more lines: the supervisor let go of the worker, or a write failed.
    closed: bool,
}

impl ControlWriter {
    fn new(mut stream: UnixStream, index: usize, limit: usize) -> io::Result<ControlWriter> {
        let shared = Arc::new((Mutex::new(Outgoing::default()), Condvar::new()));
        let theirs = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("to-worker-{index}"))
            .spawn(move || {
                let (lock, ready) = &*theirs;
                loop {
                    let line = {
                        let Ok(mut out) = lock.lock() else { return };
                        loop {
                            if let Some(line) = out.lines.pop_front() {
                                out.bytes -= line.len();
                                break line;
                            }
                            if out.closed {
                                return;
                            }
                            out = match ready.wait(out) {
                                Ok(out) => out,
                                Err(_) => return,
                            };
                        }
                    };
                    if stream.write_all(&line).is_err() {
                        // The worker is gone; the reader thread reports it.
                        if let Ok(mut out) = lock.lock() {
                            out.closed = true;
                            out.lines.clear();
                            out.bytes = 0;
                        }
                        return;
                    }
                }
            })?;
        Ok(ControlWriter { shared, limit })
    }

    fn send(&self, line: Vec<u8>) -> Result<(), SendError> {
        let (lock, ready) = &*self.shared;
        let mut out = lock.lock().map_err(|_| SendError::Gone)?;
        if out.closed {
            return Err(SendError::Gone);
        }
        if out.bytes + line.len() > self.limit {
            return Err(SendError::Overflow);
        }
        out.bytes += line.len();
        out.lines.push_back(line);
        ready.notify_one();
        Ok(())
    }

    fn queued_bytes(&self) -> usize {
        self.shared.0.lock().map_or(0, |out| out.bytes)
    }
}

impl Drop for ControlWriter {
    /// The thread writes what is queued, then ends (closing the channel).
    fn drop(&mut self) {
        let (lock, ready) = &*self.shared;
        if let Ok(mut out) = lock.lock() {
            out.closed = true;
        }
        ready.notify_one();
    }
}

/// Start worker `who` with its settings; its messages and its end come to `events`.
pub(super) fn spawn_worker(
    exe: &std::path::Path,
    cfg: WorkerConfig,
    who: WorkerRef,
    events: mpsc::Sender<Event>,
    xsks_fd: Option<i32>,
) -> anyhow::Result<WorkerProc> {
    let (to_worker, worker_in) = UnixStream::pair()?;
    let (worker_out, from_worker) = UnixStream::pair()?;
    let (fd_in, fd_out) = (worker_in.as_raw_fd(), worker_out.as_raw_fd());
    let mut cmd = Command::new(exe);
    cmd.arg("--worker");
    // SAFETY: only async-signal-safe calls between fork and exec (fcntl, dup2, close, prctl).
    unsafe {
        cmd.pre_exec(move || {
            // Move the ends (and an xdp worker's XSKMAP) above any fd number we are about to
            // overwrite first, then onto 3, 4 (and 5): the XSKMAP's own number may be 3 or 4.
            let a = libc::fcntl(fd_in, libc::F_DUPFD, 10);
            let b = libc::fcntl(fd_out, libc::F_DUPFD, 10);
            let x = xsks_fd.map_or(-1, |x| libc::fcntl(x, libc::F_DUPFD, 10));
            if a < 0 || b < 0 || (xsks_fd.is_some() && x < 0) {
                return Err(io::Error::last_os_error());
            }
            if libc::dup2(a, FD_FROM_SUPERVISOR) < 0
                || libc::dup2(b, FD_TO_SUPERVISOR) < 0
                || (x >= 0 && libc::dup2(x, FD_XSKMAP) < 0)
            {
                return Err(io::Error::last_os_error());
            }
            libc::close(a);
            libc::close(b);
            if x >= 0 {
                libc::close(x);
            }
            // If the supervisor dies, its workers go too. (The signal follows the thread that
            // forked: workers are only ever started from the supervisor's main thread.)
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd.spawn().context("spawning the worker process")?;
    drop((worker_in, worker_out));
    let pid = child.id();
    let writer = ControlWriter::new(to_worker, who.index, QUEUE_LIMIT).context("starting a control writer thread")?;
    let mut line = serde_json::to_vec(&ToWorker::Config(Box::new(cfg)))?;
    line.push(b'\n');
    let _ = writer.send(line);
    std::thread::Builder::new()
        .name(format!("from-worker-{}", who.index))
        .spawn(move || read_worker(from_worker, who, pid, &events))
        .context("starting a control reader thread")?;
    Ok(WorkerProc {
        child,
        pid,
        writer,
        started: Instant::now(),
    })
}

/// A worker's messages become events; after its last one, wait for the process to exit (not
/// reaping it) and say it is gone.
fn read_worker(from_worker: UnixStream, who: WorkerRef, pid: u32, events: &mpsc::Sender<Event>) {
    let mut reader = BufReader::with_capacity(64 << 10, from_worker);
    let mut line = String::new();
    let mut batch = Vec::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        match serde_json::from_str(line.trim_end()) {
            Ok(msg) => batch.push(msg),
            Err(e) => log::error!("worker {}: unreadable control message: {e}", who.index),
        }
        // Everything this read brought, as one event (at most a thousand messages: under a
        // backlog reads rarely end on a line, and nothing should wait for the backlog's end).
        if (reader.buffer().is_empty() || batch.len() >= 1024)
            && !batch.is_empty()
            && events.send(Event::FromWorker(who, std::mem::take(&mut batch))).is_err()
        {
            return;
        }
    }
    if !batch.is_empty() {
        let _ = events.send(Event::FromWorker(who, batch));
    }
    wait_exited(pid);
    let _ = events.send(Event::WorkerGone(who));
}

/// Block until process `pid` (our child) has exited, leaving it to be reaped.
fn wait_exited(pid: u32) {
    loop {
        // SAFETY: siginfo_t is plain old data, for which all zeroes is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes only into `info`, which we own; WNOWAIT leaves the child
        // unreaped, so its pid stays ours until the supervisor's loop reaps it.
        let r = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// How a worker ended, as the log and `/stats` say it.
fn describe_exit(status: &ExitStatus) -> (RestartReason, String) {
    if let Some(sig) = status.signal() {
        let name = match sig {
            libc::SIGKILL => " (SIGKILL)",
            libc::SIGSEGV => " (SIGSEGV)",
            libc::SIGABRT => " (SIGABRT)",
            libc::SIGBUS => " (SIGBUS)",
            libc::SIGTERM => " (SIGTERM)",
            _ => "",
        };
        (RestartReason::Signal, format!("killed by signal {sig}{name}"))
    } else {
        let code = status.code().map_or("?".to_string(), |c| c.to_string());
        (RestartReason::Exited, format!("exited with status {code}"))
    }
}

impl Supervisor {
    /// Wait until every worker reported ready; a worker that fails to start stops the server
    /// (restarts are for workers that ran).
    pub(super) fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.slots.iter().all(Slot::is_running) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Event::FromWorker(w, msgs)) => {
                    for msg in msgs {
                        if let FromWorker::Failed { error } = msg {
                            bail!("worker {} failed to start: {error}", w.index)
                        }
                        self.worker_message(w, msg);
                    }
                }
                Ok(Event::WorkerGone(w)) => {
                    bail!("worker {} exited during start-up (see its log above)", w.index)
                }
                // Broadcasts from the other nodes reach starting workers too (their logs begin
                // where the cluster's numbering stood), and claims are not lost.
                Ok(Event::Cluster(event)) => self.cluster_event(event),
                Ok(_) => {}
                Err(_) => bail!("workers did not report ready within {} s", START_TIMEOUT.as_secs()),
            }
        }
        Ok(())
    }

    /// Send one command to worker `index`. A worker whose queue is full is killed as hung.
    pub(super) fn send(&mut self, index: usize, msg: &ToWorker) -> Result<(), SendError> {
        let mut line = match serde_json::to_vec(msg) {
            Ok(l) => l,
            Err(e) => {
                log::error!("cannot encode control message: {e}");
                return Err(SendError::Gone);
            }
        };
        line.push(b'\n');
        let Some(proc) = self.slots.get(index).and_then(|s| s.proc.as_ref()) else {
            return Err(SendError::Gone);
        };
        let sent = proc.writer.send(line);
        if sent == Err(SendError::Overflow) && !self.stopping {
            let queued = proc.writer.queued_bytes();
            self.kill_hung(index, format!("its control queue is full ({queued} bytes unread)"));
        }
        sent
    }

    /// A message from a worker: liveness, readiness, device claims, replies.
    pub(super) fn worker_message(&mut self, who: WorkerRef, msg: FromWorker) {
        let Some(slot) = self.slots.get_mut(who.index).filter(|s| s.gen == who.gen) else {
            return; // from an earlier incarnation of this index
        };
        match msg {
            FromWorker::Pong { .. } => slot.last_pong = Instant::now(),
            FromWorker::Ready { pid } => self.worker_ready(who.index, pid),
            FromWorker::Failed { error } => {
                log::error!("worker {} (restart) failed to start: {error}", who.index);
            }
            FromWorker::Claim { hash, at_ns, id } => {
                let evict = self.directory.claim(who.index, hash, at_ns);
                if let Some(evict) = evict {
                    let _ = self.send(evict.worker, &ToWorker::Evict { hash: evict.hash });
                }
                let lost_here = evict.is_some_and(|e| e.worker == who.index && e.hash == hash);
                // The other nodes close an older connection of the device (`cluster`), unless
                // this one lost already to a newer one on another worker.
                if let (Some(cluster), Some(id), false) = (&self.cluster, id, lost_here) {
                    let age = host::monotonic_ns().saturating_sub(at_ns);
                    cluster.claim(id, crate::core::message::unix_ns().saturating_sub(age));
                }
            }
            FromWorker::Release { hash } => self.directory.release(who.index, hash),
            FromWorker::Broadcast { req, .. } | FromWorker::Push { req, .. } | FromWorker::Stats { req, .. } => {
                if let Some(p) = self.pending.reply(req, who.index, msg) {
                    self.complete(p, false);
                }
            }
        }
    }

    fn worker_ready(&mut self, index: usize, pid: u32) {
        let now = Instant::now();
        let ping_every = self.ping_every();
        let slot = &mut self.slots[index];
        if !matches!(slot.state, SlotState::Starting { .. }) {
            return;
        }
        slot.state = SlotState::Running;
        slot.last_pong = now;
        slot.next_ping = now + ping_every;
        let Some((number, died_at)) = slot.restarting.take() else {
            return;
        };
        let restart_ms = now.duration_since(died_at).as_secs_f64() * 1000.0;
        if let Some((_, record)) = self.restarts.iter_mut().find(|(n, _)| *n == number) {
            record.new_pid = Some(pid);
            record.restart_ms = Some(restart_ms);
        }
        log::warn!("worker {index}: restarted as pid {pid}, serving {restart_ms:.0} ms after its predecessor died");
    }

    fn ping_every(&self) -> Duration {
        self.hang_timeout.map_or(PING_EVERY, |t| PING_EVERY.min(t / 2))
    }

    /// Kill worker `index` (our child, by its pid) as hung; its end is handled like any death.
    pub(super) fn kill_hung(&mut self, index: usize, why: String) {
        let Some(slot) = self.slots.get_mut(index) else { return };
        if slot.killed.is_some() {
            return;
        }
        let Some(proc) = slot.proc.as_mut() else { return };
        log::warn!("worker {index} (pid {}) is hung: {why}; killing it (SIGKILL)", proc.pid);
        // The child is not reaped until `worker_gone`, so the pid is still this process.
        if let Err(e) = proc.child.kill() {
            log::error!("worker {index} (pid {}): kill failed: {e}", proc.pid);
        }
        slot.killed = Some(why);
    }

    /// Pings, hang and start deadlines, due restarts. Called from the loop at least every 100 ms.
    pub(super) fn watch_workers(&mut self) -> anyhow::Result<()> {
        // While draining, a hung worker is still killed (never restarted): a drain must end.
        if self.stopping && !self.draining {
            return Ok(());
        }
        let now = Instant::now();
        let ping_every = self.ping_every();
        // Silence the loop's own delay caused does not count (`liveness.rs`).
        if let Some(late) = self.liveness.watch(now) {
            for slot in &mut self.slots {
                slot.last_pong = (slot.last_pong + late).min(now);
            }
        }
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            if slot.killed.is_some() {
                continue; // its death is on its way
            }
            match slot.state {
                SlotState::Running if self.hang_timeout.is_some() => {
                    if self.liveness.hung(slot.last_pong, now) {
                        let silent = now.saturating_duration_since(slot.last_pong);
                        self.kill_hung(index, format!("no answer to pings for {:.1} s", silent.as_secs_f64()));
                        // At most one per timeout period (`liveness.rs`).
                        self.liveness.killed(now);
                        continue;
                    }
                    if now >= slot.next_ping {
                        slot.next_ping = now + ping_every;
                        slot.ping_seq += 1;
                        let n = slot.ping_seq;
                        let _ = self.send(index, &ToWorker::Ping { n });
                    }
                }
                SlotState::Starting { deadline } if now >= deadline => {
                    self.kill_hung(
                        index,
                        format!("not ready within {} s of its start", START_TIMEOUT.as_secs()),
                    );
                }
                SlotState::Down { restart_at } if now >= restart_at && !self.stopping => self.restart(index)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Worker `who` has exited: reap it, say why, let go of what it held, and restart it (or, if
    /// it keeps dying, stop the server).
    pub(super) fn worker_gone(&mut self, who: WorkerRef) -> anyhow::Result<()> {
        let now = Instant::now();
        let Some(slot) = self.slots.get_mut(who.index).filter(|s| s.gen == who.gen) else {
            return Ok(());
        };
        let Some(mut proc) = slot.proc.take() else {
            return Ok(());
        };
        let index = who.index;
        let was = std::mem::replace(&mut slot.state, SlotState::Down { restart_at: now });
        let status = proc.child.wait();
        let lived = now.duration_since(proc.started);
        let (mut reason, mut how) = match &status {
            Ok(status) => describe_exit(status),
            Err(e) => (RestartReason::Exited, format!("ended (its status is unknown: {e})")),
        };
        if let Some(why) = slot.killed.take() {
            reason = RestartReason::Hung;
            how = format!("killed by the supervisor: {why}");
        }
        let pid = proc.pid;
        drop(proc); // its writer thread ends
        if self.stopping {
            // Not restarted, but nothing waits for it, and its devices are gone.
            self.directory.purge(index);
            for (_, p) in self.pending.worker_gone(index) {
                self.complete(p, false);
            }
            if self.draining {
                self.drain_share_changed();
            }
            return Ok(());
        }
        self.restart_counts.count(reason);
        self.restart_number += 1;
        let number = self.restart_number;
        self.restarts.push_back((
            number,
            RestartRecord {
                worker: index,
                pid,
                reason: Some(reason),
                status: how.clone(),
                at_uptime_s: self.started.elapsed().as_secs_f64(),
                new_pid: None,
                restart_ms: None,
            },
        ));
        while self.restarts.len() > RECENT_RESTARTS {
            self.restarts.pop_front();
        }
        let devices = self.directory.purge(index);
        let phase = if matches!(was, SlotState::Starting { .. }) {
            " while starting"
        } else {
            ""
        };
        log::warn!(
            "worker {index} (pid {pid}) {how}{phase} after {:.1} s [{}]; its {devices} devices leave the directory",
            lived.as_secs_f64(),
            reason.as_str()
        );
        for (_, p) in self.pending.worker_gone(index) {
            self.complete(p, false);
        }
        match self.policy.on_death(index, now) {
            Decision::GiveUp { deaths } => bail!(
                "worker {index} died {deaths} times within {} s (last: pid {pid} {how}); stopping the server (--max-restarts {})",
                self.policy.window().as_secs(),
                self.max_restarts
            ),
            Decision::Restart { after } => {
                let slot = &mut self.slots[index];
                slot.restarting = Some((number, now));
                slot.state = SlotState::Down { restart_at: now + after };
                if after.is_zero() {
                    self.restart(index)?;
                } else {
                    log::warn!("worker {index} keeps dying: restarting it in {} ms", after.as_millis());
                }
            }
        }
        Ok(())
    }

    /// Start worker `index` again, on the same index (queue, listener role). Broadcasts after
    /// this point reach it; a `since=` from before it is a gap there (its log starts empty).
    fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        let gen = self.slots[index].gen + 1;
        let who = WorkerRef { index, gen };
        let cfg = WorkerConfig {
            restarted: true,
            ..self.plan.worker(index, self.last_broadcast_seq)
        };
        match spawn_worker(&self.exe, cfg, who, self.events_tx.clone(), self.xsks_fd()) {
            Ok(proc) => {
                let now = Instant::now();
                log::info!("worker {index}: starting again as pid {}", proc.pid);
                let slot = &mut self.slots[index];
                slot.gen = gen;
                slot.proc = Some(proc);
                slot.killed = None;
                slot.state = SlotState::Starting {
                    deadline: now + START_TIMEOUT,
                };
                Ok(())
            }
            Err(e) => {
                log::error!("worker {index}: cannot start it again: {e:#}");
                let now = Instant::now();
                match self.policy.on_death(index, now) {
                    Decision::GiveUp { deaths } => {
                        bail!("worker {index} could not be restarted ({deaths} tries): {e:#}; stopping the server")
                    }
                    Decision::Restart { after } => {
                        // At least a moment: a fork that failed is not retried in a busy loop.
                        let after = after.max(Duration::from_millis(250));
                        self.slots[index].state = SlotState::Down {
                            restart_at: now + after,
                        };
                        Ok(())
                    }
                }
            }
        }
    }

    /// Ask every worker to stop (they close their connections with 1001), wait, kill the late.
    pub(super) fn stop_workers(&mut self) {
        self.stopping = true;
        for w in 0..self.slots.len() {
            let _ = self.send(w, &ToWorker::Shutdown);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for slot in &mut self.slots {
            let Some(proc) = slot.proc.as_mut() else { continue };
            loop {
                match proc.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        log::warn!("worker pid {} did not stop in time; killing it", proc.pid);
                        let _ = proc.child.kill();
                        let _ = proc.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            slot.proc = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_does_not_read_fills_its_queue_and_blocks_nobody() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let writer = ControlWriter::new(ours, 0, 1 << 20).unwrap();
        let started = Instant::now();
        let mut sent = 0usize;
        // `theirs` never reads: the socket buffer fills, the writer thread blocks in write, and
        // the queue fills; `send` itself returns at once every time.
        let overflow = loop {
            match writer.send(vec![b'x'; 64 * 1024]) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 10_000, "never full");
        };
        assert_eq!(overflow, SendError::Overflow);
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(writer.queued_bytes() > (1 << 20) - 64 * 1024);
        // The worker goes away: the blocked write fails, and the queue says so.
        drop(theirs);
        let gone = wait(|| writer.send(b"x\n".to_vec()) == Err(SendError::Gone));
        assert!(gone, "a closed channel is reported");
    }

    #[test]
    fn lines_go_out_whole_and_in_order() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let writer = ControlWriter::new(ours, 0, 1 << 20).unwrap();
        for n in 0..100 {
            writer.send(format!("line {n}\n").into_bytes()).unwrap();
        }
        drop(writer); // what is queued is still written, then the channel closes
        let lines: Vec<String> = BufReader::new(theirs).lines().map(Result::unwrap).collect();
        assert_eq!(lines.len(), 100);
        assert_eq!(lines[99], "line 99");
    }

    #[test]
    fn exits_are_told_apart() {
        let (reason, how) = describe_exit(&ExitStatus::from_raw(9));
        assert_eq!(
            (reason, how.as_str()),
            (RestartReason::Signal, "killed by signal 9 (SIGKILL)")
        );
        let (reason, how) = describe_exit(&ExitStatus::from_raw(101 << 8));
        assert_eq!(
            (reason, how.as_str()),
            (RestartReason::Exited, "exited with status 101")
        );
    }

    fn wait(mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

//! The worker processes: started as `ws-server --worker` with a control channel on fds 3 and 4,
//! read by a thread each, waited for at start, and stopped at the end.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::{Event, Supervisor};
use crate::control::{FromWorker, ToWorker, WorkerConfig, FD_FROM_SUPERVISOR, FD_TO_SUPERVISOR};

/// How long workers may take to report ready.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long workers may take to stop before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct WorkerHandle {
    child: Child,
    to: UnixStream,
    pub(super) pid: u32,
}

impl WorkerHandle {
    /// The worker's exit status, if it has exited.
    pub(super) fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

pub(super) fn spawn_worker(
    exe: &std::path::Path,
    cfg: WorkerConfig,
    events: mpsc::Sender<Event>,
) -> anyhow::Result<WorkerHandle> {
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
            if a < 0 || b < 0 || libc::dup2(a, FD_FROM_SUPERVISOR) < 0 || libc::dup2(b, FD_TO_SUPERVISOR) < 0 {
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
    pub(super) fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
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
                Err(_) => bail!("workers did not report ready within {} s", START_TIMEOUT.as_secs()),
            }
        }
        Ok(())
    }

    pub(super) fn send(&mut self, worker: usize, msg: &ToWorker) {
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

    pub(super) fn stop_workers(&mut self) {
        self.stopping = true;
        for w in 0..self.workers.len() {
            self.send(w, &ToWorker::Shutdown);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
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

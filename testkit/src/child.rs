//! Child processes that are always stopped, and the workspace's other binaries.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A binary next to the running one (the workspace builds all of them into one target dir).
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dirs: Vec<&Path> = exe.ancestors().skip(1).take(2).collect();
    dirs.dedup();
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "cannot find the {name} binary next to {}; build the workspace first (cargo build --workspace)",
        exe.display()
    )
}

/// Lines of a child's log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// A child process stopped (SIGTERM, then SIGKILL after a grace period) when dropped.
pub struct ChildGuard {
    pub child: Option<Child>,
    pub name: String,
    /// Where its output goes: its last lines are printed when a test fails while it runs (CI
    /// keeps the test's output, not the scratch files).
    pub log: Option<PathBuf>,
}

impl ChildGuard {
    pub fn spawn(name: &str, mut cmd: Command) -> anyhow::Result<ChildGuard> {
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(ChildGuard {
            child: Some(child),
            name: name.to_string(),
            log: None,
        })
    }

    /// Print the last lines of `log` if a test fails while this child is alive.
    pub fn with_log(mut self, log: &Path) -> ChildGuard {
        self.log = Some(log.to_path_buf());
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Wait for it to exit by itself, at most `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                _ => return None,
            }
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status if it exited.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // SAFETY: kill on the pid of a child we started and have not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        if let Some(status) = self.wait_timeout(grace) {
            return Some(status);
        }
        let child = self.child.as_mut()?;
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.running() {
            self.stop(Duration::from_secs(5));
        }
        if let Some(log) = self.log.as_ref().filter(|_| std::thread::panicking()) {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!(
                "--- the last {} lines of {} ({}) ---",
                tail.len(),
                self.name,
                log.display()
            );
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

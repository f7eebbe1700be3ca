//! Plumbing shared by the benchmark and the privileged tests: namespaces made by
//! `netns-scripts/setup.sh` and always removed (guard), child processes that are always stopped
//! (guard), and HTTP to the admin endpoint from inside a namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The repository root: `WSB_ROOT`, or the first ancestor of the executable (or of the current
/// directory) that holds `netns-scripts/setup.sh`.
pub fn repo_root() -> anyhow::Result<PathBuf> {
    if let Ok(root) = std::env::var("WSB_ROOT") {
        return Ok(PathBuf::from(root));
    }
    let starts = [std::env::current_exe().ok(), std::env::current_dir().ok()];
    for start in starts.into_iter().flatten() {
        for dir in start.ancestors() {
            if dir.join("netns-scripts/setup.sh").is_file() {
                return Ok(dir.to_path_buf());
            }
        }
    }
    bail!("cannot find netns-scripts/setup.sh above the executable or the current directory; set WSB_ROOT")
}

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

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A server namespace and a client namespace joined by veth; removed when dropped.
pub struct Netns {
    pub prefix: String,
    pub srv: String,
    pub cli: String,
    root: PathBuf,
}

impl Netns {
    /// Make `<prefix>-srv` and `<prefix>-cli` with `clients` client addresses.
    pub fn setup(prefix: &str, clients: usize) -> anyhow::Result<Netns> {
        Netns::setup_with_queues(prefix, clients, 1)
    }

    /// As `setup`, with `queues` receive and transmit queues on both veth ends.
    pub fn setup_with_queues(prefix: &str, clients: usize, queues: u32) -> anyhow::Result<Netns> {
        let root = repo_root()?;
        let netns = Netns {
            prefix: prefix.to_string(),
            srv: format!("{prefix}-srv"),
            cli: format!("{prefix}-cli"),
            root,
        };
        let out = Command::new("bash")
            .arg(netns.root.join("netns-scripts/setup.sh"))
            .args(["--prefix", prefix, "--clients", &clients.to_string()])
            .args(["--queues", &queues.to_string()])
            .stdin(Stdio::null())
            .output()
            .context("running netns-scripts/setup.sh")?;
        if !out.status.success() {
            bail!(
                "netns-scripts/setup.sh failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(netns)
    }

    /// `ip netns exec <ns> <program> <args…>`.
    pub fn command(&self, ns: &str, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let status = Command::new("bash")
            .arg(self.root.join("netns-scripts/teardown.sh"))
            .args(["--prefix", &self.prefix])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "warning: teardown of namespaces {}-* failed; run netns-scripts/teardown.sh --prefix {}",
                self.prefix, self.prefix
            );
        }
    }
}

/// A child process stopped (SIGTERM, then SIGKILL after a grace period) when dropped.
pub struct ChildGuard {
    pub child: Option<Child>,
    pub name: String,
}

impl ChildGuard {
    pub fn spawn(name: &str, mut cmd: Command) -> anyhow::Result<ChildGuard> {
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(ChildGuard {
            child: Some(child),
            name: name.to_string(),
        })
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
    }
}

/// An HTTP/1.1 request from inside network namespace `netns` (a thread joins it with setns, so
/// nothing outside the process is needed). Returns the status and the body.
pub fn http_in_netns(
    netns: &str,
    method: &str,
    addr: SocketAddr,
    path: &str,
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let (netns, method, path, body) = (netns.to_string(), method.to_string(), path.to_string(), body.to_vec());
    std::thread::spawn(move || -> anyhow::Result<(u16, String)> {
        let ns = std::fs::File::open(format!("/var/run/netns/{netns}"))
            .with_context(|| format!("opening namespace {netns}"))?;
        // SAFETY: setns on an fd we own; it moves only this short-lived thread into the namespace.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns");
        }
        http(method.as_str(), addr, &path, &body)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("admin request thread panicked"))?
}

/// A plain HTTP/1.1 request in this thread's namespace.
pub fn http(method: &str, addr: SocketAddr, path: &str, body: &[u8]) -> anyhow::Result<(u16, String)> {
    let timeout = Duration::from_secs(60);
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("HTTP response without a head")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("HTTP response without a status")?;
    Ok((status, body.to_string()))
}

/// Poll `check` every `every` until it returns `Some`, at most `timeout`.
pub fn wait_for<T>(timeout: Duration, every: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

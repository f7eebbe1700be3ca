//! Network namespaces for tests and benchmarks: a server host and a client host joined by veth,
//! made by `netns-scripts/setup.sh` and removed by `teardown.sh` when the guard drops.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::repo_root;

/// A server namespace and a client namespace joined by veth; removed when dropped.
pub struct Netns {
    pub prefix: String,
    pub srv: String,
    pub cli: String,
    root: PathBuf,
    /// Held while the namespaces exist: another run wanting the same prefix waits for it.
    _lock: std::fs::File,
}

impl Netns {
    /// Make `<prefix>-srv` and `<prefix>-cli` with `clients` client addresses.
    pub fn setup(prefix: &str, clients: usize) -> anyhow::Result<Netns> {
        Netns::setup_with_queues(prefix, clients, 1)
    }

    /// As `setup`, with `queues` receive and transmit queues on both veth ends.
    pub fn setup_with_queues(prefix: &str, clients: usize, queues: u32) -> anyhow::Result<Netns> {
        let root = repo_root()?;
        let lock = lock_prefix(prefix)?;
        let netns = Netns {
            prefix: prefix.to_string(),
            srv: format!("{prefix}-srv"),
            cli: format!("{prefix}-cli"),
            root,
            _lock: lock,
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

    /// The server's veth end (in `srv`).
    pub fn dev(&self) -> String {
        format!("{}-s0", self.prefix)
    }

    /// The client's veth end (in `cli`).
    pub fn client_dev(&self) -> String {
        format!("{}-c0", self.prefix)
    }

    /// `ip netns exec <ns> <program> <args…>`.
    pub fn command(&self, ns: &str, program: &Path) -> Command {
        exec_in(ns, program)
    }
}

/// `ip netns exec <ns> <program>`: add the arguments.
pub fn exec_in(ns: &str, program: &Path) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
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

/// An exclusive lock on the namespace names of `prefix`, across processes: two test runs (two
/// checkouts, or a test and a benchmark) that use the same prefix take turns instead of tearing
/// down each other's namespaces. Released when the file is dropped, or when the process dies.
pub(crate) fn lock_prefix(prefix: &str) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let dir = std::path::Path::new("/run/lock");
    let dir = if dir.is_dir() {
        dir.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("wsb-netns-{prefix}.lock"));
    use std::os::unix::fs::OpenOptionsExt;
    // /run/lock is writable by everyone: never follow a link planted there, never truncate.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor we own; it blocks until the lock is ours.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("locking {}", path.display()));
    }
    Ok(file)
}

/// Run `f` on a new thread inside network namespace `ns` and wait for it.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_ns(ns, f).join().expect("thread in namespace panicked")
}

/// Start `f` on a new thread inside network namespace `ns`.
pub fn spawn_in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        if let Err(e) = host::netns::enter(&ns) {
            panic!("entering network namespace {ns}: {e}");
        }
        f()
    })
}

//! Support for privileged tests (here and in the `stack` crate): the skip-or-fail rule for root,
//! namespaces made by `netns-scripts/setup.sh` and removed on drop, and running code inside one.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Whether privileged tests can run. Without root they skip, saying why on stderr — unless
/// `WSB_REQUIRE_PRIVILEGED=1` (CI), which turns the skip into a failure.
pub fn privileged(test: &str) -> bool {
    if crate::is_root() {
        return true;
    }
    let why = "needs root (network namespaces, XDP, AF_XDP)";
    if std::env::var("WSB_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{test}: {why}, and WSB_REQUIRE_PRIVILEGED=1 forbids skipping");
    }
    // Straight to stderr: libtest captures eprintln! of passing tests, and a skip must be seen.
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
    false
}

/// The repository root (this crate lives one level below it).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Namespaces `<prefix>-srv` / `<prefix>-cli` joined by the veth `<prefix>-s0` / `<prefix>-c0`,
/// removed on drop (also when a test fails).
pub struct Testbed {
    pub prefix: String,
}

impl Testbed {
    /// Set up with `clients` client addresses and `queues` queues; panics with setup's stderr.
    pub fn new(prefix: &str, clients: usize, queues: u32) -> Testbed {
        let out = Command::new("bash")
            .arg(repo_root().join("netns-scripts/setup.sh"))
            .args([
                "--prefix",
                prefix,
                "--clients",
                &clients.to_string(),
                "--queues",
                &queues.to_string(),
            ])
            .stdin(Stdio::null())
            .output()
            .expect("running netns-scripts/setup.sh");
        assert!(out.status.success(), "setup: {}", String::from_utf8_lossy(&out.stderr));
        Testbed {
            prefix: prefix.to_string(),
        }
    }
    pub fn srv(&self) -> String {
        format!("{}-srv", self.prefix)
    }
    pub fn cli(&self) -> String {
        format!("{}-cli", self.prefix)
    }
    /// The server's veth end.
    pub fn dev(&self) -> String {
        format!("{}-s0", self.prefix)
    }
    /// The client's veth end.
    pub fn client_dev(&self) -> String {
        format!("{}-c0", self.prefix)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("netns-scripts/teardown.sh"))
            .args(["--prefix", &self.prefix, "--quiet"])
            .status();
    }
}

/// Run `f` on a new thread inside network namespace `ns` and wait for it.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_ns(ns, f).join().expect("thread in namespace panicked")
}

/// Start `f` on a new thread inside network namespace `ns`.
pub fn spawn_in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        if let Err(e) = crate::netns::enter(&ns) {
            panic!("entering network namespace {ns}: {e}");
        }
        f()
    })
}

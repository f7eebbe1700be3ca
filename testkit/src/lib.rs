//! What the tests and the benchmarks need around the product, in one place (it was three copies):
//!
//! - [`privileged`]: the skip-or-fail rule for tests that need root.
//! - [`netns`]: a server and a client network namespace joined by veth (`netns-scripts/`),
//!   always removed; running code inside one.
//! - [`cluster`]: the hosts of a cluster (`netns-scripts/cluster.sh`): nodes, a client, a broker.
//! - [`child`]: child processes that are always stopped, and finding our other binaries.
//! - [`http`]: plain HTTP/1.1 to an admin endpoint, from inside a namespace if need be.
//! - [`fuzz`]: the proptest configuration of the property tests of wire parsers.
//!
//! Tests of every crate use it as a dev-dependency; the testbed's own tools (`ws-bench`,
//! `xdp-flood`) use it too. The server, the stack and the steering loader never do.

pub mod child;
pub mod cluster;
pub mod fuzz;
pub mod http;
pub mod netns;

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;

pub use child::{sibling_binary, ChildGuard};
pub use netns::{in_ns, spawn_in_ns, Netns};

/// Whether privileged tests can run (we are root). Without root they skip, saying why on stderr,
/// unless `WSB_REQUIRE_PRIVILEGED=1` (CI), which turns the skip into a failure.
pub fn privileged(test: &str) -> bool {
    if host::is_root() {
        return true;
    }
    let why = "needs root (network namespaces, veth, XDP, AF_XDP, /proc/slabinfo)";
    if std::env::var("WSB_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{test}: {why}, and WSB_REQUIRE_PRIVILEGED=1 forbids skipping");
    }
    // Straight to stderr: libtest captures eprintln! of passing tests, and a skip must be seen.
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
    false
}

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

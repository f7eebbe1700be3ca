//! Memory and CPU measurement of the server under test, read from `/proc`.
//!
//! The headline figure is **bytes per connection**, all-in and broken down:
//!
//! ```text
//! bytes/conn = ( Δ server RSS                         (smaps_rollup, summed over the server's pids)
//!              + share × Σ Δ socket slab caches       (/proc/slabinfo, active objs × objsize)
//!              + share × Δ sockstat TCP mem × page    (/proc/net/sockstat, socket buffer pages)
//!              ) / N
//! ```
//!
//! `share` is the server's fraction of the TCP sockets created during the run
//! (Δ`inuse` of the server's network namespace over the sum of both
//! namespaces), because the load generator may run on the same kernel and its
//! sockets land in the same global slab caches. memcg accounting is
//! deliberately not used: it under-counts the accepted socket.
//!
//! Submodules, one per idea:
//! * [`proc`]: per-process figures (smaps_rollup, process tree, CPU times) and `/proc/stat`.
//! * [`sys`]: system-wide text files (`sockstat`, `meminfo`).
//! * [`slab`]: `/proc/slabinfo` snapshots, deltas and the list of socket caches.
//! * [`report`]: the attribution, [`bytes_per_conn`].
//! * [`render`]: the report as an aligned text table, [`render_table`].
//! * [`snapshot`]: [`Snapshot::take`], everything read at once (before / after).

use std::io;
use std::path::{Path, PathBuf};

pub mod proc;
pub mod render;
pub mod report;
pub mod slab;
pub mod snapshot;
pub mod sys;

pub use proc::{cpu_seconds, cpu_seconds_sum, process_tree, CpuTimes, ProcMem, SystemCpu, SystemCpuDelta};
pub use render::render_table;
pub use report::{bytes_per_conn, BreakdownRow, MemInput, MemReport};
pub use slab::{CacheDelta, SlabCache, SlabDelta, SlabInfo, OTHER_SLAB_PREFIX, SOCKET_CACHES};
pub use snapshot::Snapshot;
pub use sys::{MemInfo, SockStat};

/// Errors from reading or parsing `/proc` files.
///
/// Odd lines inside a readable file are skipped rather than reported; `Parse`
/// is only used when a file lacks what we cannot do without (e.g. no `TCP:`
/// line in sockstat), so a wrong figure is never silently produced.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// The file could not be read (missing, or e.g. `/proc/slabinfo` without root).
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file was read but a required value is missing or malformed.
    /// `line` is 1-based; 0 means "the file as a whole".
    #[error("cannot parse {} (line {line}): {what}", path.display())]
    Parse { path: PathBuf, line: usize, what: String },
}

impl MeasureError {
    /// True if the error says the process (or its `/proc` entry) is gone:
    /// such pids are skipped when summing over a process set.
    pub fn is_vanished(&self) -> bool {
        match self {
            MeasureError::Io { source, .. } => {
                source.kind() == io::ErrorKind::NotFound || source.raw_os_error() == Some(libc::ESRCH)
            }
            MeasureError::Parse { .. } => false,
        }
    }

    pub(crate) fn parse(path: &Path, line: usize, what: impl Into<String>) -> Self {
        MeasureError::Parse {
            path: path.to_path_buf(),
            line,
            what: what.into(),
        }
    }
}

/// Result alias for this module.
pub type Result<T, E = MeasureError> = std::result::Result<T, E>;

/// Reads a whole `/proc` file, mapping the error to [`MeasureError::Io`] with the path.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| MeasureError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Kernel page size in bytes (sockstat `mem` and slab sizes are in pages).
/// Falls back to 4096 if sysconf fails, which it does not on Linux.
pub fn page_size() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 {
        v as u64
    } else {
        4096
    }
}

/// Parses a `Key:   123 kB` line (smaps_rollup, meminfo) into `(key, bytes)`.
/// Values without a unit are returned as-is (e.g. `HugePages_Total`).
/// Returns `None` for lines of any other shape so callers can skip them.
pub(crate) fn parse_kb_line(line: &str) -> Option<(&str, u64)> {
    let (key, rest) = line.split_once(':')?;
    let mut it = rest.split_whitespace();
    let value: u64 = it.next()?.parse().ok()?;
    match it.next() {
        None => Some((key.trim(), value)),
        Some("kB") => Some((key.trim(), value.checked_mul(1024)?)),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kb_lines() {
        assert_eq!(parse_kb_line("Rss:   1752 kB"), Some(("Rss", 1752 * 1024)));
        assert_eq!(parse_kb_line("HugePages_Total:       0"), Some(("HugePages_Total", 0)));
        assert_eq!(
            parse_kb_line("55d1049ca000-7ffea978a000 ---p 00000000 00:00 0 [rollup]"),
            None
        );
        assert_eq!(parse_kb_line("Rss: lots kB"), None);
        assert_eq!(parse_kb_line("Rss: 1 MB"), None);
    }

    #[test]
    fn vanished_detection() {
        let e = read_text(Path::new("/proc/does-not-exist/smaps_rollup")).unwrap_err();
        assert!(e.is_vanished());
        assert!(e.to_string().contains("/proc/does-not-exist/smaps_rollup"));
        assert!(!MeasureError::parse(Path::new("/x"), 1, "bad").is_vanished());
    }

    #[test]
    fn page_size_is_sane() {
        let p = page_size();
        assert!(p >= 4096 && p.is_power_of_two());
    }
}

//! System-wide text files: `/proc/net/sockstat` (per network namespace) and
//! `/proc/meminfo`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{parse_kb_line, read_text, MeasureError, Result};

/// A `sockstat` snapshot.
///
/// `/proc/<pid>/net/sockstat` shows the network namespace of `<pid>`:
/// `tcp_inuse`, `tcp_orphan`, `tcp_tw`, `tcp_alloc` and `sockets_used` are
/// per namespace, but `tcp_mem_pages` is the protocol-wide (global) count of
/// pages charged to TCP socket buffers, the same in every namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SockStat {
    /// `sockets: used N` (0 if the line is absent).
    pub sockets_used: u64,
    pub tcp_inuse: u64,
    pub tcp_orphan: u64,
    pub tcp_tw: u64,
    pub tcp_alloc: u64,
    /// Pages (not bytes) of socket buffer memory, global across namespaces.
    pub tcp_mem_pages: u64,
}

impl SockStat {
    /// Reads a sockstat file at `path` (e.g. `/proc/1234/net/sockstat`).
    pub fn read_from(path: &Path) -> Result<SockStat> {
        SockStat::parse(&read_text(path)?, path)
    }

    /// `/proc/net/sockstat`: the namespace of the calling process.
    pub fn read_own() -> Result<SockStat> {
        SockStat::read_from(Path::new("/proc/net/sockstat"))
    }

    /// The sockstat of the network namespace `pid` lives in.
    pub fn read_netns_of(pid: u32) -> Result<SockStat> {
        SockStat::read_from(&PathBuf::from(format!("/proc/{pid}/net/sockstat")))
    }

    /// Parses `TCP: inuse N orphan N tw N alloc N mem N` and `sockets: used N`.
    /// The TCP line with `inuse` and `mem` is required: without it every
    /// figure built on it would be silently wrong.
    pub fn parse(text: &str, path: &Path) -> Result<SockStat> {
        let mut s = SockStat::default();
        let mut seen_inuse = false;
        let mut seen_mem = false;
        for line in text.lines() {
            let Some((proto, rest)) = line.split_once(':') else {
                continue;
            };
            let toks: Vec<&str> = rest.split_whitespace().collect();
            // The rest is "key value key value ..."; odd pairs are skipped.
            let pairs = toks
                .chunks_exact(2)
                .filter_map(|kv| Some((kv[0], kv[1].parse::<u64>().ok()?)));
            match proto.trim() {
                "sockets" => {
                    for (k, v) in pairs {
                        if k == "used" {
                            s.sockets_used = v;
                        }
                    }
                }
                "TCP" => {
                    for (k, v) in pairs {
                        match k {
                            "inuse" => {
                                s.tcp_inuse = v;
                                seen_inuse = true;
                            }
                            "orphan" => s.tcp_orphan = v,
                            "tw" => s.tcp_tw = v,
                            "alloc" => s.tcp_alloc = v,
                            "mem" => {
                                s.tcp_mem_pages = v;
                                seen_mem = true;
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if !(seen_inuse && seen_mem) {
            return Err(MeasureError::parse(path, 0, "no 'TCP: inuse N ... mem N' line"));
        }
        Ok(s)
    }
}

/// The `/proc/meminfo` fields used for the system-wide cross-check, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemInfo {
    pub mem_total: u64,
    pub mem_available: u64,
    pub slab: u64,
    pub s_reclaimable: u64,
    pub s_unreclaim: u64,
    pub kernel_stack: u64,
    pub page_tables: u64,
    pub anon_pages: u64,
}

impl MemInfo {
    pub fn read() -> Result<MemInfo> {
        let path = Path::new("/proc/meminfo");
        MemInfo::parse(&read_text(path)?, path)
    }

    /// MemTotal and MemAvailable are required (the cross-check is built on
    /// them); the other fields are 0 if absent.
    pub fn parse(text: &str, path: &Path) -> Result<MemInfo> {
        let mut m = MemInfo::default();
        let (mut total, mut avail) = (false, false);
        for (key, bytes) in text.lines().filter_map(parse_kb_line) {
            match key {
                "MemTotal" => {
                    m.mem_total = bytes;
                    total = true;
                }
                "MemAvailable" => {
                    m.mem_available = bytes;
                    avail = true;
                }
                "Slab" => m.slab = bytes,
                "SReclaimable" => m.s_reclaimable = bytes,
                "SUnreclaim" => m.s_unreclaim = bytes,
                "KernelStack" => m.kernel_stack = bytes,
                "PageTables" => m.page_tables = bytes,
                "AnonPages" => m.anon_pages = bytes,
                _ => {}
            }
        }
        if !(total && avail) {
            return Err(MeasureError::parse(path, 0, "MemTotal or MemAvailable missing"));
        }
        Ok(m)
    }

    /// Memory in use by everything on the machine: MemTotal − MemAvailable.
    pub fn used(&self) -> u64 {
        self.mem_total.saturating_sub(self.mem_available)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCKSTAT: &str = "\
sockets: used 2011
TCP: inuse 2003 orphan 1 tw 7 alloc 2005 mem 4321
UDP: inuse 0 mem 0
UDPLITE: inuse 0
RAW: inuse 0
FRAG: inuse 0 memory 0
";

    const MEMINFO: &str = "\
MemTotal:       24684084 kB
MemFree:        23529760 kB
MemAvailable:   24333900 kB
Buffers:            6652 kB
AnonPages:         33952 kB
Slab:              57464 kB
SReclaimable:      35880 kB
SUnreclaim:        21584 kB
KernelStack:        3456 kB
PageTables:         1234 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
";

    #[test]
    fn parses_sockstat() {
        let s = SockStat::parse(SOCKSTAT, Path::new("/proc/net/sockstat")).unwrap();
        assert_eq!(
            s,
            SockStat {
                sockets_used: 2011,
                tcp_inuse: 2003,
                tcp_orphan: 1,
                tcp_tw: 7,
                tcp_alloc: 2005,
                tcp_mem_pages: 4321,
            }
        );
        let e = SockStat::parse("sockets: used 3\nUDP: inuse 0 mem 0\n", Path::new("/x")).unwrap_err();
        assert!(matches!(e, MeasureError::Parse { .. }), "{e}");
    }

    #[test]
    fn parses_meminfo() {
        let m = MemInfo::parse(MEMINFO, Path::new("/proc/meminfo")).unwrap();
        assert_eq!(m.mem_total, 24_684_084 * 1024);
        assert_eq!(m.mem_available, 24_333_900 * 1024);
        assert_eq!(m.slab, 57_464 * 1024);
        assert_eq!(m.s_reclaimable, 35_880 * 1024);
        assert_eq!(m.s_unreclaim, 21_584 * 1024);
        assert_eq!(m.kernel_stack, 3456 * 1024);
        assert_eq!(m.page_tables, 1234 * 1024);
        assert_eq!(m.anon_pages, 33_952 * 1024);
        assert_eq!(m.used(), (24_684_084 - 24_333_900) * 1024);
        assert!(MemInfo::parse("MemTotal: 5 kB\n", Path::new("/x")).is_err());
    }

    #[test]
    fn live_sockstat_and_meminfo() {
        let own = SockStat::read_own().unwrap();
        let via_pid = SockStat::read_netns_of(std::process::id()).unwrap();
        // mem is global, so both views agree up to concurrent activity.
        assert!(own.tcp_mem_pages.abs_diff(via_pid.tcp_mem_pages) < 1 << 20);
        let m = MemInfo::read().unwrap();
        assert!(m.mem_total > 64 << 20, "MemTotal {}", m.mem_total);
        assert!(m.mem_available <= m.mem_total);
        assert!(m.slab > 0 && m.slab >= m.s_unreclaim);
    }
}

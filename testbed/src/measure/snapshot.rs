//! Everything read at once, so the harness takes one snapshot before the
//! connections are opened and one while they are held.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::proc::{cpu_seconds_sum, CpuTimes, ProcMem, SystemCpu};
use super::report::MemInput;
use super::slab::SlabInfo;
use super::sys::{MemInfo, SockStat};
use super::{page_size, Result};

/// One reading of all the figures [`bytes_per_conn`](super::bytes_per_conn) needs, plus CPU.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// Seconds since the Unix epoch when the snapshot started.
    pub unix_time: f64,
    /// The server pids that were asked for (resolve them with
    /// [`process_tree`](super::process_tree) before each snapshot).
    pub server_pids: Vec<u32>,
    pub server_mem: ProcMem,
    pub server_cpu: CpuTimes,
    pub system_cpu: SystemCpu,
    pub slab: SlabInfo,
    pub meminfo: MemInfo,
    /// `/proc/net/sockstat` as seen by this process (for the global `mem`).
    pub sockstat_global: SockStat,
    /// `/proc/<server_netns_pid>/net/sockstat`.
    pub sockstat_server: SockStat,
    /// `/proc/<client_netns_pid>/net/sockstat`, if a client pid was given.
    pub sockstat_client: Option<SockStat>,
    /// Network namespace ids (`net:[4026531840]`) to detect a shared namespace.
    pub server_netns: Option<String>,
    pub client_netns: Option<String>,
    pub page_size: u64,
}

/// `readlink /proc/<pid>/ns/net`; None if not readable (not fatal: only used
/// to notice that server and client share a namespace).
fn netns_id(pid: u32) -> Option<String> {
    std::fs::read_link(PathBuf::from(format!("/proc/{pid}/ns/net")))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

impl Snapshot {
    /// Reads slabinfo, meminfo, sockstat (own namespace, the server's and
    /// optionally the client's, via `/proc/<pid>/net/sockstat`) and the
    /// server processes' memory and CPU. Needs root for `/proc/slabinfo`.
    ///
    /// `client_netns_pid` is any process inside the load generator's
    /// namespace; pass None when it holds no kernel sockets.
    pub fn take(server_pids: &[u32], server_netns_pid: u32, client_netns_pid: Option<u32>) -> Result<Snapshot> {
        let unix_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        // Socket figures first and slab right after, so the kernel-side
        // readings are as close together in time as possible.
        let sockstat_server = SockStat::read_netns_of(server_netns_pid)?;
        let sockstat_client = client_netns_pid.map(SockStat::read_netns_of).transpose()?;
        let sockstat_global = SockStat::read_own()?;
        let slab = SlabInfo::read()?;
        let meminfo = MemInfo::read()?;
        let server_mem = ProcMem::read(server_pids)?;
        let server_cpu = cpu_seconds_sum(server_pids)?;
        let system_cpu = SystemCpu::read()?;
        Ok(Snapshot {
            unix_time,
            server_pids: server_pids.to_vec(),
            server_mem,
            server_cpu,
            system_cpu,
            slab,
            meminfo,
            sockstat_global,
            sockstat_server,
            sockstat_client,
            server_netns: netns_id(server_netns_pid),
            client_netns: client_netns_pid.and_then(netns_id),
            page_size: page_size(),
        })
    }
}

impl MemInput {
    /// Pairs two snapshots for [`bytes_per_conn`](super::bytes_per_conn).
    /// `n` is the number of connections held at `after`.
    pub fn from_snapshots(n: u64, before: &Snapshot, after: &Snapshot, client_kernel_sockets: bool) -> MemInput {
        let same_netns = match (&after.server_netns, &after.client_netns) {
            (Some(s), Some(c)) => s == c,
            _ => false,
        };
        MemInput {
            n,
            server_mem_before: before.server_mem.clone(),
            server_mem_after: after.server_mem.clone(),
            slab_before: before.slab.clone(),
            slab_after: after.slab.clone(),
            sockstat_server_before: before.sockstat_server,
            sockstat_server_after: after.sockstat_server,
            sockstat_client_before: before.sockstat_client,
            sockstat_client_after: after.sockstat_client,
            // mem is global: any namespace's view is the same counter.
            sockmem_pages_before: before.sockstat_global.tcp_mem_pages,
            sockmem_pages_after: after.sockstat_global.tcp_mem_pages,
            meminfo_before: before.meminfo,
            meminfo_after: after.meminfo,
            client_kernel_sockets,
            same_netns,
            page_size: after.page_size,
            server_sockets_per_conn: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::{bytes_per_conn, render_table};

    /// Live end to end on this machine: open real loopback connections
    /// between two snapshots and check the report is plausible.
    #[test]
    fn live_snapshot_and_report() {
        if !testkit::privileged("live_snapshot_and_report") {
            return;
        }
        let me = std::process::id();
        let before = Snapshot::take(&[me], me, Some(me)).unwrap();
        assert!(before.server_mem.rss > 0);
        assert!(before.slab.caches.len() > 20);
        assert_eq!(before.server_netns, before.client_netns);

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let n = 200;
        let mut held = Vec::new();
        for _ in 0..n {
            let c = std::net::TcpStream::connect(addr).unwrap();
            let (s, _) = listener.accept().unwrap();
            held.push((c, s));
        }
        let after = Snapshot::take(&[me], me, Some(me)).unwrap();
        let input = MemInput::from_snapshots(n, &before, &after, true);
        assert!(input.same_netns);
        let r = bytes_per_conn(&input);
        println!("{}", render_table(&r));
        drop(held);

        assert_eq!(r.server_share, 0.5);
        // Other tests run in parallel and open sockets too, so only loose bounds.
        if let Some(tcp) = r.breakdown.iter().find(|b| b.name == "kernel slab: TCP") {
            let objs = tcp.objects_per_conn.unwrap();
            assert!((0.5..=3.0).contains(&objs), "TCP objects per conn {objs}");
        }
        assert!(
            r.all_in_bytes_per_conn > 1000.0 && r.all_in_bytes_per_conn < 1e7,
            "{r:?}"
        );
        let json = serde_json::to_string(&after).unwrap();
        let back: Snapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back.slab, after.slab);
    }
}

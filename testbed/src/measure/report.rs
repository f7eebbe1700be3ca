//! Attribution of memory to connections: [`bytes_per_conn`].
//!
//! Pure functions over before/after readings, so they are tested with
//! made-up numbers and the harness can recompute from saved JSON.

use serde::{Deserialize, Serialize};

use super::proc::ProcMem;
use super::slab::{SlabDelta, SlabInfo};
use super::sys::{MemInfo, SockStat};

/// Everything [`bytes_per_conn`] needs: readings before and after the
/// connections were opened (build it with [`MemInput::from_snapshots`]
/// or by hand).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemInput {
    /// Connections held at the "after" reading.
    pub n: u64,
    /// Server processes' smaps_rollup sums.
    pub server_mem_before: ProcMem,
    pub server_mem_after: ProcMem,
    pub slab_before: SlabInfo,
    pub slab_after: SlabInfo,
    /// Sockstat of the server's network namespace.
    pub sockstat_server_before: SockStat,
    pub sockstat_server_after: SockStat,
    /// Sockstat of the load generator's namespace (None if not read).
    pub sockstat_client_before: Option<SockStat>,
    pub sockstat_client_after: Option<SockStat>,
    /// Global sockstat `TCP mem` (pages), before and after.
    pub sockmem_pages_before: u64,
    pub sockmem_pages_after: u64,
    pub meminfo_before: MemInfo,
    pub meminfo_after: MemInfo,
    /// False when the load generator holds no kernel sockets (userspace
    /// stack, other machine): then the server's share is 1.0.
    pub client_kernel_sockets: bool,
    /// Server and client are in the same network namespace, so both
    /// sockstat readings are the same counters.
    pub same_netns: bool,
    /// Bytes per page for sockstat `mem`.
    pub page_size: u64,
    /// TCP sockets the server side holds per connection: 1, or 3 behind a proxy in its
    /// namespace (the client's, the proxy's own toward the server, the server's).
    #[serde(default = "one_socket")]
    pub server_sockets_per_conn: u32,
}

fn one_socket() -> u32 {
    1
}

/// One attributed (or, in `system_breakdown`, unattributed) component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakdownRow {
    pub name: String,
    pub bytes_per_conn: f64,
    /// Bytes over all N connections (after the server share is applied).
    pub total_bytes: f64,
    /// For slab rows: objects per connection (after share), e.g. 1.0 for TCP.
    pub objects_per_conn: Option<f64>,
}

/// The bytes-per-connection report. All `*_per_conn` figures are bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemReport {
    pub n: u64,
    /// What exactly was computed, in one sentence with the actual numbers.
    pub method: String,
    /// Server's fraction of the new TCP sockets; multiplies kernel deltas.
    pub server_share: f64,
    /// Δ TCP inuse in the server's namespace.
    pub server_tcp_inuse_delta: i64,
    /// Δ TCP inuse in the client's namespace, if it was read.
    pub client_tcp_inuse_delta: Option<i64>,
    /// Δ server RSS / n.
    pub user_bytes_per_conn: f64,
    /// Δ server PSS / n (cross-check for multi-process servers; not summed).
    pub user_pss_bytes_per_conn: f64,
    /// Σ socket caches Δ(active_objs × objsize) × share / n.
    pub kernel_slab_bytes_per_conn: f64,
    /// Alternative to the above: Δ slab pages held by those caches × share / n.
    pub kernel_slab_pages_bytes_per_conn: f64,
    /// Δ sockstat TCP mem pages × page size × share / n.
    pub kernel_sockbuf_bytes_per_conn: f64,
    /// user + kernel slab + kernel sockbuf.
    pub all_in_bytes_per_conn: f64,
    /// The attributed rows; they sum to `all_in_bytes_per_conn`.
    pub breakdown: Vec<BreakdownRow>,
    /// Socket caches not listed in slabinfo (merged into others, or absent).
    pub absent_caches: Vec<String>,
    /// Socket caches sharing a slab with other caches (slab merging), with
    /// the other names; see the warnings for what that does to the rows.
    pub merged_caches: std::collections::BTreeMap<String, Vec<String>>,
    /// Σ Δbytes of kmalloc-* caches, both sides, not attributed.
    pub other_slab_delta_bytes: i64,
    pub other_slab_delta_per_conn: f64,
    /// Δ(MemTotal − MemAvailable) / n: whole machine, both sides, unattributed.
    pub system_used_delta_per_conn: f64,
    /// Other meminfo deltas / n (Slab, SUnreclaim, ...), cross-check only.
    pub system_breakdown: Vec<BreakdownRow>,
    pub warnings: Vec<String>,
}

/// Signed difference of two counters.
fn diff(before: u64, after: u64) -> i64 {
    after as i64 - before as i64
}

/// Server share of kernel socket memory and a phrase saying how it was found.
fn server_share(input: &MemInput, warnings: &mut Vec<String>) -> (f64, i64, Option<i64>, String) {
    let ds = diff(
        input.sockstat_server_before.tcp_inuse,
        input.sockstat_server_after.tcp_inuse,
    );
    let dc = match (&input.sockstat_client_before, &input.sockstat_client_after) {
        (Some(b), Some(a)) => Some(diff(b.tcp_inuse, a.tcp_inuse)),
        _ => None,
    };
    if input.n > 0 && !input.same_netns {
        // The server namespace should gain its sockets per connection (one, unless proxied).
        let ratio = ds as f64 / (input.n as f64 * f64::from(input.server_sockets_per_conn.max(1)));
        if !(0.9..=1.1).contains(&ratio) {
            warnings.push(format!(
                "server netns Δ TCP inuse = {ds} but n = {}: are the sockstat namespaces right?",
                input.n
            ));
        }
    }
    if !input.client_kernel_sockets {
        return (1.0, ds, dc, "1.0: the load generator holds no kernel sockets".into());
    }
    if input.same_netns {
        warnings.push(
            "server and client share one network namespace: Δinuse counts both sides; \
             share 0.5 assumes one client socket per server socket"
                .into(),
        );
        return (0.5, ds, dc, format!("0.5: same namespace, Δinuse {ds} split evenly"));
    }
    let Some(dc) = dc else {
        warnings
            .push("client netns sockstat not given: all kernel memory attributed to the server (upper bound)".into());
        return (1.0, ds, None, "1.0 (unknown: no client sockstat; upper bound)".into());
    };
    if ds < 0 || dc < 0 {
        warnings.push(format!("negative Δ TCP inuse (server {ds}, client {dc}) clamped to 0"));
    }
    let (s, c) = (ds.max(0) as f64, dc.max(0) as f64);
    if s + c == 0.0 {
        warnings.push(
            "server share unknown (Δ TCP inuse is 0 in both namespaces): all kernel memory \
             attributed to the server (upper bound)"
                .into(),
        );
        return (
            1.0,
            ds,
            Some(dc),
            "1.0 (unknown: Δinuse 0 on both sides; upper bound)".into(),
        );
    }
    let share = s / (s + c);
    let how = format!("Δinuse server {ds} / (server {ds} + client {dc}) = {share:.3}");
    (share, ds, Some(dc), how)
}

/// Computes bytes per connection, all-in and broken down (see module docs of
/// [`crate::measure`]). Never fails: odd inputs produce warnings, negative
/// deltas are clamped to 0, and n == 0 gives zeros.
pub fn bytes_per_conn(input: &MemInput) -> MemReport {
    let mut warnings = Vec::new();
    let n = input.n;
    if n == 0 {
        warnings.push("n == 0: per-connection figures are reported as 0".into());
    }
    let per = |total: f64| if n == 0 { 0.0 } else { total / n as f64 };
    let (share, ds, dc, share_how) = server_share(input, &mut warnings);
    let (rss, pss) = user_space(input, &mut warnings);
    let mut breakdown = vec![BreakdownRow {
        name: "user: server RSS".into(),
        bytes_per_conn: per(rss),
        total_bytes: rss,
        objects_per_conn: None,
    }];
    let slab = SlabInfo::delta(&input.slab_before, &input.slab_after);
    let (slab_total, slab_pages_total) = slab_rows(&slab, share, per, &mut breakdown, &mut warnings);
    slab_ipv6_check(&slab, n, &mut warnings);
    merge_warnings(&input.slab_after, &mut warnings);
    let sockbuf = sockbuf_row(input, &slab, share, per, &mut breakdown, &mut warnings);
    let other = slab.other_slab_bytes();
    let used = diff(input.meminfo_before.used(), input.meminfo_after.used());
    let present: Vec<&str> = slab.socket_caches().iter().map(|c| c.name.as_str()).collect();
    let method = format!(
        "bytes/conn = (Δ server RSS [smaps_rollup Rss summed over {np} pid(s)] \
         + share × Σ Δ(active_objs × objsize) over slab caches [{caches}] \
         + share × Δ sockstat TCP mem [{dpages} pages × {page} B]) / N, with N = {n} and \
         share = {share_how}; negative deltas clamped to 0; memcg accounting not used; \
         kmalloc-* slab and non-slab kernel memory (e.g. large fd tables) are not attributed, \
         see the unattributed whole-machine cross-check Δ(MemTotal - MemAvailable) / N.",
        np = input.server_mem_after.pids.len(),
        caches = present.join(", "),
        dpages = diff(input.sockmem_pages_before, input.sockmem_pages_after),
        page = input.page_size,
    );
    let (user, kslab, ksock) = (per(rss), per(slab_total), per(sockbuf));
    MemReport {
        n,
        method,
        server_share: share,
        server_tcp_inuse_delta: ds,
        client_tcp_inuse_delta: dc,
        user_bytes_per_conn: user,
        user_pss_bytes_per_conn: per(pss),
        kernel_slab_bytes_per_conn: kslab,
        kernel_slab_pages_bytes_per_conn: per(slab_pages_total),
        kernel_sockbuf_bytes_per_conn: ksock,
        all_in_bytes_per_conn: user + kslab + ksock,
        breakdown,
        absent_caches: slab.absent_socket_caches().iter().map(|s| s.to_string()).collect(),
        merged_caches: input.slab_after.merged.clone(),
        other_slab_delta_bytes: other,
        other_slab_delta_per_conn: per(other as f64),
        system_used_delta_per_conn: per(used as f64),
        system_breakdown: system_rows(input, per),
        warnings,
    }
}

/// A negative delta, clamped to 0 and said.
fn clamp(what: &str, v: i64, warnings: &mut Vec<String>) -> f64 {
    if v < 0 {
        warnings.push(format!("{what}: negative delta {v} B clamped to 0"));
    }
    v.max(0) as f64
}

/// User space: Δ of the server's own pages (RSS, PSS), with what makes them doubtful.
fn user_space(input: &MemInput, warnings: &mut Vec<String>) -> (f64, f64) {
    let (mb, ma) = (&input.server_mem_before, &input.server_mem_after);
    let rss = clamp("server RSS", diff(mb.rss, ma.rss), warnings);
    let pss = diff(mb.pss, ma.pss).max(0) as f64;
    if ma.swap > mb.swap {
        warnings.push(format!(
            "server swap grew by {} B during the run: RSS under-counts",
            ma.swap - mb.swap
        ));
    }
    let (mut pb, mut pa) = (mb.pids.clone(), ma.pids.clone());
    pb.sort_unstable();
    pa.sort_unstable();
    if pb != pa {
        warnings.push(format!("server process set changed between readings: {pb:?} -> {pa:?}"));
    }
    (rss, pss)
}

/// Kernel slab: per-socket objects, scaled by the server's share; one row per cache. Returns the
/// bytes of the objects and of their slab pages.
fn slab_rows(
    slab: &SlabDelta,
    share: f64,
    per: impl Fn(f64) -> f64,
    breakdown: &mut Vec<BreakdownRow>,
    warnings: &mut Vec<String>,
) -> (f64, f64) {
    let mut slab_total = 0.0;
    let mut slab_pages_total = 0.0;
    let mut clamped = Vec::new();
    for c in slab.socket_caches() {
        if c.bytes_delta < 0 {
            clamped.push(format!("{} ({} B)", c.name, c.bytes_delta));
        }
        let bytes = c.bytes_delta.max(0) as f64 * share;
        let objs = c.active_objs_delta.max(0) as f64 * share;
        slab_total += bytes;
        slab_pages_total += c.slab_pages_bytes_delta.max(0) as f64 * share;
        breakdown.push(BreakdownRow {
            name: format!("kernel slab: {}", c.name),
            bytes_per_conn: per(bytes),
            total_bytes: bytes,
            objects_per_conn: Some(per(objs)),
        });
    }
    if !clamped.is_empty() {
        warnings.push(format!("slab caches that shrank, clamped to 0: {}", clamped.join(", ")));
    }
    (slab_total, slab_pages_total)
}

/// Kernel socket buffers: sockstat mem is in pages and global, so it is scaled by the share.
fn sockbuf_row(
    input: &MemInput,
    slab: &SlabDelta,
    share: f64,
    per: impl Fn(f64) -> f64,
    breakdown: &mut Vec<BreakdownRow>,
    warnings: &mut Vec<String>,
) -> f64 {
    let dpages = diff(input.sockmem_pages_before, input.sockmem_pages_after);
    let sockbuf = clamp(
        "sockstat TCP mem",
        dpages.saturating_mul(input.page_size as i64),
        warnings,
    ) * share;
    breakdown.push(BreakdownRow {
        name: "kernel: socket buffers (sockstat TCP mem)".into(),
        bytes_per_conn: per(sockbuf),
        total_bytes: sockbuf,
        objects_per_conn: None,
    });
    let skb_heads = slab.get("skbuff_head_cache").map_or(0, |c| c.bytes_delta.max(0));
    if per(sockbuf) > 1.0 && per(skb_heads as f64 * share) > 1.0 {
        warnings.push(
            "both sockstat mem and skbuff_head_cache grew: heads of queued skbs are in both, \
             so the all-in figure may double-count them"
                .into(),
        );
    }
    sockbuf
}

/// Cross-checks, unattributed: both sides, whole machine.
fn system_rows(input: &MemInput, per: impl Fn(f64) -> f64) -> Vec<BreakdownRow> {
    let (ib, ia) = (&input.meminfo_before, &input.meminfo_after);
    let sys_row = |name: &str, b: u64, a: u64| {
        let d = diff(b, a) as f64;
        BreakdownRow {
            name: name.into(),
            bytes_per_conn: per(d),
            total_bytes: d,
            objects_per_conn: None,
        }
    };
    vec![
        sys_row("system: Δ(MemTotal - MemAvailable)", ib.used(), ia.used()),
        sys_row("system: Δ Slab", ib.slab, ia.slab),
        sys_row("system: Δ SUnreclaim", ib.s_unreclaim, ia.s_unreclaim),
        sys_row("system: Δ SReclaimable", ib.s_reclaimable, ia.s_reclaimable),
        sys_row("system: Δ KernelStack", ib.kernel_stack, ia.kernel_stack),
        sys_row("system: Δ PageTables", ib.page_tables, ia.page_tables),
        sys_row("system: Δ AnonPages", ib.anon_pages, ia.anon_pages),
    ]
}

/// A server listening on IPv6 puts its sockets in TCPv6, which we do not
/// attribute (and sockstat `TCP inuse` is IPv4 only): say so if it grew.
fn slab_ipv6_check(slab: &SlabDelta, n: u64, warnings: &mut Vec<String>) {
    if let Some(c) = slab.get("TCPv6") {
        if c.active_objs_delta > 100 && c.active_objs_delta as f64 > 0.1 * n as f64 {
            warnings.push(format!(
                "TCPv6 grew by {} objects: IPv6 sockets are not attributed (use IPv4 for this measurement)",
                c.active_objs_delta
            ));
        }
    }
}

/// Slab merging makes one slabinfo line hold several caches' objects: an
/// attributed line may include unrelated (or client-side) objects, and a
/// merged-away socket cache is missed entirely. Both are said, not guessed.
fn merge_warnings(slab: &SlabInfo, warnings: &mut Vec<String>) {
    for (name, others) in &slab.merged {
        let listed = |n: &String| slab.caches.contains_key(n.as_str());
        if slab.caches.contains_key(name.as_str()) {
            warnings.push(format!(
                "slab line '{name}' also counts objects of {} (slab merging): its row may include \
                 unrelated or client-side objects; boot with slab_nomerge for per-cache figures",
                others.join(", ")
            ));
        } else if let Some(host) = others.iter().find(|n| listed(n)) {
            warnings.push(format!(
                "{name} is merged into slab line '{host}', which is not attributed: its objects \
                 are missed; boot with slab_nomerge for per-cache figures"
            ));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::measure::slab::SlabCache;

    fn cache(active: u64, objsize: u64, perslab: u64, pages: u64) -> SlabCache {
        SlabCache {
            active_objs: active,
            num_objs: active.div_ceil(perslab) * perslab,
            objsize,
            objperslab: perslab,
            pagesperslab: pages,
        }
    }

    fn slab(tcp: u64, inode: u64, kmalloc: u64) -> SlabInfo {
        let mut s = SlabInfo {
            page_size: 4096,
            ..Default::default()
        };
        s.caches.insert("TCP".into(), cache(tcp, 2368, 13, 8));
        s.caches.insert("sock_inode_cache".into(), cache(inode, 832, 19, 4));
        s.caches.insert("filp".into(), cache(500, 192, 21, 1));
        s.caches.insert("kmalloc-64".into(), cache(kmalloc, 64, 64, 1));
        s
    }

    fn sockstat(inuse: u64, mem: u64) -> SockStat {
        SockStat {
            tcp_inuse: inuse,
            tcp_alloc: inuse,
            tcp_mem_pages: mem,
            ..Default::default()
        }
    }

    fn mem(rss: u64, pid: u32) -> ProcMem {
        ProcMem {
            pids: vec![pid],
            rss,
            pss: rss,
            ..Default::default()
        }
    }

    fn meminfo(used: u64) -> MemInfo {
        MemInfo {
            mem_total: 1 << 34,
            mem_available: (1 << 34) - used,
            ..Default::default()
        }
    }

    /// 1000 connections; server and client each gain 1000 TCP sockets.
    pub(crate) fn input() -> MemInput {
        MemInput {
            n: 1000,
            server_mem_before: mem(10 << 20, 7),
            server_mem_after: mem((10 << 20) + 1000 * 1500, 7),
            slab_before: slab(26, 76, 4096),
            slab_after: slab(26 + 2000, 76 + 2000, 4096 + 640),
            sockstat_server_before: sockstat(1, 233),
            sockstat_server_after: sockstat(1001, 233 + 500),
            sockstat_client_before: Some(sockstat(0, 233)),
            sockstat_client_after: Some(sockstat(1000, 233 + 500)),
            sockmem_pages_before: 233,
            sockmem_pages_after: 733,
            meminfo_before: meminfo(1 << 30),
            meminfo_after: meminfo((1 << 30) + 1000 * 12_000),
            client_kernel_sockets: true,
            same_netns: false,
            page_size: 4096,
            server_sockets_per_conn: 1,
        }
    }

    pub(crate) fn row<'a>(r: &'a MemReport, name: &str) -> &'a BreakdownRow {
        r.breakdown.iter().find(|b| b.name == name).unwrap()
    }

    #[test]
    fn splits_kernel_memory_by_share() {
        let r = bytes_per_conn(&input());
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(r.server_share, 0.5);
        assert_eq!((r.server_tcp_inuse_delta, r.client_tcp_inuse_delta), (1000, Some(1000)));
        // 2000 TCP objects × 2368 B, half of them the server's, over 1000 conns.
        let tcp = row(&r, "kernel slab: TCP");
        assert_eq!(tcp.bytes_per_conn, 2368.0);
        assert_eq!(tcp.objects_per_conn, Some(1.0));
        assert_eq!(row(&r, "kernel slab: sock_inode_cache").bytes_per_conn, 832.0);
        assert_eq!(row(&r, "kernel slab: filp").bytes_per_conn, 0.0);
        assert_eq!(r.kernel_slab_bytes_per_conn, 2368.0 + 832.0);
        assert_eq!(r.user_bytes_per_conn, 1500.0);
        // 500 pages × 4096 × 0.5 / 1000.
        assert_eq!(r.kernel_sockbuf_bytes_per_conn, 1024.0);
        assert_eq!(r.all_in_bytes_per_conn, 1500.0 + 3200.0 + 1024.0);
        let sum: f64 = r.breakdown.iter().map(|b| b.bytes_per_conn).sum();
        assert!((sum - r.all_in_bytes_per_conn).abs() < 1e-9);
        // Unattributed figures are reported as they are.
        assert_eq!(r.other_slab_delta_bytes, 640 * 64);
        assert_eq!(r.system_used_delta_per_conn, 12_000.0);
        assert!(r.absent_caches.contains(&"eventpoll_pwq".to_string()));
        assert!(r.kernel_slab_pages_bytes_per_conn >= r.kernel_slab_bytes_per_conn);
        assert!(
            r.method.contains("N = 1000") && r.method.contains("= 0.500"),
            "{}",
            r.method
        );
        // The report serializes (the harness stores it as JSON).
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["server_share"], 0.5);
    }

    #[test]
    fn userspace_client_gets_share_one() {
        let mut i = input();
        i.client_kernel_sockets = false;
        i.sockstat_client_before = None;
        i.sockstat_client_after = None;
        let r = bytes_per_conn(&i);
        assert_eq!(r.server_share, 1.0);
        assert_eq!(row(&r, "kernel slab: TCP").bytes_per_conn, (2 * 2368) as f64);
        assert_eq!(r.kernel_sockbuf_bytes_per_conn, 2048.0);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }

    #[test]
    fn odd_inputs_warn_instead_of_failing() {
        // n == 0.
        let mut i = input();
        i.n = 0;
        let r = bytes_per_conn(&i);
        assert_eq!(r.all_in_bytes_per_conn, 0.0);
        assert!(r.warnings.iter().any(|w| w.contains("n == 0")));

        // Shrinking RSS and slab: clamped to 0.
        let mut i = input();
        i.server_mem_after.rss = 1;
        i.slab_after.caches.get_mut("filp").unwrap().active_objs = 100;
        let r = bytes_per_conn(&i);
        assert_eq!(r.user_bytes_per_conn, 0.0);
        assert_eq!(row(&r, "kernel slab: filp").bytes_per_conn, 0.0);
        assert!(r.warnings.iter().any(|w| w.contains("server RSS")));
        assert!(r.warnings.iter().any(|w| w.contains("filp")));

        // No Δinuse anywhere: share unknown, upper bound 1.0.
        let mut i = input();
        i.sockstat_server_after.tcp_inuse = 1;
        i.sockstat_client_after = Some(sockstat(0, 733));
        let r = bytes_per_conn(&i);
        assert_eq!(r.server_share, 1.0);
        assert!(r.warnings.iter().any(|w| w.contains("share unknown")));

        // Same namespace: 0.5 with a warning.
        let mut i = input();
        i.same_netns = true;
        i.sockstat_client_before = Some(i.sockstat_server_before);
        i.sockstat_client_after = Some(i.sockstat_server_after);
        let r = bytes_per_conn(&i);
        assert_eq!(r.server_share, 0.5);
        assert!(r
            .warnings
            .iter()
            .any(|w| w.contains("same") || w.contains("one network namespace")));
    }

    #[test]
    fn a_proxy_in_the_server_namespace_is_expected_to_add_sockets() {
        // Three server-side sockets per connection (a TLS proxy's two and the server's), one on
        // the client side: the server's share is 3/4, and that is no namespace mix-up...
        let mut i = input();
        i.sockstat_server_after = sockstat(3001, 233 + 500);
        i.server_sockets_per_conn = 3;
        let r = bytes_per_conn(&i);
        assert_eq!(r.server_share, 0.75);
        assert!(!r.warnings.iter().any(|w| w.contains("namespaces")), "{:?}", r.warnings);
        // ...which it would be for a server said to hold one per connection.
        i.server_sockets_per_conn = 1;
        let r = bytes_per_conn(&i);
        assert!(r.warnings.iter().any(|w| w.contains("namespaces")), "{:?}", r.warnings);
    }

    #[test]
    fn warns_about_slab_merging() {
        let mut i = input();
        i.slab_after
            .caches
            .insert("anon_vma_chain".into(), cache(650, 64, 64, 1));
        i.slab_after
            .merged
            .insert("eventpoll_pwq".into(), vec!["anon_vma_chain".into(), "fs_cache".into()]);
        i.slab_after.merged.insert("TCP".into(), vec!["some_other".into()]);
        let r = bytes_per_conn(&i);
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("eventpoll_pwq is merged into slab line 'anon_vma_chain'")),
            "{:?}",
            r.warnings
        );
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("slab line 'TCP' also counts objects of some_other")),
            "{:?}",
            r.warnings
        );
        assert_eq!(r.merged_caches.len(), 2);
        // Merging changes the warnings, not the numbers.
        assert_eq!(r.all_in_bytes_per_conn, bytes_per_conn(&input()).all_in_bytes_per_conn);
    }
}

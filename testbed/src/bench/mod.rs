//! The side-by-side benchmark: for each server (ours on each stack, and the peers users would
//! pick), make the namespaces, start the server, open N connections with one load generator (the
//! same for every server), measure memory while they are held and idle, broadcast, and report
//! connections held, connect rate, fan-out time, delivery latency, CPU seconds and bytes per
//! connection (DESIGN.md §5), as a table and as JSON.
//!
//! - `mod.rs`: the report's types and one server's run, step by step.
//! - `server.rs`: the servers that can be measured; `peers.rs`: building and starting the
//!   peers (`testbed/peers/`).
//! - `steps.rs`: the steps: start the server and the load, wait, broadcast; the servers' admin
//!   endpoints read through our server's own types (`ws_server::admin`).
//! - `render.rs`: the table; `charts.rs`: the charts (SVG and PNG).
//! - `cluster.rs`: `--nodes K`, the same N on K nodes on NATS next to one node.

pub mod charts;
pub mod cluster;
pub mod peers;
mod render;
pub mod server;
mod steps;
pub mod tls_proxy;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
pub use ws_server::cli::Stack;

use crate::load::hist::LatencySummary;
use crate::load::parent::{RawHistograms, Summary};
use crate::load::sources::CONNS_PER_SOURCE;
use crate::measure::{self, MemInput, MemReport, Snapshot, SystemCpu};
pub use charts::write as write_charts;
pub use render::render;
pub use server::{client_name, Server};
use steps::{check_stop, Admin};
use testkit::{ChildGuard, Netns};

#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// The Ns to run, in order (`--conns 10000,100000`); `conns` is the one running.
    pub sweep: Vec<u64>,
    pub stacks: Vec<Server>,
    /// The load generator's stack, the same for every server: xdp (userspace TCP, no file per
    /// connection) by default, kernel (Linux TCP) as the real-peer check.
    pub client: Stack,
    pub conns: u64,
    pub rate: f64,
    pub broadcasts: u32,
    /// Each broadcast's body: a checkable pattern of this many bytes; 0: the server's time.
    pub message_size: usize,
    pub settle: Duration,
    pub prefix: String,
    pub out_dir: PathBuf,
    pub workers: Option<usize>,
    pub load_procs: Option<usize>,
    /// The xdp load generator's receive buffer per connection (`ws-load --rx-buf`).
    pub load_rx_buf: Option<usize>,
    /// Measure the raw link first (`xdp-flood`) when xdp is among the servers.
    pub link_rate: bool,
    /// Data rounds (`--data-rounds 100B/100ms`): every connection sends a frame of this many
    /// bytes this often, the server echoes it; measured for `data_seconds` once all are held.
    pub data_rounds: Option<(usize, Duration)>,
    pub data_seconds: Duration,
    /// Every connection a device with its token (the default; `--anonymous` turns it off): the
    /// server checks them with a key written to `<out>/device.key`, the load generator mints them.
    pub device_tokens: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct BroadcastRun {
    pub seq: u64,
    pub websockets: u64,
    /// The push message's size (JSON around the body; the frame header not counted).
    pub payload_bytes: u64,
    /// Slowest worker's time to hand the frame to every connection.
    pub fanout_ms: f64,
    /// Admin command to the last worker's reply.
    pub elapsed_ms: f64,
    /// xdp: from the broadcast's start until its last frame was handed to the link (the server's
    /// own measurement; delivery latency at the clients is the end-to-end figure).
    pub handed_to_link_ms: Option<f64>,
    /// From the admin command until the server said no connection has output waiting (polled
    /// every 50 ms): the broadcast is written to every socket (kernel) or sent (xdp).
    pub written_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CpuReport {
    pub server_user_s: f64,
    pub server_sys_s: f64,
    pub load_user_s: f64,
    pub load_sys_s: f64,
    /// Whole machine, during the run (includes softirq network processing no process is billed for).
    pub system_busy_s: f64,
    pub system_softirq_s: f64,
    pub wall_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct StackResult {
    /// The server measured (`server::Server::name`).
    pub stack: String,
    /// The load generator's stack: the same for every server of a report.
    pub client: String,
    pub conns_target: u64,
    /// Connections the server held when memory was measured.
    pub held: u64,
    pub established: u64,
    pub failed: u64,
    pub connect_rate_per_s: f64,
    pub connect_wall_s: f64,
    pub server_workers: usize,
    pub load_procs: usize,
    /// The body size asked for (`--message-size`; 0: the server's time).
    pub message_size: usize,
    pub broadcasts: Vec<BroadcastRun>,
    pub fanout_ms_median: f64,
    pub deliveries_expected: u64,
    pub deliveries: u64,
    /// Pattern bytes the clients checked, and messages with a wrong byte or cut short (must be 0).
    pub checked_bytes: u64,
    pub corrupt: u64,
    /// Connections the server closed as slow readers during the broadcasts (must be 0: the
    /// clients read).
    pub slow_readers_closed: u64,
    /// xdp load generator: frames its AF_XDP rings dropped (received, sent). Each is a
    /// retransmission that the delivery latency of this server includes through no fault of its
    /// own, so the table shows them.
    pub load_dropped_frames: Option<(u64, u64)>,
    pub push_latency: LatencySummary,
    pub cpu: CpuReport,
    pub memory: MemReport,
    /// The server's whole RSS while holding the connections, divided by them: includes what it
    /// allocated at start (tables sized for its capacity), which the Δ figure leaves out.
    pub server_rss_total_per_conn: f64,
    /// The same after the broadcasts: a message is stored once, so this must not grow with the
    /// message size.
    pub server_rss_after_broadcasts_per_conn: f64,
    /// The headline: the server's whole RSS plus its share of kernel memory (slab, socket
    /// buffers), divided by the connections held. Nothing the server set up at start is left out.
    pub all_in_total_bytes_per_conn: f64,
    /// The same with the processes' proportional set size (PSS) instead of RSS: pages shared
    /// between a server's processes (code, libraries) counted once, not once per process, which
    /// is fairer to servers of many processes (ours on kernel sockets, every peer).
    pub all_in_pss_bytes_per_conn: f64,
    /// xdp only: the server's resident memory by structure, bytes per connection.
    pub xdp_breakdown: Option<Vec<(String, f64)>>,
    /// The xdp load generator's: its stack's structures at their largest, its UMEM, and the
    /// rest of its largest RSS, bytes per connection (it shares the machine).
    pub load_breakdown: Option<Vec<(String, f64)>>,
    /// The load generator's raw latency histograms, so that anyone can redraw them.
    pub histograms: RawHistograms,
    /// The data rounds' figures, when they ran.
    pub data_rounds: Option<DataRounds>,
    pub notes: Vec<String>,
}

/// What the data rounds measured (seed 003's transmission test).
#[derive(Clone, Debug, Serialize)]
pub struct DataRounds {
    pub payload_bytes: usize,
    pub interval_ms: f64,
    /// Frames the clients sent, and echoes they received.
    pub sent: u64,
    pub echoed: u64,
    /// Sent and never echoed by the end of the run.
    pub missing: u64,
    /// Echoes per second averaged over the load generator's whole run (connecting included):
    /// what the server carried (each echo is one message in and one out). At the steady state
    /// the offer is N per interval.
    pub echoes_per_s: f64,
    pub echo_rtt: LatencySummary,
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub mem_total_bytes: u64,
    pub kernel: String,
    pub fd_hard_limit: usize,
}

/// What the JSON report's shape is: 2 added the sweep (`conns` a list, each result its own
/// `conns_target`), the raw histograms, the peers, the client and the provenance fields.
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub schema_version: u32,
    /// `ws-bench <version>`.
    pub tool: String,
    /// The commit the benchmark was built from (`git describe`-like; `-dirty` with local changes).
    pub git_commit: String,
    /// When the report was made (RFC 3339, UTC).
    pub generated_utc: String,
    /// How it was made.
    pub command_line: Vec<String>,
    pub machine: Machine,
    /// Every N run, in order.
    pub conns: Vec<u64>,
    pub rate: f64,
    /// The load generator's stack, the same for every server.
    pub client: String,
    /// Every connection a device with its own HS256 token, checked in the handshake.
    pub device_tokens: bool,
    pub results: Vec<StackResult>,
    /// Servers not run (or not finished) at an N, and why.
    pub skipped: Vec<String>,
    /// What the raw path carries here, measured first in the same run when xdp is in it:
    /// `xdp-flood` frames of a push's size, one way, received per second (veth, copy-mode
    /// AF_XDP, the steering program). A broadcast's pushes per second are compared with it.
    pub link_frames_per_s: Option<f64>,
}

pub fn machine() -> Machine {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        mem_total_bytes: measure::MemInfo::read().map_or(0, |m| m.mem_total),
        kernel,
        fd_hard_limit: host::process::hard_fd_limit(),
    }
}

pub fn run(cfg: &BenchConfig, stop: &Arc<AtomicBool>) -> anyhow::Result<BenchReport> {
    if !host::is_root() {
        bail!("ws-bench needs root: it makes network namespaces and reads /proc/slabinfo");
    }
    let mut report = BenchReport {
        schema_version: SCHEMA_VERSION,
        tool: format!("ws-bench {}", env!("CARGO_PKG_VERSION")),
        git_commit: git_commit(),
        generated_utc: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        command_line: std::env::args().collect(),
        machine: machine(),
        conns: cfg.sweep.clone(),
        rate: cfg.rate,
        client: client_name(cfg.client).into(),
        device_tokens: cfg.device_tokens,
        results: vec![],
        skipped: vec![],
        link_frames_per_s: None,
    };
    if cfg.stacks.contains(&Server::Xdp) && cfg.link_rate {
        match link_rate(cfg) {
            Ok(pps) => report.link_frames_per_s = Some(pps),
            Err(e) => {
                eprintln!("[link] the raw link rate was not measured: {e:#}");
                report.skipped.push(format!("the raw link rate: {e:#}"));
            }
        }
    }
    for &n in &cfg.sweep {
        // Each N of a sweep keeps its logs in a directory of its own.
        let at = BenchConfig {
            conns: n,
            out_dir: match cfg.sweep.len() {
                1 => cfg.out_dir.clone(),
                _ => cfg.out_dir.join(format!("n-{n}")),
            },
            ..cfg.clone()
        };
        for &server in &cfg.stacks {
            if let Some(why) = will_not_fit(&report, server, n) {
                eprintln!("[{}] skipped at N = {n}: {why}", server.name());
                report.skipped.push(format!("{} at N = {n}: {why}", server.name()));
                continue;
            }
            match run_server(&at, stop, server) {
                Ok(result) => report.results.push(result),
                // Interrupted: stop here. Anything else: say so and go on with the others.
                Err(e) if stop.load(std::sync::atomic::Ordering::Relaxed) => return Err(e),
                Err(e) => {
                    eprintln!("[{}] failed at N = {n}: {e:#}", server.name());
                    report
                        .skipped
                        .push(format!("{} at N = {n}: the run failed: {e:#}", server.name()));
                }
            }
        }
    }
    Ok(report)
}

/// `--nodes K`: N connections on one node of `cfg.stacks[0]`, then on K nodes on NATS, both with
/// the kernel load generator.
pub fn run_cluster(cfg: &BenchConfig, stop: &Arc<AtomicBool>, nodes: usize) -> anyhow::Result<cluster::ClusterResult> {
    if !host::is_root() {
        bail!("ws-bench needs root: it makes network namespaces");
    }
    let cfg = BenchConfig {
        client: Stack::Kernel,
        conns: cfg.sweep[0],
        out_dir: cfg.out_dir.join(format!("cluster-{nodes}")),
        ..cfg.clone()
    };
    std::fs::create_dir_all(&cfg.out_dir)?;
    let server = cfg.stacks[0];
    eprintln!("[{}] one node first, at the same N", server.name());
    let single = match run_server(&cfg, stop, server) {
        Ok(r) => Some(r),
        Err(e) if stop.load(std::sync::atomic::Ordering::Relaxed) => return Err(e),
        Err(e) => {
            eprintln!("[{}] the one-node run failed: {e:#}", server.name());
            None
        }
    };
    cluster::run(&cfg, stop, nodes, single)
}

/// A push's frame on the wire: Ethernet, IPv4 and TCP headers (54), the WebSocket header (2 or
/// 4) and the body (the server's time is about 110 bytes).
fn push_frame_bytes(cfg: &BenchConfig) -> usize {
    let body = if cfg.message_size == 0 { 110 } else { cfg.message_size };
    (54 + 4 + body).clamp(60, 1514)
}

/// `xdp-flood` in namespaces of its own, frames of a push's size: what the raw path carries.
fn link_rate(cfg: &BenchConfig) -> anyhow::Result<f64> {
    let json = cfg.out_dir.join("link-rate.json");
    std::fs::create_dir_all(&cfg.out_dir)?;
    let size = push_frame_bytes(cfg);
    eprintln!("[link] the raw path first: xdp-flood, 3,000,000 frames of {size} B, one way");
    let out = std::process::Command::new(testkit::sibling_binary("xdp-flood")?)
        .args(["--packets", "3000000", "--size", &size.to_string(), "--seconds", "60"])
        .args([
            "--prefix",
            &format!("{}f", cfg.prefix.chars().take(7).collect::<String>()),
        ])
        .arg("--json")
        .arg(&json)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .output()
        .context("running xdp-flood")?;
    if !out.status.success() {
        bail!("xdp-flood failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    let pps = v["receive_pps"]
        .as_f64()
        .context("no receive_pps in xdp-flood's report")?;
    eprintln!("[link] {pps:.0} frames/s received");
    Ok(pps)
}

/// What the load generator takes beside the server: the xdp one about 1.2 KB per connection
/// and 384 MiB of AF_XDP rings; the kernel one a kernel socket (~4 KB) per connection.
fn load_generator_bytes(client: &str, n: u64) -> f64 {
    match client {
        "xdp" => 1300.0 * n as f64 + (384u64 << 20) as f64,
        _ => 4500.0 * n as f64,
    }
}

/// Why `server` cannot hold `n` connections on this machine, judged by what it cost per
/// connection at a smaller N of the same sweep (with a tenth more for growth) and what the load
/// generator needs: a run that would end in the OOM killer is not run.
fn will_not_fit(report: &BenchReport, server: Server, n: u64) -> Option<String> {
    let cost = report
        .results
        .iter()
        .filter(|r| r.stack == server.name() && r.conns_target < n)
        .map(|r| r.all_in_total_bytes_per_conn)
        .next_back()?;
    let need = cost * 1.1 * n as f64 + load_generator_bytes(&report.client, n);
    let available = measure::MemInfo::read().ok()?.mem_available as f64;
    (need > available).then(|| {
        format!(
            "at {cost:.0} B per connection (measured at a smaller N) it needs about {:.1} GiB with the load generator; {:.1} GiB is available",
            need / (1u64 << 30) as f64,
            available / (1u64 << 30) as f64
        )
    })
}

/// The commit this tool was built from, if its source tree is a git checkout here.
pub fn git_commit() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(["-C", dir])
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "HEAD"]) {
        Some(commit) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if !changes.is_empty() => format!("{commit}-dirty"),
            _ => commit,
        },
        None => "unknown (not built from a git checkout)".into(),
    }
}

/// What one stack's run measured before it is summed up.
struct Measured {
    held: u64,
    workers: usize,
    before: Snapshot,
    after: Snapshot,
    held_stats: Option<ws_server::admin::Report>,
    broadcasts: Vec<BroadcastRun>,
    /// The server's RSS and stats after the broadcasts.
    rss_after_broadcasts: u64,
    end_stats: Option<ws_server::admin::Report>,
    end_cpu: measure::CpuTimes,
    end_system: SystemCpu,
    summary: Summary,
    notes: Vec<String>,
}

/// One server's run, against the load generator of `cfg.client`.
fn run_server(cfg: &BenchConfig, stop: &Arc<AtomicBool>, server_kind: Server) -> anyhow::Result<StackResult> {
    let started = Instant::now();
    let name = server_kind.name();
    std::fs::create_dir_all(&cfg.out_dir).with_context(|| format!("creating {}", cfg.out_dir.display()))?;
    let clients = (cfg.conns as usize).div_ceil(CONNS_PER_SOURCE).max(1);
    eprintln!(
        "[{name}] namespaces {}-srv/{}-cli with {clients} client address(es)",
        cfg.prefix, cfg.prefix
    );
    let netns = Netns::setup(&cfg.prefix, clients)?;
    let mut server = steps::start_server(cfg, &netns, server_kind)?;
    let admin = Admin::new(&netns, &server)?;
    let workers = match server_kind.ours() {
        Some(_) => admin.wait_up(cfg, server_kind)?,
        // A peer's processes, all of them (a Node.js primary and its workers).
        None => admin.wait_up(cfg, server_kind).map(|_| server.pids().len())?,
    };
    // A process in the client namespace, so its socket counts can be read before the load starts.
    let mut anchor_cmd = netns.command(&netns.cli, std::path::Path::new("sleep"));
    anchor_cmd.arg("3600").stdin(std::process::Stdio::null());
    let anchor = ChildGuard::spawn("namespace anchor", anchor_cmd)?;
    std::thread::sleep(Duration::from_millis(200));
    let before = Snapshot::take(&server.pids(), server.pid(), Some(anchor.pid()))?;

    let (mut load, load_json) = steps::start_load(cfg, &netns, server_kind)?;
    let mut notes = Vec::new();
    let held = steps::wait_held(cfg, stop, &admin, &mut load, &mut notes)?;
    eprintln!(
        "[{name}] {held} connections held; settling {:?} before measuring memory",
        cfg.settle
    );
    std::thread::sleep(cfg.settle);
    check_stop(stop)?;
    let held = admin.conns().unwrap_or(held);
    let after = Snapshot::take(&server.pids(), server.pid(), Some(anchor.pid()))?;
    let held_stats = admin.report();
    if cfg.data_rounds.is_some() {
        eprintln!("[{name}] data rounds for {:?}", cfg.data_seconds);
        let until = Instant::now() + cfg.data_seconds;
        while Instant::now() < until {
            check_stop(stop)?;
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let broadcasts = steps::broadcasts(cfg, stop, &admin, server_kind, &mut notes)?;
    let rss_after_broadcasts = Snapshot::take(&server.pids(), server.pid(), Some(anchor.pid()))?
        .server_mem
        .rss;
    // The server's own account after the broadcasts (link drops, retransmissions, slow readers).
    let end_stats = admin.report();
    if let Some(report) = &end_stats {
        let _ = std::fs::write(
            cfg.out_dir.join(format!("{name}-server-stats.json")),
            serde_json::to_string_pretty(report).unwrap_or_default(),
        );
    }
    if load.wait_timeout(Duration::from_secs(60)).is_none() {
        notes.push("the load generator did not finish on its own; it was stopped".into());
        load.stop(Duration::from_secs(10));
    }
    let end_cpu = measure::cpu_seconds_sum(&server.pids())?;
    let end_system = SystemCpu::read()?;
    server.stop(Duration::from_secs(10));
    drop(anchor);
    drop(netns);
    let summary: Summary = serde_json::from_str(
        &std::fs::read_to_string(&load_json)
            .with_context(|| format!("reading the load summary {}", load_json.display()))?,
    )?;
    let measured = Measured {
        held,
        workers,
        before,
        after,
        held_stats,
        broadcasts,
        rss_after_broadcasts,
        end_stats,
        end_cpu,
        end_system,
        summary,
        notes,
    };
    Ok(sum_up(cfg, server_kind, started, measured))
}

/// The figures of one server's run.
fn sum_up(cfg: &BenchConfig, server: Server, started: Instant, m: Measured) -> StackResult {
    let xdp = server == Server::Xdp;
    let held = m.held;
    let client_sockets = cfg.client == Stack::Kernel;
    let mut input = MemInput::from_snapshots(held, &m.before, &m.after, client_sockets);
    if server == Server::KernelTls {
        input.server_sockets_per_conn = 3;
    }
    let memory = measure::bytes_per_conn(&input);
    let kernel_bytes = (memory.kernel_slab_bytes_per_conn + memory.kernel_sockbuf_bytes_per_conn) * held as f64;
    let all_in_total = (m.after.server_mem.rss as f64 + kernel_bytes) / held.max(1) as f64;
    let all_in_pss = (m.after.server_mem.pss as f64 + kernel_bytes) / held.max(1) as f64;
    let xdp_breakdown = m
        .held_stats
        .as_ref()
        .filter(|_| xdp)
        .map(|s| render::xdp_breakdown(s, m.after.server_mem.rss, held));
    let server_cpu = m.before.server_cpu.delta(&m.end_cpu);
    let system = m.before.system_cpu.delta(&m.end_system);
    let mut fanouts: Vec<f64> = m.broadcasts.iter().map(|b| b.fanout_ms).collect();
    fanouts.sort_by(f64::total_cmp);
    let summary = m.summary;
    StackResult {
        stack: server.name().into(),
        client: client_name(cfg.client).into(),
        conns_target: cfg.conns,
        held,
        established: summary.established,
        failed: summary.failed,
        connect_rate_per_s: summary.connect_rate_per_s,
        connect_wall_s: summary.connect_wall_s,
        server_workers: m.workers,
        load_procs: summary.procs,
        fanout_ms_median: fanouts.get(fanouts.len() / 2).copied().unwrap_or(0.0),
        deliveries_expected: m.broadcasts.iter().map(|b| b.websockets).sum(),
        deliveries: summary.counters.pushes,
        checked_bytes: summary.counters.checked_bytes,
        corrupt: summary.counters.corrupt,
        slow_readers_closed: m.end_stats.as_ref().map_or(0, |s| s.totals.slow_readers_closed),
        load_dropped_frames: summary
            .xdp_client
            .as_ref()
            .map(|x| (x.link.rx_dropped, x.link.tx_dropped)),
        message_size: cfg.message_size,
        broadcasts: m.broadcasts,
        push_latency: summary.push_latency.clone(),
        cpu: CpuReport {
            server_user_s: server_cpu.user_secs,
            server_sys_s: server_cpu.system_secs,
            load_user_s: summary.cpu_user_s,
            load_sys_s: summary.cpu_sys_s,
            system_busy_s: system.busy_secs,
            system_softirq_s: system.softirq_secs,
            wall_s: started.elapsed().as_secs_f64(),
        },
        memory,
        server_rss_total_per_conn: m.after.server_mem.rss as f64 / held.max(1) as f64,
        server_rss_after_broadcasts_per_conn: m.rss_after_broadcasts as f64 / held.max(1) as f64,
        all_in_total_bytes_per_conn: all_in_total,
        all_in_pss_bytes_per_conn: all_in_pss,
        xdp_breakdown,
        load_breakdown: summary
            .xdp_client
            .as_ref()
            .map(|x| render::load_breakdown(x, summary.max_proc_rss_bytes, summary.established)),
        histograms: summary.histograms.clone(),
        data_rounds: cfg.data_rounds.map(|(payload, interval)| DataRounds {
            payload_bytes: payload,
            interval_ms: interval.as_secs_f64() * 1e3,
            sent: summary.counters.sent_frames,
            echoed: summary.counters.echoes,
            missing: summary.counters.sent_frames.saturating_sub(summary.counters.echoes),
            echoes_per_s: summary.counters.echoes as f64 / summary.wall_s.max(1e-9),
            echo_rtt: summary.echo_rtt.clone(),
        }),
        notes: m.notes,
    }
}

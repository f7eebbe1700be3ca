//! The side-by-side benchmark: for each stack, make the namespaces, start the server, open N
//! connections with the load generator, measure memory while they are held and idle, broadcast,
//! and report connections held, connect rate, fan-out time, delivery latency, CPU seconds and bytes
//! per connection (DESIGN.md §5), as a table and as JSON.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::load::hist::LatencySummary;
use crate::load::parent::Summary;
use crate::load::sources::CONNS_PER_SOURCE;
use crate::measure::{self, process_tree, MemInput, MemReport, Snapshot, SystemCpu};
use testkit::http::http_in_netns;
use testkit::{sibling_binary, wait_for, ChildGuard, Netns};

const SERVER: &str = "198.18.0.1:8080";
const ADMIN: &str = "127.0.0.1:9001";

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub stacks: Vec<String>,
    pub conns: u64,
    pub rate: f64,
    pub broadcasts: u32,
    pub settle: Duration,
    pub prefix: String,
    pub out_dir: PathBuf,
    pub workers: Option<usize>,
    pub load_procs: Option<usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BroadcastRun {
    pub seq: u64,
    pub websockets: u64,
    /// Slowest worker's time to hand the frame to every connection.
    pub fanout_ms: f64,
    /// Admin command to the last worker's reply.
    pub elapsed_ms: f64,
    /// xdp: from the broadcast's start until its last frame was handed to the link (the server's
    /// own measurement; delivery latency at the clients is the end-to-end figure).
    pub handed_to_link_ms: Option<f64>,
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
    pub stack: String,
    pub conns_target: u64,
    /// Connections the server held when memory was measured.
    pub held: u64,
    pub established: u64,
    pub failed: u64,
    pub connect_rate_per_s: f64,
    pub connect_wall_s: f64,
    pub server_workers: usize,
    pub load_procs: usize,
    pub broadcasts: Vec<BroadcastRun>,
    pub fanout_ms_median: f64,
    pub deliveries_expected: u64,
    pub deliveries: u64,
    pub push_latency: LatencySummary,
    pub cpu: CpuReport,
    pub memory: MemReport,
    /// The server's whole RSS while holding the connections, divided by them: includes what it
    /// allocated at start (tables sized for its capacity), which the Δ figure leaves out.
    pub server_rss_total_per_conn: f64,
    /// The headline: the server's whole RSS plus its share of kernel memory (slab, socket
    /// buffers), divided by the connections held. Nothing the server set up at start is left out.
    pub all_in_total_bytes_per_conn: f64,
    /// xdp only: the server's resident memory by structure, bytes per connection.
    pub xdp_breakdown: Option<Vec<(String, f64)>>,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub mem_total_bytes: u64,
    pub kernel: String,
    pub fd_hard_limit: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub machine: Machine,
    pub conns: u64,
    pub rate: f64,
    pub results: Vec<StackResult>,
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
        machine: machine(),
        conns: cfg.conns,
        rate: cfg.rate,
        results: vec![],
    };
    for stack in &cfg.stacks {
        match stack.as_str() {
            "kernel" | "xdp" => report.results.push(run_stack(cfg, stop, stack)?),
            other => bail!("unknown stack '{other}' (kernel, xdp)"),
        }
    }
    Ok(report)
}

fn check_stop(stop: &AtomicBool) -> anyhow::Result<()> {
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// One stack's run. `kernel`: ws-server's epoll workers and ws-load's kernel-socket processes.
/// `xdp`: ws-server on the userspace stack behind XDP and ws-load on the userspace stack too (no
/// kernel socket on either side).
fn run_stack(cfg: &BenchConfig, stop: &Arc<AtomicBool>, stack: &str) -> anyhow::Result<StackResult> {
    let xdp = stack == "xdp";
    let started = Instant::now();
    let server_bin = sibling_binary("ws-server")?;
    let load_bin = sibling_binary("ws-load")?;
    std::fs::create_dir_all(&cfg.out_dir).with_context(|| format!("creating {}", cfg.out_dir.display()))?;
    let admin: SocketAddr = ADMIN.parse()?;
    let clients = (cfg.conns as usize).div_ceil(CONNS_PER_SOURCE).max(1);
    eprintln!(
        "[{stack}] namespaces {}-srv/{}-cli with {clients} client address(es)",
        cfg.prefix, cfg.prefix
    );
    let netns = Netns::setup(&cfg.prefix, clients)?;

    let server_log_path = cfg.out_dir.join(format!("{stack}-server.log"));
    let server_log = std::fs::File::create(&server_log_path)?;
    let mut cmd = netns.command(&netns.srv, &server_bin);
    // The userspace stack builds a socket for every slot of --max-conns at start (that memory
    // is in the all-in figure), so it is sized for N plus a little room for retries.
    let capacity = if xdp { cfg.conns + 1024 } else { cfg.conns };
    cmd.args([
        "--stack",
        stack,
        "--listen",
        SERVER,
        "--admin",
        ADMIN,
        "--max-conns",
        &capacity.to_string(),
    ])
    .args(["--push-interval", "0", "--idle-timeout", "0"])
    .stdin(Stdio::null())
    .stdout(server_log.try_clone()?)
    .stderr(server_log);
    if xdp {
        cmd.args(["--iface", &format!("{}-s0", cfg.prefix)]);
    } else if let Some(w) = cfg.workers {
        cmd.args(["--workers", &w.to_string()]);
    }
    let mut server = ChildGuard::spawn("ws-server", cmd)?;
    let stats = |path: &str| -> Option<serde_json::Value> {
        let (status, body) = http_in_netns(&netns.srv, "GET", admin, path, b"").ok()?;
        if status != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    };
    // Dozens of worker processes may take a while to start on two busy cores.
    if wait_for(Duration::from_secs(90), Duration::from_millis(200), || stats("/stats")).is_none() {
        bail!("the server did not come up; see {}", server_log_path.display());
    }
    let workers = stats("/stats").and_then(|s| s["workers"].as_u64()).unwrap_or(0) as usize;
    // A process in the client namespace, so its socket counts can be read before the load starts.
    let mut anchor_cmd = netns.command(&netns.cli, std::path::Path::new("sleep"));
    anchor_cmd.arg("3600").stdin(Stdio::null());
    let anchor = ChildGuard::spawn("namespace anchor", anchor_cmd)?;
    std::thread::sleep(Duration::from_millis(200));
    let before = Snapshot::take(&process_tree(server.pid()), server.pid(), Some(anchor.pid()))?;

    let load_json = cfg.out_dir.join(format!("{stack}-load.json"));
    let _ = std::fs::remove_file(&load_json);
    let mut cmd = netns.command(&netns.cli, &load_bin);
    cmd.args([
        "--stack",
        stack,
        "--server",
        SERVER,
        "--conns",
        &cfg.conns.to_string(),
        "--rate",
        &cfg.rate.to_string(),
    ])
    .args([
        "--hold",
        "600s",
        "--expect-broadcasts",
        &cfg.broadcasts.to_string(),
        "--progress",
        "lines",
    ])
    .arg("--json")
    .arg(&load_json)
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(cfg.out_dir.join(format!("{stack}-load.log")))?);
    if xdp {
        cmd.args(["--iface", &format!("{}-c0", cfg.prefix)]);
    } else if let Some(p) = cfg.load_procs {
        cmd.args(["--procs", &p.to_string()]);
    }
    eprintln!("[{stack}] opening {} connections at {}/s", cfg.conns, cfg.rate);
    let mut load = ChildGuard::spawn("ws-load", cmd)?;

    // Wait until the server holds every connection (or the load generator gave up).
    let connect_budget = Duration::from_secs_f64(60.0 + 3.0 * cfg.conns as f64 / cfg.rate.max(1000.0));
    let deadline = Instant::now() + connect_budget;
    let mut held = 0;
    while Instant::now() < deadline {
        check_stop(stop)?;
        held = stats("/conns").and_then(|v| v["conns"].as_u64()).unwrap_or(held);
        if held >= cfg.conns || !load.running() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut notes = Vec::new();
    if held < cfg.conns {
        notes.push(format!(
            "the server held {held} of {} connections when measured",
            cfg.conns
        ));
    }
    eprintln!(
        "[{stack}] {held} connections held; settling {:?} before measuring memory",
        cfg.settle
    );
    std::thread::sleep(cfg.settle);
    check_stop(stop)?;
    let held = stats("/conns").and_then(|v| v["conns"].as_u64()).unwrap_or(held);
    let after = Snapshot::take(&process_tree(server.pid()), server.pid(), Some(anchor.pid()))?;
    let held_stats = stats("/stats");

    let mut broadcasts = Vec::new();
    for i in 0..cfg.broadcasts {
        check_stop(stop)?;
        let (status, body) = http_in_netns(&netns.srv, "POST", admin, "/broadcast", b"")?;
        if status != 200 {
            bail!("broadcast {i} failed: {status} {body}");
        }
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let mut run = BroadcastRun {
            handed_to_link_ms: None,
            seq: v["seq"].as_u64().unwrap_or(0),
            websockets: v["websockets"].as_u64().unwrap_or(0),
            fanout_ms: v["fanout_ms"].as_f64().unwrap_or(0.0),
            elapsed_ms: v["elapsed_ms"].as_f64().unwrap_or(0.0),
        };
        eprintln!(
            "[{stack}] broadcast {}: {} connections, fan-out {:.1} ms",
            i + 1,
            run.websockets,
            run.fanout_ms
        );
        // Let the clients drain before the next one, so each broadcast is measured on its own:
        // the xdp server says when its output has left; for the kernel, wait a multiple of the
        // hand-off time.
        if xdp {
            let drained = wait_for(Duration::from_secs(60), Duration::from_millis(50), || {
                let s = stats("/stats")?;
                let workers = s["per_worker"].as_array()?.clone();
                let pending: u64 = workers
                    .iter()
                    .map(|w| w["xdp"]["tx_pending_conns"].as_u64().unwrap_or(1))
                    .sum();
                (pending == 0).then(|| {
                    workers
                        .iter()
                        .filter_map(|w| w["xdp"]["last_broadcast_tx_ms"].as_f64())
                        .fold(0.0, f64::max)
                })
            });
            run.handed_to_link_ms = drained;
            if drained.is_none() {
                notes.push(format!("broadcast {}: output still pending after 60 s", i + 1));
            }
            std::thread::sleep(Duration::from_millis(1000));
        } else {
            std::thread::sleep(Duration::from_millis((run.elapsed_ms * 3.0) as u64 + 1000));
        }
        broadcasts.push(run);
    }
    // The server's own account after the broadcasts (link drops, retransmissions, spill use).
    if let Some(v) = stats("/stats") {
        let _ = std::fs::write(
            cfg.out_dir.join(format!("{stack}-server-stats.json")),
            serde_json::to_string_pretty(&v).unwrap_or_default(),
        );
    }
    if load.wait_timeout(Duration::from_secs(60)).is_none() {
        notes.push("the load generator did not finish on its own; it was stopped".into());
        load.stop(Duration::from_secs(10));
    }
    let end_cpu = measure::cpu_seconds_sum(&process_tree(server.pid()))?;
    let end_system = SystemCpu::read()?;
    server.stop(Duration::from_secs(10));
    drop(anchor);
    drop(netns);

    let summary: Summary = serde_json::from_str(
        &std::fs::read_to_string(&load_json)
            .with_context(|| format!("reading the load summary {}", load_json.display()))?,
    )?;
    let memory = measure::bytes_per_conn(&MemInput::from_snapshots(held, &before, &after, !xdp));
    let kernel_bytes = (memory.kernel_slab_bytes_per_conn + memory.kernel_sockbuf_bytes_per_conn) * held as f64;
    let all_in_total = (after.server_mem.rss as f64 + kernel_bytes) / held.max(1) as f64;
    let xdp_breakdown = held_stats
        .as_ref()
        .filter(|_| xdp)
        .map(|s| xdp_breakdown(s, after.server_mem.rss, held));
    let server_cpu = before.server_cpu.delta(&end_cpu);
    let system = before.system_cpu.delta(&end_system);
    let mut fanouts: Vec<f64> = broadcasts.iter().map(|b| b.fanout_ms).collect();
    fanouts.sort_by(f64::total_cmp);
    Ok(StackResult {
        stack: stack.into(),
        conns_target: cfg.conns,
        held,
        established: summary.established,
        failed: summary.failed,
        connect_rate_per_s: summary.connect_rate_per_s,
        connect_wall_s: summary.connect_wall_s,
        server_workers: workers,
        load_procs: summary.procs,
        fanout_ms_median: fanouts.get(fanouts.len() / 2).copied().unwrap_or(0.0),
        deliveries_expected: broadcasts.iter().map(|b| b.websockets).sum(),
        deliveries: summary.counters.pushes,
        broadcasts,
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
        server_rss_total_per_conn: after.server_mem.rss as f64 / held.max(1) as f64,
        all_in_total_bytes_per_conn: all_in_total,
        xdp_breakdown,
        notes,
    })
}

/// Where an xdp server's resident memory goes, per connection, from its `/stats` (each stack
/// structure by its resident pages, the UMEM, the core's tables) and the rest of its RSS.
fn xdp_breakdown(stats: &serde_json::Value, rss: u64, held: u64) -> Vec<(String, f64)> {
    let per = |v: f64| v / held.max(1) as f64;
    let mut rows: Vec<(String, f64)> = Vec::new();
    let mut sum = 0.0;
    let workers = stats["per_worker"].as_array().cloned().unwrap_or_default();
    let field = |path: &[&str]| -> f64 {
        workers
            .iter()
            .map(|w| path.iter().fold(w, |v, k| &v[*k]).as_f64().unwrap_or(0.0))
            .sum()
    };
    for (name, path) in [
        ("smoltcp sockets", &["xdp", "resident", "socket_bytes"][..]),
        ("rx + tx buffers (arena)", &["xdp", "resident", "arena_bytes"]),
        ("4-tuple table", &["xdp", "resident", "table_bytes"]),
        ("slots (tuple, flags, user)", &["xdp", "resident", "slot_bytes"]),
        ("free list", &["xdp", "resident", "free_list_bytes"]),
        ("stack timer wheel and queues", &["xdp", "resident", "wheel_bytes"]),
        ("AF_XDP UMEM", &["xdp", "umem_bytes"]),
        ("server core (32 B state, devices, timers)", &["core_heap_bytes"]),
    ] {
        let mut v = field(path);
        if name.starts_with("stack timer") {
            v += field(&["xdp", "resident", "queue_bytes"]);
        }
        sum += v;
        rows.push((name.to_string(), per(v)));
    }
    rows.push((
        "rest of the processes' RSS (code, libraries, pools, supervisor)".into(),
        per((rss as f64 - sum).max(0.0)),
    ));
    rows
}

fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// The side-by-side table: one column per stack.
pub fn render(r: &BenchReport) -> String {
    let mut out = String::new();
    let m = &r.machine;
    let _ = writeln!(
        out,
        "\nws-bench: N = {} connections; machine: {} CPUs, {:.1} GiB, Linux {}, open-file hard limit {}\n",
        thousands(r.conns as f64),
        m.cpus,
        m.mem_total_bytes as f64 / (1u64 << 30) as f64,
        m.kernel,
        m.fd_hard_limit
    );
    let cols: Vec<&StackResult> = r.results.iter().collect();
    let mut row = |label: &str, f: &dyn Fn(&StackResult) -> String| {
        let _ = write!(out, "  {label:<34}");
        for c in &cols {
            let _ = write!(out, "{:>26}", f(c));
        }
        out.push('\n');
    };
    row("stack", &|c| c.stack.clone());
    row("connections held / target", &|c| {
        format!("{} / {}", thousands(c.held as f64), thousands(c.conns_target as f64))
    });
    row("connect failures", &|c| thousands(c.failed as f64));
    row("connect rate (established/s)", &|c| thousands(c.connect_rate_per_s));
    row("server processes", &|c| c.server_workers.to_string());
    row("broadcast hand-off to all, median (ms)", &|c| {
        format!("{:.1}", c.fanout_ms_median)
    });
    row("  xdp: last frame on the link (ms)", &|c| {
        let mut v: Vec<f64> = c.broadcasts.iter().filter_map(|b| b.handed_to_link_ms).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).map_or("-".into(), |m| format!("{m:.1}"))
    });
    row("deliveries / expected", &|c| {
        format!(
            "{} / {}",
            thousands(c.deliveries as f64),
            thousands(c.deliveries_expected as f64)
        )
    });
    row("delivery latency p50 (ms)", &|c| {
        format!("{:.1}", c.push_latency.p50_ms)
    });
    row("delivery latency p99 (ms)", &|c| {
        format!("{:.1}", c.push_latency.p99_ms)
    });
    row("delivery latency max (ms)", &|c| {
        format!("{:.1}", c.push_latency.max_ms)
    });
    row("CPU s: server user+sys", &|c| {
        format!("{:.2}+{:.2}", c.cpu.server_user_s, c.cpu.server_sys_s)
    });
    row("CPU s: load generator user+sys", &|c| {
        format!("{:.2}+{:.2}", c.cpu.load_user_s, c.cpu.load_sys_s)
    });
    row("CPU s: whole machine busy (softirq)", &|c| {
        format!("{:.2} ({:.2})", c.cpu.system_busy_s, c.cpu.system_softirq_s)
    });
    row("bytes/conn ALL-IN (server RSS + kernel)", &|c| {
        thousands(c.all_in_total_bytes_per_conn)
    });
    row("  server RSS total / N", &|c| thousands(c.server_rss_total_per_conn));
    row("bytes/conn Δ (from the idle server)", &|c| {
        thousands(c.memory.all_in_bytes_per_conn)
    });
    row("  user space (server RSS Δ / N)", &|c| {
        thousands(c.memory.user_bytes_per_conn)
    });
    row("  kernel slab (server share)", &|c| {
        thousands(c.memory.kernel_slab_bytes_per_conn)
    });
    row("  kernel socket buffers", &|c| {
        thousands(c.memory.kernel_sockbuf_bytes_per_conn)
    });
    row("wall time (s)", &|c| format!("{:.1}", c.cpu.wall_s));
    for c in &r.results {
        let _ = writeln!(
            out,
            "\n--- {} stack: memory breakdown ---\n{}",
            c.stack,
            measure::render_table(&c.memory)
        );
        if let Some(rows) = &c.xdp_breakdown {
            let _ = writeln!(out, "  where the xdp server's resident bytes go (per connection):");
            for (name, v) in rows {
                let _ = writeln!(out, "    {name:<62}{v:>10.1}");
            }
        }
        for n in &c.notes {
            let _ = writeln!(out, "  note: {n}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(-1000.0), "-1,000");
    }
}

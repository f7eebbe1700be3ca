//! `ws-bench --nodes K`: the same N connections on one node, then spread over K nodes that are
//! one service on NATS (`netns-scripts/cluster.sh`: each node in its own namespace, the broker in
//! another, one client namespace). Broadcasts are posted on the nodes in turn; the report gives
//! delivery latency over every connection of the cluster next to one node's, the broker messages
//! per broadcast (its own counters, the idle heartbeat traffic taken out), and each node's
//! resident bytes per connection.
//!
//! The load generator is the kernel one here (the cluster's client host has one address per node
//! link, which the userspace one cannot spread connections over), and the single-node run uses it
//! too, so the two compare.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use super::steps::check_stop;
use super::{BenchConfig, Stack, StackResult};
use crate::load::hist::{self, LatencySummary};
use crate::load::parent::Summary;
use crate::measure::{process_tree, ProcMem};
use testkit::cluster::{ClusterNetns, BROKER_ADDR};
use testkit::http::http_in_netns;
use testkit::{sibling_binary, wait_for, ChildGuard};

const ADMIN: &str = "127.0.0.1:9001";
const PORT: u16 = 8080;
const NATS_MONITOR: u16 = 8222;
/// One client address per node link: at most this many connections per node.
pub const MAX_CONNS_PER_NODE: u64 = 60_000;

#[derive(Clone, Debug, Serialize)]
pub struct NodeResult {
    pub node: String,
    pub held: u64,
    /// The node's processes' resident memory while holding its connections, per connection
    /// (the kernel's socket memory of a kernel-stack node is not in it: the single-node run's
    /// all-in figure has it).
    pub rss_bytes_per_conn: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClusterResult {
    pub nodes: usize,
    pub stack: String,
    pub client: String,
    pub conns_total: u64,
    pub per_node: Vec<NodeResult>,
    pub broadcasts: u32,
    pub deliveries_expected: u64,
    pub deliveries: u64,
    /// Delivery latency over every connection of every node (the load generators' histograms
    /// merged).
    pub push_latency: LatencySummary,
    /// The broker's messages in and out per broadcast, heartbeats taken out.
    pub broker_msgs_in_per_broadcast: f64,
    pub broker_msgs_out_per_broadcast: f64,
    /// The same N on one node, measured first with the same load generator.
    pub single_node: Option<StackResult>,
    pub notes: Vec<String>,
}

/// The broker's message counters (`/varz` of its monitoring port).
#[derive(Clone, Copy, Debug, Default, serde::Deserialize)]
struct Varz {
    in_msgs: u64,
    out_msgs: u64,
}

fn varz(cl: &ClusterNetns) -> anyhow::Result<Varz> {
    let addr: SocketAddr = format!("{BROKER_ADDR}:{NATS_MONITOR}").parse()?;
    let (status, body) = http_in_netns(&cl.bus, "GET", addr, "/varz", b"")?;
    if status != 200 {
        bail!("nats-server /varz: {status}");
    }
    Ok(serde_json::from_str(&body)?)
}

fn admin() -> SocketAddr {
    ADMIN.parse().expect("the admin address")
}

fn get(ns: &str, path: &str) -> Option<serde_json::Value> {
    let (status, body) = http_in_netns(ns, "GET", admin(), path, b"").ok()?;
    (status == 200).then(|| serde_json::from_str(&body).ok()).flatten()
}

fn start_node(
    cfg: &BenchConfig,
    cl: &ClusterNetns,
    k: usize,
    stack: Stack,
    per_node: u64,
) -> anyhow::Result<ChildGuard> {
    let ns = cl.node_ns(k);
    let log_path = cfg.out_dir.join(format!("cluster-node{k}.log"));
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = cl.command(&ns, &sibling_binary("ws-server")?);
    let stack_name = match stack {
        Stack::Xdp => "xdp",
        Stack::Kernel => "kernel",
    };
    cmd.args([
        "--stack",
        stack_name,
        "--listen",
        &format!("{}:{PORT}", cl.node_addr(k)),
    ])
    .args([
        "--admin",
        ADMIN,
        "--push-interval",
        "0",
        "--idle-timeout",
        "0",
        "--insecure-ids",
        "--drain-rate",
        "0",
    ])
    .args(["--max-conns", &(per_node + 1024).to_string()])
    .args([
        "--cluster",
        &format!("nats://{BROKER_ADDR}:4222"),
        "--node-id",
        &format!("n{k}"),
    ])
    .stdin(Stdio::null())
    .stdout(log.try_clone()?)
    .stderr(log);
    if stack == Stack::Xdp {
        cmd.args(["--iface", &cl.node_dev(k)]);
    }
    let node = ChildGuard::spawn(&format!("node {k}"), cmd)?;
    let up = wait_for(Duration::from_secs(90), Duration::from_millis(200), || {
        get(&ns, "/stats").filter(|s| s["cluster"]["state"] == "connected")
    });
    if up.is_none() {
        bail!("node {k} did not come up; see {}", log_path.display());
    }
    Ok(node)
}

fn start_load(cfg: &BenchConfig, cl: &ClusterNetns, k: usize, conns: u64) -> anyhow::Result<(ChildGuard, PathBuf)> {
    let json = cfg.out_dir.join(format!("cluster-load{k}.json"));
    let _ = std::fs::remove_file(&json);
    let mut cmd = cl.command(&cl.cli, &sibling_binary("ws-load")?);
    cmd.args(["--stack", "kernel", "--server", &format!("{}:{PORT}", cl.node_addr(k))])
        .args([
            "--conns",
            &conns.to_string(),
            "--rate",
            &(cfg.rate / cl.nodes as f64).to_string(),
        ])
        .args(["--hold", "1800s", "--expect-broadcasts", &cfg.broadcasts.to_string()])
        .args(["--progress", "off", "--json"])
        .arg(&json)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(cfg.out_dir.join(format!("cluster-load{k}.log")))?);
    Ok((ChildGuard::spawn(&format!("ws-load to node {k}"), cmd)?, json))
}

/// The N connections of `cfg.conns` on `nodes` nodes of `cfg.stacks[0]`, after the same N on
/// one node (`single`, run by the caller with the same load generator).
pub fn run(
    cfg: &BenchConfig,
    stop: &AtomicBool,
    nodes: usize,
    single: Option<StackResult>,
) -> anyhow::Result<ClusterResult> {
    let server = cfg.stacks[0];
    let Some(stack) = server.ours() else {
        bail!(
            "--nodes runs our server (--stacks kernel or xdp), not {}",
            server.name()
        );
    };
    let per_node = cfg.conns.div_ceil(nodes as u64);
    std::fs::create_dir_all(&cfg.out_dir)?;
    let mut notes = Vec::new();
    eprintln!(
        "[cluster] {nodes} {} nodes, {per_node} connections each, on nats-server",
        server.name()
    );
    let cl = ClusterNetns::setup(&cfg.prefix[..cfg.prefix.len().min(6)], nodes)?;
    let nats = start_nats(cfg, &cl)?;
    let mut servers = Vec::new();
    for k in 1..=nodes {
        servers.push(start_node(cfg, &cl, k, stack, per_node)?);
    }
    let mut loads = Vec::new();
    let mut left = cfg.conns;
    for k in 1..=nodes {
        let conns = per_node.min(left);
        left -= conns;
        loads.push((start_load(cfg, &cl, k, conns)?, conns));
    }
    // Everyone connected, then idle: the broker's idle traffic (heartbeats) measured.
    let deadline = Instant::now() + Duration::from_secs_f64(120.0 + 3.0 * cfg.conns as f64 / cfg.rate.max(1000.0));
    let held = |k: usize| {
        get(&cl.node_ns(k), "/conns")
            .and_then(|c| c["conns"].as_u64())
            .unwrap_or(0)
    };
    loop {
        check_stop(stop)?;
        let all: u64 = (1..=nodes).map(held).sum();
        if all >= cfg.conns {
            break;
        }
        if Instant::now() > deadline {
            notes.push(format!("the cluster held {all} of {} connections", cfg.conns));
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(cfg.settle);
    let per_node_results: Vec<NodeResult> = (1..=nodes)
        .map(|k| {
            let pids = process_tree(servers[k - 1].pid());
            let rss = ProcMem::read(&pids).map_or(0, |m| m.rss);
            let h = held(k);
            NodeResult {
                node: format!("n{k}"),
                held: h,
                rss_bytes_per_conn: rss as f64 / h.max(1) as f64,
            }
        })
        .collect();
    let idle_from = (Instant::now(), varz(&cl)?);
    std::thread::sleep(Duration::from_secs(2));
    let idle_to = (Instant::now(), varz(&cl)?);
    let idle_secs = idle_to.0.duration_since(idle_from.0).as_secs_f64();
    let idle_in = (idle_to.1.in_msgs - idle_from.1.in_msgs) as f64 / idle_secs;
    let idle_out = (idle_to.1.out_msgs - idle_from.1.out_msgs) as f64 / idle_secs;

    let start = (Instant::now(), idle_to.1);
    let mut expected = 0;
    for i in 0..cfg.broadcasts {
        check_stop(stop)?;
        let k = i as usize % nodes + 1;
        let (status, answer) = http_in_netns(&cl.node_ns(k), "POST", admin(), "/broadcast", b"")?;
        if status != 200 {
            bail!("broadcast {} on node {k}: {status} {answer}", i + 1);
        }
        let seq = serde_json::from_str::<serde_json::Value>(&answer)?["seq"]
            .as_u64()
            .unwrap_or(0);
        // Every node has fanned it out and written it; what each queued it to is expected.
        let done = wait_for(Duration::from_secs(120), Duration::from_millis(50), || {
            let mut queued = 0;
            for n in 1..=nodes {
                let s = get(&cl.node_ns(n), "/stats")?;
                let written = s["cluster"]["last_seq"].as_u64() == Some(seq) && s["output_waiting"].as_u64() == Some(0);
                if !written || s["last_broadcast"]["seq"].as_u64() != Some(seq) {
                    return None;
                }
                queued += s["last_broadcast"]["websockets"].as_u64().unwrap_or(0);
            }
            Some(queued)
        });
        match done {
            Some(queued) => expected += queued,
            None => {
                notes.push(format!("broadcast {}: not written everywhere after 120 s", i + 1));
                expected += (1..=nodes).map(held).sum::<u64>();
            }
        }
        eprintln!("[cluster] broadcast {} posted on node {k}", i + 1);
        std::thread::sleep(Duration::from_millis(1000));
    }
    let end = (Instant::now(), varz(&cl)?);
    let secs = end.0.duration_since(start.0).as_secs_f64();
    let per = |delta: u64, idle: f64| (delta as f64 - idle * secs).max(0.0) / cfg.broadcasts as f64;
    let broker_in = per(end.1.in_msgs - start.1.in_msgs, idle_in);
    let broker_out = per(end.1.out_msgs - start.1.out_msgs, idle_out);

    let mut merged = hist::new_histogram();
    let mut deliveries = 0;
    for (k, ((mut load, json), _)) in loads.into_iter().enumerate() {
        if load.wait_timeout(Duration::from_secs(60)).is_none() {
            notes.push(format!("the load of node {} did not finish; stopped", k + 1));
            load.stop(Duration::from_secs(10));
        }
        let summary: Summary = serde_json::from_str(
            &std::fs::read_to_string(&json).with_context(|| format!("reading {}", json.display()))?,
        )?;
        deliveries += summary.counters.broadcasts;
        if let Ok(h) = hist::decode(&summary.histograms.push_latency_us) {
            let _ = merged.add(&h);
        }
    }
    for mut s in servers {
        s.stop(Duration::from_secs(10));
    }
    drop(nats);
    Ok(ClusterResult {
        nodes,
        stack: server.name().into(),
        client: "kernel".into(),
        conns_total: cfg.conns,
        per_node: per_node_results,
        broadcasts: cfg.broadcasts,
        deliveries_expected: expected,
        deliveries,
        push_latency: hist::summarize(&merged),
        broker_msgs_in_per_broadcast: broker_in,
        broker_msgs_out_per_broadcast: broker_out,
        single_node: single,
        notes,
    })
}

fn start_nats(cfg: &BenchConfig, cl: &ClusterNetns) -> anyhow::Result<ChildGuard> {
    let store = cfg.out_dir.join("cluster-jetstream");
    let _ = std::fs::remove_dir_all(&store);
    let log = std::fs::File::create(cfg.out_dir.join("cluster-nats.log"))?;
    let mut cmd = cl.command(&cl.bus, Path::new("nats-server"));
    cmd.args([
        "-a",
        BROKER_ADDR,
        "-p",
        "4222",
        "-m",
        &NATS_MONITOR.to_string(),
        "-js",
        "-sd",
    ])
    .arg(&store)
    .stdin(Stdio::null())
    .stdout(log.try_clone()?)
    .stderr(log);
    let nats = ChildGuard::spawn("nats-server", cmd).context("starting nats-server (install-deps.sh installs it)")?;
    if wait_for(Duration::from_secs(10), Duration::from_millis(100), || varz(cl).ok()).is_none() {
        bail!("nats-server did not come up");
    }
    Ok(nats)
}

/// The table of a cluster run.
pub fn render(r: &ClusterResult) -> String {
    let mut out = String::new();
    let row = |name: &str, l: &LatencySummary, deliveries: String| {
        format!(
            "{name:<28} {:>9.1} {:>9.1} {:>9.1} {deliveries:>22}\n",
            l.p50_ms, l.p99_ms, l.max_ms
        )
    };
    out.push_str(&format!(
        "\n{} connections, {} broadcasts, {} stack, kernel load generator\n",
        r.conns_total, r.broadcasts, r.stack
    ));
    out.push_str(&format!(
        "{:<28} {:>9} {:>9} {:>9} {:>22}\n",
        "delivery latency (ms)", "p50", "p99", "max", "deliveries"
    ));
    if let Some(s) = &r.single_node {
        out.push_str(&row(
            "one node",
            &s.push_latency,
            format!("{}/{}", s.deliveries, s.deliveries_expected),
        ));
    }
    out.push_str(&row(
        &format!("{} nodes on NATS", r.nodes),
        &r.push_latency,
        format!("{}/{}", r.deliveries, r.deliveries_expected),
    ));
    out.push_str(&format!(
        "broker messages per broadcast: {:.1} in, {:.1} out (heartbeats taken out)\n",
        r.broker_msgs_in_per_broadcast, r.broker_msgs_out_per_broadcast
    ));
    for n in &r.per_node {
        out.push_str(&format!(
            "node {}: {} connections, {:.0} resident bytes per connection\n",
            n.node, n.held, n.rss_bytes_per_conn
        ));
    }
    if let Some(s) = &r.single_node {
        out.push_str(&format!(
            "one node: {} connections, {:.0} resident bytes per connection ({:.0} all-in)\n",
            s.held, s.server_rss_total_per_conn, s.all_in_total_bytes_per_conn
        ));
    }
    for note in &r.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    out
}

//! `ws-bench`: the side-by-side benchmark. See `ws-bench --help`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use testbed::bench::{self, BenchConfig, Server, Stack};
use ws_server::cli::{parse_duration, parse_size, usage, UsageError};

/// Benchmark ws-server on each stack at N concurrent WebSocket connections, side by side.
///
/// For each stack it makes a server and a client network namespace (netns-scripts/setup.sh, always
/// removed afterwards, also on Ctrl-C), starts ws-server in the server namespace and ws-load in the
/// client namespace, waits until the server holds N connections, lets them settle, measures
/// memory, sends --broadcasts broadcasts and collects delivery latency. It prints connections held,
/// connect rate, broadcast fan-out time, latency p50/p99/max, CPU seconds and bytes per connection
/// (all-in and broken down: server RSS Δ / N plus the server's share of kernel slab and socket
/// buffer memory, DESIGN.md §5), and writes everything as JSON. Needs root.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    long_about,
    after_help = "Exit status: 0 the benchmark ran (its figures may still show failures: read them); 1 it could not run (not root, a server that did not start, interrupted); 2 usage error."
)]
struct Args {
    /// Concurrent connections to hold; a list (10000,100000,1000000) runs each N in turn into
    /// one report and charts of each server against N.
    #[arg(long, short = 'n', value_delimiter = ',', default_value = "20000")]
    conns: Vec<u64>,
    /// Servers to measure, side by side: ours on kernel (epoll workers) and xdp (the userspace
    /// stack behind XDP), and the ones users would pick instead: gorilla (Go), node-ws (Node.js
    /// ws), tokio-tungstenite (Rust), each built on first use from testbed/peers/.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "kernel,xdp")]
    stacks: Vec<Server>,
    /// The load generator, the same for every server so that the server is the only variable:
    /// xdp (our userspace TCP: no file per connection, cheap) or kernel (Linux TCP sockets,
    /// sharded over processes: the real-peer check).
    #[arg(long, value_enum, default_value = "xdp")]
    client: Stack,
    /// New connections per second.
    #[arg(long, default_value_t = 20_000.0)]
    rate: f64,
    /// Broadcasts to send once every connection is held.
    #[arg(long, default_value_t = 3)]
    broadcasts: u32,
    /// Size of each broadcast's body (bytes; K and M suffixes): a pattern whose every byte the
    /// load generator checks. 0 broadcasts the server's time (about 40 bytes). At most 64K, the
    /// admin's limit; the frame adds the push's JSON (about 70 bytes) and the header.
    #[arg(long, default_value = "0", value_parser = parse_size, value_name = "BYTES")]
    message_size: usize,
    /// Connections without device ids or tokens (anonymous broadcast listeners). By default every
    /// connection is a device with its own token: the server runs with a device key
    /// (`--device-key-file`, written to <out>/device.key) and the load generator mints an HS256
    /// token per device id, so the connect rate includes the real handshake with a credential.
    #[arg(long)]
    anonymous: bool,
    /// Data rounds (seed 003's transmission test): every connection sends a frame of B bytes every
    /// T and the server echoes it (ours runs with --echo; the peers always echo), e.g. 100B/100ms
    /// or 1K/1s. Each connection sends from its open until the load ends (so memory and the
    /// broadcasts are measured under that traffic); --data-seconds holds all of them that much
    /// longer before the broadcasts.
    #[arg(long, value_parser = parse_rounds, value_name = "B/T")]
    data_rounds: Option<(usize, Duration)>,
    /// How long the data rounds run once every connection is held.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    data_seconds: Duration,
    /// Pause between "all connected" and the memory measurement.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    settle: Duration,
    /// Server worker processes (default: ws-server decides from N).
    #[arg(long)]
    workers: Option<usize>,
    /// Load generator processes (default: ws-load decides from N).
    #[arg(long)]
    load_procs: Option<usize>,
    /// --client xdp: the load generator's receive buffer per connection (ws-load --rx-buf;
    /// default 512). Smaller holds less while a broadcast is being read, for runs of millions;
    /// a larger message is read in pieces.
    #[arg(long, value_parser = parse_size)]
    load_rx_buf: Option<usize>,
    /// Do not measure the raw link first (by default, with xdp among the servers, `xdp-flood`
    /// sends 3,000,000 frames of a push's size one way, ~10 s, and the report compares each
    /// broadcast's pushes per second with it).
    #[arg(long)]
    no_link_rate: bool,
    /// Run the N connections on this many ws-server nodes that are one service on NATS (each node
    /// in its own namespace, nats-server with JetStream in another: netns-scripts/cluster.sh), after
    /// the same N on one node: delivery latency across the cluster next to one node's, broker
    /// messages per broadcast, each node's bytes per connection. One of our stacks (--stacks kernel
    /// or xdp), one N, at most 60,000 connections per node; the load generator is the kernel one
    /// for both runs. 1: off.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=9))]
    nodes: u8,
    /// Namespace name prefix (1-8 lowercase letters/digits).
    #[arg(long, default_value = "wsbb")]
    prefix: String,
    /// Directory for the JSON report and the logs.
    #[arg(long, default_value = "results")]
    out: PathBuf,
}

/// `100B/100ms`: a frame size (at least 21 bytes: the load generator's marker and send time) and
/// an interval.
fn parse_rounds(text: &str) -> Result<(usize, Duration), String> {
    let (size, every) = text
        .split_once('/')
        .ok_or_else(|| format!("'{text}' is not SIZE/INTERVAL (e.g. 100B/100ms)"))?;
    let size = parse_size(size.trim_end_matches(['B', 'b']))?;
    let every = parse_duration(every)?;
    if size < 21 {
        return Err("a data-round frame needs at least 21 bytes (a marker and the send time)".into());
    }
    if every < Duration::from_millis(1) {
        return Err("the data-round interval must be at least 1ms".into());
    }
    Ok((size, every))
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = run() {
        eprintln!("ws-bench: error: {e:#}");
        std::process::exit(if e.is::<UsageError>() { 2 } else { 1 });
    }
}

/// The most connections a run takes: the userspace stack's limit (ws-server --max-conns).
const MAX_CONNS: u64 = 16_000_000;

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.conns.iter().any(|&n| n == 0 || n > MAX_CONNS) {
        return Err(usage("--conns must be between 1 and 16,000,000"));
    }
    if !args.rate.is_finite() || args.rate <= 0.0 {
        return Err(usage("--rate must be positive"));
    }
    if args.broadcasts == 0 {
        return Err(usage(
            "--broadcasts must be at least 1 (latency is measured on broadcasts)",
        ));
    }
    if args.message_size > ws_server::admin::MAX_BODY {
        return Err(usage(format!(
            "--message-size must be at most {} bytes (the admin's body limit)",
            ws_server::admin::MAX_BODY
        )));
    }
    if args.stacks.contains(&Server::KernelTls) && args.client != Stack::Kernel {
        return Err(usage(
            "--stacks kernel-tls needs --client kernel: the kernel-stack load generator is the one that speaks TLS",
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stop))?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop))?;
    let cfg = BenchConfig {
        stacks: args.stacks.clone(),
        client: args.client,
        sweep: args.conns.clone(),
        conns: args.conns[0],
        rate: args.rate,
        broadcasts: args.broadcasts,
        message_size: args.message_size,
        settle: args.settle,
        data_rounds: args.data_rounds,
        data_seconds: args.data_seconds,
        prefix: args.prefix.clone(),
        out_dir: args.out.clone(),
        workers: args.workers,
        load_procs: args.load_procs,
        load_rx_buf: args.load_rx_buf,
        link_rate: !args.no_link_rate,
        device_tokens: !args.anonymous,
    };
    if args.nodes > 1 {
        return run_cluster(&args, &cfg, &stop);
    }
    let report = bench::run(&cfg, &stop)?;
    print!("{}", bench::render(&report));
    let name = args.conns.iter().map(u64::to_string).collect::<Vec<_>>().join("-");
    let path = args.out.join(format!("bench-{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("\nJSON report: {}", path.display());
    // A report without charts is still a report: say why they are missing.
    match bench::write_charts(&report, &args.out) {
        Ok(files) => {
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            println!("charts: {}", names.join(", "));
        }
        Err(e) => eprintln!("ws-bench: no charts: {e:#}"),
    }
    Ok(())
}

/// `--nodes K`.
fn run_cluster(args: &Args, cfg: &BenchConfig, stop: &Arc<AtomicBool>) -> anyhow::Result<()> {
    let nodes = usize::from(args.nodes);
    if args.conns.len() != 1 || args.stacks.len() != 1 || args.stacks[0].ours().is_none() {
        return Err(usage(
            "--nodes takes one N (--conns) and one of our stacks (--stacks kernel or xdp)",
        ));
    }
    if args.conns[0] > nodes as u64 * bench::cluster::MAX_CONNS_PER_NODE {
        return Err(usage(format!(
            "--nodes {nodes}: at most {} connections per node (one client address per node link)",
            bench::cluster::MAX_CONNS_PER_NODE
        )));
    }
    if args.client == Stack::Xdp {
        eprintln!("ws-bench: --nodes uses the kernel load generator for both runs (the cluster's client host has one address per node)");
    }
    let result = bench::run_cluster(cfg, stop, nodes)?;
    print!("{}", bench::cluster::render(&result));
    let path = args.out.join(format!("bench-cluster-{nodes}x-{}.json", args.conns[0]));
    let report = serde_json::json!({
        "schema_version": bench::SCHEMA_VERSION,
        "tool": format!("ws-bench {}", env!("CARGO_PKG_VERSION")),
        "git_commit": bench::git_commit(),
        "generated_utc": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "command_line": std::env::args().collect::<Vec<_>>(),
        "machine": bench::machine(),
        "cluster": result,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("\nJSON report: {}", path.display());
    Ok(())
}

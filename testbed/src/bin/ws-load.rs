//! `ws-load`: WebSocket / long-poll load generator. See `ws-load --help`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{CommandFactory, Parser};
use testbed::load::parent::{self, LoadConfig, ProgressMode, Summary, CONNS_PER_PROC};
use testbed::load::sources::{self, CONNS_PER_SOURCE};
use testbed::load::tls::TlsPlan;
use testbed::load::{kernel_child, xdp_child, ChildPlan, XdpClient, CHILD_PLAN_ENV};
use ws_server::cli::{parse_duration, parse_size, Stack};

/// Open many WebSocket (or long-poll) connections to a server, hold them, and measure.
///
/// Connections are spread over the client source addresses (default: every 198.19.0.0/16 address
/// of this host, as netns-scripts/setup.sh makes them) and over processes. While holding, it
/// records push latency from the {"ts":...} stamp of every server push (HDR histogram), optional
/// heartbeat pings, optional data rounds (echo RTT when the server runs --echo). Prints a summary
/// and writes it as JSON with --json. Every run is bounded: --duration caps it whatever happens.
///
/// --stack xdp runs every connection in one process on the userspace TCP stack over AF_XDP on
/// --iface (no file descriptor per connection, 64,512 ports per source address): it attaches the
/// XDP program there in client mode (everything the server sends comes to us) and detaches it
/// at the end. Needs root. --stack kernel (default) is the real-peer check with Linux TCP.
#[derive(Parser, Debug)]
#[command(name = "ws-load", version, about, long_about, after_help = EXIT_STATUS_HELP)]
struct Args {
    /// Client stack.
    #[arg(long, value_enum, default_value = "kernel")]
    stack: Stack,
    /// Server address and port.
    #[arg(long, default_value = "198.18.0.1:8080")]
    server: SocketAddr,
    /// Connections to open (at most 16,000,000: the userspace stack's limit; on the kernel
    /// stack a process holds at most ~15,000, so millions take many processes).
    #[arg(long, short = 'n', default_value_t = 1000)]
    conns: u64,
    /// New connections per second, all processes together (0: as fast as possible).
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// Handshakes in flight at most, all processes together.
    #[arg(long, default_value_t = 2000)]
    concurrency: usize,
    /// Source addresses: a list or ranges, e.g. 198.19.0.1-198.19.0.17. Default: every address in
    /// 198.19.0.0/16 on this host; without any, the kernel picks (≤ ~64K connections).
    #[arg(long)]
    src: Option<String>,
    /// Load processes. Default: one per 18,000 connections.
    #[arg(long)]
    procs: Option<usize>,
    /// Give up on a connection whose TCP connect + handshake takes longer than this.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Hold the connections this long once connected (ends early with --expect-broadcasts).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    hold: Duration,
    /// Hard limit for the whole run, connecting included. Default: 2 minutes + --hold.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Send a WebSocket ping on every connection this often (heartbeat); 0 = never.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    ping_interval: Duration,
    /// Send a data frame of --payload bytes on every connection this often (data rounds); 0 = never.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    send_interval: Duration,
    /// Size of each data-round frame.
    #[arg(long, default_value = "100", value_parser = parse_size)]
    payload: usize,
    /// Send a device id with every connection: ?id=<prefix><connection number>.
    #[arg(long)]
    ids: bool,
    /// Device id prefix for --ids.
    #[arg(long, default_value = "dev-")]
    id_prefix: String,
    /// With --ids: the server's device key file (ws-server --device-key-file); every connection
    /// presents a token minted for its own id (HS256, valid 24 h) as ?token=, so the handshake
    /// measured is the real one. (Not read from WS_DEVICE_KEY_FILE: that is the server's.)
    #[arg(long, value_name = "PATH")]
    device_key_file: Option<std::path::PathBuf>,
    /// Long-poll mode: GET /poll repeatedly instead of WebSocket.
    #[arg(long)]
    poll: bool,
    /// WebSocket request path.
    #[arg(long, default_value = "/ws")]
    path: String,
    /// Host header (default: the server address).
    #[arg(long)]
    host: Option<String>,
    /// WebSocket over TLS (wss): trust server certificates issued by this CA (a PEM file), and
    /// nothing else. Kernel stack only. For a TLS-terminating proxy in front of a server.
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// With --tls-ca: the name the server's certificate must carry (a DNS name or an IP address;
    /// default: --server's address).
    #[arg(long, requires = "tls_ca")]
    tls_server_name: Option<String>,
    /// Stop holding once every open connection received this many broadcasts.
    #[arg(long, default_value_t = 0)]
    expect_broadcasts: u64,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Progress display.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressMode,
    /// --stack xdp: the client interface (the userspace stack takes over its TCP from --server).
    #[arg(long, required_if_eq("stack", "xdp"))]
    iface: Option<String>,
    /// --stack xdp: the server's MAC address (default: from the kernel's neighbour table).
    #[arg(long)]
    server_mac: Option<String>,
    /// --stack xdp: receive buffer per connection (a larger server message is read in pieces).
    #[arg(long, default_value = "512", value_parser = parse_size)]
    rx_buf: usize,
    /// --stack xdp: send buffer per connection (a client frame must fit in it).
    #[arg(long, default_value = "512", value_parser = parse_size)]
    tx_buf: usize,
    /// --stack xdp: how to attach the XDP program to --iface.
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: xdp_prog::Mode,
    /// Internal: run as one load process (the plan is in the environment).
    #[arg(long, hide = true)]
    child: bool,
}

/// Exit statuses, one per outcome, so scripts can tell a refused command line from a run that
/// did not get every connection (listed in --help).
const EXIT_OK: i32 = 0;
const EXIT_ERROR: i32 = 1;
/// clap's own status for usage errors; our checks of the arguments use it too.
const EXIT_USAGE: i32 = 2;
const EXIT_NOT_ALL_ESTABLISHED: i32 = 3;
const EXIT_INCOMPLETE: i32 = 4;
const EXIT_CORRUPT: i32 = 5;

const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  every connection was established and every load process reported
  1  error: the run could not be done (permissions, interface, no load process reported)
  2  usage error: a bad flag, value or combination of them; nothing was started
  3  not every connection was established (the summary counts the failures by cause)
  4  a load process did not report its final line: the summary is partial
  5  a pattern message arrived with a byte other than the one sent (see \"corrupt\")";

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let code = match run(&args) {
        Ok(code) => code,
        Err(e) => match e.downcast::<clap::Error>() {
            Ok(usage) => {
                let _ = usage.print();
                EXIT_USAGE
            }
            Err(e) => {
                eprintln!("ws-load: error: {e:#}");
                EXIT_ERROR
            }
        },
    };
    std::process::exit(code);
}

/// A usage error, reported as clap reports its own (with the usage line).
fn usage(msg: impl std::fmt::Display) -> anyhow::Error {
    Args::command()
        .error(clap::error::ErrorKind::ValueValidation, msg)
        .into()
}

fn run(args: &Args) -> anyhow::Result<i32> {
    if args.child {
        let plan: ChildPlan =
            serde_json::from_str(&std::env::var(CHILD_PLAN_ENV).context("no plan for this load process")?)
                .context("reading the load process plan")?;
        if plan.xdp.is_some() {
            xdp_child::run(plan)?;
        } else {
            kernel_child::run(plan)?;
        }
        return Ok(EXIT_OK);
    }
    let cfg = config(args)?;
    if cfg.xdp.is_some() && !host::is_root() {
        bail!("--stack xdp needs root (XDP and AF_XDP on --iface)");
    }
    let summary = parent::run(&cfg)?;
    println!("ws-load summary\n{}", parent::render(&summary));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(outcome(&summary))
}

fn outcome(summary: &Summary) -> i32 {
    // A missing report leaves the counts short too: say that first.
    if !summary.complete {
        EXIT_INCOMPLETE
    } else if summary.counters.corrupt > 0 {
        EXIT_CORRUPT
    } else if summary.established < summary.conns_target {
        EXIT_NOT_ALL_ESTABLISHED
    } else {
        EXIT_OK
    }
}

/// The run the arguments ask for; anything wrong with them is a usage error.
fn config(args: &Args) -> anyhow::Result<LoadConfig> {
    let xdp = xdp_client(args)?;
    if args.conns == 0 || args.conns > 16_000_000 {
        return Err(usage("--conns must be between 1 and 16,000,000"));
    }
    if !args.rate.is_finite() || args.rate < 0.0 {
        return Err(usage("--rate must be a number ≥ 0"));
    }
    if args.concurrency == 0 {
        return Err(usage("--concurrency must be at least 1"));
    }
    if !args.path.starts_with('/') {
        return Err(usage("--path must start with '/'"));
    }
    if args.send_interval > Duration::ZERO && args.payload < 21 {
        return Err(usage(
            "--payload must be at least 21 bytes (a marker and the send time) for data rounds",
        ));
    }
    let sources = match &args.src {
        Some(list) => sources::parse_list(list).map_err(usage)?,
        None => sources::local_addresses_in(Ipv4Addr::new(198, 19, 0, 0), 16),
    };
    let procs = procs(args, &sources, xdp.is_some())?;
    let tls = match &args.tls_ca {
        None => None,
        Some(_) if xdp.is_some() => {
            return Err(usage(
                "--tls-ca: TLS runs on the kernel stack only (leave out --stack xdp)",
            ))
        }
        Some(path) => {
            let plan = TlsPlan {
                ca_pem: std::fs::read_to_string(path)
                    .map_err(|e| usage(format!("--tls-ca {}: {e}", path.display())))?,
                server_name: args
                    .tls_server_name
                    .clone()
                    .unwrap_or_else(|| args.server.ip().to_string()),
            };
            // Checked here, so a bad file is a usage error and not a failure in every child.
            testbed::load::tls::client_config(&plan)
                .map_err(|e| usage(format!("--tls-ca {}: {e:#}", path.display())))?;
            Some(plan)
        }
    };
    Ok(LoadConfig {
        tls,
        server: args.server,
        host: args.host.clone().unwrap_or_else(|| args.server.to_string()),
        path: args.path.clone(),
        conns: args.conns,
        rate: args.rate,
        concurrency: args.concurrency,
        sources,
        procs,
        connect_timeout: args.connect_timeout,
        hold: args.hold,
        duration: args.duration.unwrap_or(args.hold + Duration::from_secs(120)),
        ping_interval: args.ping_interval,
        send_interval: args.send_interval,
        payload: args.payload,
        id_prefix: args.ids.then(|| args.id_prefix.clone()),
        device_key: match (&args.device_key_file, args.ids) {
            (None, _) => None,
            (Some(_), false) => return Err(usage("--device-key-file mints tokens for device ids: it needs --ids")),
            (Some(path), true) => {
                let mut key =
                    std::fs::read(path).map_err(|e| usage(format!("--device-key-file {}: {e}", path.display())))?;
                while key.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    key.pop();
                }
                Some(key)
            }
        },
        poll: args.poll,
        expect_broadcasts: args.expect_broadcasts,
        progress: args.progress,
        xdp,
    })
}

/// The userspace-stack client's settings (`--stack xdp`), checked.
fn xdp_client(args: &Args) -> anyhow::Result<Option<XdpClient>> {
    if args.stack == Stack::Kernel {
        return Ok(None);
    }
    if args.procs.is_some_and(|p| p != 1) {
        return Err(usage("--stack xdp runs one process for every connection (no --procs)"));
    }
    if !(128..=1 << 20).contains(&args.rx_buf) || !(128..=1 << 20).contains(&args.tx_buf) {
        return Err(usage("--rx-buf and --tx-buf must be 128 bytes to 1 MiB"));
    }
    let server_mac = match &args.server_mac {
        Some(text) => Some(host::iface::parse_mac(text).ok_or_else(|| {
            usage(format!(
                "--server-mac '{text}' is not a MAC address like 02:00:00:00:00:01"
            ))
        })?),
        None => None,
    };
    Ok(Some(XdpClient {
        iface: args.iface.clone().unwrap_or_default(),
        server_mac,
        rx_buf: args.rx_buf,
        tx_buf: args.tx_buf,
        xdp_mode: args.xdp_mode,
    }))
}

/// Load processes: enough that none holds more files than it may, and ports enough per address.
fn procs(args: &Args, sources: &[Ipv4Addr], xdp: bool) -> anyhow::Result<usize> {
    let per_source = if sources.is_empty() {
        args.conns
    } else {
        args.conns.div_ceil(sources.len() as u64)
    };
    if per_source > CONNS_PER_SOURCE as u64 + 4_000 {
        return Err(usage(format!(
            "{} connections over {} source address(es) is {per_source} per address, more than the ~64K ports one address has; add addresses (netns-scripts/setup.sh --conns {}) or pass --src",
            args.conns,
            sources.len().max(1),
            args.conns
        )));
    }
    if xdp {
        return Ok(1);
    }
    let procs = args
        .procs
        .unwrap_or_else(|| args.conns.div_ceil(CONNS_PER_PROC) as usize)
        .max(1);
    let fd_limit = host::process::hard_fd_limit() as u64;
    if args.conns.div_ceil(procs as u64) + 64 > fd_limit {
        return Err(usage(format!(
            "{} connections over {procs} processes is more than one process may hold ({fd_limit} files); raise --procs",
            args.conns
        )));
    }
    Ok(procs)
}

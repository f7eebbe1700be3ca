//! `ws-server`: the WebSocket push server. See `ws-server --help`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};
use ws_server::cli::{parse_duration, parse_duration_range, parse_origin, parse_size, usage, Stack, UsageError};
use ws_server::config::ServerConfig;

/// Connections one worker process is planned for: the hard limit of 20,000 open files per process,
/// less headroom because SO_REUSEPORT spreads connections by hash, not evenly.
const CONNS_PER_WORKER_PLAN: usize = 15_000;
/// The log an echo server needs: a connection may have `ECHO_ALLOWANCE_MESSAGES` of the largest
/// messages of its own echo waiting, and all of them together a quarter of the log
/// (`core::output::input_paused`), so that broadcasts keep the rest.
fn echo_log_size(args: &Args) -> usize {
    use ws_server::core::{frame::MAX_HEADER, ECHO_ALLOWANCE_MESSAGES};
    if args.echo {
        4 * ECHO_ALLOWANCE_MESSAGES as usize * (args.max_message + MAX_HEADER)
    } else {
        0
    }
}

/// `--log-size`, or its default: 4M, or what echo needs.
fn log_size(args: &Args) -> usize {
    args.log_size.unwrap_or(echo_log_size(args).max(4 << 20))
}

/// WebSocket push server for many long-lived connections (IoT devices, chat, live feeds).
///
/// Serves WebSocket upgrades at GET /ws[?id=DEVICE] and long-polls at GET /poll[?id=DEVICE] on
/// --listen, and an admin endpoint on --admin: GET /stats, /conns, /metrics, POST /broadcast,
/// POST /push?id=DEVICE. Every push message is JSON starting with {"ts":<unix ns>, ...} so clients
/// can measure delivery latency. Stops cleanly on SIGINT/SIGTERM (close frame 1001 to everyone).
/// Log level: RUST_LOG (default info).
///
/// --stack xdp serves the WebSocket port on the userspace TCP stack: it attaches the XDP steering
/// program to --iface (or adopts the one testbed/attach.sh pinned), runs one worker per receive
/// queue with an AF_XDP socket each, holds connections in fixed arena slots (no file descriptor
/// per connection), and detaches on exit. Needs root. The admin endpoint stays on the kernel.
///
/// --cluster nats://HOST:PORT makes it one node of a service of several: broadcasts and pushes
/// posted on any node reach every node's connections (README: "A cluster of nodes").
#[derive(Parser, Debug)]
#[command(
    version = ws_server::metrics::VERSION,
    about,
    long_about,
    after_help = "Exit status: 0 stopped by SIGINT/SIGTERM after closing every connection; 1 could not start, or a worker kept dying past --max-restarts (the reason is printed); 2 usage error (bad or inconsistent options)."
)]
struct Args {
    /// Which TCP stack serves the WebSocket port.
    #[arg(long, value_enum, default_value = "kernel")]
    stack: Stack,
    /// Address and port for WebSocket and long-poll clients.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Address and port of the admin/stats endpoint (keep it off the public interface).
    #[arg(long, default_value = "127.0.0.1:9001")]
    admin: SocketAddr,
    /// Connections the server is sized for; with --stack kernel this picks the worker count.
    /// Default: 100,000, or what --workers can hold when only that is given.
    #[arg(long)]
    max_conns: Option<usize>,
    /// A file holding the HS256 key device tokens are signed with (at least 16 bytes; a trailing
    /// newline is ignored). With it, `/ws?id=DEVICE` and `/poll?id=DEVICE` need a JWT whose `sub`
    /// is DEVICE and whose `exp` has not passed, as `?token=`, `Authorization: Bearer`, or the
    /// subprotocol `bearer.<token>`; otherwise `401` (counted by reason in /stats). Connections
    /// without an id are not affected.
    #[arg(long, value_name = "PATH", env = "WS_DEVICE_KEY_FILE")]
    device_key_file: Option<std::path::PathBuf>,
    /// A file holding the admin endpoint's bearer token (at least 16 bytes; a trailing newline is
    /// ignored): every admin request but /healthz (and /metrics with --admin-metrics-public) must
    /// carry `Authorization: Bearer <token>`, else 401. Required when --admin is not a loopback
    /// address.
    #[arg(long, value_name = "PATH", env = "WS_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<std::path::PathBuf>,
    /// A browser origin allowed to connect (repeatable, e.g. https://app.example.com); with any
    /// given, an upgrade or long-poll whose Origin header is not one of them gets 403 (RFC 6455
    /// §10.2); long-poll answers carry `Access-Control-Allow-Origin` for the pages allowed (any,
    /// as `*`, when none is given). Clients that send no Origin (devices, servers) are not asked.
    #[arg(long, value_name = "ORIGIN", value_parser = parse_origin)]
    allowed_origin: Vec<String>,
    /// Without --device-key-file, accept `?id=DEVICE` on the client's word: anyone may take any
    /// device's id and read its pushes. For benchmarks and demos on private networks; logged as
    /// a warning at start. Without it (and without a key) a request with an id gets 401.
    #[arg(long)]
    insecure_ids: bool,
    /// Refuse connections without a device id (401): only devices, no anonymous broadcast
    /// listeners.
    #[arg(long)]
    devices_only: bool,
    /// Serve /metrics without the admin token (a Prometheus scraper with no secret).
    #[arg(long)]
    admin_metrics_public: bool,
    /// Another name the admin endpoint answers to as Host (repeatable); any Host but these, the
    /// admin address and localhost gets 403 (a DNS-rebinding web page).
    #[arg(long, value_name = "NAME")]
    admin_host: Vec<String>,
    /// Connections one client address may hold at once, per worker process (handshakes
    /// included on --stack xdp); past it a new connection is refused with a TCP reset on either
    /// stack, counted as refused_per_source. Default: no limit.
    #[arg(long, value_name = "N")]
    max_conns_per_source: Option<u32>,
    /// Worker processes (kernel stack). Default: one per 15,000 of --max-conns, since a process may
    /// hold at most the hard open-file limit (20,000 here).
    #[arg(long)]
    workers: Option<usize>,
    /// Broadcast the server time to every connection this often (seed 000 uses 60 s); 0 = never.
    /// In a cluster each node's periodic push reaches every node: give it to one node only.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    push_interval: Duration,
    /// Close connections that sent nothing (no data, no ping) for this long; 0 = never.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// A new connection must send its complete request head within this (408 otherwise); also the
    /// wait for the next request on a keep-alive long-poll connection. 0 = no limit.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Hold each long-poll for a random time in MIN-MAX before answering 200 (seed 002: 30-90).
    #[arg(long, default_value = "30-90", value_parser = parse_duration_range)]
    poll_hold: (Duration, Duration),
    /// Echo data frames back to the client (data-round benchmarks, seed 003).
    #[arg(long)]
    echo: bool,
    /// Largest data frame accepted (bigger ones close the connection with 1009).
    #[arg(long, default_value = "16K", value_parser = parse_size)]
    max_frame: usize,
    /// Largest message, all fragments together.
    #[arg(long, default_value = "64K", value_parser = parse_size)]
    max_message: usize,
    /// Each worker's message log: every outgoing message is stored there once and every
    /// connection writes it from there as its socket takes it. A connection that falls this far
    /// behind (it stopped reading) is closed with 4008 as a slow reader. Allocated once per
    /// worker; resident as far as it has been written. At least 1M (the largest admin message,
    /// JSON-escaped, must fit), at most 1G. Default 4M; with --echo at least 8 times
    /// --max-message, since an echoed message waits there until its client takes it.
    #[arg(long, value_parser = parse_size)]
    log_size: Option<usize>,
    /// A connection with output waiting that takes no byte of it for this long while its
    /// client's receive window is shut (it stopped reading) is closed with 4008 as a slow reader,
    /// even if it has not fallen out of the log: its socket buffers are freed. A client with an
    /// open window is never closed for slowness of the path. Checked in steps of 1/15 of it (at
    /// least 1s). 0: only falling out of the log closes. At most 1h.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    write_timeout: Duration,
    /// A worker that answers none of the supervisor's pings (one a second) for this long is
    /// hung: it is killed (SIGKILL) and restarted, at most one worker per this period (so an
    /// overloaded machine, where every worker answers late, does not lose them all). 0: not
    /// checked. 1s to 1h.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    worker_hang_timeout: Duration,
    /// A worker that dies (crash, kill, OOM) or hangs is restarted on its index at once, the
    /// others and their connections untouched; one that dies again soon is restarted after a
    /// growing pause (up to 2 s). Past this many restarts of one worker within a minute the
    /// server stops with an error. 0: a dead worker stops the server.
    #[arg(long, default_value_t = 5)]
    max_restarts: usize,
    /// No longer used: output waits in the message log (--log-size). Accepted so that existing
    /// command lines keep working.
    #[arg(long, hide = true, value_parser = parse_size)]
    max_pending: Option<usize>,
    /// --stack xdp: the interface whose WebSocket traffic the userspace stack serves (its IPv4
    /// address is the server's; the kernel keeps answering ARP and ICMP for it).
    #[arg(long, required_if_eq("stack", "xdp"))]
    iface: Option<String>,
    /// --stack xdp: receive queues to serve, one worker process per queue.
    #[arg(long, default_value_t = 1)]
    queues: u32,
    /// --stack xdp: how to attach the XDP program.
    #[cfg(feature = "xdp")]
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: xdp_prog::Mode,
    /// --stack xdp: use the program testbed/attach.sh pinned in this directory instead of
    /// attaching our own (one pinned under /run/wsb/bpffs and attached to --iface is found anyway).
    #[arg(long)]
    xdp_pin: Option<std::path::PathBuf>,
    /// --stack xdp: receive buffer per connection, resident only while it holds bytes (an idle
    /// connection's buffer pages go back to the kernel). 512 takes a request head with a device
    /// token (~340 B) in one segment; longer heads and frames borrow a spill buffer.
    #[arg(long, default_value = "512", value_parser = parse_size)]
    rx_buf: usize,
    /// --stack xdp: send buffer per connection. Messages of any size go through it in pieces, from
    /// the message log, as the client's ACKs make room; larger means fewer round trips per
    /// message and more memory per connection.
    #[arg(long, default_value = "256", value_parser = parse_size)]
    tx_buf: usize,
    /// --stack xdp: shared buffers (4 KiB or a max frame each) for request heads and frames larger
    /// than the receive buffer, allocated once.
    #[arg(long, default_value_t = 1024)]
    spill_buffers: usize,
    /// On SIGTERM or SIGINT: /readyz answers 503 at once, new clients are refused (503), and the
    /// open connections are closed with 1001 at this rate (per second, all workers together:
    /// reconnecting clients reach the other nodes spread out, not all in one second), then the
    /// server exits. A second signal closes the rest at once. 0: close every connection at once.
    /// Default: a million in 30 s.
    #[arg(long, value_name = "N[/s]", default_value = "33334/s", value_parser = parse_rate, env = "WS_DRAIN_RATE")]
    drain_rate: f64,
    /// Run as one node of a cluster whose nodes share this NATS server (with JetStream: started
    /// with -js): a broadcast posted on any node reaches every node's connections, a push finds
    /// its device on whichever node holds it, and a device that connects to another node is
    /// closed here (4002). `nats://HOST:PORT` (`nats://user:password@HOST:PORT` for a password).
    /// The node does not start if the broker cannot be reached within
    /// --cluster-connect-timeout. Without it: a single server, no broker.
    #[arg(long, value_name = "URL", env = "WS_CLUSTER")]
    cluster: Option<String>,
    /// --cluster: this node's name, as logs, /stats and push answers say it (unique in the
    /// cluster). Default: HOSTNAME:PORT of --listen.
    #[arg(long, value_name = "NAME", env = "WS_NODE_ID")]
    node_id: Option<String>,
    /// --cluster: the cluster's name: its subjects and stream on the broker (several clusters
    /// may share one broker). 1-32 letters, digits, - or _.
    #[arg(long, value_name = "NAME", default_value = "ws", env = "WS_CLUSTER_NAME")]
    cluster_name: String,
    /// --cluster: how long the node tries to reach the broker at start.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "WS_CLUSTER_CONNECT_TIMEOUT")]
    cluster_connect_timeout: Duration,
    /// Log lines as text, or as JSON objects, one per line (time, level, target, pid, worker,
    /// message, and fields such as event and counts), for a log pipeline. Level: RUST_LOG.
    #[arg(long, value_enum, default_value = "text")]
    log_format: ws_server::logging::LogFormat,
    /// Read settings from this TOML file too: keys are the flags without `--` (`max-conns` or
    /// `max_conns`), e.g. `max_conns = 200000`, `allowed_origin = ["https://a.example"]`,
    /// `echo = true`. A flag given on the command line wins over the environment (`WS_` and the
    /// flag in capitals: `WS_MAX_CONNS`, for every flag), which wins over the file. Unknown keys
    /// are errors. `ws-server check-config [--config PATH] [flags]` checks everything and prints
    /// the effective settings with where each comes from, without starting.
    #[arg(long, value_name = "PATH")]
    config: Option<std::path::PathBuf>,
    /// Internal: run as a worker process of a server.
    #[arg(long, hide = true)]
    worker: bool,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("ws-server: error: {e:#}");
        std::process::exit(if e.is::<UsageError>() { 2 } else { 1 });
    }
}

/// `check-config`: what to print instead of starting (set once the command line is read).
static CHECK_ONLY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The command line, with the environment and the config file under it (`layers.rs`); for
/// `check-config`, the effective settings and their sources are kept in `CHECK_ONLY`.
fn parse_layers() -> anyhow::Result<Args> {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let check_only = argv.get(1).is_some_and(|a| a == "check-config");
    if check_only {
        argv.remove(1);
    }
    let cmd = ws_server::layers::with_env(Args::command());
    let (argv, from_file) = match ws_server::layers::config_path(&argv) {
        Some(path) => {
            let shown = std::path::Path::new(&path).display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|e| usage(format!("--config {shown}: {e}")))?;
            ws_server::layers::with_file(&cmd, argv, &text).map_err(|e| usage(format!("--config {shown}: {e}")))?
        }
        None => (argv, Vec::new()),
    };
    let matches = cmd.clone().try_get_matches_from(&argv).unwrap_or_else(|e| e.exit());
    let args = Args::from_arg_matches(&matches).map_err(|e| usage(e.to_string()))?;
    if check_only {
        let mut out = String::from("# effective settings (value, then where it comes from)\n");
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            let (id, Some(long)) = (arg.get_id().as_str(), arg.get_long()) else {
                continue;
            };
            if matches!(id, "help" | "version") {
                continue;
            }
            let values: Vec<String> = matches
                .get_raw(id)
                .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let source = match matches.value_source(id) {
                _ if from_file.iter().any(|f| f == long) => "config file",
                Some(clap::parser::ValueSource::CommandLine) => "command line",
                Some(clap::parser::ValueSource::EnvVariable) => "environment",
                Some(clap::parser::ValueSource::DefaultValue) => "default",
                _ => "not set",
            };
            let value = match values.len() {
                0 => "-".to_string(),
                _ if id == "cluster" => ws_server::supervisor::cluster::redact_url(&values.join(", ")),
                _ => values.join(", "),
            };
            out.push_str(&format!("{long} = {value}    # {source}\n"));
        }
        let _ = CHECK_ONLY.set(out);
    }
    Ok(args)
}

/// Start the server, or for `check-config` say that it would start and with what.
fn launch(cfg: ServerConfig) -> anyhow::Result<()> {
    if let Some(effective) = CHECK_ONLY.get() {
        print!("{effective}");
        println!(
            "# the configuration is valid ({} stack, {} workers)",
            cfg.stack_name(),
            cfg.workers
        );
        return Ok(());
    }
    ws_server::supervisor::run(cfg)
}

fn run() -> anyhow::Result<()> {
    // A worker takes its settings from its supervisor, not from the command line, the
    // environment or a file (it inherits the environment, which may name settings it lacks).
    if std::env::args_os().nth(1).is_some_and(|a| a == "--worker") {
        let json = std::env::var("WS_LOG_FORMAT").is_ok_and(|f| f == "json");
        ws_server::logging::init(if json {
            ws_server::logging::LogFormat::Json
        } else {
            ws_server::logging::LogFormat::Text
        });
        return ws_server::worker::run();
    }
    let args = parse_layers()?;
    ws_server::logging::init(args.log_format);
    // The workers log alike (they read it from their environment).
    std::env::set_var("WS_LOG_FORMAT", args.log_format.as_str());
    if args.max_message < args.max_frame {
        return Err(usage(format!(
            "--max-message ({}) must be at least --max-frame ({})",
            args.max_message, args.max_frame
        )));
    }
    if args.max_frame < 125 {
        return Err(usage("--max-frame must be at least 125 bytes"));
    }
    let (log_size, echo_needs) = (log_size(&args), echo_log_size(&args));
    if !(1 << 20..=1 << 30).contains(&log_size) {
        return Err(usage(format!("--log-size must be 1M to 1G (here {log_size} bytes)")));
    }
    if log_size < echo_needs {
        return Err(usage(format!(
            "with --echo, --log-size must be at least 8 times --max-message ({echo_needs} bytes): an echoed message waits in the log until its client takes it (a connection may have two waiting, all of them together a quarter of the log), and one that falls out closes its client as a slow reader"
        )));
    }
    if !args.write_timeout.is_zero()
        && !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&args.write_timeout)
    {
        return Err(usage("--write-timeout must be 0 (off) or 1s to 1h"));
    }
    if !args.worker_hang_timeout.is_zero()
        && !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&args.worker_hang_timeout)
    {
        return Err(usage("--worker-hang-timeout must be 0 (off) or 1s to 1h"));
    }
    if args.max_restarts > 1000 {
        return Err(usage("--max-restarts must be at most 1000"));
    }
    if args.allowed_origin.len() > 1000 {
        return Err(usage(
            "at most 1000 --allowed-origin (a page's origin is matched by a scan)",
        ));
    }
    if args.max_pending.is_some() {
        log::warn!("--max-pending is no longer used: output waits in the message log (--log-size)");
    }
    if args.stack == Stack::Xdp {
        return run_xdp(args);
    }
    let fd_limit = host::process::hard_fd_limit();
    let per_worker_capacity = fd_limit.saturating_sub(64).max(1);
    if args.max_conns_per_source == Some(0) {
        return Err(usage(
            "--max-conns-per-source must be at least 1 (leave it out for no limit)",
        ));
    }
    let (workers, max_conns) = match (args.workers, args.max_conns) {
        (_, Some(0)) | (Some(0), _) => return Err(usage("--max-conns and --workers must be at least 1")),
        (Some(w), None) => (w, w * per_worker_capacity),
        (w, m) => {
            let m = m.unwrap_or(100_000);
            (w.unwrap_or_else(|| m.div_ceil(CONNS_PER_WORKER_PLAN)).max(1), m)
        }
    };
    if max_conns > workers * per_worker_capacity {
        return Err(usage(format!(
            "--max-conns {max_conns} needs at least {} workers: one process may hold at most {fd_limit} files here (pass more --workers, or leave it out)",
            max_conns.div_ceil(per_worker_capacity),
        )));
    }
    if workers > 256 {
        return Err(usage(format!(
            "--workers {workers} is more than this tool supports (256)"
        )));
    }
    let mut cfg = server_config(&args, workers, per_worker_capacity.min(max_conns));
    cfg.device_jwt_key = device_key(&args)?;
    cfg.admin_access = admin_access(&args)?;
    cfg.cluster = cluster_options(&args)?;
    launch(cfg)
}

/// The settings both stacks share, from the command line.
/// Who may use the admin endpoint; a non-loopback --admin without a token does not start.
fn admin_access(args: &Args) -> anyhow::Result<ws_server::admin::AdminAccess> {
    let token = match &args.admin_token_file {
        None => None,
        Some(path) => {
            let mut t =
                std::fs::read(path).map_err(|e| usage(format!("--admin-token-file {}: {e}", path.display())))?;
            // The same rule as the device key: a final line break is not part of it.
            while t.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                t.pop();
            }
            if t.len() < 16 {
                return Err(usage(format!(
                    "--admin-token-file {}: the token is {} bytes: at least 16 are needed",
                    path.display(),
                    t.len()
                )));
            }
            Some(ws_server::secret::Secret(t))
        }
    };
    if token.is_none() && !args.admin.ip().is_loopback() {
        return Err(usage(format!(
            "--admin {} is not a loopback address: anyone who reaches it could push and broadcast. Give it a token (--admin-token-file), or keep it on 127.0.0.1",
            args.admin
        )));
    }
    Ok(ws_server::admin::AdminAccess {
        token,
        metrics_public: args.admin_metrics_public,
        hosts: ws_server::admin::AdminAccess::hosts_for(args.admin, &args.admin_host),
    })
}

/// The device key from `--device-key-file`, checked now so that a bad one stops the start.
fn device_key(args: &Args) -> anyhow::Result<Option<ws_server::secret::Secret>> {
    let Some(path) = &args.device_key_file else {
        return Ok(None);
    };
    let mut key = std::fs::read(path).map_err(|e| usage(format!("--device-key-file {}: {e}", path.display())))?;
    while key.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        key.pop();
    }
    ws_server::core::auth::DeviceAuth::hs256(&key)
        .map_err(|e| usage(format!("--device-key-file {}: {e}", path.display())))?;
    Ok(Some(ws_server::secret::Secret(key)))
}

fn server_config(args: &Args, workers: usize, max_conns_per_worker: usize) -> ServerConfig {
    ServerConfig {
        listen: args.listen,
        admin: args.admin,
        workers,
        max_conns_per_worker,
        push_interval: (!args.push_interval.is_zero()).then_some(args.push_interval),
        idle_timeout: args.idle_timeout,
        request_timeout: args.request_timeout,
        poll_hold: args.poll_hold,
        echo: args.echo,
        max_frame: args.max_frame,
        max_message: args.max_message,
        log_size: log_size(args),
        write_timeout: args.write_timeout,
        hang_timeout: (!args.worker_hang_timeout.is_zero()).then_some(args.worker_hang_timeout),
        max_restarts: args.max_restarts,
        max_conns_per_source: args.max_conns_per_source,
        device_jwt_key: None,
        allowed_origins: args.allowed_origin.clone(),
        insecure_ids: args.insecure_ids,
        anonymous: !args.devices_only,
        admin_access: ws_server::admin::AdminAccess::default(),
        drain_rate: args.drain_rate,
        cluster: None,
        #[cfg(feature = "xdp")]
        xdp: None,
    }
}

/// `2000/s` or `2000`: connections per second.
fn parse_rate(text: &str) -> Result<f64, String> {
    let n = text.strip_suffix("/s").unwrap_or(text);
    match n.parse::<f64>() {
        Ok(r) if r.is_finite() && (0.0..=1e9).contains(&r) => Ok(r),
        _ => Err(format!(
            "'{text}' is not a rate (connections per second, e.g. 2000/s; 0: at once)"
        )),
    }
}

/// This machine's name (for a node's default name).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// `--cluster` and its settings, checked.
fn cluster_options(args: &Args) -> anyhow::Result<Option<ws_server::supervisor::cluster::ClusterOptions>> {
    let Some(url) = &args.cluster else {
        for (given, flag) in [(args.node_id.is_some(), "--node-id")] {
            if given {
                return Err(usage(format!("{flag} is for --cluster")));
            }
        }
        return Ok(None);
    };
    let rest = url.strip_prefix("nats://").ok_or_else(|| {
        usage(format!(
            "--cluster {}: give the broker as nats://HOST:PORT",
            ws_server::supervisor::cluster::redact_url(url)
        ))
    })?;
    let host_port = rest.rsplit('@').next().unwrap_or(rest);
    if host_port.is_empty() || host_port.contains('/') {
        return Err(usage("--cluster: give the broker as nats://HOST:PORT"));
    }
    if !ws_server::supervisor::cluster::valid_cluster_name(&args.cluster_name) {
        return Err(usage(format!(
            "--cluster-name {:?}: use 1-32 letters, digits, - or _",
            args.cluster_name
        )));
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&args.cluster_connect_timeout) {
        return Err(usage("--cluster-connect-timeout must be 1s to 10min"));
    }
    let node = match &args.node_id {
        Some(node) => node.clone(),
        None => format!("{}:{}", hostname(), args.listen.port()),
    };
    if node.is_empty() || node.len() > 64 || node.chars().any(|c| c.is_control()) {
        return Err(usage("--node-id must be 1-64 printable characters"));
    }
    Ok(Some(ws_server::supervisor::cluster::ClusterOptions {
        url: url.clone(),
        node,
        name: args.cluster_name.clone(),
        connect_timeout: args.cluster_connect_timeout,
    }))
}

#[cfg(not(feature = "xdp"))]
fn run_xdp(_args: Args) -> anyhow::Result<()> {
    Err(usage(
        "--stack xdp is not in this build (built without the `xdp` feature); rebuild with default features",
    ))
}

#[cfg(feature = "xdp")]
fn run_xdp(args: Args) -> anyhow::Result<()> {
    if !(1..=64).contains(&args.queues) {
        return Err(usage("--queues must be 1 to 64"));
    }
    if !(64..=1 << 20).contains(&args.rx_buf) {
        return Err(usage("--rx-buf must be 64 bytes to 1 MiB"));
    }
    if !(192..=1 << 20).contains(&args.tx_buf) {
        return Err(usage(
            "--tx-buf must be 192 bytes to 1 MiB (an upgrade answer is 129 bytes or more)",
        ));
    }
    let max_conns = args.max_conns.unwrap_or(100_000);
    if max_conns == 0 || max_conns > 16 << 20 {
        return Err(usage("--max-conns must be 1 to 16,777,216"));
    }
    if args.workers.is_some() {
        return Err(usage(
            "--workers is for --stack kernel; --stack xdp runs one worker per --queues",
        ));
    }
    // What the xdp stack needs, by name (root has them all): loading and attaching the XDP
    // program (CAP_BPF, CAP_NET_ADMIN; CAP_PERFMON too: without it the verifier refuses the
    // program's pointer arithmetic, measured on Linux 6.18), the AF_XDP sockets (CAP_NET_RAW),
    // and the locked memory of their buffers (CAP_IPC_LOCK, or an unlimited RLIMIT_MEMLOCK).
    // The workers get the XSKMAP's descriptor from the supervisor: no CAP_SYS_ADMIN.
    use host::caps;
    let mut wanted = vec![caps::NET_ADMIN, caps::NET_RAW, caps::BPF, caps::PERFMON];
    if !host::process::memlock_unlimited() {
        wanted.push(caps::IPC_LOCK);
    }
    if args.xdp_mode == xdp_prog::Mode::External {
        // A program another loader attached is opened by its id (and its maps by theirs).
        wanted.push(caps::SYS_ADMIN);
        if args.xdp_pin.is_some() {
            return Err(usage(
                "--xdp-pin adopts a program testbed/attach.sh pinned; --xdp-mode external one another loader attached: give one of them",
            ));
        }
    }
    let missing = caps::missing(caps::effective(), &wanted);
    if !missing.is_empty() && CHECK_ONLY.get().is_none() {
        let names: Vec<&str> = missing.iter().map(|c| c.name).collect();
        anyhow::bail!(
            "--stack xdp needs {} (missing: {}); run it as root, or give its user these capabilities (systemd: AmbientCapabilities=; setpriv --ambient-caps)",
            wanted.iter().map(|c| c.name).collect::<Vec<_>>().join(", "),
            names.join(", ")
        );
    }
    let queues = args.queues as usize;
    let xdp = ws_server::config::XdpOptions {
        iface: args.iface.clone().unwrap_or_default(),
        queues: args.queues,
        mode: args.xdp_mode,
        pin: args.xdp_pin.clone(),
        rx_buf: args.rx_buf,
        tx_buf: args.tx_buf,
        spill_buffers: args.spill_buffers,
    };
    let cfg = ServerConfig {
        xdp: Some(xdp),
        device_jwt_key: device_key(&args)?,
        admin_access: admin_access(&args)?,
        cluster: cluster_options(&args)?,
        ..server_config(&args, queues, max_conns.div_ceil(queues))
    };
    launch(cfg)
}

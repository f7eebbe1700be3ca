//! The steps of one stack's run: start the server and the load generator in their namespaces,
//! wait for the connections, broadcast; and the server's admin endpoint, read back through the
//! server's own report types.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ws_server::admin::{BroadcastResult, ConnsReport, Report};

use super::{stack_name, BenchConfig, BroadcastRun, Stack};
use crate::load::pattern;
use testkit::http::http_in_netns;
use testkit::{sibling_binary, wait_for, ChildGuard, Netns};

const SERVER: &str = "198.18.0.1:8080";
const ADMIN: &str = "127.0.0.1:9001";

pub(super) fn check_stop(stop: &AtomicBool) -> anyhow::Result<()> {
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// The server's admin endpoint, from inside its namespace.
pub(super) struct Admin<'a> {
    netns: &'a Netns,
    addr: SocketAddr,
}

impl<'a> Admin<'a> {
    pub(super) fn new(netns: &'a Netns) -> anyhow::Result<Admin<'a>> {
        Ok(Admin {
            netns,
            addr: ADMIN.parse()?,
        })
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Option<T> {
        let (status, body) = http_in_netns(&self.netns.srv, "GET", self.addr, path, b"").ok()?;
        if status != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    /// `/stats`.
    pub(super) fn report(&self) -> Option<Report> {
        self.get("/stats")
    }

    /// Connections held now (`/conns`).
    pub(super) fn conns(&self) -> Option<u64> {
        self.get::<ConnsReport>("/conns").map(|c| c.conns)
    }

    /// `POST /broadcast` of `body` (empty: the server time).
    fn broadcast(&self, body: &[u8]) -> anyhow::Result<BroadcastResult> {
        let (status, body) = http_in_netns(&self.netns.srv, "POST", self.addr, "/broadcast", body)?;
        if status != 200 {
            bail!("the broadcast failed: {status} {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("reading the broadcast's answer: {body}"))
    }

    /// Wait for every worker to answer; returns how many there are.
    pub(super) fn wait_up(&self, cfg: &BenchConfig, stack: Stack) -> anyhow::Result<usize> {
        // Dozens of worker processes may take a while to start on two busy cores.
        match wait_for(Duration::from_secs(90), Duration::from_millis(200), || self.report()) {
            Some(report) => Ok(report.workers),
            None => bail!(
                "the server did not come up; see {}",
                cfg.out_dir.join(format!("{}-server.log", stack_name(stack))).display()
            ),
        }
    }
}

/// The device key of a run with device tokens: 32 random bytes in `<out>/device.key` (hex).
fn device_key(cfg: &BenchConfig) -> anyhow::Result<PathBuf> {
    let path = cfg.out_dir.join("device.key");
    if !path.exists() {
        let key: String = (0..32).map(|_| format!("{:02x}", fastrand::u8(..))).collect();
        std::fs::write(&path, key)?;
    }
    Ok(path)
}

/// ws-server in the server namespace, logging to `<out>/<stack>-server.log`.
pub(super) fn start_server(cfg: &BenchConfig, netns: &Netns, stack: Stack) -> anyhow::Result<ChildGuard> {
    let name = stack_name(stack);
    let log = std::fs::File::create(cfg.out_dir.join(format!("{name}-server.log")))?;
    let mut cmd = netns.command(&netns.srv, &sibling_binary("ws-server")?);
    // The userspace stack builds a socket for every slot of --max-conns at start (that memory is
    // in the all-in figure), so it is sized for N plus a little room for retries.
    let capacity = match stack {
        Stack::Xdp => cfg.conns + 1024,
        Stack::Kernel => cfg.conns,
    };
    cmd.args(["--stack", name, "--listen", SERVER, "--admin", ADMIN])
        .args(["--max-conns", &capacity.to_string()])
        .args(["--push-interval", "0", "--idle-timeout", "0"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    match stack {
        Stack::Xdp => {
            cmd.args(["--iface", &netns.dev()]);
        }
        Stack::Kernel => {
            if let Some(w) = cfg.workers {
                cmd.args(["--workers", &w.to_string()]);
            }
        }
    }
    if cfg.device_tokens {
        cmd.arg("--device-key-file").arg(device_key(cfg)?);
    }
    ChildGuard::spawn("ws-server", cmd)
}

/// ws-load in the client namespace, holding the connections until every one got every broadcast.
/// Returns it and where its JSON summary will be.
pub(super) fn start_load(cfg: &BenchConfig, netns: &Netns, stack: Stack) -> anyhow::Result<(ChildGuard, PathBuf)> {
    let name = stack_name(stack);
    let json = cfg.out_dir.join(format!("{name}-load.json"));
    let _ = std::fs::remove_file(&json);
    let mut cmd = netns.command(&netns.cli, &sibling_binary("ws-load")?);
    cmd.args(["--stack", name, "--server", SERVER])
        .args(["--conns", &cfg.conns.to_string(), "--rate", &cfg.rate.to_string()])
        .args([
            "--hold",
            &format!("{}s", hold_budget(cfg).as_secs()),
            "--expect-broadcasts",
            &cfg.broadcasts.to_string(),
        ])
        .args(["--progress", "lines"])
        .arg("--json")
        .arg(&json)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(cfg.out_dir.join(format!("{name}-load.log")))?);
    if cfg.device_tokens {
        cmd.arg("--ids").arg("--device-key-file").arg(device_key(cfg)?);
    }
    match stack {
        Stack::Xdp => {
            cmd.args(["--iface", &netns.client_dev()]);
        }
        Stack::Kernel => {
            if let Some(p) = cfg.load_procs {
                cmd.args(["--procs", &p.to_string()]);
            }
        }
    }
    eprintln!("[{name}] opening {} connections at {}/s", cfg.conns, cfg.rate);
    Ok((ChildGuard::spawn("ws-load", cmd)?, json))
}

/// Wait until the server holds every connection (or the load generator gave up); returns how
/// many it holds.
pub(super) fn wait_held(
    cfg: &BenchConfig,
    stop: &AtomicBool,
    admin: &Admin,
    load: &mut ChildGuard,
    notes: &mut Vec<String>,
) -> anyhow::Result<u64> {
    let connect_budget = Duration::from_secs_f64(60.0 + 3.0 * cfg.conns as f64 / cfg.rate.max(1000.0));
    let deadline = Instant::now() + connect_budget;
    let mut held = 0;
    while Instant::now() < deadline {
        check_stop(stop)?;
        held = admin.conns().unwrap_or(held);
        if held >= cfg.conns || !load.running() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    if held < cfg.conns {
        notes.push(format!(
            "the server held {held} of {} connections when measured",
            cfg.conns
        ));
    }
    Ok(held)
}

/// How long one broadcast may take to leave the server before the benchmark says so and moves on:
/// a minute, plus its bytes to every connection at 20 MB/s (far slower than either stack).
fn output_budget(cfg: &BenchConfig) -> Duration {
    let frame = cfg.message_size.max(100) as f64 + 100.0;
    Duration::from_secs_f64(60.0 + cfg.conns as f64 * frame / 20e6)
}

/// How long the load generator holds the connections: time to connect, then every broadcast's
/// budget (it ends earlier, once every connection got every broadcast).
fn hold_budget(cfg: &BenchConfig) -> Duration {
    let connect = Duration::from_secs_f64(120.0 + 3.0 * cfg.conns as f64 / cfg.rate.max(1000.0));
    connect + output_budget(cfg) * cfg.broadcasts + Duration::from_secs(600)
}

/// `cfg.broadcasts` broadcasts, each measured on its own: the next one starts once the server
/// says every connection's output has been written (for xdp: sent on the link).
pub(super) fn broadcasts(
    cfg: &BenchConfig,
    stop: &AtomicBool,
    admin: &Admin,
    stack: Stack,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<BroadcastRun>> {
    let name = stack_name(stack);
    let body = match cfg.message_size {
        0 => String::new(),
        n => pattern::text(n),
    };
    let mut runs = Vec::new();
    for i in 0..cfg.broadcasts {
        check_stop(stop)?;
        let started = Instant::now();
        let b = admin
            .broadcast(body.as_bytes())
            .with_context(|| format!("broadcast {}", i + 1))?;
        let mut run = BroadcastRun {
            handed_to_link_ms: None,
            written_ms: None,
            seq: b.seq,
            websockets: b.websockets,
            payload_bytes: b.payload_bytes,
            fanout_ms: b.fanout_ms,
            elapsed_ms: b.elapsed_ms,
        };
        eprintln!(
            "[{name}] broadcast {} ({} bytes): {} connections, fan-out {:.1} ms",
            i + 1,
            run.payload_bytes,
            run.websockets,
            run.fanout_ms
        );
        let budget = output_budget(cfg);
        match wait_output(admin, stack, started, budget, stop) {
            _ if stop.load(Ordering::Relaxed) => bail!("interrupted"),
            Some((written_ms, on_link_ms)) => {
                run.written_ms = Some(written_ms);
                run.handed_to_link_ms = on_link_ms;
            }
            None => notes.push(format!("broadcast {}: output still waiting after {budget:?}", i + 1)),
        }
        // The last bytes reach the clients (and the clients' counters) a moment later.
        std::thread::sleep(Duration::from_millis(1000));
        runs.push(run);
    }
    Ok(runs)
}

/// Wait (`budget` at most) until the server has written every connection's output: (ms from
/// `started`, as polled every 50 ms; for xdp also the slowest worker's own time from the
/// broadcast until its last frame was on the link).
fn wait_output(
    admin: &Admin,
    stack: Stack,
    started: Instant,
    budget: Duration,
    stop: &AtomicBool,
) -> Option<(f64, Option<f64>)> {
    wait_for(budget, Duration::from_millis(50), || {
        if stop.load(Ordering::Relaxed) {
            return Some((0.0, None)); // the caller sees the flag
        }
        let report = admin.report()?;
        let written_ms = started.elapsed().as_secs_f64() * 1e3;
        match stack {
            Stack::Kernel => (report.output_waiting == 0).then_some((written_ms, None)),
            Stack::Xdp => {
                let xdp: Vec<_> = report.per_worker.iter().filter_map(|w| w.xdp.as_ref()).collect();
                let pending: u64 = xdp.iter().map(|x| x.tx_pending_conns).sum();
                let on_link = xdp.iter().filter_map(|x| x.last_broadcast_tx_ms).fold(0.0, f64::max);
                (pending == 0 && !xdp.is_empty()).then_some((written_ms, Some(on_link)))
            }
        }
    })
}

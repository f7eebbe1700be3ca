//! The steps of one server's run: start the server and the load generator in their namespaces,
//! wait for the connections, broadcast; and the server's admin endpoints, read back through our
//! server's own report types (a peer answers `/conns` and `/broadcast` in the same shapes).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ws_server::admin::{BroadcastResult, ConnsReport, Report};

use super::{client_name, BenchConfig, BroadcastRun, Server, Stack};
use super::{peers, tls_proxy};
use crate::load::pattern;
use crate::measure::process_tree;
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

/// A server under test: its processes (ours: one supervisor and its workers; a peer: one or more
/// processes sharing the port) and their admin endpoints.
pub(super) struct Running {
    procs: Vec<ChildGuard>,
    admins: Vec<SocketAddr>,
    ours: bool,
}

impl Running {
    /// The first process (for the namespace it runs in).
    pub(super) fn pid(&self) -> u32 {
        self.procs[0].pid()
    }

    /// Every process of the server, children included: the memory and CPU measured.
    pub(super) fn pids(&self) -> Vec<u32> {
        self.procs.iter().flat_map(|p| process_tree(p.pid())).collect()
    }

    pub(super) fn stop(&mut self, grace: Duration) {
        for p in &mut self.procs {
            p.stop(grace);
        }
    }
}

/// The server's admin endpoints, from inside its namespace.
pub(super) struct Admin<'a> {
    netns: &'a Netns,
    addrs: Vec<SocketAddr>,
    ours: bool,
}

impl<'a> Admin<'a> {
    pub(super) fn new(netns: &'a Netns, server: &Running) -> anyhow::Result<Admin<'a>> {
        Ok(Admin {
            netns,
            addrs: server.admins.clone(),
            ours: server.ours,
        })
    }

    fn get<T: serde::de::DeserializeOwned>(&self, addr: SocketAddr, path: &str) -> Option<T> {
        let (status, body) = http_in_netns(&self.netns.srv, "GET", addr, path, b"").ok()?;
        if status != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    /// Our server's `/stats` (a peer has none).
    pub(super) fn report(&self) -> Option<Report> {
        self.ours.then(|| self.get(self.addrs[0], "/stats")).flatten()
    }

    /// Connections held now (`/conns`, summed over the server's processes).
    pub(super) fn conns(&self) -> Option<u64> {
        self.addrs
            .iter()
            .map(|&a| self.get::<ConnsReport>(a, "/conns").map(|c| c.conns))
            .sum()
    }

    /// `POST /broadcast` of `body` (empty: the server time) to every process; their answers
    /// summed (connections) or the slowest taken (times). A `504` that still says what was
    /// queued (our server: some workers had not finished handing it out when the admin stopped
    /// waiting) is a result with a note, not the end of the benchmark.
    fn broadcast(&self, body: &[u8], notes: &mut Vec<String>) -> anyhow::Result<BroadcastResult> {
        let mut total: Option<BroadcastResult> = None;
        for &addr in &self.addrs {
            let (status, answer) = http_in_netns(&self.netns.srv, "POST", addr, "/broadcast", body)?;
            let parsed = serde_json::from_str::<BroadcastResult>(&answer);
            let b = match (status, parsed) {
                (200, Ok(b)) => b,
                (504, Ok(b)) => {
                    notes.push(format!(
                        "a broadcast was answered 504 after {:.0} ms: workers {:?} had not finished handing it out",
                        b.elapsed_ms, b.workers_missing
                    ));
                    b
                }
                // No account of it (the admin gave up waiting): the broadcast may still be going
                // out, and the clients' counts will tell; the expectation is every connection.
                (status, _) if status >= 500 => {
                    notes.push(format!(
                        "a broadcast was answered {status} ({}): counted as sent to every connection held",
                        answer.trim()
                    ));
                    let held = self.get::<ConnsReport>(addr, "/conns").map_or(0, |c| c.conns);
                    BroadcastResult {
                        seq: 0,
                        queued: held,
                        websockets: held,
                        polls: 0,
                        payload_bytes: 0,
                        fanout_ms: f64::NAN,
                        elapsed_ms: f64::NAN,
                        workers_missing: vec![],
                    }
                }
                (status, _) => bail!("the broadcast failed at {addr}: {status} {answer}"),
            };
            total = Some(match total {
                None => b,
                Some(t) => BroadcastResult {
                    queued: t.queued + b.queued,
                    websockets: t.websockets + b.websockets,
                    polls: t.polls + b.polls,
                    fanout_ms: t.fanout_ms.max(b.fanout_ms),
                    elapsed_ms: t.elapsed_ms.max(b.elapsed_ms),
                    ..t
                },
            });
        }
        total.context("the server has no admin endpoint")
    }

    /// Wait for the server to answer: ours, every worker; a peer, every process. Returns how
    /// many workers or processes there are.
    pub(super) fn wait_up(&self, cfg: &BenchConfig, server: Server) -> anyhow::Result<usize> {
        // Dozens of worker processes may take a while to start on two busy cores.
        let up = wait_for(Duration::from_secs(90), Duration::from_millis(200), || {
            match self.ours {
                true => self.report().map(|r| r.workers),
                false => self.conns().map(|_| self.addrs.len()),
            }
        });
        match up {
            Some(n) => Ok(n),
            None => bail!(
                "the server did not come up; see {}",
                cfg.out_dir.join(format!("{}-server.log", server.name())).display()
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

/// The server in the server namespace, logging to `<out>/<server>-server.log`: ws-server, or a
/// peer (built first, if it has not been).
pub(super) fn start_server(cfg: &BenchConfig, netns: &Netns, server: Server) -> anyhow::Result<Running> {
    let Some(stack) = server.ours() else {
        let (procs, admins) = peers::start(cfg, netns, server, SERVER)?;
        return Ok(Running {
            procs,
            admins,
            ours: false,
        });
    };
    let name = server.name();
    let log = std::fs::File::create(cfg.out_dir.join(format!("{name}-server.log")))?;
    let mut cmd = netns.command(&netns.srv, &sibling_binary("ws-server")?);
    // The userspace stack builds a socket for every slot of --max-conns at start (that memory is
    // in the all-in figure), so it is sized for N plus a little room for retries.
    let capacity = match stack {
        Stack::Xdp => cfg.conns + 1024,
        Stack::Kernel => cfg.conns,
    };
    cmd.args(["--stack", client_name(stack), "--listen", SERVER, "--admin", ADMIN])
        .args(["--max-conns", &capacity.to_string()])
        // Stopped at once when measured (a drain would outlast the stop's grace at large N).
        .args(["--push-interval", "0", "--idle-timeout", "0", "--drain-rate", "0"])
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
    if cfg.data_rounds.is_some() {
        cmd.arg("--echo");
    }
    let mut procs = vec![ChildGuard::spawn("ws-server", cmd)?];
    if server == Server::KernelTls {
        procs.extend(tls_proxy::start(cfg, netns, SERVER)?);
    }
    Ok(Running {
        procs,
        admins: vec![ADMIN.parse()?],
        ours: true,
    })
}

/// ws-load (on `cfg.client`'s stack, whatever the server) in the client namespace, holding the
/// connections until every one got every broadcast. Returns it and where its JSON summary will be.
pub(super) fn start_load(cfg: &BenchConfig, netns: &Netns, server: Server) -> anyhow::Result<(ChildGuard, PathBuf)> {
    let name = server.name();
    let json = cfg.out_dir.join(format!("{name}-load.json"));
    let _ = std::fs::remove_file(&json);
    let mut cmd = netns.command(&netns.cli, &sibling_binary("ws-load")?);
    let target = if server == Server::KernelTls {
        cmd.arg("--tls-ca").arg(tls_proxy::ca_file(cfg));
        tls_proxy::LISTEN
    } else {
        SERVER
    };
    cmd.args(["--stack", client_name(cfg.client), "--server", target])
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
    if let Some((payload, interval)) = cfg.data_rounds {
        cmd.args(["--payload", &payload.to_string()])
            .args(["--send-interval", &format!("{}ms", interval.as_millis())]);
    }
    match cfg.client {
        Stack::Xdp => {
            cmd.args(["--iface", &netns.client_dev()]);
            if let Some(rx) = cfg.load_rx_buf {
                cmd.args(["--rx-buf", &rx.to_string()]);
            }
        }
        Stack::Kernel => {
            if let Some(p) = cfg.load_procs {
                cmd.args(["--procs", &p.to_string()]);
            }
        }
    }
    eprintln!(
        "[{name}] opening {} connections at {}/s from the {} load generator",
        cfg.conns,
        cfg.rate,
        client_name(cfg.client)
    );
    Ok((ChildGuard::spawn("ws-load", cmd)?, json))
}

/// Wait until the server holds every connection (or the load generator gave up); returns how
/// many it holds.
/// The held count stays put this long: the rest of the connections are not coming.
const STALLED: Duration = Duration::from_secs(20);

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
    // A count that stops short and stays (connections that failed: the load generator reports
    // them) is measured as it is, without waiting out the whole budget.
    let mut moved_at = Instant::now();
    while Instant::now() < deadline {
        check_stop(stop)?;
        let now_held = admin.conns().unwrap_or(held);
        if now_held != held {
            moved_at = Instant::now();
        }
        held = now_held;
        if held >= cfg.conns || !load.running() || (held > 0 && moved_at.elapsed() >= STALLED) {
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
    server: Server,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<BroadcastRun>> {
    let name = server.name();
    let body = match cfg.message_size {
        0 => String::new(),
        n => pattern::text(n),
    };
    let mut runs = Vec::new();
    for i in 0..cfg.broadcasts {
        check_stop(stop)?;
        let started = Instant::now();
        let b = admin
            .broadcast(body.as_bytes(), notes)
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
        let Some(stack) = server.ours() else {
            // A peer does not say when its output has left: the clients' latencies tell.
            std::thread::sleep(Duration::from_millis(1000));
            runs.push(run);
            continue;
        };
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

//! The parent of a load run: splits the connections over child processes, shows progress, merges
//! their reports, prints the summary and writes it as JSON.

use std::io::{BufRead, BufReader, IsTerminal};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::hist::{self, LatencySummary};
use super::{ChildCounters, ChildFinal, ChildLine, ChildPlan, CHILD_PLAN_ENV};

/// Connections one child process is planned for (the hard limit is 20,000 open files).
pub const CONNS_PER_PROC: u64 = 18_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A progress bar on a terminal, plain lines otherwise.
    Auto,
    Bar,
    Lines,
    Off,
}

/// Everything a run needs (the CLI fills it).
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub server: SocketAddr,
    pub host: String,
    pub path: String,
    pub conns: u64,
    pub rate: f64,
    pub concurrency: usize,
    pub sources: Vec<Ipv4Addr>,
    pub procs: usize,
    pub connect_timeout: Duration,
    pub hold: Duration,
    pub duration: Duration,
    pub ping_interval: Duration,
    pub send_interval: Duration,
    pub payload: usize,
    pub id_prefix: Option<String>,
    /// Mint a token per device id with this key (`--device-key-file`).
    pub device_key: Option<Vec<u8>>,
    pub poll: bool,
    pub expect_broadcasts: u64,
    pub progress: ProgressMode,
    /// WebSocket over TLS (`--tls-ca`), kernel stack only.
    pub tls: Option<super::tls::TlsPlan>,
    /// Userspace-stack client (`--stack xdp`): one process holds every connection.
    pub xdp: Option<super::XdpClient>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub stack: String,
    pub server: String,
    pub mode: String,
    pub conns_target: u64,
    pub procs: usize,
    pub sources: usize,
    pub established: u64,
    pub failed: u64,
    /// Established connections per second, first attempt to last established.
    pub connect_rate_per_s: f64,
    pub connect_wall_s: f64,
    /// Server messages received per second, from the first to the last one.
    pub messages_per_s: f64,
    pub counters: ChildCounters,
    pub connect_latency: LatencySummary,
    pub push_latency: LatencySummary,
    pub echo_rtt: LatencySummary,
    /// The raw histograms (µs, HdrHistogram V2, base64), so that anyone can redraw them.
    #[serde(default)]
    pub histograms: RawHistograms,
    /// Device ids (or connection numbers without --ids) that got a targeted push; at most 1,000
    /// per process are listed.
    pub targeted_devices: Vec<String>,
    pub cpu_user_s: f64,
    pub cpu_sys_s: f64,
    pub max_proc_rss_bytes: u64,
    /// The userspace-stack client's link and TCP counters (`--stack xdp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp_client: Option<super::XdpClientCounters>,
    pub wall_s: f64,
    /// Every child process reported its final line.
    pub complete: bool,
}

/// A run's latency histograms in microseconds, each HdrHistogram's V2 format in base64
/// (`hist::decode` reads one back).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RawHistograms {
    pub connect_latency_us: String,
    pub push_latency_us: String,
    pub echo_rtt_us: String,
}

enum Msg {
    Line(usize, ChildLine),
    Exit,
}

/// Split `conns` over processes: contiguous ranges of connection numbers.
pub fn plan(cfg: &LoadConfig) -> Vec<ChildPlan> {
    let procs = cfg.procs.max(1) as u64;
    let base = cfg.conns / procs;
    let extra = cfg.conns % procs;
    let mut first = 0;
    (0..procs)
        .map(|i| {
            let count = base + u64::from(i < extra);
            let p = ChildPlan {
                index: i as usize,
                server: cfg.server,
                host: cfg.host.clone(),
                path: cfg.path.clone(),
                first,
                count,
                sources: cfg.sources.clone(),
                rate: cfg.rate / procs as f64,
                concurrency: (cfg.concurrency / procs as usize).max(1),
                connect_timeout_ms: cfg.connect_timeout.as_millis() as u64,
                hold_ms: cfg.hold.as_millis() as u64,
                duration_ms: cfg.duration.as_millis() as u64,
                ping_interval_ms: cfg.ping_interval.as_millis() as u64,
                send_interval_ms: cfg.send_interval.as_millis() as u64,
                payload: cfg.payload,
                id_prefix: cfg.id_prefix.clone(),
                device_key: cfg.device_key.clone(),
                poll: cfg.poll,
                expect_broadcasts: cfg.expect_broadcasts,
                xdp: cfg.xdp.clone(),
                tls: cfg.tls.clone(),
            };
            first += count;
            p
        })
        .collect()
}

pub fn run(cfg: &LoadConfig) -> anyhow::Result<Summary> {
    let plans = plan(cfg);
    let exe = std::env::current_exe().context("finding our own executable to start load processes")?;
    let (tx, rx) = mpsc::channel();
    let mut children: Vec<Child> = Vec::new();
    for plan in &plans {
        match spawn_child(&exe, plan, tx.clone()) {
            Ok(child) => children.push(child),
            Err(e) => {
                stop_children(&mut children);
                return Err(e);
            }
        }
    }
    drop(tx);
    let started = Instant::now();
    let finals = collect(cfg, plans.len(), &children, &rx, started)?;
    stop_children(&mut children);
    summarize(cfg, &plans, &finals, started.elapsed())
}

/// Start one load process with its plan; a thread forwards its report lines to `tx`.
fn spawn_child(exe: &std::path::Path, plan: &ChildPlan, tx: mpsc::Sender<Msg>) -> anyhow::Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.arg("--child")
        .env(CHILD_PLAN_ENV, serde_json::to_string(plan)?)
        .stdout(Stdio::piped())
        .stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe; a child must not outlive a killed parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting a load process")?;
    let stdout = child.stdout.take().context("child stdout")?;
    let index = plan.index;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<ChildLine>(&line) {
                Ok(l) => {
                    if tx.send(Msg::Line(index, l)).is_err() {
                        return;
                    }
                }
                Err(e) => log::warn!("load process {index}: unreadable report line: {e}"),
            }
        }
        let _ = tx.send(Msg::Exit);
    });
    Ok(child)
}

/// Show progress and gather every process's final report until all have exited (or the run's
/// time is over by 30 s). A signal is forwarded once, so the processes close and still report.
fn collect(
    cfg: &LoadConfig,
    n: usize,
    children: &[Child],
    rx: &mpsc::Receiver<Msg>,
    started: Instant,
) -> anyhow::Result<Vec<Option<ChildFinal>>> {
    let interrupted = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&interrupted))?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&interrupted))?;
    let mut forwarded = false;
    let hard_deadline = started + cfg.duration + Duration::from_secs(30);
    let mut progress: Vec<ChildCounters> = vec![ChildCounters::default(); n];
    let mut finals: Vec<Option<ChildFinal>> = vec![None; n];
    let mut exited = 0;
    let mut display = Display::new(cfg);
    while exited < n {
        if interrupted.load(Ordering::Relaxed) && !forwarded {
            forwarded = true;
            eprintln!("ws-load: interrupted; closing connections and collecting reports");
            for c in children {
                // SAFETY: kill on the pid of a child we started and have not reaped.
                unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            }
        }
        if Instant::now() > hard_deadline {
            eprintln!("ws-load: load processes did not finish in time; stopping them");
            break;
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Msg::Line(i, ChildLine::Progress(c))) => progress[i] = *c,
            Ok(Msg::Line(i, ChildLine::Final(f))) => {
                progress[i] = f.counters.clone();
                finals[i] = Some(*f);
            }
            Ok(Msg::Exit) => exited += 1,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        display.update(&total(&progress), started.elapsed());
    }
    display.finish();
    Ok(finals)
}

fn total(counters: &[ChildCounters]) -> ChildCounters {
    let mut sum = ChildCounters {
        done_connecting: true,
        ..Default::default()
    };
    counters.iter().for_each(|c| sum.add(c));
    sum
}

fn stop_children(children: &mut [Child]) {
    for c in children.iter_mut() {
        if matches!(c.try_wait(), Ok(None)) {
            let _ = c.kill();
        }
        let _ = c.wait();
    }
}

fn summarize(
    cfg: &LoadConfig,
    plans: &[ChildPlan],
    finals: &[Option<ChildFinal>],
    wall: Duration,
) -> anyhow::Result<Summary> {
    let complete = finals.iter().all(Option::is_some);
    let reported: Vec<&ChildFinal> = finals.iter().flatten().collect();
    if reported.is_empty() {
        bail!("no load process reported (see the errors above)");
    }
    let counters = total(&reported.iter().map(|f| f.counters.clone()).collect::<Vec<_>>());
    let mut connect = hist::new_histogram();
    let mut push = hist::new_histogram();
    let mut echo = hist::new_histogram();
    for f in &reported {
        for (into, text) in [
            (&mut connect, &f.connect_us),
            (&mut push, &f.push_latency_us),
            (&mut echo, &f.echo_rtt_us),
        ] {
            let h = hist::decode(text).map_err(anyhow::Error::msg)?;
            into.add(h).map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
        }
    }
    let connect_wall_s = counters.last_established_ns.saturating_sub(counters.first_attempt_ns) as f64 / 1e9;
    let name = |n: u64| match &cfg.id_prefix {
        Some(p) => format!("{p}{n}"),
        None => n.to_string(),
    };
    Ok(Summary {
        stack: if cfg.xdp.is_some() { "xdp" } else { "kernel" }.into(),
        server: cfg.server.to_string(),
        mode: if cfg.poll { "long-poll" } else { "websocket" }.into(),
        conns_target: cfg.conns,
        procs: plans.len(),
        sources: cfg.sources.len(),
        established: counters.established,
        failed: counters.failed_total(),
        connect_rate_per_s: if connect_wall_s > 0.0 {
            counters.established as f64 / connect_wall_s
        } else {
            0.0
        },
        connect_wall_s,
        messages_per_s: {
            let span = counters.last_message_ns.saturating_sub(counters.first_message_ns) as f64 / 1e9;
            if span > 0.0 {
                counters.messages as f64 / span
            } else {
                0.0
            }
        },
        connect_latency: hist::summarize(&connect),
        push_latency: hist::summarize(&push),
        echo_rtt: hist::summarize(&echo),
        histograms: RawHistograms {
            connect_latency_us: hist::encode(&connect),
            push_latency_us: hist::encode(&push),
            echo_rtt_us: hist::encode(&echo),
        },
        targeted_devices: reported
            .iter()
            .flat_map(|f| f.targeted_devices.iter().map(|&n| name(n)))
            .collect(),
        cpu_user_s: reported.iter().map(|f| f.cpu_user_s).sum(),
        cpu_sys_s: reported.iter().map(|f| f.cpu_sys_s).sum(),
        max_proc_rss_bytes: reported.iter().map(|f| f.max_rss_bytes).max().unwrap_or(0),
        xdp_client: reported.iter().find_map(|f| f.xdp.clone()),
        wall_s: wall.as_secs_f64(),
        counters,
        complete,
    })
}

/// Live progress: an indicatif bar on a terminal, plain periodic lines otherwise.
struct Display {
    bar: Option<indicatif::ProgressBar>,
    lines: bool,
    next_line: Duration,
}

impl Display {
    fn new(cfg: &LoadConfig) -> Display {
        let terminal = std::io::stderr().is_terminal();
        let (bar, lines) = match cfg.progress {
            ProgressMode::Off => (false, false),
            ProgressMode::Bar => (true, false),
            ProgressMode::Lines => (false, true),
            ProgressMode::Auto => (terminal, !terminal),
        };
        let bar = bar.then(|| {
            let b = indicatif::ProgressBar::new(cfg.conns);
            b.set_style(
                indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            b
        });
        Display {
            bar,
            lines,
            next_line: Duration::ZERO,
        }
    }

    fn update(&mut self, c: &ChildCounters, elapsed: Duration) {
        let msg = format!(
            "open {} failed {} pushes {} closed-by-server {}",
            c.open,
            c.failed_total(),
            c.pushes,
            c.closed_by_server.values().sum::<u64>()
        );
        if let Some(bar) = &self.bar {
            bar.set_position(c.established + c.failed_total());
            bar.set_message(msg);
        } else if self.lines && elapsed >= self.next_line {
            self.next_line = elapsed + Duration::from_secs(2);
            eprintln!(
                "[{:7.1}s] attempted {} established {} {msg}",
                elapsed.as_secs_f64(),
                c.attempted,
                c.established
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// The human-readable summary.
/// `cause=count` pairs, or 0.
fn by_cause(counts: &std::collections::BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "0".into();
    }
    let pairs: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(" ")
}

pub fn render(s: &Summary) -> String {
    let c = &s.counters;
    let lat = |l: &LatencySummary| {
        if l.count == 0 {
            "-".to_string()
        } else {
            format!(
                "p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (n={})",
                l.p50_ms, l.p99_ms, l.max_ms, l.count
            )
        }
    };
    let mut out = String::new();
    let mut row = |k: &str, v: String| out.push_str(&format!("  {k:<22} {v}\n"));
    row(
        "server",
        format!(
            "{} ({}, {} processes, {} source addresses)",
            s.server, s.mode, s.procs, s.sources
        ),
    );
    row("established", format!("{} of {}", s.established, s.conns_target));
    row("failed", by_cause(&c.failed));
    row(
        "connect rate",
        format!("{:.0}/s over {:.2} s", s.connect_rate_per_s, s.connect_wall_s),
    );
    row("connect latency", lat(&s.connect_latency));
    row(
        "pushes received",
        format!(
            "{} (broadcast {}, targeted {}); messages {} at {:.0}/s",
            c.pushes, c.broadcasts, c.targeted, c.messages, s.messages_per_s
        ),
    );
    row("push latency", lat(&s.push_latency));
    if c.checked_bytes > 0 || c.corrupt > 0 {
        row(
            "checked",
            format!("{} pattern bytes, {} corrupt messages", c.checked_bytes, c.corrupt),
        );
    }
    if c.sent_frames > 0 {
        row("data rounds", format!("sent {} echoed {}", c.sent_frames, c.echoes));
        row("echo rtt", lat(&s.echo_rtt));
    }
    if c.pings_sent > 0 {
        row("pings", format!("sent {} pongs {}", c.pings_sent, c.pongs));
    }
    if c.polls_sent > 0 {
        let polls = (c.polls_sent, c.polls_answered, c.poll_timeouts);
        row(
            "long-polls",
            format!("sent {} answered {} timeouts {}", polls.0, polls.1, polls.2),
        );
    }
    row("closed by server", by_cause(&c.closed_by_server));
    row(
        "load cpu",
        format!(
            "user {:.2} s  sys {:.2} s  (wall {:.1} s)",
            s.cpu_user_s, s.cpu_sys_s, s.wall_s
        ),
    );
    if let Some(x) = &s.xdp_client {
        row(
            "client link (xdp)",
            format!(
                "rx {}  tx {}  rx dropped {}  tx dropped {}  retransmit timers {}",
                x.link.rx_frames, x.link.tx_frames, x.link.rx_dropped, x.link.tx_dropped, x.stack.timer_fires
            ),
        );
    }
    if !s.complete {
        row(
            "WARNING",
            "some load processes did not report; numbers are partial".into(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(conns: u64, procs: usize) -> LoadConfig {
        LoadConfig {
            server: "198.18.0.1:8080".parse().unwrap(),
            host: "h".into(),
            path: "/ws".into(),
            conns,
            rate: 1000.0,
            concurrency: 100,
            sources: vec![],
            procs,
            connect_timeout: Duration::from_secs(1),
            hold: Duration::from_secs(1),
            duration: Duration::from_secs(5),
            ping_interval: Duration::ZERO,
            send_interval: Duration::ZERO,
            payload: 0,
            id_prefix: None,
            device_key: None,
            poll: false,
            expect_broadcasts: 0,
            progress: ProgressMode::Off,
            xdp: None,
            tls: None,
        }
    }

    #[test]
    fn plans_cover_every_connection_once() {
        let plans = plan(&cfg(100_003, 6));
        assert_eq!(plans.iter().map(|p| p.count).sum::<u64>(), 100_003);
        for w in plans.windows(2) {
            assert_eq!(w[0].first + w[0].count, w[1].first);
        }
        assert!((plans[0].rate - 1000.0 / 6.0).abs() < 1e-9);
        assert_eq!(plans[0].concurrency, 16);
    }
}

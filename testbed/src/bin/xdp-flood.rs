//! `xdp-flood`: a bounded flood through veth → XDP steering → AF_XDP. See `xdp-flood --help`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use host::netns;
use testkit::Netns;
use ws_server::cli::{usage, UsageError};
use xdp_prog::{Counters, Mode, Steering};

/// Measure how many packets per second reach an AF_XDP socket through the steering program.
///
/// Makes its own pair of network namespaces (netns-scripts/setup.sh; removed afterwards, also on
/// Ctrl-C), attaches the steering program to the server veth with an AF_XDP socket on queue 0,
/// and sends --packets TCP SYN frames to the steered endpoint from an AF_XDP socket on the client
/// veth (copy mode, --batch descriptors per kick). Prints sent and received packets per second and
/// where frames were lost (AF_XDP ring full, fill ring empty, XDP counters); --json writes them.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    long_about,
    after_help = "Exit status: 0 the flood ran (read the loss figures); 1 it could not run (not root, namespaces or XDP failed); 2 usage error."
)]
struct Args {
    /// Frames to send (at most 100,000,000).
    #[arg(long, default_value_t = 5_000_000)]
    packets: u64,
    /// Frame size in bytes (60 to 1514).
    #[arg(long, default_value_t = 60)]
    size: usize,
    /// TX descriptors queued per kick (copy mode sends 32 per syscall whatever this is).
    #[arg(long, default_value_t = 256)]
    batch: u32,
    /// UMEM frames of each socket (a power of two).
    #[arg(long, default_value_t = 8192)]
    frames: u32,
    /// Stop after this many seconds whatever happens (at most 120).
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Namespace prefix (1-8 lowercase letters/digits).
    #[arg(long, default_value = "wsbf")]
    prefix: String,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = run() {
        eprintln!("xdp-flood: error: {e:#}");
        std::process::exit(if e.is::<UsageError>() { 2 } else { 1 });
    }
}

/// The MAC address of `dev` in namespace `ns`.
fn mac(ns: &str, dev: &str) -> anyhow::Result<[u8; 6]> {
    let (ns, dev) = (ns.to_string(), dev.to_string());
    std::thread::spawn(move || -> anyhow::Result<[u8; 6]> {
        host::netns::enter(&ns)?;
        Ok(host::iface::mac_of(&dev)?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("MAC lookup thread panicked"))?
}

/// Send `frame` `count` times from `socket`, `batch` descriptors committed at a time, and wait
/// for every completion. Returns (sent, wakeup syscalls).
///
/// Each round queues at most `batch` frames (as many as there are free chunks), commits them and
/// wakes the kernel once: `--batch` is what one kick offers (copy mode sends 32 of them per
/// syscall whatever it is). The frame is copied into its chunk each time (60 bytes: nothing next
/// to the syscall).
fn flood(socket: &mut afxdp::Socket, frame: &[u8], count: u64, batch: u32) -> (u64, u64) {
    let tx = socket.tx();
    tx.set_commit_batch(batch as usize);
    let mut sent = 0u64;
    let mut copy = |buf: &mut [u8]| buf.copy_from_slice(frame);
    while sent < count || tx.in_flight() > 0 {
        let mut queued = 0;
        while sent < count && queued < batch && tx.can_send() {
            tx.send(frame.len(), &mut copy);
            sent += 1;
            queued += 1;
        }
        tx.kick_once();
    }
    (sent, socket.counters().wakeups)
}

fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for chunk in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet/IPv4/TCP SYN from 198.19.0.1:40000 to 198.18.0.1:8080, padded to `size`, with
/// valid IP and TCP checksums.
fn syn_frame(dst: [u8; 6], src: [u8; 6], size: usize) -> Vec<u8> {
    let mut f = vec![0u8; size.max(54)];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (f.len() - 14) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[198, 19, 0, 1]);
    ip[16..20].copy_from_slice(&[198, 18, 0, 1]);
    let c = checksum(ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let tcp_len = f.len() - 34;
    let tcp = &mut f[34..];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&8080u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    // The TCP pseudo-header: source and destination address, protocol, TCP length.
    let words = |a: [u8; 4]| u32::from(u16::from_be_bytes([a[0], a[1]])) + u32::from(u16::from_be_bytes([a[2], a[3]]));
    let pseudo = words([198, 19, 0, 1]) + words([198, 18, 0, 1]) + 6 + tcp_len as u32;
    let c = checksum(tcp, pseudo);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    f
}

impl Args {
    fn check(&self) -> anyhow::Result<()> {
        if self.packets == 0 || self.packets > 100_000_000 || !(60..=1514).contains(&self.size) || self.seconds > 120 {
            return Err(usage(
                "--packets must be 1..=100,000,000, --size 60..=1514, --seconds at most 120",
            ));
        }
        if !self.frames.is_power_of_two() || self.batch == 0 || self.batch > self.frames {
            return Err(usage(
                "--frames must be a power of two and --batch between 1 and --frames",
            ));
        }
        Ok(())
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    args.check()?;
    if !host::is_root() {
        bail!("xdp-flood needs root (network namespaces, XDP, AF_XDP)");
    }
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stop))?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop))?;
    let tb = Netns::setup(&args.prefix, 1)?;
    let (srv, cli, s0, c0) = (
        format!("{}-srv", args.prefix),
        format!("{}-cli", args.prefix),
        format!("{}-s0", args.prefix),
        format!("{}-c0", args.prefix),
    );
    let frame = syn_frame(mac(&srv, &s0)?, mac(&cli, &c0)?, args.size);

    let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
    let sender_done = Arc::new(AtomicBool::new(false));
    let receiver = Receiver {
        ns: srv,
        dev: s0,
        frames: args.frames,
        sender_done: Arc::clone(&sender_done),
        stop,
        deadline: Instant::now() + Duration::from_secs(args.seconds),
    };
    let receiver = std::thread::spawn(move || receiver.run(ready_tx));
    // Send only once the steering program and the socket are in place, or every frame is lost.
    ready_rx.recv().context("receiver thread")??;
    let sender = Sender {
        ns: cli,
        dev: c0,
        frames: args.frames,
        packets: args.packets,
        batch: args.batch,
        frame,
    };
    let sender = std::thread::spawn(move || sender.run());
    let sent = sender.join().map_err(|_| anyhow::anyhow!("sender panicked"))?;
    sender_done.store(true, Ordering::Relaxed);
    let rx = receiver.join().map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    drop(tb);
    let tx = sent?;
    let report = report(&args, &tx, &rx);
    print_report(&args, &tx, rx.received, &report)?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", Path::new(path).display()))?;
    }
    Ok(())
}

/// What the receiver counted.
struct Received {
    received: u64,
    receive_pps: f64,
    xdp_counters: Counters,
    /// The socket's drop statistics (XDP_STATISTICS), as JSON.
    af_xdp: serde_json::Value,
}

/// The server end: the steering program on the server veth, an AF_XDP socket on queue 0 that
/// counts what arrives.
struct Receiver {
    ns: String,
    dev: String,
    frames: u32,
    sender_done: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    deadline: Instant,
}

impl Receiver {
    /// Runs on a thread of its own (it enters the server namespace); says through `ready` when
    /// the socket is registered, or why it could not be.
    fn run(self, ready: mpsc::Sender<anyhow::Result<()>>) -> anyhow::Result<Received> {
        let (steering, mut xsk) = match self.setup() {
            Ok(v) => v,
            Err(e) => {
                let _ = ready.send(Err(anyhow::anyhow!("{e:#}")));
                return Err(e);
            }
        };
        let _ = ready.send(Ok(()));
        let (received, span) = self.count(&mut xsk);
        let st = xsk.statistics()?;
        Ok(Received {
            received,
            receive_pps: if span > 0.0 { received as f64 / span } else { 0.0 },
            xdp_counters: steering.counters()?,
            af_xdp: serde_json::json!({"rx_dropped": st.rx_dropped, "rx_ring_full": st.rx_ring_full,
                "rx_fill_ring_empty_descs": st.rx_fill_ring_empty_descs, "rx_invalid_descs": st.rx_invalid_descs}),
        })
    }

    fn setup(&self) -> anyhow::Result<(Steering, afxdp::Socket)> {
        netns::enter(&self.ns)?;
        let steering = Steering::attach(&self.dev, Mode::Native)?;
        steering.set_endpoints(&["198.18.0.1:8080".parse()?])?;
        let xsk = afxdp::Socket::bind(&afxdp::Config {
            rx_frames: self.frames,
            tx_frames: 0,
            ..afxdp::Config::new(&self.dev, 0)
        })?;
        steering.register_socket(0, xsk.fd())?;
        Ok((steering, xsk))
    }

    /// Receive until the sender is done and nothing has arrived for 300 ms (frames still in
    /// flight), the deadline passes or a signal comes. Returns (frames, seconds from the first to
    /// the last).
    fn count(&self, xsk: &mut afxdp::Socket) -> (u64, f64) {
        let (mut received, mut first, mut last) = (0u64, None, Instant::now());
        let mut quiet_since = Instant::now();
        loop {
            xsk.wait(10);
            let n = xsk.receive(256, &mut |_, _| {}) as u64;
            let now = Instant::now();
            if n > 0 {
                received += n;
                first.get_or_insert(now);
                last = now;
                quiet_since = now;
            }
            let drained = self.sender_done.load(Ordering::Relaxed)
                && now.duration_since(quiet_since) > Duration::from_millis(300);
            if drained || now > self.deadline || self.stop.load(Ordering::Relaxed) {
                break;
            }
        }
        let span = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
        (received, span)
    }
}

/// What the sender did.
struct Sent {
    sent: u64,
    kicks: u64,
    secs: f64,
}

/// The client end: an AF_XDP socket on the client veth that sends `packets` copies of `frame`.
struct Sender {
    ns: String,
    dev: String,
    frames: u32,
    packets: u64,
    batch: u32,
    frame: Vec<u8>,
}

impl Sender {
    /// Runs on a thread of its own (it enters the client namespace).
    fn run(self) -> anyhow::Result<Sent> {
        netns::enter(&self.ns)?;
        let mut xsk = afxdp::Socket::bind(&afxdp::Config {
            rx_frames: 0,
            tx_frames: self.frames,
            ..afxdp::Config::new(&self.dev, 0)
        })?;
        let started = Instant::now();
        let (sent, kicks) = flood(&mut xsk, &self.frame, self.packets, self.batch);
        Ok(Sent {
            sent,
            kicks,
            secs: started.elapsed().as_secs_f64(),
        })
    }
}

/// The results as written by --json.
fn report(args: &Args, tx: &Sent, rx: &Received) -> serde_json::Value {
    let (sent, secs, received) = (tx.sent, tx.secs, rx.received);
    serde_json::json!({
        "frame_bytes": args.size, "batch": args.batch, "frames": args.frames,
        "sent": sent, "send_seconds": secs, "send_pps": sent as f64 / secs.max(1e-9), "tx_kicks": tx.kicks,
        "received": received, "receive_pps": rx.receive_pps, "lost": sent.saturating_sub(received),
        "xdp_counters": rx.xdp_counters, "af_xdp": rx.af_xdp,
    })
}

/// The results for people (the rates and counters as in the --json `report`).
fn print_report(args: &Args, tx: &Sent, received: u64, report: &serde_json::Value) -> anyhow::Result<()> {
    let Sent { sent, kicks, secs } = *tx;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "xdp-flood: {} frames of {} B, batch {}",
        sent, args.size, args.batch
    )?;
    writeln!(
        out,
        "  sent      {:>12.0} packets/s ({sent} in {secs:.2} s, {kicks} kicks)",
        report["send_pps"].as_f64().unwrap_or(0.0)
    )?;
    writeln!(
        out,
        "  received  {:>12.0} packets/s ({received})",
        report["receive_pps"].as_f64().unwrap_or(0.0)
    )?;
    writeln!(
        out,
        "  lost      {:>12} ({:.2}%)",
        sent.saturating_sub(received),
        100.0 * sent.saturating_sub(received) as f64 / sent.max(1) as f64
    )?;
    writeln!(out, "  XDP       {}", report["xdp_counters"])?;
    writeln!(out, "  AF_XDP    {}", report["af_xdp"])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiver verifying checksums accepts the frame: the IP header and the TCP segment (with
    /// its pseudo-header) both sum to zero.
    #[test]
    fn syn_frames_carry_valid_checksums() {
        for size in [60, 100, 1514] {
            let f = syn_frame([2; 6], [4; 6], size);
            assert_eq!(f.len(), size);
            assert_eq!(checksum(&f[14..34], 0), 0, "IP header");
            let tcp_len = (f.len() - 34) as u32;
            let pseudo = u32::from(u16::from_be_bytes([198, 19]))
                + 1
                + u32::from(u16::from_be_bytes([198, 18]))
                + 1
                + 6
                + tcp_len;
            assert_eq!(checksum(&f[34..], pseudo), 0, "TCP segment of a {size}-byte frame");
            assert_eq!(f[47], 0x02, "SYN");
        }
    }
}

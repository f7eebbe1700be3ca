//! stack-bench: what a connection costs on the userspace stack.
//!
//! `mem`: two stacks joined by the in-memory wire in this process (no privileges). At each N it
//! opens N connections, gives each one request/response exchange (the size of a WebSocket upgrade),
//! then measures the server stack's bytes per connection (resident pages of each structure, by
//! mincore, cross-checked against the process RSS delta), the per-packet cost of the server on
//! a fixed sample of connections (it must not grow with N), and the handshake rate.
//!
//! `veth` (root): our stack behind the XDP program on a veth, the Linux TCP stack as the client in
//! another namespace; handshakes per second.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant as WallClock;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;
use smoltcp::time::{Duration, Instant};
use stack::mem_link::{self, Impairments, MemLink};
use stack::{ConnId, Event, MemoryReport, Stack, StackConfig};
use ws_server::cli::{usage, UsageError};

#[derive(Parser)]
#[command(
    version,
    about = "Benchmarks of the userspace TCP stack: bytes per connection, per-packet cost, handshake rates",
    after_help = "Exit status: 0 measured; 1 the benchmark failed (handshakes that did not complete, not root for veth); 2 usage error."
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// In memory, no privileges: bytes/conn, per-packet cost and handshakes/s at each N.
    Mem {
        /// Connection counts to measure, comma-separated.
        #[arg(long, default_value = "1000,10000,100000,1000000", value_delimiter = ',')]
        conns: Vec<usize>,
        /// Receive buffer per connection, bytes (also the advertised window).
        #[arg(long, default_value_t = 256)]
        rx_buf: usize,
        /// Send buffer per connection, bytes.
        #[arg(long, default_value_t = 256)]
        tx_buf: usize,
        /// Connections sampled for the per-packet cost (the same number at every N).
        #[arg(long, default_value_t = 1000)]
        sample: usize,
        /// Write the results here as JSON.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// Write two charts into this directory: nanoseconds per packet and bytes per
        /// connection against N (`stack-ns-per-packet`, `stack-bytes-per-connection`, SVG and
        /// PNG).
        #[arg(long)]
        charts: Option<std::path::PathBuf>,
    },
    /// As root, over a veth: our stack behind XDP, the Linux stack as client. Handshakes/s.
    Veth {
        /// Connections to open (in waves of --wave; each is reset after its handshake).
        #[arg(long, default_value_t = 20000)]
        conns: usize,
        /// Connections in flight at once.
        #[arg(long, default_value_t = 1000)]
        wave: usize,
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
}

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PORT: u16 = 8080;
/// A WebSocket upgrade request is about this big (browsers send 200–600 B).
const REQUEST: usize = 200;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = run() {
        eprintln!("stack-bench: error: {e:#}");
        std::process::exit(if e.is::<UsageError>() { 2 } else { 1 });
    }
}

fn run() -> Result<()> {
    match Cli::parse().mode {
        Mode::Mem {
            conns,
            rx_buf,
            tx_buf,
            sample,
            json,
            charts,
        } => {
            if conns.is_empty() || conns.contains(&0) {
                return Err(usage("--conns needs positive counts"));
            }
            if rx_buf < REQUEST || tx_buf < REQUEST {
                return Err(usage(format!(
                    "--rx-buf and --tx-buf must be ≥ {REQUEST} (one upgrade-sized exchange must fit)"
                )));
            }
            let mut rows = Vec::new();
            println!(
                "socket: {} B (smoltcp tcp::Socket in its slot), buffers {rx_buf}+{tx_buf} B",
                std::mem::size_of::<Option<smoltcp::socket::tcp::Socket<'static>>>()
            );
            println!(
                "{:>9} {:>12} {:>14} {:>13} {:>12} {:>12} {:>12}",
                "conns", "handshake/s", "server µs/hs", "ns/packet", "B/conn", "RSS Δ/2N", "wall s"
            );
            for &n in &conns {
                let row = mem_run(n, rx_buf, tx_buf, sample.min(n))?;
                println!(
                    "{:>9} {:>12.0} {:>14.2} {:>13.0} {:>12.0} {:>12.0} {:>12.1}",
                    row.conns,
                    row.handshakes_per_s,
                    row.server_us_per_handshake,
                    row.server_ns_per_packet,
                    row.bytes_per_conn,
                    row.rss_delta_per_conn,
                    row.wall_s
                );
                rows.push(row);
            }
            if let Some(last) = rows.last() {
                let r = &last.resident;
                let n = last.conns as f64;
                println!(
                    "\nwhere the bytes go at {} connections (server stack, resident):",
                    last.conns
                );
                for (name, v) in [
                    ("smoltcp sockets", r.socket_bytes),
                    ("rx+tx buffers (arena)", r.arena_bytes),
                    ("4-tuple table", r.table_bytes),
                    ("slot tuple + flags/timer/user", r.slot_bytes),
                    ("free list", r.free_list_bytes),
                    ("timer wheel", r.wheel_bytes),
                    ("dirty/due/event queues", r.queue_bytes),
                ] {
                    println!("  {name:<32} {:>8.1} B/conn", v as f64 / n);
                }
                println!("  {:<32} {:>8.1} B/conn", "total", r.total() as f64 / n);
            }
            write_json(json.as_deref(), &rows)?;
            if let Some(dir) = charts {
                for path in mem_charts(&rows, &dir)? {
                    println!("chart: {}", path.display());
                }
            }
        }
        Mode::Veth { conns, wave, json } => {
            let result = veth::run(conns, wave)?;
            println!(
                "veth: {} handshakes in {:.2} s = {:.0}/s (Linux client, our stack behind XDP); failed {}",
                result.established, result.wall_s, result.handshakes_per_s, result.failed
            );
            println!("server: {}", serde_json::to_string(&result.server)?);
            write_json(json.as_deref(), &result)?;
        }
    }
    Ok(())
}

/// The per-packet cost and the bytes per connection against N, each its own chart.
fn mem_charts(rows: &[MemRow], dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    use testbed::bench::charts::{over_n, save};
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let red = plotters::style::RGBColor(0xd6, 0x27, 0x28);
    let line = |f: fn(&MemRow) -> f64| rows.iter().map(|r| (r.conns as f64, f(r))).collect::<Vec<_>>();
    let mut files = Vec::new();
    let svg = over_n(
        "Userspace stack: server time per packet (in memory, one core)",
        "nanoseconds per packet",
        false,
        &[("ns/packet", line(|r| r.server_ns_per_packet), red)],
    )?;
    files.extend(save(dir, "stack-ns-per-packet", &svg)?);
    let svg = over_n(
        "Userspace stack: resident bytes per connection (server stack, idle)",
        "bytes per connection",
        true,
        &[("bytes/conn", line(|r| r.bytes_per_conn), red)],
    )?;
    files.extend(save(dir, "stack-bytes-per-connection", &svg)?);
    Ok(files)
}

fn write_json<T: Serialize>(path: Option<&std::path::Path>, value: &T) -> Result<()> {
    if let Some(path) = path {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(value)?).with_context(|| format!("writing {path:?}"))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[derive(Serialize)]
struct MemRow {
    conns: usize,
    rx_buf: usize,
    tx_buf: usize,
    /// N / wall time of the connect phase (both stacks share one thread).
    handshakes_per_s: f64,
    /// Time spent inside the server stack per handshake.
    server_us_per_handshake: f64,
    /// Time inside the server (stack + echo) per packet it received or sent, on the sample.
    server_ns_per_packet: f64,
    sample: usize,
    sample_packets: u64,
    /// Server stack bytes per connection: resident pages of every structure / N.
    bytes_per_conn: f64,
    /// (RSS after − RSS before both stacks) / 2N: both stacks, same sizes.
    rss_delta_per_conn: f64,
    resident: MemoryReport,
    capacity: MemoryReport,
    wall_s: f64,
}

/// Two stacks on one in-memory wire, on a virtual clock; the server's own time is measured.
struct Bench {
    server: Stack<MemLink>,
    client: Stack<MemLink>,
    now: Instant,
    server_time: std::time::Duration,
    sev: Vec<Event>,
    cev: Vec<Event>,
    echo: stack::echo::EchoStats,
}

impl Bench {
    /// A server listening on PORT and a client, each sized for `n` connections.
    fn new(n: usize, rx_buf: usize, tx_buf: usize) -> Result<Bench> {
        let (a, b) = mem_link::pair(Impairments::default(), 1);
        let now = Instant::from_millis(1_000);
        let server_config = StackConfig {
            max_conns: n,
            rx_buf,
            tx_buf,
            our_mac: [2, 0, 0, 0, 0, 1],
            ..StackConfig::default()
        };
        // One client address per 60,000 connections: each has about that many ephemeral ports.
        let addrs = n.div_ceil(60_000) as u32;
        let client_config = StackConfig {
            max_conns: n,
            rx_buf,
            tx_buf,
            addr: Ipv4Addr::new(198, 19, 0, 1),
            source_addrs: (0..addrs)
                .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 1)) + i))
                .collect(),
            our_mac: [2, 0, 0, 0, 0, 2],
            next_hop_mac: Some([2, 0, 0, 0, 0, 1]),
            ..StackConfig::default()
        };
        let mut server = Stack::new(server_config, a, now)?;
        server.listen(PORT);
        let client = Stack::new(client_config, b, now)?;
        Ok(Bench {
            server,
            client,
            now,
            server_time: Default::default(),
            sev: Vec::new(),
            cev: Vec::new(),
            echo: Default::default(),
        })
    }

    fn step(&mut self) -> usize {
        let t = WallClock::now();
        self.sev.clear();
        let mut moved = self.server.poll(self.now, &mut self.sev);
        stack::echo::handle(&mut self.server, &self.sev, &mut self.echo);
        self.server.flush(self.now);
        self.server_time += t.elapsed();
        self.cev.clear();
        moved += self.client.poll(self.now, &mut self.cev);
        self.client.flush(self.now);
        self.now += Duration::from_millis(1);
        moved
    }

    fn settle(&mut self) {
        for _ in 0..10_000_000 {
            let moved = self.step();
            if moved == 0
                && self.server.link().inbound() == 0
                && self.client.link().inbound() == 0
                && !self.server.has_work()
                && !self.client.has_work()
            {
                return;
            }
        }
    }

    /// Open `n` connections, in waves so the wire stays short; an error unless the server
    /// accepted every one.
    fn connect(&mut self, n: usize) -> Result<Handshakes> {
        let t = WallClock::now();
        let mut ids: Vec<ConnId> = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(self.client.connect(SocketAddrV4::new(SERVER, PORT))?);
            if ids.len().is_multiple_of(4096) {
                self.settle();
            }
        }
        self.settle();
        let wall_s = t.elapsed().as_secs_f64();
        let server_s = self.server_time.as_secs_f64();
        let accepted = self.server.stats().accepted as usize;
        if accepted != n {
            bail!("only {accepted} of {n} handshakes completed");
        }
        Ok(Handshakes { ids, wall_s, server_s })
    }

    /// One exchange per connection, the size of a WebSocket upgrade request; the echo answers it
    /// (so both buffers of every connection have carried data, as after a real upgrade).
    fn exchange(&mut self, ids: &[ConnId]) {
        let request = [b'G'; REQUEST];
        for (i, id) in ids.iter().enumerate() {
            self.client.write(*id, &request);
            if i % 4096 == 4095 {
                self.settle();
            }
        }
        self.settle();
        self.drain(ids);
        self.settle();
    }

    /// Read (and drop) whatever the client has received on `ids`.
    fn drain(&mut self, ids: &[ConnId]) {
        let mut buf = [0u8; 512];
        for id in ids {
            while self.client.read(*id, &mut buf) > 0 {}
        }
    }

    /// Per-packet cost on a fixed random sample of `sample` connections: the same work at every
    /// N, so a cost that grows with N shows. Returns (server packets, server ns per packet).
    /// Let `d` of virtual time pass with nothing to do (buffer pages of idle connections are
    /// released after a second: `StackConfig::release_idle_buffers`).
    fn idle(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    fn per_packet_cost(&mut self, ids: &[ConnId], sample: usize) -> (u64, f64) {
        let mut rng = fastrand::Rng::with_seed(42);
        let picks: Vec<ConnId> = (0..sample).map(|_| ids[rng.usize(..ids.len())]).collect();
        // One untimed round first: the sample's buffer pages back in (as for any connection
        // that is busy), so every N pays the same.
        for id in &picks {
            self.client.write(*id, b"0123456789abcdef");
        }
        self.settle();
        self.drain(&picks);
        self.settle();
        let before = (self.server.link_counters(), self.server_time);
        for _ in 0..5 {
            for id in &picks {
                self.client.write(*id, b"0123456789abcdef");
            }
            self.settle();
            self.drain(&picks);
            self.settle();
        }
        let after = (self.server.link_counters(), self.server_time);
        let packets = (after.0.rx_frames - before.0.rx_frames) + (after.0.tx_frames - before.0.tx_frames);
        let ns_per_packet = (after.1 - before.1).as_nanos() as f64 / packets.max(1) as f64;
        (packets, ns_per_packet)
    }
}

/// The connect phase: the connections and how long their handshakes took.
struct Handshakes {
    ids: Vec<ConnId>,
    /// Wall time of the phase (both stacks).
    wall_s: f64,
    /// Time inside the server stack.
    server_s: f64,
}

fn mem_run(n: usize, rx_buf: usize, tx_buf: usize, sample: usize) -> Result<MemRow> {
    let wall = WallClock::now();
    let rss0 = host::process::own_rss_bytes() as usize;
    let mut bench = Bench::new(n, rx_buf, tx_buf)?;
    let handshakes = bench.connect(n)?;
    bench.exchange(&handshakes.ids);
    let (packets, ns_per_packet) = bench.per_packet_cost(&handshakes.ids, sample);
    // Idle connections, as the chart says: their buffer pages given back.
    bench.idle(Duration::from_millis(1500));
    let resident = bench.server.resident_memory();
    let rss1 = host::process::own_rss_bytes() as usize;
    Ok(MemRow {
        conns: n,
        rx_buf,
        tx_buf,
        handshakes_per_s: n as f64 / handshakes.wall_s,
        server_us_per_handshake: handshakes.server_s * 1e6 / n as f64,
        server_ns_per_packet: ns_per_packet,
        sample,
        sample_packets: packets,
        bytes_per_conn: resident.total() as f64 / n as f64,
        rss_delta_per_conn: rss1.saturating_sub(rss0) as f64 / (2 * n) as f64,
        resident,
        capacity: bench.server.memory(),
        wall_s: wall.elapsed().as_secs_f64(),
    })
}

mod veth {
    use std::net::SocketAddr;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};

    use anyhow::{bail, Context, Result};
    use host::iface::mac_of;
    use serde::Serialize;
    use socket2::{Domain, SockAddr, Socket, Type};
    use stack::echo;
    use stack::xdp_link::{XdpLink, XdpLinkConfig};
    use stack::{clock, Stack, StackConfig, StackStats};
    use testkit::{in_ns, spawn_in_ns, Netns};
    use xdp_prog::{Mode, Steering};

    #[derive(Serialize)]
    pub struct VethResult {
        pub conns: usize,
        pub established: usize,
        pub failed: usize,
        pub wall_s: f64,
        pub handshakes_per_s: f64,
        pub server: StackStats,
    }

    pub fn run(conns: usize, wave: usize) -> Result<VethResult> {
        if wave == 0 || wave > 15_000 {
            return Err(ws_server::cli::usage(
                "--wave must be 1..=15000 (one process holds at most ~20,000 file descriptors)",
            ));
        }
        if !host::is_root() {
            bail!("the veth benchmark needs root (network namespaces, XDP, AF_XDP)");
        }
        let clients = 4;
        let tb = Netns::setup("wsbsb", clients)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let dev = tb.dev();
        let stop2 = stop.clone();
        let server = spawn_in_ns(&tb.srv, move || -> Result<StackStats> {
            let steering = Steering::attach(&dev, Mode::Native)?;
            steering.set_endpoints(&["198.18.0.1:8080".parse()?])?;
            let link = XdpLink::open(&XdpLinkConfig::new(&dev, 0))?;
            steering.register_socket(0, link.fd())?;
            let config = StackConfig {
                max_conns: 65_536,
                our_mac: mac_of(&dev)?,
                ..StackConfig::default()
            };
            let mut stack = Stack::new(config, link, clock::now())?;
            stack.listen(8080);
            let _ = ready_tx.send(());
            echo::serve(&mut stack, &stop2);
            Ok(stack.stats())
        });
        ready_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .context("the server did not come up")?;
        let (established, failed, wall_s) = in_ns(&tb.cli, move || client(conns, wave, clients));
        stop.store(true, Ordering::Relaxed);
        let stats = server.join().map_err(|_| anyhow::anyhow!("server thread panicked"))??;
        Ok(VethResult {
            conns,
            established,
            failed,
            wall_s,
            handshakes_per_s: established as f64 / wall_s,
            server: stats,
        })
    }

    /// Open `conns` connections in waves of nonblocking connects from `clients` source
    /// addresses; each established one is reset at once (no TIME-WAIT). Returns
    /// (established, failed, seconds).
    fn client(conns: usize, wave: usize, clients: usize) -> (usize, usize, f64) {
        let to = SockAddr::from("198.18.0.1:8080".parse::<SocketAddr>().unwrap());
        let (mut ok, mut failed) = (0, 0);
        let start = std::time::Instant::now();
        let mut opened = 0;
        while opened < conns {
            let n = wave.min(conns - opened);
            let mut socks = Vec::with_capacity(n);
            for i in 0..n {
                let src: SocketAddr = format!("198.19.0.{}:0", 1 + (opened + i) % clients).parse().unwrap();
                let Ok(s) = Socket::new(Domain::IPV4, Type::STREAM, None) else {
                    failed += 1;
                    continue;
                };
                let _ = s.set_nonblocking(true);
                let _ = s.bind(&SockAddr::from(src));
                let _ = s.connect(&to);
                socks.push(s);
            }
            opened += n;
            let mut fds: Vec<libc::pollfd> = socks
                .iter()
                .map(|s| libc::pollfd {
                    fd: s.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                })
                .collect();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let mut pending = fds.len();
            while pending > 0 && std::time::Instant::now() < deadline {
                // SAFETY: poll on our own array of pollfds.
                unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
                pending = 0;
                for f in &mut fds {
                    if f.fd < 0 {
                        continue;
                    }
                    if f.revents == 0 {
                        pending += 1;
                        continue;
                    }
                    if f.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                        failed += 1;
                    } else {
                        ok += 1;
                    }
                    f.fd = -f.fd - 1; // done: poll ignores negative fds
                }
            }
            failed += pending;
            for s in socks {
                let _ = s.set_linger(Some(std::time::Duration::ZERO));
            }
        }
        (ok, failed, start.elapsed().as_secs_f64())
    }
}

//! `xdp-steer`: attach, inspect and detach the steering XDP program. See `xdp-steer --help`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use host::netns;
use xdp_prog::{attached_program, Attached, Counters, Mode, Steering};

/// Steer TCP segments for WebSocket endpoints into AF_XDP sockets; everything else goes to the
/// kernel (ARP, ICMP, other ports, the admin endpoint, VLAN-tagged frames, IP fragments).
///
/// `attach` loads the program (printing the verifier's log if the kernel refuses it) and attaches
/// it. With --pin DIR (a directory on a bpffs) the program and its maps are pinned there and stay
/// attached after xdp-steer exits, so a server can register its sockets from any process;
/// without --pin, xdp-steer stays in the foreground and detaches on Ctrl-C. Needs root.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    long_about,
    after_help = "Exit status: 0 done; 1 failed (not root, no such interface or namespace, someone else's program attached, the kernel refused the program: the reason is printed); 2 usage error."
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Load and attach the program to IFACE, steering the given endpoints.
    Attach {
        /// Network interface (in --netns, if given).
        iface: String,
        /// An endpoint ADDR:PORT to steer (repeat for several; 0.0.0.0:PORT matches any address).
        #[arg(long = "endpoint", required_unless_present = "sources")]
        endpoints: Vec<SocketAddrV4>,
        /// Client mode: steer every segment coming from this server ADDR:PORT (repeatable), to
        /// whichever of our addresses and ports (a load generator on the userspace stack).
        #[arg(long = "source", requires = "locals")]
        sources: Vec<SocketAddrV4>,
        /// Client mode: one of the client stack's own addresses (repeatable); segments from a
        /// --source server are steered only when addressed to one of these.
        #[arg(long = "local")]
        locals: Vec<Ipv4Addr>,
        /// Network namespace (as made by `ip netns add`) that holds IFACE.
        #[arg(long)]
        netns: Option<String>,
        /// Attach mode.
        #[arg(long, value_enum, default_value = "auto")]
        mode: Mode,
        /// Pin the program and maps in this bpffs directory and exit, leaving it attached.
        #[arg(long)]
        pin: Option<PathBuf>,
    },
    /// Detach the program from IFACE (only if it is ours) and remove its pins.
    Detach {
        iface: String,
        #[arg(long)]
        netns: Option<String>,
        /// The pin directory given to attach.
        #[arg(long)]
        pin: Option<PathBuf>,
    },
    /// Show what runs on IFACE, and (with --pin) endpoints and counters; without IFACE, every
    /// interface of the namespace that runs our program.
    Status {
        iface: Option<String>,
        #[arg(long)]
        netns: Option<String>,
        #[arg(long)]
        pin: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the compiled program (a BPF object with BTF and its libxdp run config) to FILE, for
    /// `xdp-loader load IFACE FILE` beside other programs under libxdp's dispatcher; a server
    /// started on that interface then adopts it. Needs no privileges.
    Object {
        /// Where to write it ('-': standard output).
        #[arg(short, long, default_value = "wsb_steer.o")]
        output: PathBuf,
    },
    /// What IFACE's driver offers: native (driver) XDP, AF_XDP zero-copy, and the rest of the
    /// kernel's XDP feature flags (Linux 6.3 and later report them).
    Features {
        iface: String,
        #[arg(long)]
        netns: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(e) = run() {
        eprintln!("xdp-steer: error: {e:#}");
        std::process::exit(1);
    }
}

fn write_object(output: &Path) -> anyhow::Result<()> {
    if output == Path::new("-") {
        use std::io::Write;
        return std::io::stdout()
            .write_all(xdp_prog::OBJECT)
            .context("writing to standard output");
    }
    std::fs::write(output, xdp_prog::OBJECT).with_context(|| format!("writing {}", output.display()))?;
    eprintln!(
        "wrote {} ({} bytes): load it with `xdp-loader load -m native IFACE {}`",
        output.display(),
        xdp_prog::OBJECT.len(),
        output.display()
    );
    Ok(())
}

fn enter(ns: &Option<String>) -> anyhow::Result<()> {
    if let Some(ns) = ns {
        netns::enter(ns).with_context(|| format!("entering network namespace {ns}"))?;
    }
    Ok(())
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Cmd::Object { output } = &args.cmd {
        return write_object(output);
    }
    if !host::is_root() {
        bail!("xdp-steer needs root (CAP_BPF and CAP_NET_ADMIN to load and attach XDP programs)");
    }
    match args.cmd {
        Cmd::Attach {
            iface,
            endpoints,
            sources,
            locals,
            netns,
            mode,
            pin,
        } => {
            enter(&netns)?;
            attach(&iface, &endpoints, &sources, &locals, mode, pin.as_deref())
        }
        Cmd::Detach { iface, netns, pin } => {
            enter(&netns)?;
            detach(&iface, pin.as_deref())
        }
        Cmd::Features { iface, netns, json } => {
            enter(&netns)?;
            features(&iface, json)
        }
        Cmd::Object { .. } => unreachable!("handled before the privilege check"),
        Cmd::Status {
            iface,
            netns,
            pin,
            json,
        } => {
            enter(&netns)?;
            let Some(iface) = iface else {
                return status_of_all(json);
            };
            let status = Status::read(iface, pin)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status.json())?);
            } else {
                status.print();
            }
            Ok(())
        }
    }
}

/// `status` without an interface: every interface of this namespace our program runs on.
fn status_of_all(json: bool) -> anyhow::Result<()> {
    let mut ours = Vec::new();
    for iface in xdp_prog::interfaces() {
        if let Ok(Some((id, name, mode))) = attached_program(&iface) {
            if name == xdp_prog::PROGRAM_NAME {
                ours.push((iface, id, mode));
            }
        }
    }
    if json {
        let list: Vec<serde_json::Value> = ours
            .iter()
            .map(|(iface, id, mode)| serde_json::json!({"iface": iface, "id": id, "mode": mode}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else if ours.is_empty() {
        println!("our steering program runs on no interface of this namespace");
    } else {
        for (iface, id, mode) in &ours {
            println!("{iface}: steering program {id} ({mode:?})");
        }
    }
    Ok(())
}

/// `features`: what the driver offers.
fn features(iface: &str, json: bool) -> anyhow::Result<()> {
    let f = xdp_prog::xdp_features(iface)?;
    if json {
        let v = serde_json::json!({
            "iface": iface,
            "native": f.native(),
            "zero_copy": f.zero_copy(),
            "zc_max_segs": f.zc_max_segs,
            "flags": f.names(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if f.flags == 0 {
        // Kernels before 6.3 report no XDP features at all: nothing to say either way.
        println!("{iface}: the kernel reports no XDP features (Linux 6.3 and later do): unknown");
        return Ok(());
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!("{iface}: native XDP: {}", yes(f.native()));
    println!("{iface}: AF_XDP zero-copy: {}", yes(f.zero_copy()));
    println!(
        "{iface}: XDP features: {}",
        if f.flags == 0 {
            "none reported".to_string()
        } else {
            f.names().join(", ")
        }
    );
    Ok(())
}

/// `attach`: load, attach and fill the maps; then either pin and exit, or stay until a signal.
fn attach(
    iface: &str,
    endpoints: &[SocketAddrV4],
    sources: &[SocketAddrV4],
    locals: &[Ipv4Addr],
    mode: Mode,
    pin: Option<&Path>,
) -> anyhow::Result<()> {
    let mut steering = Steering::attach(iface, mode)?;
    steering.set_endpoints(endpoints)?;
    steering.set_sources(sources, locals)?;
    let (_, how) = steering.attachment().context("attached")?;
    let mut list: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
    list.extend(sources.iter().map(|s| format!("everything from {s} to {locals:?}")));
    println!(
        "attached program {} to {iface} ({how:?} mode), steering {}",
        steering.program_id(),
        list.join(", ")
    );
    match pin {
        Some(dir) => pin_and_leave(&mut steering, iface, dir),
        None => stay_until_signalled(&mut steering),
    }
}

/// Pin the attached program under `dir` so it outlives this process (and is found by `detach`).
fn pin_and_leave(steering: &mut Steering, iface: &str, dir: &Path) -> anyhow::Result<()> {
    if let Err(e) = steering.pin(dir) {
        // Do not leave an attachment nobody can find.
        let _ = Steering::unpin(dir);
        return Err(e.into());
    }
    println!(
        "pinned under {}; it stays attached (xdp-steer detach {iface} --pin {})",
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// Without a pin nothing else can find the attachment: hold it until SIGINT/SIGTERM, then detach.
fn stay_until_signalled(steering: &mut Steering) -> anyhow::Result<()> {
    println!("no --pin: staying in the foreground; Ctrl-C detaches");
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stop))?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop))?;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    steering.detach()?;
    println!("detached; counters: {:?}", steering.counters()?);
    Ok(())
}

/// `detach`: through the pins when they exist (so only our program is detached), else whatever
/// program of ours is left on `iface`.
fn detach(iface: &str, pin: Option<&Path>) -> anyhow::Result<()> {
    match pin.filter(|d| d.join("prog").exists()) {
        Some(dir) => {
            let mut steering = Steering::open_pinned(dir)?;
            steering.detach()?;
            Steering::unpin(dir)?;
            println!("detached from {iface}; pins under {} removed", dir.display());
        }
        None => match xdp_prog::detach_left_over(iface)? {
            None => println!("nothing attached on {iface}"),
            Some(id) => {
                println!("detached program {id} from {iface}");
                if let Some(dir) = pin {
                    Steering::unpin(dir)?;
                }
            }
        },
    }
    Ok(())
}

/// What `status` reports: the program attached to the interface and, with --pin, the pinned
/// steering state (which may belong to another program than the one attached).
struct Status {
    iface: String,
    attached: Option<(u32, String, Option<Attached>)>,
    pin: Option<PathBuf>,
    pinned: Option<Steering>,
    endpoints: Vec<SocketAddrV4>,
    sources: Vec<SocketAddrV4>,
    locals: Vec<Ipv4Addr>,
    counters: Option<Counters>,
    ours: bool,
}

impl Status {
    fn read(iface: String, pin: Option<PathBuf>) -> anyhow::Result<Status> {
        let attached = attached_program(&iface)?;
        let pinned = match &pin {
            Some(dir) if dir.join("prog").exists() => Some(Steering::open_pinned(dir)?),
            _ => None,
        };
        let endpoints = pinned.as_ref().map(Steering::endpoints).unwrap_or_default();
        let (sources, locals) = pinned.as_ref().map(Steering::sources).unwrap_or_default();
        let counters = pinned.as_ref().map(Steering::counters).transpose()?;
        let ours = matches!((&attached, &pinned), (Some((id, _, _)), Some(s)) if *id == s.program_id());
        Ok(Status {
            iface,
            attached,
            pin,
            pinned,
            endpoints,
            sources,
            locals,
            counters,
            ours,
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "iface": self.iface,
            "attached": self.attached.as_ref().map(|(id, name, mode)| serde_json::json!({"id": id, "name": name, "mode": mode})),
            "pinned": self.pin.as_ref().filter(|_| self.pinned.is_some()).map(|p| p.display().to_string()),
            "ours": self.ours,
            "endpoints": self.endpoints.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "sources": self.sources.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "locals": self.locals.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "counters": self.counters,
        })
    }

    fn print(&self) {
        let iface = &self.iface;
        match &self.attached {
            None => println!("{iface}: no XDP program attached"),
            Some((id, name, mode)) => println!("{iface}: XDP program {id} '{name}' attached ({mode:?})"),
        }
        match &self.pinned {
            None => println!(
                "no pinned steering state{}",
                self.pin
                    .as_ref()
                    .map(|p| format!(" under {}", p.display()))
                    .unwrap_or_default()
            ),
            Some(s) => self.print_pinned(s),
        }
    }

    fn print_pinned(&self, s: &Steering) {
        let list: Vec<String> = self.endpoints.iter().map(ToString::to_string).collect();
        println!(
            "pinned program {}{}",
            s.program_id(),
            if self.ours {
                " (the one attached)"
            } else {
                " (NOT the one attached)"
            }
        );
        println!("endpoints: {}", list.join(", "));
        if !self.sources.is_empty() {
            let list: Vec<String> = self.sources.iter().map(ToString::to_string).collect();
            println!("client mode, everything from: {} to {:?}", list.join(", "), self.locals);
        }
        if let Some(c) = &self.counters {
            println!(
                "counters: redirected {}  passed {}  no-socket {}  malformed {}  passed-vlan {}  passed-fragment {}",
                c.redirected, c.passed, c.no_socket, c.malformed, c.passed_vlan, c.passed_fragment
            );
        }
    }
}

//! The servers our users would pick instead (`testbed/peers/<name>/`): each is built on this
//! machine by its `build.sh` only when a benchmark asks for it (which says aloud what it installs),
//! and speaks the protocol subset the load generator needs: the upgrade at `/ws`, the broadcast
//! JSON with `ts` and `seq`, `POST /broadcast` and `GET /conns` on an admin port, echo.
//!
//! A process may hold at most 20,000 files here, so a peer runs as several processes sharing the
//! port: Go and tokio as separate processes with `SO_REUSEPORT`, each with its own admin port;
//! Node.js as a cluster (one primary, whose admin port speaks for its workers).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use testkit::{ChildGuard, Netns};

use super::{BenchConfig, Server};

/// Connections per peer process: the open-file limit (20,000) less room for the process's own.
pub const CONNS_PER_PROCESS: u64 = 18_000;

/// Admin ports of a peer's processes: 9101, 9102, … on loopback in the server namespace.
const FIRST_ADMIN_PORT: u16 = 9101;

/// Where the peers' sources are (this crate's `peers/`).
pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// Build `server` (its `build.sh`, which installs what it needs and says so) and return the
/// command that runs one of its processes.
pub fn build(server: Server) -> anyhow::Result<PathBuf> {
    let dir = peers_dir().join(server.name());
    let script = dir.join("build.sh");
    if !script.exists() {
        bail!("{} has no build script at {}", server.name(), script.display());
    }
    eprintln!("[{}] building the peer ({})", server.name(), script.display());
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "building {} failed ({}); its output is above",
            server.name(),
            out.status
        );
    }
    // The script's last line of standard output is the program to run.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let program = stdout.lines().last().map(str::trim).unwrap_or_default();
    let program = PathBuf::from(program);
    if !program.exists() {
        bail!(
            "{}'s build script named {:?}, which does not exist",
            server.name(),
            program
        );
    }
    Ok(program)
}

/// Start `server`'s processes in the server namespace, listening on `listen`; their admin
/// endpoints.
pub fn start(
    cfg: &BenchConfig,
    netns: &Netns,
    server: Server,
    listen: &str,
) -> anyhow::Result<(Vec<ChildGuard>, Vec<SocketAddr>)> {
    let program = build(server)?;
    // A peer process holds up to CONNS_PER_PROCESS sockets: give it the hard limit as its soft
    // one (children inherit it; tokio does not raise it itself, Go and Node.js do).
    host::process::raise_fd_limit();
    let processes = cfg.conns.div_ceil(CONNS_PER_PROCESS).max(1) as u16;
    let log = std::fs::File::create(cfg.out_dir.join(format!("{}-server.log", server.name())))?;
    let spawn = |admin: SocketAddr, extra: &[String]| -> anyhow::Result<ChildGuard> {
        let mut cmd = netns.command(&netns.srv, &program);
        cmd.args(["--listen", listen, "--admin", &admin.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?);
        ChildGuard::spawn(server.name(), cmd)
    };
    let admin_at = |i: u16| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], FIRST_ADMIN_PORT + i)) };
    eprintln!("[{}] {processes} process(es) sharing {listen}", server.name());
    match server {
        Server::NodeWs => {
            let primary = spawn(admin_at(0), &["--workers".into(), processes.to_string()])?;
            Ok((vec![primary], vec![admin_at(0)]))
        }
        _ => {
            let mut procs = Vec::new();
            let mut admins = Vec::new();
            for i in 0..processes {
                procs.push(spawn(admin_at(i), &[])?);
                admins.push(admin_at(i));
            }
            Ok((procs, admins))
        }
    }
}

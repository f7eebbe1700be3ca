//! `--stacks kernel-tls`: ws-server on the kernel stack behind haproxy terminating TLS, as
//! production runs it (docs/production.md): what the proxy adds per connection is this row's
//! all-in figure less the `kernel` row's, with the same TLS-speaking kernel load generator.
//!
//! haproxy (Debian's) in TCP mode: TLS 1.3 with an ECDSA P-256 certificate made for the run, a
//! plain connection on to the server per client. A process may hold 20,000 files here and a
//! proxied connection takes two, so the proxy runs as several processes sharing the port
//! (`SO_REUSEPORT`, haproxy's default), each connecting to the server from its own loopback
//! address (one address would run out of ports past ~64,000 connections).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use testkit::{ChildGuard, Netns};

use super::BenchConfig;

/// Where the proxy listens (the server's address, another port).
pub const LISTEN: &str = "198.18.0.1:8443";

/// Connections a proxy process accepts at most: two files each, under the 20,000 limit.
const MAX_CONNS_PER_PROCESS: u64 = 9_000;
/// Connections per process on average: `SO_REUSEPORT` spreads them by hash, not evenly, so each
/// process keeps a fifth of its capacity as headroom.
const CONNS_PER_PROCESS: u64 = 7_500;

/// The run's certificate authority (what the load generator trusts), under `<out>/tls/`.
pub fn ca_file(cfg: &BenchConfig) -> PathBuf {
    cfg.out_dir.join("tls").join("ca.pem")
}

/// The benchmark's proxy, for `cfg.conns`, its files under `<out>/tls/`.
pub fn start(cfg: &BenchConfig, netns: &Netns, backend: &str) -> anyhow::Result<Vec<ChildGuard>> {
    start_in(netns, &cfg.out_dir.join("tls"), cfg.conns, backend)
}

/// Make the certificates (`dir/ca.pem` is the authority) and start the proxy's processes for
/// `conns` connections in the server namespace, in front of ws-server at `backend`; their
/// output goes to `dir/haproxy.log`.
pub fn start_in(netns: &Netns, dir: &Path, conns: u64, backend: &str) -> anyhow::Result<Vec<ChildGuard>> {
    let haproxy = which("haproxy").context("a TLS proxy in front needs haproxy (apt-get install haproxy)")?;
    std::fs::create_dir_all(dir)?;
    let pem = make_certificates(dir)?;
    let processes = conns.div_ceil(CONNS_PER_PROCESS).max(1);
    eprintln!("[kernel-tls] haproxy: {processes} process(es) on {LISTEN}, TLS terminated, plain on to {backend}");
    let log = std::fs::File::create(dir.join("haproxy.log"))?;
    let mut procs = Vec::new();
    for i in 0..processes {
        let conf = dir.join(format!("haproxy-{i}.cfg"));
        std::fs::write(&conf, config(&pem, backend, i))?;
        let mut cmd = netns.command(&netns.srv, &haproxy);
        // -db: in the foreground, not a daemon (so it is ours to stop, by pid).
        cmd.arg("-db")
            .arg("-f")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?);
        procs.push(ChildGuard::spawn("haproxy", cmd)?);
    }
    // Listening before the load starts (a connect refused meanwhile would count as a failure),
    // and every process still running (a bad configuration ends one at once).
    let listen: std::net::SocketAddr = LISTEN.parse()?;
    let up = testkit::wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        testkit::in_ns(&netns.srv, move || std::net::TcpStream::connect(listen).ok())
    });
    if up.is_none() || procs.iter_mut().any(|p| !p.running()) {
        bail!(
            "haproxy did not come up on {LISTEN}; see {}",
            dir.join("haproxy.log").display()
        );
    }
    Ok(procs)
}

/// One process's configuration: TCP mode (the bytes after TLS go through untouched, WebSocket
/// upgrade included), its own source address toward the server, idle connections kept.
fn config(pem: &Path, backend: &str, index: u64) -> String {
    format!(
        "global\n\
         \x20   maxconn {MAX_CONNS_PER_PROCESS}\n\
         \x20   nbthread 1\n\
         \x20   ssl-default-bind-options ssl-min-ver TLSv1.3\n\
         defaults\n\
         \x20   mode tcp\n\
         \x20   timeout connect 5s\n\
         \x20   timeout client 1h\n\
         \x20   timeout server 1h\n\
         frontend tls\n\
         \x20   bind {LISTEN} ssl crt {pem}\n\
         \x20   default_backend ws\n\
         backend ws\n\
         \x20   server ws {backend} source 127.0.{}.{}\n",
        1 + index / 250,
        2 + index % 250,
        pem = pem.display()
    )
}

/// A CA and a server certificate for 198.18.0.1 (ECDSA P-256) signed by it, with openssl; the
/// file haproxy takes (certificate and key).
fn make_certificates(dir: &Path) -> anyhow::Result<PathBuf> {
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .context("running openssl (apt-get install openssl)")?;
        if !out.status.success() {
            bail!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "7",
        "-subj",
        "/CN=ws-bench CA",
    ]);
    run(&ca)?;
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=198.18.0.1"]);
    run(&csr)?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:198.18.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "7",
        "-extfile",
        "server.ext",
    ])?;
    let mut both = std::fs::read(dir.join("server.pem"))?;
    both.extend(std::fs::read(dir.join("server.key"))?);
    let pem = dir.join("haproxy.pem");
    std::fs::write(&pem, both)?;
    Ok(pem)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

//! Helpers of the privileged end-to-end tests: they run as root in network namespaces (CI is
//! root). Without root they skip, saying why — unless WSB_REQUIRE_PRIVILEGED=1, which CI sets so
//! that a skip is a failure.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::http::http_in_netns;
use testkit::{wait_for, ChildGuard, Netns};

pub mod attacks;
pub mod browser;
pub mod conformance;
pub mod impairment;
pub mod messages;
pub mod scenarios;
pub mod trust;

pub const SERVER: &str = "198.18.0.1:8080";
pub const ADMIN: &str = "127.0.0.1:9001";

pub use testkit::privileged;

pub fn server_bin() -> PathBuf {
    testkit::sibling_binary("ws-server").expect("ws-server binary (run: cargo build --workspace --bins)")
}

pub fn load_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ws-load"))
}

pub fn admin() -> SocketAddr {
    ADMIN.parse().unwrap()
}

/// Start ws-server in the server namespace with `args` and wait until its admin answers.
pub fn start_server(ns: &Netns, args: &[&str], log_path: &Path) -> ChildGuard {
    let log = std::fs::File::create(log_path).unwrap();
    let mut cmd = ns.command(&ns.srv, &server_bin());
    // Device ids on the client's word, unless a test gives a device key (which then decides).
    cmd.args([
        "--listen",
        SERVER,
        "--admin",
        ADMIN,
        "--push-interval",
        "0",
        "--insecure-ids",
    ])
    .args(args)
    .stdin(Stdio::null())
    .stdout(log.try_clone().unwrap())
    .stderr(log);
    let server = ChildGuard::spawn("ws-server", cmd).unwrap().with_log(log_path);
    let up = wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        http_in_netns(&ns.srv, "GET", admin(), "/conns", b"").ok()
    });
    assert!(up.is_some(), "server did not come up");
    server
}

/// GET an admin path as JSON.
pub fn admin_json(ns: &Netns, path: &str) -> serde_json::Value {
    let (status, body) = http_in_netns(&ns.srv, "GET", admin(), path, b"").unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

pub fn admin_post(ns: &Netns, path: &str, body: &[u8]) -> serde_json::Value {
    let (status, text) = http_in_netns(&ns.srv, "POST", admin(), path, body).unwrap();
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Start ws-load in the client namespace; its JSON summary goes to `json`.
pub fn start_load(ns: &Netns, args: &[&str], json: &Path) -> ChildGuard {
    let mut cmd = ns.command(&ns.cli, &load_bin());
    cmd.args(["--server", SERVER, "--progress", "off", "--json"])
        .arg(json)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    ChildGuard::spawn("ws-load", cmd).unwrap()
}

/// Wait for a load run to end and read its summary.
pub fn finish_load(mut load: ChildGuard, json: &Path, timeout: Duration) -> serde_json::Value {
    let status = load.wait_timeout(timeout).expect("ws-load did not finish in time");
    let text = std::fs::read_to_string(json).unwrap_or_else(|e| panic!("no ws-load summary ({status:?}): {e}"));
    serde_json::from_str(&text).unwrap()
}

/// Wait until the server holds `n` connections.
pub fn wait_conns(ns: &Netns, n: u64, timeout: Duration) {
    let got = wait_for(timeout, Duration::from_millis(200), || {
        let v = admin_json(ns, "/conns");
        (v["conns"].as_u64() == Some(n)).then_some(())
    });
    assert!(
        got.is_some(),
        "server never held {n} connections: {}",
        admin_json(ns, "/conns")
    );
}

/// A scratch directory for one test.
pub fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wsb-test-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Run `cmd`, returning (success, stdout+stderr).
pub fn output_of(mut cmd: Command) -> (bool, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Run `program args` inside namespace `ns`, returning (success, stdout+stderr).
pub fn run_in(ns: &str, program: &str, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]).args(args);
    output_of(cmd)
}

/// curl's WebSocket upgrade request to the server from the client namespace (cut off after 1 s,
/// since the connection stays open): (exit success, what it printed).
pub fn curl_upgrade(ns: &Netns) -> (bool, String) {
    curl_upgrade_with(ns, "", &[], None)
}

/// The same for `/ws?<query>` with extra `headers`, from `source` (an address of the client
/// namespace) if given.
pub fn curl_upgrade_with(ns: &Netns, query: &str, headers: &[&str], source: Option<&str>) -> (bool, String) {
    let url = if query.is_empty() {
        format!("http://{SERVER}/ws")
    } else {
        format!("http://{SERVER}/ws?{query}")
    };
    let mut args = vec![
        "-si",
        "--max-time",
        "1",
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
        "-H",
        "Sec-WebSocket-Version: 13",
        "-H",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ];
    if let Some(source) = source {
        args.extend(["--interface", source]);
    }
    for h in headers {
        args.extend(["-H", h]);
    }
    args.push(&url);
    run_in(&ns.cli, "curl", &args)
}

/// Start a helper process (a Python client, the browser) whose standard output a test reads a
/// line at a time: "" once it has ended, and a failure (not a hang) if it says nothing for 60 s.
/// Its standard error goes to the test's.
pub fn talk_to(name: &str, mut cmd: Command) -> (ChildGuard, impl FnMut() -> String) {
    use std::io::BufRead;
    const PATIENCE: Duration = Duration::from_secs(60);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = ChildGuard::spawn(name, cmd).unwrap();
    let stdout = child.child.as_mut().unwrap().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = move || match rx.recv_timeout(PATIENCE) {
        Ok(line) => line,
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => String::new(),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("the helper process said nothing for {PATIENCE:?}"),
    };
    (child, next)
}

/// `promtool check metrics` (Prometheus' own linter, installed by install-deps.sh) on a
/// `/metrics` body: it must pass, names, types and help texts.
pub fn promtool_check(metrics: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (testbed/install-deps.sh installs it)");
    child.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

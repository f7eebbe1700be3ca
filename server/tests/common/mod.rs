//! A ws-server on loopback for the tests in this folder (no root, no namespaces).

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::http::http;
use testkit::{wait_for, ChildGuard};

pub struct Server {
    pub child: ChildGuard,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address").port()
}

/// A kernel-stack server on loopback with `args`, up (its admin answers).
pub fn start_server(test: &str, args: &[&str]) -> Server {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let log = std::env::temp_dir().join(format!("ws-server-{test}-{}.log", std::process::id()));
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ws-server"));
    cmd.args(["--max-conns", "1000", "--push-interval", "0", "--insecure-ids"])
        .args(["--listen", &listen, "--admin", &admin.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    let child = ChildGuard::spawn("ws-server", cmd).unwrap();
    let up = wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
        http("GET", admin, "/conns", b"").ok().filter(|(s, _)| *s == 200)
    });
    assert!(up.is_some(), "server did not come up");
    Server { child, admin, log }
}

/// GET an admin path as JSON (200 expected).
pub fn admin_json(admin: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http("GET", admin, path, b"").expect("admin request");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

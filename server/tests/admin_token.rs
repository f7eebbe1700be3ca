//! The admin endpoint's token and Host check, end to end on loopback (no root): without the token
//! every endpoint but /healthz answers 401, with it 200; a foreign Host gets 403 even with it; a
//! non-loopback --admin without a token does not start.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::{wait_for, ChildGuard};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP/1.1 request with `headers`: (status, body).
fn request(admin: SocketAddr, method: &str, path: &str, headers: &[&str]) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

#[test]
fn the_admin_token_is_asked_and_a_foreign_host_is_refused() {
    let dir = std::env::temp_dir().join(format!("ws-admin-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("admin.token");
    std::fs::write(&token_file, "an admin token, 32 bytes long!!\n").unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ws-server"));
    cmd.args(["--max-conns", "100", "--push-interval", "0"])
        .args([
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--admin",
            &admin.to_string(),
        ])
        .arg("--admin-token-file")
        .arg(&token_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server = ChildGuard::spawn("ws-server", cmd).unwrap();
    let host = format!("Host: {admin}");
    let up = wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
        request(admin, "GET", "/conns", &[&host])
    });
    assert_eq!(up.map(|(s, _)| s), Some(401), "up, and asking for the token");
    let bearer = "Authorization: Bearer an admin token, 32 bytes long!!";
    for (method, path) in [
        ("GET", "/stats"),
        ("GET", "/conns"),
        ("GET", "/metrics"),
        ("POST", "/broadcast"),
        ("POST", "/push?id=x"),
    ] {
        let (status, body) = request(admin, method, path, &[&host]).unwrap();
        assert_eq!(status, 401, "{method} {path} without the token: {body}");
        let (status, _) = request(
            admin,
            method,
            path,
            &[&host, "Authorization: Bearer not the token at all"],
        )
        .unwrap();
        assert_eq!(status, 401, "{method} {path} with a wrong token");
        let (status, body) = request(admin, method, path, &[&host, bearer]).unwrap();
        assert_eq!(status, 200, "{method} {path} with the token: {body}");
    }
    // /healthz needs no token; a page on another site cannot post, token or not (CSRF).
    assert_eq!(request(admin, "GET", "/healthz", &[&host]).map(|(s, _)| s), Some(200));
    let (status, _) = request(
        admin,
        "POST",
        "/broadcast",
        &[&host, bearer, "Origin: https://evil.example"],
    )
    .unwrap();
    assert_eq!(status, 403);
    // DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own Host.
    let (status, _) = request(admin, "GET", "/stats", &["Host: evil.example", bearer]).unwrap();
    assert_eq!(status, 403);
    let (status, _) = request(admin, "GET", "/stats", &["Host: localhost", bearer]).unwrap();
    assert_eq!(status, 200);
    let (_, stats) = request(admin, "GET", "/stats", &[&host, bearer]).unwrap();
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert!(
        stats["admin"]["unauthorized"].as_u64().unwrap() >= 11,
        "{}",
        stats["admin"]
    );
}

#[test]
fn a_public_admin_address_without_a_token_does_not_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_ws-server"))
        .args([
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--admin",
            "0.0.0.0:9",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loopback address") && err.contains("--admin-token-file"),
        "{err}"
    );
}

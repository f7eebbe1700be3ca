//! Plain HTTP/1.1 to an admin endpoint, from this thread's namespace or another one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Context;

/// An HTTP/1.1 request from inside network namespace `netns` (a thread joins it with setns, so
/// nothing outside the process is needed). Returns the status and the body.
pub fn http_in_netns(
    netns: &str,
    method: &str,
    addr: SocketAddr,
    path: &str,
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let (netns, method, path, body) = (netns.to_string(), method.to_string(), path.to_string(), body.to_vec());
    std::thread::spawn(move || -> anyhow::Result<(u16, String)> {
        host::netns::enter(&netns).with_context(|| format!("entering namespace {netns}"))?;
        http(method.as_str(), addr, &path, &body)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("admin request thread panicked"))?
}

/// A plain HTTP/1.1 request in this thread's namespace.
pub fn http(method: &str, addr: SocketAddr, path: &str, body: &[u8]) -> anyhow::Result<(u16, String)> {
    let timeout = Duration::from_secs(60);
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("HTTP response without a head")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("HTTP response without a status")?;
    Ok((status, body.to_string()))
}

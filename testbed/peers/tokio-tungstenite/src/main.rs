//! A WebSocket push server as a Rust user would write it with tokio and tokio-tungstenite, for
//! ws-bench to measure beside ours: a task per connection, a `tokio::sync::broadcast` channel for
//! fan-out (a message is shared, not copied per connection), echo of data frames, and an admin
//! port (`POST /broadcast`, `GET /conns`) in the shapes ws-bench reads.
//!
//! Configured as tungstenite's documentation advises for many connections: the read buffer
//! (128 KiB by default, per connection) cut to 4 KiB and writes not batched (`write_buffer_size`
//! 0), since each connection carries small messages; a multi-threaded runtime over every core;
//! `SO_REUSEPORT` so that several processes share the port (a process may hold at most 20,000
//! files here).
//!
//! Usage: peer-tokio-tungstenite --listen ADDR --admin ADDR

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

#[derive(Default)]
struct Counts {
    conns: AtomicU64,
    closed: AtomicU64,
    seq: AtomicU64,
    lagged: AtomicU64,
}

fn arg(name: &str) -> Option<SocketAddr> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1)?.parse().ok()
}

#[tokio::main]
async fn main() {
    let (Some(listen), Some(admin)) = (arg("--listen"), arg("--admin")) else {
        eprintln!("usage: peer-tokio-tungstenite --listen ADDR --admin ADDR");
        std::process::exit(2);
    };
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.set_reuseport(true).expect("SO_REUSEPORT");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
    let listener = socket.listen(4096).expect("listen");
    let admin = TcpListener::bind(admin).await.unwrap_or_else(|e| panic!("bind {admin}: {e}"));
    // Capacity: broadcasts a slow connection may fall behind by before it skips (counted).
    let (tx, _) = broadcast::channel::<Utf8Bytes>(64);
    let counts = Arc::new(Counts::default());
    eprintln!("peer-tokio-tungstenite: WebSocket on {listen}, admin on {}", admin.local_addr().unwrap());
    tokio::spawn(serve_admin(admin, tx.clone(), counts.clone()));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of files, say: wait a moment rather than spin.
                eprintln!("peer-tokio-tungstenite: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let rx = tx.subscribe();
        tokio::spawn(serve_ws(stream, rx, counts.clone()));
    }
}

async fn serve_ws(stream: TcpStream, mut rx: broadcast::Receiver<Utf8Bytes>, counts: Arc<Counts>) {
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    counts.conns.fetch_add(1, Ordering::Relaxed);
    loop {
        tokio::select! {
            incoming = ws.next() => match incoming {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if ws.send(m).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {} // pings are answered by tungstenite itself
            },
            b = rx.recv() => match b {
                Ok(text) => {
                    if ws.send(Message::Text(text)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    counts.lagged.fetch_add(n, Ordering::Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    counts.conns.fetch_sub(1, Ordering::Relaxed);
    counts.closed.fetch_add(1, Ordering::Relaxed);
}

/// The admin port: one request per connection, `POST /broadcast` (the body is the message's
/// data) and `GET /conns`.
async fn serve_admin(listener: TcpListener, tx: broadcast::Sender<Utf8Bytes>, counts: Arc<Counts>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (tx, counts) = (tx.clone(), counts.clone());
        tokio::spawn(async move {
            let _ = admin_request(stream, &tx, &counts).await;
        });
    }
}

async fn admin_request(stream: TcpStream, tx: &broadcast::Sender<Utf8Bytes>, counts: &Counts) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let request = line.trim().to_string();
    let mut length = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0).min(1 << 20);
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await?;
    let (status, answer) = if request.starts_with("POST /broadcast") {
        let started = Instant::now();
        let seq = counts.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let data = String::from_utf8_lossy(&body);
        let data = if data.is_empty() { format!("server time {ts}") } else { data.into_owned() };
        let message = format!(
            "{{\"ts\":{ts},\"seq\":{seq},\"kind\":\"broadcast\",\"data\":{}}}",
            serde_json::to_string(&data).unwrap_or_default()
        );
        let len = message.len();
        let receivers = tx.send(Utf8Bytes::from(message)).unwrap_or(0);
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let answer = format!(
            "{{\"seq\":{seq},\"queued\":{receivers},\"websockets\":{receivers},\"polls\":0,\"payload_bytes\":{len},\"fanout_ms\":{ms},\"elapsed_ms\":{ms}}}"
        );
        ("200 OK", answer)
    } else if request.starts_with("GET /conns") {
        let answer = format!(
            "{{\"conns\":{},\"closed\":{},\"lagged\":{}}}",
            counts.conns.load(Ordering::Relaxed),
            counts.closed.load(Ordering::Relaxed),
            counts.lagged.load(Ordering::Relaxed)
        );
        ("200 OK", answer)
    } else {
        ("404 Not Found", "{\"error\":\"POST /broadcast or GET /conns\"}".to_string())
    };
    let mut stream = reader.into_inner();
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        answer.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await
}

//! The admin endpoint's HTTP server, bounded in every dimension a local client controls.
//!
//! Why hyper on a current-thread tokio runtime, and not tiny_http (used before): tiny_http 0.12
//! reads a header line byte by byte into a `Vec` with no limit, has no read or write timeouts,
//! and hands every connection to a pool thread that it grows without bound. One local client
//! sending an endless header line (or a byte a second, or a few thousand idle connections) held a
//! thread and memory each, for ever, in the supervisor, whose death takes every worker with it.
//! None of this can be configured in tiny_http. hyper's HTTP/1 server bounds the request head
//! (`max_buf_size`: a larger head is answered 431 and closed) and the time to send it
//! (`header_read_timeout`, which also ends idle keep-alive connections); the rest is ours, here:
//!
//! - at most `max_conns` connections at once. At the limit a new connection takes the place of
//!   the oldest one that is waiting for a request (idle, or still sending its head: the
//!   slowloris kind), which is closed (`evicted_idle`); only when every connection is in the
//!   middle of a request is the new one answered 503 and closed, at once (`refused`). So idle
//!   connections, however many, never keep an operator's `/stats` out;
//! - a body of at most `admin::MAX_BODY` (+1 to tell "too large") within `body_timeout`;
//! - an answer the client does not take for `write_stall` ends the connection (`StallGuard`);
//! - the supervisor's answer is awaited `reply_timeout` at most (it answers every call itself
//!   within `REPLY_TIMEOUT`: this is the backstop).
//!
//! Everything runs on one thread of the supervisor ("admin-http") in one tokio runtime; the
//! supervisor's loop only ever sees a routed request and answers it through a oneshot channel,
//! which never blocks. (A later supervisor part, the NATS client, is tokio too and can share this
//! runtime; no worker ever runs one.)

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::Event;
use crate::admin::{self, AdminCounters, AdminRequest, MAX_BODY};

/// The bounds of the admin endpoint.
#[derive(Clone, Copy, Debug)]
pub struct AdminLimits {
    /// Connections served at once; past it a new one replaces the oldest idle one, or (every
    /// one in a request) is refused (503).
    pub max_conns: usize,
    /// Largest request head, request line and headers together (hyper's minimum is 8 KiB).
    pub head_bytes: usize,
    /// Time to send a whole request head, from the first byte read for it (and the longest a
    /// kept-alive connection may stay idle).
    pub head_timeout: Duration,
    /// Time to send a request body.
    pub body_timeout: Duration,
    /// Longest an answer may wait for the client to take any of it.
    pub write_stall: Duration,
    /// Longest a request waits for the supervisor's answer.
    pub reply_timeout: Duration,
}

impl Default for AdminLimits {
    fn default() -> AdminLimits {
        AdminLimits {
            max_conns: 64,
            head_bytes: 8 * 1024,
            head_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(5),
            write_stall: Duration::from_secs(10),
            reply_timeout: super::pending::REPLY_TIMEOUT + Duration::from_secs(5),
        }
    }
}

/// The supervisor's answer to one admin request.
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub content_type: &'static str,
}

/// Where the supervisor sends the answer to one admin request. Answering never blocks: the HTTP
/// side writes it, on the admin thread.
pub struct Responder(oneshot::Sender<Answer>);

impl Responder {
    /// A responder whose answer comes out of the receiver (the cluster combines this node's
    /// answer with the other nodes', or sends it to the node that asked).
    pub fn pair() -> (Responder, oneshot::Receiver<Answer>) {
        let (tx, rx) = oneshot::channel();
        (Responder(tx), rx)
    }

    pub fn respond(self, status: u16, body: String, content_type: &'static str) {
        // The client may be gone (its connection timed out or closed): nothing to do then.
        let _ = self.0.send(Answer {
            status,
            body,
            content_type,
        });
    }

    pub fn respond_json(self, status: u16, value: &serde_json::Value) {
        self.respond(status, value.to_string(), "application/json");
    }
}

/// The running admin endpoint; `stop` closes it (and every connection on it).
pub struct AdminServer {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminServer {
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serve the admin endpoint on `listener` (already bound) on a thread of its own. Routed requests
/// go to the supervisor's loop as `Event::Admin`.
pub fn start(
    listener: std::net::TcpListener,
    events: mpsc::Sender<Event>,
    counters: Arc<AdminCounters>,
    limits: AdminLimits,
    access: crate::admin::AdminAccess,
) -> anyhow::Result<AdminServer> {
    use anyhow::Context;
    listener
        .set_nonblocking(true)
        .context("admin endpoint: non-blocking listener")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("admin endpoint: starting its tokio runtime")?;
    let (stop_tx, stop_rx) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("admin-http".into())
        .spawn(move || {
            let shared = Arc::new(Shared {
                events,
                counters,
                limits,
                access,
                conns: Mutex::new(Conns::default()),
            });
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => accept_loop(listener, shared, stop_rx).await,
                    Err(e) => log::error!("admin endpoint: cannot serve its listener: {e}"),
                }
            });
            // Dropping the runtime here ends every connection still open.
        })
        .context("admin endpoint: starting its thread")?;
    Ok(AdminServer {
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

struct Shared {
    /// To the supervisor's loop. Sending never blocks: the channel is unbounded, and the
    /// connection limit bounds what is in it.
    events: mpsc::Sender<Event>,
    counters: Arc<AdminCounters>,
    limits: AdminLimits,
    access: crate::admin::AdminAccess,
    conns: Mutex<Conns>,
}

/// Sent, whole, to a connection over the limit before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 35\r\nConnection: close\r\n\r\ntoo many admin requests; try again\n";

/// What a connection is doing, as its task and its answers' bodies tell it.
#[derive(Default)]
struct ConnState {
    /// Requests read and not yet answered to the end (their answer's body not yet dropped).
    busy: AtomicUsize,
    /// A write of its answer is waiting for the client.
    write_blocked: AtomicBool,
}

impl ConnState {
    fn waiting_for_a_request(&self) -> bool {
        self.busy.load(Ordering::Relaxed) == 0 && !self.write_blocked.load(Ordering::Relaxed)
    }
}

/// The connections being served, oldest first.
#[derive(Default)]
struct Conns {
    next_id: u64,
    open: BTreeMap<u64, Open>,
}

struct Open {
    state: Arc<ConnState>,
    /// Closes it; taken when it is evicted (it then no longer counts).
    close: Option<oneshot::Sender<()>>,
}

/// A connection let in: its number, its state, and what closes it.
struct Admitted {
    id: u64,
    state: Arc<ConnState>,
    closed: oneshot::Receiver<()>,
    /// An idle connection was closed to make room.
    evicted: bool,
}

impl Conns {
    /// Room for one more connection under `limit`, if need be by closing the oldest one waiting
    /// for a request; `None` when every connection is in the middle of one.
    fn admit(&mut self, limit: usize) -> Option<Admitted> {
        let counted = self.open.values().filter(|c| c.close.is_some()).count();
        let mut evicted = false;
        if counted >= limit {
            let idle = self
                .open
                .values_mut()
                .find(|c| c.close.is_some() && c.state.waiting_for_a_request())?;
            if let Some(close) = idle.close.take() {
                let _ = close.send(());
            }
            evicted = true;
        }
        self.next_id += 1;
        let (tx, rx) = oneshot::channel();
        let state = Arc::new(ConnState::default());
        self.open.insert(
            self.next_id,
            Open {
                state: Arc::clone(&state),
                close: Some(tx),
            },
        );
        Some(Admitted {
            id: self.next_id,
            state,
            closed: rx,
            evicted,
        })
    }

    fn remove(&mut self, id: u64) {
        self.open.remove(&id);
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stop => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of files, or a connection reset before we took it: go on after a pause
                // (never spin on a persistent error).
                log::warn!("admin endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = match shared.conns.lock() {
            Ok(mut conns) => conns.admit(shared.limits.max_conns),
            Err(_) => None,
        };
        let Some(admitted) = admitted else {
            shared.counters.refused.fetch_add(1, Ordering::Relaxed);
            refuse(stream);
            continue;
        };
        if admitted.evicted {
            shared.counters.evicted_idle.fetch_add(1, Ordering::Relaxed);
        }
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        shared.counters.open.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let id = admitted.id;
            serve_connection(stream, admitted, &shared).await;
            if let Ok(mut conns) = shared.conns.lock() {
                conns.remove(id);
            }
            shared.counters.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Answer 503 to a connection over the limit, without waiting for it: what its socket buffer
/// takes now (all of it: a fresh socket), then close.
fn refuse(stream: TcpStream) {
    let _ = stream.try_write(REFUSED);
    // Take what it sent already, so that closing is a FIN rather than a reset that could discard
    // the answer at the client; what comes later may still reset it.
    let mut scratch = [0u8; 4096];
    while matches!(stream.try_read(&mut scratch), Ok(n) if n > 0) {}
    let _ = socket2::SockRef::from(&stream).shutdown(std::net::Shutdown::Write);
}

async fn serve_connection(stream: TcpStream, admitted: Admitted, shared: &Arc<Shared>) {
    let limits = shared.limits;
    let io = TokioIo::new(StallGuard {
        inner: stream,
        stall: limits.write_stall,
        blocked: None,
        counters: Arc::clone(&shared.counters),
        state: Arc::clone(&admitted.state),
    });
    let service_shared = Arc::clone(shared);
    let state = admitted.state;
    let service = hyper::service::service_fn(move |request| {
        let shared = Arc::clone(&service_shared);
        let busy = Busy::new(&state);
        async move {
            let answer = handle(request, &shared).await;
            Ok::<_, std::convert::Infallible>(answer.map(|body| Answered { body, _busy: busy }))
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .max_buf_size(limits.head_bytes.max(8192))
        .header_read_timeout(limits.head_timeout)
        .serve_connection(io, service);
    let result = tokio::select! {
        result = connection => result,
        // Evicted to make room: dropping the connection closes it.
        _ = admitted.closed => return,
    };
    if let Err(e) = result {
        let c = &shared.counters;
        if e.is_parse_too_large() {
            c.oversize_heads.fetch_add(1, Ordering::Relaxed);
        } else if e.is_timeout() {
            c.head_timeouts.fetch_add(1, Ordering::Relaxed);
        } else if e.is_parse() {
            c.bad_requests.fetch_add(1, Ordering::Relaxed);
        }
        log::debug!("admin connection ended: {e}");
    }
}

/// A request in progress on its connection, from its head until its answer's body is dropped
/// (written out, or abandoned).
struct Busy(Arc<ConnState>);

impl Busy {
    fn new(state: &Arc<ConnState>) -> Busy {
        state.busy.fetch_add(1, Ordering::Relaxed);
        Busy(Arc::clone(state))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An answer's body, keeping its connection busy until hyper is done with it.
struct Answered {
    body: Full<Bytes>,
    _busy: Busy,
}

impl hyper::body::Body for Answered {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// One request: its body read within the bounds, routed, answered here (errors, help) or by the
/// supervisor (stats, broadcast, push).
async fn handle(request: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let header = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
    let checked = shared.access.check(
        request.uri().path(),
        header(hyper::header::HOST),
        header(hyper::header::ORIGIN),
        header(hyper::header::HeaderName::from_static("sec-fetch-site")),
        header(hyper::header::AUTHORIZATION),
    );
    if let Err((status, why)) = checked {
        shared.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
        return response(status, format!("{why}\n"), "text/plain");
    }
    if request.uri().path() == "/healthz" {
        // The process is up and its admin endpoint answers (readiness is a later issue's).
        return response(200, "ok\n".to_string(), "text/plain");
    }
    let method = request.method().as_str().to_string();
    // A scraper that asks for OpenMetrics gets it; anyone else the classic text format.
    let open_metrics = header(hyper::header::ACCEPT).is_some_and(|a| a.contains("application/openmetrics-text"));
    let url = request
        .uri()
        .path_and_query()
        .map_or_else(|| request.uri().path().to_string(), |pq| pq.as_str().to_string());
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let body = if method == "POST" && declared.is_none_or(|n| n <= MAX_BODY) {
        match read_body(request.into_body(), shared).await {
            Ok(body) => body,
            Err(answer) => return answer,
        }
    } else {
        // A GET's body (if any) is not read; hyper closes a connection whose body was left.
        Bytes::new()
    };
    let routed = match admin::route(&method, &url, &body, declared) {
        AdminRequest::Stats(admin::StatsFormat::Prometheus) if open_metrics => {
            AdminRequest::Stats(admin::StatsFormat::OpenMetrics)
        }
        routed => routed,
    };
    let (status, text, content_type) = match routed {
        AdminRequest::Help => (200, admin::HELP.to_string(), "text/plain"),
        AdminRequest::Error { status, message } => (status, format!("{message}\n"), "text/plain"),
        routed => return ask_supervisor(routed, shared).await,
    };
    response(status, text, content_type)
}

/// The body, at most `MAX_BODY` + 1 bytes (`route` says 413 past `MAX_BODY`), within the time.
async fn read_body(body: Incoming, shared: &Shared) -> Result<Bytes, Response<Full<Bytes>>> {
    let limited = Limited::new(body, MAX_BODY + 1);
    match tokio::time::timeout(shared.limits.body_timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                Err(response(413, format!("body over {MAX_BODY} bytes\n"), "text/plain"))
            } else {
                // Cut short (the client went away mid-body) or malformed chunks: never pushed.
                shared.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                Err(response(400, format!("unreadable body: {e}\n"), "text/plain"))
            }
        }
        Err(_) => {
            shared.counters.body_timeouts.fetch_add(1, Ordering::Relaxed);
            let mut answer = response(
                408,
                format!("body not sent within {:?}\n", shared.limits.body_timeout),
                "text/plain",
            );
            answer
                .headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            Err(answer)
        }
    }
}

async fn ask_supervisor(routed: AdminRequest, shared: &Shared) -> Response<Full<Bytes>> {
    let (tx, rx) = oneshot::channel();
    if shared.events.send(Event::Admin(Responder(tx), routed)).is_err() {
        return response(503, "the server is stopping\n".into(), "text/plain");
    }
    match tokio::time::timeout(shared.limits.reply_timeout, rx).await {
        Ok(Ok(answer)) => response(answer.status, answer.body, answer.content_type),
        Ok(Err(_)) => response(503, "the server is stopping\n".into(), "text/plain"),
        Err(_) => response(504, "the supervisor did not answer in time\n".into(), "text/plain"),
    }
}

/// A response with a known length (never chunked: simple clients and scripts read it whole).
fn response(status: u16, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A TCP stream whose writes fail once the peer has taken nothing for `stall`: an answer nobody
/// reads does not hold its connection (and its place under the limit) for ever.
struct StallGuard {
    inner: TcpStream,
    stall: Duration,
    blocked: Option<Pin<Box<tokio::time::Sleep>>>,
    counters: Arc<AdminCounters>,
    state: Arc<ConnState>,
}

impl StallGuard {
    /// The write is blocked: start the stall timer (once), and fail if it ran out.
    fn blocked(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let stall = self.stall;
        self.state.write_blocked.store(true, Ordering::Relaxed);
        let timer = self.blocked.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        if timer.as_mut().poll(cx).is_ready() {
            self.counters.write_timeouts.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the admin client took none of its answer in time",
            )));
        }
        Poll::Pending
    }
}

impl AsyncRead for StallGuard {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallGuard {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.blocked(cx),
            ready => {
                self.blocked = None;
                self.state.write_blocked.store(false, Ordering::Relaxed);
                ready
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_limit_the_oldest_idle_connection_makes_room_and_busy_ones_never_do() {
        let mut conns = Conns::default();
        let a = conns.admit(2).expect("room");
        let mut b = conns.admit(2).expect("room");
        assert!(!a.evicted && !b.evicted);
        a.state.busy.fetch_add(1, Ordering::Relaxed);
        // The limit: a is in a request, so b (idle, younger) makes room.
        let c = conns.admit(2).expect("b is idle");
        assert!(c.evicted);
        assert!(b.closed.try_recv().is_ok(), "b is told to close");
        // c is writing an answer its client does not take yet; a is busy: nobody to evict.
        c.state.write_blocked.store(true, Ordering::Relaxed);
        assert!(conns.admit(2).is_none(), "every connection is in a request: refused");
        // b's task ends; still full (a, c).
        conns.remove(b.id);
        assert!(conns.admit(2).is_none());
        // a's answer is done: a is idle again and the oldest, so it goes first.
        a.state.busy.fetch_sub(1, Ordering::Relaxed);
        let mut a_closed = a.closed;
        assert!(conns.admit(2).is_some_and(|d| d.evicted));
        assert!(a_closed.try_recv().is_ok());
    }

    #[test]
    fn an_answer_nobody_reads_fails_after_the_stall_time() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let counters = Arc::new(AdminCounters::default());
        let theirs = Arc::clone(&counters);
        let (result, took) = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            let mut guarded = StallGuard {
                inner: server,
                stall: Duration::from_millis(300),
                blocked: None,
                counters: theirs,
                state: Arc::new(ConnState::default()),
            };
            let chunk = vec![b'x'; 64 * 1024];
            let started = std::time::Instant::now();
            // The client never reads: the socket buffers fill, then one write waits until the
            // guard gives up.
            loop {
                let written = std::future::poll_fn(|cx| Pin::new(&mut guarded).poll_write(cx, &chunk));
                match tokio::time::timeout(Duration::from_secs(20), written).await {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => break (Ok(e), started.elapsed()),
                    Err(_) => break (Err("a blocked write never failed"), started.elapsed()),
                }
            }
        });
        let err = result.unwrap();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(took < Duration::from_secs(10), "{took:?}");
        assert_eq!(counters.write_timeouts.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_refusal_is_one_whole_http_answer() {
        let text = std::str::from_utf8(REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())), "{head}");
    }
}

//! The admin/stats endpoint, on its own address (it stays on the kernel stack whatever stack serves
//! WebSockets): routing of admin requests and rendering of reports as JSON, seed 003's `/conns`, and
//! Prometheus text. Independent of how the stats were gathered and of the HTTP server
//! (`supervisor/admin_http.rs`), so every stack uses it.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::control::WorkerStats;
use crate::core::stats::CoreStats;

/// Largest admin request body (a push message).
pub const MAX_BODY: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsFormat {
    Json,
    Conns,
    /// The classic text format (0.0.4).
    Prometheus,
    /// OpenMetrics (a scraper that asks for it).
    OpenMetrics,
}

#[derive(Debug, PartialEq, Eq)]
pub enum AdminRequest {
    Stats(StatsFormat),
    /// Broadcast `text` (or the server time when empty) to every connection.
    Broadcast {
        text: Option<String>,
    },
    /// Push `text` (or the server time) to the connection of device `id`.
    Push {
        id: String,
        text: Option<String>,
    },
    /// `/readyz`: should this node get new clients?
    Ready,
    Help,
    Error {
        status: u16,
        message: String,
    },
}

/// Route an admin request. `body` is what was read of it (the HTTP side reads at most
/// `MAX_BODY` + 1 bytes, and only for a POST); `declared` is its Content-Length.
pub fn route(method: &str, url: &str, body: &[u8], declared: Option<usize>) -> AdminRequest {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let err = |status: u16, message: &str| AdminRequest::Error {
        status,
        message: message.to_string(),
    };
    match (method, path) {
        ("GET" | "HEAD", "/stats") => AdminRequest::Stats(StatsFormat::Json),
        ("GET" | "HEAD", "/conns") => AdminRequest::Stats(StatsFormat::Conns),
        ("GET" | "HEAD", "/metrics") => AdminRequest::Stats(StatsFormat::Prometheus),
        ("GET" | "HEAD", "/") => AdminRequest::Help,
        ("GET" | "HEAD", "/readyz") => AdminRequest::Ready,
        ("POST", "/broadcast") => match read_text(body, declared) {
            Ok(text) => AdminRequest::Broadcast { text },
            Err(e) => e,
        },
        ("POST", "/push") => {
            let Some(id) = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("id="))
                .filter(|id| !id.is_empty())
            else {
                return err(400, "POST /push needs ?id=<device id>");
            };
            match read_text(body, declared) {
                Ok(text) => AdminRequest::Push {
                    id: id.to_string(),
                    text,
                },
                Err(e) => e,
            }
        }
        (_, "/stats" | "/conns" | "/metrics" | "/broadcast" | "/push" | "/readyz" | "/") => {
            err(405, "method not allowed here")
        }
        _ => err(404, "no such admin endpoint; GET / lists them"),
    }
}

fn read_text(body: &[u8], declared: Option<usize>) -> Result<Option<String>, AdminRequest> {
    let too_large = || AdminRequest::Error {
        status: 413,
        message: format!("body over {MAX_BODY} bytes"),
    };
    if declared.is_some_and(|n| n > MAX_BODY) || body.len() > MAX_BODY {
        return Err(too_large());
    }
    if declared.is_some_and(|n| body.len() < n) {
        // The client went away mid-body: a truncated message is not pushed.
        return Err(AdminRequest::Error {
            status: 400,
            message: "body shorter than its Content-Length".into(),
        });
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(AdminRequest::Error {
            status: 400,
            message: "body is not UTF-8 text".into(),
        });
    };
    Ok(if text.is_empty() { None } else { Some(text.to_string()) })
}

pub const HELP: &str = "ws-server admin endpoint
GET  /stats            JSON: connections, accepted, closed, expired, messages, bytes, stack, per-worker
GET  /conns            {\"closed\":N,\"conns\":M}
GET  /metrics          Prometheus text format
GET  /healthz          200 while the process runs (no token needed)
GET  /readyz           200 when it should get new clients, else 503 with the reasons: workers
                       down, draining, the cluster broker or the XDP steering missing (no token)
POST /broadcast        push the body (or the server time) to every connection; answers the
                       sequence number and how many connections it was queued to
POST /push?id=DEVICE   push the body (or the server time) to one device; answers whether it was
                       queued to a connected device (\"queued\":true) or the device is not connected
Bodies up to 64 KiB. Delivery is at most once: see the README's \"Delivery\".
";

/// The last broadcast, as the admin sees it (also the answer to `POST /broadcast`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BroadcastResult {
    pub seq: u64,
    /// Connections it was queued to: `websockets + polls`.
    #[serde(default)]
    pub queued: u64,
    pub websockets: u64,
    pub polls: u64,
    /// The message's size (the JSON push, without the frame header).
    #[serde(default)]
    pub payload_bytes: u64,
    /// Longest time one worker spent handing the message to all its connections.
    pub fanout_ms: f64,
    /// From the admin's command to the last worker's reply.
    pub elapsed_ms: f64,
    /// Workers that did not take it: dead or restarting (their connections are gone with them;
    /// a restarted worker's new connections get the broadcasts after it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers_missing: Vec<usize>,
}

/// Everything `/stats` reports (the benchmark reads it back with this type).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub stack: String,
    pub uptime_s: f64,
    #[serde(flatten)]
    pub totals: CoreStats,
    pub refused: u64,
    /// Refused because their address held `--max-conns-per-source` already.
    #[serde(default)]
    pub refused_per_source: u64,
    /// Connections with output waiting in the workers' message logs.
    pub output_waiting: u64,
    pub expiry: ExpiryReport,
    pub last_broadcast: Option<BroadcastResult>,
    pub memory: MemoryReport,
    pub workers: usize,
    pub per_worker: Vec<WorkerStats>,
    /// Workers whose share is missing from this report: dead or restarting when it was asked
    /// for, or dead before they answered (their connections are gone with them).
    #[serde(default)]
    pub workers_missing: Vec<usize>,
    /// Workers restarted since the server started, by reason.
    #[serde(default)]
    pub worker_restarts: RestartCounts,
    /// The last restarts (at most `RECENT_RESTARTS`), oldest first.
    #[serde(default)]
    pub restarts: Vec<RestartRecord>,
    /// The admin endpoint's own connections and refusals.
    #[serde(default)]
    pub admin: AdminStats,
    /// The XDP program's counters (xdp stack only).
    #[cfg(feature = "xdp")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steering: Option<xdp_prog::Counters>,
    /// Per broadcast, the slowest worker's fan-out time (`broadcast_fanout_seconds`).
    #[serde(default)]
    pub fanout_ms: crate::core::stats::MsHistogram,
    /// Per broadcast and worker, until no connection had it waiting (`message_log_lag_seconds`).
    #[serde(default)]
    pub log_lag_ms: crate::core::stats::MsHistogram,
    /// The cluster as this node sees it (`--cluster` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::supervisor::cluster::ClusterReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExpiryReport {
    pub expired: u64,
    pub expired_last_10s: u64,
    /// Removal rate over the last 10 seconds (seed 001's "expired connection removal rate").
    pub removal_rate_per_s: f64,
    /// Removals per second of time spent removing: what the server could sustain.
    pub removal_capacity_per_s: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemoryReport {
    /// RSS of every server process (supervisor and workers).
    pub rss_bytes: u64,
    pub supervisor_rss_bytes: u64,
    /// The cores' tables (connection states, device registry, timer wheel).
    pub core_heap_bytes: u64,
    /// The workers' message logs, resident (as far as written, and their index: at most
    /// `--log-size` and a tenth each).
    #[serde(default)]
    pub log_bytes: u64,
}

/// The answer to `POST /push?id=`: queued to the device's connection (a WebSocket or a held
/// long-poll), or the device is not connected to any worker. Queued is not delivered: the
/// connection may still close before its client reads it (at most once).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushResult {
    pub id: String,
    pub seq: u64,
    pub queued: bool,
    /// `"queued to a connected device"` or `"not connected"`.
    pub result: String,
}

impl PushResult {
    /// The device's worker died before it answered: whether it was queued is not known, and the
    /// device's connection is gone with that worker.
    pub fn lost(id: String, seq: u64) -> PushResult {
        PushResult {
            id,
            seq,
            queued: false,
            result: "lost: the device's worker died before answering".into(),
        }
    }

    pub fn new(id: String, seq: u64, queued: bool) -> PushResult {
        let result = if queued {
            "queued to a connected device"
        } else {
            "not connected"
        };
        PushResult {
            id,
            seq,
            queued,
            result: result.into(),
        }
    }
}

/// Why a worker was restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartReason {
    /// It exited by itself (an error, a panic).
    Exited,
    /// A signal killed it (kill -9, the OOM killer, a crash).
    Signal,
    /// It stopped answering (no pong within the hang timeout, its control queue full, or not
    /// ready in time after a restart): the supervisor killed it.
    Hung,
}

impl RestartReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartReason::Exited => "exited",
            RestartReason::Signal => "signal",
            RestartReason::Hung => "hung",
        }
    }
}

/// Worker restarts by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartCounts {
    pub total: u64,
    pub exited: u64,
    pub signal: u64,
    pub hung: u64,
}

impl RestartCounts {
    pub fn count(&mut self, reason: RestartReason) {
        self.total += 1;
        match reason {
            RestartReason::Exited => self.exited += 1,
            RestartReason::Signal => self.signal += 1,
            RestartReason::Hung => self.hung += 1,
        }
    }
}

/// How many restarts `/stats` lists.
pub const RECENT_RESTARTS: usize = 16;

/// One worker's death and restart.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RestartRecord {
    pub worker: usize,
    /// The process that died.
    pub pid: u32,
    pub reason: Option<RestartReason>,
    /// How it ended: "exit status 1", "signal 9 (SIGKILL)", and for `hung` why it was killed.
    pub status: String,
    /// Server uptime when it was found dead.
    pub at_uptime_s: f64,
    /// Its replacement, once started, and the time from the death to its ready report.
    pub new_pid: Option<u32>,
    pub restart_ms: Option<f64>,
}

/// The admin endpoint's counters (it is bounded: see `supervisor/admin_http.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminStats {
    /// Connections open now, and accepted since start.
    pub connections: u64,
    pub accepted: u64,
    /// Connections over the limit while every connection was in a request: answered 503 and
    /// closed.
    pub refused: u64,
    /// Connections waiting for a request (idle, or still sending a head) closed to make room for
    /// a new one at the limit.
    #[serde(default)]
    pub evicted_idle: u64,
    /// Connections that did not send a request head in time (or stayed idle too long).
    pub head_timeouts: u64,
    /// Request heads over the size limit (431).
    pub oversize_heads: u64,
    /// Request bodies not sent in time (408).
    pub body_timeouts: u64,
    /// Answers the client took none of for too long.
    pub write_timeouts: u64,
    /// Malformed requests and bodies (400).
    pub bad_requests: u64,
    /// Refused 401 (no or wrong admin token) or 403 (a foreign Host).
    #[serde(default)]
    pub unauthorized: u64,
}

/// The admin endpoint's live counters, shared with its HTTP server.
#[derive(Debug, Default)]
pub struct AdminCounters {
    pub open: AtomicU64,
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    pub evicted_idle: AtomicU64,
    pub head_timeouts: AtomicU64,
    pub oversize_heads: AtomicU64,
    pub body_timeouts: AtomicU64,
    pub write_timeouts: AtomicU64,
    pub bad_requests: AtomicU64,
    /// Requests refused 401 (no or wrong admin token) or 403 (a foreign Host).
    pub unauthorized: AtomicU64,
}

impl AdminCounters {
    pub fn snapshot(&self) -> AdminStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AdminStats {
            connections: get(&self.open),
            accepted: get(&self.accepted),
            refused: get(&self.refused),
            evicted_idle: get(&self.evicted_idle),
            head_timeouts: get(&self.head_timeouts),
            oversize_heads: get(&self.oversize_heads),
            body_timeouts: get(&self.body_timeouts),
            write_timeouts: get(&self.write_timeouts),
            bad_requests: get(&self.bad_requests),
            unauthorized: get(&self.unauthorized),
        }
    }
}

/// `GET /conns` (seed 003's format).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnsReport {
    pub closed: u64,
    pub conns: u64,
}

impl Report {
    pub fn new(
        stack: &str,
        uptime_s: f64,
        mut per_worker: Vec<WorkerStats>,
        broadcasts: u64,
        last_broadcast: Option<BroadcastResult>,
        supervisor_rss_bytes: u64,
    ) -> Report {
        per_worker.sort_by_key(|w| w.index);
        let mut totals = CoreStats::default();
        per_worker.iter().for_each(|w| totals.add(&w.core));
        let mut log_lag_ms = crate::core::stats::MsHistogram::default();
        per_worker.iter().for_each(|w| log_lag_ms.add(&w.log_lag_ms));
        // Each broadcast reaches every worker; count it once.
        totals.broadcasts = broadcasts;
        let sum = |f: fn(&WorkerStats) -> u64| per_worker.iter().map(f).sum::<u64>();
        let busy_s = sum(|w| w.expiry_busy_ns) as f64 / 1e9;
        let expired_last_10s = sum(|w| w.expired_last_10s);
        Report {
            stack: stack.to_string(),
            uptime_s,
            refused: sum(|w| w.refused),
            refused_per_source: sum(|w| w.refused_per_source),
            output_waiting: sum(|w| w.output_waiting),
            expiry: ExpiryReport {
                expired: totals.expired,
                expired_last_10s,
                removal_rate_per_s: expired_last_10s as f64 / 10.0,
                removal_capacity_per_s: (busy_s > 0.0).then(|| totals.expired as f64 / busy_s),
            },
            last_broadcast,
            memory: MemoryReport {
                rss_bytes: supervisor_rss_bytes + sum(|w| w.rss_bytes),
                supervisor_rss_bytes,
                core_heap_bytes: sum(|w| w.core_heap_bytes),
                log_bytes: sum(|w| w.log_bytes),
            },
            workers: per_worker.len(),
            totals,
            per_worker,
            workers_missing: Vec::new(),
            worker_restarts: RestartCounts::default(),
            restarts: Vec::new(),
            admin: AdminStats::default(),
            #[cfg(feature = "xdp")]
            steering: None,
            fanout_ms: Default::default(),
            log_lag_ms,
            cluster: None,
        }
    }

    pub fn render(&self, format: StatsFormat) -> (String, &'static str) {
        match format {
            StatsFormat::Json => (
                serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")),
                "application/json",
            ),
            StatsFormat::Conns => (
                serde_json::to_string(&ConnsReport {
                    closed: self.totals.closed,
                    conns: self.totals.connections,
                })
                .unwrap_or_default(),
                "application/json",
            ),
            StatsFormat::Prometheus => (self.prometheus(false), crate::metrics::TEXT_FORMAT),
            StatsFormat::OpenMetrics => (self.prometheus(true), crate::metrics::OPEN_METRICS),
        }
    }

    fn prometheus(&self, open_metrics: bool) -> String {
        crate::metrics::render(self, open_metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(index: usize, connections: u64, expired: u64) -> WorkerStats {
        WorkerStats {
            index,
            core: CoreStats {
                connections,
                expired,
                closed: expired,
                accepted: connections + expired,
                ..Default::default()
            },
            expiry_busy_ns: 1_000_000,
            expired_last_10s: expired,
            rss_bytes: 1000,
            ..Default::default()
        }
    }

    #[test]
    fn routes() {
        assert_eq!(
            route("GET", "/stats", b"", None),
            AdminRequest::Stats(StatsFormat::Json)
        );
        assert_eq!(
            route("HEAD", "/conns", b"", None),
            AdminRequest::Stats(StatsFormat::Conns)
        );
        assert_eq!(
            route("POST", "/push?id=dev-1", b"hello", None),
            AdminRequest::Push {
                id: "dev-1".into(),
                text: Some("hello".into())
            }
        );
        assert_eq!(
            route("POST", "/broadcast", b"", Some(0)),
            AdminRequest::Broadcast { text: None }
        );
        assert!(matches!(
            route("POST", "/push", b"", None),
            AdminRequest::Error { status: 400, .. }
        ));
        assert!(matches!(
            route("DELETE", "/stats", b"", None),
            AdminRequest::Error { status: 405, .. }
        ));
        assert!(matches!(
            route("GET", "/nope", b"", None),
            AdminRequest::Error { status: 404, .. }
        ));
        assert!(matches!(
            route("POST", "/broadcast", b"abc", Some(5000)),
            AdminRequest::Error { status: 400, .. }
        ));
        assert!(matches!(
            route("POST", "/broadcast", b"", Some(MAX_BODY + 1)),
            AdminRequest::Error { status: 413, .. }
        ));
        let big = vec![b'a'; MAX_BODY + 1];
        assert!(matches!(
            route("POST", "/broadcast", &big, None),
            AdminRequest::Error { status: 413, .. }
        ));
        assert!(matches!(
            route("POST", "/broadcast", b"\xff\xfe", None),
            AdminRequest::Error { status: 400, .. }
        ));
    }

    #[test]
    fn report_sums_workers_and_renders_every_format() {
        let r = Report::new("kernel", 2.0, vec![worker(1, 10, 4), worker(0, 5, 6)], 3, None, 500);
        assert_eq!(r.totals.connections, 15);
        assert_eq!(r.totals.broadcasts, 3);
        assert_eq!(r.per_worker[0].index, 0);
        assert_eq!(r.memory.rss_bytes, 2500);
        assert_eq!(r.expiry.removal_rate_per_s, 1.0);
        assert_eq!(r.expiry.removal_capacity_per_s, Some(5000.0));
        let (conns, _) = r.render(StatsFormat::Conns);
        assert_eq!(conns, r#"{"closed":10,"conns":15}"#);
        let (json, _) = r.render(StatsFormat::Json);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["connections"], 15);
        assert_eq!(v["stack"], "kernel");
        assert_eq!(v["per_worker"].as_array().unwrap().len(), 2);
        let (prom, _) = r.render(StatsFormat::Prometheus);
        assert!(
            prom.contains("# TYPE wsserver_connections gauge\nwsserver_connections 15\n"),
            "{prom}"
        );
        assert!(
            prom.contains("wsserver_closes_total{reason=\"expired\"} 10\n"),
            "{prom}"
        );
        assert!(prom.contains("wsserver_worker_connections{worker=\"1\"} 10\n"));
        assert!(prom.contains("# TYPE wsserver_closes_total counter\n"), "{prom}");
        assert!(!prom.contains("# EOF"), "the classic format has no end marker");
        let (om, content_type) = r.render(StatsFormat::OpenMetrics);
        assert!(content_type.starts_with("application/openmetrics-text"));
        assert!(om.contains("# TYPE wsserver_closes counter\n"), "{om}");
        assert!(om.ends_with("# EOF\n"));
    }

    #[test]
    fn restarts_and_admin_counters_are_in_json_and_metrics() {
        let mut r = Report::new("kernel", 2.0, vec![worker(0, 5, 0)], 0, None, 500);
        r.worker_restarts.count(RestartReason::Signal);
        r.worker_restarts.count(RestartReason::Hung);
        r.workers_missing = vec![1];
        r.admin.refused = 3;
        let (json, _) = r.render(StatsFormat::Json);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["worker_restarts"]["total"], 2);
        assert_eq!(v["worker_restarts"]["signal"], 1);
        assert_eq!(v["worker_restarts"]["hung"], 1);
        assert_eq!(v["workers_missing"], serde_json::json!([1]));
        assert_eq!(v["admin"]["refused"], 3);
        let (prom, _) = r.render(StatsFormat::Prometheus);
        assert!(
            prom.contains("wsserver_worker_restarts_total{reason=\"signal\"} 1\n"),
            "{prom}"
        );
        assert!(
            prom.contains("wsserver_worker_restarts_total{reason=\"exited\"} 0\n"),
            "{prom}"
        );
        assert!(
            prom.contains("wsserver_admin_refusals_total{reason=\"over_limit\"} 3\n"),
            "{prom}"
        );
        assert!(prom.contains("wsserver_workers_missing 1\n"), "{prom}");
        // A report from before these fields (ws-bench reads old JSON too) still parses.
        let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
        for k in ["worker_restarts", "restarts", "workers_missing", "admin"] {
            old.as_object_mut().unwrap().remove(k);
        }
        let back: Report = serde_json::from_value(old).unwrap();
        assert_eq!(back.worker_restarts, RestartCounts::default());
    }
}

/// Who may use the admin endpoint (`--admin-token-file`, `--admin-host`, `--admin-metrics-public`):
/// checked on every request before it is routed. Sans-I/O, tested below.
#[derive(Clone, Debug, Default)]
pub struct AdminAccess {
    /// The bearer token every endpoint but `/healthz` (and `/metrics` if public) requires.
    pub token: Option<crate::secret::Secret>,
    /// `/metrics` without the token (a Prometheus scraper with no secret).
    pub metrics_public: bool,
    /// Host header values accepted (the admin address, `localhost`, and `--admin-host` names):
    /// any other is a DNS-rebinding page in a browser and gets 403.
    pub hosts: Vec<String>,
}

impl AdminAccess {
    /// The Host values an admin endpoint on `addr` answers to, plus `extra` names.
    pub fn hosts_for(addr: std::net::SocketAddr, extra: &[String]) -> Vec<String> {
        let port = addr.port();
        let ip = match addr.ip() {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        };
        let mut hosts = vec![
            addr.to_string(),
            ip,
            format!("localhost:{port}"),
            "localhost".to_string(),
        ];
        if addr.ip().is_unspecified() {
            hosts.extend([
                format!("127.0.0.1:{port}"),
                "127.0.0.1".to_string(),
                format!("[::1]:{port}"),
                "[::1]".to_string(),
            ]);
        }
        for name in extra {
            hosts.push(name.clone());
            hosts.push(format!("{name}:{port}"));
        }
        hosts
    }

    /// Whether `host` (a Host header, or an Origin's host part) is one of ours.
    fn ours(&self, host: &str) -> bool {
        self.hosts.is_empty() || self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host.trim()))
    }

    /// `Ok` or the status and reason to answer with. `origin` and `fetch_site` are what a
    /// browser sends (`Origin`, `Sec-Fetch-Site`): a page on another site may post a "simple"
    /// request to 127.0.0.1 without a preflight (CSRF), so a foreign origin is refused too.
    pub fn check(
        &self,
        path: &str,
        host: Option<&str>,
        origin: Option<&str>,
        fetch_site: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<(), (u16, &'static str)> {
        // Probes (a load balancer's, Kubernetes') name the address they dialled: always open.
        if path == "/healthz" || path == "/readyz" {
            return Ok(());
        }
        if let Some(host) = host {
            if !self.ours(host) {
                return Err((403, "this Host is not the admin endpoint's (see --admin-host)"));
            }
        }
        if fetch_site.is_some_and(|s| s.trim().eq_ignore_ascii_case("cross-site")) {
            return Err((403, "cross-site requests are refused"));
        }
        if let Some(origin) = origin {
            let host = origin
                .split_once("://")
                .map_or(origin, |(_, h)| h)
                .trim_end_matches('/');
            if !self.ours(host) {
                return Err((403, "requests from another site's page are refused"));
            }
        }
        let Some(token) = &self.token else { return Ok(()) };
        if path == "/metrics" && self.metrics_public {
            return Ok(());
        }
        let presented = authorization
            .map(str::trim)
            .and_then(|v| v.get(..7).filter(|s| s.eq_ignore_ascii_case("bearer ")).and(v.get(7..)))
            .map(|v| v.trim().as_bytes())
            .filter(|v| !v.is_empty());
        match presented {
            Some(p) if constant_time_eq(p, token) => Ok(()),
            Some(_) => Err((401, "wrong admin token")),
            None => Err((
                401,
                "the admin endpoint needs Authorization: Bearer <token> (--admin-token-file)",
            )),
        }
    }
}

/// Equality whose time does not depend on where the bytes differ (a token guessed byte by byte
/// from response times is not guessed at all). The length is not secret.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod access_tests {
    use super::*;

    fn access(token: Option<&str>, metrics_public: bool) -> AdminAccess {
        AdminAccess {
            token: token.map(|t| crate::secret::Secret(t.as_bytes().to_vec())),
            metrics_public,
            hosts: AdminAccess::hosts_for("127.0.0.1:9001".parse().unwrap(), &["admin.example".to_string()]),
        }
    }

    #[test]
    fn the_token_is_asked_everywhere_but_healthz_and_public_metrics() {
        let a = access(Some("s3cret-admin-token"), false);
        let ok = Some("Bearer s3cret-admin-token");
        for path in ["/stats", "/conns", "/metrics", "/broadcast", "/push", "/"] {
            assert_eq!(a.check(path, Some("127.0.0.1:9001"), None, None, ok), Ok(()), "{path}");
            assert_eq!(
                a.check(path, Some("127.0.0.1:9001"), None, None, None).unwrap_err().0,
                401,
                "{path}"
            );
            assert_eq!(
                a.check(path, None, None, None, Some("Bearer s3cret-admin-tokeN"))
                    .unwrap_err()
                    .0,
                401
            );
            assert_eq!(
                a.check(path, None, None, None, Some("Basic s3cret-admin-token"))
                    .unwrap_err()
                    .0,
                401
            );
        }
        assert_eq!(a.check("/healthz", None, None, None, None), Ok(()));
        assert_eq!(
            access(Some("t0ken-of-16-bytes"), true).check("/metrics", None, None, None, None),
            Ok(())
        );
        // Without a token (loopback only, enforced at start) nothing is asked.
        assert_eq!(access(None, false).check("/push", None, None, None, None), Ok(()));
    }

    #[test]
    fn a_foreign_host_is_refused_whatever_the_token() {
        let a = access(Some("s3cret-admin-token"), false);
        let ok = Some("Bearer s3cret-admin-token");
        for host in [
            "127.0.0.1:9001",
            "localhost:9001",
            "localhost",
            "ADMIN.example:9001",
            "admin.example",
        ] {
            assert_eq!(a.check("/stats", Some(host), None, None, ok), Ok(()), "{host}");
        }
        for host in ["evil.example", "evil.example:9001", "127.0.0.1:9002", ""] {
            assert_eq!(
                a.check("/stats", Some(host), None, None, ok).unwrap_err().0,
                403,
                "{host}"
            );
        }
        assert_eq!(
            access(None, false)
                .check("/push", Some("rebound.example"), None, None, None)
                .unwrap_err()
                .0,
            403
        );
    }

    #[test]
    fn a_page_on_another_site_cannot_post_even_without_a_token() {
        let a = access(None, false);
        let host = Some("127.0.0.1:9001");
        let post = |origin, site| a.check("/broadcast", host, origin, site, None);
        assert_eq!(post(Some("https://evil.example"), None).unwrap_err().0, 403);
        assert_eq!(post(Some("null"), None).unwrap_err().0, 403);
        assert_eq!(post(None, Some("cross-site")).unwrap_err().0, 403);
        assert_eq!(post(Some("http://127.0.0.1:9001"), Some("same-origin")), Ok(()));
        assert_eq!(post(None, None), Ok(()), "curl and other tools send neither");
        let v6 = AdminAccess {
            hosts: AdminAccess::hosts_for("[::]:9001".parse().unwrap(), &[]),
            ..AdminAccess::default()
        };
        assert_eq!(v6.check("/stats", Some("[::1]:9001"), None, None, None), Ok(()));
        assert_eq!(v6.check("/stats", Some("[::]:9001"), None, None, None), Ok(()));
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}

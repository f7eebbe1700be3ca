//! `GET /metrics`: the report as Prometheus metrics, named as Prometheus asks (`_total` counters,
//! base units, a `reason` label instead of a metric per reason), with histograms and the process
//! metrics. Encoded by `prometheus-client` as OpenMetrics; served as such to a scraper that asks
//! for it (`Accept: application/openmetrics-text`), else in the classic text format 0.0.4
//! (`to_text_format`), which `promtool check metrics` and older tools read.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::admin::{Report, RestartReason};
use crate::core::stats::{MsHistogram, MS_BUCKETS};

pub const OPEN_METRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The version and commit this binary was built from (`--version`, `build_info`).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("WS_GIT_COMMIT"), ")");

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// An `MsHistogram` (counts by bucket, summed over workers) as a Prometheus histogram in seconds.
#[derive(Debug)]
struct Seconds(MsHistogram);

impl EncodeMetric for Seconds {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets: Vec<(f64, u64)> = MS_BUCKETS
            .iter()
            .zip(self.0.counts)
            .map(|(&ms, n)| (ms as f64 / 1000.0, n))
            .collect();
        buckets.push((f64::INFINITY, self.0.counts[MS_BUCKETS.len()]));
        encoder.encode_histogram::<NoLabelSet>(self.0.sum_ms as f64 / 1000.0, self.0.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let g: Gauge = Gauge::default();
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
    reg.register(name, help, g);
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

/// A counter with one label whose values are reasons (or results).
fn by(reg: &mut Registry, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
    let family = Family::<Labels, Counter>::default();
    for (value, n) in values {
        family.get_or_create(&labels(&[(label, value)])).inc_by(*n);
    }
    reg.register(name, help, family);
}

/// The report's metrics: OpenMetrics if `open_metrics`, else the classic text format.
pub fn render(r: &Report, open_metrics: bool) -> String {
    let mut root = Registry::default();
    // The process metrics every exporter has, for all the server's processes together.
    gauge(
        &mut root,
        "process_resident_memory_bytes",
        "Resident memory of the supervisor and every worker",
        r.memory.rss_bytes,
    );
    let reg = root.sub_registry_with_prefix("wsserver");
    let t = &r.totals;
    let build = Family::<Labels, Gauge>::default();
    build
        .get_or_create(&labels(&[
            ("version", env!("CARGO_PKG_VERSION")),
            ("commit", env!("WS_GIT_COMMIT")),
            ("stack", &r.stack),
        ]))
        .set(1);
    reg.register("build_info", "The build and stack serving (always 1)", build);
    gauge(reg, "connections", "Open connections", t.connections);
    gauge(reg, "websockets", "Upgraded WebSocket connections", t.websockets);
    gauge(reg, "polls_held", "Long-poll requests being held", t.polls_held);
    gauge(reg, "devices", "Registered device ids", t.devices);
    gauge(reg, "workers", "Worker processes", r.workers as u64);
    gauge(
        reg,
        "workers_missing",
        "Workers whose share is missing from this report (dead or restarting)",
        r.workers_missing.len() as u64,
    );
    gauge(
        reg,
        "output_waiting_connections",
        "Connections with output waiting in the message logs",
        r.output_waiting,
    );
    gauge(
        reg,
        "message_log_bytes",
        "Resident memory of the workers' message logs",
        r.memory.log_bytes,
    );
    gauge(
        reg,
        "resident_bytes_per_connection",
        "Resident memory of all server processes divided by the open connections (0 with none)",
        r.memory.rss_bytes.checked_div(t.connections).unwrap_or(0),
    );
    let per_worker = Family::<Labels, Gauge>::default();
    for w in &r.per_worker {
        per_worker
            .get_or_create(&labels(&[("worker", &w.index.to_string())]))
            .set(i64::try_from(w.core.connections).unwrap_or(i64::MAX));
    }
    reg.register("worker_connections", "Open connections per worker", per_worker);

    counter(reg, "accepted", "Connections accepted", t.accepted);
    by(
        reg,
        "closes",
        "Connections ended, by who ended them (expired: the idle timeout)",
        "reason",
        &[
            ("peer", t.closed_by_peer),
            ("client", t.closed_by_client),
            ("server", t.closed_by_server),
            ("expired", t.expired),
        ],
    );
    counter(
        reg,
        "slow_readers_closed",
        "Of the server's closes: connections closed (4008) as slow readers",
        t.slow_readers_closed,
    );
    counter(
        reg,
        "close_timeouts",
        "Of the server's closes: reset because the close frame could not be sent in time",
        t.close_timeouts,
    );
    counter(reg, "upgrades", "WebSocket upgrades", t.upgrades);
    by(
        reg,
        "connections_refused",
        "Connections refused by the transport",
        "reason",
        &[("capacity", r.refused), ("per_source", r.refused_per_source)],
    );
    by(
        reg,
        "requests_refused",
        "HTTP requests refused, by reason (401s by the credential's fault)",
        "reason",
        &[
            ("auth_missing", t.auth_missing),
            ("auth_malformed", t.auth_malformed),
            ("auth_expired", t.auth_expired),
            ("auth_bad_signature", t.auth_bad_signature),
            ("auth_wrong_device", t.auth_wrong_device),
            ("ids_without_key", t.ids_without_key),
            ("anonymous", t.anonymous_refused),
            ("origin", t.origin_refused),
            ("draining", t.refused_draining),
            ("request_timeout", t.request_timeouts),
        ],
    );
    counter(
        reg,
        "rejected_requests",
        "HTTP requests rejected, any reason",
        t.rejected_requests,
    );
    counter(
        reg,
        "protocol_errors",
        "Connections failed for a protocol violation",
        t.protocol_errors,
    );
    counter(
        reg,
        "devices_replaced",
        "Device connections replaced (4002) by a newer one",
        t.devices_replaced,
    );
    counter(reg, "messages_received", "Data messages received", t.messages_in);
    counter(reg, "messages_sent", "Data messages sent", t.messages_out);
    counter(reg, "received_bytes", "Bytes received", t.bytes_in);
    counter(reg, "sent_bytes", "Bytes sent", t.bytes_out);
    counter(reg, "broadcasts", "Broadcasts", t.broadcasts);
    by(
        reg,
        "pushes",
        "Targeted pushes, by result",
        "result",
        &[("queued", t.pushes_queued), ("missed", t.pushes_missed)],
    );
    by(
        reg,
        "resumes",
        "Reconnections with since=, by result",
        "result",
        &[("replayed", t.resumed), ("gap", t.resume_gaps)],
    );
    let restarts = &r.worker_restarts;
    by(
        reg,
        "worker_restarts",
        "Worker processes restarted, by reason",
        "reason",
        &[
            (RestartReason::Exited.as_str(), restarts.exited),
            (RestartReason::Signal.as_str(), restarts.signal),
            (RestartReason::Hung.as_str(), restarts.hung),
        ],
    );
    reg.register(
        "broadcast_fanout_seconds",
        "Per broadcast: the slowest worker's time to hand it to all its connections",
        Seconds(r.fanout_ms.clone()),
    );
    reg.register(
        "handshake_seconds",
        "Per upgrade: from the connection's accept to its 101 (request head, credential, answer)",
        Seconds(r.totals.handshake_ms.clone()),
    );
    reg.register(
        "message_log_lag_seconds",
        "Per broadcast and worker: until no connection had it waiting in the message log",
        Seconds(r.log_lag_ms.clone()),
    );
    admin_metrics(reg, r);
    if let Some(c) = &r.cluster {
        cluster_metrics(reg, c);
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &root);
    if open_metrics {
        out
    } else {
        to_text_format(&out)
    }
}

fn admin_metrics(reg: &mut Registry, r: &Report) {
    let a = &r.admin;
    gauge(
        reg,
        "admin_connections",
        "Admin endpoint connections open",
        a.connections,
    );
    counter(reg, "admin_accepted", "Admin endpoint connections accepted", a.accepted);
    by(
        reg,
        "admin_refusals",
        "Admin connections and requests refused or ended, by reason",
        "reason",
        &[
            ("over_limit", a.refused),
            ("evicted_idle", a.evicted_idle),
            ("head_timeout", a.head_timeouts),
            ("oversize_head", a.oversize_heads),
            ("body_timeout", a.body_timeouts),
            ("write_timeout", a.write_timeouts),
            ("bad_request", a.bad_requests),
            ("unauthorized", a.unauthorized),
        ],
    );
}

/// A cluster node's figures (`--cluster`).
fn cluster_metrics(reg: &mut Registry, c: &crate::supervisor::cluster::ClusterReport) {
    let node = Family::<Labels, Gauge>::default();
    node.get_or_create(&labels(&[("node", &c.node)]))
        .set(i64::from(c.state == "connected"));
    reg.register(
        "cluster_broker_connected",
        "1 while this node is connected to the cluster's broker, by node name",
        node,
    );
    gauge(
        reg,
        "cluster_peers",
        "Other nodes alive (heard within 3 s)",
        c.peers.len() as u64,
    );
    gauge(
        reg,
        "cluster_last_seq",
        "Sequence number of the newest broadcast here",
        c.last_seq,
    );
    gauge(
        reg,
        "cluster_lag_messages",
        "Broadcasts in the stream not yet delivered to this node",
        c.lag_messages,
    );
    let lag: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    lag.set(c.lag_ms as f64 / 1000.0);
    reg.register(
        "cluster_lag_seconds",
        "From the last broadcast's publication to its arrival here",
        lag,
    );
    by(
        reg,
        "cluster_broadcasts",
        "Broadcasts posted here, by result (unconfirmed: the broker did not confirm in time)",
        "result",
        &[
            ("published", c.broadcasts_published),
            ("not_published", c.broadcasts_not_published),
            ("unconfirmed", c.broadcasts_unconfirmed),
        ],
    );
    counter(
        reg,
        "cluster_broadcasts_received",
        "Broadcasts read from the stream",
        c.broadcasts_received,
    );
    counter(
        reg,
        "cluster_pushes_asked",
        "Pushes posted here and asked of the other nodes",
        c.pushes_asked,
    );
    by(
        reg,
        "cluster_push_results",
        "Pushes posted here that this node did not hold, by what became of them",
        "result",
        &[
            ("queued_elsewhere", c.pushes_queued_elsewhere),
            ("missed_everywhere", c.pushes_missed),
            ("not_asked", c.pushes_not_asked),
        ],
    );
    counter(
        reg,
        "cluster_push_answers_missing",
        "Live nodes that did not answer a push in time",
        c.push_answers_missing,
    );
    counter(
        reg,
        "cluster_pushes_answered",
        "Other nodes' push questions answered here",
        c.pushes_answered,
    );
    by(
        reg,
        "cluster_claims",
        "Device registrations announced or heard",
        "result",
        &[
            ("sent", c.claims_sent),
            ("dropped", c.claims_dropped),
            ("received", c.claims_received),
        ],
    );
    counter(
        reg,
        "cluster_devices_moved_away",
        "Connections closed (4002): their device connected to another node later",
        c.devices_moved_away,
    );
    counter(
        reg,
        "cluster_bad_messages",
        "Broker messages dropped: undecodable or out of bounds",
        c.bad_messages,
    );
    counter(
        reg,
        "cluster_replays_skipped",
        "Stream messages delivered again and skipped",
        c.replays_skipped,
    );
    counter(
        reg,
        "cluster_disconnects",
        "Times the broker connection was lost",
        c.disconnects,
    );
}

/// OpenMetrics as the classic text format: a counter's HELP and TYPE name its `_total` sample,
/// and there is no `# UNIT` or `# EOF`.
pub fn to_text_format(open_metrics: &str) -> String {
    let mut out = String::with_capacity(open_metrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in open_metrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split_once(' ').or(Some((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let sample = match kind {
                "counter" => format!("{name}_total"),
                _ => name.to_string(),
            };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {sample} {text}\n"));
            }
            out.push_str(&format!("# TYPE {sample} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_renamed_for_the_text_format() {
        let om = "# HELP x_y Things.\n# TYPE x_y counter\nx_y_total 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            to_text_format(om),
            "# HELP x_y_total Things.\n# TYPE x_y_total counter\nx_y_total 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }

    #[test]
    fn a_histogram_in_seconds_from_milliseconds() {
        let mut h = MsHistogram::default();
        h.record(3);
        h.record(40_000);
        let mut reg = Registry::default();
        reg.register("lag_seconds", "Lag", Seconds(h));
        let mut out = String::new();
        encode(&mut out, &reg).unwrap();
        assert!(out.contains("lag_seconds_bucket{le=\"0.005\"} 1"), "{out}");
        assert!(out.contains("lag_seconds_bucket{le=\"+Inf\"} 2"), "{out}");
        assert!(out.contains("lag_seconds_sum 40.003"), "{out}");
    }
}

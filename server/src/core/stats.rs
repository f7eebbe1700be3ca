//! Counters of one server core. Gauges (current values) and counters (since start); a driver with
//! several cores (the kernel stack's worker processes) sums them.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreStats {
    /// Gauge: open connections, in any phase.
    pub connections: u64,
    /// Gauge: upgraded WebSocket connections.
    pub websockets: u64,
    /// Gauge: long-poll requests being held.
    pub polls_held: u64,
    /// Gauge: registered device ids.
    pub devices: u64,

    pub accepted: u64,
    /// Every connection that ended, for any reason (= the sum of the `closed_*` and `expired`).
    pub closed: u64,
    /// The peer closed or reset the TCP connection, or the transport failed.
    pub closed_by_peer: u64,
    /// The client sent a WebSocket close frame.
    pub closed_by_client: u64,
    /// We closed: protocol error, rejected request, replaced device, shutdown, slow reader.
    pub closed_by_server: u64,
    /// Of those, connections whose output fell out of the message log (close code 4008).
    #[serde(default)]
    pub slow_readers_closed: u64,
    /// Connections we closed whose last output (a close frame, an HTTP answer) did not leave in
    /// time: reset.
    #[serde(default)]
    pub close_timeouts: u64,
    /// Silent for longer than the idle timeout.
    pub expired: u64,

    pub upgrades: u64,
    pub rejected_requests: u64,
    /// Requests refused 503 while the server drains (part of `rejected_requests`).
    #[serde(default)]
    pub refused_draining: u64,
    /// Requests for a device id refused `401` for their credential (`core/auth.rs`), by reason.
    #[serde(default)]
    pub auth_missing: u64,
    #[serde(default)]
    pub auth_malformed: u64,
    #[serde(default)]
    pub auth_expired: u64,
    #[serde(default)]
    pub auth_bad_signature: u64,
    #[serde(default)]
    pub auth_wrong_device: u64,
    /// Requests with a device id refused `401` because the server has no device key (and no
    /// `--insecure-ids`).
    #[serde(default)]
    pub ids_without_key: u64,
    /// Requests without a device id refused `401` by `--devices-only`.
    #[serde(default)]
    pub anonymous_refused: u64,
    /// Requests from a browser origin not in `--allowed-origin`, refused `403`.
    #[serde(default)]
    pub origin_refused: u64,
    /// Connections closed with 408 because their request head did not complete in time.
    pub request_timeouts: u64,
    pub protocol_errors: u64,
    pub devices_replaced: u64,

    /// Complete data messages received.
    pub messages_in: u64,
    /// Data messages sent (pushes, echoes, long-poll answers).
    pub messages_out: u64,
    /// Bytes consumed from / handed to the transport.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub pings: u64,
    pub echoed: u64,

    pub broadcasts: u64,
    /// Targeted pushes queued to a connected device, and those for a device not connected here.
    pub pushes_queued: u64,
    pub pushes_missed: u64,
    /// Reconnections with `?since=SEQ` that got every broadcast after SEQ from the log, and those
    /// that got a gap message instead (SEQ no longer in the log).
    #[serde(default)]
    pub resumed: u64,
    #[serde(default)]
    pub resume_gaps: u64,
    pub polls: u64,
    pub polls_answered_by_push: u64,
    pub polls_timed_out: u64,
    /// From a connection's accept to its `101` (the request head, the credential check and the
    /// answer), in milliseconds.
    #[serde(default)]
    pub handshake_ms: MsHistogram,
}

/// Upper bounds (ms) of the buckets of an `MsHistogram`; one more counts the rest.
pub const MS_BUCKETS: [u64; 14] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000];

/// Counts of durations in milliseconds by bucket (`MS_BUCKETS`, then everything longer), and
/// their sum: what a Prometheus histogram needs, summed over workers by adding.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsHistogram {
    pub counts: [u64; MS_BUCKETS.len() + 1],
    pub sum_ms: u64,
}

impl MsHistogram {
    pub fn record(&mut self, ms: u64) {
        let bucket = MS_BUCKETS.iter().position(|&b| ms <= b).unwrap_or(MS_BUCKETS.len());
        self.counts[bucket] += 1;
        self.sum_ms = self.sum_ms.saturating_add(ms);
    }

    pub fn add(&mut self, o: &MsHistogram) {
        for (a, b) in self.counts.iter_mut().zip(o.counts) {
            *a += b;
        }
        self.sum_ms = self.sum_ms.saturating_add(o.sum_ms);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl CoreStats {
    /// Add another core's counters (gauges add up too: each core holds its own connections).
    pub fn add(&mut self, o: &CoreStats) {
        macro_rules! sum {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        sum!(
            connections,
            websockets,
            polls_held,
            devices,
            accepted,
            closed,
            closed_by_peer,
            closed_by_client,
            closed_by_server,
            slow_readers_closed,
            close_timeouts,
            expired,
            upgrades,
            rejected_requests,
            refused_draining,
            auth_missing,
            auth_malformed,
            auth_expired,
            auth_bad_signature,
            auth_wrong_device,
            ids_without_key,
            anonymous_refused,
            origin_refused,
            request_timeouts,
            protocol_errors,
            devices_replaced,
            messages_in,
            messages_out,
            bytes_in,
            bytes_out,
            pings,
            echoed,
            broadcasts,
            pushes_queued,
            pushes_missed,
            resumed,
            resume_gaps,
            polls,
            polls_answered_by_push,
            polls_timed_out
        );
        self.handshake_ms.add(&o.handshake_ms);
    }
}

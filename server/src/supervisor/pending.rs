//! Admin requests (and periodic pushes) waiting for their workers' replies, and what is answered
//! once every worker replied or the wait timed out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::Supervisor;
use crate::admin::{self, respond, respond_json, BroadcastResult, Report, StatsFormat};
use crate::control::{FromWorker, WorkerStats};

pub(super) enum PendingKind {
    Stats(StatsFormat),
    Broadcast { seq: u64, payload_bytes: u64 },
    Push { id: String, seq: u64 },
}

/// An admin request (or a periodic push) waiting for worker replies.
pub(super) struct Pending {
    kind: PendingKind,
    remaining: usize,
    replies: Vec<FromWorker>,
    request: Option<tiny_http::Request>,
    started: Instant,
}

/// How long an admin request waits for its worker replies.
pub(super) const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The admin requests waiting for replies, by request number.
#[derive(Default)]
pub(super) struct PendingCalls {
    calls: HashMap<u64, Pending>,
    next_req: u64,
}

impl PendingCalls {
    /// A new call waiting for `remaining` replies; returns its request number.
    pub(super) fn start(&mut self, kind: PendingKind, remaining: usize, request: Option<tiny_http::Request>) -> u64 {
        self.next_req += 1;
        let req = self.next_req;
        self.calls.insert(
            req,
            Pending {
                kind,
                remaining,
                replies: Vec::new(),
                request,
                started: Instant::now(),
            },
        );
        req
    }

    /// A worker's reply to `req`; returns the call once it has every reply.
    pub(super) fn reply(&mut self, req: u64, msg: FromWorker) -> Option<Pending> {
        let p = self.calls.get_mut(&req)?;
        p.replies.push(msg);
        p.remaining -= 1;
        if p.remaining == 0 {
            self.calls.remove(&req)
        } else {
            None
        }
    }

    /// The calls that waited longer than `REPLY_TIMEOUT`, removed.
    pub(super) fn expired(&mut self) -> Vec<(u64, Pending)> {
        let late: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, p)| p.started.elapsed() > REPLY_TIMEOUT)
            .map(|(k, _)| *k)
            .collect();
        late.into_iter()
            .filter_map(|req| self.calls.remove(&req).map(|p| (req, p)))
            .collect()
    }
}

impl Supervisor {
    pub(super) fn expire_pending(&mut self) {
        for (req, p) in self.pending.expired() {
            log::warn!(
                "admin request {req}: {} worker(s) did not answer in {REPLY_TIMEOUT:?}",
                p.remaining
            );
            self.complete(p, true);
        }
    }

    /// Answer a call once every worker replied (or, `partial`, the wait timed out: 504).
    pub(super) fn complete(&mut self, p: Pending, partial: bool) {
        let status = if partial { 504 } else { 200 };
        let elapsed_ms = p.started.elapsed().as_secs_f64() * 1000.0;
        match p.kind {
            PendingKind::Stats(format) => {
                let report = self.report(p.replies);
                let (body, content_type) = report.render(format);
                if let Some(request) = p.request {
                    respond(request, status, body, content_type);
                }
            }
            PendingKind::Broadcast { seq, payload_bytes } => {
                let result = broadcast_result(seq, payload_bytes, elapsed_ms, &p.replies);
                log::info!(
                    "broadcast #{seq}: {} websockets and {} polls in {:.1} ms (slowest worker {:.1} ms)",
                    result.websockets,
                    result.polls,
                    result.elapsed_ms,
                    result.fanout_ms
                );
                self.broadcasts_done += 1;
                self.last_broadcast = Some(result.clone());
                if let Some(request) = p.request {
                    respond_json(request, status, &serde_json::to_value(&result).unwrap_or_default());
                }
            }
            PendingKind::Push { id, seq } => {
                let queued = p
                    .replies
                    .iter()
                    .any(|m| matches!(m, FromWorker::Push { queued: true, .. }));
                if let Some(request) = p.request {
                    let result = admin::PushResult::new(id, seq, queued);
                    respond_json(request, status, &serde_json::to_value(&result).unwrap_or_default());
                }
            }
        }
    }

    /// `/stats` from the workers' replies and the supervisor's own figures.
    fn report(&self, replies: Vec<FromWorker>) -> Report {
        let stats: Vec<WorkerStats> = replies
            .into_iter()
            .filter_map(|m| match m {
                FromWorker::Stats { stats, .. } => Some(*stats),
                _ => None,
            })
            .collect();
        #[allow(unused_mut)] // the xdp build adds the steering counters
        let mut report = Report::new(
            self.cfg.stack_name(),
            self.started.elapsed().as_secs_f64(),
            stats,
            self.broadcasts_done,
            self.last_broadcast.clone(),
            host::process::own_rss_bytes(),
        );
        #[cfg(feature = "xdp")]
        {
            report.steering = self.xdp.as_ref().and_then(|a| a.counters());
        }
        report
    }
}

/// A broadcast's result, summed over the workers' replies (the slowest worker's fan-out).
fn broadcast_result(seq: u64, payload_bytes: u64, elapsed_ms: f64, replies: &[FromWorker]) -> BroadcastResult {
    let mut result = BroadcastResult {
        seq,
        payload_bytes,
        elapsed_ms,
        ..Default::default()
    };
    for m in replies {
        if let FromWorker::Broadcast {
            websockets,
            polls,
            fanout_us,
            ..
        } = m
        {
            result.websockets += websockets;
            result.polls += polls;
            result.fanout_ms = result.fanout_ms.max(*fanout_us as f64 / 1000.0);
        }
    }
    result.queued = result.websockets + result.polls;
    result
}

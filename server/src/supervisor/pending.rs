//! Admin requests (and periodic pushes) waiting for their workers' replies, and what is answered
//! once every worker it waits for replied, died, or the wait timed out.
//!
//! A call waits for a set of workers (those running when it started), not a count: a worker that
//! dies is taken out of every call waiting for it and listed as missing, so nothing waits for a
//! dead worker, and its replacement (the same index) is never mistaken for it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::admin_http::Responder;
use super::Supervisor;
use crate::admin::{self, BroadcastResult, Report, StatsFormat, RECENT_RESTARTS};
use crate::control::{FromWorker, WorkerStats};

pub(super) enum PendingKind {
    Stats(StatsFormat),
    Broadcast {
        seq: u64,
        payload_bytes: u64,
    },
    /// `count_miss`: a "not connected" answer is this process's to count (one node, asked by
    /// the admin; in a cluster the combined answer is counted by the cluster).
    Push {
        id: String,
        seq: u64,
        count_miss: bool,
    },
}

/// An admin request (or a periodic push) waiting for worker replies.
pub(super) struct Pending {
    kind: PendingKind,
    /// Workers whose reply it still waits for.
    awaiting: Vec<usize>,
    /// Workers whose share it will not get: not running when it started, or died since.
    missing: Vec<usize>,
    replies: Vec<FromWorker>,
    request: Option<Responder>,
    started: Instant,
}

impl Pending {
    /// A call that waits for nobody (every worker it would ask is down): answered at once.
    pub(super) fn now(kind: PendingKind, missing: Vec<usize>, request: Option<Responder>) -> Pending {
        Pending {
            kind,
            awaiting: Vec::new(),
            missing,
            replies: Vec::new(),
            request,
            started: Instant::now(),
        }
    }
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
    /// The number the next call will have (commands are sent with it before `start`).
    pub(super) fn next_req(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    /// Call `req` (from `next_req`) waits for `awaiting`; returns it at once if that is nobody.
    pub(super) fn start(
        &mut self,
        req: u64,
        kind: PendingKind,
        awaiting: Vec<usize>,
        missing: Vec<usize>,
        request: Option<Responder>,
    ) -> Option<Pending> {
        let p = Pending {
            awaiting,
            ..Pending::now(kind, missing, request)
        };
        if p.awaiting.is_empty() {
            return Some(p);
        }
        self.calls.insert(req, p);
        None
    }

    /// Worker `worker`'s reply to `req`; returns the call once it has every reply it waits for.
    /// A reply from a worker it does not wait for (a restarted worker that was sent a broadcast
    /// while starting) is ignored.
    pub(super) fn reply(&mut self, req: u64, worker: usize, msg: FromWorker) -> Option<Pending> {
        let p = self.calls.get_mut(&req)?;
        let at = p.awaiting.iter().position(|&w| w == worker)?;
        p.awaiting.swap_remove(at);
        p.replies.push(msg);
        if p.awaiting.is_empty() {
            self.calls.remove(&req)
        } else {
            None
        }
    }

    /// Worker `worker` died: it is missing from every call that waited for it; returns the calls
    /// that now have every reply they can get.
    pub(super) fn worker_gone(&mut self, worker: usize) -> Vec<(u64, Pending)> {
        let mut done = Vec::new();
        for (&req, p) in self.calls.iter_mut() {
            if let Some(at) = p.awaiting.iter().position(|&w| w == worker) {
                p.awaiting.swap_remove(at);
                p.missing.push(worker);
                if p.awaiting.is_empty() {
                    done.push(req);
                }
            }
        }
        done.into_iter()
            .filter_map(|req| self.calls.remove(&req).map(|p| (req, p)))
            .collect()
    }

    /// The calls that waited longer than `REPLY_TIMEOUT`, removed (the late workers listed as
    /// missing).
    pub(super) fn expired(&mut self) -> Vec<(u64, Pending)> {
        let late: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, p)| p.started.elapsed() > REPLY_TIMEOUT)
            .map(|(k, _)| *k)
            .collect();
        late.into_iter()
            .filter_map(|req| {
                self.calls.remove(&req).map(|mut p| {
                    let late = std::mem::take(&mut p.awaiting);
                    p.missing.extend(late);
                    (req, p)
                })
            })
            .collect()
    }

    /// Calls waiting now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.calls.len()
    }
}

impl Supervisor {
    pub(super) fn expire_pending(&mut self) {
        for (req, p) in self.pending.expired() {
            log::warn!(
                "admin request {req}: worker(s) {:?} did not answer in {REPLY_TIMEOUT:?}",
                p.missing
            );
            self.complete(p, true);
        }
    }

    /// Answer a call once every worker it waits for replied or died (or, `timed_out`, the wait
    /// ran out: 504). Workers that died are listed as missing: their share is not there, and
    /// the answer says so rather than wait for them.
    pub(super) fn complete(&mut self, mut p: Pending, timed_out: bool) {
        let status = if timed_out { 504 } else { 200 };
        let elapsed_ms = p.started.elapsed().as_secs_f64() * 1000.0;
        p.missing.sort_unstable();
        p.missing.dedup();
        match p.kind {
            PendingKind::Stats(format) => {
                let mut report = self.report(p.replies);
                report.workers_missing = p.missing;
                let (body, content_type) = report.render(format);
                if let Some(request) = p.request {
                    request.respond(status, body, content_type);
                }
            }
            PendingKind::Broadcast { seq, payload_bytes } => {
                let mut result = broadcast_result(seq, payload_bytes, elapsed_ms, &p.replies);
                result.workers_missing = p.missing;
                log::info!(
                    event = "broadcast", seq = seq, websockets = result.websockets, polls = result.polls,
                    fanout_ms = result.fanout_ms;
                    "broadcast #{seq}: {} websockets and {} polls in {:.1} ms (slowest worker {:.1} ms){}",
                    result.websockets,
                    result.polls,
                    result.elapsed_ms,
                    result.fanout_ms,
                    if result.workers_missing.is_empty() {
                        String::new()
                    } else {
                        format!("; not taken by worker(s) {:?} (down)", result.workers_missing)
                    }
                );
                self.broadcasts_done += 1;
                if result.fanout_ms.is_finite() {
                    self.fanout_ms.record(result.fanout_ms.round() as u64);
                }
                self.last_broadcast = Some(result.clone());
                if let Some(request) = p.request {
                    request.respond_json(status, &serde_json::to_value(&result).unwrap_or_default());
                }
            }
            PendingKind::Push { id, seq, count_miss } => {
                let queued = p
                    .replies
                    .iter()
                    .any(|m| matches!(m, FromWorker::Push { queued: true, .. }));
                self.pushes_missed += u64::from(!queued && count_miss);
                if let Some(request) = p.request {
                    let result = if !queued && !p.missing.is_empty() {
                        admin::PushResult::lost(id, seq)
                    } else {
                        admin::PushResult::new(id, seq, queued)
                    };
                    request.respond_json(status, &serde_json::to_value(&result).unwrap_or_default());
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
        let mut report = Report::new(
            self.cfg.stack_name(),
            self.started.elapsed().as_secs_f64(),
            stats,
            self.broadcasts_done,
            self.last_broadcast.clone(),
            host::process::own_rss_bytes(),
        );
        report.totals.pushes_missed = match &self.cluster {
            Some(c) => c.pushes_missed(),
            None => self.pushes_missed,
        };
        report.worker_restarts = self.restart_counts;
        report.restarts = self
            .restarts
            .iter()
            .rev()
            .take(RECENT_RESTARTS)
            .rev()
            .map(|(_, r)| r.clone())
            .collect();
        report.admin = self.admin_counters.snapshot();
        report.fanout_ms = self.fanout_ms.clone();
        report.cluster = self.cluster.as_ref().map(|c| c.report());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_reply(req: u64) -> FromWorker {
        FromWorker::Stats {
            req,
            stats: Box::default(),
        }
    }

    #[test]
    fn a_call_waits_for_the_workers_it_asked_and_no_longer_for_a_dead_one() {
        let mut calls = PendingCalls::default();
        let req = calls.next_req();
        assert!(calls
            .start(req, PendingKind::Stats(StatsFormat::Json), vec![0, 1, 2], vec![3], None)
            .is_none());
        assert!(calls.reply(req, 0, stats_reply(req)).is_none());
        assert!(
            calls.reply(req, 0, stats_reply(req)).is_none(),
            "a second reply of 0 is not 1's"
        );
        assert!(calls.reply(req, 3, stats_reply(req)).is_none(), "3 was not asked");
        // Worker 1 dies: the call still waits for 2.
        assert!(calls.worker_gone(1).is_empty());
        let p = calls.reply(req, 2, stats_reply(req)).expect("complete");
        assert_eq!(p.replies.len(), 2);
        let mut missing = p.missing.clone();
        missing.sort_unstable();
        assert_eq!(missing, vec![1, 3]);
        assert_eq!(calls.len(), 0);
    }

    #[test]
    fn a_death_answers_every_call_that_waited_only_for_it() {
        let mut calls = PendingCalls::default();
        let a = calls.next_req();
        calls.start(
            a,
            PendingKind::Push {
                id: "d".into(),
                seq: 1,
                count_miss: true,
            },
            vec![1],
            vec![],
            None,
        );
        let b = calls.next_req();
        calls.start(
            b,
            PendingKind::Broadcast {
                seq: 2,
                payload_bytes: 10,
            },
            vec![0, 1],
            vec![],
            None,
        );
        let done = calls.worker_gone(1);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].0, a);
        assert_eq!(done[0].1.missing, vec![1]);
        assert_eq!(calls.len(), 1, "b still waits for worker 0");
        assert!(calls.reply(b, 0, stats_reply(b)).is_some());
        // A call that waits for nobody is answered at once.
        let c = calls.next_req();
        let now = calls.start(c, PendingKind::Stats(StatsFormat::Conns), vec![], vec![0, 1], None);
        assert_eq!(now.map(|p| p.missing), Some(vec![0, 1]));
        assert_eq!(calls.len(), 0);
    }
}

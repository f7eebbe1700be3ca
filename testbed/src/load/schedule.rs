//! When a load process does what, sans-I/O: connect pacing (rate, concurrency bound, bursts), the
//! handshake-timeout queue, heartbeat and data rounds, when to stop holding, the close phase and
//! its grace time, and progress lines. Both load processes (kernel sockets, and the userspace
//! stack over AF_XDP) drive it the same way: they call [`Schedule::next`] with the monotonic time
//! and do what each [`Step`] says, doing their I/O when it says [`Step::Wait`]. It never reads a
//! clock and never touches a connection: it asks the driver about them through [`Conns`]; the
//! per-connection protocol is `session.rs`.

use std::collections::VecDeque;
use std::time::Duration;

use super::session::State;
use super::ChildPlan;

/// A progress line is due this often.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// What the two drivers set differently.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Handshake timeouts and heartbeat/data rounds are looked at once per tick.
    pub tick: Duration,
    /// How long closing may take before the process reports and exits anyway.
    pub close_grace: Duration,
    /// Connections opened per round at most (a round ends with [`Step::Wait`]), so receiving
    /// never starves behind connecting.
    pub connect_burst: usize,
    /// The longest I/O wait while connections are still to be opened.
    pub connect_poll: Duration,
}

/// The driver's connections as the schedule sees them. Read at every step, so it is never stale.
pub trait Conns {
    /// Connections still held by the driver, in any state: closing ends when none is left.
    fn live(&self) -> usize;
    /// Connections in Connecting or Handshake: the concurrency bound counts these.
    fn handshaking(&self) -> usize;
    /// Established connections still open.
    fn open(&self) -> u64;
    /// Open connections that received `expect_broadcasts` broadcasts.
    fn reached_expected(&self) -> u64;
    /// The state of connection `n`, if `slot` still holds it (slots are reused).
    fn state(&self, slot: usize, n: u64) -> Option<State>;
}

/// What the driver does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Open connection number `n`; if it started, tell [`Schedule::opened`].
    Connect(u64),
    /// The connection in `slot` is still handshaking past its deadline: count `cause` as its
    /// failure and drop it.
    TimeOut { slot: usize, cause: &'static str },
    /// Heartbeat pings and data frames for this tick's slots.
    Periodic(Round),
    /// Stop holding: start the close handshake on every connection.
    BeginClose(HoldEnd),
    /// Write a progress line.
    Progress,
    /// Write the final line and exit; every later call says the same.
    Finish,
    /// Nothing more to do now: do I/O for at most this long, then ask again.
    Wait(Duration),
}

/// Why the hold ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldEnd {
    /// `hold_ms` passed since connecting was done.
    HoldTime,
    /// Every open connection received `expect_broadcasts` broadcasts.
    ExpectedBroadcasts,
    /// [`Schedule::stop`] (SIGTERM or SIGINT).
    Stopped,
    /// `duration_ms` since the start, connecting included.
    Duration,
}

/// One tick's heartbeat and data-round work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Round {
    pub tick_no: u64,
    tick_ms: u64,
    ping_interval_ms: u64,
    send_interval_ms: u64,
}

impl Round {
    /// Which of `slots` table slots get a heartbeat ping (`true`) or a data-round frame (`false`):
    /// each job visits every k-th slot per tick (k = interval / tick), so every connection is
    /// served once per interval and no tick touches them all.
    pub fn slots(self, slots: usize) -> impl Iterator<Item = (usize, bool)> {
        let jobs = [(self.ping_interval_ms, true), (self.send_interval_ms, false)];
        let tick_ms = self.tick_ms.max(1);
        jobs.into_iter()
            .filter(move |&(interval_ms, _)| interval_ms > 0 && slots > 0)
            .flat_map(move |(interval_ms, is_ping)| {
                let k = (interval_ms / tick_ms).max(1) as usize;
                let phase = (self.tick_no % k as u64) as usize;
                (phase..slots).step_by(k).map(move |slot| (slot, is_ping))
            })
    }
}

/// One load process's schedule. Times are CLOCK_MONOTONIC nanoseconds.
pub struct Schedule {
    timing: Timing,
    first: u64,
    end: u64,
    /// Connections per second (0: as fast as the other bounds allow).
    rate: f64,
    concurrency: usize,
    connect_timeout_ns: u64,
    hold_ns: u64,
    duration_ns: u64,
    expect_broadcasts: u64,
    ping_interval_ms: u64,
    send_interval_ms: u64,
    start_ns: u64,
    next_n: u64,
    /// Handshakes in flight, oldest first: (slot, connection number, deadline).
    inflight: VecDeque<(usize, u64, u64)>,
    done_at: Option<u64>,
    closing_at: Option<u64>,
    stopped: bool,
    next_tick_ns: u64,
    tick_no: u64,
    next_progress_ns: u64,
    /// Connections opened in this round.
    burst: usize,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn ms_ns(ms: u64) -> u64 {
    ms.saturating_mul(1_000_000)
}

impl Schedule {
    pub fn new(plan: &ChildPlan, timing: Timing, start_ns: u64) -> Schedule {
        Schedule {
            timing,
            first: plan.first,
            end: plan.first + plan.count,
            rate: plan.rate,
            concurrency: plan.concurrency,
            connect_timeout_ns: ms_ns(plan.connect_timeout_ms),
            hold_ns: ms_ns(plan.hold_ms),
            duration_ns: ms_ns(plan.duration_ms),
            expect_broadcasts: plan.expect_broadcasts,
            ping_interval_ms: plan.ping_interval_ms,
            send_interval_ms: plan.send_interval_ms,
            start_ns,
            next_n: plan.first,
            inflight: VecDeque::new(),
            done_at: None,
            closing_at: None,
            stopped: false,
            next_tick_ns: start_ns,
            tick_no: 0,
            next_progress_ns: start_ns,
            burst: 0,
        }
    }

    /// Connection `n` (from [`Step::Connect`]) started in `slot` at `since_ns`: it must finish its
    /// handshake within the connect timeout.
    pub fn opened(&mut self, slot: usize, n: u64, since_ns: u64) {
        self.inflight
            .push_back((slot, n, since_ns.saturating_add(self.connect_timeout_ns)));
    }

    /// End the hold at the next step (a signal).
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// Every connection was attempted and none is handshaking any more.
    pub fn done_connecting(&self) -> bool {
        self.done_at.is_some()
    }

    /// What to do at `now_ns`. Call again after doing it; a round ends with [`Step::Wait`].
    pub fn next(&mut self, now_ns: u64, conns: &impl Conns) -> Step {
        if now_ns >= self.next_tick_ns {
            if let Some(step) = self.tick(now_ns, conns) {
                return step;
            }
        }
        if self.closing_at.is_none() {
            if let Some(why) = self.hold_end(now_ns, conns) {
                self.closing_at = Some(now_ns);
                return Step::BeginClose(why);
            }
        }
        if let Some(since) = self.closing_at {
            if conns.live() == 0 || now_ns.saturating_sub(since) >= ns(self.timing.close_grace) {
                return Step::Finish;
            }
        }
        if now_ns >= self.next_progress_ns {
            // Steady from the start; after a stall the missed lines are skipped, not bunched.
            let every = ns(PROGRESS_EVERY);
            self.next_progress_ns += ((now_ns - self.next_progress_ns) / every + 1) * every;
            return Step::Progress;
        }
        if let Some(n) = self.connect(now_ns, conns) {
            return Step::Connect(n);
        }
        if self.done_at.is_none() && self.next_n >= self.end && self.inflight.is_empty() {
            self.done_at = Some(now_ns);
        }
        self.burst = 0;
        Step::Wait(self.wait(now_ns))
    }

    /// Handshake timeouts oldest first (one step each), then the tick's periodic round. The
    /// queue is in deadline order, so the walk stops at the first connection still in time.
    fn tick(&mut self, now_ns: u64, conns: &impl Conns) -> Option<Step> {
        while let Some(&(slot, n, deadline)) = self.inflight.front() {
            let cause = match conns.state(slot, n) {
                Some(State::Connecting) => "connect_timeout",
                Some(State::Handshake) => "handshake_timeout",
                // Established or gone: nothing to time out.
                _ => {
                    self.inflight.pop_front();
                    continue;
                }
            };
            if deadline > now_ns {
                break;
            }
            self.inflight.pop_front();
            return Some(Step::TimeOut { slot, cause });
        }
        self.tick_no += 1;
        self.next_tick_ns = now_ns.saturating_add(ns(self.timing.tick));
        let idle = self.ping_interval_ms == 0 && self.send_interval_ms == 0;
        (self.closing_at.is_none() && !idle).then_some(Step::Periodic(Round {
            tick_no: self.tick_no,
            tick_ms: self.timing.tick.as_millis() as u64,
            ping_interval_ms: self.ping_interval_ms,
            send_interval_ms: self.send_interval_ms,
        }))
    }

    fn hold_end(&self, now_ns: u64, conns: &impl Conns) -> Option<HoldEnd> {
        let held = self.done_at.is_some_and(|t| now_ns.saturating_sub(t) >= self.hold_ns);
        let got_all = self.expect_broadcasts > 0 && self.done_at.is_some() && conns.reached_expected() >= conns.open();
        if held {
            Some(HoldEnd::HoldTime)
        } else if got_all {
            Some(HoldEnd::ExpectedBroadcasts)
        } else if self.stopped {
            Some(HoldEnd::Stopped)
        } else if now_ns.saturating_sub(self.start_ns) >= self.duration_ns {
            Some(HoldEnd::Duration)
        } else {
            None
        }
    }

    /// The next connection number, if the rate, the concurrency bound and the burst allow one.
    fn connect(&mut self, now_ns: u64, conns: &impl Conns) -> Option<u64> {
        if self.closing_at.is_some()
            || self.next_n >= self.end
            || self.burst >= self.timing.connect_burst
            || conns.handshaking() >= self.concurrency
        {
            return None;
        }
        if self.rate > 0.0 {
            // One at the start, then one per 1/rate seconds.
            let elapsed_s = now_ns.saturating_sub(self.start_ns) as f64 / 1e9;
            let allowed = (elapsed_s * self.rate).floor() as u64 + 1;
            if self.next_n - self.first >= allowed {
                return None;
            }
        }
        let n = self.next_n;
        self.next_n += 1;
        self.burst += 1;
        Some(n)
    }

    /// Short while connecting (new connections are due), else until the next tick or progress line.
    fn wait(&self, now_ns: u64) -> Duration {
        let connecting = self.closing_at.is_none() && self.next_n < self.end;
        let most = if connecting {
            self.timing.connect_poll
        } else {
            self.timing.tick
        };
        let until = |t: u64| Duration::from_nanos(t.saturating_sub(now_ns));
        most.min(until(self.next_tick_ns)).min(until(self.next_progress_ns))
    }
}

#[cfg(test)]
mod tests;

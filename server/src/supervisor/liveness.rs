//! When silence makes a worker hung (sans-I/O, so it is tested without processes).
//!
//! A worker that answers no ping for the hang timeout is killed and restarted. Two things make
//! silence lie: the supervisor's own loop being held up (pongs wait in its queue unseen), and a
//! machine so overloaded that every worker answers late. Measured: at 1M kernel connections on
//! two cores with a 5 s timeout, all 67 workers were silent at once during a broadcast, and all
//! were killed (every connection lost). So the loop's own lateness does not count, and at most
//! one worker is killed as hung per timeout period.

use std::time::{Duration, Instant};

/// The loop checks workers every 100 ms; a check this late means the supervisor was held up.
pub(super) const LATE_WATCH: Duration = Duration::from_secs(1);

pub(super) struct Liveness {
    pub(super) timeout: Option<Duration>,
    last_watch: Instant,
    last_kill: Option<Instant>,
}

impl Liveness {
    pub(super) fn new(timeout: Option<Duration>, now: Instant) -> Liveness {
        Liveness {
            timeout,
            last_watch: now,
            last_kill: None,
        }
    }

    /// A watch at `now`: how long the loop itself was late (to be forgiven every worker's
    /// silence), if it was.
    pub(super) fn watch(&mut self, now: Instant) -> Option<Duration> {
        let late = now.saturating_duration_since(self.last_watch);
        self.last_watch = now;
        (late > LATE_WATCH).then_some(late)
    }

    /// Whether a worker silent since `last_pong` is hung and may be killed now.
    pub(super) fn hung(&self, last_pong: Instant, now: Instant) -> bool {
        let Some(limit) = self.timeout else { return false };
        now.saturating_duration_since(last_pong) > limit
            && self
                .last_kill
                .is_none_or(|at| now.saturating_duration_since(at) >= limit)
    }

    pub(super) fn killed(&mut self, now: Instant) {
        self.last_kill = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn silence_past_the_timeout_is_a_hang_and_none_without_one() {
        let t0 = Instant::now();
        let l = Liveness::new(Some(5 * S), t0);
        assert!(!l.hung(t0, t0 + 5 * S));
        assert!(l.hung(t0, t0 + 6 * S));
        assert!(!Liveness::new(None, t0).hung(t0, t0 + 3600 * S));
    }

    #[test]
    fn at_most_one_kill_per_timeout_period() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Some(5 * S), t0);
        let now = t0 + 10 * S;
        // Three workers silent since t0: the first is killed, the others wait a period.
        assert!(l.hung(t0, now));
        l.killed(now);
        assert!(!l.hung(t0, now));
        assert!(!l.hung(t0, now + 4 * S));
        assert!(l.hung(t0, now + 5 * S));
    }

    #[test]
    fn a_late_loop_is_reported_so_its_delay_is_not_counted() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Some(5 * S), t0);
        assert_eq!(l.watch(t0 + Duration::from_millis(100)), None);
        assert_eq!(l.watch(t0 + 7 * S), Some(7 * S - Duration::from_millis(100)));
        assert_eq!(l.watch(t0 + 7 * S + Duration::from_millis(100)), None);
    }
}

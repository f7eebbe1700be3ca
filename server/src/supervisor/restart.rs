//! When a dead worker is started again (sans-I/O: the supervisor passes the time in).
//!
//! A worker that dies is restarted on its index at once. One that keeps dying is restarted after
//! a growing pause (250 ms, 500 ms, 1 s, then 2 s), and past `max` deaths of one index within
//! `window` the server stops with a clear error instead: a worker that cannot live (a bad
//! interface, a crash on start) must not be restarted for ever while the log fills up.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The longest pause before a restart.
const MAX_PAUSE: Duration = Duration::from_secs(2);
/// The pause before the second restart within the window; it doubles after.
const FIRST_PAUSE: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after this pause (zero: now).
    Restart { after: Duration },
    /// It died more than `max` times within the window: stop the server.
    GiveUp { deaths: usize },
}

pub struct RestartPolicy {
    window: Duration,
    max: usize,
    /// Per worker index, when it died within the window (oldest first).
    deaths: Vec<VecDeque<Instant>>,
}

impl RestartPolicy {
    /// `max` restarts of one worker within `window` (0: never restart, a death stops the server).
    pub fn new(workers: usize, max: usize, window: Duration) -> RestartPolicy {
        RestartPolicy {
            window,
            max,
            deaths: vec![VecDeque::new(); workers],
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Worker `index` died (or could not be started) at `now`: what to do.
    pub fn on_death(&mut self, index: usize, now: Instant) -> Decision {
        let Some(deaths) = self.deaths.get_mut(index) else {
            return Decision::GiveUp { deaths: 1 };
        };
        while deaths
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= self.window)
        {
            deaths.pop_front();
        }
        deaths.push_back(now);
        // Never more entries than it takes to decide.
        while deaths.len() > self.max + 1 {
            deaths.pop_front();
        }
        let n = deaths.len();
        if n > self.max {
            return Decision::GiveUp { deaths: n };
        }
        let after = match n {
            0 | 1 => Duration::ZERO,
            k => FIRST_PAUSE.saturating_mul(1u32 << (k - 2).min(16)).min(MAX_PAUSE),
        };
        Decision::Restart { after }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_first_death_restarts_at_once_then_pauses_grow_then_it_gives_up() {
        let t0 = Instant::now();
        let mut p = RestartPolicy::new(2, 5, Duration::from_secs(60));
        let pauses: Vec<Decision> = (0..6).map(|k| p.on_death(0, t0 + ms(100 * k))).collect();
        assert_eq!(
            pauses,
            vec![
                Decision::Restart { after: ms(0) },
                Decision::Restart { after: ms(250) },
                Decision::Restart { after: ms(500) },
                Decision::Restart { after: ms(1000) },
                Decision::Restart { after: ms(2000) },
                Decision::GiveUp { deaths: 6 },
            ]
        );
        // Another worker has its own count.
        assert_eq!(p.on_death(1, t0 + ms(700)), Decision::Restart { after: ms(0) });
    }

    #[test]
    fn deaths_older_than_the_window_are_forgotten() {
        let t0 = Instant::now();
        let mut p = RestartPolicy::new(1, 2, Duration::from_secs(60));
        assert_eq!(p.on_death(0, t0), Decision::Restart { after: ms(0) });
        assert_eq!(p.on_death(0, t0 + ms(30_000)), Decision::Restart { after: ms(250) });
        // The first death is now a minute old: two in the window, still allowed.
        assert_eq!(p.on_death(0, t0 + ms(60_000)), Decision::Restart { after: ms(250) });
        assert_eq!(p.on_death(0, t0 + ms(61_000)), Decision::GiveUp { deaths: 3 });
        // A worker that then lives for a while starts from zero again.
        assert_eq!(p.on_death(0, t0 + ms(200_000)), Decision::Restart { after: ms(0) });
    }

    #[test]
    fn max_zero_means_a_death_stops_the_server() {
        let mut p = RestartPolicy::new(1, 0, Duration::from_secs(60));
        assert_eq!(p.on_death(0, Instant::now()), Decision::GiveUp { deaths: 1 });
        assert_eq!(
            p.on_death(7, Instant::now()),
            Decision::GiveUp { deaths: 1 },
            "no such worker"
        );
    }
}

//! The device directory: which worker holds the newest connection of each device id, so that "one
//! connection per device" holds across workers. Workers report the ids they register (claims, with
//! a CLOCK_MONOTONIC time) and release; a claim for an id another worker holds tells the worker
//! with the older connection to close it.

use std::collections::HashMap;

/// A device's connection to close: the worker that holds it, and the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Evict {
    pub worker: usize,
    pub hash: u64,
}

#[derive(Default)]
pub struct Directory {
    /// device hash → (worker, registration time in CLOCK_MONOTONIC ns).
    held: HashMap<u64, (usize, u64)>,
}

impl Directory {
    /// `worker` registered device `hash` at `at_ns`. Returns the connection to close, if another
    /// worker holds the device: the older of the two.
    ///
    /// Known limit: a device that reconnects twice within the control latency (~1 ms) onto
    /// different workers may lose both of its newest connections.
    pub fn claim(&mut self, worker: usize, hash: u64, at_ns: u64) -> Option<Evict> {
        match self.held.get(&hash).copied() {
            Some((holder, held_since)) if holder != worker => {
                if at_ns >= held_since {
                    self.held.insert(hash, (worker, at_ns));
                    Some(Evict { worker: holder, hash })
                } else {
                    Some(Evict { worker, hash })
                }
            }
            _ => {
                self.held.insert(hash, (worker, at_ns));
                None
            }
        }
    }

    /// Another node registered `hash` at `at_ns` (on our clock). `Ok(Some(worker))`: our
    /// connection is older, `worker` must close it (the device is forgotten here now);
    /// `Ok(None)`: not held here; `Err(ours)`: ours is newer (registered at `ours`), and the other
    /// node must hear of it.
    pub fn claimed_elsewhere(&mut self, hash: u64, at_ns: u64) -> Result<Option<usize>, u64> {
        match self.held.get(&hash).copied() {
            None => Ok(None),
            Some((worker, ours)) if ours <= at_ns => {
                self.held.remove(&hash);
                Ok(Some(worker))
            }
            Some((_, ours)) => Err(ours),
        }
    }

    /// `worker` no longer holds `hash` (a release from a worker that lost it is ignored).
    pub fn release(&mut self, worker: usize, hash: u64) {
        if self.held.get(&hash).is_some_and(|&(holder, _)| holder == worker) {
            self.held.remove(&hash);
        }
    }

    /// `worker` died: every device it held is gone with its connection (a push to one of them is
    /// "not connected" at once, and its next connection claims it afresh). Returns how many.
    pub fn purge(&mut self, worker: usize) -> usize {
        let before = self.held.len();
        self.held.retain(|_, &mut (holder, _)| holder != worker);
        before - self.held.len()
    }

    /// Devices held, all workers together.
    pub fn devices(&self) -> usize {
        self.held.len()
    }

    /// The worker holding `hash`.
    #[cfg(test)]
    pub fn holder(&self, hash: u64) -> Option<usize> {
        self.held.get(&hash).map(|&(worker, _)| worker)
    }

    /// Where a push for `hash` goes. A device's claim travels on its worker's control socket and
    /// reader thread, a push on the admin thread: a client that has its 101 (so is registered in
    /// its worker) may not be here yet. So a device not held by a running worker is asked of
    /// every worker, whose own answer is never stale.
    pub fn push_route(&self, hash: u64, running: impl Fn(usize) -> bool) -> PushRoute {
        match self.held.get(&hash) {
            Some(&(worker, _)) if running(worker) => PushRoute::Holder(worker),
            _ => PushRoute::Everyone,
        }
    }
}

/// Which workers a push asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushRoute {
    Holder(usize),
    Everyone,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_connection_wins_across_workers() {
        let mut d = Directory::default();
        assert_eq!(d.claim(0, 7, 100), None);
        assert_eq!(d.claim(0, 7, 150), None, "a re-registration on the same worker");
        assert_eq!(d.claim(1, 7, 200), Some(Evict { worker: 0, hash: 7 }));
        assert_eq!(d.holder(7), Some(1));
        // A claim that arrives late but was made earlier loses.
        assert_eq!(d.claim(2, 7, 180), Some(Evict { worker: 2, hash: 7 }));
        assert_eq!(d.holder(7), Some(1));
    }

    #[test]
    fn a_dead_worker_s_devices_leave_at_once() {
        let mut d = Directory::default();
        d.claim(0, 1, 100);
        d.claim(1, 2, 100);
        d.claim(1, 3, 100);
        d.claim(2, 4, 100);
        assert_eq!(d.purge(1), 2);
        assert_eq!(d.holder(2), None);
        assert_eq!(d.holder(3), None);
        assert_eq!(d.holder(1), Some(0));
        assert_eq!(d.holder(4), Some(2));
        assert_eq!(d.devices(), 2);
        assert_eq!(d.purge(1), 0, "nothing left of it");
        // Its replacement (same index) claims devices afresh; a late release of the dead one
        // (there is none: its messages stop with it) would not matter either.
        assert_eq!(d.claim(1, 2, 300), None);
        assert_eq!(d.holder(2), Some(1));
        // A device that reconnected to another worker while the dead one still held it there.
        d.claim(0, 5, 100);
        assert_eq!(d.claim(1, 5, 50), Some(Evict { worker: 1, hash: 5 }));
        d.purge(1);
        assert_eq!(d.holder(5), Some(0), "the live worker keeps its device");
    }

    #[test]
    fn a_push_goes_to_the_running_holder_else_to_everyone() {
        let mut d = Directory::default();
        d.claim(1, 7, 100);
        assert_eq!(d.push_route(7, |_| true), PushRoute::Holder(1));
        assert_eq!(
            d.push_route(8, |_| true),
            PushRoute::Everyone,
            "a claim still on its way"
        );
        assert_eq!(
            d.push_route(7, |w| w != 1),
            PushRoute::Everyone,
            "its holder is restarting"
        );
    }

    #[test]
    fn the_newest_connection_wins_across_nodes() {
        let mut d = Directory::default();
        d.claim(1, 7, 100);
        assert_eq!(d.claimed_elsewhere(8, 50), Ok(None), "not held here");
        assert_eq!(d.claimed_elsewhere(7, 90), Err(100), "ours is newer: say so");
        assert_eq!(d.holder(7), Some(1));
        assert_eq!(d.claimed_elsewhere(7, 150), Ok(Some(1)), "theirs is newer: close ours");
        assert_eq!(d.holder(7), None);
    }

    #[test]
    fn only_the_holder_releases() {
        let mut d = Directory::default();
        d.claim(0, 7, 100);
        d.claim(1, 7, 200);
        d.release(0, 7);
        assert_eq!(d.holder(7), Some(1), "the evicted worker's release is stale");
        d.release(1, 7);
        assert_eq!(d.holder(7), None);
    }
}

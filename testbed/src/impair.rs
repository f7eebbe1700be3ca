//! A lossy, slow, reordering path for tests, since this kernel has no `sch_netem`: iptables sends
//! the chosen packets to an NFQUEUE (`iptables ... -j NFQUEUE --queue-num N --queue-bypass`), and
//! this loop takes them from it: each is dropped with probability `loss`, and the rest are
//! released after `delay`, or with probability `reorder` after `delay + reorder_extra` (so that
//! later packets overtake it). Bounded in time; with `--queue-bypass` the path is clean again as
//! soon as it stops. Run it in the namespace of the iptables rule (`testkit::spawn_in_ns`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

#[derive(Clone, Debug)]
pub struct Impairment {
    pub queue: u16,
    pub loss: f64,
    pub delay: Duration,
    pub reorder: f64,
    pub reorder_extra: Duration,
    /// Stop after this long whatever happens (at most 10 minutes).
    pub limit: Duration,
}

/// What the loop did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Impaired {
    pub packets: u64,
    pub dropped: u64,
    pub reordered: u64,
}

/// A packet held until its release time; ordered by (time, arrival) so that equal delays keep
/// the arrival order.
struct Held {
    at: Instant,
    n: u64,
    msg: nfq::Message,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.n) == (other.at, other.n)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.n).cmp(&(other.at, other.n))
    }
}

/// Run the impairment until `stop` is set or `limit` passes; every held packet is released
/// before it returns.
pub fn run(cfg: &Impairment, stop: Arc<AtomicBool>) -> anyhow::Result<Impaired> {
    let mut queue = nfq::Queue::open().context("opening an NFQUEUE socket (needs CAP_NET_ADMIN)")?;
    queue
        .bind(cfg.queue)
        .with_context(|| format!("binding NFQUEUE {}", cfg.queue))?;
    // Past the kernel queue's length packets pass untouched rather than being dropped unseen.
    let _ = queue.set_fail_open(cfg.queue, true);
    queue.set_nonblocking(true);
    let limit = cfg.limit.min(Duration::from_secs(600));
    let start = Instant::now();
    let mut rng = fastrand::Rng::new();
    let mut held = BinaryHeap::new();
    let mut done = Impaired::default();
    let mut n = 0u64;
    loop {
        let stopping = stop.load(Ordering::Relaxed) || start.elapsed() >= limit;
        let mut got = false;
        if !stopping {
            match queue.recv() {
                Ok(mut msg) => {
                    got = true;
                    done.packets += 1;
                    if rng.f64() < cfg.loss {
                        done.dropped += 1;
                        msg.set_verdict(nfq::Verdict::Drop);
                        queue.verdict(msg).context("NFQUEUE verdict")?;
                    } else {
                        let mut wait = cfg.delay;
                        if rng.f64() < cfg.reorder {
                            done.reordered += 1;
                            wait += cfg.reorder_extra;
                        }
                        n += 1;
                        held.push(Reverse(Held {
                            at: Instant::now() + wait,
                            n,
                            msg,
                        }));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e).context("reading NFQUEUE"),
            }
        }
        let now = Instant::now();
        while let Some(Reverse(h)) = held.peek() {
            if h.at > now && !stopping {
                break;
            }
            let Some(Reverse(mut h)) = held.pop() else { break };
            h.msg.set_verdict(nfq::Verdict::Accept);
            queue.verdict(h.msg).context("NFQUEUE verdict")?;
        }
        if stopping && held.is_empty() {
            return Ok(done);
        }
        if !got {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

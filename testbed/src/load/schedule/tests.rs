//! The schedule on virtual time: a fake driver opens, finishes and drops connections by hand.

use std::collections::BTreeMap;

use super::*;

const MS: u64 = 1_000_000;

const TIMING: Timing = Timing {
    tick: Duration::from_millis(100),
    close_grace: Duration::from_secs(3),
    connect_burst: usize::MAX,
    connect_poll: Duration::from_millis(5),
};

/// A plan with `changes` applied over small defaults (no rate limit, long hold and duration).
fn plan(changes: serde_json::Value) -> ChildPlan {
    let mut v = serde_json::json!({
        "index": 0, "server": "127.0.0.1:1", "host": "h", "path": "/ws", "first": 0, "count": 3,
        "sources": [], "rate": 0.0, "concurrency": 1000, "connect_timeout_ms": 1000, "hold_ms": 60_000,
        "duration_ms": 600_000, "ping_interval_ms": 0, "send_interval_ms": 0, "payload": 0,
        "id_prefix": null, "poll": false, "expect_broadcasts": 0
    });
    if let (Some(base), Some(over)) = (v.as_object_mut(), changes.as_object()) {
        base.extend(over.clone());
    }
    serde_json::from_value(v).unwrap()
}

/// The driver's table: slot → (connection number, state); the lowest free slot is reused.
#[derive(Default)]
struct Fake {
    conns: BTreeMap<usize, (u64, State)>,
    reached: u64,
}

impl Fake {
    fn set(&mut self, n: u64, to: State) {
        for c in self.conns.values_mut().filter(|c| c.0 == n) {
            c.1 = to;
        }
    }

    fn remove(&mut self, n: u64) {
        self.conns.retain(|_, c| c.0 != n);
    }
}

impl Conns for Fake {
    fn live(&self) -> usize {
        self.conns.len()
    }

    fn handshaking(&self) -> usize {
        let shaking = |c: &&(u64, State)| matches!(c.1, State::Connecting | State::Handshake);
        self.conns.values().filter(shaking).count()
    }

    fn open(&self) -> u64 {
        self.conns.values().filter(|c| c.1 == State::Open).count() as u64
    }

    fn reached_expected(&self) -> u64 {
        self.reached
    }

    fn state(&self, slot: usize, n: u64) -> Option<State> {
        self.conns.get(&slot).filter(|c| c.0 == n).map(|c| c.1)
    }
}

/// One round at `now`, driven the way the load processes do: every step up to the `Wait` (or
/// `Finish`), with connections opened and timed-out ones dropped.
fn round(s: &mut Schedule, f: &mut Fake, now: u64) -> Vec<Step> {
    let mut steps = Vec::new();
    for _ in 0..100_000 {
        let step = s.next(now, f);
        steps.push(step);
        match step {
            Step::Connect(n) => {
                let slot = (0..).find(|i| !f.conns.contains_key(i)).unwrap();
                f.conns.insert(slot, (n, State::Connecting));
                s.opened(slot, n, now);
            }
            Step::TimeOut { slot, .. } => {
                f.conns.remove(&slot);
            }
            Step::Wait(_) | Step::Finish => return steps,
            Step::Periodic(_) | Step::BeginClose(_) | Step::Progress => {}
        }
    }
    panic!("a round that never ends: {:?}", &steps[..20]);
}

fn connects(steps: &[Step]) -> Vec<u64> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Connect(n) => Some(*n),
            _ => None,
        })
        .collect()
}

fn timeouts(steps: &[Step]) -> Vec<(usize, &'static str)> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::TimeOut { slot, cause } => Some((*slot, *cause)),
            _ => None,
        })
        .collect()
}

fn closes(steps: &[Step]) -> Vec<HoldEnd> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::BeginClose(why) => Some(*why),
            _ => None,
        })
        .collect()
}

fn count(steps: &[Step], want: Step) -> usize {
    steps.iter().filter(|&&s| s == want).count()
}

#[test]
fn pacing_opens_one_at_the_start_then_one_per_period() {
    let mut s = Schedule::new(&plan(serde_json::json!({"rate": 100.0, "count": 1000})), TIMING, 0);
    let mut f = Fake::default();
    assert_eq!(connects(&round(&mut s, &mut f, 0)), [0]);
    assert_eq!(connects(&round(&mut s, &mut f, 9 * MS)), [] as [u64; 0]);
    assert_eq!(connects(&round(&mut s, &mut f, 15 * MS)), [1]);
    // 1.005 s at 100/s: 101 in all.
    assert_eq!(
        connects(&round(&mut s, &mut f, 1005 * MS)),
        (2..=100).collect::<Vec<_>>()
    );
    assert_eq!(connects(&round(&mut s, &mut f, 1006 * MS)), [] as [u64; 0]);
}

#[test]
fn pacing_numbers_from_the_plans_first_connection() {
    let mut s = Schedule::new(&plan(serde_json::json!({"first": 500, "count": 3})), TIMING, 7 * MS);
    let mut f = Fake::default();
    assert_eq!(connects(&round(&mut s, &mut f, 7 * MS)), [500, 501, 502]);
    assert_eq!(connects(&round(&mut s, &mut f, 8 * MS)), [] as [u64; 0]);
}

#[test]
fn pacing_keeps_handshakes_in_flight_within_the_concurrency_bound() {
    let mut s = Schedule::new(&plan(serde_json::json!({"concurrency": 3, "count": 10})), TIMING, 0);
    let mut f = Fake::default();
    assert_eq!(connects(&round(&mut s, &mut f, 0)), [0, 1, 2]);
    assert_eq!(connects(&round(&mut s, &mut f, MS)), [] as [u64; 0]);
    // Upgrading still counts; open and failed ones make room.
    f.set(0, State::Handshake);
    assert_eq!(connects(&round(&mut s, &mut f, 2 * MS)), [] as [u64; 0]);
    f.set(1, State::Open);
    assert_eq!(connects(&round(&mut s, &mut f, 3 * MS)), [3]);
    f.remove(2);
    f.set(3, State::Open);
    assert_eq!(connects(&round(&mut s, &mut f, 4 * MS)), [4, 5]);
}

#[test]
fn pacing_bounds_each_round_by_the_connect_burst() {
    let timing = Timing {
        connect_burst: 256,
        ..TIMING
    };
    let mut s = Schedule::new(&plan(serde_json::json!({"count": 600})), timing, 0);
    let mut f = Fake::default();
    let sizes: Vec<usize> = (0..4).map(|i| connects(&round(&mut s, &mut f, i * MS)).len()).collect();
    assert_eq!(sizes, [256, 256, 88, 0]);
    assert_eq!(f.conns.values().map(|c| c.0).max(), Some(599));
}

#[test]
fn handshake_timeouts_fire_oldest_first_once_and_only_while_handshaking() {
    // One connection per 100 ms (each round also ticks), 1 s to finish the handshake.
    let p = plan(serde_json::json!({"rate": 10.0, "count": 4}));
    let mut s = Schedule::new(&p, TIMING, 0);
    let mut f = Fake::default();
    for (i, t) in [0, 105, 205, 305].into_iter().enumerate() {
        assert_eq!(connects(&round(&mut s, &mut f, t * MS)), [i as u64]);
    }
    f.set(1, State::Handshake);
    f.set(2, State::Open);
    assert_eq!(timeouts(&round(&mut s, &mut f, 999 * MS)), []);
    assert_eq!(
        timeouts(&round(&mut s, &mut f, 1110 * MS)),
        [(0, "connect_timeout"), (1, "handshake_timeout")]
    );
    assert_eq!(timeouts(&round(&mut s, &mut f, 1300 * MS)), []);
    // Past its deadline, but the next tick is due at 1.4 s.
    assert_eq!(timeouts(&round(&mut s, &mut f, 1350 * MS)), []);
    assert_eq!(timeouts(&round(&mut s, &mut f, 1400 * MS)), [(3, "connect_timeout")]);
    let later: Vec<_> = (15..40)
        .flat_map(|t| timeouts(&round(&mut s, &mut f, t * 100 * MS)))
        .collect();
    assert_eq!(later, [], "once each, and never the open one");
    assert_eq!(f.conns.len(), 1);
    assert!(s.done_connecting());
}

#[test]
fn a_reused_slot_is_timed_out_for_its_new_connection_only() {
    let mut s = Schedule::new(&plan(serde_json::json!({"concurrency": 1, "count": 2})), TIMING, 0);
    let mut f = Fake::default();
    assert_eq!(connects(&round(&mut s, &mut f, 0)), [0]);
    f.remove(0); // refused
    assert_eq!(connects(&round(&mut s, &mut f, 500 * MS)), [1]);
    assert_eq!(f.conns.get(&0), Some(&(1, State::Connecting)), "slot 0 again");
    assert_eq!(timeouts(&round(&mut s, &mut f, 1000 * MS)), []);
    assert_eq!(timeouts(&round(&mut s, &mut f, 1400 * MS)), []);
    // Its deadline is 1.5 s, and a tick is due then.
    assert_eq!(timeouts(&round(&mut s, &mut f, 1500 * MS)), [(0, "connect_timeout")]);
    assert_eq!(timeouts(&round(&mut s, &mut f, 1600 * MS)), []);
}

#[test]
fn connecting_is_done_once_the_last_handshake_is_over_and_the_hold_then_lasts_hold_ms() {
    let p = plan(serde_json::json!({"count": 2, "hold_ms": 2000}));
    let mut s = Schedule::new(&p, TIMING, 0);
    let mut f = Fake::default();
    round(&mut s, &mut f, 0);
    f.set(0, State::Open);
    round(&mut s, &mut f, 50 * MS);
    assert!(!s.done_connecting(), "connection 1 is still handshaking");
    f.set(1, State::Open);
    round(&mut s, &mut f, 60 * MS);
    assert!(!s.done_connecting(), "the queue is looked at on ticks only");
    round(&mut s, &mut f, 100 * MS);
    assert!(s.done_connecting());
    assert_eq!(closes(&round(&mut s, &mut f, 2099 * MS)), []);
    assert_eq!(closes(&round(&mut s, &mut f, 2100 * MS)), [HoldEnd::HoldTime]);
    assert_eq!(closes(&round(&mut s, &mut f, 2200 * MS)), [], "once");
}

#[test]
fn the_hold_ends_when_every_open_connection_got_the_expected_broadcasts() {
    let p = plan(serde_json::json!({"count": 3, "expect_broadcasts": 2}));
    let mut s = Schedule::new(&p, TIMING, 0);
    let mut f = Fake::default();
    assert_eq!(closes(&round(&mut s, &mut f, 0)), [], "not while connecting");
    f.set(0, State::Open);
    f.set(1, State::Open);
    f.remove(2); // failed: not waited for
    f.reached = 1;
    assert_eq!(closes(&round(&mut s, &mut f, 100 * MS)), []);
    assert!(s.done_connecting());
    assert_eq!(closes(&round(&mut s, &mut f, 200 * MS)), []);
    f.reached = 2;
    assert_eq!(closes(&round(&mut s, &mut f, 300 * MS)), [HoldEnd::ExpectedBroadcasts]);
}

#[test]
fn a_stop_or_the_duration_ends_the_hold_even_while_connecting() {
    let p = plan(serde_json::json!({"rate": 1.0, "count": 100, "duration_ms": 5000, "ping_interval_ms": 100}));
    let mut s = Schedule::new(&p, TIMING, 0);
    let mut f = Fake::default();
    for t in 0..50 {
        assert_eq!(closes(&round(&mut s, &mut f, t * 100 * MS)), []);
    }
    let steps = round(&mut s, &mut f, 5000 * MS);
    assert_eq!(closes(&steps), [HoldEnd::Duration]);
    assert_eq!(connects(&steps), [] as [u64; 0], "no connection after the close began");
    let after = round(&mut s, &mut f, 6000 * MS);
    assert!(
        !after.iter().any(|s| matches!(s, Step::Periodic(_) | Step::Connect(_))),
        "{after:?}"
    );

    let mut s = Schedule::new(&p, TIMING, 0);
    let mut f = Fake::default();
    round(&mut s, &mut f, 0);
    s.stop();
    assert_eq!(closes(&round(&mut s, &mut f, MS)), [HoldEnd::Stopped]);
}

#[test]
fn closing_ends_when_nothing_is_live_or_after_the_grace_time() {
    let p = plan(serde_json::json!({"count": 2, "hold_ms": 0}));
    let mut s = Schedule::new(&p, TIMING, 0);
    let mut f = Fake::default();
    round(&mut s, &mut f, 0);
    f.set(0, State::Open);
    f.set(1, State::Open);
    round(&mut s, &mut f, 100 * MS);
    let steps = round(&mut s, &mut f, 150 * MS);
    assert_eq!(closes(&steps), [HoldEnd::HoldTime]);
    assert_eq!(steps.last(), Some(&Step::Wait(Duration::from_millis(50))));
    f.set(0, State::Closing);
    f.set(1, State::Closing);
    assert_eq!(
        round(&mut s, &mut f, 3149 * MS).last(),
        Some(&Step::Wait(Duration::from_millis(100)))
    );
    assert_eq!(round(&mut s, &mut f, 3150 * MS), [Step::Finish]);
    assert_eq!(round(&mut s, &mut f, 3151 * MS), [Step::Finish], "and stays finished");

    let mut s = Schedule::new(&p, TIMING, 0);
    let mut f = Fake::default();
    round(&mut s, &mut f, 0);
    f.set(0, State::Open);
    f.set(1, State::Open);
    round(&mut s, &mut f, 100 * MS);
    assert_eq!(closes(&round(&mut s, &mut f, 150 * MS)), [HoldEnd::HoldTime]);
    f.remove(0);
    assert_eq!(
        round(&mut s, &mut f, 160 * MS).last(),
        Some(&Step::Wait(Duration::from_millis(40)))
    );
    f.remove(1);
    assert_eq!(round(&mut s, &mut f, 170 * MS), [Step::Finish]);
}

#[test]
fn progress_is_due_every_500_ms_and_missed_lines_are_not_bunched() {
    let mut s = Schedule::new(&plan(serde_json::json!({})), TIMING, 1000 * MS);
    let mut f = Fake::default();
    let at = [1000, 1499, 1500, 1900, 2000, 2001, 3700, 3999, 4000];
    let lines: Vec<usize> = at
        .iter()
        .map(|&t| count(&round(&mut s, &mut f, t * MS), Step::Progress))
        .collect();
    assert_eq!(lines, [1, 0, 1, 0, 1, 0, 1, 0, 1]);
}

#[test]
fn periodic_rounds_come_once_per_tick_and_visit_each_slot_once_per_interval() {
    let p = plan(serde_json::json!({"count": 10, "ping_interval_ms": 300, "send_interval_ms": 200}));
    let mut s = Schedule::new(&p, TIMING, 0);
    let mut f = Fake::default();
    let mut rounds = Vec::new();
    for t in [0, 50, 100, 120, 200, 300, 400, 500] {
        for step in round(&mut s, &mut f, t * MS) {
            if let Step::Periodic(r) = step {
                rounds.push(r);
            }
        }
    }
    assert_eq!(rounds.iter().map(|r| r.tick_no).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
    let first: Vec<(usize, bool)> = rounds[0].slots(10).collect();
    assert_eq!(
        first,
        [
            (1, true),
            (4, true),
            (7, true),
            (1, false),
            (3, false),
            (5, false),
            (7, false),
            (9, false)
        ]
    );
    // Over six ticks (600 ms) each slot gets two pings and three data frames.
    let mut per_slot = [(0, 0); 10];
    for (slot, is_ping) in rounds.iter().flat_map(|r| r.slots(10)) {
        if is_ping {
            per_slot[slot].0 += 1;
        } else {
            per_slot[slot].1 += 1;
        }
    }
    assert_eq!(per_slot, [(2, 3); 10]);
    assert_eq!(rounds[0].slots(0).count(), 0);
}

#[test]
fn no_periodic_round_without_pings_or_data_rounds() {
    let mut s = Schedule::new(&plan(serde_json::json!({})), TIMING, 0);
    let mut f = Fake::default();
    let all: Vec<Step> = (0..10).flat_map(|t| round(&mut s, &mut f, t * 100 * MS)).collect();
    assert!(!all.iter().any(|s| matches!(s, Step::Periodic(_))), "{all:?}");
}

#[test]
fn waits_are_short_while_connecting_and_end_at_the_next_tick_or_progress_line() {
    let mut s = Schedule::new(&plan(serde_json::json!({"rate": 10.0, "count": 2})), TIMING, 0);
    let mut f = Fake::default();
    assert_eq!(
        round(&mut s, &mut f, 0).last(),
        Some(&Step::Wait(Duration::from_millis(5)))
    );
    assert_eq!(
        round(&mut s, &mut f, 98 * MS).last(),
        Some(&Step::Wait(Duration::from_millis(2)))
    );
    assert_eq!(
        round(&mut s, &mut f, 100 * MS).last(),
        Some(&Step::Wait(Duration::from_millis(100)))
    );
    assert_eq!(
        round(&mut s, &mut f, 130 * MS).last(),
        Some(&Step::Wait(Duration::from_millis(70)))
    );
    assert_eq!(
        round(&mut s, &mut f, 480 * MS).last(),
        Some(&Step::Wait(Duration::from_millis(20)))
    );
}

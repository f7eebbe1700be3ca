//! A hashed timing wheel (Varghese & Lauck): O(1) insert, and per tick only the entries of one slot
//! are looked at. Entries are 8 bytes and carry no deadline: the owner derives the deadline from its
//! own state when the entry comes up, and either fires it, drops it (stale) or puts it back. That is
//! what makes heartbeats free: a received byte only updates a timestamp; the one idle entry of a
//! connection is looked at once per idle period, not once per packet.

/// A timer entry: which connection, and a tag (its generation and timer kind) that lets the owner
/// recognise entries left behind by an earlier use of the same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: u32,
    pub tag: u32,
}

/// What the owner decides for an entry that came up.
pub enum Due {
    /// Done with it (fired, or stale): the entry is dropped.
    Drop,
    /// Not yet: put it back for this tick.
    At(u32),
}

/// A drained slot keeps its vector up to this capacity; a larger one becomes the spare (or is
/// freed). Without this, a burst of timers that walks round the wheel (a million connections
/// re-arming a check every second during a long broadcast) leaves every slot it passed holding
/// its peak capacity: the wheel's memory grew with the length of the burst, not with the timers
/// alive. Now it is what is alive, one spare, and at most 64 entries of slack per slot.
const KEEP: usize = 64;

pub struct TimerWheel {
    slots: Vec<Vec<Entry>>,
    /// The largest drained vector, handed to the next slot that starts empty.
    spare: Vec<Entry>,
    mask: u32,
    /// The next tick whose slot has not been processed.
    cursor: u32,
    len: usize,
}

impl TimerWheel {
    /// `slots` is rounded up to a power of two; `start` is the current tick.
    pub fn new(slots: usize, start: u32) -> TimerWheel {
        let n = slots.next_power_of_two().max(2);
        TimerWheel {
            slots: (0..n).map(|_| Vec::new()).collect(),
            spare: Vec::new(),
            mask: (n - 1) as u32,
            cursor: start,
            len: 0,
        }
    }

    /// Entries waiting, stale ones included.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held by the wheel (slot vectors' capacity), for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.capacity() * std::mem::size_of::<Entry>())
            .sum::<usize>()
            + self.spare.capacity() * std::mem::size_of::<Entry>()
            + self.slots.capacity() * std::mem::size_of::<Vec<Entry>>()
    }

    fn push(&mut self, at: u32, entry: Entry) {
        let slot = &mut self.slots[(at & self.mask) as usize];
        if slot.capacity() == 0 && self.spare.capacity() > 0 {
            *slot = std::mem::take(&mut self.spare);
        }
        slot.push(entry);
        self.len += 1;
    }

    /// Schedule `entry` for tick `due`; a due tick in the past fires at the next `advance`.
    pub fn insert(&mut self, due: u32, entry: Entry) {
        let at = if due.wrapping_sub(self.cursor) as i32 <= 0 {
            self.cursor
        } else {
            due
        };
        self.push(at, entry);
    }

    /// Process every tick up to and including `now`. `visit(entry, now)` says whether the entry is
    /// done or when it is due again. A gap longer than one revolution visits each slot once.
    pub fn advance(&mut self, now: u32, mut visit: impl FnMut(Entry, u32) -> Due) {
        if (now.wrapping_sub(self.cursor) as i32) < 0 {
            return;
        }
        let span = (now.wrapping_sub(self.cursor) as usize + 1).min(self.slots.len());
        for step in 0..span {
            let slot = (self.cursor.wrapping_add(step as u32) & self.mask) as usize;
            if self.slots[slot].is_empty() {
                continue;
            }
            let mut batch = std::mem::take(&mut self.slots[slot]);
            self.len -= batch.len();
            for entry in batch.drain(..) {
                if let Due::At(due) = visit(entry, now) {
                    // Due later than `now`: it cannot land in a slot before `now + 1`.
                    let at = if due.wrapping_sub(now) as i32 <= 0 {
                        now.wrapping_add(1)
                    } else {
                        due
                    };
                    self.push(at, entry);
                }
            }
            // Keep a small batch's capacity for this slot (unless re-inserts already gave it a
            // vector); a large one becomes the spare if it is the largest, else it is freed.
            if batch.capacity() <= KEEP {
                if self.slots[slot].capacity() == 0 {
                    self.slots[slot] = batch;
                }
            } else if batch.capacity() > self.spare.capacity() {
                self.spare = batch;
            }
        }
        self.cursor = now.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: u32) -> Entry {
        Entry { id, tag: 0 }
    }

    #[test]
    fn fires_each_entry_at_its_tick_across_revolutions() {
        let mut wheel = TimerWheel::new(8, 100);
        let deadlines = [100u32, 101, 107, 108, 115, 130, 1000];
        for (i, d) in deadlines.iter().enumerate() {
            wheel.insert(*d, e(i as u32));
        }
        let mut fired = Vec::new();
        for now in 100..=1000 {
            wheel.advance(now, |entry, now| {
                let due = deadlines[entry.id as usize];
                if due <= now {
                    fired.push((entry.id, now));
                    Due::Drop
                } else {
                    Due::At(due)
                }
            });
        }
        let expected: Vec<(u32, u32)> = deadlines.iter().enumerate().map(|(i, d)| (i as u32, *d)).collect();
        assert_eq!(fired, expected);
        assert!(wheel.is_empty());
    }

    #[test]
    fn memory_follows_the_timers_alive_not_the_length_of_a_burst() {
        // 100,000 timers re-armed 10 ticks ahead, 100 times: they walk round the wheel.
        let mut wheel = TimerWheel::new(4096, 0);
        for i in 0..100_000 {
            wheel.insert(10, e(i));
        }
        let mut fired = 0u64;
        for now in 0..1000u32 {
            wheel.advance(now, |_, now| {
                fired += 1;
                if now < 990 {
                    Due::At(now + 10)
                } else {
                    Due::Drop
                }
            });
        }
        assert_eq!(fired, 9_900_000);
        assert!(wheel.is_empty());
        let alive = 100_000 * std::mem::size_of::<Entry>();
        // Alive entries (at most twice, vectors double), one spare, the slots' small slack.
        let bound = 4 * alive + 4096 * (KEEP * 8 + 24);
        assert!(wheel.heap_bytes() < bound, "{} bytes > {bound}", wheel.heap_bytes());
    }

    #[test]
    fn a_long_gap_fires_everything_due_once() {
        let mut wheel = TimerWheel::new(16, 0);
        for i in 0..100 {
            wheel.insert(i, e(i));
        }
        let mut fired = 0;
        wheel.advance(10_000, |entry, now| {
            assert!(entry.id <= now);
            fired += 1;
            Due::Drop
        });
        assert_eq!(fired, 100);
        assert!(wheel.is_empty());
    }

    #[test]
    fn past_deadlines_fire_at_the_next_advance() {
        let mut wheel = TimerWheel::new(16, 50);
        wheel.advance(60, |_, _| Due::Drop);
        wheel.insert(10, e(1));
        let mut fired = vec![];
        wheel.advance(61, |entry, _| {
            fired.push(entry.id);
            Due::Drop
        });
        assert_eq!(fired, vec![1]);
    }

    #[test]
    fn reinserted_entries_are_not_visited_twice_in_one_advance() {
        let mut wheel = TimerWheel::new(4, 0);
        wheel.insert(0, e(7));
        let mut visits = 0;
        // Due at 4: the same slot (4 & 3 == 0) as the one being processed.
        wheel.advance(0, |_, _| {
            visits += 1;
            Due::At(4)
        });
        assert_eq!(visits, 1);
        assert_eq!(wheel.len(), 1);
        let mut fired_at = None;
        for now in 1..=4 {
            wheel.advance(now, |_, now| {
                if now >= 4 {
                    fired_at = Some(now);
                    Due::Drop
                } else {
                    Due::At(4)
                }
            });
        }
        assert_eq!(fired_at, Some(4));
    }
}

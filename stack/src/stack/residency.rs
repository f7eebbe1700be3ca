//! Buffer pages of idle connections go back to the kernel.
//!
//! A connection's receive and send buffers hold bytes only for moments: a request being read, a
//! message until the peer acknowledges it. An empty buffer's bytes are never read again (smoltcp
//! keeps a ring's position and length in the socket, and a reset clears them), so the pages of
//! buffers that are all empty can be handed back (`MADV_DONTNEED`): the next byte written there
//! finds a fresh zero page. An idle connection then costs its socket and bookkeeping, not its
//! buffers.
//!
//! Every page of the arena keeps a count of the non-empty buffers on it. A buffer's occupancy is
//! noted after each thing that can change it (a segment processed, a read, a write, a slot
//! retired): O(1) per call. A page whose count falls to zero is queued with the time; pages that
//! stayed idle for `release_after` are released in runs at the next flush, so a connection that
//! is busy every few milliseconds does not fault its page in and out.

use std::collections::VecDeque;

use crate::arena::Arena;

/// The high bit of a page's count: the page is in the release queue.
const QUEUED: u16 = 1 << 15;

/// One kind of buffer (receive or send) over its region of the arena.
struct Region {
    base: usize,
    /// Bytes per buffer.
    size: usize,
    /// Per slot: whether its buffer of this kind holds bytes (one bit each).
    busy: Vec<u64>,
    /// Per page: non-empty buffers on it, and the `QUEUED` bit.
    counts: Vec<u16>,
    /// Per page: the tick its count last fell to zero (a page is released after that long).
    idle_since: Vec<u32>,
}

/// What is released: (region 0 receive / 1 send, page index) with the tick it fell idle.
struct Idle {
    region: u8,
    page: u32,
    since: u32,
}

pub(super) struct Residency {
    regions: [Region; 2],
    /// Per slot: its receive buffer counts as holding bytes whatever its queue says, until the
    /// slot is freed: a segment arrived out of order, and smoltcp keeps such bytes in the ring
    /// past the readable ones, where `recv_queue` does not show them (one bit each).
    rx_held: Vec<u64>,
    page: usize,
    queue: VecDeque<Idle>,
    /// Idle this many ticks (ms) before a page is released; `None`: never released.
    release_after: Option<u32>,
}

impl Region {
    fn new(base: usize, size: usize, slots: usize, page: usize) -> Region {
        let pages = (slots * size).div_ceil(page);
        Region {
            base,
            size,
            busy: vec![0; slots.div_ceil(64)],
            counts: vec![0; pages],
            idle_since: vec![0; pages],
        }
    }

    /// Pages that slot `s`'s buffer touches (an arena region starts on a page boundary).
    fn pages(&self, s: usize, page: usize) -> std::ops::RangeInclusive<usize> {
        let start = s * self.size;
        start / page..=(start + self.size - 1) / page
    }
}

impl Residency {
    pub(super) fn new(arena: &Arena, release_after: Option<u32>) -> Residency {
        let page = crate::stats::page_size();
        let slots = arena.slots;
        Residency {
            regions: [
                Region::new(arena.rx_base(), arena.rx, slots, page),
                Region::new(arena.tx_base(), arena.tx, slots, page),
            ],
            rx_held: vec![0; slots.div_ceil(64)],
            page,
            queue: VecDeque::new(),
            release_after,
        }
    }

    /// Slot `s`'s receive ring may hold bytes beyond its queue (an out-of-order segment): its
    /// page stays until the slot is freed.
    pub(super) fn hold_rx(&mut self, s: usize) {
        self.rx_held[s / 64] |= 1 << (s % 64);
    }

    /// Slot `s` is free: whatever its buffers held is dead (the next connection's reset clears it).
    pub(super) fn forget(&mut self, s: usize, tick: u32) {
        self.rx_held[s / 64] &= !(1 << (s % 64));
        self.note(s, 0, 0, tick);
    }

    /// Slot `s` now holds `rx` bytes to read and `tx` bytes to send (or to be acknowledged).
    pub(super) fn note(&mut self, s: usize, rx: usize, tx: usize, tick: u32) {
        let held = self.rx_held[s / 64] & (1 << (s % 64)) != 0;
        for (region, holds) in [(0u8, rx > 0 || held), (1u8, tx > 0)] {
            let r = &mut self.regions[usize::from(region)];
            let (word, bit) = (s / 64, 1u64 << (s % 64));
            if (r.busy[word] & bit != 0) == holds {
                continue;
            }
            r.busy[word] ^= bit;
            for p in r.pages(s, self.page) {
                let c = &mut r.counts[p];
                if holds {
                    *c += 1;
                } else {
                    *c -= 1;
                    if *c == 0 && self.release_after.is_some() {
                        r.idle_since[p] = tick;
                        // Queued once; a page idle again while queued is judged by its latest
                        // `idle_since` when its turn comes.
                        *c = QUEUED;
                        self.queue.push_back(Idle {
                            region,
                            page: p as u32,
                            since: tick,
                        });
                    } else if *c == QUEUED {
                        r.idle_since[p] = tick;
                    }
                }
            }
        }
    }

    /// Release the pages idle for `release_after` by `tick`, in runs of adjacent pages (one
    /// system call per run). Returns how many pages went.
    pub(super) fn release_due(&mut self, tick: u32) -> usize {
        let Some(after) = self.release_after else { return 0 };
        let mut released = 0;
        let mut run: Option<(u8, usize, usize)> = None;
        while let Some(front) = self.queue.front() {
            if tick.wrapping_sub(front.since) < after {
                break;
            }
            let Idle { region, page, .. } = self.queue.pop_front().expect("front exists");
            let (r, p) = (usize::from(region), page as usize);
            let rg = &mut self.regions[r];
            rg.counts[p] &= !QUEUED;
            if rg.counts[p] != 0 {
                continue; // busy again: queued anew when it falls idle
            }
            let since = rg.idle_since[p];
            if tick.wrapping_sub(since) < after {
                // Busy and idle again meanwhile: its own second starts from then.
                rg.counts[p] = QUEUED;
                self.queue.push_back(Idle { region, page, since });
                continue;
            }
            run = match run {
                Some((rg, first, last)) if rg == region && last + 1 == p => Some((rg, first, p)),
                Some(done) => {
                    released += self.release(done);
                    Some((region, p, p))
                }
                None => Some((region, p, p)),
            };
        }
        if let Some(done) = run {
            released += self.release(done);
        }
        released
    }

    fn release(&self, (region, first, last): (u8, usize, usize)) -> usize {
        let r = &self.regions[usize::from(region)];
        let len = (last - first + 1) * self.page;
        // SAFETY: whole pages inside the arena's region (which starts page-aligned and is never
        // unmapped), every buffer on them empty: their bytes are never read before being written
        // again, and a released page reads back as zeros, valid for `u8`.
        let rc = unsafe {
            libc::madvise(
                (r.base + first * self.page) as *mut libc::c_void,
                len,
                libc::MADV_DONTNEED,
            )
        };
        if rc == 0 {
            last - first + 1
        } else {
            // Not expected (whole pages of our own mapping); the pages just stay resident.
            static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                log::warn!(
                    "releasing idle buffer pages failed ({}); they stay resident",
                    std::io::Error::last_os_error()
                );
            }
            0
        }
    }

    /// Bytes of the bookkeeping itself.
    pub(super) fn bytes(&self) -> usize {
        self.regions
            .iter()
            .map(|r| r.busy.capacity() * 8 + r.counts.capacity() * 2)
            .sum::<usize>()
            + self.queue.capacity() * std::mem::size_of::<Idle>()
    }

    /// Pages queued to be released.
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resident(ptr: usize, len: usize) -> usize {
        crate::stats::resident_bytes(ptr as *const u8, len)
    }

    #[test]
    fn a_page_goes_once_every_buffer_on_it_is_empty_and_idle_long_enough() {
        let page = crate::stats::page_size();
        // 256-byte buffers: 16 receive buffers to a page.
        let mut arena = Arena::new(64, 256, 256);
        let mut bufs = Vec::new();
        while let Some(b) = arena.carve() {
            bufs.push(b);
        }
        let mut r = Residency::new(&arena, Some(1000));
        // Slots 0 and 1 (page 0) and 16 (page 1) receive bytes.
        for s in [0usize, 1, 16] {
            bufs[s].0.fill(7);
            r.note(s, 10, 0, 0);
        }
        let rx = (arena.rx_base(), 64 * 256);
        assert_eq!(resident(rx.0, rx.1), 2 * page);
        // Slot 0 read empty: page 0 still holds slot 1's bytes.
        r.note(0, 0, 0, 5);
        assert_eq!(r.queued(), 0);
        // Slot 16 read empty: page 1 is queued, but not released before it idled a second.
        r.note(16, 0, 0, 10);
        assert_eq!(r.queued(), 1);
        assert_eq!(r.release_due(500), 0);
        assert_eq!(resident(rx.0, rx.1), 2 * page);
        assert_eq!(r.release_due(1010), 1);
        assert_eq!(resident(rx.0, rx.1), page);
        // A page busy again before its turn is not released.
        r.note(1, 0, 0, 2000);
        r.note(2, 3, 0, 2100);
        assert_eq!(r.release_due(5000), 0);
        assert_eq!(resident(rx.0, rx.1), page);
        assert_eq!(bufs[1].0[0], 7, "a busy page keeps its bytes");
        // (Reading maps the zero page back in: checked last.)
        assert!(
            bufs[16].0.iter().all(|&b| b == 0),
            "a released page reads back as zeros"
        );
    }

    #[test]
    fn adjacent_pages_go_in_one_run_and_send_buffers_count_apart() {
        let page = crate::stats::page_size();
        let mut arena = Arena::new(64, 256, 256);
        let mut bufs = Vec::new();
        while let Some(b) = arena.carve() {
            bufs.push(b);
        }
        let mut r = Residency::new(&arena, Some(0));
        for (s, b) in bufs.iter_mut().enumerate() {
            b.1.fill(1);
            r.note(s, 0, 100, 0);
        }
        let tx = (arena.tx_base(), 64 * 256);
        assert_eq!(resident(tx.0, tx.1), 4 * page);
        for s in 0..64 {
            r.note(s, 0, 0, 1);
        }
        assert_eq!(r.release_due(1), 4);
        assert_eq!(resident(tx.0, tx.1), 0);
    }

    #[test]
    fn a_page_busy_again_meanwhile_waits_its_own_second() {
        let arena = Arena::new(64, 256, 256);
        let mut r = Residency::new(&arena, Some(1000));
        r.note(0, 1, 0, 0);
        r.note(0, 0, 0, 10); // idle from 10
        r.note(0, 1, 0, 900);
        r.note(0, 0, 0, 950); // idle again from 950
        assert_eq!(r.release_due(1100), 0, "idle only 150 ms");
        assert_eq!(r.queued(), 1);
        assert_eq!(r.release_due(1950), 1);
    }

    #[test]
    fn a_held_receive_buffer_keeps_its_page_until_the_slot_is_freed() {
        let arena = Arena::new(64, 256, 256);
        let mut r = Residency::new(&arena, Some(0));
        r.note(3, 1, 0, 0);
        r.hold_rx(3);
        r.note(3, 0, 0, 1);
        assert_eq!(r.release_due(10), 0, "out-of-order bytes may sit past the queue");
        r.forget(3, 11);
        assert_eq!(r.release_due(12), 1);
    }

    #[test]
    fn never_released_when_switched_off() {
        let arena = Arena::new(16, 256, 256);
        let mut r = Residency::new(&arena, None);
        r.note(0, 1, 1, 0);
        r.note(0, 0, 0, 1);
        assert_eq!(r.release_due(1_000_000), 0);
        assert_eq!(r.queued(), 0);
    }
}

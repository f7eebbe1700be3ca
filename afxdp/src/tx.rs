//! The sending half of an AF_XDP socket. Frames are built in a free TX chunk of the UMEM and
//! queued as descriptors; the descriptors go into the TX ring in batches; the chunks come back
//! through the completion ring. The fill ring lives here too (it shares the device queue with the
//! completion ring), so the receive side refills through this half.

use std::ptr::NonNull;

use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, RingTx};

use crate::socket::FRAME_SIZE;

/// Descriptors queued before they are committed to the TX ring, unless configured otherwise.
pub(crate) const DEFAULT_COMMIT_BATCH: usize = 64;

pub struct Tx {
    /// `None` on a receive-only socket.
    pub(crate) ring: Option<RingTx>,
    /// Fill and completion rings.
    pub(crate) device: DeviceQueue,
    /// TX chunks we own (on no ring).
    free: Vec<u64>,
    /// Built frames not yet in the TX ring.
    pending: Vec<XdpDesc>,
    commit_batch: usize,
    /// Frames in the TX ring or in the kernel, not completed yet.
    in_flight: u32,
    base: NonNull<u8>,
    area_len: usize,
    pub(crate) frames: u64,
    pub(crate) dropped: u64,
    pub(crate) ring_full: u64,
    pub(crate) wakeups: u64,
}

impl Tx {
    pub(crate) fn new(
        ring: Option<RingTx>,
        device: DeviceQueue,
        free: Vec<u64>,
        base: NonNull<u8>,
        area_len: usize,
    ) -> Tx {
        Tx {
            ring,
            device,
            free,
            pending: Vec::with_capacity(DEFAULT_COMMIT_BATCH),
            commit_batch: DEFAULT_COMMIT_BATCH,
            in_flight: 0,
            base,
            area_len,
            frames: 0,
            dropped: 0,
            ring_full: 0,
            wakeups: 0,
        }
    }

    /// Commit descriptors to the TX ring every `n` frames (at least 1).
    pub fn set_commit_batch(&mut self, n: usize) {
        self.commit_batch = n.max(1);
    }

    /// Frames handed to the kernel and not completed yet, plus those not committed.
    pub fn in_flight(&self) -> usize {
        self.in_flight as usize + self.pending.len()
    }

    /// Whether one more frame can be built now (a free TX chunk exists, after reaping).
    pub fn can_send(&mut self) -> bool {
        if self.ring.is_none() {
            return false;
        }
        if self.free.is_empty() {
            self.reap();
        }
        if self.free.is_empty() {
            self.ring_full += 1;
            return false;
        }
        true
    }

    /// Build one frame of `len` bytes with `build` in a free chunk. With no free chunk (or a
    /// frame larger than a chunk) the frame is dropped and counted.
    pub fn send(&mut self, len: usize, build: &mut dyn FnMut(&mut [u8])) {
        if self.ring.is_none() {
            self.dropped += 1;
            return;
        }
        if self.free.is_empty() {
            self.reap();
        }
        let Some(addr) = self.free.pop() else {
            self.dropped += 1;
            return;
        };
        let fits = usize::try_from(addr)
            .ok()
            .and_then(|a| a.checked_add(len))
            .is_some_and(|end| end <= self.area_len);
        if len > FRAME_SIZE as usize || !fits {
            self.free.push(addr);
            self.dropped += 1;
            return;
        }
        // SAFETY: the chunk at `addr` is ours (on no ring: it came off the free list) and
        // `addr + len` lies inside the area, checked above.
        let frame = unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(addr as usize), len) };
        build(frame);
        self.pending.push(XdpDesc {
            addr,
            len: len as u32,
            options: 0,
        });
        self.frames += 1;
        if self.pending.len() >= self.commit_batch {
            self.commit();
        }
    }

    /// Take completed chunks back.
    pub(crate) fn reap(&mut self) {
        let mut reader = self.device.complete(self.in_flight.max(1));
        while let Some(addr) = reader.read() {
            self.free.push(addr);
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        reader.release();
    }

    /// Move queued descriptors into the TX ring (as many as it has room for).
    pub(crate) fn commit(&mut self) {
        let Some(ring) = self.ring.as_mut() else { return };
        if self.pending.is_empty() {
            return;
        }
        let mut writer = ring.transmit(self.pending.len() as u32);
        let n = writer.insert(self.pending.iter().copied()) as usize;
        writer.commit();
        drop(writer);
        self.in_flight += n as u32;
        self.pending.drain(..n);
    }

    /// Commit what is queued, wake the kernel once if it needs it, and take completed chunks
    /// back: one batch's worth of work (`kick` keeps going until the ring is drained).
    pub fn kick_once(&mut self) {
        self.commit();
        if let Some(ring) = self.ring.as_mut() {
            if ring.needs_wakeup() {
                ring.wake();
                self.wakeups += 1;
            }
        }
        self.reap();
    }

    /// Commit and kick until the ring is drained or the kernel stops taking frames (copy mode
    /// sends at most 32 per kick; a full device queue leaves the rest for the next flush).
    pub(crate) fn kick(&mut self) {
        for _ in 0..1024 {
            self.commit();
            let Some(ring) = self.ring.as_mut() else { return };
            let queued = ring.pending();
            if queued == 0 && self.pending.is_empty() {
                break;
            }
            if !ring.needs_wakeup() && self.pending.is_empty() {
                break;
            }
            ring.wake();
            self.wakeups += 1;
            self.reap();
            let still = self.ring.as_mut().map_or(0, |r| r.pending());
            if still >= queued && self.pending.is_empty() {
                break;
            }
        }
        self.reap();
    }
}

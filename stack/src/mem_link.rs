//! Two links joined by an in-memory wire, for tests and benchmarks without privileges. The wire
//! can lose, duplicate and reorder frames (seeded, so a failing test replays exactly), and keeps a
//! pool of frame buffers so that, once warm, it allocates nothing per packet either.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use crate::link::{Link, LinkCounters, Sender};

/// What the wire does to frames in flight; each is a probability in [0, 1].
#[derive(Clone, Copy, Debug, Default)]
pub struct Impairments {
    pub loss: f64,
    pub duplicate: f64,
    /// A reordered frame is held back and delivered after the next one.
    pub reorder: f64,
}

#[derive(Default)]
struct Direction {
    queue: VecDeque<Vec<u8>>,
    /// A frame held back for reordering.
    held: Option<Vec<u8>>,
    /// When true, frames sent this way are dropped (a cut cable).
    cut: bool,
    /// When on, a copy of every frame sent this way (before impairments), for tests to read.
    captured: Option<Vec<Vec<u8>>>,
    /// Frames sent this way for which this says false are dropped (hosts that never answer).
    keep: Option<fn(&[u8]) -> bool>,
}

struct Wire {
    /// [0]: frames from end A to end B; [1]: from B to A.
    dirs: [Direction; 2],
    pool: Vec<Vec<u8>>,
    impair: Impairments,
    rng: fastrand::Rng,
    /// At most this many frames queued per direction (a ring); beyond it frames are dropped.
    capacity: usize,
}

/// One end of an in-memory wire.
pub struct MemLink {
    wire: Rc<RefCell<Wire>>,
    side: usize,
    sender: MemSender,
    counters: LinkCounters,
}

pub struct MemSender {
    wire: Rc<RefCell<Wire>>,
    side: usize,
    tx_frames: u64,
    tx_dropped: u64,
}

/// A pair of links joined by one wire.
pub fn pair(impair: Impairments, seed: u64) -> (MemLink, MemLink) {
    let wire = Rc::new(RefCell::new(Wire {
        dirs: Default::default(),
        pool: Vec::new(),
        impair,
        rng: fastrand::Rng::with_seed(seed),
        capacity: 1 << 20,
    }));
    let end = |side| MemLink {
        wire: wire.clone(),
        side,
        sender: MemSender {
            wire: wire.clone(),
            side,
            tx_frames: 0,
            tx_dropped: 0,
        },
        counters: LinkCounters::default(),
    };
    (end(0), end(1))
}

impl MemLink {
    pub fn set_impairments(&mut self, impair: Impairments) {
        self.wire.borrow_mut().impair = impair;
    }

    /// Frames the wire holds per direction before the sender sees it full (default 2^20).
    pub fn set_capacity(&mut self, frames: usize) {
        self.wire.borrow_mut().capacity = frames.max(1);
    }

    /// Drop every frame this end sends from now on (or stop doing so).
    pub fn cut_outgoing(&mut self, cut: bool) {
        self.wire.borrow_mut().dirs[self.side].cut = cut;
    }

    /// Keep a copy of every frame this end sends from now on (`take_captured`), or stop.
    pub fn capture_outgoing(&mut self, on: bool) {
        self.wire.borrow_mut().dirs[self.side].captured = on.then(Vec::new);
    }

    /// The frames this end sent since capturing started or was last taken.
    pub fn take_captured(&mut self) -> Vec<Vec<u8>> {
        let mut w = self.wire.borrow_mut();
        match w.dirs[self.side].captured.as_mut() {
            Some(v) => std::mem::take(v),
            None => Vec::new(),
        }
    }

    /// Drop the frames this end sends that `keep` refuses (`None`: keep all).
    pub fn filter_outgoing(&mut self, keep: Option<fn(&[u8]) -> bool>) {
        self.wire.borrow_mut().dirs[self.side].keep = keep;
    }

    /// Frames waiting to reach this end.
    pub fn inbound(&self) -> usize {
        let w = self.wire.borrow();
        let d = &w.dirs[1 - self.side];
        d.queue.len() + usize::from(d.held.is_some())
    }

    /// Put a raw frame on the wire towards this end, as if the peer had sent it (hostile input).
    pub fn inject(&mut self, frame: &[u8]) {
        self.wire.borrow_mut().dirs[1 - self.side]
            .queue
            .push_back(frame.to_vec());
    }
}

impl Sender for MemSender {
    fn can_send(&mut self) -> bool {
        let w = self.wire.borrow();
        w.dirs[self.side].queue.len() < w.capacity
    }

    fn send(&mut self, len: usize, build: &mut dyn FnMut(&mut [u8])) {
        let mut guard = self.wire.borrow_mut();
        let w = &mut *guard;
        let mut buf = w.pool.pop().unwrap_or_default();
        buf.clear();
        buf.resize(len, 0);
        build(&mut buf);
        self.tx_frames += 1;
        let impair = w.impair;
        let dir = &mut w.dirs[self.side];
        if let Some(c) = dir.captured.as_mut() {
            c.push(buf.clone());
        }
        let refused = dir.keep.is_some_and(|keep| !keep(&buf));
        if refused || dir.cut || dir.queue.len() >= w.capacity || (impair.loss > 0.0 && w.rng.f64() < impair.loss) {
            self.tx_dropped += 1;
            w.pool.push(buf);
            return;
        }
        if impair.duplicate > 0.0 && w.rng.f64() < impair.duplicate {
            let mut copy = w.pool.pop().unwrap_or_default();
            copy.clear();
            copy.extend_from_slice(&buf);
            dir.queue.push_back(copy);
        }
        if impair.reorder > 0.0 && dir.held.is_none() && w.rng.f64() < impair.reorder {
            dir.held = Some(buf);
            return;
        }
        dir.queue.push_back(buf);
        if let Some(held) = dir.held.take() {
            dir.queue.push_back(held);
        }
    }
}

impl Link for MemLink {
    type Sender = MemSender;

    fn receive(&mut self, max: usize, each: &mut dyn FnMut(&mut [u8], &mut MemSender)) -> usize {
        let mut n = 0;
        while n < max {
            // Take the frame out first: `each` may send, which borrows the wire again.
            let frame = {
                let mut w = self.wire.borrow_mut();
                let dir = &mut w.dirs[1 - self.side];
                match dir.queue.pop_front() {
                    Some(f) => Some(f),
                    // Nothing else is coming to push a held frame out: deliver it late.
                    None => dir.held.take(),
                }
            };
            let Some(mut frame) = frame else { break };
            each(&mut frame, &mut self.sender);
            self.wire.borrow_mut().pool.push(frame);
            n += 1;
        }
        self.counters.rx_frames += n as u64;
        n
    }

    fn sender(&mut self) -> &mut MemSender {
        &mut self.sender
    }

    fn flush(&mut self) {}

    fn wait(&mut self, _timeout_ms: i32) {}

    fn counters(&self) -> LinkCounters {
        LinkCounters {
            tx_frames: self.sender.tx_frames,
            tx_dropped: self.sender.tx_dropped,
            ..self.counters
        }
    }
}

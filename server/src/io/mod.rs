//! The transports, as peers behind one small contract. A transport takes connections and bytes
//! from the network to the core ([`crate::core::ServerCore`]) and carries out what the core asks
//! through [`Io`] (send these bytes, close this connection):
//!
//! - [`epoll`]: Linux TCP sockets and epoll; a connection is a file descriptor.
//! - [`userspace`] (feature `xdp`): our userspace TCP stack over one AF_XDP socket; a connection
//!   is a stack slot.
//!
//! The worker process around either one (control channel, signals, ticks, stats) is
//! `crate::worker`; it drives the transport through [`Driver`].

pub mod epoll;
#[cfg(feature = "xdp")]
pub mod userspace;

use std::time::{Duration, Instant};

use crate::control::{Outbox, WorkerStats};
use crate::core::{ConnId, Io, ServerCore};

/// The core's [`Io`] as a transport implements it, plus what the worker needs of it in common.
pub trait Transport: Io {
    /// A connection that failed during the current core call (a write found it reset, a slow
    /// consumer), not yet reported to the core.
    fn take_failed(&mut self) -> Option<ConnId>;
    /// The core has been told that `id` failed: free what the transport holds for it.
    fn release_failed(&mut self, id: ConnId);
    /// Messages for the supervisor produced inside core calls (device claims).
    fn outbox(&mut self) -> &mut Outbox;
}

/// Report the connections that failed during a core call to the core, once the call is over.
///
/// A transport cannot tell the core from inside one of its calls (the core is borrowed), so every
/// transport queues them and every core call is followed by this: the one rule both follow.
pub fn settle<T: Transport>(core: &mut ServerCore, t: &mut T, now_ms: u64) {
    while let Some(id) = t.take_failed() {
        core.closed(id, now_ms, t);
        t.release_failed(id);
    }
}

/// The worker's clock: milliseconds since the worker started (the core's time).
#[derive(Clone, Copy, Debug)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Clock {
        Clock(Instant::now())
    }

    pub fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// What the worker learned from one round of network I/O.
#[derive(Clone, Copy, Debug, Default)]
pub struct Turn {
    /// The supervisor's control channel became readable while waiting.
    pub control: bool,
}

/// A transport as the worker shell drives it.
pub trait Driver {
    type Io: Transport;

    /// Connection ids run from 0 to this (the core sizes its table by it).
    fn id_space(&self) -> usize;

    /// One round: wait at most `wait` for the network, then take in what arrived (new
    /// connections, bytes, closes) and hand it to `core`. The time given to the core is read
    /// from `clock` after the wait.
    fn turn(&mut self, core: &mut ServerCore, clock: &Clock, wait: Duration) -> anyhow::Result<Turn>;

    /// Push out what the core wrote since the last flush (in the turn, the tick, the supervisor's
    /// commands); called once per round of the worker. Transports that write at once do nothing.
    fn flush(&mut self, _core: &ServerCore) {}

    /// The transport as the core's [`Io`].
    fn io(&mut self) -> &mut Self::Io;

    /// Run a core call (broadcast, push, tick, …) on this transport, then settle.
    fn call<R>(
        &mut self,
        core: &mut ServerCore,
        now_ms: u64,
        f: impl FnOnce(&mut ServerCore, &mut Self::Io) -> R,
    ) -> R {
        let r = f(core, self.io());
        settle(core, self.io(), now_ms);
        r
    }

    /// Periodic work of the transport itself, after the core's tick (connections that took too
    /// long to close, accepts paused for lack of descriptors).
    fn housekeeping(&mut self, core: &mut ServerCore, now_ms: u64);

    /// Fill in the transport's part of the worker's stats.
    fn stats(&self, core: &ServerCore, into: &mut WorkerStats);

    /// A broadcast has just been written to every connection.
    fn broadcast_written(&mut self, _started: Instant) {}

    /// After the core closed everyone (shutdown): let the close frames and FINs leave, for at
    /// most `grace`. Returns the connections still open at the end.
    fn drain(&mut self, core: &mut ServerCore, now_ms: u64, grace: Duration) -> usize;

    /// One line for the log at start: what this transport serves.
    fn describe(&self) -> String;
}

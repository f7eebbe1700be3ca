//! The userspace-stack transport (`--stack xdp`): XDP steers the WebSocket port into one AF_XDP
//! socket per receive queue, and the worker of that queue runs our TCP stack (`stack::Stack`) on
//! it. No file descriptor per connection: a connection is a stack slot, and its number is the
//! core's connection id.
//!
//! A packet's path: the AF_XDP RX ring → `Stack::poll` (`stack/src/stack/ingress.rs`: parse,
//! 4-tuple lookup, smoltcp on that one socket) → a stack `Event` → `ServedStack::event` (`serve.rs`)
//! → `ServerCore::data` → the core answers through `StackIo` into the connection's send buffer →
//! `Stack::flush` (`stack/src/stack/egress.rs`) builds segments in TX chunks → the TX ring.
//!
//! - `serve.rs`: the core over the stack, whatever the link (tested over an in-memory wire).
//! - `spill.rs`: the shared buffers that let 256-byte per-connection buffers carry more.
//! - `stats.rs`: the worker's part of `/stats`.

mod serve;
mod spill;
mod stats;
#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use stack::xdp_link::{XdpLink, XdpLinkConfig};
use stack::{clock, Event, Link, Stack, StackConfig};

pub use serve::{ServedStack, StackIo};
pub use stats::XdpWorkerStats;

use super::{Clock, Driver, Turn};
use crate::control::{WorkerConfig, WorkerStats};
use crate::core::frame::MAX_HEADER;
use crate::core::ServerCore;

/// RX ring frames: twice the TX ring, so the ACKs of a full TX ring of pushes fit while we send.
/// UMEM: (8192 + 4096) × 2 KiB = 24 MiB, whatever the number of connections.
const RX_FRAMES: u32 = 8192;
/// Frames taken per poll, and polls per turn at most (the whole RX ring).
const RX_BATCH: usize = 256;
const RX_ROUNDS: usize = RX_FRAMES as usize / RX_BATCH;
/// Capacity the event list keeps between rounds (it grows for a burst and gives the rest back).
const EVENTS_KEPT: usize = 4096;

/// What an xdp worker needs beyond the common worker settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct XdpWorkerConfig {
    pub iface: String,
    pub queue: u32,
    /// Our address on the interface, and its prefix length.
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub port: u16,
    pub rx_buf: usize,
    pub tx_buf: usize,
    pub spill_buffers: usize,
}

/// One worker's AF_XDP socket, the stack on it, and the buffers its connections share.
pub struct Userspace {
    x: XdpWorkerConfig,
    max_conns: usize,
    served: ServedStack<XdpLink>,
    events: Vec<Event>,
    xsks: xdp_prog::XskMap,
    umem_bytes: u64,
    /// Frames received in the last turn (none: the next turn may wait).
    last_frames: usize,
    /// A broadcast whose frames are still leaving: when it started.
    broadcast_started: Option<Instant>,
    last_broadcast_tx_ms: Option<f64>,
}

impl Userspace {
    /// Bind the AF_XDP socket of `x.queue`, build the stack for `cfg.max_conns` connections, and
    /// register the socket with the steering program. `max_request`: the longest request head.
    pub fn open(cfg: &WorkerConfig, x: &XdpWorkerConfig, max_request: usize) -> anyhow::Result<Userspace> {
        let link_cfg = XdpLinkConfig {
            rx_frames: RX_FRAMES,
            ..XdpLinkConfig::new(&x.iface, x.queue)
        };
        let link = XdpLink::open(&link_cfg)
            .with_context(|| format!("binding an AF_XDP socket to {} queue {}", x.iface, x.queue))?;
        // The steering program's XSKMAP, where the worker registers its socket. SAFETY: the
        // supervisor dup2'ed the map's descriptor here before exec (`spawn_worker`; opening it by
        // id would need CAP_SYS_ADMIN), and nothing in this process closes it.
        let xsks = unsafe { xdp_prog::XskMap::inherited(crate::control::FD_XSKMAP)? };
        let umem_bytes = link.umem_bytes() as u64;
        let our_mac = host::iface::mac_of(&x.iface).with_context(|| format!("reading the MAC of {}", x.iface))?;
        let stack_cfg = StackConfig {
            max_conns: cfg.max_conns,
            rx_buf: x.rx_buf,
            tx_buf: x.tx_buf,
            addr: x.addr,
            prefix_len: x.prefix_len,
            our_mac,
            rx_batch: RX_BATCH,
            max_per_source: cfg.max_conns_per_source,
            ..StackConfig::default()
        };
        let mut stack = Stack::new(stack_cfg, link, clock::now()).context("building the userspace stack")?;
        stack.listen(x.port);
        xsks.register(x.queue, stack.link().fd())?;
        // A head or frame must fit one spill buffer, and a head one byte longer than allowed must
        // fit too, so that the core sees it is too long (431) rather than wait for more.
        let spill_size = (max_request + 1).max(cfg.max_frame + MAX_HEADER);
        Ok(Userspace {
            served: ServedStack::new(stack, x.spill_buffers, spill_size),
            events: Vec::with_capacity(EVENTS_KEPT),
            xsks,
            umem_bytes,
            last_frames: 0,
            broadcast_started: None,
            last_broadcast_tx_ms: None,
            max_conns: cfg.max_conns,
            x: x.clone(),
        })
    }

    /// Take in up to a ring-full of frames, handing the stack's events to the core.
    fn receive(&mut self, core: &mut ServerCore, now_ms: u64) -> usize {
        let mut frames = 0;
        // Take in everything the RX ring holds (up to its size) before sending more: after a
        // broadcast every segment sent comes back as an ACK, and a full ring drops them.
        for _ in 0..RX_ROUNDS {
            let n = self.served.io.stack.poll(clock::now(), &mut self.events);
            frames += n;
            let mut events = std::mem::take(&mut self.events);
            for ev in events.drain(..) {
                self.served.event(core, ev, now_ms);
            }
            // A timer tick of a million retransmissions fills it once; do not keep that peak.
            events.shrink_to(EVENTS_KEPT);
            self.events = events;
            if n < RX_BATCH {
                break;
            }
        }
        frames
    }
}

impl Driver for Userspace {
    type Io = StackIo<XdpLink>;

    fn id_space(&self) -> usize {
        self.max_conns
    }

    /// Wait (1 ms at most, and only when the last turn was idle), then receive up to a ring-full.
    /// Sending is `flush`, once the worker has also run its tick and commands: a broadcast writes
    /// into every send buffer, then one flush hands the segments to the TX ring in batches (a
    /// syscall per batch of frames, never one per connection).
    fn turn(&mut self, core: &mut ServerCore, clock: &Clock, wait: Duration) -> anyhow::Result<Turn> {
        if self.last_frames == 0 && !self.served.io.stack.has_work() && !wait.is_zero() {
            self.served.io.stack.link().wait(1);
        }
        let now_ms = clock.now_ms();
        self.served.io.now_ms = now_ms;
        self.last_frames = self.receive(core, now_ms);
        self.served.feed_waiting(core, now_ms);
        Ok(Turn::default())
    }

    /// Everything the core wrote since the last flush (answers to this turn's input, and what
    /// ticks and commands wrote) leaves in one pass over the dirty sockets, after the worker
    /// has also run its tick and commands: a reply rides with the ACK, and a broadcast does not
    /// wait for the next turn's input.
    fn flush(&mut self, core: &ServerCore) {
        self.served.io.stack.flush(clock::now());
        let sent = !self.served.io.stack.has_work() && core.output_behind() == 0;
        if let Some(started) = self.broadcast_started.filter(|_| sent) {
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            log::info!("queue {}: broadcast handed to the link in {ms:.1} ms", self.x.queue);
            self.last_broadcast_tx_ms = Some(ms);
            self.broadcast_started = None;
        }
    }

    fn io(&mut self) -> &mut StackIo<XdpLink> {
        &mut self.served.io
    }

    fn call<R>(
        &mut self,
        core: &mut ServerCore,
        now_ms: u64,
        f: impl FnOnce(&mut ServerCore, &mut StackIo<XdpLink>) -> R,
    ) -> R {
        self.served.call(core, now_ms, f)
    }

    /// Nothing of its own: closes that take too long are the core's timers.
    fn housekeeping(&mut self, _core: &mut ServerCore, now_ms: u64) {
        self.served.io.now_ms = now_ms;
    }

    fn stats(&self, core: &ServerCore, into: &mut WorkerStats) {
        let t = &self.served.io;
        let stack = &t.stack;
        into.refused = stack.stats().syn_refused;
        into.refused_per_source = stack.stats().refused_per_source;

        into.buffered_conns = t.inp.in_use() as u64;
        into.lingering = (stack.in_use() as u64).saturating_sub(core.stats().connections);
        into.xdp = Some(Box::new(XdpWorkerStats {
            queue: self.x.queue,
            stack: stack.stats(),
            link: stack.link_counters(),
            resident: stack.resident_memory(),
            umem_bytes: self.umem_bytes,
            spill_in_use: t.inp.in_use() as u64,
            spill_capacity: t.inp.capacity() as u64,
            spill_exhausted: t.inp.exhausted,
            spill_evicted: t.inp.evicted,
            tx_pending_conns: stack.pending_output() as u64 + core.output_behind(),
            last_broadcast_tx_ms: self.last_broadcast_tx_ms,
        }));
    }

    fn broadcast_written(&mut self, started: Instant) {
        self.broadcast_started = Some(started);
    }

    /// Let the stack deliver the close frames and FINs for a while; close frames still waiting
    /// for room go out as the peers make it.
    fn drain(&mut self, core: &mut ServerCore, now_ms: u64, grace: Duration) -> usize {
        self.served.io.now_ms = now_ms;
        let deadline = Instant::now() + grace;
        while self.served.io.stack.in_use() > 0 && Instant::now() < deadline {
            let frames = self.served.io.stack.poll(clock::now(), &mut self.events);
            for ev in self.events.drain(..) {
                match ev {
                    Event::Writable(id) => core.writable(id.0, now_ms, &mut self.served.io),
                    Event::Closed(id, _) | Event::Accepted(id) => {
                        self.served.io.forget(id.0);
                        if self.served.io.stack.is_owned(id) {
                            self.served.io.stack.close(id);
                        }
                    }
                    Event::Readable(_) | Event::Connected(_) => {}
                }
            }
            self.served.io.stack.flush(clock::now());
            if frames == 0 && !self.served.io.stack.has_work() {
                self.served.io.stack.link().wait(1);
            }
        }
        self.served.io.stack.in_use()
    }

    fn describe(&self) -> String {
        format!(
            "userspace stack on {} queue {}, {}:{} for {} connections ({} B receive + {} B send buffer each)",
            self.x.iface, self.x.queue, self.x.addr, self.x.port, self.max_conns, self.x.rx_buf, self.x.tx_buf
        )
    }
}

impl Drop for Userspace {
    /// Stop steering to this socket before it goes away.
    fn drop(&mut self) {
        if let Err(e) = self.xsks.unregister(self.x.queue) {
            log::warn!("queue {}: unregistering the AF_XDP socket: {e}", self.x.queue);
        }
    }
}

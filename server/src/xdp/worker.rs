//! One xdp worker process: an AF_XDP socket on one receive queue, the userspace stack on it, and
//! the server core driven by the stack's events. No file descriptor per connection: a connection
//! is a stack slot, and its number is the core's connection id.
//!
//! The core and the stack meet in `serve.rs` (link-independent, tested in memory).
//! A broadcast writes into every send buffer, then one flush hands the segments to the TX ring in
//! batches (a syscall per batch of frames, never one per connection).

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use stack::xdp_link::{XdpLink, XdpLinkConfig};
use stack::{clock, Event, Link, Stack, StackConfig};

use super::serve::Served;
use super::serve::Transport;
use super::{XdpWorkerConfig, XdpWorkerStats};
use crate::core::device::DeviceHasher;
use crate::core::frame::MAX_HEADER;
use crate::core::{CoreConfig, ServerCore, TICK_MS};
use crate::kernel::control::{self, ControlReader, FromWorker, WorkerConfig, WorkerStats};
use crate::kernel::worker::RecentExpiries;

/// RX ring frames: twice the TX ring, so the ACKs of a full TX ring of pushes fit while we send.
/// UMEM: (8192 + 4096) × 2 KiB = 24 MiB, whatever the number of connections.
const RX_FRAMES: u32 = 8192;
/// Frames taken per poll, and polls per loop round at most (the whole RX ring).
const RX_BATCH: usize = 256;
const RX_ROUNDS: usize = RX_FRAMES as usize / RX_BATCH;
/// How often the control channel is read (a syscall; commands are rare).
const CONTROL_EVERY: Duration = Duration::from_millis(2);
/// At shutdown, how long the stack may take to deliver the close frames and FINs.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

pub struct Worker {
    cfg: WorkerConfig,
    x: XdpWorkerConfig,
    s: Served<XdpLink>,
    events: Vec<Event>,
    control_in: UnixStream,
    control_out: UnixStream,
    control: ControlReader,
    xsks: xdp_prog::XskMap,
    umem_bytes: u64,
    started: Instant,
    expiry_busy_ns: u64,
    recent_expiries: RecentExpiries,
    /// A broadcast whose frames are still leaving: when it started.
    broadcast_started: Option<Instant>,
    last_broadcast_tx_ms: Option<f64>,
    stop: bool,
}

impl Worker {
    pub fn new(cfg: WorkerConfig, control_in: UnixStream, control_out: UnixStream) -> anyhow::Result<Worker> {
        let x = cfg.xdp.clone().context("not an xdp worker")?;
        let link_cfg = XdpLinkConfig {
            rx_frames: RX_FRAMES,
            ..XdpLinkConfig::new(&x.iface, x.queue)
        };
        let link = XdpLink::open(&link_cfg)
            .with_context(|| format!("binding an AF_XDP socket to {} queue {}", x.iface, x.queue))?;
        let xsks = xdp_prog::XskMap::open(x.xsks_map_id)?;
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
            ..StackConfig::default()
        };
        let mut stack = Stack::new(stack_cfg, link, clock::now()).context("building the userspace stack")?;
        stack.listen(x.port);
        xsks.register(x.queue, stack.link().fd())?;
        control_in.set_nonblocking(true)?;
        // A head or frame must fit one spill buffer, and a head one byte longer than allowed must
        // fit too, so that the core sees it is too long (431) rather than wait for more.
        let max_request = 4096;
        let spill_size = (max_request + 1).max(cfg.max_frame + MAX_HEADER);
        let core_cfg = CoreConfig {
            idle_timeout_ms: cfg.idle_timeout_ms,
            poll_hold_ms: cfg.poll_hold_ms,
            echo: cfg.echo,
            max_frame: cfg.max_frame,
            max_message: cfg.max_message,
            max_request,
            request_timeout_ms: cfg.request_timeout_ms,
            device_hasher: DeviceHasher::new(cfg.device_key),
            seed: cfg.seed ^ cfg.index as u64,
        };
        let core = ServerCore::new(core_cfg, cfg.max_conns, 0);
        Ok(Worker {
            s: Served::new(core, stack, x.spill_buffers, spill_size),
            events: Vec::with_capacity(1024),
            control_in,
            control_out,
            control: ControlReader::default(),
            xsks,
            umem_bytes,
            started: Instant::now(),
            expiry_busy_ns: 0,
            recent_expiries: RecentExpiries::new(),
            broadcast_started: None,
            last_broadcast_tx_ms: None,
            stop: false,
            x,
            cfg,
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn run(&mut self) -> anyhow::Result<()> {
        // As the kernel worker: SIGTERM (also sent if the supervisor dies) stops us; SIGINT from a
        // terminal is the supervisor's to decide.
        let terminated = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&terminated))?;
        signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::new(AtomicBool::new(false)))?;
        log::info!(
            "worker {}: userspace stack on {} queue {}, {}:{} for {} connections ({} B receive + {} B send buffer each)",
            self.cfg.index,
            self.x.iface,
            self.x.queue,
            self.x.addr,
            self.x.port,
            self.cfg.max_conns,
            self.x.rx_buf,
            self.x.tx_buf
        );
        let mut next_tick = 0;
        let mut next_control = Instant::now();
        while !self.stop && !terminated.load(Ordering::Relaxed) {
            let now_ms = self.now_ms();
            self.s.t.now_ms = now_ms;
            // Take in everything the RX ring holds (up to its size) before sending more: after a
            // broadcast every segment sent comes back as an ACK, and a full ring drops them.
            let mut frames = 0;
            for _ in 0..RX_ROUNDS {
                let n = self.s.t.stack.poll(clock::now(), &mut self.events);
                frames += n;
                let mut events = std::mem::take(&mut self.events);
                for ev in events.drain(..) {
                    self.s.event(ev, now_ms);
                }
                self.events = events;
                if n < RX_BATCH {
                    break;
                }
            }
            if now_ms >= next_tick {
                next_tick = now_ms + TICK_MS;
                self.tick(now_ms);
            }
            if Instant::now() >= next_control {
                next_control = Instant::now() + CONTROL_EVERY;
                control::read_commands(self)?;
            }
            self.s.t.stack.flush(clock::now());
            self.s.t.outbox.send(&mut self.control_out, None)?;
            if let Some(started) = self.broadcast_started.filter(|_| !self.s.t.stack.has_work()) {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                log::info!("worker {}: broadcast handed to the link in {ms:.1} ms", self.cfg.index);
                self.last_broadcast_tx_ms = Some(ms);
                self.broadcast_started = None;
            }
            if frames == 0 && !self.s.t.stack.has_work() {
                self.s.t.stack.link().wait(1);
            }
        }
        self.shutdown()
    }

    fn tick(&mut self, now_ms: u64) {
        let expired_before = self.s.core.stats().expired;
        let started = Instant::now();
        self.s.call(now_ms, |core, t| core.tick(now_ms, t));
        let expired = self.s.core.stats().expired;
        if expired > expired_before {
            self.expiry_busy_ns += started.elapsed().as_nanos() as u64;
        }
        self.recent_expiries.record(now_ms, expired);
        self.s.t.expire_close_after_out(now_ms);
    }

    fn worker_stats(&self) -> WorkerStats {
        let stack = &self.s.t.stack;
        WorkerStats {
            index: self.cfg.index,
            pid: std::process::id(),
            core: self.s.core.stats().clone(),
            refused: stack.stats().syn_refused,
            slow_consumers_dropped: self.s.t.slow_dropped,
            pending_output_bytes: self.s.t.out.held_bytes() as u64,
            buffered_conns: self.s.t.inp.in_use() as u64,
            lingering: (stack.in_use() as u64).saturating_sub(self.s.core.stats().connections),
            expiry_busy_ns: self.expiry_busy_ns,
            expired_last_10s: self.recent_expiries.sum(),
            core_heap_bytes: self.s.core.heap_bytes() as u64,
            rss_bytes: host::process::own_rss_bytes(),
            open_fds: 0,
            fd_limit: 0,
            xdp: Some(Box::new(XdpWorkerStats {
                queue: self.x.queue,
                stack: stack.stats(),
                link: stack.link_counters(),
                resident: stack.resident_memory(),
                umem_bytes: self.umem_bytes,
                spill_in_use: self.s.t.inp.in_use() as u64,
                spill_capacity: self.s.t.inp.capacity() as u64,
                spill_exhausted: self.s.t.inp.exhausted,
                out_spill_in_use: self.s.t.out.in_use() as u64,
                out_spill_exhausted: self.s.t.out.exhausted,
                tx_pending_conns: (stack.pending_output() + self.s.t.out.in_use()) as u64,
                last_broadcast_tx_ms: self.last_broadcast_tx_ms,
            })),
        }
    }

    /// Close every connection with 1001, let the stack deliver it for a while, and stop steering
    /// to our socket.
    fn shutdown(&mut self) -> anyhow::Result<()> {
        let now = self.now_ms();
        self.s.call(now, |core, t| core.shutdown(now, t));
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while self.s.t.stack.in_use() > 0 && Instant::now() < deadline {
            let frames = self.s.t.stack.poll(clock::now(), &mut self.events);
            for ev in self.events.drain(..) {
                match ev {
                    // Close frames still waiting for room go out as the peers make it.
                    Event::Writable(id) => self.s.t.drain_out(id.0),
                    Event::Closed(id, _) | Event::Accepted(id) => {
                        self.s.t.forget(id.0);
                        if self.s.t.stack.is_owned(id) {
                            self.s.t.stack.close(id);
                        }
                    }
                    Event::Readable(_) | Event::Connected(_) => {}
                }
            }
            self.s.t.stack.flush(clock::now());
            if frames == 0 && !self.s.t.stack.has_work() {
                self.s.t.stack.link().wait(1);
            }
        }
        if let Err(e) = self.xsks.unregister(self.x.queue) {
            log::warn!("worker {}: unregistering the AF_XDP socket: {e}", self.cfg.index);
        }
        log::info!(
            "worker {}: stopped ({} connections still closing at exit)",
            self.cfg.index,
            self.s.t.stack.in_use()
        );
        Ok(())
    }
}

impl control::Controlled for Worker {
    type Io = Transport<XdpLink>;

    fn index(&self) -> usize {
        self.cfg.index
    }

    fn now_ms(&self) -> u64 {
        Worker::now_ms(self)
    }

    fn channel(&mut self) -> (&mut ControlReader, &mut dyn std::io::Read) {
        (&mut self.control, &mut self.control_in)
    }

    fn core_call<R>(&mut self, now_ms: u64, f: impl FnOnce(&mut ServerCore, &mut Transport<XdpLink>) -> R) -> R {
        self.s.call(now_ms, f)
    }

    fn stats(&self) -> WorkerStats {
        self.worker_stats()
    }

    fn send(&mut self, reply: Option<FromWorker>) -> anyhow::Result<()> {
        self.s.t.outbox.send(&mut self.control_out, reply)
    }

    fn stop(&mut self) {
        self.stop = true;
    }

    fn broadcast_written(&mut self, started: Instant) {
        self.broadcast_started = Some(started);
    }
}

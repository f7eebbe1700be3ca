//! One xdp worker process: an AF_XDP socket on one receive queue, the userspace stack on it, and
//! the server core driven by the stack's events. No file descriptor per connection: a connection
//! is a stack slot, and its number is the core's connection id.
//!
//! Input is parsed where it lies: the bytes in a connection's receive buffer are copied to one
//! scratch buffer (`peek`), the core consumes whole request heads and frames, and only those are
//! dropped from the stack (`discard`); an incomplete head or frame stays in the receive buffer, or
//! moves to a spill buffer when it is bigger than that (see `spill.rs`). Output is written straight
//! into the connection's send buffer; what does not fit waits in an output spill buffer until the
//! peer's ACKs make room (and input from that connection waits too). A connection whose output
//! does not fit even there (or finds the pool empty) is a slow consumer and is reset, counted.
//! A broadcast writes into every send buffer, then one flush hands the segments to the TX ring in
//! batches (a syscall per batch of frames, never one per connection).

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use stack::xdp_link::{XdpLink, XdpLinkConfig};
use stack::{clock, CloseReason, ConnId, Event, Link, Stack, StackConfig};

use super::spill::SpillPool;
use super::{XdpWorkerConfig, XdpWorkerStats};
use crate::core::device::DeviceHasher;
use crate::core::frame::MAX_HEADER;
use crate::core::ratelog::RateLimitedLog;
use crate::core::{CoreConfig, Io, ServerCore, TICK_MS};
use crate::kernel::control::{self, send_line, ControlReader, FromWorker, ToWorker, WorkerConfig, WorkerStats};
use crate::kernel::worker::RecentExpiries;

/// How often the control channel is read (a syscall; commands are rare).
const CONTROL_EVERY: Duration = Duration::from_millis(2);
/// At shutdown, how long the stack may take to deliver the close frames and FINs.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The stack as the core's [`Io`].
struct Transport {
    stack: Stack<XdpLink>,
    /// Output waiting for room in a connection's send buffer.
    out: SpillPool,
    /// Closed by the core while output was still waiting: FIN once it is sent.
    close_after_out: std::collections::HashSet<u32>,
    /// Reset as slow consumers during a core call; reported to the core right after it.
    doomed: Vec<u32>,
    /// Messages for the supervisor produced inside core calls (device claims).
    outbox: Vec<FromWorker>,
    slow_dropped: u64,
    log: RateLimitedLog,
    now_ms: u64,
}

impl Transport {
    /// The peer is too slow (or the pools are empty): reset, and report it after the core call.
    fn slow_consumer(&mut self, id: u32, total: usize) {
        self.slow_dropped += 1;
        self.log.warn(
            self.now_ms,
            format_args!(
                "conn {id}: {total} bytes fit neither its send buffer nor a spill buffer: reset as a slow consumer"
            ),
        );
        self.out.release(id);
        self.close_after_out.remove(&id);
        self.stack.abort(ConnId(id));
        self.doomed.push(id);
    }

    /// Move waiting output into the send buffer; FIN when it is all out and the core closed.
    fn drain_out(&mut self, id: u32) {
        let cid = ConnId(id);
        let Some((buf, len)) = self.out.get(id) else { return };
        let n = self.stack.write(cid, &buf[..*len]);
        self.out.consume(id, n);
        if !self.out.holds(id) && self.close_after_out.remove(&id) {
            self.stack.close(cid);
        }
    }

    /// Forget whatever waits for a connection that is gone.
    fn forget(&mut self, id: u32) {
        self.out.release(id);
        self.close_after_out.remove(&id);
    }
}

impl Io for Transport {
    fn send(&mut self, id: u32, parts: &[&[u8]]) {
        let cid = ConnId(id);
        if !self.stack.is_owned(cid) {
            return;
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if !self.out.holds(id) {
            if self.stack.write_space(cid) >= total {
                for part in parts {
                    self.stack.write(cid, part);
                }
                return;
            }
            // What fits goes now, the rest waits in an output spill buffer.
            if !self.out.take(id, &[]) {
                return self.slow_consumer(id, total);
            }
            let mut queued = true;
            for part in parts {
                let n = if self.out.get(id).is_some_and(|(_, len)| *len == 0) {
                    self.stack.write(cid, part)
                } else {
                    0
                };
                queued &= self.out.append(id, &part[n..]);
            }
            if !queued {
                return self.slow_consumer(id, total);
            }
            if self.out.get(id).is_some_and(|(_, len)| *len == 0) {
                self.out.release(id);
            }
            return;
        }
        for part in parts {
            if !self.out.append(id, part) {
                return self.slow_consumer(id, total);
            }
        }
    }

    fn close(&mut self, id: u32) {
        let cid = ConnId(id);
        if self.out.holds(id) {
            self.close_after_out.insert(id);
        } else if self.stack.is_owned(cid) {
            self.stack.close(cid);
        }
    }

    fn device_claimed(&mut self, hash: u64) {
        self.outbox.push(FromWorker::Claim {
            hash,
            at_ns: control::monotonic_ns(),
        });
    }

    fn device_released(&mut self, hash: u64) {
        self.outbox.push(FromWorker::Release { hash });
    }
}

pub struct Worker {
    cfg: WorkerConfig,
    x: XdpWorkerConfig,
    core: ServerCore,
    t: Transport,
    spill: SpillPool,
    /// One connection's receive buffer, copied for the core to parse (and unmask) in place.
    scratch: Box<[u8]>,
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
        let link = XdpLink::open(&XdpLinkConfig::new(&x.iface, x.queue))
            .with_context(|| format!("binding an AF_XDP socket to {} queue {}", x.iface, x.queue))?;
        let xsks = xdp_prog::XskMap::open(x.xsks_map_id)?;
        let umem_bytes = link.umem_bytes() as u64;
        let our_mac = stack::xdp_link::mac_of(&x.iface).with_context(|| format!("reading the MAC of {}", x.iface))?;
        let stack_cfg = StackConfig {
            max_conns: cfg.max_conns,
            rx_buf: x.rx_buf,
            tx_buf: x.tx_buf,
            addr: x.addr,
            prefix_len: x.prefix_len,
            our_mac,
            ..StackConfig::default()
        };
        let mut stack = Stack::new(stack_cfg, link, clock::now()).context("building the userspace stack")?;
        stack.listen(x.port);
        xsks.register(x.queue, stack.link().fd())?;
        control_in.set_nonblocking(true)?;
        // A head or frame must fit one spill buffer (and a frame's echo must fit the send buffer).
        let max_frame = cfg.max_frame.min(x.tx_buf.saturating_sub(MAX_HEADER).max(125));
        let max_request = 4096;
        let spill_size = max_request.max(cfg.max_frame + MAX_HEADER);
        let core_cfg = CoreConfig {
            idle_timeout_ms: cfg.idle_timeout_ms,
            poll_hold_ms: cfg.poll_hold_ms,
            echo: cfg.echo,
            max_frame: if cfg.echo { max_frame } else { cfg.max_frame },
            max_message: cfg.max_message,
            max_request,
            request_timeout_ms: cfg.request_timeout_ms,
            device_hasher: DeviceHasher::new(cfg.device_key),
            seed: cfg.seed ^ cfg.index as u64,
        };
        if cfg.echo && max_frame < cfg.max_frame {
            log::info!(
                "worker {}: echoed frames must fit the {} B send buffer: frames over {max_frame} B close with 1009 (raise --tx-buf)",
                cfg.index,
                x.tx_buf
            );
        }
        let core = ServerCore::new(core_cfg, cfg.max_conns, 0);
        Ok(Worker {
            t: Transport {
                stack,
                out: SpillPool::new(x.spill_buffers, spill_size),
                close_after_out: std::collections::HashSet::with_capacity(x.spill_buffers),
                doomed: Vec::new(),
                outbox: Vec::new(),
                slow_dropped: 0,
                log: RateLimitedLog::new(5),
                now_ms: 0,
            },
            spill: SpillPool::new(x.spill_buffers, spill_size),
            scratch: vec![0u8; x.rx_buf].into_boxed_slice(),
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
            core,
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
            self.t.now_ms = now_ms;
            let frames = self.t.stack.poll(clock::now(), &mut self.events);
            let mut events = std::mem::take(&mut self.events);
            for ev in events.drain(..) {
                self.event(ev, now_ms);
            }
            self.events = events;
            if now_ms >= next_tick {
                next_tick = now_ms + TICK_MS;
                self.tick(now_ms);
            }
            if Instant::now() >= next_control {
                next_control = Instant::now() + CONTROL_EVERY;
                self.control()?;
            }
            self.t.stack.flush(clock::now());
            self.send_outbox()?;
            if let Some(started) = self.broadcast_started.filter(|_| !self.t.stack.has_work()) {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                log::info!("worker {}: broadcast handed to the link in {ms:.1} ms", self.cfg.index);
                self.last_broadcast_tx_ms = Some(ms);
                self.broadcast_started = None;
            }
            if frames == 0 && !self.t.stack.has_work() {
                self.t.stack.link().wait(1);
            }
        }
        self.shutdown()
    }

    fn event(&mut self, ev: Event, now_ms: u64) {
        match ev {
            Event::Accepted(id) => {
                self.core.open(id.0, now_ms, &mut self.t);
                self.settle(now_ms);
                self.feed(id.0, now_ms);
            }
            Event::Readable(id) => self.feed(id.0, now_ms),
            Event::Writable(id) => {
                self.t.drain_out(id.0);
                self.feed(id.0, now_ms);
            }
            Event::Closed(id, reason) => {
                if reason == CloseReason::PeerClosed {
                    // What came before the FIN (a close frame, say) is still the peer's to say.
                    self.feed(id.0, now_ms);
                }
                if self.core.is_open(id.0) {
                    self.core.closed(id.0, now_ms, &mut self.t);
                    self.settle(now_ms);
                }
                self.spill.release(id.0);
                self.t.forget(id.0);
                if self.t.stack.is_owned(id) {
                    self.t.stack.close(id);
                }
            }
            Event::Connected(_) => {}
        }
    }

    /// Give the core what the connection has received, as far as it can take it.
    fn feed(&mut self, id: u32, now_ms: u64) {
        let cid = ConnId(id);
        loop {
            if !self.core.is_open(id) || !self.t.stack.is_owned(cid) {
                self.spill.release(id);
                return;
            }
            if self.spill.holds(id) {
                if !self.feed_spilled(id, now_ms) {
                    return;
                }
                continue;
            }
            let n = self.t.stack.peek(cid, &mut self.scratch);
            if n == 0 {
                return;
            }
            if self.t.out.holds(id) {
                // Output is backed up: read on once the peer has taken it (TCP pushes back).
                self.t.stack.want_write(cid);
                return;
            }
            // Whatever the core answers to these bytes (an echo, a pong, a close) is at most
            // their size; wait for the room rather than fail a connection that is just busy.
            if self.t.stack.write_space(cid) < n.min(self.x.tx_buf) {
                self.t.stack.want_write(cid);
                return;
            }
            let used = self.core.data(id, &mut self.scratch[..n], now_ms, &mut self.t);
            self.settle(now_ms);
            if !self.core.is_open(id) {
                return;
            }
            self.t.stack.discard(cid, used);
            if used == n {
                return;
            }
            if n < self.x.rx_buf {
                return; // an incomplete head or frame: the rest is on its way
            }
            // The receive buffer is full and still holds no whole head or frame: spill it.
            if !self.spill.take(id, &self.scratch[used..n]) {
                self.t.log.warn(
                    now_ms,
                    format_args!("conn {id}: no spill buffer free for a large head or frame: reset"),
                );
                self.t.stack.abort(cid);
                self.t.forget(id);
                self.core.closed(id, now_ms, &mut self.t);
                self.settle(now_ms);
                return;
            }
            self.t.stack.discard(cid, n - used);
        }
    }

    /// Move received bytes behind what the spill buffer holds and let the core parse it all.
    /// Returns whether to go on (the buffer emptied, or the core made progress on new bytes).
    fn feed_spilled(&mut self, id: u32, now_ms: u64) -> bool {
        let cid = ConnId(id);
        let Some((buf, len)) = self.spill.get(id) else {
            return false;
        };
        let got = self.t.stack.read(cid, &mut buf[*len..]);
        *len += got;
        let held = *len;
        if self.t.out.holds(id) || self.t.stack.write_space(cid) < held.min(self.x.tx_buf) {
            self.t.stack.want_write(cid);
            return false;
        }
        let used = self.core.data(id, &mut buf[..held], now_ms, &mut self.t);
        self.settle(now_ms);
        if !self.core.is_open(id) {
            self.spill.release(id);
            return false;
        }
        self.spill.consume(id, used);
        if !self.spill.holds(id) {
            return true; // emptied: back to parsing in the receive buffer
        }
        // Still incomplete: go on only if more bytes came and more are waiting.
        got > 0 && self.t.stack.readable(cid) > 0
    }

    /// Report connections reset during the last core call.
    fn settle(&mut self, now_ms: u64) {
        while let Some(id) = self.t.doomed.pop() {
            self.spill.release(id);
            self.t.forget(id);
            self.core.closed(id, now_ms, &mut self.t);
        }
    }

    fn tick(&mut self, now_ms: u64) {
        let expired_before = self.core.stats().expired;
        let started = Instant::now();
        self.core.tick(now_ms, &mut self.t);
        let expired = self.core.stats().expired;
        if expired > expired_before {
            self.expiry_busy_ns += started.elapsed().as_nanos() as u64;
        }
        self.recent_expiries.record(now_ms, expired);
        self.settle(now_ms);
    }

    fn control(&mut self) -> anyhow::Result<()> {
        if !self
            .control
            .fill(&mut self.control_in)
            .context("reading the control socket")?
        {
            log::info!("worker {}: supervisor went away; shutting down", self.cfg.index);
            self.stop = true;
        }
        while let Some(cmd) = self.control.next_command() {
            match cmd {
                Ok(cmd) => self.command(cmd)?,
                Err(e) => log::error!("worker {}: bad control message: {e}", self.cfg.index),
            }
        }
        Ok(())
    }

    fn command(&mut self, cmd: ToWorker) -> anyhow::Result<()> {
        let now = self.now_ms();
        let reply = match cmd {
            ToWorker::Config(_) => None,
            ToWorker::Broadcast { req, payload } => {
                let started = Instant::now();
                let fanout = self.core.broadcast(payload.as_bytes(), now, &mut self.t);
                let fanout_us = started.elapsed().as_micros() as u64;
                self.settle(now);
                self.broadcast_started = Some(started);
                Some(FromWorker::Broadcast {
                    req,
                    websockets: fanout.websockets,
                    polls: fanout.polls,
                    fanout_us,
                })
            }
            ToWorker::Push { req, hash, payload } => {
                let delivered = self.core.push_hash(hash, payload.as_bytes(), now, &mut self.t);
                self.settle(now);
                Some(FromWorker::Push { req, delivered })
            }
            ToWorker::Evict { hash } => {
                self.core.evict_device(hash, now, &mut self.t);
                self.settle(now);
                None
            }
            ToWorker::Stats { req } => Some(FromWorker::Stats {
                req,
                stats: Box::new(self.stats()),
            }),
            ToWorker::Shutdown => {
                self.stop = true;
                None
            }
        };
        self.send_outbox()?;
        if let Some(reply) = reply {
            send_line(&mut self.control_out, &reply).context("writing to the supervisor")?;
        }
        Ok(())
    }

    fn send_outbox(&mut self) -> anyhow::Result<()> {
        for msg in self.t.outbox.drain(..) {
            send_line(&mut self.control_out, &msg).context("writing to the supervisor")?;
        }
        Ok(())
    }

    fn stats(&self) -> WorkerStats {
        let stack = &self.t.stack;
        WorkerStats {
            index: self.cfg.index,
            pid: std::process::id(),
            core: self.core.stats().clone(),
            refused: stack.stats().syn_refused,
            slow_consumers_dropped: self.t.slow_dropped,
            pending_output_bytes: self.t.out.held_bytes() as u64,
            buffered_conns: self.spill.in_use() as u64,
            lingering: (stack.in_use() as u64).saturating_sub(self.core.stats().connections),
            expiry_busy_ns: self.expiry_busy_ns,
            expired_last_10s: self.recent_expiries.sum(),
            core_heap_bytes: self.core.heap_bytes() as u64,
            rss_bytes: crate::kernel::own_rss_bytes(),
            open_fds: 0,
            fd_limit: 0,
            xdp: Some(Box::new(XdpWorkerStats {
                queue: self.x.queue,
                stack: stack.stats(),
                link: stack.link_counters(),
                resident: stack.resident_memory(),
                umem_bytes: self.umem_bytes,
                spill_in_use: self.spill.in_use() as u64,
                spill_capacity: self.spill.capacity() as u64,
                spill_exhausted: self.spill.exhausted,
                out_spill_in_use: self.t.out.in_use() as u64,
                out_spill_exhausted: self.t.out.exhausted,
                last_broadcast_tx_ms: self.last_broadcast_tx_ms,
            })),
        }
    }

    /// Close every connection with 1001, let the stack deliver it for a while, and stop steering
    /// to our socket.
    fn shutdown(&mut self) -> anyhow::Result<()> {
        let now = self.now_ms();
        self.core.shutdown(now, &mut self.t);
        self.settle(now);
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while self.t.stack.in_use() > 0 && Instant::now() < deadline {
            let frames = self.t.stack.poll(clock::now(), &mut self.events);
            for ev in self.events.drain(..) {
                if let Event::Closed(id, _) | Event::Accepted(id) = ev {
                    if self.t.stack.is_owned(id) {
                        self.t.stack.close(id);
                    }
                }
            }
            self.t.stack.flush(clock::now());
            if frames == 0 && !self.t.stack.has_work() {
                self.t.stack.link().wait(1);
            }
        }
        if let Err(e) = self.xsks.unregister(self.x.queue) {
            log::warn!("worker {}: unregistering the AF_XDP socket: {e}", self.cfg.index);
        }
        log::info!(
            "worker {}: stopped ({} connections still closing at exit)",
            self.cfg.index,
            self.t.stack.in_use()
        );
        Ok(())
    }
}

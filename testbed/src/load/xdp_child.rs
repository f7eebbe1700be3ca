//! The load process on the userspace stack: every connection of the run in one process, over an
//! AF_XDP socket on the client's veth, with no file descriptor per connection and a port space
//! of its own (64,512 ports per source address). The XDP program on the veth steers everything
//! the server sends to our socket (client mode), so the client kernel never sees those segments.
//! `schedule.rs` decides when and `session.rs` speaks the protocol, as for the kernel-stack load
//! process; this file does the I/O on the stack.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use host::iface::{iface_ipv4, mac_of, neighbour_mac};
use host::monotonic_ns;
use stack::xdp_link::{XdpLink, XdpLinkConfig};
use stack::{clock, CloseReason, ConnId, ConnectError, Event, Link, Stack, StackConfig};
use xdp_prog::{Attachment, Steer};

use super::schedule::{Conns, Round, Schedule, Step, Timing};
use super::session::{self, ended, eof, fail, Fate, Peer, Proto, Shared, State};
use super::{emit, ChildFinal, ChildLine, ChildPlan, XdpClientCounters};

const TIMING: Timing = Timing {
    tick: Duration::from_millis(100),
    close_grace: Duration::from_secs(5),
    connect_burst: CONNECT_BURST,
    // Every connection is in this process: receive between bursts without sleeping.
    connect_poll: Duration::ZERO,
};
/// RX ring (and fill) frames of the client's AF_XDP socket: 256 MiB of UMEM. A kernel server
/// writes a broadcast to every socket at once, and with 32,768 frames the ring overflowed at
/// 100K connections (194,030 frames dropped over three broadcasts, each a retransmission).
const RX_FRAMES: u32 = 131_072;
/// TX ring frames: the ACKs of such a burst leave as fast as it comes (with 4,096, 42,465 ACKs
/// found no free frame at 100K against a kernel server).
const TX_FRAMES: u32 = 65_536;
/// Frames taken per poll, and polls per loop round at most (the whole RX ring).
const RX_BATCH: usize = 256;
const RX_ROUNDS: usize = RX_FRAMES as usize / RX_BATCH;
/// Connections opened per loop round at most, so receiving never starves behind connecting.
const CONNECT_BURST: usize = 256;

/// One connection seen by the session code: its protocol state and the stack to send on.
struct XdpPeer<'a> {
    p: &'a mut Proto,
    stack: &'a mut Stack<XdpLink>,
    id: ConnId,
}

impl Peer for XdpPeer<'_> {
    fn proto(&mut self) -> &mut Proto {
        self.p
    }

    fn send(&mut self, bytes: &[u8]) -> Fate {
        // Client messages are small; one that does not fit the send buffer fails the connection.
        if self.stack.write_space(self.id) < bytes.len() {
            return Fate::Drop;
        }
        self.stack.write(self.id, bytes);
        Fate::Keep
    }

    /// A message larger than the receive buffer is read in pieces.
    fn room(&self) -> usize {
        self.stack.rx_capacity()
    }
}

pub fn run(plan: ChildPlan) -> anyhow::Result<()> {
    let x = plan.xdp.clone().context("not an xdp load process")?;
    let SocketAddr::V4(server) = plan.server else {
        bail!("--stack xdp connects to IPv4 servers only");
    };
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop))?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stop))?;
    let sources: Vec<Ipv4Addr> = if plan.sources.is_empty() {
        iface_ipv4(&x.iface).into_iter().map(|(a, _)| a).collect()
    } else {
        plan.sources.clone()
    };
    let Some(&first_source) = sources.first() else {
        bail!("--iface {} has no IPv4 address to connect from (pass --src)", x.iface);
    };
    let prefix_len = iface_ipv4(&x.iface)
        .iter()
        .find(|(a, _)| *a == first_source)
        .map_or(32, |(_, p)| *p);
    let server_mac = match x.server_mac {
        Some(mac) => mac,
        None => neighbour_mac(*server.ip()).context("finding the server's MAC (or pass --server-mac)")?,
    };
    let mut steering = Attachment::prepare(&x.iface, x.xdp_mode, Steer::From(server, sources.clone()), None, 1)?;
    // A broadcast arrives as one burst of a segment per connection, copied into our RX ring by
    // the server's sendto: a deep ring absorbs it, where a lost segment costs a 1 s
    // retransmission (smoltcp's minimum RTO, as RFC 6298's). The client's memory is not the
    // budget under test.
    let link_cfg = XdpLinkConfig {
        rx_frames: RX_FRAMES,
        tx_frames: TX_FRAMES,
        ..XdpLinkConfig::new(&x.iface, 0)
    };
    let link = XdpLink::open(&link_cfg).with_context(|| format!("binding an AF_XDP socket to {} queue 0", x.iface))?;
    let xsks = xdp_prog::XskMap::open(steering.xsks_map_id()?)?;
    xsks.register(0, link.fd())?;
    // Room beyond the connections for attempts that failed and still hold a slot until their
    // handshake times out (TIME-WAIT holds none). Each slot costs its socket whether used or
    // not: 3% (300,000 at ten million) rather than an eighth.
    let capacity = plan.count as usize + (plan.count as usize / 32).max(64);
    let cfg = StackConfig {
        max_conns: capacity,
        rx_buf: x.rx_buf,
        tx_buf: x.tx_buf,
        addr: first_source,
        prefix_len,
        source_addrs: sources,
        our_mac: mac_of(&x.iface).with_context(|| format!("reading the MAC of {}", x.iface))?,
        next_hop_mac: Some(server_mac),
        rx_batch: RX_BATCH,
        ..StackConfig::default()
    };
    let mut stack = Stack::new(cfg, link, clock::now()).context("building the userspace stack")?;
    let result = drive(&plan, server, &mut stack, &stop);
    let _ = xsks.unregister(0);
    steering.finish();
    result
}

/// Every connection of the run: protocol state by stack slot, and the stack they live on.
struct Client<'a> {
    stack: &'a mut Stack<XdpLink>,
    server: SocketAddrV4,
    conns: Vec<Option<Proto>>,
    live: usize,
    sh: Shared,
    scratch: Vec<u8>,
    events: Vec<Event>,
    /// The last receive poll found nothing, so the next I/O round may sleep.
    idle: bool,
    /// The stack's resident memory when it was largest (`XdpClientCounters::memory_peak`).
    memory_peak: stack::MemoryReport,
}

impl Conns for Client<'_> {
    fn live(&self) -> usize {
        self.live
    }

    fn handshaking(&self) -> usize {
        self.sh.handshaking
    }

    fn open(&self) -> u64 {
        self.sh.c.open
    }

    fn reached_expected(&self) -> u64 {
        self.sh.c.reached_expected
    }

    fn state(&self, slot: usize, n: u64) -> Option<State> {
        let p = self.conns.get(slot)?.as_ref()?;
        (p.n == n).then_some(p.state)
    }
}

/// The load loop: the schedule says what to do, the stack does the I/O.
fn drive(plan: &ChildPlan, server: SocketAddrV4, stack: &mut Stack<XdpLink>, stop: &AtomicBool) -> anyhow::Result<()> {
    let mut sched = Schedule::new(plan, TIMING, monotonic_ns());
    let mut c = Client {
        conns: vec![None; stack.capacity()],
        scratch: vec![0u8; stack.rx_capacity()],
        stack,
        server,
        live: 0,
        sh: Shared::new(plan.clone()),
        events: Vec::with_capacity(1024),
        idle: false,
        memory_peak: stack::MemoryReport::default(),
    };
    let mut stdout = std::io::stdout().lock();
    loop {
        if stop.load(Ordering::Relaxed) {
            sched.stop();
        }
        match sched.next(monotonic_ns(), &c) {
            Step::Wait(wait) => c.io(wait),
            Step::Connect(n) => c.connect(n, &mut sched),
            Step::TimeOut { slot, cause } => c.time_out(slot, cause),
            Step::Periodic(round) => c.periodic(round),
            Step::BeginClose(_) => c.begin_close(),
            Step::Progress => {
                c.sh.c.done_connecting = sched.done_connecting();
                // Not during the ramp: a reading over ten million slots is not free, and the
                // largest moment is a broadcast being read, after it.
                if c.sh.c.done_connecting {
                    c.note_memory();
                }
                emit(&mut stdout, &ChildLine::Progress(Box::new(c.sh.c.clone())))?;
            }
            Step::Finish => break,
        }
    }
    c.sh.c.done_connecting = sched.done_connecting();
    let last = c.finish();
    emit(&mut stdout, &ChildLine::Final(Box::new(last)))
}

impl Client<'_> {
    fn connect(&mut self, n: u64, sched: &mut Schedule) {
        session::attempt(&mut self.sh);
        match self.stack.connect(self.server) {
            Ok(id) => {
                let p = Proto::new(n);
                sched.opened(id.0 as usize, n, p.since_ns);
                self.conns[id.0 as usize] = Some(p);
                self.sh.handshaking += 1;
                self.live += 1;
            }
            Err(ConnectError::NoCapacity(_)) => fail(&mut self.sh.c, "no_capacity"),
            Err(ConnectError::NoSourcePort(_)) => fail(&mut self.sh.c, "no_free_port"),
            Err(_) => fail(&mut self.sh.c, "other_error"),
        }
    }

    fn time_out(&mut self, slot: usize, cause: &str) {
        if let Some(p) = self.conns.get_mut(slot).and_then(Option::as_mut) {
            session::timed_out(p, &mut self.sh, cause);
        }
        self.drop_conn(ConnId(slot as u32), "timeout", true);
    }

    /// Pings and data rounds of this tick.
    fn periodic(&mut self, round: Round) {
        for (slot, is_ping) in round.slots(self.conns.len()) {
            let id = ConnId(slot as u32);
            let Some(p) = self.conns[slot].as_mut() else { continue };
            let stack = &mut *self.stack;
            // A frame that does not fit now is skipped this round (the connection is busy).
            let _ = session::periodic_frame(&mut XdpPeer { p, stack, id }, &mut self.sh, is_ping);
        }
    }

    /// Start the close handshake on every open connection; reset the others.
    fn begin_close(&mut self) {
        self.sh.closing = true;
        for slot in 0..self.conns.len() {
            let id = ConnId(slot as u32);
            let Some(p) = self.conns[slot].as_mut() else { continue };
            let stack = &mut *self.stack;
            if session::begin_close(&mut XdpPeer { p, stack, id }, &mut self.sh) == Fate::Drop {
                self.drop_conn(id, "closing", true);
            }
        }
    }

    /// Send what the steps queued, sleep a little if nothing is going on, then receive.
    fn io(&mut self, wait: Duration) {
        self.stack.flush(clock::now());
        if self.idle && !wait.is_zero() && !self.stack.has_work() {
            self.stack.link().wait(1);
        }
        let mut frames = 0;
        for _ in 0..RX_ROUNDS {
            let n = self.stack.poll(clock::now(), &mut self.events);
            frames += n;
            if n < RX_BATCH {
                break;
            }
        }
        self.idle = frames == 0;
        let mut events = std::mem::take(&mut self.events);
        for ev in events.drain(..) {
            self.event(ev);
        }
        self.events = events;
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Connected(id) => {
                let Some(p) = self.conns.get_mut(id.0 as usize).and_then(Option::as_mut) else {
                    return;
                };
                let stack = &mut *self.stack;
                if session::connected(&mut XdpPeer { p, stack, id }, &mut self.sh) == Fate::Drop {
                    self.drop_conn(id, "write_error", true);
                }
            }
            Event::Readable(id) => {
                if self.receive(id) == Fate::Drop {
                    self.drop_conn(id, "error", false);
                }
            }
            Event::Closed(id, reason) => {
                let how = if reason == CloseReason::PeerClosed {
                    // What arrived before the FIN still counts.
                    let _ = self.receive(id);
                    "eof"
                } else {
                    "reset"
                };
                if let Some(p) = self.conns.get_mut(id.0 as usize).and_then(Option::as_mut) {
                    let _ = eof(p, &mut self.sh, how);
                }
                self.drop_conn(id, "eof", false);
            }
            Event::Accepted(id) => self.stack.abort(id), // we listen on nothing
            Event::Writable(_) => {}
        }
    }

    /// Let the session read what arrived on `id` (in place, copied out of the receive ring).
    fn receive(&mut self, id: ConnId) -> Fate {
        loop {
            let Some(p) = self.conns.get_mut(id.0 as usize).and_then(Option::as_mut) else {
                return Fate::Keep;
            };
            let n = self.stack.peek(id, &mut self.scratch);
            if n == 0 {
                return Fate::Keep;
            }
            self.sh.c.bytes_in += n as u64;
            let stack = &mut *self.stack;
            let (fate, used) = session::consume(&mut XdpPeer { p, stack, id }, &mut self.sh, &mut self.scratch[..n]);
            if fate == Fate::Drop {
                return Fate::Drop;
            }
            self.stack.discard(id, used);
            // Not counted twice: what stays is presented again with more behind it.
            self.sh.c.bytes_in -= (n - used) as u64;
            if used == 0 {
                if n == self.scratch.len() {
                    // A server message longer than our receive buffer can never complete here.
                    if let Some(p) = self.conns.get_mut(id.0 as usize).and_then(Option::as_mut) {
                        ended(p, &mut self.sh, "message_over_rx_buf");
                    }
                    return Fate::Drop;
                }
                return Fate::Keep;
            }
        }
    }

    /// Forget a connection: count it if it was still open, and close (or reset) it on the stack.
    fn drop_conn(&mut self, id: ConnId, how: &str, reset: bool) {
        let Some(mut p) = self.conns.get_mut(id.0 as usize).and_then(Option::take) else {
            return;
        };
        ended(&mut p, &mut self.sh, how);
        self.live -= 1;
        if self.stack.is_owned(id) {
            if reset {
                self.stack.abort(id);
            } else {
                self.stack.close(id);
            }
        }
    }

    /// Keep the stack's resident memory if it is the largest seen (mincore over its structures:
    /// a few milliseconds at ten million connections, every progress line).
    fn note_memory(&mut self) {
        let now = self.stack.resident_memory();
        if now.total() > self.memory_peak.total() {
            self.memory_peak = now;
        }
    }

    /// Reset whatever did not finish closing in the grace time, so the server is not left
    /// holding it, and make the final line.
    fn finish(mut self) -> ChildFinal {
        self.note_memory();
        for (slot, conn) in self.conns.iter_mut().enumerate() {
            if conn.take().is_some() {
                self.stack.abort(ConnId(slot as u32));
            }
        }
        self.stack.flush(clock::now());
        let mut last = session::final_line(&self.sh);
        last.xdp = Some(XdpClientCounters {
            link: self.stack.link_counters(),
            stack: self.stack.stats(),
            memory_peak: self.memory_peak,
            umem_bytes: self.stack.link().umem_bytes() as u64,
        });
        last
    }
}

//! The load process on the userspace stack: every connection of the run in one process, over an
//! AF_XDP socket on the client's veth, with no file descriptor per connection and a port space
//! of its own (64,512 ports per source address). The XDP program on the veth steers everything
//! the server sends to our socket (client mode), so the client kernel never sees those segments.
//! The protocol is `session.rs`, the same as the kernel-stack load process.

use std::collections::VecDeque;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use host::iface::{iface_ipv4, mac_of, neighbour_mac};
use host::monotonic_ns;
use stack::xdp_link::{XdpLink, XdpLinkConfig};
use stack::{clock, CloseReason, ConnId, ConnectError, Event, Link, Stack, StackConfig};
use xdp_prog::{Attachment, Steer};

use super::session::{self, ended, eof, fail, set_state, Fate, Peer, Proto, Shared, State};
use super::{ChildLine, ChildPlan};

const TICK: Duration = Duration::from_millis(100);
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// How long closing may take before the process reports and exits anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// RX ring (and fill) frames of the client's AF_XDP socket: 64 MiB of UMEM.
const RX_FRAMES: u32 = 32_768;
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
    let mut steering = Attachment::prepare(
        &x.iface,
        match x.xdp_mode.as_str() {
            "native" => xdp_prog::Mode::Native,
            "generic" => xdp_prog::Mode::Generic,
            _ => xdp_prog::Mode::Auto,
        },
        Steer::From(server, sources.clone()),
        None,
        1,
    )?;
    // A broadcast arrives as one burst of a segment per connection, copied into our RX ring by
    // the server's sendto: a deep ring absorbs it, where a lost segment costs a 1 s
    // retransmission (smoltcp's minimum RTO, as RFC 6298's). The client's memory is not the
    // budget under test.
    let link_cfg = XdpLinkConfig {
        rx_frames: RX_FRAMES,
        ..XdpLinkConfig::new(&x.iface, 0)
    };
    let link = XdpLink::open(&link_cfg).with_context(|| format!("binding an AF_XDP socket to {} queue 0", x.iface))?;
    let xsks = xdp_prog::XskMap::open(steering.xsks_map_id()?)?;
    xsks.register(0, link.fd())?;
    // Closing connections wait in TIME-WAIT for a while: leave room for those of failed attempts.
    let capacity = plan.count as usize + (plan.count as usize / 8).max(64);
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

fn emit(out: &mut impl Write, line: &ChildLine) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// The load loop: connect within the rate and concurrency, hold, measure, close.
fn drive(plan: &ChildPlan, server: SocketAddrV4, stack: &mut Stack<XdpLink>, stop: &AtomicBool) -> anyhow::Result<()> {
    let mut sh = Shared::new(plan.clone());
    let mut conns: Vec<Option<Proto>> = vec![None; stack.capacity()];
    let mut live = 0usize;
    let mut inflight: VecDeque<(u32, u64, u64)> = VecDeque::new();
    let mut scratch = vec![0u8; stack.rx_capacity()];
    let mut events = Vec::with_capacity(1024);
    let start = Instant::now();
    let end_n = plan.first + plan.count;
    let mut next_n = plan.first;
    let mut hold_started: Option<Instant> = None;
    let mut closing_started: Option<Instant> = None;
    let mut next_tick = start;
    let mut tick_no: u64 = 0;
    let mut next_progress = start;
    let mut stdout = std::io::stdout().lock();
    let connect_timeout_ns = plan.connect_timeout_ms * 1_000_000;
    let duration = Duration::from_millis(plan.duration_ms);

    loop {
        let now = Instant::now();
        if closing_started.is_none() && next_n < end_n {
            let allowed = if plan.rate > 0.0 {
                ((now - start).as_secs_f64() * plan.rate).floor() as u64 + 1
            } else {
                u64::MAX
            };
            let mut burst = 0;
            while next_n < end_n
                && sh.handshaking < plan.concurrency
                && next_n - plan.first < allowed
                && burst < CONNECT_BURST
            {
                let n = next_n;
                next_n += 1;
                burst += 1;
                sh.c.attempted += 1;
                if sh.c.first_attempt_ns == 0 {
                    sh.c.first_attempt_ns = monotonic_ns();
                }
                match stack.connect(server) {
                    Ok(id) => {
                        let p = Proto::new(n);
                        inflight.push_back((id.0, n, p.since_ns + connect_timeout_ns));
                        conns[id.0 as usize] = Some(p);
                        sh.handshaking += 1;
                        live += 1;
                    }
                    Err(ConnectError::NoCapacity(_)) => fail(&mut sh.c, "no_capacity"),
                    Err(ConnectError::NoSourcePort(_)) => fail(&mut sh.c, "no_free_port"),
                    Err(_) => fail(&mut sh.c, "other_error"),
                }
            }
        }
        if !sh.c.done_connecting && next_n >= end_n && inflight.is_empty() {
            sh.c.done_connecting = true;
            hold_started = Some(now);
        }

        let mut frames = 0;
        for _ in 0..RX_ROUNDS {
            let n = stack.poll(clock::now(), &mut events);
            frames += n;
            if n < RX_BATCH {
                break;
            }
        }
        for ev in events.drain(..) {
            match ev {
                Event::Connected(id) => {
                    let Some(p) = conns[id.0 as usize].as_mut() else {
                        continue;
                    };
                    let fate = session::connected(&mut XdpPeer { p, stack, id }, &mut sh);
                    if fate == Fate::Drop {
                        drop_conn(&mut conns, &mut live, stack, id, &mut sh, "write_error", true);
                    }
                }
                Event::Readable(id) => {
                    if receive(&mut conns, stack, id, &mut sh, &mut scratch) == Fate::Drop {
                        drop_conn(&mut conns, &mut live, stack, id, &mut sh, "error", false);
                    }
                }
                Event::Closed(id, reason) => {
                    if reason == CloseReason::PeerClosed {
                        let _ = receive(&mut conns, stack, id, &mut sh, &mut scratch);
                    }
                    if let Some(p) = conns[id.0 as usize].as_mut() {
                        let how = if reason == CloseReason::PeerClosed {
                            "eof"
                        } else {
                            "reset"
                        };
                        let _ = eof(p, &mut sh, how);
                    }
                    drop_conn(&mut conns, &mut live, stack, id, &mut sh, "eof", false);
                }
                Event::Accepted(id) => stack.abort(id), // we listen on nothing
                Event::Writable(_) => {}
            }
        }

        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + TICK;
            tick_no += 1;
            let now_ns = monotonic_ns();
            while let Some(&(slot, n, deadline)) = inflight.front() {
                let pending = conns[slot as usize].as_ref().filter(|p| p.n == n).map(|p| p.state);
                match pending {
                    Some(state @ (State::Connecting | State::Handshake)) => {
                        if deadline > now_ns {
                            break;
                        }
                        fail(
                            &mut sh.c,
                            if state == State::Connecting {
                                "connect_timeout"
                            } else {
                                "handshake_timeout"
                            },
                        );
                        if let Some(p) = conns[slot as usize].as_mut() {
                            set_state(p, State::Done, &mut sh);
                        }
                        drop_conn(&mut conns, &mut live, stack, ConnId(slot), &mut sh, "timeout", true);
                        inflight.pop_front();
                    }
                    _ => {
                        inflight.pop_front();
                    }
                }
            }
            if closing_started.is_none() {
                periodic(&mut conns, stack, &mut sh, tick_no);
            }
        }

        let stop_now = stop.load(Ordering::Relaxed);
        if closing_started.is_none() {
            let held = hold_started.is_some_and(|t| t.elapsed() >= Duration::from_millis(plan.hold_ms));
            let got_all = plan.expect_broadcasts > 0 && sh.c.done_connecting && sh.c.reached_expected >= sh.c.open;
            if held || got_all || stop_now || start.elapsed() >= duration {
                closing_started = Some(Instant::now());
                sh.closing = true;
                for slot in 0..conns.len() {
                    let id = ConnId(slot as u32);
                    let Some(p) = conns[slot].as_mut() else { continue };
                    if session::begin_close(&mut XdpPeer { p, stack, id }, &mut sh) == Fate::Drop {
                        drop_conn(&mut conns, &mut live, stack, id, &mut sh, "closing", true);
                    }
                }
            }
        }
        stack.flush(clock::now());
        if let Some(t) = closing_started {
            if live == 0 || t.elapsed() >= CLOSE_GRACE {
                break;
            }
        }
        if Instant::now() >= next_progress {
            next_progress += PROGRESS_EVERY;
            emit(&mut stdout, &ChildLine::Progress(Box::new(sh.c.clone())))?;
        }
        let connecting = closing_started.is_none() && next_n < end_n;
        if frames == 0 && !stack.has_work() && !connecting {
            stack.link().wait(1);
        }
    }
    // Whatever did not finish closing in the grace time is reset, so the server is not left
    // holding it.
    for (slot, conn) in conns.iter_mut().enumerate() {
        if conn.take().is_some() {
            stack.abort(ConnId(slot as u32));
        }
    }
    stack.flush(clock::now());
    let mut last = session::final_line(&sh);
    last.xdp = Some(super::XdpClientCounters {
        link: stack.link_counters(),
        stack: stack.stats(),
    });
    emit(&mut stdout, &ChildLine::Final(Box::new(last)))?;
    Ok(())
}

/// Let the session read what arrived on `id` (in place, copied out of the receive ring).
fn receive(
    conns: &mut [Option<Proto>],
    stack: &mut Stack<XdpLink>,
    id: ConnId,
    sh: &mut Shared,
    scratch: &mut [u8],
) -> Fate {
    loop {
        let Some(p) = conns[id.0 as usize].as_mut() else {
            return Fate::Keep;
        };
        let n = stack.peek(id, scratch);
        if n == 0 {
            return Fate::Keep;
        }
        sh.c.bytes_in += n as u64;
        let (fate, used) = session::consume(&mut XdpPeer { p, stack, id }, sh, &mut scratch[..n]);
        if fate == Fate::Drop {
            return Fate::Drop;
        }
        stack.discard(id, used);
        // Not counted twice: what stays is presented again with more behind it.
        sh.c.bytes_in -= (n - used) as u64;
        if used == 0 {
            if n == scratch.len() {
                // A server message longer than our receive buffer can never complete here.
                if let Some(p) = conns[id.0 as usize].as_mut() {
                    ended(p, sh, "message_over_rx_buf");
                }
                return Fate::Drop;
            }
            return Fate::Keep;
        }
    }
}

/// Forget a connection: count it if it was still open, and close (or reset) it on the stack.
fn drop_conn(
    conns: &mut [Option<Proto>],
    live: &mut usize,
    stack: &mut Stack<XdpLink>,
    id: ConnId,
    sh: &mut Shared,
    how: &str,
    reset: bool,
) {
    let Some(mut p) = conns[id.0 as usize].take() else {
        return;
    };
    ended(&mut p, sh, how);
    *live -= 1;
    if stack.is_owned(id) {
        if reset {
            stack.abort(id);
        } else {
            stack.close(id);
        }
    }
}

/// Pings and data rounds, spread evenly over the ticks (`session::periodic_slots`).
fn periodic(conns: &mut [Option<Proto>], stack: &mut Stack<XdpLink>, sh: &mut Shared, tick_no: u64) {
    for (slot, is_ping) in session::periodic_slots(&sh.plan, TICK.as_millis() as u64, tick_no, conns.len()) {
        let id = ConnId(slot as u32);
        let Some(p) = conns[slot].as_mut() else { continue };
        // A frame that does not fit now is skipped this round (the connection is busy).
        let _ = session::periodic_frame(&mut XdpPeer { p, stack, id }, sh, is_ping);
    }
}

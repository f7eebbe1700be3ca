//! A minimal application on the stack: echo every byte back, with no buffer of its own (it reads
//! only as much as fits in the send buffer, so TCP flow control does the rest). Used by the veth
//! tests and the benchmarks; the WebSocket server is the real application.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::clock;
use crate::link::Link;
use crate::stack::{ConnId, Event, Stack};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EchoStats {
    pub accepted: u64,
    pub closed: u64,
    pub bytes: u64,
}

/// Handle `events` for an echo server; returns nothing, counts into `stats`. A connection whose
/// peer has closed is marked in its user data and closed once everything it sent is echoed.
pub fn handle<L: Link>(stack: &mut Stack<L>, events: &[Event], stats: &mut EchoStats) {
    for ev in events {
        match *ev {
            Event::Accepted(_) => stats.accepted += 1,
            Event::Readable(id) | Event::Writable(id) => {
                stats.bytes += echo(stack, id);
                finish_if_done(stack, id, stats);
            }
            Event::Closed(id, _) => {
                stack.set_user(id, PEER_CLOSED);
                stats.bytes += echo(stack, id);
                finish_if_done(stack, id, stats);
            }
            Event::Connected(_) => {}
        }
    }
}

/// User data of a connection whose peer has closed.
const PEER_CLOSED: u32 = 1;

fn finish_if_done<L: Link>(stack: &mut Stack<L>, id: ConnId, stats: &mut EchoStats) {
    if stack.user(id) == Some(PEER_CLOSED) && stack.readable(id) == 0 {
        stack.close(id);
        stats.closed += 1;
    }
}

/// Run an echo server on `stack` on the real clock until `stop` is set: receive, answer, send,
/// and sleep in the link (at most 1 ms, the timer wheel's tick) when there is nothing to do.
pub fn serve<L: Link>(stack: &mut Stack<L>, stop: &AtomicBool) -> EchoStats {
    let (mut events, mut stats) = (Vec::new(), EchoStats::default());
    while !stop.load(Ordering::Relaxed) {
        let now = clock::now();
        events.clear();
        let frames = stack.poll(now, &mut events);
        handle(stack, &events, &mut stats);
        stack.flush(now);
        if frames == 0 && !stack.has_work() {
            stack.link().wait(1);
        }
    }
    stats
}

/// Move what fits from the receive buffer to the send buffer.
fn echo<L: Link>(stack: &mut Stack<L>, id: ConnId) -> u64 {
    let mut total = 0;
    let mut chunk = [0u8; 2048];
    loop {
        let room = stack.write_space(id).min(chunk.len());
        if room == 0 {
            if stack.readable(id) > 0 {
                // Come back when the peer has taken some of what we sent.
                stack.want_write(id);
            }
            break;
        }
        let n = stack.read(id, &mut chunk[..room]);
        if n == 0 {
            break;
        }
        let w = stack.write(id, &chunk[..n]);
        debug_assert_eq!(w, n, "write_space said it fits");
        total += w as u64;
    }
    total
}

//! The worker's kernel sockets as the core's [`Io`]: a flat table indexed by file descriptor (no
//! hash map; 24 bytes a slot). User-space buffers exist only while needed (output the kernel would
//! not take yet, or an incomplete frame), so an idle connection costs its slot, the core's 32 bytes
//! and the kernel's socket.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::control::Outbox;
use crate::core::ratelog::RateLimitedLog;
use crate::core::{ConnId, Io};
use crate::io::Transport;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SlotState {
    Free,
    /// The core owns the connection.
    Live,
    /// The core closed it: flush what is queued, send FIN, read until the peer's FIN or `LINGER`.
    Closing,
    /// The transport failed (reset, slow consumer) while the core still owns it: report it to the
    /// core as closed right after the current core call.
    Doomed,
}

/// Per-connection transport state, in a table indexed by fd: 24 bytes.
pub(super) struct Slot {
    /// 4 bytes: the socket (an fd; `None` uses the fd's niche).
    pub(super) stream: Option<TcpStream>,
    /// 8 bytes: buffers, allocated only while output is pending or a frame is incomplete.
    pub(super) bufs: Option<Box<Bufs>>,
    /// 4 bytes: incarnation of this fd, so a linger deadline never hits a later connection.
    pub(super) epoch: u32,
    pub(super) state: SlotState,
    /// Whether epoll is also watching for writability (only while output is pending).
    pub(super) writable: bool,
}

#[derive(Default)]
pub(super) struct Bufs {
    /// Output the kernel's socket buffer did not take yet.
    pub(super) out: Vec<u8>,
    /// Received bytes the core did not consume yet (an incomplete request head or frame).
    pub(super) inp: Vec<u8>,
}

impl Slot {
    pub(super) const FREE: Slot = Slot {
        stream: None,
        bufs: None,
        epoch: 0,
        state: SlotState::Free,
        writable: false,
    };
}

/// The worker's sockets, as the core's [`Io`].
pub struct Sockets {
    pub(super) slots: Vec<Slot>,
    pub(super) registry: Registry,
    pub(super) max_pending: usize,
    pub(super) live: usize,
    /// Failed while the core owned them; reported to the core after the current call.
    pub(super) doomed: Vec<ConnId>,
    pub(super) lingering: VecDeque<(ConnId, u32, Instant)>,
    /// How long a closed connection may linger (`LINGER`; tests shorten it).
    pub(super) linger: Duration,
    /// Messages for the supervisor produced inside core calls (device claims).
    pub(super) outbox: Outbox,
    pub(super) refused: u64,
    pub(super) slow_dropped: u64,
    pub(super) log: RateLimitedLog,
    /// The time of the current round (ms), for log rate limits.
    pub(super) now_ms: u64,
}

impl Sockets {
    pub(super) fn doom(&mut self, id: ConnId) {
        let slot = &mut self.slots[id as usize];
        if slot.state == SlotState::Live {
            slot.state = SlotState::Doomed;
            self.doomed.push(id);
        } else if slot.state == SlotState::Closing {
            self.drop_conn(id);
        }
    }

    /// Close the socket and free the slot.
    pub(super) fn drop_conn(&mut self, id: ConnId) {
        let slot = &mut self.slots[id as usize];
        if let Some(mut stream) = slot.stream.take() {
            // Deregistering cannot fail for a registered socket; closing the fd removes it anyway.
            let _ = self.registry.deregister(&mut stream);
            self.live -= 1;
        }
        slot.bufs = None;
        slot.state = SlotState::Free;
        slot.writable = false;
    }

    pub(super) fn set_writable(&mut self, id: ConnId, on: bool) {
        let slot = &mut self.slots[id as usize];
        if slot.writable == on {
            return;
        }
        let Some(stream) = slot.stream.as_mut() else {
            return;
        };
        let interest = if on {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if self.registry.reregister(stream, Token(id as usize), interest).is_ok() {
            slot.writable = on;
        }
    }

    /// Output is flushed: send FIN, then wait for the peer's FIN (bounded by the linger deadline
    /// set when the core closed it).
    fn finish(&mut self, id: ConnId) {
        let slot = &mut self.slots[id as usize];
        if let Some(stream) = slot.stream.as_ref() {
            if stream.shutdown(Shutdown::Write).is_err() {
                self.drop_conn(id);
                return;
            }
        }
        slot.bufs = None;
    }

    /// Write queued output; a connection that fails is doomed (or dropped, if closing).
    pub(super) fn flush(&mut self, id: ConnId) {
        let slot = &mut self.slots[id as usize];
        let (Some(stream), Some(bufs)) = (slot.stream.as_mut(), slot.bufs.as_mut()) else {
            return;
        };
        let mut written = 0;
        let failed = loop {
            if written == bufs.out.len() {
                break false;
            }
            match stream.write(&bufs.out[written..]) {
                Ok(0) => break true,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        bufs.out.drain(..written);
        let drained = bufs.out.is_empty();
        if bufs.out.is_empty() && bufs.inp.is_empty() {
            slot.bufs = None;
        }
        if failed {
            self.doom(id);
        } else if drained {
            self.set_writable(id, false);
            if self.slots[id as usize].state == SlotState::Closing {
                self.finish(id);
            }
        }
    }

    /// Keep `bytes` as the start of the connection's unconsumed input.
    pub(super) fn keep_input(&mut self, id: ConnId, bytes: &[u8]) {
        let slot = &mut self.slots[id as usize];
        if slot.state != SlotState::Live || bytes.is_empty() {
            return;
        }
        slot.bufs.get_or_insert_with(Box::default).inp.extend_from_slice(bytes);
    }
}

impl Io for Sockets {
    fn send(&mut self, id: ConnId, parts: &[&[u8]]) {
        let max_pending = self.max_pending;
        let slot = &mut self.slots[id as usize];
        if slot.state != SlotState::Live {
            return;
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if let Some(bufs) = slot.bufs.as_mut().filter(|b| !b.out.is_empty()) {
            if bufs.out.len() + total > max_pending {
                self.slow_dropped += 1;
                self.doom(id);
            } else {
                parts.iter().for_each(|p| bufs.out.extend_from_slice(p));
            }
            return;
        }
        let Some(stream) = slot.stream.as_mut() else {
            return;
        };
        let mut slices = [IoSlice::new(&[]); 4];
        let n_parts = parts.len().min(slices.len());
        for (s, p) in slices.iter_mut().zip(parts) {
            *s = IoSlice::new(p);
        }
        let sent = match stream.write_vectored(&slices[..n_parts]) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => 0,
            Err(_) => {
                self.doom(id);
                return;
            }
        };
        if sent == total && parts.len() <= slices.len() {
            return;
        }
        // Queue whatever the kernel did not take.
        let bufs = slot.bufs.get_or_insert_with(Box::default);
        let mut skip = sent;
        for p in parts {
            let from = skip.min(p.len());
            bufs.out.extend_from_slice(&p[from..]);
            skip -= from;
        }
        self.set_writable(id, true);
    }

    fn close(&mut self, id: ConnId) {
        let slot = &mut self.slots[id as usize];
        match slot.state {
            SlotState::Live => {
                slot.state = SlotState::Closing;
                // Whatever happens next (a peer that never reads would keep the output pending
                // forever), the slot is dropped LINGER after this.
                self.lingering.push_back((id, slot.epoch, Instant::now() + self.linger));
                if slot.bufs.as_ref().is_some_and(|b| !b.out.is_empty()) {
                    self.set_writable(id, true);
                } else {
                    self.finish(id);
                }
            }
            // Already failed: the pending report to the core finds it forgotten and ignores it.
            SlotState::Doomed | SlotState::Closing | SlotState::Free => {}
        }
    }

    fn device_claimed(&mut self, hash: u64) {
        self.outbox.device_claimed(hash);
    }

    fn device_released(&mut self, hash: u64) {
        self.outbox.device_released(hash);
    }
}

impl Transport for Sockets {
    fn take_failed(&mut self) -> Option<ConnId> {
        self.doomed.pop()
    }

    fn release_failed(&mut self, id: ConnId) {
        self.drop_conn(id);
    }

    fn outbox(&mut self) -> &mut Outbox {
        &mut self.outbox
    }
}

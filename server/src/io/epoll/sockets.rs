//! The worker's kernel sockets as the core's [`Io`]: a flat table indexed by file descriptor (no
//! hash map; 24 bytes a slot). A write goes straight from the core's message log into the kernel's
//! socket buffer; what the kernel does not take stays in the log (never copied per connection),
//! and EPOLLOUT says when to go on. A user-space buffer exists only while a request head or frame
//! is incomplete, so an idle connection costs its slot, the core's 32 bytes and the kernel's
//! socket.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
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
    /// The core closed it: FIN sent, read until the peer's FIN or `LINGER`.
    Closing,
    /// The transport failed (a reset, a write error) while the core still owns it: report it to
    /// the core as closed right after the current core call.
    Doomed,
}

/// Per-connection transport state, in a table indexed by fd: 24 bytes.
pub(super) struct Slot {
    /// 4 bytes: the socket (an fd; `None` uses the fd's niche).
    pub(super) stream: Option<TcpStream>,
    /// 8 bytes: a buffer, allocated only while a request head or frame is incomplete.
    pub(super) bufs: Option<Box<Bufs>>,
    /// 4 bytes: incarnation of this fd, so a linger deadline never hits a later connection.
    pub(super) epoch: u32,
    pub(super) state: SlotState,
    /// Whether epoll is also watching for writability (only while the core has output waiting).
    pub(super) writable: bool,
}

#[derive(Default)]
pub(super) struct Bufs {
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
    pub(super) live: usize,
    /// Failed while the core owned them; reported to the core after the current call.
    pub(super) doomed: Vec<ConnId>,
    pub(super) lingering: VecDeque<(ConnId, u32, Instant)>,
    /// How long a closed connection may linger (`LINGER`; tests shorten it).
    pub(super) linger: Duration,
    /// Messages for the supervisor produced inside core calls (device claims).
    pub(super) outbox: Outbox,
    pub(super) refused: u64,
    /// Connections held per client address (`--max-conns-per-source`).
    pub(super) per_source: PerSource,
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
            self.per_source.release(id);
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

    /// Send FIN (the core has written everything), then wait for the peer's FIN (bounded by the
    /// linger deadline set when the core closed it).
    fn finish(&mut self, id: ConnId) {
        let slot = &mut self.slots[id as usize];
        if let Some(stream) = slot.stream.as_ref() {
            if stream.shutdown(Shutdown::Write).is_err() {
                self.drop_conn(id);
                return;
            }
        }
        slot.bufs = None;
        self.set_writable(id, false);
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
    fn peer_window_closed(&mut self, id: ConnId) -> bool {
        match self.slots[id as usize].stream.as_ref() {
            // Before Linux 5.4 the kernel does not say: the write timeout then counts any stall.
            Some(stream) => host::tcp::peer_window(stream.as_raw_fd()).is_none_or(|w| w == 0),
            None => true,
        }
    }

    fn write(&mut self, id: ConnId, bytes: &[u8]) -> usize {
        let slot = &mut self.slots[id as usize];
        if slot.state != SlotState::Live {
            return 0;
        }
        let Some(stream) = slot.stream.as_mut() else {
            return 0;
        };
        let written = loop {
            match stream.write(bytes) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 0,
                Err(_) => {
                    self.doom(id);
                    return 0;
                }
            }
        };
        if written < bytes.len() {
            // The core keeps the rest; EPOLLOUT says when the kernel has room again.
            self.set_writable(id, true);
        }
        written
    }

    fn close(&mut self, id: ConnId) {
        let slot = &mut self.slots[id as usize];
        match slot.state {
            SlotState::Live => {
                slot.state = SlotState::Closing;
                // A peer that never sends its FIN cannot hold the slot: dropped LINGER after this.
                self.lingering.push_back((id, slot.epoch, Instant::now() + self.linger));
                self.finish(id);
            }
            // Already failed: the pending report to the core finds it forgotten and ignores it.
            SlotState::Doomed | SlotState::Closing | SlotState::Free => {}
        }
    }

    fn abort(&mut self, id: ConnId) {
        let slot = &mut self.slots[id as usize];
        if slot.state != SlotState::Live {
            return;
        }
        if let Some(stream) = slot.stream.as_ref() {
            // Linger 0: the close that follows sends RST and drops what the kernel still holds.
            let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
        }
        self.drop_conn(id);
    }

    fn device_claimed(&mut self, hash: u64, id: &[u8]) {
        self.outbox.device_claimed(hash, id);
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

/// Connections held per client address, for `--max-conns-per-source`: an entry per address while
/// it holds any, and each connection's address by fd (4 bytes a slot, allocated only when the
/// limit is set). IPv4 addresses are their own key; an IPv6 peer is folded to 32 bits (the
/// listener is IPv4 in every setup we ship).
#[derive(Default)]
pub(super) struct PerSource {
    pub(super) limit: Option<u32>,
    held: std::collections::HashMap<u32, u32>,
    peer_of: Vec<u32>,
    pub(super) refused: u64,
}

impl PerSource {
    pub(super) fn new(limit: Option<u32>, slots: usize) -> PerSource {
        PerSource {
            limit,
            peer_of: if limit.is_some() { vec![0; slots] } else { Vec::new() },
            ..PerSource::default()
        }
    }

    pub(super) fn key(addr: std::net::IpAddr) -> u32 {
        match addr {
            std::net::IpAddr::V4(a) => u32::from(a),
            std::net::IpAddr::V6(a) => {
                let o = a.octets();
                (0..4).fold(0, |k, i| {
                    k ^ u32::from_be_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
                })
            }
        }
    }

    /// Take a place for connection `id` from `key`, or count a refusal.
    pub(super) fn admit(&mut self, id: ConnId, key: u32) -> bool {
        let Some(limit) = self.limit else { return true };
        let Some(peer) = self.peer_of.get_mut(id as usize) else {
            return true;
        };
        let n = self.held.entry(key).or_insert(0);
        if *n >= limit {
            self.refused += 1;
            return false;
        }
        *n += 1;
        *peer = key;
        true
    }

    /// Connection `id` is gone: its address's place is free.
    pub(super) fn release(&mut self, id: ConnId) {
        let Some(&key) = self.peer_of.get(id as usize) else {
            return;
        };
        if let Some(n) = self.held.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&key);
            }
        }
    }
}

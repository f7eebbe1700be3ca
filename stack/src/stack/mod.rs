//! The stack: smoltcp used one socket at a time, under our own connection table and timer wheel.
//!
//! Per received frame: parse the 4-tuple (`wire`), find the slot (`table`, O(1)), let smoltcp
//! process exactly that frame (`port`) on that one socket, where it lies, through a one-slot
//! `SocketSet` over its slab entry (`one_slot.rs`). Nothing ever scans the connections per packet. Sockets with output are marked dirty
//! and transmit at `flush` — after the application has seen the events, so its reply rides with
//! the ACK. smoltcp's per-socket deadline (`poll_at`) goes into one timer wheel; an idle
//! established connection has no deadline and costs no CPU at all.
//!
//! Slots are recycled, never freed: a slot keeps its socket and its arena buffers forever, and
//! `listen`/`connect` reset the socket for its next connection.
//!
//! - `slot.rs`: a connection's slot (flags, deadlines) and the free list.
//! - `one_slot.rs`: the one unsafe trick (smoltcp on one socket in place).
//! - `ingress.rs`: a frame in → its connection.
//! - `conn.rs`: one connection's turn through smoltcp, and the events it reports.
//! - `egress.rs`: the dirty list, `flush`, and the timers.
//! - `calls.rs`: read, write, close, connect.

mod calls;
mod conn;
mod cookie;
mod egress;
mod ingress;
mod one_slot;
mod residency;
mod segment;
pub(crate) mod sequence;
mod slot;
mod tail_probe;
mod time_wait;

use std::net::SocketAddrV4;

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketStorage};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpCidr, Ipv4Address};

use crate::arena::Arena;
use crate::config::StackConfig;
use crate::link::{Link, LinkCounters};
use crate::port::Port;
use crate::stats::{MemoryReport, StackStats};
use crate::table::ConnTable;
use crate::wire::{EthShim, FourTuple};
use cookie::CookieJar;
use one_slot::sock_mut;
use sequence::{ChallengeBudget, IsnSource};
use slot::{filled, flag, free_chain, tick_of, Slot, NO_SLOT, SLOT_EMPTY};
use time_wait::TimeWaits;
use timing::wheel::{Entry, TimerWheel};

/// A connection, as the application names it: the slot index. An id is the application's from
/// `Accepted`/`connect` until it calls `close` or `abort`; only then can the slot be reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A passive connection completed its handshake; the id is now the application's.
    Accepted(ConnId),
    /// An active connection (from `connect`) completed its handshake.
    Connected(ConnId),
    /// New bytes arrived.
    Readable(ConnId),
    /// A write that did not fit now has room.
    Writable(ConnId),
    /// No more bytes will arrive (bytes that came before the FIN may still be there to read).
    /// The application still calls `close` (or `abort`) to release it.
    Closed(ConnId, CloseReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer sent FIN.
    PeerClosed,
    /// Reset by the peer, refused, or given up after retransmissions time out.
    Aborted,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnectError {
    #[error("no free connection slot (all {0} in use)")]
    NoCapacity(usize),
    #[error("every source address and port towards {0} is in use")]
    NoSourcePort(SocketAddrV4),
    #[error("no source addresses configured for client mode")]
    NoSourceAddress,
    #[error("smoltcp refused the connect: {0}")]
    Smoltcp(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("invalid stack configuration: {0}")]
    Config(String),
    #[error("cannot read the secret for sequence numbers from /dev/urandom: {0}")]
    Random(std::io::Error),
}

/// Timer wheel: 1 ms ticks, 16384 slots (16 s per revolution: TIME-WAIT's 10 s fits in one).
const WHEEL_SLOTS: usize = 1 << 14;
/// How long a connection stays in TIME-WAIT (smoltcp's `CLOSE_DELAY`, which a connection in a
/// slot keeps too).
const TIME_WAIT: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(10);
/// Challenge ACKs sent per second across all connections (RFC 5961 §7; on top of smoltcp's one
/// a second per connection). Counted when an ACK leaves, so forgeries on one connection do not
/// spend the budget of the others.
const CHALLENGE_ACKS_PER_SECOND: u32 = 1000;

/// All state except the link, so that frames borrowed from the link can be processed by it.
struct Net {
    config: StackConfig,
    iface: Interface,
    /// The slab of sockets, indexed by slot, each in place in smoltcp's own storage type, so
    /// that smoltcp works on it through a one-slot set over that slot (`in_set`): the 360-byte
    /// socket is never copied (moving it in and out of a set took ~15% of a broadcast's CPU).
    sockets: Vec<SocketStorage<'static>>,
    /// The handle of a socket in its one-slot set (always the first and only slot).
    handle: SocketHandle,
    tuples: Vec<FourTuple>,
    slots: Vec<Slot>,
    table: ConnTable,
    /// The free slots, as a list threaded through their `user` field (unused while a slot is
    /// free): no memory of its own.
    free_head: u32,
    free_count: usize,
    wheel: TimerWheel,
    /// Slots that may have output; drained by `flush`.
    dirty: Vec<u32>,
    /// Where the next flush resumes in `dirty` (entries before it are done).
    dirty_next: usize,
    /// Frames the dirty list may still send before more come back (`StackConfig::egress_window`),
    /// and when a quarter of the window last came back by itself.
    credit: u32,
    credit_at: Instant,
    /// Scratch for the wheel's due entries.
    due: Vec<Entry>,
    events: Vec<Event>,
    shim: EthShim,
    /// Whether `shim.next_hop` is known: configured, or learned from a validated segment.
    mac_learned: bool,
    /// Configured: never learned over.
    mac_fixed: bool,
    /// A MAC proving itself to replace the next hop, and its validated segments so far.
    mac_candidate: ([u8; 6], u8),
    /// When a change of next hop was last logged (ms).
    mac_logged_at: i64,
    /// RFC 6528 initial sequence numbers (`sequence.rs`).
    isn: IsnSource,
    challenges: ChallengeBudget,
    /// Tail probes per second (`tail_probe.rs`).
    probes: ChallengeBudget,
    /// SYN cookies past `half_open_limit` pending handshakes (`cookie.rs`).
    cookies: CookieJar,
    half_open: usize,
    half_open_limit: usize,
    /// The ISN a connection from a cookie must take (the cookie itself).
    isn_override: Option<u32>,
    /// Two frames of room for a cookie's handshake, allocated once.
    scratch: Vec<u8>,
    /// Slots held per remote address, when `max_per_source` is set (an entry per address, not
    /// per connection; gone when its count is 0).
    per_source: std::collections::HashMap<[u8; 4], u32>,
    /// Connections in TIME-WAIT, parked outside the slots (`time_wait.rs`).
    time_waits: TimeWaits,
    listening: Vec<u16>,
    /// Client mode: next (source address index, port) to try.
    next_source: (usize, u16),
    arena_bytes: usize,
    /// Where the arena starts (for `resident_memory`).
    arena_base: usize,
    /// Which buffers hold bytes, and the release of pages whose buffers all stayed empty.
    residency: residency::Residency,
    /// The time of the last poll or flush (for deadlines set by calls).
    now: Instant,
    stats: StackStats,
}

/// A userspace TCP stack over one link (one AF_XDP queue, or one end of an in-memory wire).
pub struct Stack<L: Link> {
    link: L,
    net: Net,
}

impl<L: Link> Stack<L> {
    /// Build the stack: every socket and buffer for `config.max_conns` connections is made here,
    /// once; nothing is allocated per connection or per packet afterwards.
    pub fn new(config: StackConfig, mut link: L, now: Instant) -> Result<Stack<L>, StackError> {
        config.validate().map_err(StackError::Config)?;
        let n = config.max_conns;
        let shim = EthShim {
            our_mac: config.our_mac,
            next_hop: config.next_hop_mac.unwrap_or([0xff; 6]),
        };
        let iface = interface(&config, link.sender(), shim, now)?;

        let mut arena = Arena::new(n, config.rx_buf, config.tx_buf);
        let arena_bytes = arena.bytes();
        let arena_base = arena.base();
        if config.release_idle_buffers.is_none() {
            if config.huge_pages {
                crate::stats::advise_huge_pages(arena.base() as *const u8, arena_bytes);
            }
        } else {
            // Pages are released one by one: a huge page (THP set to "always") would keep its
            // 2 MiB for one busy buffer, and khugepaged would gather released pages back.
            // SAFETY: advice on our own mapping, whole.
            unsafe { libc::madvise(arena.base() as *mut libc::c_void, arena_bytes, libc::MADV_NOHUGEPAGE) };
        }
        let release_after = config
            .release_idle_buffers
            .map(|d| u32::try_from(d.total_millis()).unwrap_or(u32::MAX));
        let residency = residency::Residency::new(&arena, release_after);
        let (sockets, handle) = one_slot::socket_slab(&mut arena, &config)
            .ok_or_else(|| StackError::Config("max_conns must be at least 1".into()))?;
        Ok(Stack {
            link,
            net: Net {
                iface,
                handle,
                sockets,
                tuples: filled(n, FourTuple::default(), config.huge_pages),
                slots: free_chain(filled(n, SLOT_EMPTY, config.huge_pages)),
                table: ConnTable::new(n, config.huge_pages),
                // Popped from the end: slot 0 is handed out first.
                free_head: if n > 0 { 0 } else { NO_SLOT },
                free_count: n,
                wheel: TimerWheel::new(WHEEL_SLOTS, tick_of(now)),
                dirty: Vec::new(),
                dirty_next: 0,
                credit: config.egress_window,
                credit_at: now,
                due: Vec::new(),
                events: Vec::new(),
                shim,
                mac_learned: config.next_hop_mac.is_some(),
                mac_fixed: config.next_hop_mac.is_some(),
                mac_candidate: ([0; 6], 0),
                mac_logged_at: i64::MIN / 2,
                isn: IsnSource::from_os().map_err(StackError::Random)?,
                challenges: ChallengeBudget::new(CHALLENGE_ACKS_PER_SECOND),
                probes: ChallengeBudget::new(tail_probe::PROBES_PER_SECOND),
                cookies: CookieJar::from_os().map_err(StackError::Random)?,
                half_open: 0,
                half_open_limit: config.half_open_limit(),
                isn_override: None,
                scratch: vec![0; cookie::SCRATCH],
                time_waits: TimeWaits::new(config.time_wait_limit()),
                per_source: std::collections::HashMap::new(),
                listening: Vec::new(),
                next_source: (0, config.source_ports.0),
                arena_bytes,
                arena_base,
                residency,
                now,
                stats: StackStats::default(),
                config,
            },
        })
    }

    /// Accept connections to `port` (on any of our addresses).
    pub fn listen(&mut self, port: u16) {
        if port != 0 && !self.net.listening.contains(&port) {
            self.net.listening.push(port);
        }
    }

    /// Receive one batch of frames and run due timers; new events are appended to `events`.
    /// Returns the number of frames received.
    pub fn poll(&mut self, now: Instant, events: &mut Vec<Event>) -> usize {
        let Stack { link, net } = self;
        let batch = net.config.rx_batch;
        net.now = now;
        let n = link.receive(batch, &mut |frame, sender| net.on_frame(frame, sender, now));
        net.run_timers(now, link.sender());
        events.append(&mut net.events);
        egress::trim(&mut net.events);
        n
    }

    /// Transmit what the sockets have to send (dirty ones only) and push it out of the link.
    pub fn flush(&mut self, now: Instant) {
        let Stack { link, net } = self;
        net.drain_dirty(now, link.sender());
        link.flush();
        net.stats.buffer_pages_released += net.residency.release_due(tick_of(now)) as u64;
    }

    /// Events produced by calls (a read reaching the peer's FIN), without polling the link.
    pub fn take_events(&mut self, events: &mut Vec<Event>) {
        events.append(&mut self.net.events);
        egress::trim(&mut self.net.events);
    }

    /// Whether output or events are waiting (then the driver should not sleep before the next
    /// round). Timers need a round at least every millisecond (the wheel's tick) while any are set.
    pub fn has_work(&self) -> bool {
        self.pending_output() > 0 || !self.net.events.is_empty()
    }

    /// Open a connection to `remote` from the next free (source address, port).
    pub fn connect(&mut self, remote: SocketAddrV4) -> Result<ConnId, ConnectError> {
        self.net.connect(remote)
    }

    /// Read up to `buf.len()` bytes; 0 when nothing is buffered or the id is not open.
    pub fn read(&mut self, id: ConnId, buf: &mut [u8]) -> usize {
        self.net.read_with(id, |data| {
            let n = data.len().min(buf.len());
            buf[..n].copy_from_slice(&data[..n]);
            n
        })
    }

    /// Let `f` look at the buffered bytes in place (the contiguous part of the ring), mutably, and
    /// say how many it consumed. Returns what `f` consumed (0 if the id is not open).
    pub fn read_with(&mut self, id: ConnId, f: impl FnOnce(&mut [u8]) -> usize) -> usize {
        self.net.read_with(id, f)
    }

    /// Copy up to `buf.len()` buffered bytes without consuming them (across the ring's wrap);
    /// `discard` then drops what the application used. For applications that parse in place
    /// while writing to the stack (the borrow of `read_with` would forbid that).
    pub fn peek(&mut self, id: ConnId, buf: &mut [u8]) -> usize {
        self.net.peek(id, buf)
    }

    /// Consume `n` buffered bytes (or all there are); returns how many were consumed.
    pub fn discard(&mut self, id: ConnId, n: usize) -> usize {
        let mut left = n;
        while left > 0 {
            let took = self.net.read_with(id, |data| data.len().min(left));
            if took == 0 {
                break;
            }
            left -= took;
        }
        n - left
    }

    /// Receive buffer size of every connection.
    pub fn rx_capacity(&self) -> usize {
        self.net.config.rx_buf
    }

    /// Whether `id` is a connection the application holds (not yet closed or aborted by it).
    pub fn is_owned(&self, id: ConnId) -> bool {
        self.net.owned(id).is_some()
    }

    /// Bytes waiting to be read.
    pub fn readable(&mut self, id: ConnId) -> usize {
        self.net.socket(id).map_or(0, |s| s.recv_queue())
    }

    /// Queue bytes for sending; returns how many fit. When fewer than all fit, a `Writable` event
    /// follows once there is room.
    pub fn write(&mut self, id: ConnId, data: &[u8]) -> usize {
        self.net.write(id, data)
    }

    /// Room in the send buffer.
    pub fn write_space(&mut self, id: ConnId) -> usize {
        self.net.socket(id).map_or(0, |s| {
            if s.may_send() {
                s.send_capacity() - s.send_queue()
            } else {
                0
            }
        })
    }

    /// Whether the peer's last acknowledgement advertised a zero window (it is not reading).
    pub fn peer_window_closed(&self, id: ConnId) -> bool {
        self.net
            .owned(id)
            .is_some_and(|s| self.net.slots[s].flags & flag::PEER_WINDOW_ZERO != 0)
    }

    /// Ask for a `Writable` event once the send buffer has room (a short `write` asks by itself).
    pub fn want_write(&mut self, id: ConnId) {
        if let Some(s) = self.net.owned(id) {
            self.net.slots[s].flags |= flag::WANT_WRITE;
            // Room may be there already: the next flush looks (nothing else may wake this slot).
            self.net.mark_dirty(s);
        }
    }

    /// Close gracefully (FIN after the queued bytes) and release the id.
    pub fn close(&mut self, id: ConnId) {
        self.net.release(id, false);
    }

    /// Reset the connection (RST) and release the id.
    pub fn abort(&mut self, id: ConnId) {
        self.net.release(id, true);
    }

    pub fn user(&self, id: ConnId) -> Option<u32> {
        self.net.owned(id).map(|s| self.net.slots[s].user)
    }

    pub fn set_user(&mut self, id: ConnId, value: u32) {
        if let Some(s) = self.net.owned(id) {
            self.net.slots[s].user = value;
        }
    }

    pub fn tuple(&self, id: ConnId) -> Option<FourTuple> {
        self.net.owned(id).map(|s| self.net.tuples[s])
    }

    pub fn state(&mut self, id: ConnId) -> Option<tcp::State> {
        self.net.socket(id).map(|s| s.state())
    }

    /// Every established connection the application holds (for broadcast). O(capacity).
    pub fn conns(&self) -> impl Iterator<Item = ConnId> + '_ {
        let want = flag::OWNED | flag::ESTABLISHED;
        self.net
            .slots
            .iter()
            .enumerate()
            .filter(move |(_, s)| s.flags & (want | flag::CLOSED_SENT) == want)
            .map(|(i, _)| ConnId(i as u32))
    }

    /// Connections with output waiting for the link (0 once a broadcast has left).
    pub fn pending_output(&self) -> usize {
        self.net.dirty.len() - self.net.dirty_next
    }

    /// Slots in use (connections in any state, including closing ones).
    pub fn in_use(&self) -> usize {
        self.net.config.max_conns - self.net.free_count
    }

    pub fn capacity(&self) -> usize {
        self.net.config.max_conns
    }

    pub fn stats(&self) -> StackStats {
        let mut s = self.net.stats;
        s.in_use = self.in_use() as u64;
        s.half_open = self.net.half_open as u64;
        s.time_waits = self.net.time_waits.len() as u64;
        s.timers_pending = self.net.wheel.len() as u64;
        s
    }

    pub fn link_counters(&self) -> LinkCounters {
        self.link.counters()
    }

    pub fn link(&mut self) -> &mut L {
        &mut self.link
    }

    pub fn config(&self) -> &StackConfig {
        &self.net.config
    }

    /// Where the memory goes, by structure (capacity, not residency: see `MemoryReport`).
    pub fn memory(&self) -> MemoryReport {
        let n = &self.net;
        MemoryReport {
            slots: n.config.max_conns,
            socket_bytes: n.sockets.capacity() * std::mem::size_of::<SocketStorage<'static>>(),
            arena_bytes: n.arena_bytes,
            table_bytes: n.table.bytes(),
            slot_bytes: n.slots.capacity() * std::mem::size_of::<Slot>()
                + n.tuples.capacity() * std::mem::size_of::<FourTuple>(),
            free_list_bytes: 0,
            wheel_bytes: n.wheel.heap_bytes(),
            queue_bytes: n.dirty.capacity() * 4
                + n.residency.bytes()
                + n.time_waits.bytes()
                + n.due.capacity() * std::mem::size_of::<Entry>()
                + n.events.capacity() * std::mem::size_of::<Event>(),
        }
    }

    /// Like `memory`, but each large structure counted by its resident pages (mincore): what an
    /// established connection really costs, since untouched buffers and table space cost nothing.
    pub fn resident_memory(&self) -> MemoryReport {
        use crate::stats::resident_bytes;
        fn of<T>(v: &[T]) -> usize {
            resident_bytes(v.as_ptr().cast(), std::mem::size_of_val(v))
        }
        let n = &self.net;
        let capacity = self.memory();
        MemoryReport {
            socket_bytes: of(&n.sockets),
            arena_bytes: resident_bytes(n.arena_base as *const u8, n.arena_bytes),
            table_bytes: n.table.resident(),
            slot_bytes: of(&n.slots) + of(&n.tuples),
            ..capacity
        }
    }

    /// The next hop's MAC address (configured, or learned from received frames).
    pub fn next_hop(&self) -> Option<[u8; 6]> {
        self.net.mac_learned.then_some(self.net.shim.next_hop)
    }
}

/// smoltcp's interface: our address, any destination accepted, every segment to the one next hop.
fn interface<S: crate::link::Sender>(
    config: &StackConfig,
    sender: &mut S,
    shim: EthShim,
    now: Instant,
) -> Result<Interface, StackError> {
    let mut iface_config = IfaceConfig::new(HardwareAddress::Ip);
    iface_config.random_seed = fastrand::u64(..);
    let mut port = Port {
        frame: None,
        sender,
        shim,
        mtu: config.mtu,
        verify_rx_checksum: config.verify_rx_checksum,
        starved: false,
        seq: None,
        new_isn: None,
        sent_data: false,
    };
    let mut iface = Interface::new(iface_config, &mut port, now);
    let addr = Ipv4Address::from(config.addr.octets());
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(addr.into(), config.prefix_len));
    });
    // Our table and the XDP program decide which segments are ours; smoltcp must accept any
    // destination address (client mode uses a pool of source addresses) and route all
    // output to the one next hop.
    iface.set_any_ip(true);
    iface
        .routes_mut()
        .add_default_ipv4_route(addr)
        .map_err(|_| StackError::Config("route table full".into()))?;
    Ok(iface)
}

impl Net {
    /// Note how many bytes slot `s`'s buffers hold now (`residency.rs`); a free slot's are dead.
    fn note_buffers(&mut self, s: usize, now: Instant) {
        if self.slots[s].flags & flag::IN_USE == 0 {
            self.residency.forget(s, tick_of(now));
            return;
        }
        let sock = sock_mut(&mut self.sockets[s], self.handle);
        let (rx, tx) = (sock.recv_queue(), sock.send_queue());
        self.residency.note(s, rx, tx, tick_of(now));
    }

    fn owned(&self, id: ConnId) -> Option<usize> {
        let s = id.0 as usize;
        let slot = self.slots.get(s)?;
        (slot.flags & flag::OWNED != 0).then_some(s)
    }

    fn socket(&mut self, id: ConnId) -> Option<&mut tcp::Socket<'static>> {
        let s = self.owned(id)?;
        Some(sock_mut(&mut self.sockets[s], self.handle))
    }

    /// Take the first free slot off the list.
    fn take_free(&mut self) -> Option<u32> {
        let s = self.free_head;
        if s == NO_SLOT {
            return None;
        }
        self.free_head = self.slots[s as usize].user;
        self.free_count -= 1;
        Some(s)
    }
}

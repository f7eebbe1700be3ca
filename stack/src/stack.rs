//! The stack: smoltcp used one socket at a time, under our own connection table and timer wheel.
//!
//! Per received frame: parse the 4-tuple (`wire`), find the slot (`table`, O(1)), move that one
//! socket into a one-slot `SocketSet`, let smoltcp process exactly that frame (`port`), move the
//! socket back. Nothing ever scans the connections per packet. Sockets with output are marked dirty
//! and transmit at `flush` — after the application has seen the events, so its reply rides with
//! the ACK. smoltcp's per-socket deadline (`poll_at`) goes into one timer wheel; an idle
//! established connection has no deadline and costs no CPU at all.
//!
//! Slots are recycled, never freed: a slot keeps its socket and its arena buffers forever, and
//! `listen`/`connect` reset the socket for its next connection.

use std::net::SocketAddrV4;

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpCidr, Ipv4Address};

use crate::arena::Arena;
use crate::config::StackConfig;
use crate::link::{Link, LinkCounters};
use crate::port::Port;
use crate::stats::{MemoryReport, StackStats};
use crate::table::ConnTable;
use crate::wire::{self, EthShim, FourTuple, NotTcp, TCP_ACK, TCP_RST, TCP_SYN};
use timing::wheel::{Due, Entry, TimerWheel};

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
}

/// Per-slot flags.
mod flag {
    /// The slot holds a connection (not on the free list).
    pub const IN_USE: u16 = 1 << 0;
    /// Its 4-tuple is in the table.
    pub const IN_TABLE: u16 = 1 << 1;
    /// The application holds the id (between Accepted/connect and close/abort).
    pub const OWNED: u16 = 1 << 2;
    /// The handshake completed and was reported.
    pub const ESTABLISHED: u16 = 1 << 3;
    /// `Closed` was reported.
    pub const CLOSED_SENT: u16 = 1 << 4;
    /// On the dirty list: the socket may have something to send.
    pub const DIRTY: u16 = 1 << 5;
    /// A write came up short: report `Writable` when room appears.
    pub const WANT_WRITE: u16 = 1 << 6;
    /// Opened by `connect` (reports `Connected`, not `Accepted`).
    pub const ACTIVE: u16 = 1 << 7;
    /// The application gave the id back; `Slot::user` holds the close deadline.
    pub const RELEASED: u16 = 1 << 8;
}

/// No wheel entry is pending for the slot.
const NO_TIMER: u32 = u32::MAX;

/// Everything per connection besides the socket and its buffers: 12 bytes (the 4-tuple, 12 more,
/// lives in `Net::tuples` next to the table that compares it).
#[derive(Clone, Copy)]
#[repr(C)]
struct Slot {
    /// The application's few bytes while it owns the id; after release, the tick by which the
    /// connection must have finished closing (the application no longer needs the field); while
    /// the slot is free, the next free slot.
    user: u32,
    /// Tick of the earliest wheel entry scheduled for smoltcp's deadline, or `NO_TIMER`.
    timer: u32,
    flags: u16,
}

const SLOT_EMPTY: Slot = Slot {
    user: 0,
    timer: NO_TIMER,
    flags: 0,
};

/// At most this many segments per socket per egress pass; more waits for the next flush.
const EGRESS_BURST: usize = 32;
/// Timer wheel: 1 ms ticks, 16384 slots (16 s per revolution: TIME-WAIT's 10 s fits in one).
const WHEEL_SLOTS: usize = 1 << 14;

/// Whether the TCP checksum of this IPv4 packet is right (checked before a SYN may end a
/// TIME-WAIT, since smoltcp checks it only after we would have torn the old socket down).
fn tcp_checksum_ok(ip: &[u8]) -> bool {
    use smoltcp::wire::{Ipv4Packet, TcpPacket};
    let Ok(ipv4) = Ipv4Packet::new_checked(ip) else {
        return false;
    };
    let (src, dst) = (ipv4.src_addr(), ipv4.dst_addr());
    match TcpPacket::new_checked(ipv4.payload()) {
        Ok(tcp) => tcp.verify_checksum(&src.into(), &dst.into()),
        Err(_) => false,
    }
}

/// A vector of `n` copies of `v`, on huge pages if asked (advised before the first write).
fn filled<T: Clone>(n: usize, v: T, huge: bool) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    if huge {
        crate::stats::advise_huge_pages(out.as_ptr() as *const u8, n * std::mem::size_of::<T>());
    }
    out.resize(n, v);
    out
}

/// The end of the free list.
const NO_SLOT: u32 = u32::MAX;

/// Slots all free, chained in order (slot 0 is handed out first).
fn free_chain(mut slots: Vec<Slot>) -> Vec<Slot> {
    let n = slots.len();
    for (i, slot) in slots.iter_mut().enumerate() {
        slot.user = if i + 1 < n { i as u32 + 1 } else { NO_SLOT };
    }
    slots
}

fn tick_of(now: Instant) -> u32 {
    now.total_millis() as u32
}

fn tick_after(now: Instant, d: Duration) -> u32 {
    tick_of(now).wrapping_add(d.total_millis() as u32)
}

/// `a` is at or before `b`, on the wrapping tick clock.
fn not_after(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) >= 0
}

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
    /// Scratch for the wheel's due entries.
    due: Vec<Entry>,
    events: Vec<Event>,
    shim: EthShim,
    mac_learned: bool,
    listening: Vec<u16>,
    /// Client mode: next (source address index, port) to try.
    next_source: (usize, u16),
    arena_bytes: usize,
    /// Where the arena starts (for `resident_memory`).
    arena_base: usize,
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
        let mut iface_config = IfaceConfig::new(HardwareAddress::Ip);
        iface_config.random_seed = fastrand::u64(..);
        let mut port = Port {
            frame: None,
            sender: link.sender(),
            shim,
            mtu: config.mtu,
            verify_rx_checksum: config.verify_rx_checksum,
            starved: false,
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

        let mut arena = Arena::new(n, config.rx_buf, config.tx_buf);
        let arena_bytes = arena.bytes();
        let arena_base = arena.base();
        if config.huge_pages {
            crate::stats::advise_huge_pages(arena.base() as *const u8, arena_bytes);
        }
        let mut sockets: Vec<SocketStorage<'static>> = Vec::with_capacity(n);
        if config.huge_pages {
            crate::stats::advise_huge_pages(
                sockets.as_ptr() as *const u8,
                n * std::mem::size_of::<SocketStorage<'static>>(),
            );
        }
        let mut handle = None;
        while let Some((rx, tx)) = arena.carve() {
            let mut s = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
            // Give up on a peer that stops acknowledging: no socket retransmits forever.
            s.set_timeout(Some(config.tcp_timeout));
            s.set_keep_alive(config.keep_alive);
            // No delayed-ACK timer: the ACK goes out at the next flush, which comes right after
            // the application has had the chance to answer (and so piggyback it).
            s.set_ack_delay(None);
            // Push frames are small and latency matters more than packet count.
            s.set_nagle_enabled(false);
            sockets.push(SocketStorage::EMPTY);
            let slot = sockets.last_mut().expect("just pushed");
            // SAFETY: the closure only adds the socket and returns its handle.
            handle = Some(unsafe { in_set(slot, |set| set.add(s)) });
        }
        let handle = handle.ok_or_else(|| StackError::Config("max_conns must be at least 1".into()))?;
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
                due: Vec::new(),
                events: Vec::new(),
                shim,
                mac_learned: config.next_hop_mac.is_some(),
                listening: Vec::new(),
                next_source: (0, config.source_ports.0),
                arena_bytes,
                arena_base,
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
        n
    }

    /// Transmit what the sockets have to send (dirty ones only) and push it out of the link.
    pub fn flush(&mut self, now: Instant) {
        let Stack { link, net } = self;
        net.drain_dirty(now, link.sender());
        link.flush();
    }

    /// Events produced by calls (a read reaching the peer's FIN), without polling the link.
    pub fn take_events(&mut self, events: &mut Vec<Event>) {
        events.append(&mut self.net.events);
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

impl Net {
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

    fn mark_dirty(&mut self, s: usize) {
        if self.slots[s].flags & flag::DIRTY == 0 {
            self.slots[s].flags |= flag::DIRTY;
            self.dirty.push(s as u32);
        }
    }

    fn on_frame<S: crate::link::Sender>(&mut self, frame: &[u8], sender: &mut S, now: Instant) {
        self.stats.rx_frames += 1;
        let seg = match wire::parse(frame) {
            Ok(seg) => seg,
            Err(why) => {
                // Counted always; logged only at debug level, so a flood cannot flood the log.
                log::debug!("dropped a frame of {} bytes: {why:?}", frame.len());
                match why {
                    NotTcp::NotIpv4 => self.stats.rx_not_ipv4 += 1,
                    NotTcp::NotTcp => self.stats.rx_not_tcp += 1,
                    NotTcp::Malformed => self.stats.rx_malformed += 1,
                }
                return;
            }
        };
        let ip = &frame[seg.ip_start..seg.ip_end];
        let pure_syn = seg.flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN;
        let slot = match self.table.get(&seg.tuple, &self.tuples) {
            Some(s) => {
                let s = s as usize;
                let time_wait = sock_mut(&mut self.sockets[s], self.handle).state() == tcp::State::TimeWait;
                if pure_syn
                    && time_wait
                    && self.slots[s].flags & flag::OWNED == 0
                    && self.listening.contains(&seg.tuple.local_port)
                    && (!self.config.verify_rx_checksum || tcp_checksum_ok(ip))
                {
                    // A new connection on a 4-tuple we hold in TIME-WAIT: start it afresh
                    // (what Linux does for a SYN beyond the old sequence space).
                    self.stats.time_wait_reused += 1;
                    self.table.remove(s as u32, &self.tuples);
                    self.slots[s].flags &= !flag::IN_TABLE;
                    self.open_passive(s, seg.tuple);
                }
                s
            }
            None if pure_syn && self.listening.contains(&seg.tuple.local_port) => match self.take_free() {
                Some(s) => {
                    self.slots[s as usize] = SLOT_EMPTY;
                    self.open_passive(s as usize, seg.tuple);
                    s as usize
                }
                None => {
                    // Capacity is the backlog: past it, refuse (smoltcp answers RST when no
                    // socket takes the SYN) and leave every existing connection alone.
                    self.stats.syn_refused += 1;
                    self.without_socket(ip, sender, now);
                    return;
                }
            },
            None => {
                self.stats.rx_no_connection += 1;
                self.without_socket(ip, sender, now);
                return;
            }
        };
        // One next hop: whoever sends us segments of our connections (the router, or the veth
        // peer). Frames for no connection teach us nothing, so a stray host cannot redirect us.
        if !self.mac_learned || self.shim.next_hop != seg.src_mac {
            self.shim.next_hop = seg.src_mac;
            self.mac_learned = true;
        }
        self.stats.rx_segments += 1;
        self.process(slot, now, sender, Some(ip));
    }

    /// A passive open: the recycled socket listens on the SYN's local endpoint, then takes it.
    fn open_passive(&mut self, s: usize, t: FourTuple) {
        let (addr, port) = t.local();
        let sock = sock_mut(&mut self.sockets[s], self.handle);
        sock.abort();
        let local = smoltcp::wire::IpListenEndpoint {
            addr: Some(Ipv4Address::from(addr.octets()).into()),
            port,
        };
        // Cannot fail: the socket is closed and the port is not 0 (it is in `listening`).
        let _ = sock.listen(local);
        self.tuples[s] = t;
        self.slots[s].flags = (self.slots[s].flags & flag::DIRTY) | flag::IN_USE | flag::IN_TABLE;
        self.slots[s].timer = NO_TIMER;
        self.table.insert(s as u32, &self.tuples);
        self.stats.syn_received += 1;
    }

    /// A segment no socket takes: smoltcp answers with RST (never to a RST) from an empty set.
    fn without_socket<S: crate::link::Sender>(&mut self, ip: &[u8], sender: &mut S, now: Instant) {
        let mut empty = SocketSet::new(&mut [][..]);
        let mut port = Port {
            frame: Some(ip),
            sender,
            shim: self.shim,
            mtu: self.config.mtu,
            verify_rx_checksum: self.config.verify_rx_checksum,
            starved: false,
        };
        self.iface.poll_ingress_single(now, &mut port, &mut empty);
    }

    /// Run smoltcp on slot `s`'s socket: ingress of `frame` if given, else egress.
    fn process<S: crate::link::Sender>(&mut self, s: usize, now: Instant, sender: &mut S, frame: Option<&[u8]>) {
        let handle = self.handle;
        let rx_before = sock_mut(&mut self.sockets[s], handle).recv_queue();
        let mut port = Port {
            frame,
            sender,
            shim: self.shim,
            mtu: self.config.mtu,
            verify_rx_checksum: self.config.verify_rx_checksum,
            starved: false,
        };
        let ingress = frame.is_some();
        let mut deadline = None;
        let (iface, config, stats) = (&mut self.iface, &self.config, &mut self.stats);
        // SAFETY: the closure lends the set to smoltcp's poll calls and keeps nothing of it.
        unsafe {
            in_set(&mut self.sockets[s], |set| {
                if ingress {
                    iface.poll_ingress_single(now, &mut port, set);
                } else {
                    stats.egress_passes += 1;
                    for _ in 0..EGRESS_BURST {
                        if iface.poll_egress(now, &mut port, set) == smoltcp::iface::PollResult::None {
                            break;
                        }
                    }
                    // smoltcp's timeout counts from the last segment received, even on an idle
                    // connection: left on, it would abort every quiet connection after `tcp_timeout`,
                    // and switched on late (say, at close) it would fire at once. So it is on during
                    // handshakes, while data is unacknowledged (queueing into an empty buffer restarts
                    // its clock), and always when keep-alive probes are what detects a dead peer.
                    // Closing connections are bounded by `close_linger` instead.
                    let sock = set.get_mut::<tcp::Socket<'static>>(handle);
                    let handshake = matches!(sock.state(), tcp::State::SynSent | tcp::State::SynReceived);
                    let timed = handshake || sock.send_queue() > 0 || config.keep_alive.is_some();
                    sock.set_timeout(if timed { Some(config.tcp_timeout) } else { None });
                    deadline = iface.poll_at(now, set);
                }
            })
        };
        let starved = port.starved;
        self.settle(s, rx_before);
        let in_use = self.slots[s].flags & flag::IN_USE != 0;
        if !in_use {
            return;
        }
        if ingress || starved {
            // Answer at the next flush (after the application has seen the events).
            if starved {
                self.stats.tx_starved += 1;
            }
            self.mark_dirty(s);
        } else if deadline.is_none() {
            // Nothing left to time: any entry still in the wheel is stale and fires nothing.
            self.slots[s].timer = NO_TIMER;
        } else if let Some(at) = deadline {
            let tick = if at <= now {
                tick_of(now).wrapping_add(1)
            } else {
                // Round up: a timer that fires early only finds nothing to do yet.
                tick_of(at).wrapping_add(u32::from(at.total_micros() % 1000 != 0))
            };
            let current = self.slots[s].timer;
            if current == NO_TIMER || !not_after(current, tick) || !not_after(tick_of(now), current) {
                self.slots[s].timer = tick;
                self.wheel.insert(
                    tick,
                    Entry {
                        id: s as u32,
                        tag: tick,
                    },
                );
            }
        }
    }

    /// Report what changed on slot `s` and release it once its connection is over.
    fn settle(&mut self, s: usize, rx_before: usize) {
        let id = ConnId(s as u32);
        let sock = sock_mut(&mut self.sockets[s], self.handle);
        let state = sock.state();
        let (recv_queue, can_send) = (sock.recv_queue(), sock.can_send());
        // The peer's FIN has come (even with bytes still unread: an application waiting for
        // the rest of a message must hear that none will come).
        let peer_done = !sock.may_recv() || fin_received(state);
        let no_remote = sock.remote_endpoint().is_none();
        let flags = self.slots[s].flags;
        let synchronized = !matches!(
            state,
            tcp::State::Closed | tcp::State::Listen | tcp::State::SynSent | tcp::State::SynReceived
        );
        if flags & flag::ESTABLISHED == 0 && synchronized {
            self.slots[s].flags |= flag::ESTABLISHED;
            if flags & flag::ACTIVE != 0 {
                self.stats.connected += 1;
                if flags & flag::OWNED != 0 {
                    self.events.push(Event::Connected(id));
                }
            } else {
                self.stats.accepted += 1;
                self.slots[s].flags |= flag::OWNED;
                self.slots[s].user = 0;
                self.events.push(Event::Accepted(id));
            }
        }
        let flags = self.slots[s].flags;
        if flags & flag::OWNED != 0 && flags & flag::CLOSED_SENT == 0 {
            if flags & flag::ESTABLISHED != 0 {
                if recv_queue > rx_before {
                    self.events.push(Event::Readable(id));
                }
                if flags & flag::WANT_WRITE != 0 && can_send {
                    self.slots[s].flags &= !flag::WANT_WRITE;
                    self.events.push(Event::Writable(id));
                }
                if state == tcp::State::Closed {
                    self.report_closed(s, CloseReason::Aborted);
                } else if peer_done {
                    self.report_closed(s, CloseReason::PeerClosed);
                }
            } else if state == tcp::State::Closed {
                // An active open that was refused or timed out.
                self.stats.connect_failed += 1;
                self.report_closed(s, CloseReason::Aborted);
            }
        }
        // Done when nothing is left to send either (an abort's RST goes out first). A passive
        // socket reset during its handshake falls back to LISTEN: it is done too.
        let done = matches!(state, tcp::State::Closed | tcp::State::Listen) && no_remote;
        if done {
            if state == tcp::State::Listen {
                sock_mut(&mut self.sockets[s], self.handle).abort();
            }
            self.retire(s);
        }
    }

    fn report_closed(&mut self, s: usize, why: CloseReason) {
        self.slots[s].flags |= flag::CLOSED_SENT;
        match why {
            CloseReason::PeerClosed => self.stats.closed_by_peer += 1,
            CloseReason::Aborted => self.stats.aborted += 1,
        }
        self.events.push(Event::Closed(ConnId(s as u32), why));
    }

    /// The socket is closed: leave the table, and go back to the free list unless the
    /// application still holds the id.
    fn retire(&mut self, s: usize) {
        if self.slots[s].flags & flag::IN_TABLE != 0 {
            self.table.remove(s as u32, &self.tuples);
            self.slots[s].flags &= !flag::IN_TABLE;
        }
        let flags = self.slots[s].flags;
        if flags & flag::OWNED == 0 && flags & flag::IN_USE != 0 {
            if flags & flag::ESTABLISHED == 0 && flags & flag::ACTIVE == 0 {
                self.stats.handshakes_failed += 1;
            }
            self.slots[s] = Slot {
                user: self.free_head,
                ..SLOT_EMPTY
            };
            self.free_head = s as u32;
            self.free_count += 1;
            self.stats.retired += 1;
        }
    }

    fn release(&mut self, id: ConnId, abort: bool) {
        let Some(s) = self.owned(id) else { return };
        {
            let sock = sock_mut(&mut self.sockets[s], self.handle);
            if abort {
                sock.abort();
                self.stats.app_aborts += 1;
            } else {
                sock.close();
            }
        }
        self.slots[s].flags &= !(flag::OWNED | flag::WANT_WRITE);
        self.slots[s].flags |= flag::RELEASED;
        // The connection must finish closing by then, or it is reset: smoltcp has no FIN-WAIT-2
        // timeout, its own timeout is off here (see `process`), and a peer that never
        // acknowledges our FIN or never closes must not keep a slot forever.
        let deadline = tick_after(self.now, self.config.close_linger);
        self.slots[s].user = deadline;
        self.wheel.insert(
            deadline,
            Entry {
                id: s as u32,
                tag: deadline,
            },
        );
        // The FIN or RST goes out at the next flush; the slot is retired once the socket is done.
        self.mark_dirty(s);
    }

    /// Run every wheel entry that is due.
    fn run_timers<S: crate::link::Sender>(&mut self, now: Instant, sender: &mut S) {
        self.now = now;
        let tick = tick_of(now);
        let due = &mut self.due;
        due.clear();
        self.wheel.advance(tick, |e, _| {
            if not_after(e.tag, tick) {
                due.push(e);
                Due::Drop
            } else {
                Due::At(e.tag)
            }
        });
        let mut due = std::mem::take(&mut self.due);
        for e in due.drain(..) {
            let s = e.id as usize;
            let slot = self.slots[s];
            if slot.flags & flag::IN_USE == 0 {
                continue;
            }
            let released = slot.flags & flag::RELEASED != 0;
            if released && e.tag == slot.user && not_after(slot.user, tick) {
                self.stats.linger_resets += 1;
                sock_mut(&mut self.sockets[s], self.handle).abort();
                self.process(s, now, sender, None);
            } else if e.tag == slot.timer {
                self.slots[s].timer = NO_TIMER;
                self.stats.timer_fires += 1;
                self.process(s, now, sender, None);
            }
        }
        self.due = due;
    }

    /// Egress for every dirty slot.
    fn drain_dirty<S: crate::link::Sender>(&mut self, now: Instant, sender: &mut S) {
        self.now = now;
        let mut dirty = std::mem::take(&mut self.dirty);
        let mut next = self.dirty_next;
        while next < dirty.len() {
            // The link is full: the rest waits for the next flush (after the kick drains the
            // ring). Going on would move every remaining socket through smoltcp only to find no
            // room, which made a broadcast to N connections cost N per ring-full of frames.
            if !sender.can_send() {
                break;
            }
            let s = dirty[next] as usize;
            next += 1;
            if self.slots[s].flags & flag::DIRTY == 0 {
                continue;
            }
            self.slots[s].flags &= !flag::DIRTY;
            self.process(s, now, sender, None);
        }
        // The unvisited tail stays where it is (a cursor, not a copy: after a broadcast the
        // list holds every connection, and the link takes a ring-full per flush). Slots marked
        // again while draining go behind it.
        if next == dirty.len() {
            dirty.clear();
            next = 0;
        } else if next > dirty.len() / 2 {
            dirty.drain(..next);
            next = 0;
        }
        dirty.append(&mut self.dirty);
        self.dirty = dirty;
        self.dirty_next = next;
    }

    /// Copy buffered bytes into `buf` without consuming them (both parts of the ring).
    fn peek(&mut self, id: ConnId, buf: &mut [u8]) -> usize {
        let Some(s) = self.owned(id) else { return 0 };
        sock_mut(&mut self.sockets[s], self.handle).peek_slice(buf).unwrap_or(0)
    }

    fn read_with(&mut self, id: ConnId, f: impl FnOnce(&mut [u8]) -> usize) -> usize {
        let Some(s) = self.owned(id) else { return 0 };
        let sock = sock_mut(&mut self.sockets[s], self.handle);
        let n = sock.recv(|buf| {
            let n = f(buf).min(buf.len());
            (n, n)
        });
        let n = n.unwrap_or(0);
        let peer_done = !sock.may_recv() || fin_received(sock.state());
        if n > 0 {
            // The window opened: let the peer know at the next flush.
            self.mark_dirty(s);
        }
        if peer_done && self.slots[s].flags & (flag::CLOSED_SENT | flag::ESTABLISHED) == flag::ESTABLISHED {
            self.report_closed(s, CloseReason::PeerClosed);
        }
        n
    }

    fn write(&mut self, id: ConnId, data: &[u8]) -> usize {
        let Some(s) = self.owned(id) else { return 0 };
        let n = sock_mut(&mut self.sockets[s], self.handle)
            .send_slice(data)
            .unwrap_or(0);
        if n < data.len() {
            self.slots[s].flags |= flag::WANT_WRITE;
        }
        if n > 0 {
            self.mark_dirty(s);
        }
        n
    }

    fn connect(&mut self, remote: SocketAddrV4) -> Result<ConnId, ConnectError> {
        let sources = self.config.source_addrs.len();
        if sources == 0 {
            return Err(ConnectError::NoSourceAddress);
        }
        if self.free_head == NO_SLOT {
            return Err(ConnectError::NoCapacity(self.config.max_conns));
        }
        let s = self.free_head as usize;
        let (lo, hi) = self.config.source_ports;
        let span = usize::from(hi - lo) + 1;
        // Walk (address, port) pairs round-robin from where the last connect stopped; each probe
        // is one table lookup, and the walk ends after one full round.
        let mut found = None;
        for _ in 0..sources * span {
            let (ai, port) = self.next_source;
            self.next_source = if port >= hi {
                ((ai + 1) % sources, lo)
            } else {
                (ai, port + 1)
            };
            let t = FourTuple::new((self.config.source_addrs[ai], port), (*remote.ip(), remote.port()));
            if self.table.get(&t, &self.tuples).is_none() {
                found = Some(t);
                break;
            }
        }
        let t = found.ok_or(ConnectError::NoSourcePort(remote))?;
        let sock = sock_mut(&mut self.sockets[s], self.handle);
        sock.abort();
        let (laddr, lport) = t.local();
        sock.connect(
            self.iface.context(),
            (Ipv4Address::from(remote.ip().octets()), remote.port()),
            (Ipv4Address::from(laddr.octets()), lport),
        )
        .map_err(|e| ConnectError::Smoltcp(e.to_string()))?;
        self.take_free();
        self.tuples[s] = t;
        self.slots[s] = Slot {
            user: 0,
            timer: NO_TIMER,
            flags: flag::IN_USE | flag::IN_TABLE | flag::OWNED | flag::ACTIVE,
        };
        self.table.insert(s as u32, &self.tuples);
        self.stats.connects += 1;
        self.mark_dirty(s);
        Ok(ConnId(s as u32))
    }
}

/// Let smoltcp work on one socket in place: a one-slot `SocketSet` over its storage.
///
/// # Safety
/// `f` must not keep the set (swap it out, store it) nor remove the socket from it: the set's
/// type claims a 'static borrow of `slot`, which is only true for the duration of this call.
unsafe fn in_set<R>(slot: &mut SocketStorage<'static>, f: impl FnOnce(&mut SocketSet<'static>) -> R) -> R {
    // SAFETY: `SocketSet<'a>` wants its storage borrowed for as long as the sockets' own
    // lifetime, 'static here (their buffers are in the leaked arena). The set made over `slot`
    // is only lent to `f` and dropped before we return, so that 'static borrow of one slot never
    // outlives the real borrow `slot`, and nothing else reaches the slot meanwhile.
    let one: &'static mut [SocketStorage<'static>] = unsafe { std::slice::from_raw_parts_mut(slot as *mut _, 1) };
    let mut set = SocketSet::new(one);
    f(&mut set)
}

/// The TCP socket that lives in `slot`, for as long as `slot` is borrowed.
fn sock_mut<'a>(slot: &'a mut SocketStorage<'static>, handle: SocketHandle) -> &'a mut tcp::Socket<'static> {
    // SAFETY: the closure only takes the socket's address.
    let ptr: *mut tcp::Socket<'static> =
        unsafe { in_set(slot, |set| set.get_mut::<tcp::Socket<'static>>(handle) as *mut _) };
    // SAFETY: the socket is stored inside `slot` itself (the set only borrowed that slot), so
    // the pointer stays valid, and exclusive, for the borrow of `slot` the result is tied to.
    unsafe { &mut *ptr }
}

/// Whether the peer's FIN has been received in `state`.
fn fin_received(state: tcp::State) -> bool {
    matches!(
        state,
        tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing | tcp::State::TimeWait
    )
}

//! Two stacks joined by an in-memory wire, on a virtual clock.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::time::{Duration, Instant};
use stack::mem_link::{self, Impairments, MemLink};
use stack::{ConnId, Event, Stack, StackConfig};

pub const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const PORT: u16 = 8080;
pub const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
pub const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

pub fn server_config(max_conns: usize) -> StackConfig {
    StackConfig {
        max_conns,
        our_mac: SERVER_MAC,
        ..StackConfig::default()
    }
}

/// A client stack with `addrs` source addresses from 198.19.0.1 on.
pub fn client_config(max_conns: usize, addrs: u32) -> StackConfig {
    StackConfig {
        max_conns,
        addr: Ipv4Addr::new(198, 19, 0, 1),
        source_addrs: (0..addrs)
            .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 1)) + i))
            .collect(),
        our_mac: CLIENT_MAC,
        next_hop_mac: Some(SERVER_MAC),
        ..StackConfig::default()
    }
}

pub struct Pair {
    pub server: Stack<MemLink>,
    pub client: Stack<MemLink>,
    pub now: Instant,
    pub server_events: Vec<Event>,
    pub client_events: Vec<Event>,
}

impl Pair {
    pub fn new(server: StackConfig, client: StackConfig) -> Pair {
        Pair::with_wire(server, client, Impairments::default(), 1)
    }

    pub fn with_wire(server: StackConfig, client: StackConfig, impair: Impairments, seed: u64) -> Pair {
        let (a, b) = mem_link::pair(impair, seed);
        let now = Instant::from_millis(1_000);
        let mut server = Stack::new(server, a, now).expect("server config");
        server.listen(PORT);
        let client = Stack::new(client, b, now).expect("client config");
        Pair {
            server,
            client,
            now,
            server_events: Vec::new(),
            client_events: Vec::new(),
        }
    }

    /// One round: both poll (frames and timers), both flush. Returns frames moved.
    pub fn step(&mut self) -> usize {
        let mut n = self.server.poll(self.now, &mut self.server_events);
        self.server.flush(self.now);
        n += self.client.poll(self.now, &mut self.client_events);
        self.client.flush(self.now);
        n
    }

    /// Step until nothing moves and nothing is queued, advancing 1 ms per round; at most `limit`
    /// rounds.
    pub fn settle(&mut self, limit: usize) {
        for _ in 0..limit {
            let moved = self.step();
            let queued = self.server.link().inbound() + self.client.link().inbound();
            if moved == 0 && queued == 0 && !self.server.has_work() && !self.client.has_work() {
                return;
            }
            self.now += Duration::from_millis(1);
        }
    }

    /// Let `d` of virtual time pass, stepping every millisecond.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
            self.now += Duration::from_millis(1);
        }
        self.settle(1000);
    }

    pub fn connect(&mut self) -> ConnId {
        self.client.connect(SocketAddrV4::new(SERVER, PORT)).expect("connect")
    }

    /// Open `n` connections, keeping the wire short (a few thousand handshakes in flight at a
    /// time), and let them settle.
    pub fn connect_many(&mut self, n: usize) -> Vec<ConnId> {
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(self.connect());
            if ids.len() % 2000 == 0 {
                self.settle(100);
            }
        }
        self.settle(1000);
        ids
    }

    /// Connect and return (client id, server id).
    pub fn establish(&mut self) -> (ConnId, ConnId) {
        let c = self.connect();
        self.settle(1000);
        assert!(
            self.client_events.contains(&Event::Connected(c)),
            "{:?}",
            self.client_events
        );
        let s = self
            .server_events
            .iter()
            .find_map(|e| match e {
                Event::Accepted(id) => Some(*id),
                _ => None,
            })
            .expect("accepted");
        self.server_events.clear();
        self.client_events.clear();
        (c, s)
    }
}

/// Deterministic test bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Move `data` from one side to the other through the stacks' small buffers, writing as room
/// appears and reading as bytes arrive. `from_client` picks the direction.
pub fn transfer(p: &mut Pair, c: ConnId, s: ConnId, data: &[u8], from_client: bool, rounds: usize) -> Vec<u8> {
    let mut sent = 0;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..rounds {
        let (tx, tx_id, rx_id) = if from_client {
            (&mut p.client, c, s)
        } else {
            (&mut p.server, s, c)
        };
        if sent < data.len() {
            sent += tx.write(tx_id, &data[sent..]);
        }
        p.step();
        let rx = if from_client { &mut p.server } else { &mut p.client };
        loop {
            let n = rx.read(rx_id, &mut buf);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        if got.len() == data.len() {
            break;
        }
        p.now += Duration::from_millis(1);
    }
    got
}

/// A TCP/IPv4 frame as `mac` sends it, from `from` to `to`, with TCP `options` (whole 4-byte
/// words) and `payload`; both checksums filled (tests that need a bad one flip a byte after).
#[allow(clippy::too_many_arguments)]
pub fn tcp_frame(
    mac: [u8; 6],
    from: (Ipv4Addr, u16),
    to: (Ipv4Addr, u16),
    flags: u8,
    seq: u32,
    ack: u32,
    window: u16,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    use smoltcp::wire::{Ipv4Packet, TcpPacket};
    let doff = 20 + options.len();
    let total = 20 + doff + payload.len();
    let mut f = vec![0u8; 14 + total];
    f[0..6].copy_from_slice(&SERVER_MAC);
    f[6..12].copy_from_slice(&mac);
    f[12] = 0x08;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&(total as u16).to_be_bytes());
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&from.0.octets());
    f[30..34].copy_from_slice(&to.0.octets());
    f[34..36].copy_from_slice(&from.1.to_be_bytes());
    f[36..38].copy_from_slice(&to.1.to_be_bytes());
    f[38..42].copy_from_slice(&seq.to_be_bytes());
    f[42..46].copy_from_slice(&ack.to_be_bytes());
    f[46] = ((doff / 4) as u8) << 4;
    f[47] = flags;
    f[48..50].copy_from_slice(&window.to_be_bytes());
    f[54..54 + options.len()].copy_from_slice(options);
    f[54 + options.len()..].copy_from_slice(payload);
    TcpPacket::new_unchecked(&mut f[34..]).fill_checksum(&from.0.into(), &to.0.into());
    Ipv4Packet::new_unchecked(&mut f[14..34]).fill_checksum();
    f
}

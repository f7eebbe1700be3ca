//! How a stack is sized and tuned. Everything per connection is allocated from these numbers at
//! start-up.

use std::net::Ipv4Addr;

use smoltcp::time::Duration;

/// The largest MTU a stack accepts.
pub const MAX_MTU: usize = 9000;

#[derive(Clone, Debug)]
pub struct StackConfig {
    /// Connections held at most (every state, TIME-WAIT included). Also the accept backlog: a
    /// SYN past it is refused.
    pub max_conns: usize,
    /// Receive buffer per connection, bytes. It is also the advertised window.
    pub rx_buf: usize,
    /// Send buffer per connection, bytes.
    pub tx_buf: usize,
    /// Our address (the server's, or the first of the client pool) and its prefix length.
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    /// Client mode: source addresses for `connect`, and the source port range on each.
    pub source_addrs: Vec<Ipv4Addr>,
    pub source_ports: (u16, u16),
    pub our_mac: [u8; 6],
    /// The next hop's MAC; learned from the first frame received when `None`.
    pub next_hop_mac: Option<[u8; 6]>,
    pub mtu: usize,
    /// Verify IPv4 and TCP checksums of received frames. Frames sent by the kernel over a veth
    /// with TX checksum offload on carry partial checksums; the testbed turns the offload off.
    pub verify_rx_checksum: bool,
    /// Give up on a connection whose peer stops acknowledging (or answering SYN-ACKs) for this long.
    pub tcp_timeout: Duration,
    /// TCP keep-alive interval; `None` (the default) sends none, so idle connections cost nothing.
    /// When set, a peer that answers no probe for `tcp_timeout` is given up.
    pub keep_alive: Option<Duration>,
    /// A connection the application closed must be gone by then (FIN-WAIT-2 has no other timeout).
    pub close_linger: Duration,
    /// Frames taken from the link per `poll`.
    pub rx_batch: usize,
    /// Back the socket slab and the buffer arena with transparent huge pages (fewer TLB misses
    /// at a million connections; slots are handed out from the start, so little is wasted).
    pub huge_pages: bool,
}

impl Default for StackConfig {
    fn default() -> Self {
        StackConfig {
            max_conns: 1024,
            rx_buf: 512,
            tx_buf: 512,
            addr: Ipv4Addr::new(198, 18, 0, 1),
            prefix_len: 15,
            source_addrs: Vec::new(),
            source_ports: (1024, 65535),
            our_mac: [0x02, 0, 0, 0, 0, 0x01],
            next_hop_mac: None,
            mtu: 1500,
            verify_rx_checksum: true,
            tcp_timeout: Duration::from_secs(30),
            keep_alive: None,
            close_linger: Duration::from_secs(60),
            rx_batch: 64,
            huge_pages: true,
        }
    }
}

impl StackConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_conns == 0 || self.max_conns > 1 << 28 {
            return Err(format!(
                "max_conns must be 1..={} (got {})",
                1usize << 28,
                self.max_conns
            ));
        }
        for (name, v) in [("rx_buf", self.rx_buf), ("tx_buf", self.tx_buf)] {
            if !(64..=1 << 20).contains(&v) {
                return Err(format!("{name} must be 64..=1048576 bytes (got {v})"));
            }
        }
        if !(576..=MAX_MTU).contains(&self.mtu) {
            return Err(format!("mtu must be 576..={MAX_MTU} (got {})", self.mtu));
        }
        if self.prefix_len > 32 {
            return Err(format!("prefix length must be 0..=32 (got {})", self.prefix_len));
        }
        let (lo, hi) = self.source_ports;
        if lo == 0 || lo > hi {
            return Err(format!("source port range {lo}-{hi} is empty or starts at 0"));
        }
        if let Some(k) = self.keep_alive {
            if k >= self.tcp_timeout {
                return Err(format!(
                    "keep_alive ({k}) must be shorter than tcp_timeout ({}): answered probes are what keeps an idle connection from timing out",
                    self.tcp_timeout
                ));
            }
        }
        if self.rx_batch == 0 {
            return Err("rx_batch must be at least 1".into());
        }
        if !self.addr.is_unspecified() && (self.addr.is_multicast() || self.addr.is_broadcast()) {
            return Err(format!("{} is not a unicast address", self.addr));
        }
        if self.addr.is_unspecified() {
            return Err("the stack needs an address".into());
        }
        Ok(())
    }
}

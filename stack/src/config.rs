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
    /// Give up on a handshake, or a keep-alive probe, that gets no answer for this long.
    pub tcp_timeout: Duration,
    /// Give up on a connection whose peer acknowledges none of the data in flight for this long.
    /// Longer than `tcp_timeout`: a reading peer behind an overloaded path can go tens of
    /// seconds without one of its ACKs getting through while retransmissions back off (Linux
    /// retries for about 15 minutes). A peer that is there but does not read (zero window)
    /// answers probes and is the application's to close.
    pub data_timeout: Duration,
    /// TCP keep-alive interval; `None` (the default) sends none, so idle connections cost nothing.
    /// When set, a peer that answers no probe for `tcp_timeout` is given up.
    pub keep_alive: Option<Duration>,
    /// A connection the application closed must be gone by then (FIN-WAIT-2 has no other timeout).
    pub close_linger: Duration,
    /// Frames taken from the link per `poll`.
    pub rx_batch: usize,
    /// Frames the stack may send from its dirty list ahead of what comes back: an ACK clock
    /// across all connections (each frame received for a connection earns one more). A
    /// broadcast writes into a million send buffers at once; sent all at once it would overrun
    /// the receive rings of both sides, whose drops then cost retransmissions and, under
    /// backoff, connections. Retransmissions by timer are not held back (they restart the
    /// clock after loss), and a quarter of the window comes back every 5 ms whatever arrives.
    /// 0: no limit.
    pub egress_window: u32,
    /// Handshakes that may hold a slot while pending; past this, SYNs are answered with SYN
    /// cookies and cost nothing until their ACK comes (`stack/cookie.rs`). `None`: a sixteenth
    /// of `max_conns`, at least 16. 0: cookies always.
    pub max_half_open: Option<usize>,
    /// Connections kept in TIME-WAIT at once, outside the slots (~60 bytes each while used);
    /// past this the oldest ends early (Linux's `tcp_max_tw_buckets`). `None`: `max_conns`, at
    /// least 65,536.
    pub max_time_waits: Option<usize>,
    /// Resend the earliest unacknowledged segment this long after data left with nothing
    /// acknowledged since (a tail-loss probe, `stack/tail_probe.rs`); smoltcp's own timeout is at
    /// least 1 s. `None`: off. At least 10 ms.
    pub tail_probe: Option<Duration>,
    /// Slots one remote address may hold at once (passive connections, handshakes included);
    /// past it a SYN (or a cookie's ACK) is refused with RST. `None`: no limit.
    pub max_per_source: Option<u32>,
    /// Back the socket slab and the connection tables with transparent huge pages (fewer TLB
    /// misses at a million connections; slots are handed out from the start, so little is
    /// wasted). The buffer arena too when `release_idle_buffers` is off (its pages are released
    /// one by one otherwise).
    pub huge_pages: bool,
    /// Give the pages of buffers that stayed empty this long back to the kernel
    /// (`stack/residency.rs`): an idle connection then costs no buffer memory. `None`: keep them.
    pub release_idle_buffers: Option<Duration>,
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
            data_timeout: Duration::from_secs(120),
            keep_alive: None,
            close_linger: Duration::from_secs(60),
            rx_batch: 64,
            // Measured at 1M connections (README): 4,096 held a 100 B broadcast to 4.3 s and
            // 1 KiB to 30 s; 16,384 gives 2.2 s and 12 s with no more loss; 65,536 no better.
            egress_window: 16384,
            max_half_open: None,
            max_time_waits: None,
            max_per_source: None,
            tail_probe: Some(Duration::from_millis(200)),
            huge_pages: true,
            release_idle_buffers: Some(Duration::from_secs(1)),
        }
    }
}

impl StackConfig {
    /// Connections kept in TIME-WAIT at once (`max_time_waits`, resolved).
    pub fn time_wait_limit(&self) -> usize {
        self.max_time_waits.unwrap_or(self.max_conns.max(65_536))
    }

    /// Handshakes that may hold a slot (`max_half_open`, resolved).
    pub fn half_open_limit(&self) -> usize {
        self.max_half_open
            .unwrap_or((self.max_conns / 16).max(16).min(self.max_conns))
    }

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
        if self.data_timeout < Duration::from_secs(1) {
            return Err(format!("data_timeout must be at least 1s (got {})", self.data_timeout));
        }
        if self.tail_probe.is_some_and(|d| d < Duration::from_millis(10)) {
            return Err("tail_probe must be at least 10 ms (None to switch it off)".into());
        }
        if self.max_per_source == Some(0) {
            return Err("max_per_source must be at least 1 (None for no limit)".into());
        }
        if self.max_half_open.is_some_and(|h| h > self.max_conns) {
            return Err(format!("max_half_open must be at most max_conns ({})", self.max_conns));
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

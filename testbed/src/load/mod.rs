//! The load generator: many WebSocket (or long-poll) clients spread over source addresses and
//! processes, each process an epoll loop over kernel sockets (one process may hold at most 20,000
//! files here), or one process on the userspace stack over AF_XDP. The parent process plans the
//! shards, shows progress, merges what the child processes report (counters and HDR histograms)
//! and writes the summary. A load process is three layers: `schedule.rs` decides when (pacing,
//! timeouts, rounds, hold, close), `session.rs` speaks the protocol of one connection, and
//! `kernel_child.rs` / `xdp_child.rs` do the I/O.

pub mod client;
pub mod hist;
pub mod kernel_child;
pub mod parent;
pub mod pattern;
pub mod schedule;
pub mod session;
pub mod sources;
pub mod tls;
pub mod xdp_child;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// What one child process does; the parent sends it as JSON in an environment variable.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChildPlan {
    pub index: usize,
    pub server: SocketAddr,
    /// Host header and request path.
    pub host: String,
    pub path: String,
    /// Global connection numbers `first .. first + count` (they pick device ids and sources).
    pub first: u64,
    pub count: u64,
    /// Source addresses; connection `n` binds `sources[n % len]` (empty: the kernel picks).
    pub sources: Vec<Ipv4Addr>,
    /// New connections per second for this child (0: as fast as possible).
    pub rate: f64,
    /// Handshakes in flight at most.
    pub concurrency: usize,
    pub connect_timeout_ms: u64,
    /// Hold the connections this long after this child finished connecting.
    pub hold_ms: u64,
    /// Give up on everything after this long.
    pub duration_ms: u64,
    /// Ping every connection this often (0: never).
    pub ping_interval_ms: u64,
    /// Send a data frame of `payload` bytes on every connection this often (0: never).
    pub send_interval_ms: u64,
    pub payload: usize,
    /// `?id=<prefix><n>` on every request.
    pub id_prefix: Option<String>,
    /// With ids: `&token=` minted for each id with this key.
    #[serde(default)]
    pub device_key: Option<Vec<u8>>,
    /// Long-poll (`GET /poll`) instead of WebSocket.
    pub poll: bool,
    /// End the hold once every open connection received this many broadcasts (0: hold it all).
    pub expect_broadcasts: u64,
    /// Run on the userspace stack over AF_XDP (one process for every connection).
    #[serde(default)]
    pub xdp: Option<XdpClient>,
    /// WebSocket over TLS (kernel stack only).
    #[serde(default)]
    pub tls: Option<tls::TlsPlan>,
}

/// The userspace-stack client's settings (`ws-load --stack xdp`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct XdpClient {
    /// The client veth (its XDP program steers everything the server sends to our socket).
    pub iface: String,
    /// The server's (next hop's) MAC; default: asked of the kernel's neighbour table.
    pub server_mac: Option<[u8; 6]>,
    pub rx_buf: usize,
    pub tx_buf: usize,
    /// How to attach the XDP program (native, generic, or auto = native with a fallback).
    #[serde(default)]
    pub xdp_mode: xdp_prog::Mode,
}

/// Why connections failed, by cause.
pub type Failures = BTreeMap<String, u64>;

/// Counters a child reports (progress lines and its final line).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChildCounters {
    pub attempted: u64,
    /// Connections that completed their handshake (WebSocket 101, or the first long-poll sent).
    pub established: u64,
    /// Established and still open.
    pub open: u64,
    pub failed: Failures,
    /// Open connections the server closed, by close code (`eof` when it just closed the TCP).
    pub closed_by_server: BTreeMap<String, u64>,
    pub messages: u64,
    /// Server pushes (messages with a timestamp): broadcasts plus targeted pushes.
    pub pushes: u64,
    pub broadcasts: u64,
    pub targeted: u64,
    /// Open connections that received --expect-broadcasts broadcasts.
    pub reached_expected: u64,
    pub bytes_in: u64,
    /// Bytes of pattern messages checked, and messages with a byte that was not the pattern's
    /// (or cut short).
    #[serde(default)]
    pub checked_bytes: u64,
    #[serde(default)]
    pub corrupt: u64,
    pub pings_sent: u64,
    pub pongs: u64,
    pub sent_frames: u64,
    pub echoes: u64,
    pub polls_sent: u64,
    pub polls_answered: u64,
    pub poll_timeouts: u64,
    /// CLOCK_MONOTONIC ns of the first attempt and the last established connection.
    pub first_attempt_ns: u64,
    pub last_established_ns: u64,
    /// CLOCK_MONOTONIC ns of the first and the last server message received.
    pub first_message_ns: u64,
    pub last_message_ns: u64,
    pub done_connecting: bool,
}

/// A child's last line.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChildFinal {
    pub counters: ChildCounters,
    /// Device numbers that received a targeted push (at most 1,000 listed).
    pub targeted_devices: Vec<u64>,
    /// base64 HDR histograms, microseconds.
    pub connect_us: String,
    pub push_latency_us: String,
    pub echo_rtt_us: String,
    pub cpu_user_s: f64,
    pub cpu_sys_s: f64,
    pub max_rss_bytes: u64,
    /// The userspace stack's link and TCP counters (xdp load process only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp: Option<XdpClientCounters>,
}

/// What the userspace-stack client's link and stack saw (drops explain latency tails).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct XdpClientCounters {
    pub link: stack::LinkCounters,
    pub stack: stack::StackStats,
    /// The stack's resident memory by structure when it was largest (read at every progress
    /// line), and the AF_XDP UMEM: where the load generator's bytes go.
    #[serde(default)]
    pub memory_peak: stack::MemoryReport,
    #[serde(default)]
    pub umem_bytes: u64,
}

/// One line a child writes on stdout.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ChildLine {
    Progress(Box<ChildCounters>),
    Final(Box<ChildFinal>),
}

/// Write one line for the parent, at once (it shows progress as the lines come).
fn emit(out: &mut impl Write, line: &ChildLine) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// The environment variable that carries a child's plan.
pub const CHILD_PLAN_ENV: &str = "WS_LOAD_CHILD_PLAN";

impl ChildCounters {
    pub fn add(&mut self, o: &ChildCounters) {
        self.attempted += o.attempted;
        self.established += o.established;
        self.open += o.open;
        for (k, v) in &o.failed {
            *self.failed.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.closed_by_server {
            *self.closed_by_server.entry(k.clone()).or_default() += v;
        }
        self.messages += o.messages;
        self.pushes += o.pushes;
        self.broadcasts += o.broadcasts;
        self.targeted += o.targeted;
        self.reached_expected += o.reached_expected;
        self.bytes_in += o.bytes_in;
        self.checked_bytes += o.checked_bytes;
        self.corrupt += o.corrupt;
        self.pings_sent += o.pings_sent;
        self.pongs += o.pongs;
        self.sent_frames += o.sent_frames;
        self.echoes += o.echoes;
        self.polls_sent += o.polls_sent;
        self.polls_answered += o.polls_answered;
        self.poll_timeouts += o.poll_timeouts;
        self.first_attempt_ns = match (self.first_attempt_ns, o.first_attempt_ns) {
            (0, x) | (x, 0) => x,
            (a, b) => a.min(b),
        };
        self.last_established_ns = self.last_established_ns.max(o.last_established_ns);
        self.first_message_ns = match (self.first_message_ns, o.first_message_ns) {
            (0, x) | (x, 0) => x,
            (a, b) => a.min(b),
        };
        self.last_message_ns = self.last_message_ns.max(o.last_message_ns);
        self.done_connecting &= o.done_connecting;
    }

    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::XdpClient;

    /// The attach mode crosses to the load process as a checked enum: a plan from an older
    /// parent without it means auto, and a mode that does not exist is refused, not guessed.
    #[test]
    fn the_xdp_mode_is_typed_across_the_process_boundary() {
        let plan = |mode: &str| {
            serde_json::from_str::<XdpClient>(&format!(
                r#"{{"iface":"c0","server_mac":null,"rx_buf":256,"tx_buf":256{mode}}}"#
            ))
        };
        assert_eq!(
            plan(r#","xdp_mode":"native""#).unwrap().xdp_mode,
            xdp_prog::Mode::Native
        );
        assert_eq!(plan("").unwrap().xdp_mode, xdp_prog::Mode::Auto);
        assert!(plan(r#","xdp_mode":"bogus""#).is_err());
    }
}

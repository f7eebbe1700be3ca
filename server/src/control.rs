//! The supervisor ↔ worker protocol: one JSON object per line over a pair of Unix stream sockets
//! (fd 3: supervisor → worker, fd 4: worker → supervisor). Control traffic is a few messages per
//! admin request, so readable JSON costs nothing that matters and makes debugging easy.
//!
//! Both ends use it (the supervisor in `supervisor/`, every worker in `worker.rs`), so it belongs
//! to neither.

use serde::{Deserialize, Serialize};

use crate::core::stats::CoreStats;

/// The file descriptors a worker finds its control channel on.
pub const FD_FROM_SUPERVISOR: i32 = 3;
pub const FD_TO_SUPERVISOR: i32 = 4;
/// An xdp worker's steering XSKMAP, passed by the supervisor (opening it by id would need
/// CAP_SYS_ADMIN).
pub const FD_XSKMAP: i32 = 5;

/// What a worker needs to know to start; sent as the first line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerConfig {
    pub index: usize,
    pub listen: std::net::SocketAddr,
    /// Connections this worker holds at most; past it new connections are refused with a reset.
    pub max_conns: usize,
    /// Connections one client address may hold in this worker; past it, a reset (None: no limit).
    #[serde(default)]
    pub max_conns_per_source: Option<u32>,
    /// The HS256 key device tokens are checked with (`--device-key-file`; None: ids unchecked).
    #[serde(default)]
    pub device_jwt_key: Option<crate::secret::Secret>,
    /// Browser origins allowed (`--allowed-origin`; empty: any).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Ids without a device key (`--insecure-ids`), and connections without an id.
    #[serde(default)]
    pub insecure_ids: bool,
    #[serde(default = "yes")]
    pub anonymous: bool,
    pub idle_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub poll_hold_ms: (u64, u64),
    pub echo: bool,
    pub max_frame: usize,
    pub max_message: usize,
    pub device_key: [u64; 2],
    pub seed: u64,
    /// Bytes of the worker's message log.
    pub log_size: usize,
    /// Milliseconds a connection may take no output before it is closed as a slow reader (0: off).
    #[serde(default)]
    pub write_timeout_ms: u64,
    /// Every broadcast of this run is numbered after this (`message::first_seq`, or the
    /// cluster's sequence when the node started).
    #[serde(default)]
    pub first_seq: u64,
    /// The node is part of a cluster (`--cluster`): device claims carry the id (the other nodes
    /// hash ids with keys of their own).
    #[serde(default)]
    pub cluster: bool,
    /// Tell the supervisor which devices this worker holds (its directory routes pushes and
    /// settles a device on two workers or nodes). Off for the one worker of a node outside a
    /// cluster: nothing to route or settle, and ~40 bytes per connection saved in the
    /// supervisor (measured at 10M).
    #[serde(default = "yes")]
    pub claims: bool,
    /// Started again after its predecessor on this index died: resources that predecessor held
    /// may take a moment to be freed by the kernel (an AF_XDP socket's queue), so opening them
    /// is retried for a while.
    #[serde(default)]
    pub restarted: bool,
    /// Serve on the userspace stack over AF_XDP instead of kernel sockets.
    #[cfg(feature = "xdp")]
    #[serde(default)]
    pub xdp: Option<crate::io::userspace::XdpWorkerConfig>,
}

#[cfg(test)]
impl WorkerConfig {
    /// A worker's settings for unit tests: the server's defaults, on loopback.
    pub fn for_tests() -> WorkerConfig {
        WorkerConfig {
            index: 0,
            listen: "127.0.0.1:0".parse().expect("a socket address"),
            max_conns: 1000,
            max_conns_per_source: None,
            device_jwt_key: None,
            allowed_origins: Vec::new(),
            insecure_ids: true,
            anonymous: true,
            idle_timeout_ms: 300_000,
            request_timeout_ms: 10_000,
            poll_hold_ms: (30_000, 30_000),
            echo: false,
            max_frame: 16 * 1024,
            max_message: 64 * 1024,
            device_key: [1, 2],
            seed: 1,
            log_size: 1 << 20,
            write_timeout_ms: 30_000,
            first_seq: 0,
            cluster: false,
            claims: true,
            restarted: false,
            #[cfg(feature = "xdp")]
            xdp: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ToWorker {
    Config(Box<WorkerConfig>),
    /// `payload` is the push JSON, which carries `seq` too; the log indexes broadcasts by it.
    Broadcast {
        req: u64,
        seq: u64,
        payload: String,
    },
    Push {
        req: u64,
        hash: u64,
        payload: String,
    },
    /// Another worker holds a newer connection for this device.
    Evict {
        hash: u64,
    },
    Stats {
        req: u64,
    },
    /// Liveness: answered with `Pong` as soon as the worker reads it.
    Ping {
        n: u64,
    },
    /// Refuse new requests (503), close the open connections with 1001 at `per_second`, then
    /// exit.
    Drain {
        per_second: f64,
    },
    Shutdown,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum FromWorker {
    Ready {
        pid: u32,
    },
    Failed {
        error: String,
    },
    Broadcast {
        req: u64,
        websockets: u64,
        polls: u64,
        fanout_us: u64,
    },
    Push {
        req: u64,
        /// Queued to the device's connection on this worker.
        queued: bool,
    },
    Stats {
        req: u64,
        stats: Box<WorkerStats>,
    },
    /// The device registered here at `at_ns` (CLOCK_MONOTONIC, comparable across processes);
    /// its id only in a cluster.
    Claim {
        hash: u64,
        at_ns: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    Release {
        hash: u64,
    },
    /// The answer to `Ping { n }`.
    Pong {
        n: u64,
    },
}

/// One worker's report for `/stats`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkerStats {
    pub index: usize,
    pub pid: u32,
    pub core: CoreStats,
    /// Per broadcast: from its arrival until no connection of this worker had it (or anything
    /// before it) waiting in the message log, in ms.
    #[serde(default)]
    pub log_lag_ms: crate::core::stats::MsHistogram,
    /// Connections refused because this worker was at `max_conns` or out of file descriptors.
    pub refused: u64,
    /// Connections refused because their address held `max_conns_per_source` already.
    #[serde(default)]
    pub refused_per_source: u64,
    /// Connections with output waiting in the message log (behind the newest broadcast, or with
    /// output of their own): 0 once everything queued has been handed to the transport.
    pub output_waiting: u64,
    /// Resident bytes of the message log (as far as it has been written, and its index: at most
    /// `--log-size` and a tenth).
    pub log_bytes: u64,
    /// Connections holding a partial request head or frame in a user-space buffer right now.
    pub buffered_conns: u64,
    /// Closed by the core, still flushing or waiting for the peer's FIN.
    pub lingering: u64,
    /// Time spent in timer ticks that expired at least one connection.
    pub expiry_busy_ns: u64,
    /// Connections expired in the last 10 seconds.
    pub expired_last_10s: u64,
    /// Heap bytes of the core's tables.
    pub core_heap_bytes: u64,
    pub rss_bytes: u64,
    pub open_fds: u64,
    pub fd_limit: u64,
    /// The userspace stack's side (xdp workers only).
    #[cfg(feature = "xdp")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp: Option<Box<crate::io::userspace::XdpWorkerStats>>,
}

/// Splits the supervisor's byte stream into commands.
#[derive(Default)]
pub struct ControlReader {
    buf: Vec<u8>,
}

impl ControlReader {
    /// Read what the non-blocking channel has. `Ok(false)`: the supervisor closed it.
    pub fn fill(&mut self, from: &mut dyn std::io::Read) -> std::io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match from.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next complete command, if a whole line is there.
    pub fn next_command(&mut self) -> Option<Result<ToWorker, serde_json::Error>> {
        let end = self.buf.iter().position(|&b| b == b'\n')?;
        let line: Vec<u8> = self.buf.drain(..=end).collect();
        Some(serde_json::from_slice(&line))
    }
}

/// Messages for the supervisor produced inside core calls (device claims and releases), held
/// until the call returns; every transport keeps one.
#[derive(Default)]
pub struct Outbox {
    pub msgs: Vec<FromWorker>,
    /// Claims carry the device id (a cluster node: `WorkerConfig::cluster`).
    pub ids: bool,
    /// No claims or releases at all (`WorkerConfig::claims` off).
    pub quiet: bool,
    /// The lines of one `send`, written at once (one system call for a loop's claims, not one
    /// per connection); kept for the next.
    pub buf: Vec<u8>,
}

impl Outbox {
    pub fn device_claimed(&mut self, hash: u64, id: &[u8]) {
        if self.quiet {
            return;
        }
        self.msgs.push(FromWorker::Claim {
            hash,
            at_ns: host::monotonic_ns(),
            // Ids are URL-safe ASCII (`http::device_id`): the conversion never replaces anything.
            id: self.ids.then(|| String::from_utf8_lossy(id).into_owned()),
        });
    }

    pub fn device_released(&mut self, hash: u64) {
        if self.quiet {
            return;
        }
        self.msgs.push(FromWorker::Release { hash });
    }

    /// Write them out, then `reply`.
    pub fn send(&mut self, out: &mut std::os::unix::net::UnixStream, reply: Option<FromWorker>) -> anyhow::Result<()> {
        use anyhow::Context;
        use std::io::Write;
        if self.msgs.is_empty() && reply.is_none() {
            return Ok(());
        }
        self.buf.clear();
        for msg in self.msgs.drain(..).chain(reply) {
            serde_json::to_writer(&mut self.buf, &msg).context("encoding a message to the supervisor")?;
            self.buf.push(b'\n');
        }
        out.write_all(&self.buf).context("writing to the supervisor")?;
        // A burst's worth is kept; a rare huge one is not held on to.
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
        Ok(())
    }
}

/// Write one message line to the supervisor.
pub fn send_line(out: &mut std::os::unix::net::UnixStream, msg: &FromWorker) -> std::io::Result<()> {
    use std::io::Write;
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)
}

/// Serde's default for fields that are on unless said otherwise.
fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_outbox_sends_no_claims_and_a_loud_one_batches_them_in_one_write() {
        let (mut ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut quiet = Outbox {
            quiet: true,
            ..Outbox::default()
        };
        quiet.device_claimed(1, b"a");
        quiet.device_released(1);
        assert!(quiet.msgs.is_empty());
        let mut loud = Outbox::default();
        loud.device_claimed(1, b"a");
        loud.device_claimed(2, b"b");
        loud.device_released(1);
        loud.send(&mut ours, None).unwrap();
        drop(ours);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut theirs, &mut text).unwrap();
        let kinds: Vec<FromWorker> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(matches!(
            kinds[..],
            [
                FromWorker::Claim { hash: 1, .. },
                FromWorker::Claim { hash: 2, .. },
                FromWorker::Release { hash: 1 }
            ]
        ));
    }

    #[test]
    fn messages_are_one_json_line() {
        let m = ToWorker::Push {
            req: 3,
            hash: 9,
            payload: "a\nb".into(),
        };
        let line = serde_json::to_string(&m).unwrap();
        assert!(!line.contains('\n'), "newlines inside strings are escaped");
        assert!(matches!(
            serde_json::from_str(&line).unwrap(),
            ToWorker::Push { req: 3, hash: 9, .. }
        ));
        let back: FromWorker = serde_json::from_str(r#"{"msg":"claim","hash":1,"at_ns":2}"#).unwrap();
        assert!(matches!(
            back,
            FromWorker::Claim {
                hash: 1,
                at_ns: 2,
                id: None
            }
        ));
    }
}

//! The server core, sans-I/O: events in (a connection opened, bytes arrived, the transport has room
//! again, the peer went away, the clock moved, an admin asked for a push), actions out through
//! [`Io`] (write these bytes, close this connection). It never touches a socket, so the same code
//! runs over the kernel stack, the userspace stack and the unit tests, which drive it with byte
//! slices and a fake clock.
//!
//! - `conn.rs`: the 32 bytes kept per connection, and its timers.
//! - `log.rs`, `output.rs`: every outgoing message stored once; what each connection writes next.
//! - `websocket.rs`: frames in, close handshakes.

#![forbid(unsafe_code)]

pub mod auth;
mod conn;
pub mod device;
pub mod frame;
pub mod http;
pub mod log;
pub mod message;
mod output;
pub use output::ECHO_ALLOWANCE_MESSAGES;
pub mod ratelog;
pub mod stats;
mod websocket;

use std::collections::HashMap;

use conn::{
    due_of, tag, tick_of, Conn, Ended, OutputChecks, Phase, Timeouts, GEN_MASK, MAX_BROADCAST_FRAME, TIMER_DEADLINE,
    TIMER_IDLE, TIMER_OUTPUT,
};
use device::{DeviceHasher, DeviceMap};
use frame::{close_code, Op, MAX_HEADER};
use http::{Credential, Parsed, Reject, Request, Response};
use log::{LogError, MessageLog, Resume};
use output::Targeted;
use ratelog::RateLimitedLog;
use stats::CoreStats;
use timing::wheel::{Due, Entry, TimerWheel};

/// A connection, as numbered by the transport (a file descriptor, a stack slot). The transport may
/// reuse a number once it reported the connection gone or was told to close it.
pub type ConnId = u32;

/// Actions the core asks of its transport.
pub trait Io {
    /// Take up to all of `bytes` for the connection now (what its send buffer has room for) and
    /// return how many were taken; the core keeps the rest. When it takes fewer than all, the
    /// transport calls [`ServerCore::writable`] once it has room again. A connection that failed
    /// takes nothing and is reported with [`ServerCore::closed`] after the core call.
    fn write(&mut self, id: ConnId, bytes: &[u8]) -> usize;
    /// Close after what was written (FIN). The core has forgotten the connection.
    fn close(&mut self, id: ConnId);
    /// Reset at once (RST); what was written and not sent is dropped. The core has forgotten
    /// the connection.
    fn abort(&mut self, id: ConnId);
    /// Whether the peer advertises a zero receive window (it is not reading). The write timeout
    /// closes only such a connection: a reading peer that is slow because the server or the
    /// network is overloaded is not a slow reader. A transport that cannot tell says `true`.
    fn peer_window_closed(&mut self, id: ConnId) -> bool;
    /// A device id (its hash) is now held by this core; a multi-process transport tells the others.
    fn device_claimed(&mut self, _hash: u64, _id: &[u8]) {}
    /// This core no longer holds the device id.
    fn device_released(&mut self, _hash: u64) {}
}

/// The core's clock ticks every 100 ms: fine enough for idle expiry and long-poll holds, and
/// coarse enough that the timer wheel is idle nearly always.
pub const TICK_MS: u64 = 100;
/// Slots of the timer wheel: 4096 ticks = 409.6 s per revolution; longer timers go round again.
const WHEEL_SLOTS: usize = 4096;
/// A connection the core closed must have sent its last output (a close frame, an HTTP answer)
/// within this, or it is reset: a peer that keeps its window shut would hold it forever.
const CLOSE_AFTER_OUTPUT_TICKS: u32 = 100;
/// A slice of a broadcast's fan-out: this much taken by the transport, or this many connections
/// looked at, whichever comes first (a few milliseconds of work either way).
const FANOUT_SLICE_BYTES: u64 = 4 << 20;
const FANOUT_SLICE_CONNS: usize = 65_536;
/// A held long-poll's origin grant when `--allowed-origin` is empty: its answer says `*`.
const ANY_ORIGIN: u16 = u16::MAX;
const FORBIDDEN_ORIGIN: &str = "this Origin may not connect (--allowed-origin)";

#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Close a connection that sent nothing for this long (0: never). Heartbeats reset it.
    pub idle_timeout_ms: u64,
    /// Hold a long-poll for a random time in this range (inclusive), unless a push answers it.
    pub poll_hold_ms: (u64, u64),
    /// Echo data frames back (seed 003's data rounds).
    pub echo: bool,
    /// Largest data frame payload accepted; the connection is closed with 1009 past it.
    pub max_frame: usize,
    /// Largest message (sum of its fragments).
    pub max_message: usize,
    /// Largest HTTP request head.
    pub max_request: usize,
    /// A request head must be complete this long after the connection opened (or after the last
    /// long-poll answer on a keep-alive connection); 408 and close otherwise (0: no limit). Idle
    /// expiry alone would let a client trickle a byte per heartbeat forever.
    pub request_timeout_ms: u64,
    pub device_hasher: DeviceHasher,
    /// Seed of the long-poll hold randomness.
    pub seed: u64,
    /// Bytes of the message log (every outgoing message, stored once); a connection that falls
    /// this far behind is closed as a slow reader.
    pub log_size: usize,
    /// A connection with output waiting that takes none of it for this long is closed as a slow
    /// reader too (0: only falling out of the log closes).
    pub write_timeout_ms: u64,
    /// Every broadcast of this run of the server is numbered after this (a `since` at or
    /// before it is from an earlier run).
    pub first_seq: u64,
    /// With a key, a device id is served only with a token that proves it (`auth.rs`).
    pub device_auth: Option<auth::DeviceAuth>,
    /// Browser origins allowed to connect (empty: any); a request without `Origin` (not a
    /// browser) is not asked.
    pub allowed_origins: Vec<Vec<u8>>,
    /// Without a device key: whether ids are taken on the client's word (`--insecure-ids`);
    /// otherwise a request with an id is refused `401`.
    pub insecure_ids: bool,
    /// Whether connections without an id (broadcast listeners) are served.
    pub anonymous: bool,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            idle_timeout_ms: 300_000,
            poll_hold_ms: (30_000, 90_000),
            echo: false,
            max_frame: 16 * 1024,
            max_message: 64 * 1024,
            max_request: 4096,
            request_timeout_ms: 10_000,
            device_hasher: DeviceHasher::random(),
            seed: 0x5eed,
            log_size: 4 << 20,
            write_timeout_ms: 30_000,
            first_seq: 0,
            device_auth: None,
            allowed_origins: Vec::new(),
            insecure_ids: true,
            anonymous: true,
        }
    }
}

/// What one broadcast was queued to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fanout {
    pub websockets: u64,
    pub polls: u64,
}

/// Why a broadcast or push was not queued at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("a broadcast frame of {0} bytes is over the 1 MiB a connection can track")]
    TooBig(usize),
}

pub struct ServerCore {
    cfg: CoreConfig,
    ticks: Timeouts,
    conns: Vec<Conn>,
    devices: DeviceMap,
    wheel: TimerWheel,
    /// Entries that came up in this tick; kept to reuse its capacity.
    fired: Vec<Entry>,
    stats: CoreStats,
    rng: fastrand::Rng,
    log: RateLimitedLog,
    now_ms: u64,
    /// Every outgoing message, stored once.
    msglog: MessageLog,
    /// Output for one connection each, waiting in the log.
    targeted: Targeted,
    /// WebSockets that have not yet written the newest broadcast (a count kept as cursors move,
    /// so knowing when a broadcast has left costs nothing per connection).
    behind: u64,
    /// Where the fan-out of the newest broadcasts goes on (`fan_out`); `None`: done.
    fanout_next: Option<usize>,
    /// Bytes the transport has taken from the log, ever (slices of a fan-out are measured in it).
    written: u64,
    /// Connections that resumed with a `since` newer than this log's newest broadcast (it was on
    /// its way here): they skip broadcasts up to it. Only such connections have an entry, until
    /// the first broadcast after their `since`.
    ahead: HashMap<ConnId, u64>,
    /// Draining (`start_draining`): new requests are refused (503), and `drain_some` closes the
    /// open connections a few at a time from `drain_cursor` on.
    draining: bool,
    drain_cursor: usize,
}

impl ServerCore {
    /// `capacity` is a hint: ids below it need no allocation later.
    pub fn new(cfg: CoreConfig, capacity: usize, now_ms: u64) -> ServerCore {
        let to_ticks = |ms: u64| ms.div_ceil(TICK_MS).min(u64::from(u32::MAX / 4)) as u32;
        let ticks = Timeouts {
            idle: to_ticks(cfg.idle_timeout_ms),
            request: to_ticks(cfg.request_timeout_ms),
            output: OutputChecks::new(to_ticks(cfg.write_timeout_ms)),
        };
        ServerCore {
            ticks,
            rng: fastrand::Rng::with_seed(cfg.seed),
            msglog: MessageLog::new(cfg.log_size, cfg.first_seq),
            ahead: HashMap::new(),
            draining: false,
            drain_cursor: 0,
            fanout_next: None,
            written: 0,
            targeted: Targeted::with_capacity(1024),
            behind: 0,
            cfg,
            conns: Vec::with_capacity(capacity),
            devices: DeviceMap::default(),
            wheel: TimerWheel::new(WHEEL_SLOTS, tick_of(now_ms)),
            fired: Vec::new(),
            stats: CoreStats::default(),
            log: RateLimitedLog::new(5),
            now_ms,
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &CoreStats {
        &self.stats
    }

    /// Heap bytes of the core's tables (connections, devices, timers), for the memory breakdown.
    pub fn heap_bytes(&self) -> usize {
        self.conns.capacity() * std::mem::size_of::<Conn>()
            + self.devices.capacity() * (std::mem::size_of::<(u64, u32)>() + 1)
            + self.wheel.heap_bytes()
            + self.fired.capacity() * std::mem::size_of::<Entry>()
            + self.targeted.heap_bytes()
            + self.ahead.capacity() * (std::mem::size_of::<(ConnId, u64)>() + 1)
    }

    /// Resident bytes of the message log (its ring as far as it was written, and its index).
    pub fn log_bytes(&self) -> usize {
        self.msglog.resident_bytes()
    }

    /// Connections with output waiting in the log: behind the newest broadcast, or with output
    /// of their own. 0: everything queued has been handed to the transport.
    pub fn output_behind(&self) -> u64 {
        self.behind + self.targeted.waiting() as u64
    }

    /// WebSockets that have not yet written the newest broadcast.
    pub fn broadcast_behind(&self) -> u64 {
        self.behind
    }

    pub fn device_hash(&self, id: &[u8]) -> u64 {
        self.cfg.device_hasher.hash(id)
    }

    /// Whether `id` is a live connection.
    pub fn is_open(&self, id: ConnId) -> bool {
        self.conns.get(id as usize).is_some_and(|c| c.phase() != Phase::Free)
    }

    /// The transport accepted a connection.
    pub fn open(&mut self, id: ConnId, now_ms: u64, io: &mut impl Io) {
        self.now_ms = now_ms;
        let idx = id as usize;
        if idx >= self.conns.len() {
            self.conns.resize(idx + 1, Conn::FREE);
        }
        if self.conns[idx].phase() != Phase::Free {
            // The transport reused an id it never reported closed: end the old connection first.
            ::log::error!("transport reopened live connection {id}; treating the old one as closed");
            self.closed(id, now_ms, io);
        }
        let now = tick_of(now_ms);
        let c = &mut self.conns[idx];
        let gen = (c.gen + 1) & GEN_MASK;
        *c = Conn {
            gen,
            last_active: now,
            // Unused until the upgrade: when it was accepted (ms, wrapping), for the handshake
            // time.
            cursor: now_ms as u32,
            ..Conn::FREE
        };
        c.set_phase(Phase::Http);
        self.stats.accepted += 1;
        self.stats.connections += 1;
        if self.ticks.idle > 0 {
            self.wheel.insert(
                now.wrapping_add(self.ticks.idle),
                Entry {
                    id,
                    tag: tag(gen, TIMER_IDLE),
                },
            );
        }
        self.await_request(id);
    }

    /// The connection now waits for a request head: start its deadline.
    fn await_request(&mut self, id: ConnId) {
        if self.ticks.request == 0 {
            return;
        }
        let c = &mut self.conns[id as usize];
        c.timed = tick_of(self.now_ms).wrapping_add(self.ticks.request);
        let entry = Entry {
            id,
            tag: tag(c.gen, TIMER_DEADLINE),
        };
        self.wheel.insert(c.timed, entry);
    }

    /// Bytes arrived. Returns how many were consumed; the rest (an incomplete request head or
    /// frame) must be presented again with more bytes behind it. Frames are unmasked in place.
    pub fn data(&mut self, id: ConnId, buf: &mut [u8], now_ms: u64, io: &mut impl Io) -> usize {
        self.now_ms = now_ms;
        let consumed = self.data_inner(id, buf, io);
        self.stats.bytes_in += consumed as u64;
        consumed
    }

    fn data_inner(&mut self, id: ConnId, buf: &mut [u8], io: &mut impl Io) -> usize {
        let Some(c) = self.conns.get_mut(id as usize) else {
            return buf.len();
        };
        if matches!(c.phase(), Phase::Free | Phase::Closing) || buf.is_empty() {
            // Closing: what the peer sends after we closed is dropped.
            return buf.len();
        }
        c.last_active = tick_of(self.now_ms);
        let mut pos = 0;
        loop {
            match self.conns[id as usize].phase() {
                Phase::Free | Phase::Closing => return buf.len(),
                // Only the first `max_request` bytes may hold the head. Parsing all of `buf` let a
                // head longer than that through when it came in one read, yet the same head cut into
                // two reads got 431 (found by tests/fuzz_wire.rs); now the answer (complete, malformed
                // or too large) is the same however the bytes were segmented.
                Phase::Http => match http::parse(&buf[pos..pos + (buf.len() - pos).min(self.cfg.max_request)]) {
                    Parsed::Partial => {
                        if buf.len() - pos > self.cfg.max_request {
                            self.reject(id, Reject::HeadersTooLarge, io);
                            return buf.len();
                        }
                        return pos;
                    }
                    Parsed::Complete { len, request } => {
                        pos += len;
                        self.request(id, request, io);
                    }
                },
                Phase::Poll => {
                    if pos < buf.len() {
                        self.reject(id, Reject::PipeliningNotSupported, io);
                        return buf.len();
                    }
                    return pos;
                }
                Phase::Ws => return self.frames(id, buf, pos, io),
            }
        }
    }

    fn request(&mut self, id: ConnId, request: Request<'_>, io: &mut impl Io) {
        if self.draining && !matches!(request, Request::Reject(_)) {
            self.stats.refused_draining += 1;
            return self.reject(id, Reject::Draining, io);
        }
        match request {
            Request::Upgrade {
                key,
                device,
                since,
                credential,
            } => {
                if !self.authorized(id, device, credential, io) {
                    return;
                }
                let response = Response::switching_protocols(key, credential.protocol);
                self.emit(id, &[response.as_bytes()], io);
                if !self.is_open(id) {
                    return;
                }
                let c = &mut self.conns[id as usize];
                let accepted = c.cursor;
                self.stats
                    .handshake_ms
                    .record(u64::from((self.now_ms as u32).wrapping_sub(accepted)));
                c.set_phase(Phase::Ws);
                c.cursor = self.msglog.next_entry() as u32;
                self.stats.upgrades += 1;
                self.stats.websockets += 1;
                if let Some(device) = device {
                    self.register_device(id, device, io);
                }
                if let Some(seq) = since {
                    self.resume(id, seq, io);
                }
            }
            Request::Poll {
                device,
                keep_alive,
                credential,
            } => {
                if !self.authorized(id, device, credential, io) {
                    return;
                }
                let grant = self.cors_grant(credential.origin);
                let (lo, hi) = self.cfg.poll_hold_ms;
                let hold = self.rng.u64(lo.min(hi)..=hi.max(lo));
                let deadline = tick_of(self.now_ms + hold);
                let c = &mut self.conns[id as usize];
                c.set_phase(Phase::Poll);
                c.set_keep_alive(keep_alive);
                c.set_poll_origin(grant);
                c.timed = deadline;
                let gen = c.gen;
                self.wheel.insert(
                    deadline,
                    Entry {
                        id,
                        tag: tag(gen, TIMER_DEADLINE),
                    },
                );
                self.stats.polls += 1;
                self.stats.polls_held += 1;
                if let Some(device) = device {
                    self.register_device(id, device, io);
                }
            }
            Request::Preflight { origin } => match origin.map(|o| self.cors_grant(Some(o))) {
                Some(grant) if grant != 0 => {
                    let response = Response::preflight(self.cors_header(grant).unwrap_or("*"));
                    self.emit(id, &[response.as_bytes()], io);
                    self.close(id, Ended::Server, io);
                }
                Some(_) => {
                    self.stats.origin_refused += 1;
                    self.reject(id, Reject::Forbidden(FORBIDDEN_ORIGIN), io);
                }
                None => self.reject(id, Reject::BadRequest("a CORS preflight without Origin"), io),
            },
            Request::Reject(reject) => self.reject(id, reject, io),
        }
    }

    /// Which origin a page may read an answer from: 0 when the request had no `Origin` or one
    /// not allowed, `ANY_ORIGIN` when no `--allowed-origin` was given, else the
    /// index + 1 of the allowed origin it matched.
    fn cors_grant(&self, origin: Option<&[u8]>) -> u16 {
        let (Some(origin), allowed) = (origin, &self.cfg.allowed_origins) else {
            return 0;
        };
        if allowed.is_empty() {
            return ANY_ORIGIN;
        }
        // At most a few origins are configured (`main.rs` caps the list below ANY_ORIGIN).
        allowed
            .iter()
            .position(|a| a.eq_ignore_ascii_case(origin))
            .and_then(|i| u16::try_from(i + 1).ok())
            .filter(|&grant| grant != ANY_ORIGIN)
            .unwrap_or(0)
    }

    /// The origin a grant names (`None` for no origin or for any).
    fn cors_origin(&self, grant: u16) -> Option<&str> {
        let allowed = self.cfg.allowed_origins.get((grant as usize).checked_sub(1)?)?;
        // Checked at start (`cli::parse_origin`); a longer one (a library user's) gets no header
        // rather than overflowing the answer's buffer.
        (allowed.len() <= http::MAX_ORIGIN).then_some(())?;
        std::str::from_utf8(allowed).ok()
    }

    /// The value of `Access-Control-Allow-Origin` for a grant, if any.
    fn cors_header(&self, grant: u16) -> Option<&str> {
        match grant {
            0 => None,
            ANY_ORIGIN => Some("*"),
            grant => self.cors_origin(grant),
        }
    }

    /// Whether the request may have its device id: with a device key, only with a token for that
    /// id; otherwise answered `401` (counted by reason) and closed. The device that holds the id
    /// keeps it: nothing of the refused request touches the directory. A page of an allowed
    /// origin can read the `401` (CORS), so that its script learns why.
    fn authorized(&mut self, id: ConnId, device: Option<&[u8]>, credential: Credential<'_>, io: &mut impl Io) -> bool {
        let grant = self.cors_grant(credential.origin);
        if credential.origin.is_some() && grant == 0 {
            self.stats.origin_refused += 1;
            self.reject(id, Reject::Forbidden(FORBIDDEN_ORIGIN), io);
            return false;
        }
        let refusal = match (&self.cfg.device_auth, device) {
            (None, None) | (Some(_), None) if self.cfg.anonymous => return true,
            (None, Some(_)) if self.cfg.insecure_ids => return true,
            (_, None) => {
                self.stats.anonymous_refused += 1;
                "this server serves devices only: /ws?id=DEVICE with its token"
            }
            (None, Some(_)) => {
                self.stats.ids_without_key += 1;
                "device ids need the server's device key (--device-key-file) or --insecure-ids"
            }
            (Some(auth), Some(device)) => {
                let Err(refusal) = auth.check(credential.token, device) else {
                    return true;
                };
                let counter = match refusal {
                    auth::Refusal::Missing => &mut self.stats.auth_missing,
                    auth::Refusal::Malformed | auth::Refusal::BadClaims => &mut self.stats.auth_malformed,
                    auth::Refusal::Expired | auth::Refusal::NotYetValid => &mut self.stats.auth_expired,
                    auth::Refusal::BadSignature => &mut self.stats.auth_bad_signature,
                    auth::Refusal::WrongDevice => &mut self.stats.auth_wrong_device,
                };
                *counter += 1;
                refusal.reason()
            }
        };
        self.stats.rejected_requests += 1;
        // Which id was refused helps an operator find the device (or the attacker) in the log;
        // at most 64 bytes of it, escaped.
        let named = device.map_or(&[][..], |d| &d[..d.len().min(64)]);
        self.log.warn(
            self.now_ms,
            format_args!("conn {id}: refused device id \"{}\": {refusal}", named.escape_ascii()),
        );
        let cors = self.cors_header(grant);
        let response = Response::reject_with_cors(Reject::Unauthorized(refusal), cors);
        self.emit(id, &[response.as_bytes()], io);
        self.close(id, Ended::Server, io);
        false
    }

    fn reject(&mut self, id: ConnId, reject: Reject, io: &mut impl Io) {
        self.stats.rejected_requests += 1;
        self.log.warn(
            self.now_ms,
            format_args!("conn {id}: rejected request: {}", reject.reason()),
        );
        let response = Response::reject(reject);
        self.emit(id, &[response.as_bytes()], io);
        self.close(id, Ended::Server, io);
    }

    /// `?since=SEQ`: send the broadcasts after SEQ still in the log (the cursor goes back to the
    /// first of them), or one gap message when some of them are gone; the live ones follow.
    fn resume(&mut self, id: ConnId, seq: u64, io: &mut impl Io) {
        match self.msglog.resume_after(seq) {
            Resume::Ahead => {
                self.stats.resumed += 1;
                self.ahead.insert(id, seq);
            }
            Resume::From(entry) => {
                self.stats.resumed += 1;
                self.conns[id as usize].cursor = entry as u32;
                if entry < self.msglog.next_entry() {
                    self.behind += 1;
                }
                self.pump(id, io);
            }
            Resume::Gap { oldest } => {
                self.stats.resume_gaps += 1;
                let gap = message::format_gap(message::unix_ns(), seq, oldest);
                self.send_frame(id, true, Op::Text, gap.as_bytes(), io);
            }
        }
    }

    fn register_device(&mut self, id: ConnId, device: &[u8], io: &mut impl Io) {
        let hash = self.cfg.device_hasher.hash(device);
        let held = self.conns[id as usize].device;
        if held == hash {
            return;
        }
        if held != 0 {
            self.unregister_device(id, io);
        }
        match self.devices.insert(hash, id) {
            Some(older) if older != id => {
                // Seed 001: one connection per device; the newer one wins.
                self.stats.devices_replaced += 1;
                self.end_with_close_frame(older, close_code::REPLACED, "replaced by a newer connection", io);
            }
            _ => self.stats.devices += 1,
        }
        self.conns[id as usize].device = hash;
        io.device_claimed(hash, device);
    }

    fn unregister_device(&mut self, id: ConnId, io: &mut impl Io) {
        let c = &mut self.conns[id as usize];
        let hash = std::mem::take(&mut c.device);
        if hash != 0 && self.devices.get(&hash) == Some(&id) {
            self.devices.remove(&hash);
            self.stats.devices -= 1;
            io.device_released(hash);
        }
    }

    /// Close `id` from our side: counted now; its last targeted output (a close frame, an HTTP
    /// answer) still leaves, and then the transport closes it (`output.rs`, `pump`).
    fn close(&mut self, id: ConnId, ended: Ended, io: &mut impl Io) {
        if matches!(self.conns[id as usize].phase(), Phase::Free | Phase::Closing) {
            return;
        }
        self.end(id, ended, io);
        let c = &mut self.conns[id as usize];
        c.set_phase(Phase::Closing);
        c.timed = tick_of(self.now_ms).wrapping_add(CLOSE_AFTER_OUTPUT_TICKS);
        let entry = Entry {
            id,
            tag: tag(c.gen, TIMER_DEADLINE),
        };
        self.wheel.insert(c.timed, entry);
        self.pump(id, io);
    }

    /// Count the end of a connection and let go of its device id; its slot stays until `freed`.
    fn end(&mut self, id: ConnId, ended: Ended, io: &mut impl Io) {
        self.unregister_device(id, io);
        let c = self.conns[id as usize];
        if c.phase() == Phase::Ws && (self.full_cursor(c.cursor) != self.msglog.next_entry() || c.offset() > 0) {
            self.behind -= 1;
        }
        match c.phase() {
            Phase::Ws => self.stats.websockets -= 1,
            Phase::Poll => self.stats.polls_held -= 1,
            Phase::Http | Phase::Free | Phase::Closing => {}
        }
        self.stats.connections -= 1;
        self.stats.closed += 1;
        match ended {
            Ended::Peer => self.stats.closed_by_peer += 1,
            Ended::Client => self.stats.closed_by_client += 1,
            Ended::Server => self.stats.closed_by_server += 1,
            Ended::Expired => self.stats.expired += 1,
            Ended::SlowReader => self.stats.closed_by_server += 1,
        }
    }

    /// The connection is gone: drop its output, and give a fresh generation to its slot (its
    /// timer entries become stale); the transport may reuse the id.
    fn freed(&mut self, id: ConnId) -> Conn {
        self.targeted.forget(id);
        self.ahead.remove(&id);
        Conn {
            gen: (self.conns[id as usize].gen + 1) & GEN_MASK,
            ..Conn::FREE
        }
    }

    /// The transport resets the connection for a reason of its own (a spill buffer kept too
    /// long): counted as closed by the server, its device id let go.
    pub fn reset(&mut self, id: ConnId, now_ms: u64, io: &mut impl Io) {
        self.now_ms = now_ms;
        match self.conns.get(id as usize).map(|c| c.phase()) {
            None | Some(Phase::Free) => return,
            Some(Phase::Closing) => {}
            Some(_) => self.end(id, Ended::Server, io),
        }
        self.conns[id as usize] = self.freed(id);
        io.abort(id);
    }

    /// Bytes arrived that the transport keeps until a frame is whole (`io/userspace`): they
    /// count as a sign of life for idle expiry.
    pub fn heard_from(&mut self, id: ConnId, now_ms: u64) {
        self.now_ms = now_ms;
        if let Some(c) = self.conns.get_mut(id as usize) {
            c.last_active = tick_of(now_ms);
        }
    }

    /// Whether the connection is waiting for (the rest of) a request head.
    pub fn in_request(&self, id: ConnId) -> bool {
        self.conns.get(id as usize).is_some_and(|c| c.phase() == Phase::Http)
    }

    /// The transport lost the connection (FIN, RST, error). Unknown ids are ignored.
    pub fn closed(&mut self, id: ConnId, now_ms: u64, io: &mut impl Io) {
        self.now_ms = now_ms;
        match self.conns.get(id as usize).map(|c| c.phase()) {
            None | Some(Phase::Free) => return,
            // Already counted when we closed it.
            Some(Phase::Closing) => {}
            Some(_) => self.end(id, Ended::Peer, io),
        }
        self.conns[id as usize] = self.freed(id);
    }

    /// Run the timers due by `now_ms`: idle expiry and long-poll answers.
    pub fn tick(&mut self, now_ms: u64, io: &mut impl Io) {
        self.now_ms = now_ms;
        let now = tick_of(now_ms);
        let (conns, ticks, fired) = (&self.conns, self.ticks, &mut self.fired);
        self.wheel
            .advance(now, |entry, now| match due_of(conns, ticks, entry, now) {
                None => Due::Drop,
                Some(due) if due.wrapping_sub(now) as i32 <= 0 => {
                    fired.push(entry);
                    Due::Drop
                }
                Some(due) => Due::At(due),
            });
        let mut fired = std::mem::take(&mut self.fired);
        for entry in fired.drain(..) {
            // Firing one entry can end or change its connection, and two entries of one connection
            // can come due in the same tick (a stale long-poll entry beside a fresh one, or expiry
            // beside a poll deadline): decide again, on the state as it is now.
            if due_of(&self.conns, self.ticks, entry, now).is_none_or(|due| due.wrapping_sub(now) as i32 > 0) {
                continue;
            }
            self.fire(entry, io);
        }
        self.fired = fired;
    }

    fn fire(&mut self, entry: Entry, io: &mut impl Io) {
        let id = entry.id;
        match (entry.tag & 3, self.conns[id as usize].phase()) {
            (TIMER_IDLE, _) => self.end_with_close_frame(id, close_code::IDLE_TIMEOUT, "idle timeout", io),
            (TIMER_OUTPUT, _) => self.check_output(id, io),
            (_, Phase::Poll) => {
                self.stats.polls_timed_out += 1;
                self.answer_poll(id, br#"{"kind":"timeout"}"#, None, io);
            }
            (_, Phase::Closing) => {
                // Its last output did not leave in time: reset.
                self.stats.close_timeouts += 1;
                self.conns[id as usize] = self.freed(id);
                io.abort(id);
            }
            _ => {
                self.stats.request_timeouts += 1;
                self.reject(id, Reject::RequestTimeout, io);
            }
        }
    }

    /// Answer a held long-poll with `body`, or with the payload already stored in the log at
    /// `stored` (a broadcast's: never copied per connection).
    fn answer_poll(&mut self, id: ConnId, body: &[u8], stored: Option<(u64, u32)>, io: &mut impl Io) {
        let c = &self.conns[id as usize];
        let keep_alive = c.keep_alive();
        let cors = self.cors_header(c.poll_origin());
        let len = stored.map_or(body.len(), |(_, len)| len as usize);
        let head = Response::poll_answer_head(len, keep_alive, cors);
        match stored {
            Some((at, len)) => {
                self.emit(id, &[head.as_bytes()], io);
                if self.is_open(id) {
                    self.emit_stored(id, at, len, io);
                }
            }
            None => self.emit(id, &[head.as_bytes(), body], io),
        }
        if !self.is_open(id) {
            return;
        }
        self.stats.messages_out += 1;
        self.stats.polls_held -= 1;
        // Back to waiting for a request; without keep-alive the connection ends here.
        let c = &mut self.conns[id as usize];
        c.set_phase(Phase::Http);
        // The next request's handshake time counts from now, not from the first accept.
        c.cursor = self.now_ms as u32;
        if keep_alive {
            self.await_request(id);
        } else {
            self.close(id, Ended::Server, io);
        }
    }

    /// Queue a text message, with the server's sequence number `seq`, to every WebSocket and
    /// answer every held long-poll with it. The frame is stored once in the message log; each
    /// connection writes it from there as its transport takes it.
    pub fn broadcast(&mut self, payload: &[u8], seq: u64, now_ms: u64, io: &mut impl Io) -> Result<Fanout, PushError> {
        self.now_ms = now_ms;
        let mut header = [0u8; MAX_HEADER];
        let n = frame::encode_header(&mut header, true, Op::Text, payload.len(), None);
        if n + payload.len() > MAX_BROADCAST_FRAME {
            return Err(PushError::TooBig(n + payload.len()));
        }
        let entry = self.msglog.broadcast(seq, &header[..n], payload)?;
        let stored = self
            .msglog
            .entry(entry)
            .map(|b| (b.at + u64::from(b.header_len), payload.len() as u32));
        self.stats.broadcasts += 1;
        // Every WebSocket now has this one to write…
        self.behind = self.stats.websockets;
        // …but those that resumed ahead of this log and already have it.
        if !self.ahead.is_empty() {
            self.skip_ahead(entry, seq);
        }
        let fanout = Fanout {
            websockets: self.stats.websockets,
            polls: self.stats.polls_held,
        };
        self.stats.messages_out += fanout.websockets;
        self.stats.bytes_out += fanout.websockets * (n + payload.len()) as u64;
        // Held long-polls are answered now (they are few, and one that starts later must not
        // get this one); the WebSockets write it in slices (`fan_out`).
        if fanout.polls > 0 {
            for idx in 0..self.conns.len() {
                if self.conns[idx].phase() == Phase::Poll {
                    self.stats.polls_answered_by_push += 1;
                    self.answer_poll(idx as ConnId, payload, stored, io);
                }
            }
        }
        self.fanout_next = Some(0);
        self.fan_out(io);
        Ok(fanout)
    }

    /// Whether a broadcast is still being handed to the WebSockets that were caught up (call
    /// `fan_out` again, without waiting for the network).
    pub fn fan_out_pending(&self) -> bool {
        self.fanout_next.is_some()
    }

    /// Hand the newest broadcasts to the next slice of WebSockets (those in the middle of a frame
    /// are waiting for room and reach them in turn): at most `FANOUT_SLICE_BYTES` taken by the
    /// transport or `FANOUT_SLICE_CONNS` looked at, so that a large message to many connections
    /// does not hold the worker (timers, commands, input) for seconds.
    pub fn fan_out(&mut self, io: &mut impl Io) {
        let Some(start) = self.fanout_next else { return };
        let next_entry = self.msglog.next_entry() as u32;
        let written_before = self.written;
        let end = self.conns.len().min(start + FANOUT_SLICE_CONNS);
        let mut idx = start;
        while idx < end {
            let id = idx as ConnId;
            idx += 1;
            let c = self.conns[id as usize];
            // Those in the middle of a frame are waiting for room and are told when it comes.
            let waits = c.cursor != next_entry || self.targeted.holds(id);
            if matches!(c.phase(), Phase::Ws | Phase::Closing) && waits && c.offset() == 0 {
                self.pump(id, io);
                if self.written - written_before >= FANOUT_SLICE_BYTES {
                    break;
                }
            }
        }
        self.fanout_next = (idx < self.conns.len()).then_some(idx);
    }

    /// Connections that resumed ahead of the log skip broadcast `entry` (numbered `seq`) if they
    /// already have it; the first one after their `since` ends their waiting.
    fn skip_ahead(&mut self, entry: u64, seq: u64) {
        let conns = &mut self.conns;
        let behind = &mut self.behind;
        self.ahead.retain(|&id, &mut since| {
            if seq > since {
                return false;
            }
            let c = &mut conns[id as usize];
            if c.phase() == Phase::Ws && c.cursor == entry as u32 && c.offset() == 0 {
                c.cursor = c.cursor.wrapping_add(1);
                *behind -= 1;
            }
            true
        });
    }

    /// Queue a text message to the connection of one device. Returns whether it was queued (the
    /// device is connected here).
    pub fn push(&mut self, device: &[u8], payload: &[u8], now_ms: u64, io: &mut impl Io) -> bool {
        let hash = self.cfg.device_hasher.hash(device);
        self.push_hash(hash, payload, now_ms, io)
    }

    pub fn push_hash(&mut self, hash: u64, payload: &[u8], now_ms: u64, io: &mut impl Io) -> bool {
        self.now_ms = now_ms;
        let target = self
            .devices
            .get(&hash)
            .copied()
            .filter(|&id| self.conns[id as usize].device == hash);
        let queued = match target.map(|id| (id, self.conns[id as usize].phase())) {
            Some((id, Phase::Ws)) => {
                self.send_frame(id, true, Op::Text, payload, io);
                self.stats.messages_out += 1;
                true
            }
            Some((id, Phase::Poll)) => {
                self.stats.polls_answered_by_push += 1;
                self.answer_poll(id, payload, None, io);
                true
            }
            _ => false,
        };
        if queued {
            self.stats.pushes_queued += 1;
        } else {
            self.stats.pushes_missed += 1;
        }
        queued
    }

    /// Another core registered this device more recently: close our connection for it.
    pub fn evict_device(&mut self, hash: u64, now_ms: u64, io: &mut impl Io) -> bool {
        self.now_ms = now_ms;
        match self.devices.get(&hash).copied() {
            Some(id) => {
                self.stats.devices_replaced += 1;
                self.end_with_close_frame(id, close_code::REPLACED, "replaced by a newer connection", io);
                true
            }
            None => false,
        }
    }

    /// Close every connection (1001 Going Away on WebSockets).
    /// From now on, refuse new requests with 503 (a load balancer sends them elsewhere).
    pub fn start_draining(&mut self) {
        self.draining = true;
    }

    /// Close up to `n` clients (WebSockets with 1001 "server draining", held long-polls with
    /// `503`), going on where the last call stopped; connections that have not made a request yet
    /// are refused (`503`) as they are passed, outside `n`. Returns how many clients it closed,
    /// and whether none is left (a whole pass found no WebSocket and no held poll). Called a few
    /// times a second while draining only.
    pub fn drain_some(&mut self, n: u64, now_ms: u64, io: &mut impl Io) -> (u64, bool) {
        self.now_ms = now_ms;
        let len = self.conns.len();
        let mut closed = 0;
        for _ in 0..len {
            let idx = self.drain_cursor % len;
            let phase = self.conns[idx].phase();
            if matches!(phase, Phase::Ws | Phase::Poll) && closed == n {
                return (closed, false);
            }
            self.drain_cursor = idx + 1;
            let id = idx as ConnId;
            match phase {
                Phase::Free | Phase::Closing => {}
                Phase::Http => {
                    self.stats.refused_draining += 1;
                    self.reject(id, Reject::Draining, io);
                }
                Phase::Poll => {
                    self.reject(id, Reject::Draining, io);
                    closed += 1;
                }
                Phase::Ws => {
                    self.end_with_close_frame(id, close_code::GOING_AWAY, "server draining", io);
                    closed += 1;
                }
            }
        }
        (closed, closed == 0)
    }

    pub fn shutdown(&mut self, now_ms: u64, io: &mut impl Io) {
        self.now_ms = now_ms;
        for idx in 0..self.conns.len() {
            if !matches!(self.conns[idx].phase(), Phase::Free | Phase::Closing) {
                self.end_with_close_frame(idx as ConnId, close_code::GOING_AWAY, "server shutting down", io);
            }
        }
    }
}

#[cfg(test)]
mod tests;

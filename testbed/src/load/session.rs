//! One client connection's protocol, sans-I/O: what to send once TCP is up, how to read the
//! server's answers, pushes and frames, heartbeats and data rounds, and the close handshake. Both
//! load processes use it: the kernel-stack one (epoll over sockets) and the userspace-stack one
//! (AF_XDP). A transport implements [`Peer`]: the connection's protocol state and a way to send.

use hdrhistogram::Histogram;
use host::monotonic_ns;
use ws_server::core::frame::{self, close_code, Op, Role};
use ws_server::core::message;

use super::client::{self, Handshake, PollAnswer};
use super::pattern::{Check, Found};
use super::{hist, ChildCounters, ChildFinal, ChildPlan};

/// Largest server frame we accept (pushes are small; echoes are at most the payload size).
const MAX_SERVER_FRAME: usize = 16 << 20;
/// Targeted-push receivers listed by number in the final report, at most.
const MAX_LISTED_TARGETS: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Connecting,
    Handshake,
    Open,
    Polling,
    /// We sent our close frame (or FIN); waiting for the server's close or EOF.
    Closing,
    /// Ended and counted; only waiting to be dropped.
    Done,
}

/// A connection's protocol state.
#[derive(Clone, Copy, Debug)]
pub struct Proto {
    /// Global connection number: picks the device id, the source address and the handshake key.
    pub n: u64,
    pub state: State,
    /// CLOCK_MONOTONIC ns when the connect started (connect latency) or the last poll was sent.
    pub since_ns: u64,
    /// Broadcasts received (for --expect-broadcasts).
    pub broadcasts: u32,
    /// Bytes still to come of a server message larger than the transport can hold at once,
    /// read in pieces (0: none). Meanwhile `since_ns` holds its `ts`.
    pub stream_left: u32,
    /// The byte check of that message, and (top bit) whether it is a targeted push.
    pub stream_check: u32,
}

impl Proto {
    pub fn new(n: u64) -> Proto {
        Proto {
            n,
            state: State::Connecting,
            since_ns: monotonic_ns(),
            broadcasts: 0,
            stream_left: 0,
            stream_check: 0,
        }
    }
}

/// A connection as its transport holds it.
pub trait Peer {
    fn proto(&mut self) -> &mut Proto;
    /// Queue bytes for the server; `Fate::Drop` if the connection failed.
    fn send(&mut self, bytes: &[u8]) -> Fate;
    /// The most bytes the transport can present at once (a larger message is read in pieces).
    fn room(&self) -> usize {
        usize::MAX
    }
}

/// What the connection handlers share.
pub struct Shared {
    pub plan: ChildPlan,
    pub seed: u64,
    pub c: ChildCounters,
    pub connect_us: Histogram<u64>,
    pub push_latency_us: Histogram<u64>,
    pub echo_rtt_us: Histogram<u64>,
    pub targeted_devices: Vec<u64>,
    frame_buf: Vec<u8>,
    payload_buf: Vec<u8>,
    rng: fastrand::Rng,
    pub closing: bool,
    /// Connections in Connecting or Handshake: the concurrency bound counts these.
    pub handshaking: usize,
}

impl Shared {
    pub fn new(plan: ChildPlan) -> Shared {
        Shared {
            seed: fastrand::u64(..),
            c: ChildCounters::default(),
            connect_us: hist::new_histogram(),
            push_latency_us: hist::new_histogram(),
            echo_rtt_us: hist::new_histogram(),
            targeted_devices: Vec::new(),
            frame_buf: Vec::with_capacity(1024),
            payload_buf: Vec::new(),
            rng: fastrand::Rng::new(),
            closing: false,
            handshaking: 0,
            plan,
        }
    }
}

/// What a handler decided about its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Keep,
    Drop,
}

pub fn fail(c: &mut ChildCounters, cause: &str) {
    *c.failed.entry(cause.to_string()).or_default() += 1;
}

/// A connection attempt starts (counted whether or not the transport gets that far).
pub fn attempt(sh: &mut Shared) {
    sh.c.attempted += 1;
    if sh.c.first_attempt_ns == 0 {
        sh.c.first_attempt_ns = monotonic_ns();
    }
}

/// The schedule gave up on a connection still handshaking (`connect_timeout`, `handshake_timeout`).
pub fn timed_out(conn: &mut Proto, sh: &mut Shared, cause: &str) {
    fail(&mut sh.c, cause);
    set_state(conn, State::Done, sh);
}

/// Connection `n`'s long-poll request, as the plan says (host, id, token).
fn poll_request(req: &mut Vec<u8>, sh: &Shared, n: u64) {
    let plan = &sh.plan;
    client::poll_request(
        req,
        &plan.host,
        plan.id_prefix.as_deref(),
        plan.device_key.as_deref(),
        n,
    );
}

/// TCP is up: send the upgrade request (or the first long-poll).
pub fn connected<C: Peer>(conn: &mut C, sh: &mut Shared) -> Fate {
    let mut req = Vec::with_capacity(256);
    if sh.plan.poll {
        poll_request(&mut req, sh, conn.proto().n);
        set_state(conn.proto(), State::Polling, sh);
        sh.c.polls_sent += 1;
        established(conn.proto(), sh);
    } else {
        let key = client::key_for(conn.proto().n, sh.seed);
        client::upgrade_request(
            &mut req,
            &sh.plan.host,
            &sh.plan.path,
            sh.plan.id_prefix.as_deref(),
            sh.plan.device_key.as_deref(),
            conn.proto().n,
            &key,
        );
        set_state(conn.proto(), State::Handshake, sh);
    }
    conn.send(&req)
}

pub fn established(conn: &Proto, sh: &mut Shared) {
    let now = monotonic_ns();
    sh.c.established += 1;
    sh.c.open += 1;
    sh.c.last_established_ns = now;
    sh.connect_us.saturating_record(((now - conn.since_ns) / 1000).max(1));
}

/// Every state change goes through here, so the count of handshakes in flight stays exact.
pub fn set_state(conn: &mut Proto, to: State, sh: &mut Shared) {
    let shaking = |s: State| matches!(s, State::Connecting | State::Handshake);
    if shaking(conn.state) && !shaking(to) {
        sh.handshaking -= 1;
    }
    conn.state = to;
}

/// The connection stops counting as open (every path out of Open/Polling comes through here once).
pub fn leave_open(conn: &mut Proto, sh: &mut Shared) {
    if matches!(conn.state, State::Open | State::Polling) {
        sh.c.open -= 1;
        if sh.plan.expect_broadcasts > 0 && u64::from(conn.broadcasts) >= sh.plan.expect_broadcasts {
            sh.c.reached_expected -= 1;
        }
        set_state(conn, State::Closing, sh);
    }
}

/// The connection ended without our close handshake finishing: count why, once.
pub fn ended(conn: &mut Proto, sh: &mut Shared, how: &str) {
    match conn.state {
        State::Connecting | State::Handshake => fail(&mut sh.c, &format!("{how}_in_handshake")),
        State::Open | State::Polling => {
            *sh.c.closed_by_server.entry(how.to_string()).or_default() += 1;
            leave_open(conn, sh);
        }
        State::Closing | State::Done => {}
    }
    set_state(conn, State::Done, sh);
}

/// The server closed the TCP connection (or reset it).
pub fn eof(conn: &mut Proto, sh: &mut Shared, how: &str) -> Fate {
    ended(conn, sh, how);
    Fate::Drop
}

/// Consume what `buf` holds; returns the fate and the bytes used.
pub fn consume<C: Peer>(conn: &mut C, sh: &mut Shared, buf: &mut [u8]) -> (Fate, usize) {
    let mut pos = 0;
    loop {
        let streaming = conn.proto().stream_left > 0;
        let read = match conn.proto().state {
            State::Connecting | State::Done => return (Fate::Keep, pos),
            State::Handshake => upgrade_answer(conn, sh, &buf[pos..]),
            State::Polling => poll_answer(conn, sh, &buf[pos..]),
            State::Open | State::Closing if streaming => stream_piece(conn, sh, &buf[pos..]),
            State::Open | State::Closing => server_frame(conn, sh, &mut buf[pos..]),
        };
        match read {
            Read::Used(len) => pos += len,
            Read::Partial => return (Fate::Keep, pos),
            Read::End(fate) => return (fate, buf.len()),
        }
    }
}

/// What one handler made of the bytes at the front.
enum Read {
    /// A whole message of this many bytes, handled; more may follow.
    Used(usize),
    /// Not a whole message yet: wait for more bytes.
    Partial,
    /// The connection ends here (whatever is left is dropped with it).
    End(Fate),
}

/// The server's answer to our upgrade request.
fn upgrade_answer<C: Peer>(conn: &mut C, sh: &mut Shared, buf: &[u8]) -> Read {
    let key = client::key_for(conn.proto().n, sh.seed);
    match client::check_upgrade_response(buf, &key) {
        Handshake::Partial => Read::Partial,
        Handshake::Accepted { len } => {
            set_state(conn.proto(), State::Open, sh);
            established(conn.proto(), sh);
            Read::Used(len)
        }
        Handshake::Rejected(code) => {
            fail(&mut sh.c, &format!("http_{code}"));
            set_state(conn.proto(), State::Done, sh);
            Read::End(Fate::Drop)
        }
        Handshake::Invalid(_) => {
            fail(&mut sh.c, "bad_handshake");
            set_state(conn.proto(), State::Done, sh);
            Read::End(Fate::Drop)
        }
    }
}

/// The answer to a long-poll: a push or a timeout; then the next poll (unless closing).
fn poll_answer<C: Peer>(conn: &mut C, sh: &mut Shared, buf: &[u8]) -> Read {
    match client::parse_poll_answer(buf) {
        PollAnswer::Partial => Read::Partial,
        PollAnswer::Complete { len, status, body } => {
            let body = &buf[body];
            sh.c.polls_answered += 1;
            if status == 200 && body == br#"{"kind":"timeout"}"# {
                sh.c.poll_timeouts += 1;
            } else {
                message_seen(sh);
                record_push(conn.proto(), body, sh);
            }
            if sh.closing {
                leave_open(conn.proto(), sh);
                return Read::End(Fate::Drop);
            }
            let mut req = Vec::with_capacity(128);
            poll_request(&mut req, sh, conn.proto().n);
            sh.c.polls_sent += 1;
            if conn.send(&req) == Fate::Drop {
                return Read::End(eof(conn.proto(), sh, "error"));
            }
            Read::Used(len)
        }
        PollAnswer::Invalid(_) => {
            // Established already: a server fault, not a failed connection.
            ended(conn.proto(), sh, "bad_poll_answer");
            Read::End(Fate::Drop)
        }
    }
}

/// One WebSocket frame from the server: a message (push or echo), a ping, a pong or a close.
fn server_frame<C: Peer>(conn: &mut C, sh: &mut Shared, buf: &mut [u8]) -> Read {
    let f = match frame::decode(buf, Role::Client, MAX_SERVER_FRAME) {
        Ok(None) => return start_stream(conn, sh, buf),
        Ok(Some(f)) => f,
        Err(_) => {
            ended(conn.proto(), sh, "bad_server_frame");
            return Read::End(Fate::Drop);
        }
    };
    match f.op {
        Op::Text | Op::Binary | Op::Continue => {
            message_seen(sh);
            if let Some(sent) = client::parse_echo(f.payload) {
                sh.c.echoes += 1;
                sh.echo_rtt_us
                    .saturating_record((monotonic_ns().saturating_sub(sent) / 1000).max(1));
            } else {
                record_push(conn.proto(), f.payload, sh);
            }
        }
        Op::Ping => {
            sh.frame_buf.clear();
            client::masked_frame(&mut sh.frame_buf, Op::Pong, f.payload, sh.rng.u32(..).to_ne_bytes());
            let bytes = std::mem::take(&mut sh.frame_buf);
            let fate = conn.send(&bytes);
            sh.frame_buf = bytes;
            if fate == Fate::Drop {
                return Read::End(eof(conn.proto(), sh, "error"));
            }
        }
        Op::Pong => sh.c.pongs += 1,
        Op::Close => {
            if conn.proto().state == State::Open {
                let code = frame::parse_close(f.payload).ok().flatten();
                let key = code.map_or("no_code".to_string(), |c| c.to_string());
                *sh.c.closed_by_server.entry(key).or_default() += 1;
                leave_open(conn.proto(), sh);
                // Answer the close handshake, then we are done with this one.
                let mut reply = Vec::with_capacity(8);
                let echo = code.unwrap_or(close_code::NORMAL).to_be_bytes();
                client::masked_frame(&mut reply, Op::Close, &echo, sh.rng.u32(..).to_ne_bytes());
                let _ = conn.send(&reply);
            }
            return Read::End(Fate::Drop);
        }
    }
    Read::Used(f.wire_len)
}

/// A data message too large for the transport to present whole: read it in pieces, checking
/// every byte, and count it when its last byte is in (`Partial` if its header is not whole yet,
/// or it fits).
fn start_stream<C: Peer>(conn: &mut C, sh: &mut Shared, buf: &[u8]) -> Read {
    let Some((op, head, len)) = frame::header(buf) else {
        return Read::Partial;
    };
    let whole = head as u64 + len;
    // The first piece must hold the push's JSON head (its `ts` and where the data starts), or
    // as much of it as the buffer can.
    let preview = (len as usize).min(PREVIEW).min(conn.room().saturating_sub(head)).max(1);
    if whole <= conn.room() as u64 || buf.len() < head + preview || !matches!(op, Op::Text | Op::Binary) {
        return Read::Partial;
    }
    let payload = &buf[head..];
    let (check, found) = Check::start(payload);
    count_check(sh, found);
    let targeted = message::is_targeted(payload);
    let p = conn.proto();
    p.since_ns = message::parse_ts(payload).unwrap_or(0);
    p.stream_left = (len - payload.len() as u64) as u32;
    p.stream_check = check.bits() & !TARGETED | if targeted { TARGETED } else { 0 };
    Read::Used(buf.len())
}

/// Payload bytes a message read in pieces must show in its first piece: the push JSON's head
/// (`{"ts":…,"seq":…,"kind":…,"data":"pattern:`) is under 100 bytes.
const PREVIEW: usize = 128;

/// The top bit of `stream_check` (a `Check` never sets it): the message in pieces is a targeted
/// push.
const TARGETED: u32 = 1 << 31;

/// The next piece of a message read in pieces.
fn stream_piece<C: Peer>(conn: &mut C, sh: &mut Shared, buf: &[u8]) -> Read {
    if buf.is_empty() {
        return Read::Partial;
    }
    let p = conn.proto();
    let n = buf.len().min(p.stream_left as usize);
    let (check, found) = Check::from_bits(p.stream_check & !TARGETED).feed(&buf[..n]);
    count_check(sh, found);
    p.stream_left -= n as u32;
    p.stream_check = (p.stream_check & TARGETED) | check.bits();
    if p.stream_left == 0 {
        if check.truncated() {
            sh.c.corrupt += 1;
        }
        message_seen(sh);
        let (ts, targeted) = (p.since_ns, p.stream_check & TARGETED != 0);
        count_push(conn.proto(), ts, targeted, sh);
    }
    Read::Used(n)
}

fn count_check(sh: &mut Shared, found: Found) {
    sh.c.checked_bytes += found.checked;
    if found.corrupt {
        sh.c.corrupt += 1;
    }
}

/// Count a server message and when it came (messages per second over the receiving span).
fn message_seen(sh: &mut Shared) {
    let now = monotonic_ns();
    sh.c.messages += 1;
    if sh.c.first_message_ns == 0 {
        sh.c.first_message_ns = now;
    }
    sh.c.last_message_ns = now;
}

fn record_push(conn: &mut Proto, payload: &[u8], sh: &mut Shared) {
    let Some(ts) = message::parse_ts(payload) else {
        return;
    };
    let (check, found) = Check::start(payload);
    count_check(sh, found);
    if check.truncated() {
        sh.c.corrupt += 1;
    }
    count_push(conn, ts, message::is_targeted(payload), sh);
}

/// A push (stamped `ts`) has been received whole.
fn count_push(conn: &mut Proto, ts: u64, targeted: bool, sh: &mut Shared) {
    sh.c.pushes += 1;
    let now = message::unix_ns();
    sh.push_latency_us
        .saturating_record((now.saturating_sub(ts) / 1000).max(1));
    if targeted {
        sh.c.targeted += 1;
        if sh.targeted_devices.len() < MAX_LISTED_TARGETS {
            sh.targeted_devices.push(conn.n);
        }
    } else {
        sh.c.broadcasts += 1;
        conn.broadcasts += 1;
        let open = matches!(conn.state, State::Open | State::Polling);
        if open && sh.plan.expect_broadcasts > 0 && u64::from(conn.broadcasts) == sh.plan.expect_broadcasts {
            sh.c.reached_expected += 1;
        }
    }
}

/// A heartbeat ping or a data-round frame on an open connection.
pub fn periodic_frame<C: Peer>(conn: &mut C, sh: &mut Shared, is_ping: bool) -> Fate {
    if conn.proto().state != State::Open {
        return Fate::Keep;
    }
    sh.frame_buf.clear();
    let mask = sh.rng.u32(..).to_ne_bytes();
    if is_ping {
        client::masked_frame(&mut sh.frame_buf, Op::Ping, b"hb", mask);
    } else {
        client::echo_payload(&mut sh.payload_buf, monotonic_ns(), sh.plan.payload);
        client::masked_frame(&mut sh.frame_buf, Op::Binary, &sh.payload_buf, mask);
    }
    let bytes = std::mem::take(&mut sh.frame_buf);
    let fate = conn.send(&bytes);
    sh.frame_buf = bytes;
    // Counted only when it went out, so echoes and pongs compare with what was really sent.
    if fate == Fate::Keep {
        if is_ping {
            sh.c.pings_sent += 1;
        } else {
            sh.c.sent_frames += 1;
        }
    }
    fate
}

/// Start the close handshake on an open connection (`Keep`: wait for the server's answer) or
/// account for one that cannot have it (`Drop`).
pub fn begin_close<C: Peer>(conn: &mut C, sh: &mut Shared) -> Fate {
    match conn.proto().state {
        State::Open => {
            sh.frame_buf.clear();
            client::masked_frame(
                &mut sh.frame_buf,
                Op::Close,
                &close_code::NORMAL.to_be_bytes(),
                sh.rng.u32(..).to_ne_bytes(),
            );
            let bytes = std::mem::take(&mut sh.frame_buf);
            let fate = conn.send(&bytes);
            sh.frame_buf = bytes;
            leave_open(conn.proto(), sh);
            fate
        }
        State::Polling => {
            leave_open(conn.proto(), sh);
            Fate::Drop
        }
        State::Connecting | State::Handshake => {
            fail(&mut sh.c, "aborted_in_handshake");
            set_state(conn.proto(), State::Done, sh);
            Fate::Drop
        }
        State::Closing | State::Done => Fate::Keep,
    }
}

/// The last line a load process reports.
pub fn final_line(sh: &Shared) -> ChildFinal {
    let usage = rusage();
    ChildFinal {
        counters: sh.c.clone(),
        targeted_devices: sh.targeted_devices.clone(),
        connect_us: hist::encode(&sh.connect_us),
        push_latency_us: hist::encode(&sh.push_latency_us),
        echo_rtt_us: hist::encode(&sh.echo_rtt_us),
        cpu_user_s: usage.0,
        cpu_sys_s: usage.1,
        max_rss_bytes: usage.2,
        xdp: None,
    }
}

/// (user seconds, system seconds, max RSS bytes) of this process.
fn rusage() -> (f64, f64, u64) {
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (secs(ru.ru_utime), secs(ru.ru_stime), ru.ru_maxrss as u64 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transport that presents at most `room` bytes at once.
    struct Small {
        p: Proto,
        room: usize,
    }

    impl Peer for Small {
        fn proto(&mut self) -> &mut Proto {
            &mut self.p
        }
        fn send(&mut self, _: &[u8]) -> Fate {
            Fate::Keep
        }
        fn room(&self) -> usize {
            self.room
        }
    }

    fn shared() -> Shared {
        Shared::new(
            serde_json::from_value(serde_json::json!({
                "index": 0, "server": "127.0.0.1:1", "host": "h", "path": "/ws", "first": 0, "count": 1,
                "sources": [], "rate": 0.0, "concurrency": 1, "connect_timeout_ms": 1000, "hold_ms": 0,
                "duration_ms": 1000, "ping_interval_ms": 0, "send_interval_ms": 0, "payload": 0,
                "id_prefix": null, "poll": false, "expect_broadcasts": 1
            }))
            .unwrap(),
        )
    }

    /// Feed `wire` through a window of `room` bytes, as the userspace client does.
    fn feed(conn: &mut Small, sh: &mut Shared, wire: &[u8]) {
        let mut pos = 0;
        while pos < wire.len() {
            let end = (pos + conn.room).min(wire.len());
            let mut window = wire[pos..end].to_vec();
            let (fate, used) = consume(conn, sh, &mut window);
            assert_eq!(fate, Fate::Keep);
            assert!(used > 0, "stuck at {pos}");
            pos += used;
        }
    }

    /// Feed `wire` as a receive buffer of `room` bytes fills: it arrives in pieces of the sizes
    /// `arrivals` cycles through, and the session is shown everything buffered after each.
    fn feed_arrivals(conn: &mut Small, sh: &mut Shared, wire: &[u8], arrivals: &[usize]) {
        let (mut buffered, mut pos) = (Vec::new(), 0);
        for &size in arrivals.iter().cycle() {
            if pos == wire.len() && buffered.is_empty() {
                break;
            }
            let take = size.min(conn.room - buffered.len()).min(wire.len() - pos);
            buffered.extend_from_slice(&wire[pos..pos + take]);
            pos += take;
            let (fate, used) = consume(conn, sh, &mut buffered);
            assert_eq!(fate, Fate::Keep);
            buffered.drain(..used);
            assert!(take > 0 || used > 0, "stuck at {pos} with {} buffered", buffered.len());
        }
    }

    #[test]
    fn back_to_back_messages_arriving_in_any_pieces_are_read_whole_and_checked() {
        for arrivals in [&[256][..], &[1], &[7, 300, 13], &[500, 3], &[97]] {
            let mut sh = shared();
            let mut conn = Small {
                p: Proto::new(0),
                room: 512,
            };
            conn.p.state = State::Open;
            sh.c.open = 1;
            let mut wire = Vec::new();
            for (seq, len) in [4096, 4096, 300, 60_000, 100, 4096].into_iter().enumerate() {
                // The fourth is a large message that is not a pattern: nothing to check in it.
                let data = match seq {
                    3 => "x".repeat(len),
                    _ => super::super::pattern::text(len),
                };
                let msg = message::format_push(message::unix_ns(), seq as u64, message::Kind::Broadcast, Some(&data));
                frame::encode(&mut wire, true, Op::Text, msg.as_bytes(), None);
            }
            feed_arrivals(&mut conn, &mut sh, &wire, arrivals);
            assert_eq!(sh.c.broadcasts, 6, "{arrivals:?}");
            assert_eq!(sh.c.corrupt, 0, "{arrivals:?}");
            assert_eq!(
                sh.c.checked_bytes,
                (4096 * 3 + 300 + 100 - 5 * 8) as u64,
                "{arrivals:?}"
            );
            let latency = hist::decode(&hist::encode(&sh.push_latency_us)).unwrap();
            assert!(latency.max() < 60_000_000, "a timestamp read whole: {arrivals:?}");
        }
    }

    #[test]
    fn a_message_larger_than_the_window_is_read_in_pieces_and_checked() {
        let mut sh = shared();
        let mut conn = Small {
            p: Proto::new(0),
            room: 256,
        };
        conn.p.state = State::Open;
        sh.c.open = 1;
        let data = super::super::pattern::text(60_000);
        let msg = message::format_push(message::unix_ns(), 3, message::Kind::Broadcast, Some(&data));
        let mut wire = Vec::new();
        frame::encode(&mut wire, true, Op::Text, msg.as_bytes(), None);
        let small = message::format_push(message::unix_ns(), 4, message::Kind::Push, Some("hi"));
        frame::encode(&mut wire, true, Op::Text, small.as_bytes(), None);
        feed(&mut conn, &mut sh, &wire);
        assert_eq!((sh.c.broadcasts, sh.c.targeted, sh.c.messages), (1, 1, 2));
        assert_eq!(sh.c.checked_bytes, 60_000 - 8);
        assert_eq!(sh.c.corrupt, 0);
        assert_eq!(sh.c.reached_expected, 1);
        // One changed byte in the middle of the large one is found.
        let mut bad = wire.clone();
        bad[30_000] ^= 1;
        let mut conn = Small {
            p: Proto::new(0),
            room: 256,
        };
        conn.p.state = State::Open;
        feed(&mut conn, &mut sh, &bad);
        assert_eq!(sh.c.corrupt, 1);
    }
}

//! The client side of the protocol, sans-I/O: requests to write, responses and frames to parse.
//! The load generator keeps no per-connection copy of its handshake key: the key is derived from
//! the connection number, so the expected accept value can be recomputed when the answer comes.

use std::io::Write;

use base64::Engine;
use ws_server::core::frame::{self, Op};

/// The Sec-WebSocket-Key of connection `n`: 16 bytes from `n` and a per-run `seed`, in base64.
pub fn key_for(n: u64, seed: u64) -> String {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&n.to_le_bytes());
    raw[8..].copy_from_slice(&(seed ^ n.rotate_left(17)).to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// A device token for `sub` (HS256, `exp` 24 h from now), as `ws-server --device-key-file` checks.
pub fn mint(key: &[u8], sub: &str) -> String {
    mint_expiring(key, sub, 24 * 3600)
}

/// The same with `exp` `valid_for_s` seconds from now (negative: already expired).
pub fn mint_expiring(key: &[u8], sub: &str, valid_for_s: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let exp = now.saturating_add(valid_for_s).max(0);
    let claims = serde_json::json!({ "sub": sub, "exp": exp });
    // HS256 signs with a key of any length, and these claims always serialize.
    jsonwebtoken::EncodingKey::from_secret(key)
        .and_then(|k| jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &k))
        .expect("an HS256 token of a string and a number")
}

/// `?id=<prefix><n>`, and its `&token=` when a device key is given.
fn identify(out: &mut Vec<u8>, id: Option<&str>, device_key: Option<&[u8]>, n: u64) {
    if let Some(prefix) = id {
        let _ = write!(out, "?id={prefix}{n}");
        if let Some(key) = device_key {
            let _ = write!(out, "&token={}", mint(key, &format!("{prefix}{n}")));
        }
    }
}

/// Append the upgrade request of connection `n` to `out`.
#[allow(clippy::too_many_arguments)]
pub fn upgrade_request(
    out: &mut Vec<u8>,
    host: &str,
    path: &str,
    id: Option<&str>,
    device_key: Option<&[u8]>,
    n: u64,
    key: &str,
) {
    let _ = write!(out, "GET {path}");
    identify(out, id, device_key, n);
    let _ = write!(
        out,
        " HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
}

/// Append a long-poll request (keep-alive) to `out`.
pub fn poll_request(out: &mut Vec<u8>, host: &str, id: Option<&str>, device_key: Option<&[u8]>, n: u64) {
    let _ = write!(out, "GET /poll");
    identify(out, id, device_key, n);
    let _ = write!(out, " HTTP/1.1\r\nHost: {host}\r\n\r\n");
}

#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    Partial,
    /// 101 with the right accept key; the head is `len` bytes (frames may follow).
    Accepted {
        len: usize,
    },
    /// Another status.
    Rejected(u16),
    /// Not HTTP, or a 101 with a wrong or missing accept key.
    Invalid(&'static str),
}

pub fn check_upgrade_response(buf: &[u8], key: &str) -> Handshake {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Partial) => return Handshake::Partial,
        Ok(httparse::Status::Complete(len)) => len,
        Err(_) => return Handshake::Invalid("malformed HTTP response"),
    };
    match resp.code {
        Some(101) => {}
        Some(code) => return Handshake::Rejected(code),
        None => return Handshake::Invalid("no status"),
    }
    let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let accept = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"));
    match accept {
        Some(h) if h.value == expected.as_bytes() => Handshake::Accepted { len },
        Some(_) => Handshake::Invalid("wrong Sec-WebSocket-Accept"),
        None => Handshake::Invalid("101 without Sec-WebSocket-Accept"),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum PollAnswer {
    Partial,
    /// A complete response of `len` bytes whose body is `body`.
    Complete {
        len: usize,
        status: u16,
        body: std::ops::Range<usize>,
    },
    Invalid(&'static str),
}

pub fn parse_poll_answer(buf: &[u8]) -> PollAnswer {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Partial) => return PollAnswer::Partial,
        Ok(httparse::Status::Complete(len)) => len,
        Err(_) => return PollAnswer::Invalid("malformed HTTP response"),
    };
    let Some(status) = resp.code else {
        return PollAnswer::Invalid("no status");
    };
    let length = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok());
    let Some(length) = length.filter(|&l| l <= 1 << 20) else {
        return PollAnswer::Invalid("missing or huge Content-Length");
    };
    if buf.len() < head + length {
        return PollAnswer::Partial;
    }
    PollAnswer::Complete {
        len: head + length,
        status,
        body: head..head + length,
    }
}

/// Append a masked client frame carrying `payload`.
pub fn masked_frame(out: &mut Vec<u8>, op: Op, payload: &[u8], mask: [u8; 4]) {
    frame::encode(out, true, op, payload, Some(mask));
}

/// The payload of a data-round frame: a marker and the send time, padded to `len` bytes, so the
/// echo tells its round-trip time without any per-connection state.
pub fn echo_payload(out: &mut Vec<u8>, sent_ns: u64, len: usize) {
    out.clear();
    let _ = write!(out, "E{sent_ns:020}");
    out.resize(len.max(out.len()), b'.');
}

/// The send time of an echoed data-round frame.
pub fn parse_echo(payload: &[u8]) -> Option<u64> {
    let digits = payload.strip_prefix(b"E")?.get(..20)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ws_server::core::frame::{decode, Role};

    #[test]
    fn keys_are_valid_and_distinct() {
        let a = key_for(1, 42);
        assert_eq!(a.len(), 24);
        assert!(a.ends_with("=="));
        assert_ne!(a, key_for(2, 42));
        assert_ne!(a, key_for(1, 43));
    }

    #[test]
    fn upgrade_request_is_accepted_by_the_server_parser() {
        let key = key_for(7, 1);
        let mut req = Vec::new();
        upgrade_request(&mut req, "198.18.0.1:8080", "/ws", Some("dev-"), None, 7, &key);
        match ws_server::core::http::parse(&req) {
            ws_server::core::http::Parsed::Complete {
                request: ws_server::core::http::Request::Upgrade { key: k, device, .. },
                ..
            } => {
                assert_eq!(k, key.as_bytes());
                assert_eq!(device, Some(&b"dev-7"[..]));
            }
            other => panic!("{other:?}"),
        }
        let response = ws_server::core::http::Response::switching_protocols(key.as_bytes(), None);
        let mut wire = response.as_bytes().to_vec();
        let head = wire.len();
        wire.extend_from_slice(&[0x81, 0x01, b'x']);
        assert_eq!(check_upgrade_response(&wire, &key), Handshake::Accepted { len: head });
        assert_eq!(check_upgrade_response(&wire[..10], &key), Handshake::Partial);
        assert_eq!(
            check_upgrade_response(&wire, &key_for(8, 1)),
            Handshake::Invalid("wrong Sec-WebSocket-Accept")
        );
        assert_eq!(
            check_upgrade_response(b"HTTP/1.1 503 Busy\r\n\r\n", &key),
            Handshake::Rejected(503)
        );
    }

    #[test]
    fn poll_answers() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbodyHTTP/1.1";
        match parse_poll_answer(wire) {
            PollAnswer::Complete { len, status, body } => {
                assert_eq!((status, &wire[body]), (200, &b"body"[..]));
                assert_eq!(len, wire.len() - 8);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_poll_answer(&wire[..40]), PollAnswer::Partial);
        assert!(matches!(
            parse_poll_answer(b"HTTP/1.1 200 OK\r\n\r\n"),
            PollAnswer::Invalid(_)
        ));
    }

    #[test]
    fn masked_frames_decode_on_the_server_side_and_echo_payloads_parse() {
        let mut out = Vec::new();
        let mut payload = Vec::new();
        echo_payload(&mut payload, 123_456, 100);
        assert_eq!(payload.len(), 100);
        masked_frame(&mut out, Op::Binary, &payload, [1, 2, 3, 4]);
        let f = decode(&mut out, Role::Server, 1024).unwrap().unwrap();
        assert_eq!(parse_echo(f.payload), Some(123_456));
        assert_eq!(parse_echo(b"hello"), None);
    }
}

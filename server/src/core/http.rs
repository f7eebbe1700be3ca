//! The HTTP side of a connection: parse one request with `httparse`, decide what it is (a WebSocket
//! upgrade, a long-poll, or a rejection) and write the responses. No allocation: requests are parsed
//! in the caller's buffer and responses are formatted into a small stack buffer.

use std::io::Write;

/// Headers we look at; a request with more than this many is rejected (431).
const MAX_HEADERS: usize = 32;
/// A device id longer than this is rejected: ids are MACs, serials, UUIDs.
pub const MAX_DEVICE_ID: usize = 128;

/// What a complete request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// `GET /ws[?id=…][&since=SEQ]` with valid RFC 6455 §4.2.1 upgrade headers. `since`: the
    /// client has every broadcast up to that sequence number, and wants the ones after it.
    Upgrade {
        key: &'a [u8],
        device: Option<&'a [u8]>,
        since: Option<u64>,
        credential: Credential<'a>,
    },
    /// `GET /poll[?id=…]`: hold the request until a push or the hold timer.
    Poll {
        device: Option<&'a [u8]>,
        keep_alive: bool,
        credential: Credential<'a>,
    },
    /// `OPTIONS /poll`: a browser asking whether a page of `origin` may send its long-poll with
    /// an `Authorization` header (the CORS preflight). Answered, then the connection is closed.
    Preflight { origin: Option<&'a [u8]> },
    /// Anything else, with the status we answer; the connection is then closed.
    Reject(Reject),
}

/// What a request carries to prove its device id (`core/auth.rs` checks it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Credential<'a> {
    /// From `?token=`, `Authorization: Bearer`, or a `Sec-WebSocket-Protocol` value
    /// `bearer.<token>`, in that order.
    pub token: Option<&'a [u8]>,
    /// Another subprotocol the client offered next to a `bearer.<token>` one: the upgrade answers
    /// with it (a browser aborts a handshake whose answer names none it offered). Without a
    /// token among them nothing is answered: we speak no subprotocol of our own.
    pub protocol: Option<&'a [u8]>,
    /// The `Origin` a browser sends (RFC 6455 §10.2): checked against `--allowed-origin`.
    pub origin: Option<&'a [u8]>,
}

/// The longest subprotocol name we answer with.
const MAX_PROTOCOL: usize = 64;

fn credential<'a>(query: Option<&'a str>, headers: &[httparse::Header<'a>]) -> Credential<'a> {
    let from_query = query
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
        .filter(|t| !t.is_empty())
        .map(str::as_bytes);
    let from_header = header(headers, "authorization").and_then(|v| {
        let v = v.trim_ascii();
        (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| v[7..].trim_ascii())
    });
    let offered = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii);
    let mut from_protocol = None;
    let mut protocol = None;
    for p in offered {
        match p.strip_prefix(b"bearer.") {
            Some(t) if from_protocol.is_none() => from_protocol = Some(t),
            Some(_) => {}
            None if protocol.is_none()
                && !p.is_empty()
                && p.len() <= MAX_PROTOCOL
                && p.iter().all(|b| b.is_ascii_graphic()) =>
            {
                protocol = Some(p)
            }
            None => {}
        }
    }
    Credential {
        token: from_query.or(from_header).or(from_protocol),
        protocol: from_protocol.and(protocol),
        origin: header(headers, "origin").map(<[u8]>::trim_ascii),
    }
}

/// Rejections, each a status line and a short reason for the body and the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    BadRequest(&'static str),
    NotFound,
    MethodNotAllowed,
    /// §4.4: an unsupported `Sec-WebSocket-Version`, or a plain GET on the WebSocket path.
    UpgradeRequired(&'static str),
    HeadersTooLarge,
    PipeliningNotSupported,
    /// The request head did not arrive in time.
    RequestTimeout,
    /// The device id's credential is missing or does not verify (`core/auth.rs`).
    Unauthorized(&'static str),
    /// A browser page from an origin not in `--allowed-origin`.
    Forbidden(&'static str),
    /// The server is draining (SIGTERM): this node takes no new clients.
    Draining,
}

impl Reject {
    fn status(self) -> &'static str {
        match self {
            Reject::BadRequest(_) | Reject::PipeliningNotSupported => "400 Bad Request",
            Reject::NotFound => "404 Not Found",
            Reject::MethodNotAllowed => "405 Method Not Allowed",
            Reject::UpgradeRequired(_) => "426 Upgrade Required",
            Reject::HeadersTooLarge => "431 Request Header Fields Too Large",
            Reject::RequestTimeout => "408 Request Timeout",
            Reject::Unauthorized(_) => "401 Unauthorized",
            Reject::Forbidden(_) => "403 Forbidden",
            Reject::Draining => "503 Service Unavailable",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Reject::BadRequest(why)
            | Reject::UpgradeRequired(why)
            | Reject::Unauthorized(why)
            | Reject::Forbidden(why) => why,
            Reject::NotFound => "no such path; WebSocket is at /ws, long-poll at /poll",
            Reject::MethodNotAllowed => "only GET is served on this port",
            Reject::HeadersTooLarge => "request head too large",
            Reject::PipeliningNotSupported => "a request arrived while another was held",
            Reject::RequestTimeout => "the request head did not arrive in time",
            Reject::Draining => "the server is shutting down; connect again (another node will take you)",
        }
    }
}

/// Result of looking at the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// The request head is not complete yet.
    Partial,
    /// A complete request head of `len` bytes.
    Complete { len: usize, request: Request<'a> },
}

/// Parse the request head at the start of `buf`. A GET body is not expected; bytes after the head
/// (a client that sends frames right after its upgrade request) are left to the caller.
pub fn parse(buf: &[u8]) -> Parsed<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Ok(httparse::Status::Complete(len)) => len,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Complete {
                len: buf.len(),
                request: Request::Reject(Reject::HeadersTooLarge),
            }
        }
        Err(_) => {
            return Parsed::Complete {
                len: buf.len(),
                request: Request::Reject(Reject::BadRequest("malformed HTTP request")),
            }
        }
    };
    Parsed::Complete {
        len,
        request: route(&req),
    }
}

fn route<'a>(req: &httparse::Request<'_, 'a>) -> Request<'a> {
    // httparse fills every field of a complete request.
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Request::Reject(Reject::BadRequest("incomplete request line"));
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if path != "/ws" && path != "/poll" {
        return Request::Reject(Reject::NotFound);
    }
    if method == "OPTIONS" && path == "/poll" {
        return Request::Preflight {
            origin: header(req.headers, "origin").map(<[u8]>::trim_ascii),
        };
    }
    if method != "GET" {
        return Request::Reject(Reject::MethodNotAllowed);
    }
    let (device, since) = match (device_id(query), since(query)) {
        (Ok(d), Ok(s)) => (d, s),
        (Err(why), _) | (_, Err(why)) => return Request::Reject(Reject::BadRequest(why)),
    };
    if minor == 1 && header(req.headers, "host").is_none() {
        return Request::Reject(Reject::BadRequest("HTTP/1.1 request without Host"));
    }
    let credential = credential(query, req.headers);
    if path == "/poll" {
        let close = header_has_token(req.headers, "connection", "close");
        let keep_alive = minor == 1 && !close || header_has_token(req.headers, "connection", "keep-alive");
        return Request::Poll {
            device,
            keep_alive,
            credential,
        };
    }
    upgrade(req.headers, minor, device, since, credential)
}

fn upgrade<'a>(
    headers: &[httparse::Header<'a>],
    minor: u8,
    device: Option<&'a [u8]>,
    since: Option<u64>,
    credential: Credential<'a>,
) -> Request<'a> {
    if !header_has_token(headers, "upgrade", "websocket") {
        return Request::Reject(Reject::UpgradeRequired("this path needs a WebSocket upgrade"));
    }
    if minor != 1 {
        return Request::Reject(Reject::BadRequest("WebSocket upgrade needs HTTP/1.1"));
    }
    if !header_has_token(headers, "connection", "upgrade") {
        return Request::Reject(Reject::BadRequest("Connection header lacks the Upgrade token"));
    }
    match header(headers, "sec-websocket-version") {
        Some(v) if v.trim_ascii() == b"13" => {}
        Some(_) => return Request::Reject(Reject::UpgradeRequired("only Sec-WebSocket-Version 13 is supported")),
        None => return Request::Reject(Reject::BadRequest("missing Sec-WebSocket-Version")),
    }
    let Some(key) = header(headers, "sec-websocket-key").map(<[u8]>::trim_ascii) else {
        return Request::Reject(Reject::BadRequest("missing Sec-WebSocket-Key"));
    };
    if !is_base64_of_16_bytes(key) {
        return Request::Reject(Reject::BadRequest("Sec-WebSocket-Key is not 16 bytes in base64"));
    }
    Request::Upgrade {
        key,
        device,
        since,
        credential,
    }
}

/// `since=<seq>` from the query string: a decimal sequence number.
fn since(query: Option<&str>) -> Result<Option<u64>, &'static str> {
    let Some(value) = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("since="))) else {
        return Ok(None);
    };
    match value.parse::<u64>() {
        Ok(seq) if value.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(seq)),
        _ => Err("since must be a sequence number (decimal digits)"),
    }
}

/// `id=<device>` from the query string: non-empty, at most 128 bytes of URL-safe characters (no
/// percent-decoding, so the id is the exact bytes the client sent).
fn device_id(query: Option<&str>) -> Result<Option<&[u8]>, &'static str> {
    let Some(query) = query else { return Ok(None) };
    let Some(value) = query.split('&').find_map(|kv| kv.strip_prefix("id=")) else {
        return Ok(None);
    };
    if value.is_empty() || value.len() > MAX_DEVICE_ID {
        return Err("device id must be 1 to 128 characters");
    }
    let ok = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'~'));
    if !ok {
        return Err("device id may hold only letters, digits and - _ . : ~");
    }
    Ok(Some(value.as_bytes()))
}

fn header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Whether any header `name` holds `token` in its comma-separated list (case-insensitive).
fn header_has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// 16 random bytes in base64 are 24 characters ending in "==" (RFC 6455 §4.1).
fn is_base64_of_16_bytes(key: &[u8]) -> bool {
    key.len() == 24
        && key[22..] == *b"=="
        && key[..22].iter().all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        // The last data character carries 2 bits, so its low 4 bits are zero: A, Q, g or w.
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
}

/// The longest `--allowed-origin` (checked at start): an answer echoes it in its CORS header.
pub const MAX_ORIGIN: usize = 128;
/// The longest reason a rejection carries in its body (the reasons are ours, all shorter; a test
/// of the core checks the credential ones).
pub const MAX_REASON: usize = 150;

/// A formatted response head (plus short body) in a stack buffer.
pub struct Response {
    buf: [u8; 512],
    len: usize,
}

impl Response {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn format(args: std::fmt::Arguments<'_>) -> Response {
        let mut buf = [0u8; 512];
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        // Every caller formats fixed text plus short values (an origin is at most MAX_ORIGIN,
        // a subprotocol MAX_PROTOCOL, a reason ~120): 512 bytes always suffice (a test formats
        // the longest of each).
        cursor.write_fmt(args).expect("response head fits in 512 bytes");
        let len = cursor.position() as usize;
        Response { buf, len }
    }

    /// `101 Switching Protocols` with the accept key derived from the client's key, and the
    /// subprotocol chosen from the client's offer, if any.
    pub fn switching_protocols(key: &[u8], protocol: Option<&[u8]>) -> Response {
        let accept = tungstenite::handshake::derive_accept_key(key);
        // `credential` kept only printable ASCII of at most 64 bytes.
        let protocol = protocol.and_then(|p| std::str::from_utf8(p).ok());
        let (name, value, end) = match protocol {
            Some(p) => ("Sec-WebSocket-Protocol: ", p, "\r\n"),
            None => ("", "", ""),
        };
        Response::format(format_args!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{name}{value}{end}\r\n"
        ))
    }

    /// An error status with a one-line body; the connection is closed after it.
    pub fn reject(reject: Reject) -> Response {
        Response::reject_with_cors(reject, None)
    }

    /// The same, readable by a page of the origin `cors` (see `poll_answer_head`).
    pub fn reject_with_cors(reject: Reject, cors: Option<&str>) -> Response {
        let reason = reject.reason();
        let cors = Cors(cors);
        let version = match reject {
            Reject::UpgradeRequired(_) => "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n",
            Reject::Unauthorized(_) => "WWW-Authenticate: Bearer\r\n",
            Reject::Draining => "Retry-After: 1\r\n",
            _ => "",
        };
        Response::format(format_args!(
            "HTTP/1.1 {}\r\n{version}{cors}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reason}\n",
            reject.status(),
            reason.len() + 1
        ))
    }

    /// The head of a `200 OK` carrying a long-poll answer of `body_len` bytes; `cors`, the origin
    /// the page that asked may read it from (its own, or `*` when any origin may connect).
    pub fn poll_answer_head(body_len: usize, keep_alive: bool, cors: Option<&str>) -> Response {
        let connection = if keep_alive { "keep-alive" } else { "close" };
        let cors = Cors(cors);
        Response::format(format_args!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n{cors}Content-Length: {body_len}\r\nConnection: {connection}\r\n\r\n"
        ))
    }

    /// `204` to a CORS preflight from an origin that may connect: the page may send its
    /// long-poll with an `Authorization` header (a token) for the next 10 minutes.
    pub fn preflight(cors: &str) -> Response {
        let cors = Cors(Some(cors));
        Response::format(format_args!(
            "HTTP/1.1 204 No Content\r\n{cors}Access-Control-Allow-Methods: GET\r\nAccess-Control-Allow-Headers: Authorization\r\nAccess-Control-Max-Age: 600\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ))
    }
}

/// The CORS headers of an answer a page of that origin may read (`Vary`, since the answer
/// depends on the asking origin: a cache must not hand it to another).
struct Cors<'a>(Option<&'a str>);

impl std::fmt::Display for Cors<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(origin) => write!(f, "Access-Control-Allow-Origin: {origin}\r\nVary: Origin\r\n"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn upgrade_request(path: &str, extra: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: 198.18.0.1:8080\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn request_of(raw: &str) -> Request<'_> {
        match parse(raw.as_bytes()) {
            Parsed::Complete { request, .. } => request,
            Parsed::Partial => panic!("partial"),
        }
    }

    #[test]
    fn accepts_a_browser_upgrade_with_device_id() {
        let raw = upgrade_request(
            "/ws?id=aa:bb:cc:dd:ee:ff&x=1",
            "Origin: http://example\r\nUser-Agent: test\r\n",
        );
        match parse(raw.as_bytes()) {
            Parsed::Complete {
                len,
                request: Request::Upgrade { key, device, since, .. },
            } => {
                assert_eq!(len, raw.len());
                assert_eq!(key, KEY.as_bytes());
                assert_eq!(device, Some(&b"aa:bb:cc:dd:ee:ff"[..]));
                assert_eq!(since, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        let r = Response::switching_protocols(KEY.as_bytes(), None);
        let text = std::str::from_utf8(r.as_bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 "));
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn partial_heads_wait() {
        let raw = upgrade_request("/ws", "");
        for cut in 0..raw.len() {
            assert_eq!(parse(&raw.as_bytes()[..cut]), Parsed::Partial, "cut {cut}");
        }
    }

    #[test]
    fn rejects_each_missing_or_bad_upgrade_piece() {
        let cases: [(String, &str); 8] = [
            (upgrade_request("/ws", "").replace("Upgrade: websocket\r\n", ""), "426"),
            (
                upgrade_request("/ws", "").replace("keep-alive, Upgrade", "keep-alive"),
                "400",
            ),
            (upgrade_request("/ws", "").replace("Version: 13", "Version: 8"), "426"),
            (
                upgrade_request("/ws", "").replace("Sec-WebSocket-Version: 13\r\n", ""),
                "400",
            ),
            (upgrade_request("/ws", "").replace(KEY, "short=="), "400"),
            (
                upgrade_request("/ws", "")
                    .replace("HTTP/1.1", "HTTP/1.0")
                    .replace("Host: 198.18.0.1:8080\r\n", ""),
                "400",
            ),
            (upgrade_request("/ws", "").replace("GET", "POST"), "405"),
            (upgrade_request("/nope", ""), "404"),
        ];
        for (raw, status) in cases {
            match request_of(&raw) {
                Request::Reject(r) => {
                    let resp = Response::reject(r);
                    let text = std::str::from_utf8(resp.as_bytes()).unwrap();
                    assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{raw:?} -> {text}");
                    assert!(text.contains("Connection: close"));
                }
                other => panic!("{raw:?} accepted as {other:?}"),
            }
        }
    }

    #[test]
    fn version_426_names_the_supported_version() {
        let raw = upgrade_request("/ws", "").replace("Version: 13", "Version: 8");
        let Request::Reject(r) = request_of(&raw) else { panic!() };
        let resp = Response::reject(r);
        assert!(std::str::from_utf8(resp.as_bytes())
            .unwrap()
            .contains("Sec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn bad_device_ids_are_rejected() {
        for id in ["", "a b", "%41", &"x".repeat(129)] {
            let raw = upgrade_request(&format!("/ws?id={id}"), "");
            assert!(
                matches!(request_of(&raw), Request::Reject(Reject::BadRequest(_))),
                "{id:?}"
            );
        }
        let raw = upgrade_request(&format!("/ws?id={}", "x".repeat(128)), "");
        assert!(matches!(request_of(&raw), Request::Upgrade { .. }));
    }

    #[test]
    fn since_is_a_sequence_number() {
        let raw = upgrade_request("/ws?id=d1&since=42", "");
        assert!(matches!(request_of(&raw), Request::Upgrade { since: Some(42), .. }));
        for bad in ["", "-1", "+1", "4x", "99999999999999999999"] {
            let raw = upgrade_request(&format!("/ws?since={bad}"), "");
            assert!(
                matches!(request_of(&raw), Request::Reject(Reject::BadRequest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn garbage_and_too_many_headers_are_rejected() {
        let tls_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n";
        assert!(matches!(
            parse(tls_hello),
            Parsed::Complete {
                request: Request::Reject(_),
                ..
            }
        ));
        let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = upgrade_request("/ws", &many);
        assert_eq!(request_of(&raw), Request::Reject(Reject::HeadersTooLarge));
    }

    #[test]
    fn a_token_comes_from_the_query_the_authorization_header_or_a_subprotocol() {
        type Owned = (Option<Vec<u8>>, Option<Vec<u8>>);
        let token = |extra: &str, path: &str| -> Owned {
            match request_of(&upgrade_request(path, extra)) {
                Request::Upgrade { credential, .. } => (
                    credential.token.map(<[u8]>::to_vec),
                    credential.protocol.map(<[u8]>::to_vec),
                ),
                other => panic!("{other:?}"),
            }
        };
        let v = |s: &str| Some(s.as_bytes().to_vec());
        assert_eq!(token("", "/ws?id=d&token=aaa.bbb.ccc"), (v("aaa.bbb.ccc"), None));
        assert_eq!(
            token("Authorization: bearer  hhh.iii.jjj \r\n", "/ws?id=d").0,
            v("hhh.iii.jjj")
        );
        assert_eq!(
            token("Sec-WebSocket-Protocol: push.v1, bearer.ppp.qqq.rrr\r\n", "/ws?id=d"),
            (v("ppp.qqq.rrr"), v("push.v1"))
        );
        // Without a token among the offers we answer none: we speak no subprotocol of our own.
        assert_eq!(token("Sec-WebSocket-Protocol: push.v1\r\n", "/ws"), (None, None));
        // The query wins over the header, the header over the subprotocol.
        let both = "Authorization: Bearer h.h.h\r\nSec-WebSocket-Protocol: bearer.p.p.p\r\n";
        assert_eq!(token(both, "/ws?id=d&token=q.q.q").0, v("q.q.q"));
        assert_eq!(token(both, "/ws?id=d").0, v("h.h.h"));
        assert_eq!(token("Authorization: Basic abc\r\n", "/ws?id=d").0, None);
        // The upgrade answers with the other subprotocol offered.
        let r = Response::switching_protocols(KEY.as_bytes(), Some(b"push.v1"));
        assert!(std::str::from_utf8(r.as_bytes())
            .unwrap()
            .contains("\r\nSec-WebSocket-Protocol: push.v1\r\n"));
        let r = Response::reject(Reject::Unauthorized("the token has expired"));
        let text = std::str::from_utf8(r.as_bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n") && text.contains("WWW-Authenticate: Bearer"));
    }

    /// The longest answers fit the response buffer (formatting panics past it): every
    /// rejection with a reason of `MAX_REASON` bytes and a CORS origin of `MAX_ORIGIN`, the
    /// preflight, a poll answer, an upgrade answer with the longest subprotocol.
    #[test]
    fn the_longest_answers_fit() {
        let reason: &'static str = "r".repeat(MAX_REASON).leak();
        let origin = format!("https://{}", "o".repeat(MAX_ORIGIN - 8));
        for reject in [
            Reject::BadRequest(reason),
            Reject::UpgradeRequired(reason),
            Reject::Unauthorized(reason),
            Reject::Forbidden(reason),
        ] {
            let r = Response::reject_with_cors(reject, Some(&origin));
            assert!(r.as_bytes().ends_with(format!("{reason}\n").as_bytes()));
        }
        assert!(Response::preflight(&origin).as_bytes().ends_with(b"\r\n\r\n"));
        assert!(Response::poll_answer_head(usize::MAX, true, Some(&origin))
            .as_bytes()
            .ends_with(b"\r\n\r\n"));
        let protocol = "p".repeat(MAX_PROTOCOL);
        let r = Response::switching_protocols(KEY.as_bytes(), Some(protocol.as_bytes()));
        assert!(r.as_bytes().ends_with(b"\r\n\r\n"));
    }

    #[test]
    fn poll_requests_and_keep_alive() {
        let r = request_of("GET /poll?id=dev-1 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            r,
            Request::Poll {
                device: Some(b"dev-1"),
                keep_alive: true,
                credential: Credential::default(),
            }
        );
        let r = request_of("GET /poll HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert_eq!(
            r,
            Request::Poll {
                device: None,
                keep_alive: false,
                credential: Credential::default(),
            }
        );
        let r = request_of("GET /poll HTTP/1.0\r\n\r\n");
        assert_eq!(
            r,
            Request::Poll {
                device: None,
                keep_alive: false,
                credential: Credential::default(),
            }
        );
        let head = Response::poll_answer_head(12, true, None);
        let text = std::str::from_utf8(head.as_bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("Content-Length: 12\r\n"));
    }
}

//! Bounded fuzzing (property tests with proptest) of everything in the server that parses bytes from
//! the network: WebSocket frames (`core::frame`), HTTP request heads (`core::http`) and the sans-I/O
//! core fed arbitrary byte streams in arbitrary chunkings (`ServerCore::data`). Malformed input must
//! end in a rejection or a clean close: never a panic, an out-of-bounds index, an arithmetic
//! overflow (these are debug builds) or an unbounded buffer.
//!
//! Run time: each property runs a fixed number of cases (see `cases(..)` below; the whole file takes
//! a few seconds in a debug build). For a longer run, override the count for every property:
//!
//! ```text
//! PROPTEST_CASES=100000 cargo test --release -p ws-server --test fuzz_wire
//! ```
//!
//! Reproducibility: the random seed is fixed (`SEED`) so every run of the suite tests the same
//! cases; `PROPTEST_RNG_SEED=<u64>` explores others. A failure prints the shrunk input and is
//! appended to `server/tests/fuzz_wire.proptest-regressions`, which proptest replays first on every
//! later run: commit that file with the fix.
//! (Over 600 lines: one property per parser and its strategies, kept beside the fake transport they share.)

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;

use ws_server::core::auth::DeviceAuth;
use ws_server::core::device::DeviceHasher;
use ws_server::core::frame::{
    apply_mask, close_payload, decode, encode_header, parse_close, FrameError, Op, Role, Utf8Carry,
    MAX_CONTROL_PAYLOAD, MAX_HEADER,
};
use ws_server::core::http::{self, Parsed, Request, MAX_DEVICE_ID};
use ws_server::core::stats::CoreStats;
use ws_server::core::{ConnId, CoreConfig, Io, ServerCore};

/// The fixed seed of the default run (any value; changing it changes the cases tested).
const SEED: u64 = 0x6675_7a7a_5f77_6972;

/// The suite's configuration (`testkit::fuzz::config`) with this file's seed.
fn cases(default_cases: u32) -> Config {
    testkit::fuzz::config(default_cases, SEED)
}

// ---------------------------------------------------------------------------------------------
// Byte builders shared by the properties.

const OPS: [Op; 6] = [Op::Continue, Op::Text, Op::Binary, Op::Close, Op::Ping, Op::Pong];

fn opcode_of(op: Op) -> u8 {
    match op {
        Op::Continue => 0,
        Op::Text => 1,
        Op::Binary => 2,
        Op::Close => 8,
        Op::Ping => 9,
        Op::Pong => 10,
    }
}

/// A frame built byte by byte (independently of `encode_header`), so that reserved opcodes, RSV
/// bits, unmasked client frames and any 64-bit length can be expressed. `len` is the length the
/// header claims; `payload` is what follows it (masked here when `mask` is given).
fn raw_frame(first: u8, mask: Option<[u8; 4]>, len: u64, payload: &[u8]) -> Vec<u8> {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut out = vec![first];
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xffff {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    let mut body = payload.to_vec();
    if let Some(mask) = mask {
        out.extend_from_slice(&mask);
        apply_mask(&mut body, mask);
    }
    out.extend_from_slice(&body);
    out
}

/// A frame as a client sends it, with the project's encoder.
fn client_frame(fin: bool, op: Op, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    ws_server::core::frame::encode(&mut out, fin, op, payload, Some(mask));
    out
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Upper-case the ASCII letters of `s` whose bit in `bits` is set.
fn recase(s: &str, bits: u64) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if bits >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// Flip bytes at the given places (a cheap mutator that keeps most of a valid input's structure).
fn mutate(bytes: &mut [u8], flips: &[(Index, u8)]) {
    if bytes.is_empty() {
        return;
    }
    for (at, xor) in flips {
        let i = at.index(bytes.len());
        bytes[i] ^= xor.max(&1);
    }
}

fn flips() -> impl Strategy<Value = Vec<(Index, u8)>> {
    prop::collection::vec((any::<Index>(), any::<u8>()), 0..4)
}

// ---------------------------------------------------------------------------------------------
// Strategies.

fn any_op() -> impl Strategy<Value = Op> {
    prop::sample::select(OPS.to_vec())
}

/// Payloads around the length-encoding boundaries (125/126, 65535/65536) as well as small ones.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => prop::collection::vec(any::<u8>(), 0..140),
        // Generated from a seed: a 64 KiB `vec(any::<u8>())` costs seconds per hundred cases.
        1 => (65_530..65_540usize, any::<u32>()).prop_map(|(len, seed)| {
            (0..len as u32).map(|i| (i.wrapping_add(seed).wrapping_mul(0x9e37_79b9) >> 24) as u8).collect()
        }),
    ]
}

/// A payload limit: small, around the boundaries, or at the extremes of `usize`.
fn limit() -> impl Strategy<Value = usize> {
    prop_oneof![
        0..300usize,
        65_530..65_540usize,
        Just(usize::MAX),
        Just(usize::MAX - MAX_HEADER),
        Just(isize::MAX as usize),
        any::<usize>(),
    ]
}

/// A frame's first byte: any, or FIN/opcode of a frame we accept (RSV bits clear).
fn first_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        any::<u8>(),
        (any::<bool>(), any_op()).prop_map(|(fin, op)| u8::from(fin) << 7 | opcode_of(op))
    ]
}

/// A length for a header to claim: small, anything, or at the very top of the 64-bit range.
fn claimed_len() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..200u64,
        any::<u64>(),
        u64::MAX - 20..=u64::MAX,
        (1u64 << 63) - 20..=(1u64 << 63) + 20
    ]
}

/// Bytes that are mostly WebSocket frames (valid or nearly so), then mutated.
fn frame_soup() -> impl Strategy<Value = Vec<u8>> {
    let one = prop_oneof![
        (
            any::<bool>(),
            any_op(),
            prop::collection::vec(any::<u8>(), 0..200),
            any::<[u8; 4]>()
        )
            .prop_map(|(fin, op, p, mask)| client_frame(fin, op, &p, mask)),
        (
            first_byte(),
            any::<Option<[u8; 4]>>(),
            claimed_len(),
            prop::collection::vec(any::<u8>(), 0..20)
        )
            .prop_map(|(first, mask, len, p)| raw_frame(first, mask, len, &p)),
        prop::collection::vec(any::<u8>(), 0..20),
    ];
    (prop::collection::vec(one, 0..4), flips()).prop_map(|(frames, flips)| {
        let mut bytes = frames.concat();
        mutate(&mut bytes, &flips);
        bytes
    })
}

/// A valid RFC 6455 upgrade request head, with random header order, name case, whitespace around
/// values, token lists, extra headers and an optional device id.
#[derive(Clone, Debug)]
struct UpgradeHead {
    bytes: Vec<u8>,
    key: String,
    device: Option<String>,
}

fn upgrade_head() -> impl Strategy<Value = UpgradeHead> {
    let device = prop_oneof![
        3 => prop::option::of("[A-Za-z0-9._:~-]{1,128}"),
        1 => Just(Some("dev-1".to_string())),
    ];
    let ws = prop::sample::select(vec![
        "websocket",
        "WebSocket",
        "WEBSOCKET",
        "foo/1, websocket",
        "websocket,h2c",
    ]);
    let conn = prop::sample::select(vec![
        "Upgrade",
        "upgrade",
        "keep-alive, Upgrade",
        "Upgrade,keep-alive",
        "x , UPGRADE ,y",
    ]);
    let space = prop::sample::select(vec!["", " ", "  ", "\t", " \t "]);
    let extras = prop::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,15}", "[ -~]{0,40}"), 0..10);
    let query_before = prop::option::of("[a-z]{1,5}=[a-z0-9]{0,5}");
    (
        (
            any::<[u8; 16]>(),
            device,
            query_before,
            ws,
            conn,
            "[a-z0-9.]{1,20}(:[0-9]{1,5})?",
        ),
        (prop::collection::vec(space, 10), prop::collection::vec(any::<u64>(), 5)),
        (extras, prop::collection::vec(any::<u16>(), 19), credential_lines()),
    )
        .prop_map(
            |((key, device, query_before, ws, conn, host), (spaces, cases), (extras, order, credentials))| {
                let key = base64(&key);
                let mut path = "/ws".to_string();
                let mut sep = '?';
                if let Some(q) = &query_before {
                    path.push_str(&format!("?{q}"));
                    sep = '&';
                }
                if let Some(d) = &device {
                    path.push_str(&format!("{sep}id={d}"));
                }
                let named = |i: usize, name: &str, value: &str| {
                    format!(
                        "{}:{}{value}{}\r\n",
                        recase(name, cases[i]),
                        spaces[2 * i],
                        spaces[2 * i + 1]
                    )
                };
                let mut lines: Vec<(u16, String)> = vec![
                    (order[0], named(0, "host", &host)),
                    (order[1], named(1, "upgrade", ws)),
                    (order[2], named(2, "connection", conn)),
                    (order[3], named(3, "sec-websocket-key", &key)),
                    (order[4], named(4, "sec-websocket-version", "13")),
                ];
                for (i, (name, value)) in extras.iter().enumerate() {
                    // Extra headers must not be ones the parser looks at.
                    let lower = name.to_ascii_lowercase();
                    if ["host", "upgrade", "connection"].contains(&lower.as_str()) || lower.starts_with("sec-websocket")
                    {
                        continue;
                    }
                    lines.push((order[5 + i], format!("{name}: {value}\r\n")));
                }
                for (i, line) in credentials.into_iter().enumerate() {
                    lines.push((order[15 + i], line));
                }
                lines.sort_by_key(|(k, _)| *k);
                let mut head = format!("GET {path} HTTP/1.1\r\n");
                for (_, line) in lines {
                    head.push_str(&line);
                }
                head.push_str("\r\n");
                UpgradeHead {
                    bytes: head.into_bytes(),
                    key,
                    device,
                }
            },
        )
}

/// Bytes that look like HTTP: fragments of request heads glued together, then mutated.
fn http_soup() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        prop::sample::select(vec![
            "GET",
            "POST",
            " ",
            "/ws",
            "/poll",
            "?id=",
            "&",
            "dev-1",
            "HTTP/1.1",
            "HTTP/1.0",
            "HTTP/2",
            "\r\n",
            "\n",
            "\r",
            ":",
            ": ",
            "Host",
            "Upgrade",
            "websocket",
            "Connection",
            "upgrade",
            "close",
            "keep-alive",
            "Sec-WebSocket-Key",
            "Sec-WebSocket-Version",
            "13",
            "dGhlIHNhbXBsZSBub25jZQ==",
            ",",
            "\t",
            "\0",
            "é",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..8),
    ];
    let glued = prop::collection::vec(token, 0..40).prop_map(|t| t.concat());
    let mutated_head = (upgrade_head(), flips()).prop_map(|(h, flips)| {
        let mut bytes = h.bytes;
        mutate(&mut bytes, &flips);
        bytes
    });
    prop_oneof![glued, mutated_head, prop::collection::vec(any::<u8>(), 0..300)]
}

/// Cut points into a stream of `len` bytes, as indexes (sorted, may repeat: an empty read).
fn cuts() -> impl Strategy<Value = Vec<Index>> {
    prop::collection::vec(any::<Index>(), 0..10)
}

/// Where `cuts` fall in a stream of `len` bytes, in order.
fn positions(len: usize, cuts: &[Index]) -> Vec<usize> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(len + 1)).collect();
    at.sort_unstable();
    at
}

/// `bytes` cut at the positions `at` (sorted; a repeated position is an empty read).
fn split_at<'a>(bytes: &'a [u8], at: &[usize]) -> Vec<&'a [u8]> {
    let mut prev = 0;
    at.iter()
        .copied()
        .chain([bytes.len()])
        .map(|end| {
            let chunk = &bytes[prev..end];
            prev = end;
            chunk
        })
        .collect()
}

fn chunks_of<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    split_at(bytes, &positions(bytes.len(), cuts))
}

// ---------------------------------------------------------------------------------------------
// 1. WebSocket frames.

/// What `decode` returned, owned: (fin, op, unmasked payload, wire length) of a whole frame.
type Decoded = Result<Option<(bool, Op, Vec<u8>, usize)>, FrameError>;

/// Checks that hold for any `decode` result on any input.
fn check_decode(input: &[u8], role: Role, max_payload: usize) -> Decoded {
    let mut buf = input.to_vec();
    match decode(&mut buf, role, max_payload) {
        Ok(Some(f)) => {
            let (fin, op, payload, wire_len) = (f.fin, f.op, f.payload.to_vec(), f.wire_len);
            assert!(
                wire_len <= input.len(),
                "frame of {wire_len} bytes in {} bytes",
                input.len()
            );
            let header = wire_len - payload.len();
            assert!((2..=MAX_HEADER).contains(&header), "header of {header} bytes");
            if op.is_control() {
                assert!(
                    fin && payload.len() <= MAX_CONTROL_PAYLOAD,
                    "control frame accepted: {fin} {}",
                    payload.len()
                );
            } else {
                assert!(payload.len() <= max_payload);
            }
            assert_eq!(
                &buf[wire_len..],
                &input[wire_len..],
                "bytes after the frame were changed"
            );
            Ok(Some((fin, op, payload, wire_len)))
        }
        Ok(None) => {
            assert_eq!(buf, input, "an incomplete frame changed the buffer");
            Ok(None)
        }
        Err(e) => {
            assert_eq!(buf, input, "a rejected frame changed the buffer");
            Err(e)
        }
    }
}

proptest! {
    #![proptest_config(cases(2000))]

    /// Any bytes, either role, any limit: no panic; an accepted frame lies inside the input,
    /// respects the limits, and nothing but its own bytes is touched; otherwise nothing is.
    #[test]
    fn frame_decode_any_bytes(bytes in prop_oneof![frame_soup(), prop::collection::vec(any::<u8>(), 0..64)],
                              server in any::<bool>(), max_payload in limit()) {
        let role = if server { Role::Server } else { Role::Client };
        let _ = check_decode(&bytes, role, max_payload);
    }

    /// Decoding a prefix either waits (`Ok(None)`) or gives exactly what decoding the whole input
    /// gives: the decision never depends on how the bytes were segmented.
    #[test]
    fn frame_decode_prefix_is_consistent(bytes in frame_soup(), max_payload in limit()) {
        let whole = check_decode(&bytes, Role::Server, max_payload);
        for cut in 0..bytes.len() {
            match check_decode(&bytes[..cut], Role::Server, max_payload) {
                Ok(None) => {}
                prefix => prop_assert_eq!(&prefix, &whole, "cut at {}", cut),
            }
        }
    }

    /// What the encoder writes (masked, as a client would) decodes to the same fin/op/payload, at
    /// the exact limit, with unrelated bytes behind it; the unmasked form decodes on the client.
    #[test]
    fn frame_round_trip(fin in any::<bool>(), op in any_op(), payload in payload(), mask in any::<[u8; 4]>(),
                        trailer in prop::collection::vec(any::<u8>(), 0..20)) {
        let fin = fin || op.is_control();
        let payload = if op.is_control() { &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)] } else { &payload[..] };
        let wire = client_frame(fin, op, payload, mask);
        let mut buf = [&wire[..], &trailer[..]].concat();
        let got = check_decode(&buf, Role::Server, payload.len());
        prop_assert_eq!(got, Ok(Some((fin, op, payload.to_vec(), wire.len()))));
        // The same frame from the server side: unmasked, decoded by a client.
        let mut hdr = [0u8; MAX_HEADER];
        let n = encode_header(&mut hdr, fin, op, payload.len(), None);
        buf = [&hdr[..n], payload].concat();
        let got = check_decode(&buf, Role::Client, payload.len());
        prop_assert_eq!(got, Ok(Some((fin, op, payload.to_vec(), n + payload.len()))));
        // A server must refuse the unmasked form, a client the masked one.
        prop_assert!(decode(&mut buf, Role::Server, usize::MAX).is_err());
        prop_assert!(decode(&mut wire.clone(), Role::Client, usize::MAX).is_err());
    }

    /// A frame cut at any byte is `Ok(None)` until its last byte arrives, then decodes whole.
    #[test]
    fn frame_split_anywhere(fin in any::<bool>(), op in any_op(), payload in prop::collection::vec(any::<u8>(), 0..300),
                            mask in any::<[u8; 4]>()) {
        let fin = fin || op.is_control();
        let payload = if op.is_control() { &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)] } else { &payload[..] };
        let wire = client_frame(fin, op, payload, mask);
        for cut in 0..wire.len() {
            prop_assert_eq!(check_decode(&wire[..cut], Role::Server, 1 << 16), Ok(None), "cut at {}", cut);
        }
        let whole = check_decode(&wire, Role::Server, 1 << 16);
        prop_assert_eq!(whole, Ok(Some((fin, op, payload.to_vec(), wire.len()))));
    }

    /// A data frame whose header claims more than the limit is `TooBig` as soon as the header is
    /// complete, whatever the length (up to 2^64 - 1), masked or not as the role expects.
    #[test]
    fn frame_over_limit_is_rejected(max_payload in 0..70_000usize, excess in prop_oneof![1..100u64, 1..u64::MAX],
                                    opcode in 0..3u8, fin in any::<bool>(), mask in any::<[u8; 4]>(),
                                    body in prop::collection::vec(any::<u8>(), 0..10)) {
        let len = (max_payload as u64).saturating_add(excess);
        let first = u8::from(fin) << 7 | opcode;
        let wire = raw_frame(first, Some(mask), len, &body);
        prop_assert_eq!(check_decode(&wire, Role::Server, max_payload), Err(FrameError::TooBig));
        let wire = raw_frame(first, None, len, &body);
        prop_assert_eq!(check_decode(&wire, Role::Client, max_payload), Err(FrameError::TooBig));
    }

    /// Any claimed length (up to 2^64 - 1) against any limit (up to `usize::MAX`), for every opcode
    /// and both roles: the header alone gives `TooBig`, a control-frame error, or `Ok(None)` (wait
    /// for the payload); it never overflows computing where the frame ends.
    #[test]
    fn frame_any_claimed_length(fin in any::<bool>(), op in any_op(), len in claimed_len(), max_payload in limit(),
                                server in any::<bool>(), mask in any::<[u8; 4]>(),
                                body in prop::collection::vec(any::<u8>(), 0..10)) {
        let (role, mask) = if server { (Role::Server, Some(mask)) } else { (Role::Client, None) };
        let wire = raw_frame(u8::from(fin) << 7 | opcode_of(op), mask, len, &body);
        let got = check_decode(&wire, role, max_payload);
        if op.is_control() && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
            prop_assert!(matches!(got, Err(FrameError::Protocol(_))), "{:?}", got);
        } else if !op.is_control() && len > max_payload as u64 {
            prop_assert_eq!(got, Err(FrameError::TooBig));
        } else if (wire.len() - body.len()).checked_add(len as usize).is_none() {
            // Within the limit, but no buffer could ever hold it.
            prop_assert_eq!(got, Err(FrameError::TooBig));
        } else if len > body.len() as u64 {
            prop_assert_eq!(got, Ok(None));
        } else {
            prop_assert!(matches!(got, Ok(Some(_))), "{:?}", got);
        }
    }

    /// Control frames over 125 bytes, or fragmented, are protocol errors whatever the data limit.
    #[test]
    fn control_frame_limits(op in prop::sample::select(vec![Op::Close, Op::Ping, Op::Pong]),
                            len in prop_oneof![126..300u64, any::<u64>().prop_map(|l| l.max(126))],
                            max_payload in limit(), mask in any::<[u8; 4]>(),
                            short in prop::collection::vec(any::<u8>(), 0..=MAX_CONTROL_PAYLOAD)) {
        let body = vec![0u8; len.min(300) as usize];
        let wire = raw_frame(0x80 | opcode_of(op), Some(mask), len, &body);
        prop_assert!(matches!(check_decode(&wire, Role::Server, max_payload), Err(FrameError::Protocol(_))));
        let fragmented = client_frame(false, op, &short, mask);
        prop_assert!(matches!(check_decode(&fragmented, Role::Server, max_payload), Err(FrameError::Protocol(_))));
    }

    /// Reserved opcodes and RSV bits are protocol errors once the header is complete.
    #[test]
    fn reserved_opcodes_and_bits_are_rejected(opcode in 0..16u8, rsv in 0..8u8, fin in any::<bool>(),
                                              mask in any::<[u8; 4]>(),
                                              body in prop::collection::vec(any::<u8>(), 0..10)) {
        prop_assume!(rsv != 0 || matches!(opcode, 3..=7 | 11..=15));
        let wire = raw_frame(u8::from(fin) << 7 | rsv << 4 | opcode, Some(mask), body.len() as u64, &body);
        prop_assert!(matches!(check_decode(&wire, Role::Server, 1024), Err(FrameError::Protocol(_))));
    }

    /// UTF-8 validation of a text message fed in any number of fragments, cut anywhere (inside code
    /// points too), agrees with validating the whole message at once.
    #[test]
    fn utf8_carry_matches_whole_message(text in "[a-zé€😀\u{7f}-\u{800}]{0,30}", flips in flips(), cuts in cuts(),
                                        mutate_it in any::<bool>()) {
        let mut bytes = text.into_bytes();
        if mutate_it {
            mutate(&mut bytes, &flips);
        }
        let pieces = chunks_of(&bytes, &cuts);
        let mut carry = Utf8Carry::default();
        let mut result = Ok(());
        for (i, piece) in pieces.iter().enumerate() {
            result = carry.feed(piece, i + 1 == pieces.len());
            if result.is_err() {
                break;
            }
        }
        prop_assert_eq!(result.is_ok(), std::str::from_utf8(&bytes).is_ok(), "{:?} in {:?}", bytes, pieces);
    }

    /// Close payloads: any bytes parse without panicking; what we build always parses back.
    #[test]
    fn close_payloads(bytes in prop::collection::vec(any::<u8>(), 0..130),
                      code in prop_oneof![1000..=1003u16, 1007..=1011u16, 3000..=4999u16], reason in ".{0,80}") {
        if let Ok(Some(code)) = parse_close(&bytes) {
            prop_assert!(bytes.len() >= 2 && code == u16::from_be_bytes([bytes[0], bytes[1]]));
        }
        let mut out = [0u8; MAX_CONTROL_PAYLOAD];
        let n = close_payload(&mut out, code, &reason);
        prop_assert!(n <= MAX_CONTROL_PAYLOAD);
        prop_assert_eq!(parse_close(&out[..n]), Ok(Some(code)));
        prop_assert!(reason.as_bytes().starts_with(&out[2..n]));
    }
}

// ---------------------------------------------------------------------------------------------
// 2. HTTP request heads.

/// Checks that hold for any `http::parse` result.
fn check_parse(buf: &[u8]) -> Parsed<'_> {
    let parsed = http::parse(buf);
    if let Parsed::Complete { len, request } = &parsed {
        assert!(*len > 0 && *len <= buf.len(), "head of {len} bytes in {}", buf.len());
        let inside = |s: &[u8]| {
            let range = buf.as_ptr_range();
            range.start <= s.as_ptr() && s.as_ptr_range().end <= range.end
        };
        match request {
            Request::Upgrade {
                key,
                device,
                credential,
                ..
            } => {
                assert!(inside(key) && key.len() == 24, "key {key:?}");
                for part in [credential.token, credential.protocol, credential.origin]
                    .into_iter()
                    .flatten()
                {
                    assert!(inside(part), "credential part {part:?}");
                }
                if let Some(d) = device {
                    assert!(inside(d) && !d.is_empty() && d.len() <= MAX_DEVICE_ID, "device {d:?}");
                }
            }
            Request::Poll { device: Some(d), .. } => {
                assert!(inside(d) && !d.is_empty() && d.len() <= MAX_DEVICE_ID, "device {d:?}");
            }
            Request::Preflight { origin: Some(o) } => assert!(inside(o), "origin {o:?}"),
            Request::Poll { device: None, .. } | Request::Preflight { origin: None } | Request::Reject(_) => {}
        }
    }
    parsed
}

proptest! {
    #![proptest_config(cases(1000))]

    /// Any bytes: no panic; a complete head lies inside the input, and what it points at too.
    /// Every prefix either waits or gets the same answer as the whole input (for a malformed head
    /// the reported length is "everything", which differs, so only the request is compared).
    #[test]
    fn http_any_bytes(bytes in http_soup()) {
        let whole = check_parse(&bytes);
        for cut in 0..bytes.len() {
            match (check_parse(&bytes[..cut]), &whole) {
                (Parsed::Partial, _) => {}
                (Parsed::Complete { request: r, .. }, Parsed::Complete { request: w @ Request::Reject(_), .. }) => {
                    prop_assert_eq!(&r, w, "cut at {}", cut);
                }
                (prefix, whole) => prop_assert_eq!(&prefix, whole, "cut at {}", cut),
            }
        }
    }

    /// A valid upgrade (random header order, case, whitespace, token lists, extra headers, device
    /// id) parses as that upgrade, its length excluding whatever the client sent after it; every
    /// strict prefix of it is `Partial`.
    #[test]
    fn http_valid_upgrade(head in upgrade_head(), after in prop::collection::vec(any::<u8>(), 0..20)) {
        let buf = [&head.bytes[..], &after[..]].concat();
        // The credential lines vary (tokens, offers, origins): what they parse to is checked
        // to lie inside the input (`check_parse`) and by the core's tests.
        let credential = match check_parse(&buf) {
            Parsed::Complete { request: Request::Upgrade { credential, .. }, .. } => credential,
            _ => Default::default(),
        };
        let expected = Request::Upgrade {
            key: head.key.as_bytes(),
            device: head.device.as_deref().map(str::as_bytes),
            since: None,
            credential,
        };
        prop_assert_eq!(check_parse(&buf), Parsed::Complete { len: head.bytes.len(), request: expected },
                        "{}", String::from_utf8_lossy(&head.bytes));
        for cut in 0..head.bytes.len() {
            prop_assert_eq!(check_parse(&head.bytes[..cut]), Parsed::Partial, "cut at {}", cut);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The core, driven as a transport would drive it.

/// A transport that records what the core asks of it, and fails on a write or close to a
/// connection the core already closed.
#[derive(Default)]
struct Recorder {
    sent: HashMap<ConnId, Vec<u8>>,
    /// Closed by the core since it was last opened.
    closed: HashSet<ConnId>,
    /// Every close, in order.
    closes: Vec<ConnId>,
}

impl Io for Recorder {
    /// Never full, so never shut.
    fn peer_window_closed(&mut self, _: ConnId) -> bool {
        false
    }
    /// Takes everything (a transport with room to spare).
    fn write(&mut self, id: ConnId, bytes: &[u8]) -> usize {
        assert!(!self.closed.contains(&id), "write on {id} after its close");
        self.sent.entry(id).or_default().extend_from_slice(bytes);
        bytes.len()
    }
    fn close(&mut self, id: ConnId) {
        assert!(self.closed.insert(id), "{id} closed twice");
        self.closes.push(id);
    }
    fn abort(&mut self, id: ConnId) {
        assert!(self.closed.insert(id), "{id} closed twice");
        self.closes.push(id);
    }
}

/// One piece of what a client might send.
#[derive(Clone, Debug)]
enum Piece {
    Upgrade(Option<u8>),
    Poll(Option<u8>, bool),
    /// A data message, in as many frames as there are fragments.
    Message {
        text: bool,
        fragments: Vec<Vec<u8>>,
    },
    /// Any frame, valid or not (a continuation out of place, a fragmented or long control frame).
    Frame {
        fin: bool,
        op: Op,
        payload: Vec<u8>,
    },
    Close {
        code: u16,
        reason: Vec<u8>,
    },
    /// Anything at all in frame syntax: any first byte, masked or not, any claimed length.
    Raw {
        first: u8,
        mask: Option<[u8; 4]>,
        len: u64,
        body: Vec<u8>,
    },
    Junk(Vec<u8>),
}

const MASK: [u8; 4] = [0x5a, 0x01, 0xc3, 0x7e];

impl Piece {
    fn bytes(&self) -> Vec<u8> {
        let device = |d: &Option<u8>| d.map(|d| format!("?id=dev{d}")).unwrap_or_default();
        match self {
            Piece::Upgrade(d) => format!(
                "GET /ws{} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                device(d)
            )
            .into_bytes(),
            Piece::Poll(d, close) => format!(
                "GET /poll{} HTTP/1.1\r\nHost: h\r\n{}\r\n",
                device(d),
                if *close { "Connection: close\r\n" } else { "" }
            )
            .into_bytes(),
            Piece::Message { text, fragments } => {
                let mut out = Vec::new();
                for (i, fragment) in fragments.iter().enumerate() {
                    let op = match (i, text) {
                        (0, true) => Op::Text,
                        (0, false) => Op::Binary,
                        _ => Op::Continue,
                    };
                    out.extend(client_frame(i + 1 == fragments.len(), op, fragment, MASK));
                }
                out
            }
            Piece::Frame { fin, op, payload } => client_frame(*fin, *op, payload, MASK),
            Piece::Close { code, reason } => {
                let payload = [&code.to_be_bytes()[..], reason].concat();
                client_frame(true, Op::Close, &payload, MASK)
            }
            Piece::Raw { first, mask, len, body } => raw_frame(*first, *mask, *len, body),
            Piece::Junk(bytes) => bytes.clone(),
        }
    }
}

/// A device id out of few, so that connections replace each other.
fn device() -> impl Strategy<Value = Option<u8>> {
    prop_oneof![1 => Just(None), 2 => (0..2u8).prop_map(Some)]
}

/// A data message: UTF-8 text (cut into fragments anywhere, inside code points too) or bytes;
/// sometimes larger than the frame or message limits.
fn message() -> impl Strategy<Value = Piece> {
    let text = prop_oneof![
        4 => "[a-z0-9 é€😀]{0,60}",
        1 => "[a-z]{100,500}",
    ]
    .prop_map(|t| (true, t.into_bytes()));
    let binary = prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..60),
        1 => prop::collection::vec(any::<u8>(), 100..500),
    ]
    .prop_map(|b| (false, b));
    (prop_oneof![text, binary], cuts()).prop_map(|((text, bytes), cuts)| {
        let mut at = positions(bytes.len(), &cuts);
        at.truncate(3);
        Piece::Message {
            text,
            fragments: split_at(&bytes, &at).into_iter().map(<[u8]>::to_vec).collect(),
        }
    })
}

/// A piece that a well-behaved client could send after its upgrade.
fn valid_piece() -> impl Strategy<Value = Piece> {
    let close_code = prop_oneof![1000..=1003u16, 1007..=1011u16, 3000..=4999u16];
    prop_oneof![
        8 => message(),
        3 => (
            prop::sample::select(vec![Op::Ping, Op::Pong]),
            prop::collection::vec(any::<u8>(), 0..=MAX_CONTROL_PAYLOAD)
        )
            .prop_map(|(op, payload)| Piece::Frame { fin: true, op, payload }),
        1 => (close_code, "[a-z ]{0,20}").prop_map(|(code, reason)| Piece::Close { code, reason: reason.into_bytes() }),
        1 => Just(Piece::Frame { fin: true, op: Op::Close, payload: vec![] }),
    ]
}

/// Anything a client might send after its upgrade, valid or not.
fn piece() -> impl Strategy<Value = Piece> {
    let payload = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        prop::collection::vec(any::<u8>(), 120..140),
        prop::collection::vec(any::<u8>(), 380..450),
    ];
    prop_oneof![
        12 => valid_piece(),
        1 => device().prop_map(Piece::Upgrade),
        1 => (device(), any::<bool>()).prop_map(|(d, c)| Piece::Poll(d, c)),
        1 => (any::<bool>(), any_op(), payload).prop_map(|(fin, op, payload)| Piece::Frame { fin, op, payload }),
        1 => (prop_oneof![Just(1005u16), Just(2999), any::<u16>()],
              prop_oneof!["[a-z]{0,10}".prop_map(String::into_bytes), prop::collection::vec(any::<u8>(), 0..4)])
            .prop_map(|(code, reason)| Piece::Close { code, reason }),
        1 => (first_byte(), any::<Option<[u8; 4]>>(), claimed_len(), prop::collection::vec(any::<u8>(), 0..30))
            .prop_map(|(first, mask, len, body)| Piece::Raw { first, mask, len, body }),
        1 => prop::collection::vec(any::<u8>(), 0..30).prop_map(Piece::Junk),
    ]
}

/// What one client sends on one connection: usually a request head first, then frames (all valid
/// in a third of the streams); sometimes a few bytes flipped.
fn client_stream() -> impl Strategy<Value = Vec<u8>> {
    let first = prop_oneof![
        6 => device().prop_map(Piece::Upgrade),
        2 => (device(), any::<bool>()).prop_map(|(d, c)| Piece::Poll(d, c)),
        1 => piece(),
    ];
    let rest = prop_oneof![
        prop::collection::vec(valid_piece(), 0..10),
        prop::collection::vec(piece(), 0..10),
        prop::collection::vec(piece(), 0..10),
    ];
    let mutated = prop_oneof![4 => Just(vec![]), 1 => flips()];
    (first, rest, mutated).prop_map(|(first, rest, flips)| {
        let mut bytes = first.bytes();
        for p in rest {
            bytes.extend(p.bytes());
        }
        mutate(&mut bytes, &flips);
        bytes
    })
}

fn core_config() -> impl Strategy<Value = CoreConfig> {
    let max_request = prop_oneof![1 => 60..200usize, 3 => 200..4096usize];
    // Trust settings too: a device key (tokens are checked), allowed origins (CORS answers),
    // devices only, ids without a key.
    let trust = (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>());
    (125..400usize, 0..1000usize, max_request, any::<bool>(), trust).prop_map(
        |(max_frame, extra, max_request, echo, (key, origins, anonymous, insecure_ids))| CoreConfig {
            echo,
            max_frame,
            max_message: max_frame + extra,
            max_request,
            device_hasher: DeviceHasher::new([1, 2]),
            seed: 7,
            device_auth: key.then(|| DeviceAuth::hs256(FUZZ_KEY).expect("a long key")),
            allowed_origins: if origins {
                vec![b"https://app.example".to_vec()]
            } else {
                vec![]
            },
            anonymous,
            insecure_ids,
            ..CoreConfig::default()
        },
    )
}

const FUZZ_KEY: &[u8] = b"the fuzzer's device key, 32 byte";

/// Header lines that carry credentials and origins: real-looking tokens (some signed with the
/// key, for the ids the heads use), garbage, several offers, allowed and foreign origins.
fn credential_lines() -> impl Strategy<Value = Vec<String>> {
    let token = prop_oneof![
        "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,43}",
        "[ -~]{0,80}",
        Just(testbed_token("dev-1")),
    ];
    let line = (prop::sample::select(vec![0u8, 1, 2, 3, 4]), token).prop_map(|(kind, token)| match kind {
        0 => format!("Authorization: Bearer {token}\r\n"),
        1 => format!("Sec-WebSocket-Protocol: push.v1, bearer.{token}\r\n"),
        2 => format!("Sec-WebSocket-Protocol: bearer.{token}\r\n"),
        3 => "Origin: https://app.example\r\n".to_string(),
        _ => "Origin: https://EVIL.example:443\r\n".to_string(),
    });
    prop::collection::vec(line, 0..4)
}

/// A valid token for `sub` under `FUZZ_KEY` (an hour from now).
fn testbed_token(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = serde_json::json!({ "sub": sub, "exp": exp });
    let key = jsonwebtoken::EncodingKey::from_secret(FUZZ_KEY).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// The most bytes the core may leave unconsumed: a request head up to `max_request`, or an
/// incomplete frame (less than a whole header plus `max_frame`). The XDP transport sizes its
/// spill buffers on this.
fn max_unconsumed(cfg: &CoreConfig) -> usize {
    cfg.max_request.max(cfg.max_frame + MAX_HEADER - 1)
}

/// Present `pending` to the core as a transport does, check what every call must guarantee, and
/// drop what it consumed. Returns whether the connection is still open.
fn feed(core: &mut ServerCore, io: &mut Recorder, id: ConnId, pending: &mut Vec<u8>, consumed: &mut u64) -> bool {
    let before = pending.clone();
    let used = core.data(id, pending, 0, io);
    assert!(used <= before.len(), "consumed {used} of {} bytes", before.len());
    assert_eq!(
        &pending[used..],
        &before[used..],
        "the core changed bytes it did not consume"
    );
    *consumed += used as u64;
    pending.drain(..used);
    let open = core.is_open(id);
    assert_eq!(open, !io.closed.contains(&id), "core and transport disagree on {id}");
    if open {
        assert!(
            pending.len() <= max_unconsumed(core.config()),
            "{} bytes left unconsumed (limit {})",
            pending.len(),
            max_unconsumed(core.config())
        );
    }
    open
}

/// Gauges and counters that must agree with each other at any time.
fn check_stats(s: &CoreStats, open: usize) {
    assert_eq!(s.connections, open as u64, "{s:?}");
    assert_eq!(s.accepted, s.connections + s.closed, "{s:?}");
    assert_eq!(
        s.closed,
        s.closed_by_peer + s.closed_by_client + s.closed_by_server + s.expired,
        "{s:?}"
    );
    assert!(s.websockets + s.polls_held <= s.connections, "{s:?}");
    assert!(s.devices <= s.connections, "{s:?}");
    assert!(s.websockets <= s.upgrades && s.polls_held <= s.polls, "{s:?}");
}

/// Everything the server sent on one connection must be well formed: HTTP responses, and after a
/// `101` only whole, valid, unmasked frames.
fn check_output(out: &[u8]) {
    if out.is_empty() {
        return;
    }
    assert!(out.starts_with(b"HTTP/1.1 "), "{:?}", String::from_utf8_lossy(out));
    if !out.starts_with(b"HTTP/1.1 101 ") {
        return;
    }
    let head = out.windows(4).position(|w| w == b"\r\n\r\n").expect("101 head ends") + 4;
    let mut rest = out[head..].to_vec();
    let mut pos = 0;
    while pos < rest.len() {
        let f = decode(&mut rest[pos..], Role::Client, usize::MAX)
            .expect("a valid server frame")
            .expect("a whole server frame");
        pos += f.wire_len;
    }
}

/// The outcome of feeding some connections their streams in some chunking.
#[derive(Debug, PartialEq)]
struct Outcome {
    /// What was sent on each connection, escaped (readable in a failure report, and exact).
    sent: Vec<String>,
    open: Vec<bool>,
    /// Left unconsumed on the connections still open.
    pending: Vec<Vec<u8>>,
    /// With `bytes_in` zeroed: that counts what was handed in, and the transport stops handing in
    /// bytes once a connection is closed (so it depends on where the last chunk ended).
    stats: CoreStats,
}

/// Open one connection per stream, then feed each its stream, one after the other (the order of
/// connections matters: a device id registered later replaces an earlier one).
/// `cut_at[i]` says where stream `i` is cut (empty: delivered whole).
fn run(cfg: &CoreConfig, streams: &[Vec<u8>], cut_at: &[Vec<usize>]) -> Outcome {
    let mut core = ServerCore::new(cfg.clone(), 4, 0);
    let mut io = Recorder::default();
    let ids: Vec<ConnId> = (0..streams.len() as ConnId).collect();
    for &id in &ids {
        core.open(id, 0, &mut io);
    }
    let mut consumed = 0;
    let mut pending = vec![Vec::new(); streams.len()];
    for (i, stream) in streams.iter().enumerate() {
        for chunk in split_at(stream, cut_at.get(i).map_or(&[][..], |c| &c[..])) {
            if !core.is_open(ids[i]) {
                break;
            }
            pending[i].extend_from_slice(chunk);
            if !feed(&mut core, &mut io, ids[i], &mut pending[i], &mut consumed) {
                pending[i].clear();
            }
            check_stats(core.stats(), ids.iter().filter(|&&id| core.is_open(id)).count());
        }
    }
    assert_eq!(core.stats().bytes_in, consumed);
    let open: Vec<bool> = ids.iter().map(|&id| core.is_open(id)).collect();
    for (i, o) in open.iter().enumerate() {
        if !o {
            pending[i].clear();
        }
    }
    let mut stats = core.stats().clone();
    stats.bytes_in = 0;
    let sent: Vec<Vec<u8>> = ids.iter().map(|id| io.sent.remove(id).unwrap_or_default()).collect();
    for out in &sent {
        check_output(out);
    }
    let sent = sent.iter().map(|out| out.escape_ascii().to_string()).collect();
    // Every connection the core still holds now goes away at the peer; reporting it (or one the
    // core closed) again changes nothing.
    for &id in &ids {
        let was_open = core.is_open(id);
        let before = core.stats().clone();
        core.closed(id, 0, &mut io);
        core.closed(id, 0, &mut io);
        let after = core.stats();
        assert_eq!(after.closed, before.closed + u64::from(was_open));
        assert_eq!(after.closed_by_peer, before.closed_by_peer + u64::from(was_open));
    }
    check_stats(core.stats(), 0);
    assert_eq!(
        (core.stats().websockets, core.stats().polls_held, core.stats().devices),
        (0, 0, 0)
    );
    Outcome {
        sent,
        open,
        pending,
        stats,
    }
}

proptest! {
    #![proptest_config(cases(1000))]

    /// Streams of near-valid client traffic on up to three connections (sharing device ids), with
    /// small limits so that every limit is hit: no panic, `data` never consumes more than it was
    /// given nor touches what it leaves, leaves at most one head or frame's worth of bytes, the
    /// stats stay consistent after every call, a closed connection is closed (and counted) once,
    /// everything sent is well formed, and the same streams cut into different chunks reach the
    /// same outcome: the same bytes sent, the same connections closed, the same counters.
    #[test]
    fn core_chunking_does_not_matter(cfg in core_config(),
                                     streams in prop::collection::vec(client_stream(), 1..4),
                                     chunkings in prop::collection::vec(cuts(), 3),
                                     other in prop::collection::vec(cuts(), 3)) {
        let whole = run(&cfg, &streams, &[]);
        for cuts in [chunkings, other] {
            let at: Vec<Vec<usize>> = streams.iter().zip(&cuts).map(|(s, c)| positions(s.len(), c)).collect();
            prop_assert_eq!(&run(&cfg, &streams, &at), &whole, "cut at {:?}", at);
        }
    }

    /// Completely arbitrary bytes on a fresh connection and on an upgraded one, cut anywhere.
    #[test]
    fn core_arbitrary_bytes(cfg in core_config(), upgraded in any::<bool>(),
                            bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..600), http_soup(), frame_soup()],
                            chunking in cuts()) {
        let head = if upgraded { Piece::Upgrade(None).bytes() } else { vec![] };
        let stream = [head, bytes].concat();
        let streams = [stream];
        let whole = run(&cfg, &streams, &[]);
        let at = [positions(streams[0].len(), &chunking)];
        prop_assert_eq!(&run(&cfg, &streams, &at), &whole, "cut at {:?}", at);
    }
}

proptest! {
    #![proptest_config(cases(200))]

    /// The worst segmentation: every byte in its own read.
    #[test]
    fn core_byte_at_a_time(cfg in core_config(), stream in client_stream()) {
        let streams = [stream];
        let whole = run(&cfg, &streams, &[]);
        let every = [(1..streams[0].len()).collect::<Vec<_>>()];
        prop_assert_eq!(&run(&cfg, &streams, &every), &whole);
    }
}

/// What the transport does next, in the interleaved-connections property.
#[derive(Clone, Debug)]
enum Step {
    Open(ConnId),
    /// The next bytes of the connection's stream: between one byte and all that is left.
    Data(ConnId, Index),
    PeerClosed(ConnId),
    Tick(u64),
    Broadcast,
    Push(u8),
}

const IDS: ConnId = 4;

fn step() -> impl Strategy<Value = Step> {
    let id = 0..IDS;
    prop_oneof![
        2 => id.clone().prop_map(Step::Open),
        8 => (id.clone(), any::<Index>()).prop_map(|(id, n)| Step::Data(id, n)),
        1 => id.prop_map(Step::PeerClosed),
        2 => (0..4000u64).prop_map(Step::Tick),
        1 => Just(Step::Broadcast),
        1 => (0..2u8).prop_map(Step::Push),
    ]
}

proptest! {
    #![proptest_config(cases(1000))]

    /// Several connections interleaved with peer closes, timers (idle expiry, request timeouts,
    /// long-poll answers), broadcasts and pushes: no panic, and after every step the core's idea
    /// of which connections are open matches the transport's, and the stats agree with both
    /// (no gauge underflows, each ended connection counted once).
    #[test]
    fn core_interleaved_connections(cfg in core_config(), request_timeout in prop_oneof![Just(0u64), 100..3000u64],
                                    idle in prop_oneof![Just(0u64), 100..8000u64], hold in (0..3000u64, 0..3000u64),
                                    streams in prop::collection::vec(client_stream(), IDS as usize),
                                    steps in prop::collection::vec(step(), 1..60)) {
        let cfg = CoreConfig { request_timeout_ms: request_timeout, idle_timeout_ms: idle, poll_hold_ms: hold, ..cfg };
        let mut core = ServerCore::new(cfg, 2, 0);
        let mut io = Recorder::default();
        let mut live: HashSet<ConnId> = HashSet::new();
        // Per live connection: how far into its stream it is, and what the core left unconsumed.
        let mut sent_up_to: HashMap<ConnId, usize> = HashMap::new();
        let mut pending: HashMap<ConnId, Vec<u8>> = HashMap::new();
        let mut now = 0;
        let mut consumed = 0;
        for step in steps {
            match step {
                Step::Open(id) => {
                    // A reopened id starts its stream over.
                    if live.insert(id) {
                        io.closed.remove(&id);
                        sent_up_to.insert(id, 0);
                        pending.insert(id, Vec::new());
                        core.open(id, now, &mut io);
                    }
                }
                Step::Data(id, n) => {
                    let stream = &streams[id as usize];
                    if live.contains(&id) && sent_up_to[&id] < stream.len() {
                        let from = sent_up_to[&id];
                        let to = from + 1 + n.index(stream.len() - from);
                        sent_up_to.insert(id, to);
                        let buf = pending.get_mut(&id).unwrap();
                        buf.extend_from_slice(&stream[from..to]);
                        let before = buf.clone();
                        let used = core.data(id, buf, now, &mut io);
                        prop_assert!(used <= before.len());
                        prop_assert_eq!(&buf[used..], &before[used..]);
                        consumed += used as u64;
                        buf.drain(..used);
                    }
                }
                Step::PeerClosed(id) => {
                    if live.remove(&id) {
                        pending.remove(&id);
                        let before = core.stats().clone();
                        core.closed(id, now, &mut io);
                        prop_assert_eq!(core.stats().closed, before.closed + 1);
                        prop_assert_eq!(core.stats().closed_by_peer, before.closed_by_peer + 1);
                        io.closed.insert(id);
                    }
                }
                Step::Tick(ms) => {
                    now += ms;
                    core.tick(now, &mut io);
                }
                Step::Broadcast => {
                    let _ = core.broadcast(b"{\"kind\":\"news\"}", 1, now, &mut io);
                }
                Step::Push(d) => {
                    core.push(format!("dev{d}").as_bytes(), b"{}", now, &mut io);
                }
            }
            // The transport forgets what the core closed. Should it report such a connection as
            // gone too (its FIN came in meanwhile), that is no second end.
            for id in std::mem::take(&mut io.closes) {
                prop_assert!(live.remove(&id), "core closed {} which was not open", id);
                pending.remove(&id);
                let before = core.stats().clone();
                core.closed(id, now, &mut io);
                prop_assert_eq!(core.stats(), &before);
            }
            for id in 0..IDS {
                prop_assert_eq!(core.is_open(id), live.contains(&id), "conn {}", id);
            }
            for (id, buf) in &pending {
                prop_assert!(buf.len() <= max_unconsumed(core.config()), "conn {} holds {} bytes", id, buf.len());
            }
            check_stats(core.stats(), live.len());
            prop_assert_eq!(core.stats().bytes_in, consumed);
        }
        core.shutdown(now, &mut io);
        for id in io.closes.drain(..) {
            prop_assert!(live.remove(&id));
        }
        prop_assert!(live.is_empty());
        check_stats(core.stats(), 0);
    }
}

// ---------------------------------------------------------------------------------------------
// The bugs these properties found, as plain tests.

/// A request head longer than `max_request` was accepted when it arrived in one read but got 431
/// when it arrived in two (found by `core_chunking_does_not_matter`).
#[test]
fn regression_head_over_max_request_is_431_in_one_read_too() {
    let cfg = CoreConfig {
        max_request: 100,
        device_hasher: DeviceHasher::new([1, 2]),
        ..CoreConfig::default()
    };
    let head = Piece::Upgrade(None).bytes();
    assert!(head.len() > 100);
    for at in [vec![], vec![50], vec![101]] {
        let outcome = run(&cfg, std::slice::from_ref(&head), std::slice::from_ref(&at));
        assert!(
            outcome.sent[0].starts_with("HTTP/1.1 431 "),
            "cut at {at:?}: {}",
            outcome.sent[0]
        );
        assert_eq!(outcome.open, [false]);
    }
}

/// With a limit near `usize::MAX`, a header claiming a length near 2^64 overflowed the frame-end
/// computation: a panic in debug builds, an inverted slice range in release (found by
/// `frame_any_claimed_length`).
#[test]
fn regression_huge_length_under_an_unlimited_max_payload() {
    let mut wire = raw_frame(0x82, None, u64::MAX - 9, &[]);
    assert_eq!(
        decode(&mut wire, Role::Client, usize::MAX).unwrap_err(),
        FrameError::TooBig
    );
    let mut wire = raw_frame(0x82, Some(MASK), u64::MAX - 13, &[]);
    assert_eq!(
        decode(&mut wire, Role::Server, usize::MAX).unwrap_err(),
        FrameError::TooBig
    );
}

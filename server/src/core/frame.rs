//! WebSocket frames on plain byte slices (RFC 6455 §5): decode one frame in place, encode headers.
//!
//! `tungstenite::FrameHeader` reads and writes the header bytes; everything the RFC asks an endpoint
//! to *enforce* (mask direction, RSV bits, control-frame limits, size limits, close codes, UTF-8) is
//! here, because tungstenite enforces it only inside its `WebSocket`, which we never instantiate
//! (it allocates a 128 KiB read buffer per connection).

use std::io::Cursor;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// The longest header: 2 bytes + 8 bytes of length + 4 bytes of mask.
pub const MAX_HEADER: usize = 14;
/// RFC 6455 §5.5: control frames carry at most 125 bytes.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Which side we are: a server requires masked frames, a client requires unmasked ones (§5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// The opcodes we accept; reserved ones are a protocol error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Continue,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Op {
    pub fn is_control(self) -> bool {
        matches!(self, Op::Close | Op::Ping | Op::Pong)
    }

    fn to_tungstenite(self) -> OpCode {
        match self {
            Op::Continue => OpCode::Data(Data::Continue),
            Op::Text => OpCode::Data(Data::Text),
            Op::Binary => OpCode::Data(Data::Binary),
            Op::Close => OpCode::Control(Control::Close),
            Op::Ping => OpCode::Control(Control::Ping),
            Op::Pong => OpCode::Control(Control::Pong),
        }
    }
}

/// Why a peer's bytes fail the connection, with the close code we answer (RFC 6455 §7.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("frame or message larger than the limit")]
    TooBig,
    #[error("invalid UTF-8 in a text message or close reason")]
    BadUtf8,
}

impl FrameError {
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::Protocol(_) => close_code::PROTOCOL,
            FrameError::TooBig => close_code::TOO_BIG,
            FrameError::BadUtf8 => close_code::BAD_DATA,
        }
    }
}

/// Close codes this project sends. 4000–4999 are private use (RFC 6455 §7.4.2).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const BAD_DATA: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
    /// The connection was silent for longer than the idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4001;
    /// A newer connection registered the same device id.
    pub const REPLACED: u16 = 4002;
    /// The client did not take its messages while the message log held them (a slow reader).
    pub const SLOW_READER: u16 = 4008;
}

/// One decoded frame; `payload` is already unmasked, in place in the caller's buffer.
#[derive(Debug)]
pub struct Frame<'a> {
    pub fin: bool,
    pub op: Op,
    pub payload: &'a mut [u8],
    /// Header plus payload: how many bytes of the input this frame used.
    pub wire_len: usize,
}

/// The opcode, header length and payload length of the frame at the front of `buf`, once its
/// header is whole (no check beyond the opcode: `decode` checks). A reader that cannot hold a
/// whole large frame reads it in pieces with this.
pub fn header(buf: &[u8]) -> Option<(Op, usize, u64)> {
    let mut cursor = Cursor::new(buf);
    let (header, len) = FrameHeader::parse(&mut cursor).ok()??;
    let op = match header.opcode {
        OpCode::Data(Data::Continue) => Op::Continue,
        OpCode::Data(Data::Text) => Op::Text,
        OpCode::Data(Data::Binary) => Op::Binary,
        OpCode::Control(Control::Close) => Op::Close,
        OpCode::Control(Control::Ping) => Op::Ping,
        OpCode::Control(Control::Pong) => Op::Pong,
        _ => return None,
    };
    Some((op, cursor.position() as usize, len))
}

/// Decode the first frame of `buf`. `Ok(None)`: not all of it is here yet (nothing is consumed).
/// `max_payload` bounds data frames; control frames are bounded by the RFC.
pub fn decode(buf: &mut [u8], role: Role, max_payload: usize) -> Result<Option<Frame<'_>>, FrameError> {
    let mut cursor = Cursor::new(&buf[..]);
    let (header, len) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        // The only error a slice reader can produce is a reserved opcode.
        Err(_) => return Err(FrameError::Protocol("reserved opcode")),
    };
    let header_len = cursor.position() as usize;
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(FrameError::Protocol("reserved bits set without an extension"));
    }
    let op = match header.opcode {
        OpCode::Data(Data::Continue) => Op::Continue,
        OpCode::Data(Data::Text) => Op::Text,
        OpCode::Data(Data::Binary) => Op::Binary,
        OpCode::Control(Control::Close) => Op::Close,
        OpCode::Control(Control::Ping) => Op::Ping,
        OpCode::Control(Control::Pong) => Op::Pong,
        _ => return Err(FrameError::Protocol("reserved opcode")),
    };
    match (role, header.mask.is_some()) {
        (Role::Server, false) => return Err(FrameError::Protocol("client frame is not masked")),
        (Role::Client, true) => return Err(FrameError::Protocol("server frame is masked")),
        _ => {}
    }
    if op.is_control() {
        if !header.is_final {
            return Err(FrameError::Protocol("fragmented control frame"));
        }
        if len > MAX_CONTROL_PAYLOAD as u64 {
            return Err(FrameError::Protocol("control frame longer than 125 bytes"));
        }
    } else if len > max_payload as u64 {
        return Err(FrameError::TooBig);
    }
    // `len` is now at most max(max_payload, 125), so it fits a usize; but with a limit near
    // usize::MAX (an "unlimited" --max-frame) the sum could overflow (found by tests/fuzz_wire.rs:
    // a panic in debug builds, an inverted slice range in release). No buffer can hold such a
    // frame: it is too big.
    let len = len as usize;
    let Some(wire_len) = header_len.checked_add(len) else {
        return Err(FrameError::TooBig);
    };
    if buf.len() < wire_len {
        return Ok(None);
    }
    let payload = &mut buf[header_len..wire_len];
    if let Some(mask) = header.mask {
        apply_mask(payload, mask);
    }
    Ok(Some(Frame {
        fin: header.is_final,
        op,
        payload,
        wire_len,
    }))
}

/// Append a whole frame to `out`: the header, then the payload, masked with `mask` if given (as a
/// client sends it; the server never masks).
pub fn encode(out: &mut Vec<u8>, fin: bool, op: Op, payload: &[u8], mask: Option<[u8; 4]>) {
    let mut header = [0u8; MAX_HEADER];
    let n = encode_header(&mut header, fin, op, payload.len(), mask);
    out.extend_from_slice(&header[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(mask) = mask {
        apply_mask(&mut out[start..], mask);
    }
}

/// Write a frame header for a payload of `len` bytes into `out`; returns the header length.
pub fn encode_header(out: &mut [u8; MAX_HEADER], fin: bool, op: Op, len: usize, mask: Option<[u8; 4]>) -> usize {
    let header = FrameHeader {
        is_final: fin,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode: op.to_tungstenite(),
        mask,
    };
    let mut cursor = Cursor::new(&mut out[..]);
    // A header never exceeds MAX_HEADER bytes, so writing into the array cannot fail.
    header
        .format(len as u64, &mut cursor)
        .expect("a frame header fits in MAX_HEADER bytes");
    cursor.position() as usize
}

/// XOR `data` with the 4-byte masking key (RFC 6455 §5.3), eight bytes at a time where it can.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The tail starts at a multiple of 8, hence of 4: the mask phase is 0 again.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// Check a close frame's payload (§5.5.1, §7.4): empty, or a valid code and a UTF-8 reason.
/// Returns the code, if any.
pub fn parse_close(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::Protocol("close frame with a 1-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(FrameError::Protocol("invalid close code"));
            }
            std::str::from_utf8(reason).map_err(|_| FrameError::BadUtf8)?;
            Ok(Some(code))
        }
    }
}

/// Build a close payload (code + reason) into `out`; returns its length. The reason is cut so the
/// frame stays within the control-frame limit.
pub fn close_payload(out: &mut [u8; MAX_CONTROL_PAYLOAD], code: u16, reason: &str) -> usize {
    out[..2].copy_from_slice(&code.to_be_bytes());
    let mut n = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(n) {
        n -= 1;
    }
    out[2..2 + n].copy_from_slice(&reason.as_bytes()[..n]);
    2 + n
}

/// UTF-8 validation across the frames of one fragmented text message: a code point may be split
/// between two frames, so up to 3 bytes of an unfinished code point are carried over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Utf8Carry {
    bytes: [u8; 3],
    len: u8,
}

impl Utf8Carry {
    pub const EMPTY: Utf8Carry = Utf8Carry { bytes: [0; 3], len: 0 };

    /// Two bytes of another phase kept here while no text message can be in progress (a held
    /// long-poll's origin, `conn.rs`): a text message's first fragment starts from `EMPTY`.
    pub fn stashing(value: u16) -> Utf8Carry {
        let [a, b] = value.to_le_bytes();
        Utf8Carry {
            bytes: [a, b, 0],
            len: 0,
        }
    }

    pub fn stashed(&self) -> u16 {
        u16::from_le_bytes([self.bytes[0], self.bytes[1]])
    }

    /// Validate the next piece of a text message; `fin` says it is the last piece.
    pub fn feed(&mut self, mut data: &[u8], fin: bool) -> Result<(), FrameError> {
        if self.len > 0 {
            let have = self.len as usize;
            let need = sequence_len(self.bytes[0]).saturating_sub(have);
            let take = need.min(data.len());
            let mut joined = [0u8; 4];
            joined[..have].copy_from_slice(&self.bytes[..have]);
            joined[have..have + take].copy_from_slice(&data[..take]);
            let joined = &joined[..have + take];
            match std::str::from_utf8(joined) {
                Ok(_) => self.len = 0,
                Err(e) if e.error_len().is_none() && !fin => {
                    // Still unfinished: keep carrying (at most 3 bytes, since `need` was not met).
                    self.bytes[..joined.len()].copy_from_slice(joined);
                    self.len = joined.len() as u8;
                    return Ok(());
                }
                Err(_) => return Err(FrameError::BadUtf8),
            }
            data = &data[take..];
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() && !fin => {
                let tail = &data[e.valid_up_to()..];
                self.bytes[..tail.len()].copy_from_slice(tail);
                self.len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(FrameError::BadUtf8),
        }
    }
}

/// Length of the UTF-8 sequence that starts with `lead` (only called on a valid prefix).
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser would send it.
    fn client_frame(fin: bool, op: Op, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, fin, op, payload, Some([0x37, 0xfa, 0x21, 0x3d]));
        out
    }

    #[test]
    fn masked_text_frame_round_trips() {
        let mut wire = client_frame(true, Op::Text, b"Hello");
        // RFC 6455 §5.7 example: the masked "Hello" frame.
        assert_eq!(&wire[..2], &[0x81, 0x85]);
        let f = decode(&mut wire, Role::Server, 1024).unwrap().unwrap();
        assert!(f.fin);
        assert_eq!(f.op, Op::Text);
        assert_eq!(f.payload, b"Hello");
        assert_eq!(f.wire_len, 11);
    }

    #[test]
    fn length_encoding_boundaries_125_126_127() {
        for (len, header_len) in [(0, 6), (125, 6), (126, 8), (65535, 8), (65536, 14), (70000, 14)] {
            let payload = vec![b'a'; len];
            let mut wire = client_frame(true, Op::Binary, &payload);
            assert_eq!(wire.len(), header_len + len, "len {len}");
            let f = decode(&mut wire, Role::Server, 1 << 20).unwrap().unwrap();
            assert_eq!(f.payload.len(), len);
            assert_eq!(f.wire_len, header_len + len);
            assert!(f.payload.iter().all(|&b| b == b'a'));
        }
    }

    #[test]
    fn incomplete_frames_consume_nothing() {
        let wire = client_frame(true, Op::Binary, &[7u8; 300]);
        for cut in 0..wire.len() {
            let mut part = wire[..cut].to_vec();
            assert!(decode(&mut part, Role::Server, 1024).unwrap().is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn unmasked_client_frame_is_a_protocol_error() {
        let mut hdr = [0u8; MAX_HEADER];
        let n = encode_header(&mut hdr, true, Op::Text, 2, None);
        let mut wire = hdr[..n].to_vec();
        wire.extend_from_slice(b"hi");
        let err = decode(&mut wire, Role::Server, 1024).unwrap_err();
        assert_eq!(err.close_code(), close_code::PROTOCOL);
        // The same bytes are what a client must see from a server.
        let f = decode(&mut wire, Role::Client, 1024).unwrap().unwrap();
        assert_eq!(f.payload, b"hi");
    }

    #[test]
    fn masked_server_frame_is_rejected_by_a_client() {
        let mut wire = client_frame(true, Op::Text, b"x");
        assert!(decode(&mut wire, Role::Client, 1024).is_err());
    }

    #[test]
    fn control_frame_rules() {
        let mut long_ping = client_frame(true, Op::Ping, &[0u8; 126]);
        assert_eq!(
            decode(&mut long_ping, Role::Server, 1 << 20).unwrap_err().close_code(),
            1002
        );
        let mut max_ping = client_frame(true, Op::Ping, &[0u8; 125]);
        assert_eq!(
            decode(&mut max_ping, Role::Server, 1).unwrap().unwrap().payload.len(),
            125
        );
        let mut fragmented_ping = client_frame(false, Op::Ping, b"p");
        assert_eq!(
            decode(&mut fragmented_ping, Role::Server, 1024)
                .unwrap_err()
                .close_code(),
            1002
        );
    }

    #[test]
    fn reserved_bits_and_opcodes_are_rejected() {
        let mut rsv = client_frame(true, Op::Text, b"x");
        rsv[0] |= 0x40;
        assert!(matches!(
            decode(&mut rsv, Role::Server, 1024),
            Err(FrameError::Protocol(_))
        ));
        for opcode in [3u8, 7, 0xb, 0xf] {
            let mut bad = client_frame(true, Op::Text, b"x");
            bad[0] = 0x80 | opcode;
            assert!(
                matches!(decode(&mut bad, Role::Server, 1024), Err(FrameError::Protocol(_))),
                "{opcode}"
            );
        }
    }

    #[test]
    fn oversize_frame_is_too_big_before_its_payload_arrives() {
        let wire = client_frame(true, Op::Binary, &[0u8; 2000]);
        let mut header_only = wire[..8].to_vec();
        assert_eq!(
            decode(&mut header_only, Role::Server, 1000).unwrap_err(),
            FrameError::TooBig
        );
        // A 64-bit length with the top bit set is also too big, not an overflow.
        let mut huge = vec![0x82, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(decode(&mut huge, Role::Server, 1000).unwrap_err(), FrameError::TooBig);
    }

    #[test]
    fn mask_is_its_own_inverse_at_every_length_and_offset() {
        for len in 0..40 {
            let original: Vec<u8> = (0..len as u8).collect();
            let mut data = original.clone();
            apply_mask(&mut data, [1, 2, 3, 4]);
            for (i, (a, b)) in data.iter().zip(&original).enumerate() {
                assert_eq!(*a, b ^ [1, 2, 3, 4][i % 4]);
            }
            apply_mask(&mut data, [1, 2, 3, 4]);
            assert_eq!(data, original);
        }
    }

    #[test]
    fn close_payload_rules() {
        assert_eq!(parse_close(&[]), Ok(None));
        assert!(parse_close(&[3]).is_err());
        assert_eq!(parse_close(&[0x03, 0xe8]), Ok(Some(1000)));
        assert_eq!(parse_close(&[0x03, 0xe8, b'o', b'k']), Ok(Some(1000)));
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
            assert!(parse_close(&bad.to_be_bytes()).is_err(), "{bad}");
        }
        assert_eq!(parse_close(&[0x03, 0xe8, 0xff]), Err(FrameError::BadUtf8));
        let mut out = [0u8; MAX_CONTROL_PAYLOAD];
        let n = close_payload(&mut out, 4001, &"é".repeat(100));
        assert!(n <= MAX_CONTROL_PAYLOAD);
        assert_eq!(parse_close(&out[..n]), Ok(Some(4001)));
    }

    #[test]
    fn utf8_split_across_fragments() {
        let text = "añ€😀z".as_bytes();
        for cut1 in 0..=text.len() {
            for cut2 in cut1..=text.len() {
                let mut carry = Utf8Carry::default();
                carry.feed(&text[..cut1], false).unwrap();
                carry.feed(&text[cut1..cut2], false).unwrap();
                carry.feed(&text[cut2..], true).unwrap();
            }
        }
        let mut carry = Utf8Carry::default();
        carry.feed(&text[..2], false).unwrap();
        // The message ends in the middle of 'ñ'.
        assert_eq!(carry.feed(&[], true), Err(FrameError::BadUtf8));
        let mut carry = Utf8Carry::default();
        assert_eq!(
            carry.feed(&[0xed, 0xa0, 0x80], true),
            Err(FrameError::BadUtf8),
            "surrogate"
        );
        let mut carry = Utf8Carry::default();
        carry.feed(&[0xf0, 0x9f], false).unwrap();
        assert_eq!(
            carry.feed(&[0x41], false),
            Err(FrameError::BadUtf8),
            "broken continuation"
        );
    }
}

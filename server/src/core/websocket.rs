//! The core's WebSocket side (RFC 6455): frames parsed in place and unmasked, fragmented
//! messages checked (UTF-8, size), pings answered, close handshakes, and the close frames the
//! server sends.

use super::conn::{Ended, Frag, Phase};
use super::frame::{self, close_code, FrameError, Op, Role, Utf8Carry, MAX_CONTROL_PAYLOAD, MAX_HEADER};
use super::{ConnId, Io, ServerCore};

impl ServerCore {
    pub(super) fn frames(&mut self, id: ConnId, buf: &mut [u8], mut pos: usize, io: &mut impl Io) -> usize {
        loop {
            let frame = match frame::decode(&mut buf[pos..], Role::Server, self.cfg.max_frame) {
                Ok(None) => return pos,
                Ok(Some(frame)) => frame,
                Err(e) => {
                    self.protocol_error(id, e, io);
                    return buf.len();
                }
            };
            pos += frame.wire_len;
            if let Err(e) = self.frame(id, frame.fin, frame.op, frame.payload, io) {
                self.protocol_error(id, e, io);
                return buf.len();
            }
            if self.conns[id as usize].phase() != Phase::Ws {
                return buf.len();
            }
            // Past two messages of its own output waiting (pongs, echoes): the rest stays with
            // the transport until the peer takes some, so one client cannot fill the shared log.
            if self.input_paused(id) {
                return pos;
            }
        }
    }

    pub(super) fn frame(
        &mut self,
        id: ConnId,
        fin: bool,
        op: Op,
        payload: &[u8],
        io: &mut impl Io,
    ) -> Result<(), FrameError> {
        let max_message = self.cfg.max_message;
        let c = &mut self.conns[id as usize];
        match op {
            Op::Text | Op::Binary => {
                if c.frag() != Frag::None {
                    return Err(FrameError::Protocol("new message before the fragmented one ended"));
                }
                if op == Op::Text {
                    c.utf8 = Utf8Carry::EMPTY;
                    c.utf8.feed(payload, fin)?;
                }
                if !fin {
                    c.set_frag(if op == Op::Text { Frag::Text } else { Frag::Binary });
                    // In the Ws phase `timed` counts the fragmented message's bytes.
                    c.timed = payload.len() as u32;
                }
            }
            Op::Continue => {
                if c.frag() == Frag::None {
                    return Err(FrameError::Protocol("continuation frame without a message"));
                }
                c.timed = c.timed.saturating_add(payload.len() as u32);
                if c.timed as usize > max_message {
                    return Err(FrameError::TooBig);
                }
                if c.frag() == Frag::Text {
                    c.utf8.feed(payload, fin)?;
                }
                if fin {
                    c.set_frag(Frag::None);
                }
            }
            Op::Ping => {
                self.stats.pings += 1;
                self.send_frame(id, true, Op::Pong, payload, io);
                return Ok(());
            }
            Op::Pong => return Ok(()),
            Op::Close => {
                let code = frame::parse_close(payload)?;
                let mut reply = [0u8; MAX_CONTROL_PAYLOAD];
                let n = match code {
                    Some(code) => frame::close_payload(&mut reply, code, ""),
                    None => 0,
                };
                self.send_frame(id, true, Op::Close, &reply[..n], io);
                if self.is_open(id) {
                    self.close(id, Ended::Client, io);
                }
                return Ok(());
            }
        }
        // A data frame.
        if fin {
            self.stats.messages_in += 1;
        }
        if self.cfg.echo {
            self.send_frame(id, fin, op, payload, io);
            if fin {
                self.stats.echoed += 1;
                self.stats.messages_out += 1;
            }
        }
        Ok(())
    }

    pub(super) fn protocol_error(&mut self, id: ConnId, e: FrameError, io: &mut impl Io) {
        self.stats.protocol_errors += 1;
        self.log.warn(self.now_ms, format_args!("conn {id}: closing on {e}"));
        self.end_with_close_frame(id, e.close_code(), &e.to_string(), io);
    }

    /// Send a close frame (WebSocket connections only) and close.
    pub(super) fn end_with_close_frame(&mut self, id: ConnId, code: u16, reason: &str, io: &mut impl Io) {
        if self.conns[id as usize].phase() == Phase::Ws {
            let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
            let n = frame::close_payload(&mut payload, code, reason);
            self.send_frame(id, true, Op::Close, &payload[..n], io);
        }
        if matches!(self.conns[id as usize].phase(), Phase::Free | Phase::Closing) {
            return; // gone while sending (a slow reader), or already closing
        }
        let ended = if code == close_code::IDLE_TIMEOUT {
            Ended::Expired
        } else {
            Ended::Server
        };
        self.close(id, ended, io);
    }

    pub(super) fn send_frame(&mut self, id: ConnId, fin: bool, op: Op, payload: &[u8], io: &mut impl Io) {
        let mut header = [0u8; MAX_HEADER];
        let n = frame::encode_header(&mut header, fin, op, payload.len(), None);
        self.emit(id, &[&header[..n], payload], io);
    }
}

//! What the application calls on a connection: read, peek, write, close, abort, and connect
//! (client mode: the next free source address and port).

use std::net::SocketAddrV4;

use smoltcp::wire::Ipv4Address;

use super::conn::fin_received;
use super::one_slot::sock_mut;
use super::slot::{flag, tick_after, Slot, NO_SLOT, SLOT_EMPTY};
use super::{CloseReason, ConnId, ConnectError, Net};
use crate::wire::FourTuple;
use timing::wheel::Entry;

impl Net {
    pub(super) fn release(&mut self, id: ConnId, abort: bool) {
        let Some(s) = self.owned(id) else { return };
        {
            let sock = sock_mut(&mut self.sockets[s], self.handle);
            if abort {
                sock.abort();
                self.stats.app_aborts += 1;
            } else {
                sock.close();
            }
        }
        self.slots[s].flags &= !(flag::OWNED | flag::WANT_WRITE);
        self.slots[s].flags |= flag::RELEASED;
        // The connection must finish closing by then, or it is reset: smoltcp has no FIN-WAIT-2
        // timeout, its own timeout is off here (see `process`), and a peer that never
        // acknowledges our FIN or never closes must not keep a slot forever.
        let deadline = tick_after(self.now, self.config.close_linger);
        self.slots[s].user = deadline;
        self.wheel.insert(
            deadline,
            Entry {
                id: s as u32,
                tag: deadline,
            },
        );
        // The FIN or RST goes out at the next flush; the slot is retired once the socket is done.
        self.mark_dirty(s);
    }

    /// Copy buffered bytes into `buf` without consuming them (both parts of the ring).
    pub(super) fn peek(&mut self, id: ConnId, buf: &mut [u8]) -> usize {
        let Some(s) = self.owned(id) else { return 0 };
        sock_mut(&mut self.sockets[s], self.handle).peek_slice(buf).unwrap_or(0)
    }

    pub(super) fn read_with(&mut self, id: ConnId, f: impl FnOnce(&mut [u8]) -> usize) -> usize {
        let Some(s) = self.owned(id) else { return 0 };
        let sock = sock_mut(&mut self.sockets[s], self.handle);
        let n = sock.recv(|buf| {
            let n = f(buf).min(buf.len());
            (n, n)
        });
        let n = n.unwrap_or(0);
        let peer_done = !sock.may_recv() || fin_received(sock.state());
        if n > 0 {
            // The window opened: let the peer know at the next flush.
            self.mark_dirty(s);
            self.note_buffers(s, self.now);
        }
        if peer_done && self.slots[s].flags & (flag::CLOSED_SENT | flag::ESTABLISHED) == flag::ESTABLISHED {
            self.report_closed(s, CloseReason::PeerClosed);
        }
        n
    }

    pub(super) fn write(&mut self, id: ConnId, data: &[u8]) -> usize {
        let Some(s) = self.owned(id) else { return 0 };
        let n = sock_mut(&mut self.sockets[s], self.handle)
            .send_slice(data)
            .unwrap_or(0);
        if n < data.len() {
            self.slots[s].flags |= flag::WANT_WRITE;
        }
        if n > 0 {
            self.mark_dirty(s);
            self.note_buffers(s, self.now);
        }
        n
    }

    pub(super) fn connect(&mut self, remote: SocketAddrV4) -> Result<ConnId, ConnectError> {
        let sources = self.config.source_addrs.len();
        if sources == 0 {
            return Err(ConnectError::NoSourceAddress);
        }
        if self.free_head == NO_SLOT {
            return Err(ConnectError::NoCapacity(self.config.max_conns));
        }
        let s = self.free_head as usize;
        let (lo, hi) = self.config.source_ports;
        let span = usize::from(hi - lo) + 1;
        // Walk (address, port) pairs round-robin from where the last connect stopped; each probe
        // is one table lookup, and the walk ends after one full round.
        let mut found = None;
        for _ in 0..sources * span {
            let (ai, port) = self.next_source;
            self.next_source = if port >= hi {
                ((ai + 1) % sources, lo)
            } else {
                (ai, port + 1)
            };
            let t = FourTuple::new((self.config.source_addrs[ai], port), (*remote.ip(), remote.port()));
            if self.table.get(&t, &self.tuples).is_none() && self.time_waits.get(&t).is_none() {
                found = Some(t);
                break;
            }
        }
        let t = found.ok_or(ConnectError::NoSourcePort(remote))?;
        let sock = sock_mut(&mut self.sockets[s], self.handle);
        sock.abort();
        let (laddr, lport) = t.local();
        sock.connect(
            self.iface.context(),
            (Ipv4Address::from(remote.ip().octets()), remote.port()),
            (Ipv4Address::from(laddr.octets()), lport),
        )
        .map_err(|e| ConnectError::Smoltcp(e.to_string()))?;
        self.take_free();
        self.tuples[s] = t;
        self.slots[s] = Slot {
            flags: flag::IN_USE | flag::IN_TABLE | flag::OWNED | flag::ACTIVE,
            ..SLOT_EMPTY
        };
        self.table.insert(s as u32, &self.tuples);
        self.stats.connects += 1;
        self.mark_dirty(s);
        Ok(ConnId(s as u32))
    }
}

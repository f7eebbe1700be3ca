//! smoltcp's `Device`, fed one frame at a time. The stack demultiplexes a frame itself, puts the one
//! socket it belongs to into a one-slot `SocketSet`, and hands smoltcp a device that yields exactly
//! that frame: smoltcp never scans more than one socket. Transmission builds frames directly in the
//! link's buffers behind our Ethernet shim.

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::link::Sender;
use crate::stack::sequence::{self, SeqState};
use crate::wire::{EthShim, ETH_HEADER};

pub struct Port<'a, S: Sender> {
    /// The IPv4 packet to deliver, taken by the first `receive`.
    pub frame: Option<&'a [u8]>,
    pub sender: &'a mut S,
    pub shim: EthShim,
    pub mtu: usize,
    pub verify_rx_checksum: bool,
    /// Set when smoltcp wanted to send and the link had no room.
    pub starved: bool,
    /// The connection's sequence translation, when the port serves one connection.
    pub(crate) seq: Option<&'a mut SeqState>,
    /// Our ISN on the wire, while none is chosen: taken by the first SYN sent.
    pub(crate) new_isn: Option<u32>,
    /// Set when a segment carrying data left (the tail probe is armed on it).
    pub(crate) sent_data: bool,
}

impl<S: Sender> phy::Device for Port<'_, S> {
    type RxToken<'b>
        = Rx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = Tx<'b, S>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(Rx<'_>, Tx<'_, S>)> {
        let frame = self.frame.take()?;
        Some((
            Rx(frame),
            Tx {
                sender: self.sender,
                shim: self.shim,
                seq: self.seq.as_deref_mut(),
                new_isn: &mut self.new_isn,
                sent_data: &mut self.sent_data,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Tx<'_, S>> {
        if !self.sender.can_send() {
            self.starved = true;
            return None;
        }
        Some(Tx {
            sender: self.sender,
            shim: self.shim,
            seq: self.seq.as_deref_mut(),
            new_isn: &mut self.new_isn,
            sent_data: &mut self.sent_data,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps.max_burst_size = Some(1);
        let mut checksum = ChecksumCapabilities::default();
        if !self.verify_rx_checksum {
            checksum.ipv4 = Checksum::Tx;
            checksum.tcp = Checksum::Tx;
        }
        caps.checksum = checksum;
        caps
    }
}

pub struct Rx<'a>(&'a [u8]);

impl phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

pub struct Tx<'a, S: Sender> {
    sender: &'a mut S,
    shim: EthShim,
    seq: Option<&'a mut SeqState>,
    new_isn: &'a mut Option<u32>,
    sent_data: &'a mut bool,
}

impl<S: Sender> phy::TxToken for Tx<'_, S> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let shim = self.shim;
        let mut f = Some(f);
        let mut out = None;
        let (mut seq, new_isn, sent_data) = (self.seq, self.new_isn, self.sent_data);
        self.sender.send(ETH_HEADER + len, &mut |frame: &mut [u8]| {
            shim.write(frame);
            if let Some(f) = f.take() {
                out = Some(f(&mut frame[ETH_HEADER..]));
                // smoltcp's numbers become the wire's (only what actually leaves is translated:
                // a SYN dropped for want of room chooses the ISN when it is sent again).
                if let Some(st) = seq.as_deref_mut() {
                    if sequence::on_egress(st, &mut frame[ETH_HEADER..], *new_isn) {
                        *new_isn = None;
                    }
                    if sequence::payload_len(&frame[ETH_HEADER..]) > 0 {
                        *sent_data = true;
                    }
                }
            }
        });
        match out {
            Some(r) => r,
            // The link had no room after all: smoltcp still needs its result, so let it build the
            // packet into a scratch buffer that is then dropped (counted by the link).
            None => {
                // Sized for the largest MTU the configuration accepts, so `len` always fits.
                let mut scratch = [0u8; crate::config::MAX_MTU];
                let n = len.min(scratch.len());
                match f.take() {
                    Some(f) => f(&mut scratch[..n]),
                    None => unreachable!("the builder ran or was handed back"),
                }
            }
        }
    }
}

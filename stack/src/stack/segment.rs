//! The few segments the stack writes itself, outside smoltcp: stateless answers (a cookie's
//! SYN-ACK, a parked TIME-WAIT's final ACK) and segments it hands smoltcp as if the peer had sent
//! them (a cookie's rebuilt SYN, a tail probe's duplicate ACKs). No data, no window scaling.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpAddress, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use crate::wire::FourTuple;

/// Which way a built segment goes on connection `t`.
#[derive(Clone, Copy)]
pub(super) enum Way {
    /// From us to the peer.
    Out,
    /// From the peer to us (handed to smoltcp).
    In,
}

/// What a built segment says besides its addresses.
pub(super) struct Fields {
    pub(super) syn: bool,
    pub(super) seq: u32,
    pub(super) ack: Option<u32>,
    pub(super) window: u16,
    pub(super) mss: Option<u16>,
}

/// The segment as an IPv4 packet in `out`, checksums filled; returns its length (at most 44).
pub(super) fn build(t: &FourTuple, way: Way, f: Fields, out: &mut [u8]) -> usize {
    let (ours, theirs) = (Ipv4Address::from(t.local_addr), Ipv4Address::from(t.remote_addr));
    let ((src, src_port), (dst, dst_port)) = match way {
        Way::Out => ((ours, t.local_port), (theirs, t.remote_port)),
        Way::In => ((theirs, t.remote_port), (ours, t.local_port)),
    };
    let tcp = TcpRepr {
        src_port,
        dst_port,
        control: if f.syn { TcpControl::Syn } else { TcpControl::None },
        seq_number: TcpSeqNumber(f.seq as i32),
        ack_number: f.ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: f.window,
        window_scale: None,
        max_seg_size: f.mss,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let len = ip.buffer_len() + tcp.buffer_len();
    let caps = ChecksumCapabilities::default();
    let out = &mut out[..len];
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut out[..20]), &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut out[20..]),
        &IpAddress::Ipv4(src),
        &IpAddress::Ipv4(dst),
        &caps,
    );
    len
}

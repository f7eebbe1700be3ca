//! Just enough header parsing to demultiplex a frame before smoltcp sees it, and the 14-byte
//! Ethernet shim in front of what smoltcp sends.
//!
//! Why `Medium::Ip` plus our own shim rather than `Medium::Ethernet` with ARP steered to us: the
//! kernel keeps the interface address, answers ARP and ICMP, and serves every other port (the
//! admin endpoint, ssh) on the same address, while smoltcp's neighbour cache (8 entries, a 1 s
//! cache-wide ARP rate limit) would have to learn every peer. Behind a router or a veth there is
//! exactly one next hop, so one learned (or configured) MAC address is all the Ethernet we need.
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

pub const ETH_HEADER: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A connection's 4-tuple, seen from our side. 12 bytes: this is also what the connection table
/// compares on lookup, so it is stored once per slot and nowhere else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct FourTuple {
    pub local_addr: [u8; 4],
    pub remote_addr: [u8; 4],
    pub local_port: u16,
    pub remote_port: u16,
}

impl FourTuple {
    pub fn new(local: (Ipv4Addr, u16), remote: (Ipv4Addr, u16)) -> FourTuple {
        FourTuple {
            local_addr: local.0.octets(),
            remote_addr: remote.0.octets(),
            local_port: local.1,
            remote_port: remote.1,
        }
    }
    pub fn local(&self) -> (Ipv4Addr, u16) {
        (Ipv4Addr::from(self.local_addr), self.local_port)
    }
    pub fn remote(&self) -> (Ipv4Addr, u16) {
        (Ipv4Addr::from(self.remote_addr), self.remote_port)
    }
}

/// What the stack needs to know about a received TCP/IPv4 frame.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    pub tuple: FourTuple,
    pub flags: u8,
    /// Sequence and acknowledgement numbers, as on the wire.
    pub seq: u32,
    pub ack: u32,
    /// Bytes of payload (after the TCP header and its options).
    pub payload_len: usize,
    /// The window the sender advertises, unscaled (0 is 0 at any scale: it stopped reading).
    pub window: u16,
    /// The sender's MAC address: our next hop.
    pub src_mac: [u8; 6],
    /// The IPv4 packet inside the frame (Ethernet header and padding cut off).
    pub ip_start: usize,
    pub ip_end: usize,
}

/// Why a frame was not a TCP/IPv4 segment we can hand to smoltcp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotTcp {
    /// Not IPv4 (ARP, IPv6, VLAN-tagged…): the XDP program should not have sent it here.
    NotIpv4,
    /// IPv4 but not TCP, or a fragment.
    NotTcp,
    /// Lengths or header fields that do not add up.
    Malformed,
}

/// Parse an Ethernet frame far enough to find its 4-tuple. Never panics on any input.
///
/// Only untagged IPv4 TCP that is not a fragment, which is exactly what the XDP program
/// (`xdp-prog/src/bpf/steer.bpf.c`) steers to us: VLAN-tagged frames and fragments stay with the
/// kernel, which owns the VLAN interfaces and reassembles fragments (`xdp-prog`'s tests hold the
/// program to this function frame by frame).
pub fn parse(frame: &[u8]) -> Result<Segment, NotTcp> {
    if frame.len() < ETH_HEADER + 20 {
        return Err(NotTcp::Malformed);
    }
    if u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV4 {
        return Err(NotTcp::NotIpv4);
    }
    let ip = &frame[ETH_HEADER..];
    if ip[0] >> 4 != 4 {
        return Err(NotTcp::Malformed);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ihl < 20 || total < ihl + 20 || total > ip.len() {
        return Err(NotTcp::Malformed);
    }
    if ip[9] != IPPROTO_TCP {
        return Err(NotTcp::NotTcp);
    }
    // More-fragments or a fragment offset: smoltcp is built without reassembly.
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return Err(NotTcp::NotTcp);
    }
    let tcp = &ip[ihl..total];
    // A bad data offset is smoltcp's to refuse (the XDP program steers such frames like any).
    let doff = usize::from(tcp[12] >> 4) * 4;
    let mut src_mac = [0u8; 6];
    src_mac.copy_from_slice(&frame[6..12]);
    Ok(Segment {
        tuple: FourTuple {
            local_addr: [ip[16], ip[17], ip[18], ip[19]],
            remote_addr: [ip[12], ip[13], ip[14], ip[15]],
            local_port: u16::from_be_bytes([tcp[2], tcp[3]]),
            remote_port: u16::from_be_bytes([tcp[0], tcp[1]]),
        },
        flags: tcp[13],
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
        payload_len: tcp.len().saturating_sub(doff),
        window: u16::from_be_bytes([tcp[14], tcp[15]]),
        src_mac,
        ip_start: ETH_HEADER,
        ip_end: ETH_HEADER + total,
    })
}

/// Bytes of TCP payload in an IPv4 packet (starting at its IP header); 0 for anything too short
/// or inconsistent to say (smoltcp refuses those). Never panics on any input.
pub fn ipv4_tcp_payload_len(ip: &[u8]) -> usize {
    if ip.len() < 20 {
        return 0;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let Some(&offset) = ip.get(ihl + 12) else { return 0 };
    total.saturating_sub(ihl + usize::from(offset >> 4) * 4)
}

/// A MAC address as `02:00:00:00:00:01`, for logs.
pub fn mac_string(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// The Ethernet header written in front of every IPv4 packet smoltcp sends.
#[derive(Clone, Copy, Debug)]
pub struct EthShim {
    pub our_mac: [u8; 6],
    /// The next hop; learned from received frames unless configured.
    pub next_hop: [u8; 6],
}

impl EthShim {
    pub fn write(&self, frame: &mut [u8]) {
        frame[0..6].copy_from_slice(&self.next_hop);
        frame[6..12].copy_from_slice(&self.our_mac);
        frame[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal Ethernet + IPv4 + TCP frame (checksums not filled: parse does not look at them).
    pub fn frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 54];
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&40u16.to_be_bytes());
        f[23] = IPPROTO_TCP;
        f[26..30].copy_from_slice(&src);
        f[30..34].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f[46] = 0x50;
        f[47] = flags;
        f
    }

    #[test]
    fn parses_the_tuple_from_our_side() {
        let mut f = frame([198, 19, 0, 2], [198, 18, 0, 1], 40000, 8080, TCP_SYN);
        f.extend_from_slice(&[0; 6]); // Ethernet padding is cut off
        let s = parse(&f).unwrap();
        assert_eq!(s.tuple.local(), (Ipv4Addr::new(198, 18, 0, 1), 8080));
        assert_eq!(s.tuple.remote(), (Ipv4Addr::new(198, 19, 0, 2), 40000));
        assert_eq!(s.flags, TCP_SYN);
        assert_eq!(s.window, 0);
        f[48..50].copy_from_slice(&512u16.to_be_bytes());
        assert_eq!(parse(&f).unwrap().window, 512);
        assert_eq!(s.src_mac, [2, 0, 0, 0, 0, 9]);
        assert_eq!((s.ip_start, s.ip_end), (14, 54));
    }

    #[test]
    fn rejects_what_is_not_plain_tcp_ipv4() {
        let good = frame([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, TCP_ACK);
        let mut arp = good.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(parse(&arp).unwrap_err(), NotTcp::NotIpv4);
        let mut udp = good.clone();
        udp[23] = 17;
        assert_eq!(parse(&udp).unwrap_err(), NotTcp::NotTcp);
        let mut frag = good.clone();
        frag[20] = 0x20; // more fragments
        assert_eq!(parse(&frag).unwrap_err(), NotTcp::NotTcp);
        let mut long = good.clone();
        long[16..18].copy_from_slice(&400u16.to_be_bytes());
        assert_eq!(parse(&long).unwrap_err(), NotTcp::Malformed);
        let mut ihl = good.clone();
        ihl[14] = 0x44;
        assert_eq!(parse(&ihl).unwrap_err(), NotTcp::Malformed);
    }

    /// VLAN-tagged frames and every fragment are not ours, as the XDP program passes them to the
    /// kernel (its counters `passed_vlan` and `passed_fragment`); don't-fragment alone is fine.
    #[test]
    fn rejects_vlan_tags_and_every_fragment() {
        let good = frame([198, 19, 0, 2], [198, 18, 0, 1], 40000, 8080, TCP_SYN);
        let tagged = |tags: &[[u8; 4]]| {
            let mut f = good[..12].to_vec();
            tags.iter().for_each(|t| f.extend_from_slice(t));
            f.extend_from_slice(&good[12..]);
            f
        };
        for (what, f) in [
            ("802.1Q, VLAN 7", tagged(&[[0x81, 0x00, 0, 7]])),
            ("802.1Q priority tag (VLAN 0)", tagged(&[[0x81, 0x00, 0, 0]])),
            (
                "802.1ad outside 802.1Q",
                tagged(&[[0x88, 0xa8, 0, 8], [0x81, 0x00, 0, 9]]),
            ),
        ] {
            assert_eq!(parse(&f).unwrap_err(), NotTcp::NotIpv4, "{what}");
        }
        let flags_and_offset = |v: u16| {
            let mut f = good.clone();
            f[20..22].copy_from_slice(&v.to_be_bytes());
            f
        };
        for (what, v) in [
            ("first fragment: more-fragments, offset 0", 0x2000),
            ("more-fragments and don't-fragment", 0x6000),
            ("last fragment: offset, no more-fragments", 0x0003),
            ("middle fragment", 0x2003),
            ("largest offset", 0x1fff),
        ] {
            assert_eq!(parse(&flags_and_offset(v)).unwrap_err(), NotTcp::NotTcp, "{what}");
        }
        assert!(parse(&flags_and_offset(0x4000)).is_ok(), "don't-fragment alone");
        assert!(parse(&good).is_ok());
    }

    #[test]
    fn no_input_panics() {
        let good = frame([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, TCP_ACK);
        let mut rng = fastrand::Rng::with_seed(7);
        for len in 0..good.len() {
            let _ = parse(&good[..len]);
            let _ = ipv4_tcp_payload_len(&good[ETH_HEADER.min(len)..len]);
        }
        for _ in 0..20_000 {
            let mut f = good.clone();
            for _ in 0..4 {
                let i = rng.usize(..f.len());
                f[i] = rng.u8(..);
            }
            let _ = parse(&f);
            let _ = ipv4_tcp_payload_len(&f[ETH_HEADER..]);
        }
    }

    #[test]
    fn payload_length_agrees_with_the_parser() {
        let mut f = frame([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, TCP_ACK);
        assert_eq!(ipv4_tcp_payload_len(&f[ETH_HEADER..]), 0);
        f.extend_from_slice(b"hello");
        let total = u16::from_be_bytes([f[ETH_HEADER + 2], f[ETH_HEADER + 3]]) + 5;
        f[ETH_HEADER + 2..ETH_HEADER + 4].copy_from_slice(&total.to_be_bytes());
        assert_eq!(parse(&f).unwrap().payload_len, 5);
        assert_eq!(ipv4_tcp_payload_len(&f[ETH_HEADER..]), 5);
    }
}

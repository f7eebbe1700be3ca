//! Frames made by hand, with valid IPv4 and TCP checksums.
/// The Internet checksum of `data`, starting from `sum` (RFC 1071).
pub fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for pair in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet header, VLAN tags (TPID, VLAN id; outermost first), `ethertype`, `payload`, padded
/// to the 60-byte minimum.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], tags: &[super::Tag], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(64 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    for &(tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

/// An IPv4 packet: `frag` is the flags-and-offset field (0x4000 don't-fragment, 0x2000 more
/// fragments, the low 13 bits the offset in 8-byte units).
pub fn ipv4(src: [u8; 4], dst: [u8; 4], id: u16, frag: u16, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(20 + payload.len() as u16).to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&frag.to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let c = checksum(&p, 0);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// A 32-byte TCP SYN (MSS, window scale and SACK-permitted options) with its checksum.
pub fn tcp_syn_segment(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut t = vec![0u8; 32];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&0x1000_0000u32.to_be_bytes());
    t[12] = 8 << 4;
    t[13] = 0x02;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t[20..32].copy_from_slice(&[2, 4, 0x05, 0xb4, 1, 3, 3, 7, 4, 2, 1, 1]);
    let words = |a: [u8; 4]| u32::from(u16::from_be_bytes([a[0], a[1]])) + u32::from(u16::from_be_bytes([a[2], a[3]]));
    let pseudo = words(src) + words(dst) + 6 + t.len() as u32;
    let c = checksum(&t, pseudo);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// A whole SYN in one IPv4 packet, with don't-fragment set as the kernel sends them.
pub fn syn(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    ipv4(src, dst, 0x4242, 0x4000, 6, &tcp_syn_segment(src, dst, sport, dport))
}

/// The IPv4 packet in a frame, after up to two VLAN tags (an AF_PACKET socket may see the
/// tag in the frame or, offloaded, not at all).
fn ipv4_of(frame: &[u8]) -> Option<&[u8]> {
    let mut at = 12;
    for _ in 0..2 {
        match frame.get(at..at + 2)? {
            [0x81, 0x00] | [0x88, 0xa8] => at += 4,
            _ => break,
        }
    }
    (frame.get(at..at + 2)? == [0x08, 0x00]).then(|| &frame[at + 2..])
}

/// The TCP flags of a segment from the server's :8080 to `to`:`port` in `frame`, if it is one.
pub fn tcp_answer(frame: &[u8], to: [u8; 4], port: u16) -> Option<u8> {
    let ip = ipv4_of(frame)?;
    if ip.len() < 40 || ip[9] != 6 || ip[12..16] != super::SERVER_IP || ip[16..20] != to {
        return None;
    }
    let tcp = &ip[usize::from(ip[0] & 0x0f) * 4..];
    let ports = (
        u16::from_be_bytes([tcp[0], tcp[1]]),
        u16::from_be_bytes([tcp[2], tcp[3]]),
    );
    (ports == (8080, port)).then_some(tcp[13])
}

/// A broadcast ARP request: who has `target`? Tell `sender` (at `mac`).
pub fn arp_request(mac: [u8; 6], sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut arp = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    arp.extend_from_slice(&mac);
    arp.extend_from_slice(&sender);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&target);
    ethernet([0xff; 6], mac, &[], 0x0806, &arp)
}

/// The MAC an ARP reply in `frame` gives for `sender`, if it is a reply to `target`.
pub fn arp_reply_from(frame: &[u8], sender: [u8; 4], target: [u8; 4]) -> Option<[u8; 6]> {
    let arp = frame.get(14..42)?;
    if frame[12..14] != [0x08, 0x06] || arp[6..8] != [0, 2] || arp[14..18] != sender || arp[24..28] != target {
        return None;
    }
    arp[8..14].try_into().ok()
}

#[test]
fn checksums_verify() {
    let segment = tcp_syn_segment([198, 19, 0, 1], [198, 18, 0, 1], 41000, 8080);
    let words = 0xc613 + 0x0001 + 0xc612 + 0x0001 + 6 + 32;
    assert_eq!(checksum(&segment, words), 0, "TCP with its pseudo-header");
    let packet = syn([198, 19, 0, 1], [198, 18, 0, 1], 41000, 8080);
    assert_eq!(checksum(&packet[..20], 0), 0, "IPv4 header");
    assert_eq!(packet.len(), 52);
}

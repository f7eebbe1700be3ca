//! A bounded SYN flood from spoofed sources, for the hardening tests: raw Ethernet frames out of
//! one interface (AF_PACKET), at a fixed rate, for a fixed time, from random addresses of a /24
//! that never answers. Run it inside the client namespace (`testkit::spawn_in_ns`).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// What to send, where, how fast and for how long.
#[derive(Clone, Debug)]
pub struct SynFlood {
    /// The interface to send from (in the calling thread's namespace).
    pub dev: String,
    pub src_mac: [u8; 6],
    /// The next hop towards the target (the server's veth end).
    pub dst_mac: [u8; 6],
    pub target: (Ipv4Addr, u16),
    /// Sources are `prefix.1` to `prefix.254` of this /24, ports and ISNs random.
    pub spoofed_prefix: [u8; 3],
    /// SYNs per second (at most 1,000,000) and for how long (at most 120 s).
    pub rate: u32,
    pub duration: Duration,
}

/// The one's-complement sum of `data` (as 16-bit big-endian words) added to `sum`.
fn sum16(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One SYN frame with both checksums right.
pub fn syn_frame(f: &SynFlood, src: Ipv4Addr, sport: u16, isn: u32) -> [u8; 58] {
    let mut b = [0u8; 58];
    b[0..6].copy_from_slice(&f.dst_mac);
    b[6..12].copy_from_slice(&f.src_mac);
    b[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut b[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&44u16.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&f.target.0.octets());
    let c = fold(sum16(0, ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let tcp = &mut b[34..58];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&f.target.1.to_be_bytes());
    tcp[4..8].copy_from_slice(&isn.to_be_bytes());
    tcp[12] = 0x60; // 24-byte header: one MSS option
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&f.target.0.octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&24u16.to_be_bytes());
    let c = fold(sum16(sum16(0, &pseudo), tcp));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    b
}

/// Send the flood; returns the frames sent. Paced in 1 ms steps; stops by itself.
pub fn run(f: &SynFlood) -> anyhow::Result<u64> {
    if f.rate == 0 || f.rate > 1_000_000 || f.duration > Duration::from_secs(120) {
        bail!("flood rate must be 1..=1000000/s and duration at most 120 s");
    }
    let name = std::ffi::CString::new(f.dev.as_str()).context("interface name")?;
    // SAFETY: a NUL-terminated name of ours.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no interface {} here", f.dev);
    }
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("AF_PACKET socket (needs CAP_NET_RAW)");
    }
    let _close = Fd(fd);
    // SAFETY: sockaddr_ll is plain data; all zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = index as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&f.dst_mac);
    let mut rng = fastrand::Rng::new();
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < f.duration {
        let due = (start.elapsed().as_secs_f64() * f64::from(f.rate)) as u64;
        while sent < due {
            let [a, b, c] = f.spoofed_prefix;
            let src = Ipv4Addr::new(a, b, c, rng.u8(1..255));
            let frame = syn_frame(f, src, rng.u16(1024..), rng.u32(..));
            // SAFETY: sendto with a buffer and an address of ours, their lengths.
            let n = unsafe {
                libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::WouldBlock && e.raw_os_error() != Some(libc::ENOBUFS) {
                    return Err(e).context("sending a flood frame");
                }
                break; // the queue is full: try again next step
            }
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(sent)
}

struct Fd(i32);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: our own fd, closed once.
        unsafe { libc::close(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both checksums verify by summing over the whole header (a right one sums to 0xffff).
    #[test]
    fn the_frame_carries_right_checksums() {
        let f = SynFlood {
            dev: "x".into(),
            src_mac: [2, 0, 0, 0, 0, 2],
            dst_mac: [2, 0, 0, 0, 0, 1],
            target: (Ipv4Addr::new(198, 18, 0, 1), 8080),
            spoofed_prefix: [198, 19, 200],
            rate: 1,
            duration: Duration::from_secs(1),
        };
        let b = syn_frame(&f, Ipv4Addr::new(198, 19, 200, 7), 4000, 12345);
        assert_eq!(fold(sum16(0, &b[14..34])), 0);
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&b[26..30]);
        pseudo[4..8].copy_from_slice(&b[30..34]);
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&24u16.to_be_bytes());
        assert_eq!(fold(sum16(sum16(0, &pseudo), &b[34..58])), 0);
        let seg = stack::wire::parse(&b).unwrap();
        assert_eq!(seg.flags, stack::wire::TCP_SYN);
        assert_eq!(seg.tuple.local(), f.target);
    }
}

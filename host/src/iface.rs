//! Interfaces as the kernel of this network namespace sees them: IPv4 addresses, MAC addresses,
//! and the neighbour (ARP) table.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

/// The IPv4 addresses of `iface` with their prefix lengths (in this network namespace).
pub fn iface_ipv4(iface: &str) -> Vec<(Ipv4Addr, u8)> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` walks the list getifaddrs returned, which stays valid until freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string (checked non-null above).
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: ifa_addr points at a sockaddr (checked non-null above).
        let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
        if name.to_bytes() != iface.as_bytes() || family != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET sockaddr is a sockaddr_in.
        let addr = unsafe { *(ifa.ifa_addr as *const libc::sockaddr_in) };
        let prefix = if ifa.ifa_netmask.is_null() {
            32
        } else {
            // SAFETY: the netmask of an AF_INET address is a sockaddr_in too (non-null here).
            let mask = unsafe { *(ifa.ifa_netmask as *const libc::sockaddr_in) };
            u32::from_be(mask.sin_addr.s_addr).count_ones() as u8
        };
        found.push((Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)), prefix));
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    found
}

/// An interface's MAC address, asked of the kernel in the calling thread's network namespace
/// (sysfs would show the namespace it was mounted in, not the thread's).
pub fn mac_of(iface: &str) -> std::io::Result<[u8; 6]> {
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::other(format!("bad interface name {iface:?}")));
    }
    // SAFETY: a plain datagram socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills `req.ifr_ifru.ifru_hwaddr` of the ifreq we pass.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(std::io::Error::new(err.kind(), format!("interface {iface}: {err}")));
    }
    let mut mac = [0u8; 6];
    // SAFETY: the kernel wrote a sockaddr into the union's hwaddr member.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok(mac)
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The MAC of neighbour `ip` from the kernel's table, prompting an ARP exchange if needed (a
/// datagram to its discard port), for up to 5 s.
pub fn neighbour_mac(ip: Ipv4Addr) -> std::io::Result<[u8; 6]> {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0")?;
    for _ in 0..50 {
        let table = std::fs::read_to_string("/proc/net/arp").unwrap_or_default();
        for line in table.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // IP address, HW type, Flags (0x2: complete), HW address, Mask, Device.
            if f.len() >= 4 && f[0] == ip.to_string() && f[2] != "0x0" {
                if let Some(mac) = parse_mac(f[3]) {
                    return Ok(mac);
                }
            }
        }
        let _ = probe.send_to(b"arp?", SocketAddrV4::new(ip, 9));
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("no ARP answer from {ip}: is its interface up, and on our link?"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mac_addresses() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(parse_mac("02:00:0a:ff:00"), None);
        assert_eq!(parse_mac("02:00:0a:ff:00:01:07"), None);
        assert_eq!(parse_mac("zz:00:0a:ff:00:01"), None);
    }

    #[test]
    fn loopback_has_its_address_and_a_mac_of_zeros() {
        assert!(iface_ipv4("lo").contains(&(Ipv4Addr::LOCALHOST, 8)));
        assert_eq!(mac_of("lo").unwrap(), [0; 6]);
        assert!(mac_of("no-such-if0").is_err());
        assert!(iface_ipv4("no-such-if0").is_empty());
    }
}

//! Client source addresses. One client address reaches one server endpoint with at most ~64K
//! connections (ports 1024–65535), so large runs spread connections over many addresses.

use std::net::Ipv4Addr;

/// Connections we plan per source address (the port range holds 64,512).
pub const CONNS_PER_SOURCE: usize = 60_000;

/// Parse `--src`: comma-separated addresses or ranges `A-B` (inclusive), e.g.
/// `198.19.0.1-198.19.0.17,198.19.1.1`.
pub fn parse_list(text: &str) -> Result<Vec<Ipv4Addr>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let parse = |s: &str| {
            s.trim()
                .parse::<Ipv4Addr>()
                .map_err(|_| format!("'{s}' is not an IPv4 address"))
        };
        let (lo, hi) = (u32::from(parse(lo)?), u32::from(parse(hi)?));
        if lo > hi || hi - lo > 1 << 20 {
            return Err(format!("bad address range '{part}'"));
        }
        out.extend((lo..=hi).map(Ipv4Addr::from));
    }
    if out.is_empty() {
        return Err("no source addresses given".into());
    }
    Ok(out)
}

/// IPv4 addresses of this host (this network namespace) inside `net/prefix`, in order.
pub fn local_addresses_in(net: Ipv4Addr, prefix: u8) -> Vec<Ipv4Addr> {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we only read and then free with freeifaddrs.
    unsafe {
        if libc::getifaddrs(&mut ifap) != 0 {
            return out;
        }
        let mut cur = ifap;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() && i32::from((*addr).sa_family) == libc::AF_INET {
                let sin = addr as *const libc::sockaddr_in;
                let ip = Ipv4Addr::from(u32::from_be((*sin).sin_addr.s_addr));
                if u32::from(ip) & mask == u32::from(net) & mask {
                    out.push(ip);
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(ifap);
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ranges() {
        let l = parse_list("198.19.0.1-198.19.0.3, 198.19.1.1").unwrap();
        assert_eq!(l.len(), 4);
        assert_eq!(l[2], Ipv4Addr::new(198, 19, 0, 3));
        assert!(parse_list("198.19.0.3-198.19.0.1").is_err());
        assert!(parse_list("nope").is_err());
        assert!(parse_list("").is_err());
    }

    #[test]
    fn loopback_is_found() {
        let l = local_addresses_in(Ipv4Addr::new(127, 0, 0, 0), 8);
        assert!(l.contains(&Ipv4Addr::LOCALHOST), "{l:?}");
    }
}

//! The XDP program's map keys and values as plain-old-data (mirrors `src/bpf/steer.h`).

use std::net::{Ipv4Addr, SocketAddrV4};

use bytemuck::{Pod, Zeroable};

/// `struct steer_endpoint`: address and port in network byte order, and which side it matches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct EndpointKey {
    addr: [u8; 4],
    port: [u8; 2],
    kind: u16,
}

/// `STEER_DEST`: segments to this endpoint are steered (a server).
pub const KIND_DEST: u16 = 0;
/// `STEER_SOURCE`: segments from this endpoint are steered (a client stack's server)...
pub const KIND_SOURCE: u16 = 1;
/// `STEER_LOCAL`: ...when addressed to this address of the client stack (port 0).
pub const KIND_LOCAL: u16 = 2;

impl EndpointKey {
    pub fn new(ep: SocketAddrV4) -> EndpointKey {
        EndpointKey::of_kind(ep, KIND_DEST)
    }

    pub fn of_kind(ep: SocketAddrV4, kind: u16) -> EndpointKey {
        EndpointKey {
            addr: ep.ip().octets(),
            port: ep.port().to_be_bytes(),
            kind,
        }
    }

    pub fn kind(&self) -> u16 {
        self.kind
    }

    pub fn endpoint(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(self.addr), u16::from_be_bytes(self.port))
    }
}

/// `struct steer_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Config {
    pub flags: u32,
    pub ifindex: u32,
    pub attach_mode: u32,
}

/// `STEER_FLAG_ARP`: ARP requests for a steered address go to the sockets too.
pub const FLAG_ARP: u32 = 1;
/// `STEER_MAX_QUEUES`.
pub const MAX_QUEUES: u32 = 64;
/// `STEER_MAX_ENDPOINTS`: entries of the endpoints map, of every kind.
pub const MAX_ENDPOINTS: usize = 256;

/// The per-CPU counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// TCP segments handed to an AF_XDP socket.
    pub redirected: u64,
    /// Frames for the kernel (not ours).
    pub passed: u64,
    /// Ours, but no socket was bound on that queue: passed to the kernel.
    pub no_socket: u64,
    /// Too short for their headers: passed to the kernel.
    pub malformed: u64,
    /// ARP requests for a steered address handed to a socket.
    pub arp_redirected: u64,
}

impl Counters {
    /// Counter index (as in `enum steer_counter`) → field.
    pub(crate) fn set(&mut self, index: u32, value: u64) {
        match index {
            0 => self.redirected = value,
            1 => self.passed = value,
            2 => self.no_socket = value,
            3 => self.malformed = value,
            4 => self.arp_redirected = value,
            _ => {}
        }
    }

    pub const LEN: u32 = 5;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_key_is_network_order_and_8_bytes() {
        let key = EndpointKey::new("198.18.0.1:8080".parse().unwrap());
        assert_eq!(bytemuck::bytes_of(&key), &[198, 18, 0, 1, 0x1f, 0x90, 0, 0]);
        assert_eq!(key.endpoint(), "198.18.0.1:8080".parse().unwrap());
        assert_eq!(std::mem::size_of::<Config>(), 12);
    }
}

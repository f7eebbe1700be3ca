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

/// `struct steer_config`: where the loader attached the program (the program does not read it).
/// `flags` is unused and kept 0 (it once carried ARP steering).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Config {
    pub flags: u32,
    pub ifindex: u32,
    pub attach_mode: u32,
}

/// `STEER_MAX_QUEUES`.
pub const MAX_QUEUES: u32 = 64;
/// `STEER_MAX_ENDPOINTS`: entries of the endpoints map, of every kind.
pub const MAX_ENDPOINTS: usize = 256;

/// The per-CPU counters, summed over CPUs (`enum steer_counter`). Every frame the program sees is
/// counted in exactly one of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// TCP segments handed to an AF_XDP socket.
    pub redirected: u64,
    /// Frames for the kernel (not ours: ARP, ICMP, other ports, not TCP).
    pub passed: u64,
    /// Ours, but no socket was bound on that queue: passed to the kernel.
    pub no_socket: u64,
    /// Too short for their headers, or IPv4 fields that do not add up: passed to the kernel.
    pub malformed: u64,
    /// VLAN-tagged frames (802.1Q or 802.1ad), whatever they carry: passed to the kernel, which
    /// owns the VLAN interfaces (the stack answers untagged frames only).
    pub passed_vlan: u64,
    /// IPv4 fragments (more-fragments set or an offset), any protocol: passed to the kernel, which
    /// reassembles them (the stack does not).
    pub passed_fragment: u64,
}

impl Counters {
    /// Counter index (as in `enum steer_counter`) → field.
    pub(crate) fn set(&mut self, index: u32, value: u64) {
        match index {
            0 => self.redirected = value,
            1 => self.passed = value,
            2 => self.no_socket = value,
            3 => self.malformed = value,
            4 => self.passed_vlan = value,
            5 => self.passed_fragment = value,
            _ => {}
        }
    }

    /// `STEER_COUNTERS`.
    pub const LEN: u32 = 6;
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

    /// `enum steer_counter` in steer.h and [`Counters`] name the same counters at the same
    /// indices (`STEER_PASSED_VLAN = 4` is field `passed_vlan`, index 4), and `STEER_COUNTERS` is
    /// [`Counters::LEN`].
    #[test]
    fn counters_mirror_the_c_enum() {
        let header = include_str!("bpf/steer.h");
        let body = header
            .split("enum steer_counter {")
            .nth(1)
            .and_then(|rest| rest.split("};").next())
            .expect("steer.h declares enum steer_counter");
        let mut c = Counters::default();
        let mut fields = Vec::new();
        for line in body.lines() {
            let decl = line.split("//").next().unwrap().trim().trim_end_matches(',');
            let Some((name, index)) = decl.split_once('=') else {
                continue;
            };
            let name = name.trim().strip_prefix("STEER_").expect("STEER_ prefix");
            let index: u32 = index.trim().parse().expect("explicit index");
            if name == "COUNTERS" {
                assert_eq!(index, Counters::LEN, "STEER_COUNTERS");
                continue;
            }
            c.set(index, u64::from(index) + 1);
            fields.push((name.to_lowercase(), index));
        }
        assert_eq!(fields.len() as u32, Counters::LEN, "one field per counter: {fields:?}");
        let json = serde_json::to_value(c).unwrap();
        assert_eq!(json.as_object().unwrap().len() as u32, Counters::LEN, "{json}");
        for (name, index) in fields {
            assert_eq!(
                json[&name],
                u64::from(index) + 1,
                "STEER_{} is {name} at {index}: {json}",
                name.to_uppercase()
            );
        }
    }
}

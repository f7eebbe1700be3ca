//! Device ids (seed 001: IoT devices identified by a MAC or serial) reduced to a keyed 64-bit hash.
//!
//! The connection keeps 8 bytes instead of the id string, and the registry maps hash → connection.
//! SipHash-1-3 with a random key per server run means a client cannot craft two ids that collide;
//! two distinct honest ids collide with probability about n²/2⁶⁵ (≈ 3·10⁻⁸ for a million devices).
//! The key is shared by every worker of one server so they agree on hashes.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use siphasher::sip::SipHasher13;

/// Keyed hash of device ids; never returns 0, which means "no device" in a connection.
#[derive(Clone, Copy, Debug)]
pub struct DeviceHasher {
    key: [u64; 2],
}

impl DeviceHasher {
    pub fn new(key: [u64; 2]) -> DeviceHasher {
        DeviceHasher { key }
    }

    pub fn random() -> DeviceHasher {
        DeviceHasher {
            key: [fastrand::u64(..), fastrand::u64(..)],
        }
    }

    pub fn key(&self) -> [u64; 2] {
        self.key
    }

    pub fn hash(&self, id: &[u8]) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.key[0], self.key[1]);
        h.write(id);
        h.finish().max(1)
    }
}

/// The keys are already uniformly distributed SipHash outputs: hashing them again would only cost
/// time, so the registry's map uses them as they are. (Five lines; no crate needed for this.)
#[derive(Default)]
pub struct PrehashedKey(u64);

impl Hasher for PrehashedKey {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed with this hasher; fold anything else defensively.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// device hash → connection id.
pub type DeviceMap = HashMap<u64, u32, BuildHasherDefault<PrehashedKey>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_keyed_and_nonzero() {
        let a = DeviceHasher::new([1, 2]);
        let b = DeviceHasher::new([3, 4]);
        assert_eq!(a.hash(b"dev-1"), a.hash(b"dev-1"));
        assert_ne!(a.hash(b"dev-1"), a.hash(b"dev-2"));
        assert_ne!(a.hash(b"dev-1"), b.hash(b"dev-1"));
        let mut map = DeviceMap::default();
        map.insert(a.hash(b"x"), 5);
        assert_eq!(map.get(&a.hash(b"x")), Some(&5));
    }
}

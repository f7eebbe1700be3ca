//! The connection table: 4-tuple → slot, O(1) per lookup, no allocation after start-up.
//!
//! Open addressing with linear probing over a power-of-two array of `u32` (slot + 1, 0 = empty),
//! at most half full. The key itself is not stored here: it lives once in the slot (`tuples`), and
//! a probe compares against it. So the table costs 2 × 4 = 8 bytes per connection of capacity.
//! Deletion shifts later entries back (no tombstones), so long-running churn never degrades it.
//! The hash is SipHash-1-3 with a random key: peers choose ports and addresses, and must not be able
//! to pile their connections into one probe chain.
#![forbid(unsafe_code)]

use std::hash::Hasher;

use siphasher::sip::SipHasher13;

use crate::wire::FourTuple;

pub struct ConnTable {
    buckets: Box<[u32]>,
    mask: usize,
    keys: (u64, u64),
    len: usize,
}

impl ConnTable {
    /// A table for up to `capacity` connections.
    pub fn new(capacity: usize, huge_pages: bool) -> ConnTable {
        let n = (capacity.max(1) * 2).next_power_of_two();
        // Zeroed memory straight from the kernel: untouched until the first insert, so it can
        // still be advised onto huge pages.
        let buckets = vec![0u32; n].into_boxed_slice();
        if huge_pages {
            crate::stats::advise_huge_pages(buckets.as_ptr().cast(), n * 4);
        }
        ConnTable {
            buckets,
            mask: n - 1,
            keys: (fastrand::u64(..), fastrand::u64(..)),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of the bucket array.
    pub fn bytes(&self) -> usize {
        self.buckets.len() * std::mem::size_of::<u32>()
    }

    /// Bytes of the bucket array resident in memory.
    pub fn resident(&self) -> usize {
        crate::stats::resident_bytes(self.buckets.as_ptr().cast(), self.bytes())
    }

    fn home(&self, t: &FourTuple) -> usize {
        let mut h = SipHasher13::new_with_keys(self.keys.0, self.keys.1);
        h.write(&t.local_addr);
        h.write(&t.remote_addr);
        h.write_u32(u32::from(t.local_port) << 16 | u32::from(t.remote_port));
        h.finish() as usize & self.mask
    }

    /// The slot holding `t`; `tuples[slot]` is each slot's key.
    pub fn get(&self, t: &FourTuple, tuples: &[FourTuple]) -> Option<u32> {
        let mut i = self.home(t);
        loop {
            let v = self.buckets[i];
            if v == 0 {
                return None;
            }
            if tuples[(v - 1) as usize] == *t {
                return Some(v - 1);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Add `slot`, whose key `tuples[slot]` must not be in the table yet.
    pub fn insert(&mut self, slot: u32, tuples: &[FourTuple]) {
        debug_assert!(self.len < self.buckets.len() / 2, "table sized for the slab");
        let mut i = self.home(&tuples[slot as usize]);
        while self.buckets[i] != 0 {
            i = (i + 1) & self.mask;
        }
        self.buckets[i] = slot + 1;
        self.len += 1;
    }

    /// Remove `slot` (keyed by `tuples[slot]`); false if it was not there.
    pub fn remove(&mut self, slot: u32, tuples: &[FourTuple]) -> bool {
        let mut i = self.home(&tuples[slot as usize]);
        loop {
            match self.buckets[i] {
                0 => return false,
                v if v == slot + 1 => break,
                _ => i = (i + 1) & self.mask,
            }
        }
        // Backward-shift: move each later entry of the run into the hole if its home allows it.
        let mut hole = i;
        let mut j = (i + 1) & self.mask;
        loop {
            let v = self.buckets[j];
            if v == 0 {
                break;
            }
            let home = self.home(&tuples[(v - 1) as usize]);
            // `v` may move to `hole` unless its home lies cyclically in (hole, j].
            let dist_home = j.wrapping_sub(home) & self.mask;
            let dist_hole = j.wrapping_sub(hole) & self.mask;
            if dist_home >= dist_hole {
                self.buckets[hole] = v;
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
        self.buckets[hole] = 0;
        self.len -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::Ipv4Addr;

    fn tuple(i: u32) -> FourTuple {
        FourTuple::new(
            (Ipv4Addr::new(198, 18, 0, 1), 8080),
            (Ipv4Addr::from(0xc613_0000 + (i >> 16)), (i & 0xffff) as u16),
        )
    }

    #[test]
    fn behaves_like_a_map_under_random_churn() {
        let cap = 4096;
        let mut table = ConnTable::new(cap, false);
        let mut tuples = vec![FourTuple::default(); cap];
        let mut model: HashMap<FourTuple, u32> = HashMap::new();
        let mut free: Vec<u32> = (0..cap as u32).collect();
        let mut rng = fastrand::Rng::with_seed(1);
        for step in 0..200_000u32 {
            let t = tuple(rng.u32(..20_000));
            match model.get(&t).copied() {
                Some(slot) if rng.bool() => {
                    assert!(table.remove(slot, &tuples));
                    model.remove(&t);
                    free.push(slot);
                }
                Some(slot) => assert_eq!(table.get(&t, &tuples), Some(slot)),
                None => {
                    assert_eq!(table.get(&t, &tuples), None, "step {step}");
                    if let Some(slot) = free.pop() {
                        tuples[slot as usize] = t;
                        table.insert(slot, &tuples);
                        model.insert(t, slot);
                    }
                }
            }
            assert_eq!(table.len(), model.len());
        }
        for (t, slot) in &model {
            assert_eq!(table.get(t, &tuples), Some(*slot));
        }
    }

    #[test]
    fn full_capacity_and_removing_what_is_absent() {
        let cap = 1000;
        let mut table = ConnTable::new(cap, false);
        let tuples: Vec<FourTuple> = (0..cap as u32).map(tuple).collect();
        for s in 0..cap as u32 {
            table.insert(s, &tuples);
        }
        assert_eq!(table.bytes(), 2048 * 4);
        for s in 0..cap as u32 {
            assert_eq!(table.get(&tuples[s as usize], &tuples), Some(s));
        }
        for s in (0..cap as u32).step_by(2) {
            assert!(table.remove(s, &tuples));
            assert!(!table.remove(s, &tuples));
        }
        for s in 0..cap as u32 {
            let want = if s % 2 == 1 { Some(s) } else { None };
            assert_eq!(table.get(&tuples[s as usize], &tuples), want);
        }
    }
}

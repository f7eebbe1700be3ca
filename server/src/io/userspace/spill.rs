//! Spill buffers. A connection's buffers are tiny (256 bytes each by default), so a request head
//! or a frame longer than the receive buffer can never be whole in it. The few connections in
//! that state borrow a buffer from a fixed pool, allocated once: bytes wait there, and the buffer
//! goes back as soon as it is empty. Idle connections never hold one, so the pool costs nothing
//! per connection; `exhausted` counts the times a head or frame found every buffer taken (its
//! connection then waits, its bytes in the socket and its window shut, until one comes back:
//! `serve.rs`). A holder that keeps its buffer past a hold limit while others wait (a client
//! trickling a head or a large frame) is one `stale` names, for `serve.rs` to reset.

use std::collections::HashMap;

pub struct SpillPool {
    /// `count` buffers of `size` bytes, one zeroed allocation (pages cost nothing until used).
    memory: Box<[u8]>,
    size: usize,
    free: Vec<u32>,
    /// Connection id → its buffer. Sized for `count` at start: never grows.
    held: HashMap<u32, Held>,
    pub exhausted: u64,
    /// Holders reset for keeping a buffer past a hold limit while others waited.
    pub evicted: u64,
}

/// How long a connection may keep a spill buffer for a request head while other connections
/// wait for one: an honest head completes in a round trip or two (one with a token is ~340
/// bytes through a 256-byte buffer); a client trickling heads to hold the pool takes forever.
pub const HEAD_HOLD_LIMIT_MS: u64 = 2_000;
/// The same for a frame since the last whole one: a 1 MiB frame at 1 Mbit/s takes 8 s.
pub const FRAME_HOLD_LIMIT_MS: u64 = 10_000;

struct Held {
    index: u32,
    len: usize,
    /// When the connection took the buffer (worker clock).
    since_ms: u64,
}

impl SpillPool {
    pub fn new(count: usize, size: usize) -> SpillPool {
        SpillPool {
            memory: vec![0u8; count * size].into_boxed_slice(),
            size,
            free: (0..count as u32).rev().collect(),
            held: HashMap::with_capacity(count),
            exhausted: 0,
            evicted: 0,
        }
    }

    /// Whether a buffer is free.
    pub fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    pub fn holds(&self, id: u32) -> bool {
        self.held.contains_key(&id)
    }

    /// Give `id` a buffer holding `bytes` from `now_ms` on; false (and counted) when the pool is
    /// empty or the bytes do not fit.
    pub fn take(&mut self, id: u32, bytes: &[u8], now_ms: u64) -> bool {
        if self.holds(id) || bytes.len() > self.size {
            return false;
        }
        let Some(index) = self.free.pop() else {
            self.exhausted += 1;
            return false;
        };
        let start = index as usize * self.size;
        self.memory[start..start + bytes.len()].copy_from_slice(bytes);
        let held = Held {
            index,
            len: bytes.len(),
            since_ms: now_ms,
        };
        self.held.insert(id, held);
        true
    }

    /// The buffer of `id` (whole) and how many bytes of it are held.
    pub fn get(&mut self, id: u32) -> Option<(&mut [u8], &mut usize)> {
        let held = self.held.get_mut(&id)?;
        let start = held.index as usize * self.size;
        Some((&mut self.memory[start..start + self.size], &mut held.len))
    }

    /// Drop the first `n` held bytes of `id` (whole heads and frames, at `now_ms`: the hold
    /// limit counts from the last one); the buffer goes back to the pool once empty.
    pub fn consume(&mut self, id: u32, n: usize, now_ms: u64) {
        let Some(held) = self.held.get_mut(&id) else { return };
        if n > 0 {
            held.since_ms = now_ms;
        }
        let Some((buf, len)) = self.get(id) else { return };
        let n = n.min(*len);
        buf.copy_within(n..*len, 0);
        *len -= n;
        if *len == 0 {
            self.release(id);
        }
    }

    pub fn release(&mut self, id: u32) {
        if let Some(held) = self.held.remove(&id) {
            self.free.push(held.index);
        }
    }

    /// Bytes held over all buffers.
    pub fn held_bytes(&self) -> usize {
        self.held.values().map(|h| h.len).sum()
    }

    /// The holders whose last whole head or frame (or the taking of the buffer) is `limit_ms`
    /// or more before `now_ms`, into `out` (a scan of the pool, not of the connections).
    pub fn stale(&self, now_ms: u64, limit_ms: u64, out: &mut Vec<u32>) {
        let due = |h: &Held| now_ms.saturating_sub(h.since_ms) >= limit_ms;
        out.extend(self.held.iter().filter(|(_, h)| due(h)).map(|(&id, _)| id));
    }

    /// How long `id` has held its buffer since its last whole head or frame.
    pub fn held_for(&self, id: u32, now_ms: u64) -> u64 {
        self.held.get(&id).map_or(0, |h| now_ms.saturating_sub(h.since_ms))
    }

    pub fn in_use(&self) -> usize {
        self.held.len()
    }

    pub fn capacity(&self) -> usize {
        self.free.len() + self.held.len()
    }

    pub fn buffer_size(&self) -> usize {
        self.size
    }

    /// Bytes reserved (virtual; resident only as far as buffers were ever used).
    pub fn bytes(&self) -> usize {
        self.memory.len() + self.held.capacity() * (4 + std::mem::size_of::<Held>()) + self.free.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_lent_consumed_and_returned() {
        let mut pool = SpillPool::new(2, 8);
        assert!(pool.take(7, b"abcdef", 0));
        assert!(!pool.take(7, b"x", 0), "one buffer per connection");
        assert!(!pool.take(8, b"123456789", 0), "bytes larger than a buffer are refused");
        assert!(pool.take(9, b"zz", 1_000));
        assert_eq!(pool.get(9).map(|(b, l)| b[..*l].to_vec()), Some(b"zz".to_vec()));
        assert!(!pool.take(10, b"q", 0));
        assert_eq!(pool.exhausted, 1);
        // The hold limit counts from the buffer's last whole head or frame.
        const LIMIT: u64 = FRAME_HOLD_LIMIT_MS;
        let stale = |pool: &SpillPool, now| {
            let mut out = vec![];
            pool.stale(now, LIMIT, &mut out);
            out.sort();
            out
        };
        assert_eq!(stale(&pool, LIMIT - 1), Vec::<u32>::new());
        assert_eq!(stale(&pool, LIMIT), vec![7]);
        pool.consume(7, 2, 5_000);
        assert_eq!(stale(&pool, LIMIT + 1_000), vec![9]);
        assert_eq!(pool.held_for(7, LIMIT + 1_000), LIMIT - 4_000);
        let (buf, len) = pool.get(7).unwrap();
        assert_eq!(&buf[..*len], b"cdef");
        pool.consume(7, 4, 5_000);
        assert!(!pool.holds(7), "an empty buffer goes back");
        assert!(pool.take(10, b"q", 0));
        pool.release(9);
        pool.release(10);
        assert_eq!((pool.in_use(), pool.capacity()), (0, 2));
    }
}

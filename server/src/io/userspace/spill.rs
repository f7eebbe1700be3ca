//! Spill buffers. A connection's buffers are tiny (256 bytes each by default), so a request head
//! or a frame longer than the receive buffer can never be whole in it, and a burst of messages may
//! not fit the send buffer before the peer's ACKs come back. The few connections in that state
//! borrow a buffer from a fixed pool, allocated once (one pool for input, one for output): bytes
//! wait there, and the buffer goes back as soon as it is empty. Idle connections never hold one,
//! so a pool costs nothing per connection; `exhausted` counts the times a head or frame found every
//! buffer taken (its connection then waits, its bytes in the socket and its window shut, until
//! one comes back: `serve.rs`).

use std::collections::HashMap;

pub struct SpillPool {
    /// `count` buffers of `size` bytes, one zeroed allocation (pages cost nothing until used).
    memory: Box<[u8]>,
    size: usize,
    free: Vec<u32>,
    /// Connection id → (buffer index, bytes held). Sized for `count` at start: never grows.
    held: HashMap<u32, (u32, usize)>,
    pub exhausted: u64,
}

impl SpillPool {
    pub fn new(count: usize, size: usize) -> SpillPool {
        SpillPool {
            memory: vec![0u8; count * size].into_boxed_slice(),
            size,
            free: (0..count as u32).rev().collect(),
            held: HashMap::with_capacity(count),
            exhausted: 0,
        }
    }

    /// Whether a buffer is free.
    pub fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    pub fn holds(&self, id: u32) -> bool {
        self.held.contains_key(&id)
    }

    /// Give `id` a buffer holding `bytes`; false (and counted) when the pool is empty or the bytes
    /// do not fit.
    pub fn take(&mut self, id: u32, bytes: &[u8]) -> bool {
        if self.holds(id) || bytes.len() > self.size {
            return false;
        }
        let Some(index) = self.free.pop() else {
            self.exhausted += 1;
            return false;
        };
        let start = index as usize * self.size;
        self.memory[start..start + bytes.len()].copy_from_slice(bytes);
        self.held.insert(id, (index, bytes.len()));
        true
    }

    /// Add bytes behind what `id` holds; false if it holds no buffer or they do not fit.
    pub fn append(&mut self, id: u32, bytes: &[u8]) -> bool {
        let size = self.size;
        let Some((buf, len)) = self.get(id) else { return false };
        if *len + bytes.len() > size {
            return false;
        }
        buf[*len..*len + bytes.len()].copy_from_slice(bytes);
        *len += bytes.len();
        true
    }

    /// The buffer of `id` (whole) and how many bytes of it are held.
    pub fn get(&mut self, id: u32) -> Option<(&mut [u8], &mut usize)> {
        let (index, len) = self.held.get_mut(&id)?;
        let start = *index as usize * self.size;
        Some((&mut self.memory[start..start + self.size], len))
    }

    /// Drop the first `n` held bytes of `id`; the buffer goes back to the pool once empty.
    pub fn consume(&mut self, id: u32, n: usize) {
        let Some((buf, len)) = self.get(id) else { return };
        let n = n.min(*len);
        buf.copy_within(n..*len, 0);
        *len -= n;
        if *len == 0 {
            self.release(id);
        }
    }

    pub fn release(&mut self, id: u32) {
        if let Some((index, _)) = self.held.remove(&id) {
            self.free.push(index);
        }
    }

    /// Bytes held over all buffers.
    pub fn held_bytes(&self) -> usize {
        self.held.values().map(|(_, len)| len).sum()
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
        self.memory.len() + self.held.capacity() * 24 + self.free.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_lent_consumed_and_returned() {
        let mut pool = SpillPool::new(2, 8);
        assert!(pool.take(7, b"abcdef"));
        assert!(!pool.take(7, b"x"), "one buffer per connection");
        assert!(!pool.take(8, b"123456789"), "bytes larger than a buffer are refused");
        assert!(pool.take(9, b"zz"));
        assert!(pool.append(9, b"abc"));
        assert!(!pool.append(9, b"abcd"), "past the buffer's size");
        assert_eq!(pool.get(9).map(|(b, l)| b[..*l].to_vec()), Some(b"zzabc".to_vec()));
        assert!(!pool.take(10, b"q"));
        assert_eq!(pool.exhausted, 1);
        pool.consume(7, 2);
        let (buf, len) = pool.get(7).unwrap();
        assert_eq!(&buf[..*len], b"cdef");
        pool.consume(7, 4);
        assert!(!pool.holds(7), "an empty buffer goes back");
        assert!(pool.take(10, b"q"));
        pool.release(9);
        pool.release(10);
        assert_eq!((pool.in_use(), pool.capacity()), (0, 2));
    }
}

//! The message log: every outgoing message of a worker stored once, in one byte ring allocated at
//! start, and read by every connection from where it is.
//!
//! - **Broadcasts** are numbered entries (`entry`: 0, 1, 2, … for this worker) carrying the
//!   server's sequence number (`seq`, the `seq` of the push JSON). A connection keeps only the
//!   number of the next entry it has to send (its cursor, in the core's `Conn`).
//! - **Targeted output** (a push to one device, a pong, a close frame, the part of an echo or an
//!   HTTP answer the transport could not take at once) is stored in the same ring and queued for
//!   its one connection (`output.rs`).
//!
//! Bytes are addressed by absolute position (the count of bytes ever written); the ring keeps the
//! last `capacity` of them. Whatever lies before `oldest()` has been overwritten: a connection
//! still needing it fell too far behind and is closed (a slow reader). Memory never grows, whatever
//! the clients do.
#![forbid(unsafe_code)]

use std::collections::VecDeque;

/// A broadcast in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Broadcast {
    /// The server's sequence number of the message.
    pub seq: u64,
    /// Where its frame (header and payload) starts, and its length.
    pub at: u64,
    pub len: u32,
    /// Where the payload starts within the frame (a long-poll answer sends the payload alone).
    pub header_len: u8,
}

/// Why a message could not be stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("a message of {len} bytes does not fit the message log of {capacity} bytes")]
    TooBig { len: usize, capacity: usize },
}

pub struct MessageLog {
    ring: Box<[u8]>,
    /// Absolute position of the next byte written.
    head: u64,
    /// Broadcasts still (at least partly) in the ring, oldest first; `first_entry` numbers the
    /// front.
    broadcasts: VecDeque<Broadcast>,
    first_entry: u64,
    /// At most this many broadcast entries are kept (a bound on the index, whatever the sizes).
    max_entries: usize,
    /// The highest sequence number of a broadcast no longer in the log (0: none evicted yet).
    evicted_seq: u64,
}

/// Where a client reconnecting with `?since=SEQ` resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// At this entry: the first broadcast after SEQ (`next_entry()` when it is caught up).
    From(u64),
    /// Broadcasts after SEQ are gone (overwritten, or SEQ is from an earlier run of the server);
    /// `oldest` is the first one still kept.
    Gap { oldest: u64 },
    /// SEQ is newer than anything this log has: a broadcast on its way to this worker that the
    /// client got from another one. It goes live and skips broadcasts up to SEQ.
    Ahead,
}

impl MessageLog {
    /// A log of `capacity` bytes (allocated here, once; pages are touched as they are written)
    /// for broadcasts numbered after `first_seq` (a `since` at or before it is from an earlier
    /// run of the server: a gap).
    pub fn new(capacity: usize, first_seq: u64) -> MessageLog {
        let capacity = capacity.max(1);
        // An entry per 256 bytes of ring at most (24 B each: under 10% of the ring): small
        // messages cannot make the index grow beyond a fixed size either.
        // beyond a fixed size either.
        let max_entries = (capacity / 256).max(16);
        MessageLog {
            ring: vec![0u8; capacity].into_boxed_slice(),
            head: 0,
            // The index grows with use (per broadcast, never per packet) up to `max_entries`.
            broadcasts: VecDeque::with_capacity(64),
            first_entry: 0,
            max_entries,
            evicted_seq: first_seq,
        }
    }

    pub fn capacity(&self) -> usize {
        self.ring.len()
    }

    /// Resident bytes of the log (the ring as far as it has been written, and its index), for the
    /// memory breakdown: at most the capacity and a tenth, whatever the traffic.
    pub fn resident_bytes(&self) -> usize {
        (self.head.min(self.ring.len() as u64) as usize) + self.broadcasts.capacity() * std::mem::size_of::<Broadcast>()
    }

    /// The oldest absolute position still in the ring.
    pub fn oldest(&self) -> u64 {
        self.head.saturating_sub(self.ring.len() as u64)
    }

    /// Whether `len` bytes at `at` are still in the ring.
    pub fn holds(&self, at: u64, len: u32) -> bool {
        at >= self.oldest() && at + u64::from(len) <= self.head
    }

    /// The bytes at `at..at + len`, if still in the ring.
    pub fn bytes(&self, at: u64, len: u32) -> Option<&[u8]> {
        if !self.holds(at, len) {
            return None;
        }
        let start = (at % self.ring.len() as u64) as usize;
        self.ring.get(start..start + len as usize)
    }

    /// Store `parts` as one contiguous message; returns its absolute position. Older bytes are
    /// overwritten (and broadcasts whose bytes go are dropped from the index).
    pub fn store(&mut self, parts: &[&[u8]]) -> Result<u64, LogError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let capacity = self.ring.len();
        if len > capacity {
            return Err(LogError::TooBig { len, capacity });
        }
        // A message never wraps around the end of the ring: skip the tail if it does not fit.
        let offset = (self.head % capacity as u64) as usize;
        if offset + len > capacity {
            self.head += (capacity - offset) as u64;
        }
        let at = self.head;
        self.head += len as u64;
        let mut pos = (at % capacity as u64) as usize;
        for part in parts {
            self.ring[pos..pos + part.len()].copy_from_slice(part);
            pos += part.len();
        }
        self.evict();
        Ok(at)
    }

    /// Store a broadcast frame (`header` then `payload`); returns its entry number.
    pub fn broadcast(&mut self, seq: u64, header: &[u8], payload: &[u8]) -> Result<u64, LogError> {
        let at = self.store(&[header, payload])?;
        if self.broadcasts.len() == self.max_entries {
            self.drop_oldest_broadcast();
        }
        self.broadcasts.push_back(Broadcast {
            seq,
            at,
            len: (header.len() + payload.len()) as u32,
            header_len: header.len() as u8,
        });
        Ok(self.next_entry() - 1)
    }

    /// The number the next broadcast will get: a connection caught up has this as its cursor.
    pub fn next_entry(&self) -> u64 {
        self.first_entry + self.broadcasts.len() as u64
    }

    /// The oldest entry still in the log.
    pub fn first_entry(&self) -> u64 {
        self.first_entry
    }

    /// Broadcast number `entry`, if still in the log.
    pub fn entry(&self, entry: u64) -> Option<Broadcast> {
        let index = entry.checked_sub(self.first_entry)?;
        self.broadcasts.get(usize::try_from(index).ok()?).copied()
    }

    /// Where a client that has seen every broadcast up to `seq` resumes.
    pub fn resume_after(&self, seq: u64) -> Resume {
        let newest = self.broadcasts.back().map_or(self.evicted_seq, |b| b.seq);
        if seq < self.evicted_seq {
            return Resume::Gap {
                oldest: self.broadcasts.front().map_or(newest + 1, |b| b.seq),
            };
        }
        if seq > newest {
            return Resume::Ahead;
        }
        let after = self.broadcasts.partition_point(|b| b.seq <= seq);
        Resume::From(self.first_entry + after as u64)
    }

    /// Drop the broadcasts whose bytes were overwritten.
    fn evict(&mut self) {
        let oldest = self.oldest();
        while self.broadcasts.front().is_some_and(|b| b.at < oldest) {
            self.drop_oldest_broadcast();
        }
    }

    fn drop_oldest_broadcast(&mut self) {
        if let Some(b) = self.broadcasts.pop_front() {
            self.first_entry += 1;
            self.evicted_seq = self.evicted_seq.max(b.seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_stored_once_and_read_where_they_are() {
        let mut log = MessageLog::new(64, 0);
        let a = log.store(&[b"hello ", b"world"]).unwrap();
        assert_eq!(log.bytes(a, 11), Some(&b"hello world"[..]));
        let e = log.broadcast(7, b"HD", b"payload").unwrap();
        assert_eq!(e, 0);
        let b = log.entry(e).unwrap();
        assert_eq!((b.seq, b.len, b.header_len), (7, 9, 2));
        assert_eq!(log.bytes(b.at, b.len), Some(&b"HDpayload"[..]));
        assert_eq!(log.next_entry(), 1);
    }

    #[test]
    fn old_bytes_are_overwritten_and_their_broadcasts_dropped() {
        let mut log = MessageLog::new(32, 0);
        let first = log.broadcast(1, b"", &[1; 20]).unwrap();
        let old = log.entry(first).unwrap();
        log.broadcast(2, b"", &[2; 20]).unwrap(); // does not fit behind the first: wraps
        assert!(log.entry(first).is_none(), "its bytes were overwritten");
        assert!(log.bytes(old.at, old.len).is_none());
        assert_eq!(log.first_entry(), 1);
        let second = log.entry(1).unwrap();
        assert_eq!(log.bytes(second.at, second.len), Some(&[2u8; 20][..]));
        assert_eq!(log.store(&[&[0; 33]]), Err(LogError::TooBig { len: 33, capacity: 32 }));
    }

    #[test]
    fn resuming_after_a_seq_finds_the_next_broadcast_or_says_it_is_gone() {
        let mut log = MessageLog::new(1024, 2);
        for seq in [3, 5, 9] {
            log.broadcast(seq, b"", b"x").unwrap();
        }
        assert_eq!(log.resume_after(3), Resume::From(1));
        assert_eq!(
            log.resume_after(4),
            Resume::From(1),
            "seq 4 was a push: the next broadcast is 5"
        );
        assert_eq!(log.resume_after(9), Resume::From(3), "caught up: the next one to come");
        assert_eq!(log.resume_after(2), Resume::From(0), "the run's first: all of it");
        assert_eq!(log.resume_after(10), Resume::Ahead, "on its way to this log");
        assert_eq!(log.resume_after(1), Resume::Gap { oldest: 3 }, "from an earlier run");
        let mut small = MessageLog::new(4, 0);
        for seq in 1..=6 {
            small.broadcast(seq, b"", b"xx").unwrap();
        }
        assert_eq!(small.resume_after(2), Resume::Gap { oldest: 5 }, "3 and 4 are gone");
        assert_eq!(small.resume_after(4), Resume::From(small.first_entry()));
    }

    #[test]
    fn the_index_is_bounded_whatever_the_sizes() {
        let mut log = MessageLog::new(64 << 10, 0);
        for seq in 0..10_000 {
            log.broadcast(seq, b"", b"").unwrap();
        }
        assert_eq!(
            log.next_entry() - log.first_entry(),
            256,
            "one entry per 256 bytes of ring"
        );
        assert!(log.resident_bytes() < (64 << 10) * 11 / 10, "{}", log.resident_bytes());
    }
}

//! One allocation, sized at start-up, carved into every slot's receive and send buffer.
//!
//! The arena is zeroed memory straight from the kernel (a large `alloc_zeroed` is an anonymous
//! mapping), so a slot that never carried data costs no resident memory, and after start-up no
//! buffer is ever allocated or freed: a slot's buffers stay with its recycled socket for the life
//! of the process. smoltcp takes `&'static mut [u8]`; the arena is leaked once to give it that.

pub struct Arena {
    /// Buffers not handed out yet: slot by slot, `rx` bytes then `tx` bytes.
    rest: &'static mut [u8],
    pub rx: usize,
    pub tx: usize,
    pub slots: usize,
}

impl Arena {
    pub fn new(slots: usize, rx: usize, tx: usize) -> Arena {
        let rest: &'static mut [u8] = Box::leak(vec![0u8; slots * (rx + tx)].into_boxed_slice());
        Arena { rest, rx, tx, slots }
    }

    /// Total bytes reserved (resident only once touched).
    pub fn bytes(&self) -> usize {
        self.slots * (self.rx + self.tx)
    }

    /// Address of the first byte not carved yet (the arena's start, before carving).
    pub fn base(&self) -> usize {
        self.rest.as_ptr() as usize
    }

    /// The next slot's (rx, tx) buffers; `None` once all slots are carved.
    pub fn carve(&mut self) -> Option<(&'static mut [u8], &'static mut [u8])> {
        let rest = std::mem::take(&mut self.rest);
        if rest.len() < self.rx + self.tx {
            self.rest = rest;
            return None;
        }
        let (rx, rest) = rest.split_at_mut(self.rx);
        let (tx, rest) = rest.split_at_mut(self.tx);
        self.rest = rest;
        Some((rx, tx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carves_exactly_the_slots_asked_for() {
        let mut arena = Arena::new(3, 16, 8);
        assert_eq!(arena.bytes(), 72);
        let mut got = vec![];
        while let Some((rx, tx)) = arena.carve() {
            assert_eq!((rx.len(), tx.len()), (16, 8));
            got.push(rx.as_ptr() as usize);
            // Adjacent: slot i's tx ends where slot i+1's rx starts.
            assert_eq!(tx.as_ptr() as usize, rx.as_ptr() as usize + 16);
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[1] - got[0], 24);
    }
}

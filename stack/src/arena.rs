//! One allocation, sized at start-up, carved into every slot's receive and send buffer.
//!
//! The arena is zeroed memory straight from the kernel (an anonymous mapping of its own), so a slot that never carried data costs no resident memory, and after
//! start-up no buffer is ever allocated or freed: a slot's buffers stay with its recycled socket
//! for the life of the process. smoltcp takes `&'static mut [u8]`; the arena is leaked once to
//! give it that.
//!
//! All receive buffers come first, then all send buffers, each region starting on a page: a
//! page holds buffers of one kind, so the pages of idle buffers can be released whole
//! (`stack/residency.rs`) and a broadcast touches send pages only.

pub struct Arena {
    base: *mut u8,
    /// Bytes from `base` to the send region (the receive region rounded up to a page).
    tx_offset: usize,
    total: usize,
    pub rx: usize,
    pub tx: usize,
    pub slots: usize,
    /// Slots carved so far.
    carved: usize,
}

impl Arena {
    pub fn new(slots: usize, rx: usize, tx: usize) -> Arena {
        let page = crate::stats::page_size();
        let tx_offset = (slots * rx).div_ceil(page) * page;
        let total = (tx_offset + (slots * tx).div_ceil(page) * page).max(page);
        // Its own mapping, not the allocator's: page-aligned, zero and untouched whatever the
        // size (a small allocation from the heap would come zeroed by a write, resident).
        // SAFETY: a fresh anonymous private mapping; never unmapped (the buffers live as long as
        // the process, as smoltcp's `'static` asks).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            panic!(
                "mapping {total} bytes of connection buffers failed: {}",
                std::io::Error::last_os_error()
            );
        }
        let base = base.cast::<u8>();
        Arena {
            base,
            tx_offset,
            total,
            rx,
            tx,
            slots,
            carved: 0,
        }
    }

    /// Total bytes reserved (resident only once touched).
    pub fn bytes(&self) -> usize {
        self.total
    }

    /// Address of the arena's first byte (the receive region's).
    pub fn base(&self) -> usize {
        self.base as usize
    }

    pub fn rx_base(&self) -> usize {
        self.base as usize
    }

    /// Address of the send region (page-aligned).
    pub fn tx_base(&self) -> usize {
        self.base as usize + self.tx_offset
    }

    /// The next slot's (rx, tx) buffers; `None` once all slots are carved.
    pub fn carve(&mut self) -> Option<(&'static mut [u8], &'static mut [u8])> {
        if self.carved == self.slots {
            return None;
        }
        let i = self.carved;
        self.carved += 1;
        // SAFETY: slot i's two ranges lie inside the allocation, are disjoint from every other
        // slot's, and each is handed out once (`carved` only grows); the allocation is never
        // freed, so `'static` holds.
        unsafe {
            Some((
                std::slice::from_raw_parts_mut(self.base.add(i * self.rx), self.rx),
                std::slice::from_raw_parts_mut(self.base.add(self.tx_offset + i * self.tx), self.tx),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carves_exactly_the_slots_asked_for_in_two_page_aligned_regions() {
        let page = crate::stats::page_size();
        let mut arena = Arena::new(3, 16, 8);
        assert_eq!(arena.bytes(), 2 * page, "each region rounded up to a page");
        assert_eq!(arena.rx_base() % page, 0);
        assert_eq!(arena.tx_base(), arena.rx_base() + page);
        let mut got = vec![];
        while let Some((rx, tx)) = arena.carve() {
            assert_eq!((rx.len(), tx.len()), (16, 8));
            got.push((rx.as_ptr() as usize, tx.as_ptr() as usize));
        }
        assert_eq!(got.len(), 3);
        // Receive buffers side by side, then send buffers side by side.
        assert_eq!(got[1].0 - got[0].0, 16);
        assert_eq!(got[2].1 - got[1].1, 8);
        assert_eq!(got[0].1, arena.tx_base());
    }
}

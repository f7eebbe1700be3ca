//! Memory for a UMEM: a private anonymous mapping, page aligned as AF_XDP requires, unmapped on
//! drop. Whoever registers it as a UMEM must drop the registration (and the sockets) first.

use std::ptr::NonNull;

pub struct Area {
    pub ptr: NonNull<u8>,
    pub len: usize,
}

impl Area {
    pub fn new(len: usize) -> std::io::Result<Area> {
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Area {
            ptr: NonNull::new(p.cast()).ok_or_else(std::io::Error::last_os_error)?,
            len,
        })
    }

    /// A pointer to `addr..addr+len` of the area, if that range lies inside it (a descriptor from
    /// the kernel is checked here before it is read).
    pub fn range(&self, addr: u64, len: usize) -> Option<*mut u8> {
        let start = usize::try_from(addr).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.len).then(|| {
            // SAFETY: `start <= end <= self.len`: the result points inside the mapping.
            unsafe { self.ptr.as_ptr().add(start) }
        })
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_outside_the_area_are_refused() {
        let a = Area::new(8192).unwrap();
        assert!(a.range(0, 8192).is_some());
        assert!(a.range(4096, 4096).is_some());
        assert!(a.range(4096, 4097).is_none());
        assert!(a.range(u64::MAX, 1).is_none());
    }
}

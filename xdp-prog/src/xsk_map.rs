//! The XSKMAP: which AF_XDP socket each receive queue's steered segments go to.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use libbpf_rs::MapHandle;

use crate::maps::MAX_QUEUES;
use crate::steering::{bpf, Result, SteerError};

/// The program's XSKMAP in a process that did not load the program (a worker).
pub struct XskMap(OwnedFd);

impl XskMap {
    /// By the kernel's id (needs CAP_SYS_ADMIN: `bpf_map_get_fd_by_id`).
    pub fn open(id: u32) -> Result<XskMap> {
        let map = MapHandle::from_map_id(id).map_err(bpf(&format!("opening XSKMAP id {id}")))?;
        let fd = map.as_fd().try_clone_to_owned().map_err(|source| SteerError::Io {
            what: "duplicating the XSKMAP fd".into(),
            source,
        })?;
        Ok(XskMap(fd))
    }

    /// A duplicate of the descriptor our parent passed at `fd` (the server's workers get it so,
    /// needing no capability to find the map); `fd` itself stays open.
    ///
    /// # Safety
    /// `fd` must be an open XSKMAP descriptor for the life of this call.
    pub unsafe fn inherited(fd: i32) -> Result<XskMap> {
        // SAFETY: the caller's promise.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        borrowed
            .try_clone_to_owned()
            .map(XskMap)
            .map_err(|source| SteerError::Io {
                what: format!("duplicating the inherited XSKMAP fd {fd}"),
                source,
            })
    }

    /// Send this queue's steered segments to the AF_XDP socket `fd`.
    pub fn register(&self, queue: u32, fd: BorrowedFd<'_>) -> Result<()> {
        register_in(self.0.as_fd(), queue, fd)
    }

    /// Stop steering this queue to a socket (its segments go to the kernel again).
    pub fn unregister(&self, queue: u32) -> Result<()> {
        unregister_in(self.0.as_fd(), queue)
    }
}

pub(crate) fn register_in(xsks: BorrowedFd<'_>, queue: u32, fd: BorrowedFd<'_>) -> Result<()> {
    if queue >= MAX_QUEUES {
        return Err(SteerError::BadQueue(queue));
    }
    let key = queue.to_ne_bytes();
    let value = (fd.as_raw_fd() as u32).to_ne_bytes();
    // SAFETY: key and value are live buffers of the map's key and value sizes (u32 each).
    let rc = unsafe {
        libbpf_rs::libbpf_sys::bpf_map_update_elem(
            xsks.as_raw_fd(),
            key.as_ptr().cast(),
            value.as_ptr().cast(),
            u64::from(libbpf_rs::libbpf_sys::BPF_ANY),
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(SteerError::Io {
            what: format!("registering a socket for queue {queue}"),
            source: std::io::Error::last_os_error(),
        }),
    }
}

pub(crate) fn unregister_in(xsks: BorrowedFd<'_>, queue: u32) -> Result<()> {
    if queue >= MAX_QUEUES {
        return Err(SteerError::BadQueue(queue));
    }
    let key = queue.to_ne_bytes();
    // SAFETY: key is a live buffer of the map's key size (u32).
    let rc = unsafe { libbpf_rs::libbpf_sys::bpf_map_delete_elem(xsks.as_raw_fd(), key.as_ptr().cast()) };
    let err = std::io::Error::last_os_error();
    match rc {
        0 => Ok(()),
        _ if err.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        _ => Err(SteerError::Io {
            what: format!("unregistering queue {queue}"),
            source: err,
        }),
    }
}

//! The XSKMAP: which AF_XDP socket each receive queue's steered segments go to.

use std::os::fd::{AsRawFd, BorrowedFd};

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::maps::MAX_QUEUES;
use crate::steering::{bpf, Result, SteerError};

/// The program's XSKMAP, opened by id from a process that did not load the program.
pub struct XskMap(MapHandle);

impl XskMap {
    pub fn open(id: u32) -> Result<XskMap> {
        MapHandle::from_map_id(id)
            .map(XskMap)
            .map_err(bpf(&format!("opening XSKMAP id {id}")))
    }

    /// Send this queue's steered segments to the AF_XDP socket `fd`.
    pub fn register(&self, queue: u32, fd: BorrowedFd<'_>) -> Result<()> {
        register_in(&self.0, queue, fd)
    }

    /// Stop steering this queue to a socket (its segments go to the kernel again).
    pub fn unregister(&self, queue: u32) -> Result<()> {
        unregister_in(&self.0, queue)
    }
}

pub(crate) fn register_in(xsks: &MapHandle, queue: u32, fd: BorrowedFd<'_>) -> Result<()> {
    if queue >= MAX_QUEUES {
        return Err(SteerError::BadQueue(queue));
    }
    let value = (fd.as_raw_fd() as u32).to_ne_bytes();
    xsks.update(&queue.to_ne_bytes(), &value, MapFlags::ANY)
        .map_err(bpf(&format!("registering a socket for queue {queue}")))
}

pub(crate) fn unregister_in(xsks: &MapHandle, queue: u32) -> Result<()> {
    if queue >= MAX_QUEUES {
        return Err(SteerError::BadQueue(queue));
    }
    match xsks.delete(&queue.to_ne_bytes()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SteerError::Bpf {
            what: format!("unregistering queue {queue}"),
            source: e,
        }),
    }
}

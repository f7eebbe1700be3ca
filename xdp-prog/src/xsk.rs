//! A minimal AF_XDP socket (through `xdpilone`) for the steering tests and the flood benchmark:
//! receive frames on one queue, or send one frame repeatedly. The userspace TCP stack has its own
//! device; this one only has to prove where frames go and how fast they get there.

use std::ffi::CString;
use std::num::NonZeroU32;
use std::os::fd::{BorrowedFd, RawFd};
use std::ptr::NonNull;
use std::time::Duration;

use crate::area::Area;
use xdpilone::xdp::{XdpDesc, XdpStatisticsV2};
use xdpilone::{BufIdx, DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, User};

/// `XDP_USE_NEED_WAKEUP`: the kernel says when it needs a syscall to make progress.
const BIND_NEED_WAKEUP: u16 = 1 << 3;

fn errno(what: &str, e: xdpilone::Errno) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

/// One AF_XDP socket bound to one queue of one interface, with its own UMEM.
pub struct XskSocket {
    rx: Option<RingRx>,
    tx: Option<RingTx>,
    user: User,
    device: DeviceQueue,
    /// Kept alive for the socket: the UMEM registration.
    _umem: Umem,
    frame_size: u32,
    /// Frames owned by us (neither in the fill ring nor in flight on TX).
    free: Vec<u64>,
    /// Frames given back by the receive path, to refill in one batch.
    recycle: Vec<u64>,
    area: Area,
}

impl XskSocket {
    /// Bind to `queue` of `iface` (in the calling thread's network namespace). `frames` chunks of
    /// `frame_size` bytes; receive sockets put them all in the fill ring.
    pub fn bind(iface: &str, queue: u32, frames: u32, receive: bool, transmit: bool) -> std::io::Result<XskSocket> {
        let frame_size = 2048u32;
        let area = Area::new(frames as usize * frame_size as usize)?;
        let config = UmemConfig {
            fill_size: frames,
            complete_size: frames,
            frame_size,
            headroom: 0,
            flags: 0,
        };
        let slice = NonNull::slice_from_raw_parts(area.ptr, area.len);
        // SAFETY: the area is ours, page aligned, and outlives the UMEM (dropped after it).
        let umem = unsafe { Umem::new(config, slice) }.map_err(|e| errno("creating the UMEM", e))?;
        let mut info = IfInfo::invalid();
        let name = CString::new(iface).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        info.from_name(&name)
            .map_err(|e| errno(&format!("interface {iface}"), e))?;
        info.set_queue(queue);
        let sock = Socket::with_shared(&info, &umem).map_err(|e| errno("creating the AF_XDP socket", e))?;
        let device = umem
            .fq_cq(&sock)
            .map_err(|e| errno("mapping the fill/completion rings", e))?;
        let sizes = NonZeroU32::new(frames);
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: if receive { sizes } else { None },
                    tx_size: if transmit { sizes } else { None },
                    bind_flags: BIND_NEED_WAKEUP,
                },
            )
            .map_err(|e| errno("creating the rx/tx rings", e))?;
        let rx = if receive {
            Some(user.map_rx().map_err(|e| errno("mapping the rx ring", e))?)
        } else {
            None
        };
        let tx = if transmit {
            Some(user.map_tx().map_err(|e| errno("mapping the tx ring", e))?)
        } else {
            None
        };
        umem.bind(&user)
            .map_err(|e| errno(&format!("binding to {iface} queue {queue}"), e))?;
        let all: Vec<u64> = (0..frames)
            .filter_map(|i| umem.frame(BufIdx(i)).map(|f| f.offset))
            .collect();
        let mut s = XskSocket {
            rx,
            tx,
            user,
            device,
            _umem: umem,
            frame_size,
            free: all,
            recycle: Vec::new(),
            area,
        };
        if receive {
            s.recycle = std::mem::take(&mut s.free);
            s.refill();
        }
        Ok(s)
    }

    /// The socket, for the XSKMAP.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd lives as long as `self.user`, which lives as long as `self`.
        unsafe { BorrowedFd::borrow_raw(self.user.as_raw_fd() as RawFd) }
    }

    fn refill(&mut self) {
        if self.recycle.is_empty() {
            return;
        }
        let mut writer = self.device.fill(self.recycle.len() as u32);
        let n = writer.insert(self.recycle.iter().copied()) as usize;
        writer.commit();
        drop(writer);
        self.recycle.drain(..n);
        if self.device.needs_wakeup() {
            self.device.wake();
        }
    }

    /// Wait up to `timeout` for frames and hand each to `each`; returns how many were received.
    pub fn recv(&mut self, timeout: Duration, mut each: impl FnMut(&[u8])) -> std::io::Result<usize> {
        let fd = self.user.as_raw_fd();
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own.
        unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
        let Some(rx) = self.rx.as_mut() else { return Ok(0) };
        let mut n = 0;
        let mask = !(u64::from(self.frame_size) - 1);
        let mut reader = rx.receive(256);
        while let Some(desc) = reader.read() {
            if let Some(ptr) = self.area.range(desc.addr, desc.len as usize) {
                // SAFETY: the kernel handed this range of our area to us until we refill it.
                each(unsafe { std::slice::from_raw_parts(ptr, desc.len as usize) });
            }
            // Copy mode puts the frame after a headroom: recycle by chunk address.
            self.recycle.push(desc.addr & mask);
            n += 1;
        }
        reader.release();
        drop(reader);
        self.refill();
        Ok(n)
    }

    /// Send `frame` `count` times, `batch` descriptors at a time, and wait for their completions.
    /// Returns (sent, wakeup syscalls).
    pub fn flood(&mut self, frame: &[u8], count: u64, batch: u32) -> std::io::Result<(u64, u64)> {
        let Some(tx) = self.tx.as_mut() else { return Ok((0, 0)) };
        // Write the frame into every free chunk once; they are then sent over and over.
        for &addr in &self.free {
            // SAFETY: every free chunk is ours and frame_size (2048) ≥ a test frame.
            unsafe {
                std::ptr::copy_nonoverlapping(frame.as_ptr(), self.area.ptr.as_ptr().add(addr as usize), frame.len())
            };
        }
        let (mut sent, mut done, mut wakeups) = (0u64, 0u64, 0u64);
        while done < count {
            let want = (count - sent).min(u64::from(batch)).min(self.free.len() as u64) as u32;
            if want > 0 {
                let mut writer = tx.transmit(want);
                let base = self.free.len() - want as usize;
                let descs = self.free[base..].iter().map(|&addr| XdpDesc {
                    addr,
                    len: frame.len() as u32,
                    options: 0,
                });
                let n = writer.insert(descs);
                writer.commit();
                drop(writer);
                self.free.truncate(self.free.len() - n as usize);
                sent += u64::from(n);
            }
            if tx.needs_wakeup() {
                tx.wake();
                wakeups += 1;
            }
            let mut reader = self.device.complete(batch.max(64));
            while let Some(addr) = reader.read() {
                self.free.push(addr);
                done += 1;
            }
            reader.release();
        }
        Ok((sent, wakeups))
    }

    pub fn statistics(&self) -> std::io::Result<XdpStatisticsV2> {
        self.user
            .statistics_v2()
            .map_err(|e| errno("reading XDP statistics", e))
    }
}

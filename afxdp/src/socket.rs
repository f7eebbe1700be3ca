//! Binding an AF_XDP socket and its receive side.
//!
//! One UMEM holds every frame: the first `rx_frames` chunks circulate through the fill and RX
//! rings, the other `tx_frames` are TX buffers ([`Tx`]). A received frame is read where the kernel
//! put it, and its chunk goes back to the fill ring after the batch.

use std::ffi::CString;
use std::num::NonZeroU32;
use std::os::fd::{BorrowedFd, RawFd};
use std::ptr::NonNull;

use xdpilone::xdp::XdpStatisticsV2;
use xdpilone::{BufIdx, IfInfo, RingRx, SocketConfig, Umem, UmemConfig, User};

use crate::area::Area;
use crate::tx::Tx;

/// `XDP_USE_NEED_WAKEUP`: the kernel says when it needs a syscall to make progress.
const BIND_NEED_WAKEUP: u16 = 1 << 3;
/// UMEM chunk size: copy mode puts 256 B of headroom in front of a received frame inside its
/// chunk, so 2048 B carries an Ethernet frame up to 1792 B (MTU 1500, VLAN tags included).
pub const FRAME_SIZE: u32 = 2048;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Os {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

fn os(what: impl Into<String>, e: xdpilone::Errno) -> Error {
    Error::Os {
        what: what.into(),
        // The errno itself, so callers can tell EBUSY (a queue still held) from the rest.
        source: std::io::Error::from_raw_os_error(e.get_raw()),
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub iface: String,
    pub queue: u32,
    /// Chunks for receiving (fill and RX ring size): a power of two, or 0 for a send-only socket.
    pub rx_frames: u32,
    /// Chunks for sending (TX and completion ring size): a power of two, or 0 for receive-only.
    pub tx_frames: u32,
}

impl Config {
    /// 4096 chunks each way (16 MiB of UMEM).
    pub fn new(iface: &str, queue: u32) -> Config {
        Config {
            iface: iface.to_string(),
            queue,
            rx_frames: 4096,
            tx_frames: 4096,
        }
    }

    fn validate(&self) -> Result<(), Error> {
        for (name, n) in [("rx_frames", self.rx_frames), ("tx_frames", self.tx_frames)] {
            if n != 0 && (!n.is_power_of_two() || !(64..=1 << 20).contains(&n)) {
                return Err(Error::Config(format!(
                    "{name} must be 0 or a power of two in 64..=1048576 (got {n})"
                )));
            }
        }
        if self.rx_frames == 0 && self.tx_frames == 0 {
            return Err(Error::Config("a socket needs rx_frames or tx_frames".into()));
        }
        Ok(())
    }
}

/// What the socket saw: ours, and the kernel's drops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Frames built but dropped because no TX chunk was free.
    pub tx_dropped: u64,
    /// Times the sender found no free TX chunk.
    pub tx_ring_full: u64,
    /// Frames the kernel dropped before they reached us (socket drops, RX ring full, fill ring
    /// empty).
    pub rx_dropped: u64,
    /// Syscalls made to kick TX or to wake RX.
    pub wakeups: u64,
}

pub struct Socket {
    rx: Option<RingRx>,
    tx: Tx,
    user: User,
    /// Received chunks to put back in the fill ring.
    recycle: Vec<u64>,
    rx_frames: u64,
    chunk_mask: u64,
    // Dropped after the rings and the socket above: the UMEM registration, then its memory.
    _umem: Umem,
    area: Area,
}

// SAFETY: a Socket owns its UMEM area, rings and socket outright (no other handle to them exists),
// so moving it to another thread moves all of it; it is never shared (`Sync` is not claimed).
// This lets one setup thread bind a socket per queue and hand each to its own thread.
unsafe impl Send for Socket {}

impl Socket {
    /// Bind to `config.queue` of `config.iface`, in the calling thread's network namespace.
    pub fn bind(config: &Config) -> Result<Socket, Error> {
        config.validate()?;
        let total = config.rx_frames + config.tx_frames;
        let len = total as usize * FRAME_SIZE as usize;
        let area = Area::new(len).map_err(|source| Error::Os {
            what: format!("mapping {len} bytes for the UMEM"),
            source,
        })?;
        let umem_config = UmemConfig {
            // The rings exist even when unused; the kernel wants powers of two.
            fill_size: config.rx_frames.max(64),
            complete_size: config.tx_frames.max(64),
            frame_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
        };
        let slice = NonNull::slice_from_raw_parts(area.ptr, area.len);
        // SAFETY: the area is ours, page aligned, and outlives the UMEM (declared after it).
        let umem = unsafe { Umem::new(umem_config, slice) }.map_err(|e| os("creating the UMEM", e))?;
        let mut info = IfInfo::invalid();
        let name = CString::new(config.iface.as_str())
            .map_err(|_| Error::Config(format!("bad interface name {:?}", config.iface)))?;
        info.from_name(&name)
            .map_err(|e| os(format!("interface {}", config.iface), e))?;
        info.set_queue(config.queue);
        let sock = xdpilone::Socket::with_shared(&info, &umem).map_err(|e| os("creating the AF_XDP socket", e))?;
        let device = umem
            .fq_cq(&sock)
            .map_err(|e| os("mapping the fill and completion rings", e))?;
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: NonZeroU32::new(config.rx_frames),
                    tx_size: NonZeroU32::new(config.tx_frames),
                    bind_flags: BIND_NEED_WAKEUP,
                },
            )
            .map_err(|e| os("creating the RX and TX rings", e))?;
        let rx = match config.rx_frames {
            0 => None,
            _ => Some(user.map_rx().map_err(|e| os("mapping the RX ring", e))?),
        };
        let tx_ring = match config.tx_frames {
            0 => None,
            _ => Some(user.map_tx().map_err(|e| os("mapping the TX ring", e))?),
        };
        umem.bind(&user).map_err(|e| {
            os(
                format!(
                    "binding to {} queue {} (is the queue there?)",
                    config.iface, config.queue
                ),
                e,
            )
        })?;
        let chunk = |i: u32| umem.frame(BufIdx(i)).map(|f| f.offset);
        let recycle: Vec<u64> = (0..config.rx_frames).filter_map(chunk).collect();
        let free: Vec<u64> = (config.rx_frames..total).filter_map(chunk).collect();
        let mut socket = Socket {
            rx,
            tx: Tx::new(tx_ring, device, free, area.ptr, area.len),
            user,
            recycle,
            rx_frames: 0,
            chunk_mask: !(u64::from(FRAME_SIZE) - 1),
            _umem: umem,
            area,
        };
        socket.refill();
        Ok(socket)
    }

    /// The socket, for the XDP program's XSKMAP.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd lives as long as `self.user`, which lives as long as `self`.
        unsafe { BorrowedFd::borrow_raw(self.user.as_raw_fd() as RawFd) }
    }

    /// UMEM bytes (fixed, whatever the traffic).
    pub fn umem_bytes(&self) -> usize {
        self.area.len
    }

    /// The sending half.
    pub fn tx(&mut self) -> &mut Tx {
        &mut self.tx
    }

    /// Hand up to `max` received frames to `each` (with the sending half, for replies built in
    /// place), then give their chunks back to the fill ring. Returns how many were handed over.
    pub fn receive(&mut self, max: usize, each: &mut dyn FnMut(&mut [u8], &mut Tx)) -> usize {
        let Some(rx) = self.rx.as_mut() else { return 0 };
        let mut n = 0;
        let mut reader = rx.receive(max.min(u32::MAX as usize) as u32);
        while let Some(desc) = reader.read() {
            if let Some(ptr) = self.area.range(desc.addr, desc.len as usize) {
                // SAFETY: the kernel handed this range of our area to us; it stays ours (nobody
                // else reads or writes it) until the chunk goes back to the fill ring, after
                // this batch.
                let frame = unsafe { std::slice::from_raw_parts_mut(ptr, desc.len as usize) };
                each(frame, &mut self.tx);
            }
            // Copy mode puts the frame after a headroom: recycle by chunk address.
            self.recycle.push(desc.addr & self.chunk_mask);
            n += 1;
        }
        reader.release();
        drop(reader);
        self.rx_frames += n as u64;
        self.refill();
        n
    }

    /// Push built frames out (kicking as copy mode needs), take completed chunks back, refill.
    pub fn flush(&mut self) {
        self.tx.kick();
        self.refill();
    }

    /// Wait until frames may have arrived or `timeout_ms` passed (0: do not wait).
    pub fn wait(&mut self, timeout_ms: i32) {
        let mut pfd = libc::pollfd {
            fd: self.user.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own.
        unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    }

    /// The kernel's statistics of this socket.
    pub fn statistics(&self) -> Result<XdpStatisticsV2, Error> {
        self.user.statistics_v2().map_err(|e| os("reading XDP statistics", e))
    }

    pub fn counters(&self) -> Counters {
        let stats = self.statistics().unwrap_or_default();
        Counters {
            rx_frames: self.rx_frames,
            tx_frames: self.tx.frames,
            tx_dropped: self.tx.dropped,
            tx_ring_full: self.tx.ring_full,
            rx_dropped: stats.rx_dropped + stats.rx_ring_full + stats.rx_fill_ring_empty_descs,
            wakeups: self.tx.wakeups,
        }
    }

    fn refill(&mut self) {
        if self.recycle.is_empty() {
            return;
        }
        let mut writer = self.tx.device.fill(self.recycle.len() as u32);
        let n = writer.insert(self.recycle.iter().copied()) as usize;
        writer.commit();
        drop(writer);
        self.recycle.drain(..n);
        if self.tx.device.needs_wakeup() {
            self.tx.device.wake();
            self.tx.wakeups += 1;
        }
    }
}

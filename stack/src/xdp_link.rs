//! The AF_XDP link: one socket on one queue of an interface, through `xdpilone` (pure Rust rings).
//!
//! One UMEM holds every frame: the first `rx_frames` chunks circulate through the fill and RX
//! rings, the rest are TX buffers. Received frames are read where the kernel put them and their
//! chunk goes back to the fill ring after the batch; outgoing frames are built in a free TX chunk
//! and queued as descriptors, committed to the TX ring in batches, and their chunks come back
//! through the completion ring. Copy mode (veth has no zero-copy) takes at most 32 descriptors per
//! `sendto`, so `flush` kicks until the ring is drained instead of once.

use std::ffi::CString;
use std::num::NonZeroU32;
use std::os::fd::{BorrowedFd, RawFd};
use std::ptr::NonNull;

use xdp_prog::area::Area;
use xdpilone::xdp::XdpDesc;
use xdpilone::{BufIdx, DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, User};

use crate::link::{Link, LinkCounters, Sender};

/// `XDP_USE_NEED_WAKEUP`: the kernel says when it needs a syscall to make progress.
const BIND_NEED_WAKEUP: u16 = 1 << 3;
/// UMEM chunk size: copy mode puts 256 B of headroom in front of a received frame inside its
/// chunk, so 2048 B carries an Ethernet frame up to 1792 B (MTU 1500, VLAN tags included). With the
/// default 4096 + 4096 chunks the UMEM is 16 MiB: 17 B per connection at a million.
pub const FRAME_SIZE: u32 = 2048;
/// Descriptors queued before they are committed to the TX ring.
const TX_COMMIT_BATCH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum XdpLinkError {
    #[error("{what}: {source}")]
    Os {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

fn os(what: impl Into<String>, e: xdpilone::Errno) -> XdpLinkError {
    XdpLinkError::Os {
        what: what.into(),
        source: std::io::Error::other(e.to_string()),
    }
}

#[derive(Clone, Debug)]
pub struct XdpLinkConfig {
    pub iface: String,
    pub queue: u32,
    /// Chunks for receiving (fill + RX ring size; a power of two).
    pub rx_frames: u32,
    /// Chunks for sending (TX + completion ring size; a power of two).
    pub tx_frames: u32,
}

impl XdpLinkConfig {
    pub fn new(iface: &str, queue: u32) -> XdpLinkConfig {
        XdpLinkConfig {
            iface: iface.to_string(),
            queue,
            rx_frames: 4096,
            tx_frames: 4096,
        }
    }
}

pub struct XdpSender {
    tx: RingTx,
    /// Fill and completion rings.
    device: DeviceQueue,
    /// TX chunks we own.
    free: Vec<u64>,
    /// Built frames not yet in the TX ring.
    pending: Vec<XdpDesc>,
    /// Frames in the TX ring or in the kernel, not completed yet.
    in_flight: u32,
    base: NonNull<u8>,
    area_len: usize,
    tx_frames: u64,
    tx_dropped: u64,
    tx_ring_full: u64,
    wakeups: u64,
}

impl XdpSender {
    fn reap(&mut self) {
        let mut reader = self.device.complete(self.in_flight.max(1));
        while let Some(addr) = reader.read() {
            self.free.push(addr);
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        reader.release();
    }

    fn commit(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut writer = self.tx.transmit(self.pending.len() as u32);
        // `insert` may look at one item beyond what it takes; feed it from a cursor.
        let n = writer.insert(self.pending.iter().copied()) as usize;
        writer.commit();
        drop(writer);
        self.in_flight += n as u32;
        self.pending.drain(..n);
    }
}

impl Sender for XdpSender {
    fn can_send(&mut self) -> bool {
        if self.free.is_empty() {
            self.reap();
        }
        if self.free.is_empty() {
            self.tx_ring_full += 1;
            return false;
        }
        true
    }

    fn send(&mut self, len: usize, build: &mut dyn FnMut(&mut [u8])) {
        if self.free.is_empty() {
            self.reap();
        }
        let Some(addr) = self.free.pop() else {
            self.tx_dropped += 1;
            return;
        };
        if len > (FRAME_SIZE as usize) || addr as usize + len > self.area_len {
            self.free.push(addr);
            self.tx_dropped += 1;
            return;
        }
        // SAFETY: the chunk at `addr` is ours (on no ring) and `addr + len` is inside the area.
        let frame = unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(addr as usize), len) };
        build(frame);
        self.pending.push(XdpDesc {
            addr,
            len: len as u32,
            options: 0,
        });
        self.tx_frames += 1;
        if self.pending.len() >= TX_COMMIT_BATCH {
            self.commit();
        }
    }
}

pub struct XdpLink {
    rx: RingRx,
    sender: XdpSender,
    user: User,
    /// Received chunks to put back in the fill ring.
    recycle: Vec<u64>,
    rx_frames: u64,
    chunk_mask: u64,
    // Dropped after the rings and the socket above: the UMEM registration, then its memory.
    _umem: Umem,
    area: Area,
}

// SAFETY: an XdpLink owns its UMEM area, rings and socket outright (no other handle to them
// exists), so moving it to another thread moves all of it; it is never shared (`Sync` is not
// claimed). This lets one setup thread bind a socket per queue and hand each to its own thread.
unsafe impl Send for XdpLink {}

impl XdpLink {
    /// Bind an AF_XDP socket to `config.queue` of `config.iface` (in the calling thread's network
    /// namespace). The XDP program must then be told about it (`fd`, XSKMAP by queue).
    pub fn open(config: &XdpLinkConfig) -> Result<XdpLink, XdpLinkError> {
        for (name, n) in [("rx_frames", config.rx_frames), ("tx_frames", config.tx_frames)] {
            if !n.is_power_of_two() || !(64..=1 << 20).contains(&n) {
                return Err(XdpLinkError::Config(format!(
                    "{name} must be a power of two in 64..=1048576 (got {n})"
                )));
            }
        }
        let total = config.rx_frames + config.tx_frames;
        let len = total as usize * FRAME_SIZE as usize;
        let area = Area::new(len).map_err(|source| XdpLinkError::Os {
            what: format!("mapping {len} bytes for the UMEM"),
            source,
        })?;
        let umem_config = UmemConfig {
            fill_size: config.rx_frames,
            complete_size: config.tx_frames,
            frame_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
        };
        let slice = NonNull::slice_from_raw_parts(area.ptr, area.len);
        // SAFETY: the area is ours, page aligned, and outlives the UMEM (declared after it).
        let umem = unsafe { Umem::new(umem_config, slice) }.map_err(|e| os("creating the UMEM", e))?;
        let mut info = IfInfo::invalid();
        let name = CString::new(config.iface.as_str())
            .map_err(|_| XdpLinkError::Config(format!("bad interface name {:?}", config.iface)))?;
        info.from_name(&name)
            .map_err(|e| os(format!("interface {}", config.iface), e))?;
        info.set_queue(config.queue);
        let sock = Socket::with_shared(&info, &umem).map_err(|e| os("creating the AF_XDP socket", e))?;
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
        let rx = user.map_rx().map_err(|e| os("mapping the RX ring", e))?;
        let tx = user.map_tx().map_err(|e| os("mapping the TX ring", e))?;
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
        let mut link = XdpLink {
            rx,
            sender: XdpSender {
                tx,
                device,
                free,
                pending: Vec::with_capacity(TX_COMMIT_BATCH),
                in_flight: 0,
                base: area.ptr,
                area_len: area.len,
                tx_frames: 0,
                tx_dropped: 0,
                tx_ring_full: 0,
                wakeups: 0,
            },
            user,
            recycle,
            rx_frames: 0,
            chunk_mask: !(u64::from(FRAME_SIZE) - 1),
            _umem: umem,
            area,
        };
        link.refill();
        Ok(link)
    }

    /// The socket, for the XDP program's XSKMAP.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd lives as long as `self.user`, which lives as long as `self`.
        unsafe { BorrowedFd::borrow_raw(self.user.as_raw_fd() as RawFd) }
    }

    /// UMEM bytes (fixed, whatever the number of connections).
    pub fn umem_bytes(&self) -> usize {
        self.area.len
    }

    fn refill(&mut self) {
        if self.recycle.is_empty() {
            return;
        }
        let mut writer = self.sender.device.fill(self.recycle.len() as u32);
        let n = writer.insert(self.recycle.iter().copied()) as usize;
        writer.commit();
        drop(writer);
        self.recycle.drain(..n);
        if self.sender.device.needs_wakeup() {
            self.sender.device.wake();
            self.sender.wakeups += 1;
        }
    }
}

impl Link for XdpLink {
    type Sender = XdpSender;

    fn receive(&mut self, max: usize, each: &mut dyn FnMut(&[u8], &mut XdpSender)) -> usize {
        let mut n = 0;
        let mut reader = self.rx.receive(max.min(u32::MAX as usize) as u32);
        while let Some(desc) = reader.read() {
            if let Some(ptr) = self.area.range(desc.addr, desc.len as usize) {
                // SAFETY: the kernel handed this range of our area to us; it stays ours until
                // the chunk goes back to the fill ring, after this batch.
                let frame = unsafe { std::slice::from_raw_parts(ptr, desc.len as usize) };
                each(frame, &mut self.sender);
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

    fn sender(&mut self) -> &mut XdpSender {
        &mut self.sender
    }

    fn flush(&mut self) {
        let s = &mut self.sender;
        // Copy mode sends at most 32 frames per kick: kick until the ring is drained or the
        // kernel stops making progress (a full device queue; the rest goes at the next flush).
        for _ in 0..1024 {
            s.commit();
            let queued = s.tx.pending();
            if queued == 0 && s.pending.is_empty() {
                break;
            }
            if !s.tx.needs_wakeup() && s.pending.is_empty() {
                break;
            }
            s.tx.wake();
            s.wakeups += 1;
            s.reap();
            if s.tx.pending() >= queued && s.pending.is_empty() {
                break;
            }
        }
        s.reap();
        self.refill();
    }

    fn wait(&mut self, timeout_ms: i32) {
        let mut pfd = libc::pollfd {
            fd: self.user.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own.
        unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    }

    fn counters(&self) -> LinkCounters {
        let stats = self.user.statistics_v2().unwrap_or_default();
        LinkCounters {
            rx_frames: self.rx_frames,
            tx_frames: self.sender.tx_frames,
            tx_dropped: self.sender.tx_dropped,
            tx_ring_full: self.sender.tx_ring_full,
            rx_dropped: stats.rx_dropped + stats.rx_ring_full + stats.rx_fill_ring_empty_descs,
            wakeups: self.sender.wakeups,
        }
    }
}

/// An interface's MAC address, asked of the kernel in the calling thread's network namespace
/// (sysfs would show the namespace it was mounted in, not the thread's).
pub fn mac_of(iface: &str) -> std::io::Result<[u8; 6]> {
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::other(format!("bad interface name {iface:?}")));
    }
    // SAFETY: a plain datagram socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills `req.ifr_ifru.ifru_hwaddr` of the ifreq we pass.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(std::io::Error::new(err.kind(), format!("interface {iface}: {err}")));
    }
    let mut mac = [0u8; 6];
    // SAFETY: the kernel wrote a sockaddr into the union's hwaddr member.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok(mac)
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mac_addresses() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(parse_mac("02:00:0a:ff:00"), None);
        assert_eq!(parse_mac("02:00:0a:ff:00:01:07"), None);
        assert_eq!(parse_mac("zz:00:0a:ff:00:01"), None);
    }
}

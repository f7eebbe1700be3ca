//! The AF_XDP link: the stack's [`Link`] over one `afxdp::Socket` (one queue of one interface).
//! Received frames are read where the kernel put them in the UMEM; replies are built in place in
//! free TX chunks and pushed out in batches at `flush`.

use std::os::fd::BorrowedFd;

use crate::link::{Link, LinkCounters, Sender};

pub use afxdp::Config as XdpLinkConfig;
pub use afxdp::Error as XdpLinkError;

impl Sender for afxdp::Tx {
    fn can_send(&mut self) -> bool {
        afxdp::Tx::can_send(self)
    }

    fn send(&mut self, len: usize, build: &mut dyn FnMut(&mut [u8])) {
        afxdp::Tx::send(self, len, build)
    }
}

pub struct XdpLink {
    socket: afxdp::Socket,
}

impl XdpLink {
    /// Bind an AF_XDP socket to `config.queue` of `config.iface` (in the calling thread's network
    /// namespace). The XDP program must then be told about it (`fd`, XSKMAP by queue).
    pub fn open(config: &XdpLinkConfig) -> Result<XdpLink, XdpLinkError> {
        Ok(XdpLink {
            socket: afxdp::Socket::bind(config)?,
        })
    }

    /// The socket, for the XDP program's XSKMAP.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.socket.fd()
    }

    /// UMEM bytes (fixed, whatever the number of connections).
    pub fn umem_bytes(&self) -> usize {
        self.socket.umem_bytes()
    }
}

impl Link for XdpLink {
    type Sender = afxdp::Tx;

    fn receive(&mut self, max: usize, each: &mut dyn FnMut(&mut [u8], &mut afxdp::Tx)) -> usize {
        self.socket.receive(max, each)
    }

    fn sender(&mut self) -> &mut afxdp::Tx {
        self.socket.tx()
    }

    fn flush(&mut self) {
        self.socket.flush();
    }

    fn wait(&mut self, timeout_ms: i32) {
        self.socket.wait(timeout_ms);
    }

    fn counters(&self) -> LinkCounters {
        let c = self.socket.counters();
        LinkCounters {
            rx_frames: c.rx_frames,
            tx_frames: c.tx_frames,
            tx_dropped: c.tx_dropped,
            tx_ring_full: c.tx_ring_full,
            rx_dropped: c.rx_dropped,
            wakeups: c.wakeups,
        }
    }
}

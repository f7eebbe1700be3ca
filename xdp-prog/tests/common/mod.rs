//! Helpers of the steering tests: sockets behind the program, a raw link on the client veth,
//! frames made by hand. Shared by `steering.rs` and `parsing.rs`.
#![allow(dead_code)]

pub mod frames;

use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use afxdp::Socket;
use testkit::{in_ns, spawn_in_ns, Netns};
use xdp_prog::{Mode, Steering};

pub const SERVER: &str = "198.18.0.1:8080";

/// A TCP connect from the client namespace; whether it was established within `timeout`.
pub fn connects(tb: &Netns, to: &str, timeout: Duration) -> bool {
    let to: SocketAddr = to.parse().unwrap();
    in_ns(&tb.cli, move || TcpStream::connect_timeout(&to, timeout).is_ok())
}

/// A TCP connect to SERVER from `src` in the client namespace; whether it completed.
pub fn connects_from(tb: &Netns, src: &str, timeout: Duration) -> bool {
    let src: std::net::IpAddr = src.parse().unwrap();
    in_ns(&tb.cli, move || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::new(src, 0).into()).unwrap();
        let to: SocketAddr = SERVER.parse().unwrap();
        s.connect_timeout(&to.into(), timeout).is_ok()
    })
}

/// On the calling thread (inside the server namespace): the program attached to `dev` in native
/// mode, steering SERVER, with a receiving socket registered on each of `queues` queues.
pub fn steer_into_sockets(dev: &str, queues: u32) -> (Steering, Vec<Socket>) {
    let steering = Steering::attach(dev, Mode::Native).unwrap();
    steering.set_endpoints(&[SERVER.parse().unwrap()]).unwrap();
    let socks: Vec<Socket> = (0..queues).map(|q| receiver(dev, q)).collect();
    for (q, s) in socks.iter().enumerate() {
        steering.register_socket(q as u32, s.fd()).unwrap();
    }
    (steering, socks)
}

/// A receive-only AF_XDP socket on `queue` of `dev` (this thread's namespace).
pub fn receiver(dev: &str, queue: u32) -> Socket {
    Socket::bind(&afxdp::Config {
        rx_frames: 1024,
        tx_frames: 0,
        ..afxdp::Config::new(dev, queue)
    })
    .unwrap()
}

/// Wait up to `ms` for frames on `socket` and hand each to `each`; returns how many came.
pub fn recv(socket: &mut Socket, ms: i32, mut each: impl FnMut(&[u8])) -> usize {
    socket.wait(ms);
    socket.receive(256, &mut |frame, _| each(frame))
}

/// (destination port, SYN flag) of a TCP/IPv4 frame, if it is one.
pub fn tcp_of(frame: &[u8]) -> Option<(u16, bool)> {
    if frame.len() < 54 || frame[12..14] != [0x08, 0x00] || frame[23] != 6 {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let tcp = frame.get(14 + ihl..14 + ihl + 20)?;
    Some((u16::from_be_bytes([tcp[2], tcp[3]]), tcp[13] & 0x02 != 0))
}

pub const SERVER_IP: [u8; 4] = [198, 18, 0, 1];

/// A VLAN tag: (TPID, VLAN id).
pub type Tag = (u16, u16);

/// (source port, destination port) of an untagged TCP/IPv4 frame.
pub fn tcp_ports(frame: &[u8]) -> Option<(u16, u16)> {
    if frame.len() < 54 || frame[12..14] != [0x08, 0x00] || frame[23] != 6 {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let tcp = frame.get(14 + ihl..14 + ihl + 4)?;
    Some((
        u16::from_be_bytes([tcp[0], tcp[1]]),
        u16::from_be_bytes([tcp[2], tcp[3]]),
    ))
}

/// The program attached to a testbed's server veth steering SERVER, with a receiving socket
/// registered on queue 0, on a thread in the server namespace (no kernel listener on :8080).
pub struct SteeredServer {
    pub mac: [u8; 6],
    finish: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<(Vec<Vec<u8>>, xdp_prog::Counters)>,
}

impl SteeredServer {
    pub fn start(tb: &Netns) -> SteeredServer {
        let dev = tb.dev();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (finish, finish_rx) = std::sync::mpsc::channel::<()>();
        let thread = spawn_in_ns(&tb.srv, move || {
            let (steering, mut socks) = steer_into_sockets(&dev, 1);
            ready_tx.send(host::iface::mac_of(&dev).unwrap()).unwrap();
            let _ = finish_rx.recv();
            let mut got = Vec::new();
            let deadline = Instant::now() + Duration::from_millis(300);
            while Instant::now() < deadline {
                recv(&mut socks[0], 20, |f| got.push(f.to_vec()));
            }
            (got, steering.counters().unwrap())
        });
        let mac = ready_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        SteeredServer { mac, finish, thread }
    }

    /// Every frame the socket received, and the counters; detaches (the handle drops).
    pub fn finish(self) -> (Vec<Vec<u8>>, xdp_prog::Counters) {
        self.finish.send(()).unwrap();
        self.thread.join().unwrap()
    }
}

/// A raw link on the client veth, and the veth's MAC.
pub fn client_link(tb: &Netns) -> (RawLink, [u8; 6]) {
    let dev = tb.client_dev();
    in_ns(&tb.cli, move || {
        (RawLink::open(&dev), host::iface::mac_of(&dev).unwrap())
    })
}

/// Whole Ethernet frames in and out of one interface (an AF_PACKET socket, made in the interface's
/// namespace; it can be used from any thread after that).
pub struct RawLink(OwnedFd);

impl RawLink {
    pub fn open(iface: &str) -> RawLink {
        let index = xdp_prog::ifindex(iface).unwrap();
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: creates a socket; the fd is owned right below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto)) };
        assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain old data, for which all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = index as i32;
        // SAFETY: `addr` is a sockaddr_ll of the length passed, alive for the call.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "binding to {iface}: {}", std::io::Error::last_os_error());
        RawLink(fd)
    }

    pub fn send(&self, frame: &[u8]) {
        // SAFETY: the kernel reads `frame.len()` bytes from `frame`.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(n, frame.len() as isize, "send: {}", std::io::Error::last_os_error());
    }

    /// The first frame seen (either direction) for which `found` says `Some`, within `timeout`.
    pub fn wait_for<T>(&self, timeout: Duration, mut found: impl FnMut(&[u8]) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd, ours, for the length of the call.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().clamp(1, 1000) as i32) };
            // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
            let n = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                if let Some(v) = found(&buf[..n as usize]) {
                    return Some(v);
                }
            }
        }
    }
}

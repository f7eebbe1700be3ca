//! What the kernel knows about one of our TCP sockets.

use std::os::fd::RawFd;

/// Where `tcpi_snd_wnd` (the peer's advertised receive window, scaled, in bytes) is in
/// `struct tcp_info` (linux/tcp.h; added in Linux 5.4, after every older field).
const SND_WND_OFFSET: usize = 228;

/// The window the peer of TCP socket `fd` last advertised, in bytes; `None` if the kernel does
/// not report it (before 5.4) or `fd` is not a TCP socket.
pub fn peer_window(fd: RawFd) -> Option<u32> {
    // Larger than any tcp_info so far: the kernel fills what it has and says how much.
    let mut info = [0u8; 512];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the buffer we own and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 || (len as usize) < SND_WND_OFFSET + 4 {
        return None;
    }
    let field = info.get(SND_WND_OFFSET..SND_WND_OFFSET + 4)?;
    Some(u32::from_ne_bytes(field.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn the_window_of_a_peer_that_stops_reading_closes_and_reopens() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        client.set_recv_buffer_size(4096).unwrap();
        client.connect(&listener.local_addr().unwrap().into()).unwrap();
        let mut client: TcpStream = client.into();
        let (mut server, _) = listener.accept().unwrap();
        let open = peer_window(server.as_raw_fd()).expect("this kernel reports tcpi_snd_wnd");
        assert!(open > 0, "a fresh peer has room");
        assert_eq!(peer_window(client.as_raw_fd()).map(|w| w > 0), Some(true));
        // The client reads nothing: the server writes until the kernel takes no more.
        server.set_nonblocking(true).unwrap();
        let chunk = [7u8; 65536];
        let mut sent = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            match server.write(&chunk) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if peer_window(server.as_raw_fd()) == Some(0) {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(peer_window(server.as_raw_fd()), Some(0), "shut after {sent} bytes");
        // It reads everything: the window opens again.
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0;
        while got < sent {
            got += client.read(&mut buf).unwrap();
        }
        let reopened = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            peer_window(server.as_raw_fd()).is_some_and(|w| w > 0)
        });
        assert!(reopened, "the window reopened");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(peer_window(udp.as_raw_fd()), None, "not TCP");
    }
}

//! Our stack behind the XDP program on a real veth, talking to the Linux TCP stack in the client
//! namespace: connect, data both ways (far beyond our buffers), FIN and RST. Root only; without root
//! these skip, saying why, unless WSB_REQUIRE_PRIVILEGED=1 (CI).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use host::iface::mac_of;
use stack::echo::{self, EchoStats};
use stack::xdp_link::{XdpLink, XdpLinkConfig};
use stack::{clock, LinkCounters, Stack, StackConfig, StackStats};
use testkit::{in_ns, privileged, spawn_in_ns, Netns};
use xdp_prog::{Counters, Mode, Steering};

const ADDR: &str = "198.18.0.1:8080";

struct Report {
    stack: StackStats,
    link: LinkCounters,
    echo: EchoStats,
    steering: Counters,
}

/// An echo server on our stack in the server namespace, until `stop`.
fn start_server(tb: &Netns, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Report> {
    let dev = tb.dev();
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = spawn_in_ns(&tb.srv, move || {
        let steering = Steering::attach(&dev, Mode::Native).expect("attach");
        steering.set_endpoints(&[ADDR.parse().unwrap()]).unwrap();
        let link = XdpLink::open(&XdpLinkConfig::new(&dev, 0)).expect("AF_XDP socket");
        steering.register_socket(0, link.fd()).unwrap();
        let config = StackConfig {
            max_conns: 256,
            our_mac: mac_of(&dev).unwrap(),
            ..StackConfig::default()
        };
        let mut stack = Stack::new(config, link, clock::now()).unwrap();
        stack.listen(8080);
        ready_tx.send(()).unwrap();
        let stats = echo::serve(&mut stack, &stop);
        Report {
            stack: stack.stats(),
            link: stack.link_counters(),
            echo: stats,
            steering: steering.counters().unwrap(),
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("server ready");
    handle
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect()
}

#[test]
fn the_linux_stack_connects_exchanges_data_and_closes_with_ours() {
    if !privileged("the_linux_stack_connects_exchanges_data_and_closes_with_ours") {
        return;
    }
    let tb = Netns::setup_with_queues("wsbs1", 2, 1).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let server = start_server(&tb, stop.clone());

    let conns = 20;
    let results = in_ns(&tb.cli, move || {
        let addr: SocketAddr = ADDR.parse().unwrap();
        let mut streams: Vec<TcpStream> = (0..conns)
            .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect"))
            .collect();
        let mut ok = 0;
        for (i, s) in streams.iter_mut().enumerate() {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            // 64 KiB: 128 times our 512-byte buffers. Written from another thread while this
            // one reads: the namespace's socket buffers are small, so writing it all first
            // would deadlock against the echo.
            let data = pattern(64 * 1024, i as u8);
            let mut writer = s.try_clone().unwrap();
            let sent = data.clone();
            let w = std::thread::spawn(move || writer.write_all(&sent));
            let mut back = vec![0u8; data.len()];
            s.read_exact(&mut back).unwrap();
            w.join().unwrap().unwrap();
            assert_eq!(back, data, "connection {i}");
            ok += 1;
        }
        // Graceful close: FIN from the client, our echo server closes back, the client sees EOF.
        for s in &mut streams {
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty());
        }
        // One more connection, reset by the client.
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
        s.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        drop(s);
        ok
    });
    assert_eq!(results, conns);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let r = server.join().unwrap();
    eprintln!(
        "stack {:?}\nlink {:?}\necho {:?}\nsteering {:?}",
        r.stack, r.link, r.echo, r.steering
    );
    assert_eq!(r.stack.accepted, conns as u64 + 1);
    assert_eq!(r.echo.bytes, conns as u64 * 64 * 1024 + 1);
    assert_eq!(r.stack.closed_by_peer, conns as u64);
    assert!(r.stack.aborted >= 1, "the RST was seen");
    assert_eq!(r.stack.rx_malformed + r.stack.rx_not_tcp + r.stack.rx_not_ipv4, 0);
    // Every frame the program redirected reached the stack, and nothing was dropped on the way.
    assert_eq!(r.steering.redirected, r.link.rx_frames);
    assert_eq!(r.steering.no_socket, 0);
    assert_eq!(r.link.rx_dropped + r.link.tx_dropped, 0);
}

#[test]
fn one_stack_per_queue_each_serves_the_flows_of_its_queue() {
    if !privileged("one_stack_per_queue_each_serves_the_flows_of_its_queue") {
        return;
    }
    let queues = 2;
    let tb = Netns::setup_with_queues("wsbs2", 2, queues).unwrap();
    let dev = tb.dev();
    // Attach and bind a socket per queue inside the server namespace, then run each queue's
    // stack on its own thread.
    let (steering, links, mac) = in_ns(&tb.srv, move || {
        let steering = Steering::attach(&dev, Mode::Native).expect("attach");
        steering.set_endpoints(&[ADDR.parse().unwrap()]).unwrap();
        let links: Vec<XdpLink> = (0..queues)
            .map(|q| XdpLink::open(&XdpLinkConfig::new(&dev, q)).expect("AF_XDP socket"))
            .collect();
        for (q, l) in links.iter().enumerate() {
            steering.register_socket(q as u32, l.fd()).unwrap();
        }
        (steering, links, mac_of(&dev).unwrap())
    });
    let stop = Arc::new(AtomicBool::new(false));
    let servers: Vec<_> = links
        .into_iter()
        .map(|link| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let config = StackConfig {
                    max_conns: 256,
                    our_mac: mac,
                    ..StackConfig::default()
                };
                let mut stack = Stack::new(config, link, clock::now()).unwrap();
                stack.listen(8080);
                let stats = echo::serve(&mut stack, &stop);
                (stack.stats(), stats)
            })
        })
        .collect();
    let conns = 64;
    let echoed = in_ns(&tb.cli, move || {
        let addr: SocketAddr = ADDR.parse().unwrap();
        let mut ok = 0;
        for i in 0..conns {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let msg = format!("hello from {i}");
            s.write_all(msg.as_bytes()).unwrap();
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back).unwrap();
            ok += usize::from(back == msg.as_bytes());
        }
        ok
    });
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(StackStats, EchoStats)> = servers.into_iter().map(|h| h.join().unwrap()).collect();
    eprintln!("{results:?}");
    assert_eq!(echoed, conns);
    assert_eq!(results.iter().map(|r| r.0.accepted).sum::<u64>(), conns as u64);
    // Flows hash over both queues: each stack served some, and no segment reached the wrong one.
    for (q, r) in results.iter().enumerate() {
        assert!(r.0.accepted > 0, "queue {q} got no connection");
        assert_eq!(
            r.0.rx_no_connection, 0,
            "queue {q} saw segments of another queue's flows"
        );
    }
    drop(steering);
}

//! The steering program on a real veth, as root, in network namespaces made by
//! netns-scripts/setup.sh: steered TCP reaches an AF_XDP socket and not the kernel; ARP, ICMP and
//! other ports still reach the kernel; counters match; with no socket the kernel answers; after
//! detach everything reaches the kernel; several queues each reach their own socket; someone
//! else's program is left alone; client mode.
//! Without root these tests skip, saying why, unless WSB_REQUIRE_PRIVILEGED=1 (CI).

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use host::netns;
use testkit::{in_ns, privileged, repo_root, spawn_in_ns, Netns};
use xdp_prog::{attached_program, Mode, SteerError, Steering};

mod common;
use common::*;

#[test]
fn the_verifier_accepts_the_program() {
    if !privileged("the_verifier_accepts_the_program") {
        return;
    }
    let s = Steering::load().expect("the kernel loads and verifies the program");
    assert!(s.program_id() > 0);
    assert!(s.attachment().is_none());
    assert_eq!(s.counters().unwrap(), xdp_prog::Counters::default());
}

#[test]
fn steers_only_its_endpoint_falls_back_without_a_socket_and_detaches() {
    if !privileged("steers_only_its_endpoint_falls_back_without_a_socket_and_detaches") {
        return;
    }
    let tb = Netns::setup_with_queues("wsbx1", 2, 1).unwrap();
    let (srv, dev) = (tb.srv.clone(), tb.dev());

    // The server side lives on one thread inside the server namespace, reached over channels.
    enum Cmd {
        Collect(Duration),
        Unregister,
        Detach,
        Counters,
        Accepted,
        Done,
    }
    let (cmd_tx, cmd_rx) = std::sync::mpsc::channel::<Cmd>();
    let (res_tx, res_rx) = std::sync::mpsc::channel::<String>();
    let server = std::thread::spawn(move || {
        netns::enter(&srv).unwrap();
        let steered = TcpListener::bind(SERVER).unwrap();
        steered.set_nonblocking(true).unwrap();
        let other = TcpListener::bind("198.18.0.1:9000").unwrap();
        std::thread::spawn(move || {
            for s in other.incoming().flatten() {
                drop(s);
            }
        });
        let (mut steering, mut socks) = steer_into_sockets(&dev, 1);
        let mut xsk = socks.remove(0);
        assert!(matches!(
            Steering::attach(&dev, Mode::Native),
            Err(SteerError::AlreadyAttached { .. })
        ));
        assert!(matches!(
            Steering::attach("nope0", Mode::Native),
            Err(SteerError::NoSuchInterface(_))
        ));
        res_tx.send("ready".into()).unwrap();
        for cmd in cmd_rx {
            let reply = match cmd {
                Cmd::Collect(d) => {
                    let (mut frames, mut syns_to_8080) = (0, 0);
                    let deadline = Instant::now() + d;
                    while Instant::now() < deadline {
                        recv(&mut xsk, 50, |f| {
                            frames += 1;
                            if tcp_of(f) == Some((8080, true)) {
                                syns_to_8080 += 1;
                            }
                        });
                    }
                    format!("{frames} {syns_to_8080}")
                }
                Cmd::Unregister => {
                    steering.unregister_socket(0).unwrap();
                    "ok".into()
                }
                Cmd::Detach => {
                    steering.detach().unwrap();
                    format!("{:?}", attached_program(&dev).unwrap())
                }
                Cmd::Counters => serde_json::to_string(&steering.counters().unwrap()).unwrap(),
                Cmd::Accepted => {
                    let mut n = 0;
                    while steered.accept().is_ok() {
                        n += 1;
                    }
                    n.to_string()
                }
                Cmd::Done => break,
            };
            res_tx.send(reply).unwrap();
        }
    });
    let mut ask = |c: Cmd| {
        cmd_tx.send(c).unwrap();
        res_rx.recv_timeout(Duration::from_secs(30)).unwrap()
    };
    assert_eq!(res_rx.recv_timeout(Duration::from_secs(30)).unwrap(), "ready");
    // Read the counters once the last exchange (a connection's FIN and its ACKs) has settled.
    let counters = |ask: &mut dyn FnMut(Cmd) -> String| -> serde_json::Value {
        std::thread::sleep(Duration::from_millis(300));
        serde_json::from_str(&ask(Cmd::Counters)).unwrap()
    };

    // ARP and ICMP reach the kernel: ping works.
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &tb.cli,
            "ping",
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "1",
            "198.18.0.1",
        ])
        .output()
        .unwrap();
    assert!(ping.status.success(), "ping: {}", String::from_utf8_lossy(&ping.stdout));
    // TCP to another port reaches the kernel.
    assert!(connects(&tb, "198.18.0.1:9000", Duration::from_secs(2)));
    // TCP to the steered endpoint goes to the socket: the kernel never answers the SYN.
    assert!(!connects(&tb, SERVER, Duration::from_millis(1500)));
    let got = ask(Cmd::Collect(Duration::from_millis(500)));
    let (frames, syns): (u64, u64) = {
        let mut it = got.split(' ').map(|v| v.parse().unwrap());
        (it.next().unwrap(), it.next().unwrap())
    };
    assert!(
        syns >= 1 && syns == frames,
        "the socket got the SYNs to :8080 and nothing else: {got}"
    );
    assert_eq!(ask(Cmd::Accepted), "0", "the kernel listener on :8080 saw nothing");
    let c = counters(&mut ask);
    assert_eq!(
        c["redirected"], frames,
        "every redirected segment reached the socket: {c}"
    );
    assert_eq!(c["no_socket"], 0);
    assert_eq!(c["malformed"], 0);
    // 2 ARP (request, and our reply's peer request may vary) + 2 ICMP + the :9000 handshake and close.
    assert!(c["passed"].as_u64().unwrap() >= 6, "{c}");

    // Without a socket on the queue, the kernel answers.
    ask(Cmd::Unregister);
    assert!(connects(&tb, SERVER, Duration::from_secs(2)));
    // (Accepting closes the kernel's side; the client's last ACK must be in before `after`.)
    assert_eq!(ask(Cmd::Accepted), "1");
    let after = counters(&mut ask);
    assert!(
        after["no_socket"].as_u64().unwrap() >= 3,
        "handshake and close went by the fallback: {after}"
    );
    assert_eq!(after["redirected"], c["redirected"]);

    // Detached: the kernel gets everything and the counters stand still.
    assert_eq!(ask(Cmd::Detach), "None");
    assert!(connects(&tb, SERVER, Duration::from_secs(2)));
    assert_eq!(counters(&mut ask), after);
    cmd_tx.send(Cmd::Done).unwrap();
    server.join().unwrap();
}

#[test]
fn each_queue_reaches_its_own_socket() {
    if !privileged("each_queue_reaches_its_own_socket") {
        return;
    }
    let tb = Netns::setup_with_queues("wsbx2", 2, 2).unwrap();
    let (srv, dev) = (tb.srv.clone(), tb.dev());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        netns::enter(&srv).unwrap();
        let (steering, mut socks) = steer_into_sockets(&dev, 2);
        ready_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        let mut per_queue = [0u64; 2];
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            for (q, s) in socks.iter_mut().enumerate() {
                per_queue[q] += recv(s, 10, |_| {}) as u64;
            }
        }
        (per_queue, steering.counters().unwrap())
    });
    ready_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    // 64 flows (one SYN each, then dropped): their hashes spread them over both queues.
    let cli = tb.cli.clone();
    in_ns(&cli, || {
        let socks: Vec<socket2::Socket> = (0..64)
            .map(|_| {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
                s.set_nonblocking(true).unwrap();
                let _ = s.connect(&SERVER.parse::<SocketAddr>().unwrap().into());
                s
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        drop(socks);
    });
    go_tx.send(()).unwrap();
    let (per_queue, counters) = server.join().unwrap();
    let dev = tb.dev();
    assert_eq!(
        in_ns(&tb.srv, move || attached_program(&dev).unwrap()),
        None,
        "dropping the handle detached it"
    );
    assert!(
        per_queue[0] > 0 && per_queue[1] > 0,
        "both queues got frames: {per_queue:?}"
    );
    assert_eq!(per_queue[0] + per_queue[1], counters.redirected, "{counters:?}");
    assert_eq!(counters.no_socket, 0);
}

#[test]
fn attach_script_status_and_detach_script() {
    if !privileged("attach_script_status_and_detach_script") {
        return;
    }
    let tb = Netns::setup_with_queues("wsbx3", 2, 1).unwrap();
    let steer = env!("CARGO_BIN_EXE_xdp-steer");
    let script = |name: &str| {
        let out = Command::new("bash")
            .arg(repo_root().unwrap().join("testbed").join(name))
            .args(["--prefix", "wsbx3"])
            .env("XDP_STEER", steer)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let status = || -> serde_json::Value {
        let out = Command::new(steer)
            .args([
                "status",
                &tb.dev(),
                "--netns",
                &tb.srv,
                "--pin",
                "/run/wsb/bpffs/wsbx3",
                "--json",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let json_of = |args: &[&str]| -> serde_json::Value {
        let out = Command::new(steer).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let all = || json_of(&["status", "--netns", &tb.srv, "--json"]);
    assert_eq!(all(), serde_json::json!([]), "nothing of ours yet");
    // A veth runs XDP in its driver (native) but has no AF_XDP zero-copy.
    let features = json_of(&["features", &tb.dev(), "--netns", &tb.srv, "--json"]);
    assert_eq!(
        (&features["native"], &features["zero_copy"]),
        (&true.into(), &false.into()),
        "{features}"
    );
    script("attach.sh");
    let listed = all();
    assert_eq!(
        listed[0]["iface"],
        tb.dev().as_str(),
        "status without an interface lists ours: {listed}"
    );
    let first = status();
    assert_eq!(first["attached"]["name"], "wsb_steer", "{first}");
    assert_eq!(first["ours"], true);
    assert_eq!(first["endpoints"], serde_json::json!(["198.18.0.1:8080"]));
    let counters = first["counters"].as_object().unwrap();
    let mut names: Vec<&str> = counters.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "malformed",
            "no_socket",
            "passed",
            "passed_fragment",
            "passed_vlan",
            "redirected"
        ],
        "{first}"
    );
    assert!(first.get("steer_arp").is_none(), "no ARP steering any more: {first}");
    // Idempotent: a second run replaces our program instead of failing.
    script("attach.sh");
    let second = status();
    assert_eq!(second["ours"], true);
    assert_ne!(second["attached"]["id"], first["attached"]["id"]);
    // The pinned maps are reachable from a process started with `ip netns exec` (which remounts
    // /sys, the reason the pins live under /run/wsb/bpffs).
    let inside = Command::new("ip")
        .args([
            "netns",
            "exec",
            &tb.srv,
            steer,
            "status",
            &tb.dev(),
            "--pin",
            "/run/wsb/bpffs/wsbx3",
            "--json",
        ])
        .output()
        .unwrap();
    let inside: serde_json::Value = serde_json::from_slice(&inside.stdout).unwrap();
    assert_eq!(inside["ours"], true, "{inside}");
    script("detach.sh");
    let gone = status();
    assert!(gone["attached"].is_null(), "{gone}");
    assert!(gone["pinned"].is_null());
    assert!(!std::path::Path::new("/run/wsb/bpffs/wsbx3").exists());
    script("detach.sh");
}

/// An interface that runs someone else's XDP program is refused, not taken over, and
/// `xdp-steer detach` leaves that program alone.
#[test]
fn someone_elses_program_is_not_replaced() {
    if !privileged("someone_elses_program_is_not_replaced") {
        return;
    }
    let tb = Netns::setup_with_queues("wsbx6", 2, 1).unwrap();
    let dir = std::env::temp_dir().join(format!("wsb-foreign-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A program whose function is `name`, compiled and attached in generic mode by `ip`.
    let attach_passing = |name: &str| {
        let source = dir.join(format!("{name}.bpf.c"));
        std::fs::write(
            &source,
            format!(
                "#include <linux/bpf.h>\n__attribute__((section(\"xdp\"), used)) int {name}(struct xdp_md *ctx) {{ return XDP_PASS; }}\n\
                 char LICENSE[] __attribute__((section(\"license\"), used)) = \"GPL\";\n"
            ),
        )
        .unwrap();
        let object = dir.join(format!("{name}.o"));
        let arch = format!("-I/usr/include/{}-linux-gnu", std::env::consts::ARCH);
        let cc = Command::new("clang")
            .args(["-O2", "-g", "-target", "bpf", &arch, "-c"])
            .arg(&source)
            .arg("-o")
            .arg(&object)
            .output()
            .unwrap();
        assert!(cc.status.success(), "{}", String::from_utf8_lossy(&cc.stderr));
        let _ = Command::new("ip")
            .args(["-n", &tb.srv, "link", "set", "dev", &tb.dev(), "xdpgeneric", "off"])
            .output();
        let attach = Command::new("ip")
            .args(["-n", &tb.srv, "link", "set", "dev", &tb.dev(), "xdpgeneric", "obj"])
            .arg(&object)
            .args(["sec", "xdp"])
            .output()
            .unwrap();
        assert!(attach.status.success(), "{}", String::from_utf8_lossy(&attach.stderr));
    };
    attach_passing("foreign");

    let dev = tb.dev();
    let refused = in_ns(&tb.srv, move || match Steering::attach(&dev, Mode::Auto) {
        Err(SteerError::AttachedBySomeoneElse { name, .. }) => name,
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("attached over someone else's program"),
    });
    assert_eq!(refused, "foreign");
    let out = Command::new(env!("CARGO_BIN_EXE_xdp-steer"))
        .args(["detach", &tb.dev(), "--netns", &tb.srv])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another XDP program"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = tb.dev();
    let still = in_ns(&tb.srv, move || attached_program(&dev).unwrap());
    assert_eq!(still.map(|(_, name, _)| name), Some("foreign".to_string()));

    // A program that takes our name but not our maps is not ours either.
    attach_passing("wsb_steer");
    let dev = tb.dev();
    let refused = in_ns(&tb.srv, move || match Steering::attach(&dev, Mode::Auto) {
        Err(SteerError::AttachedBySomeoneElse { name, .. }) => name,
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("attached over an impostor"),
    });
    assert!(refused.starts_with("wsb_steer (not ours"), "{refused}");
    let _ = Command::new("ip")
        .args(["-n", &tb.srv, "link", "set", "dev", &tb.dev(), "xdpgeneric", "off"])
        .output();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Client mode on the client's veth: everything the server's port 8080 sends to the client
/// stack's address (the SYN-ACK) goes to the socket whatever our port, so the kernel's connect
/// from that address never completes; from another local address, and to the server's other
/// ports, the kernel is served. Endpoints and sources are listed apart.
#[test]
fn client_mode_steers_everything_from_the_server_endpoint() {
    if !privileged("client_mode_steers_everything_from_the_server_endpoint") {
        return;
    }
    let tb = Netns::setup_with_queues("wsbx7", 2, 1).unwrap();
    let listeners = in_ns(&tb.srv, || {
        (
            TcpListener::bind(SERVER).unwrap(),
            TcpListener::bind("198.18.0.1:9000").unwrap(),
        )
    });
    let dev = tb.client_dev();
    let (cmd_tx, cmd_rx) = std::sync::mpsc::channel::<()>();
    let (res_tx, res_rx) = std::sync::mpsc::channel::<(usize, Vec<u16>, String, xdp_prog::Counters)>();
    let client = spawn_in_ns(&tb.cli, move || {
        let steering = Steering::attach(&dev, Mode::Native).unwrap();
        steering
            .set_sources(&[SERVER.parse().unwrap()], &["198.19.0.1".parse().unwrap()])
            .unwrap();
        let listing = format!("{:?} {:?}", steering.endpoints(), steering.sources());
        let mut xsk = receiver(&dev, 0);
        steering.register_socket(0, xsk.fd()).unwrap();
        res_tx
            .send((0, vec![], listing.clone(), steering.counters().unwrap()))
            .unwrap();
        cmd_rx.recv().unwrap();
        let (mut frames, mut ports) = (0, Vec::new());
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            recv(&mut xsk, 50, |f| {
                frames += 1;
                if f.len() >= 54 && f[23] == 6 && f[47] & 0x12 == 0x12 {
                    ports.push(u16::from_be_bytes([f[34], f[35]]));
                }
            });
        }
        res_tx
            .send((frames, ports, listing, steering.counters().unwrap()))
            .unwrap();
    });
    let (_, _, listing, _) = res_rx.recv().unwrap();
    assert_eq!(listing, "[] ([198.18.0.1:8080], [198.19.0.1])");
    assert!(
        connects(&tb, "198.18.0.1:9000", Duration::from_secs(2)),
        "other ports reach the kernel"
    );
    assert!(
        !connects_from(&tb, "198.19.0.1", Duration::from_millis(500)),
        "the SYN-ACK from the steered server never reached the client's kernel"
    );
    assert!(
        connects_from(&tb, "198.19.0.2", Duration::from_secs(2)),
        "a kernel client on another address of the same veth is not disturbed"
    );
    cmd_tx.send(()).unwrap();
    let (frames, ports, _, counters) = res_rx.recv().unwrap();
    client.join().unwrap();
    drop(listeners);
    assert!(frames >= 1, "the socket received the server's segments");
    assert!(!ports.is_empty() && ports.iter().all(|&p| p == 8080), "{ports:?}");
    assert!(counters.redirected >= 1, "{counters:?}");
}

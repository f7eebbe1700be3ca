//! End to end, as root, in network namespaces: ws-server --stack xdp (XDP steering, AF_XDP, the
//! userspace TCP stack) with both load generators at once (ws-load --stack xdp, the userspace
//! stack as client, and --stack kernel, the Linux TCP stack as client), a standard client library
//! (Python `websockets`), curl, hostile bytes, and a restart after a crash.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use testkit::{wait_for, ChildGuard, Netns};

fn xdp_server_args(ns: &Netns) -> Vec<String> {
    ["--stack", "xdp", "--iface", &format!("{}-s0", ns.prefix)]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// 5,000 connections from the userspace-stack client and 5,000 from the kernel client on one xdp
/// server, plus 300 silent ones: every connection upgrades, gets both broadcasts and its echoes,
/// a targeted push reaches exactly its device, the silent ones expire with 4001, and /stats is
/// exact.
#[test]
fn both_client_kinds_at_five_thousand_each() {
    if !privileged("both_client_kinds_at_five_thousand_each") {
        return;
    }
    let dir = scratch("xdp-both");
    let ns = Netns::setup("wsbt7", 3).unwrap();
    let mut args = xdp_server_args(&ns);
    args.extend(
        ["--max-conns", "20000", "--idle-timeout", "3s", "--echo"]
            .iter()
            .map(|s| s.to_string()),
    );
    let _server = start_server(&ns, &strs(&args), &dir.join("server.log"));
    let common_load = [
        "--conns",
        "5000",
        "--rate",
        "0",
        "--ids",
        "--ping-interval",
        "1s",
        "--send-interval",
        "1s",
        "--payload",
        "64",
        "--hold",
        "60s",
        "--expect-broadcasts",
        "2",
    ];
    let (jx, jk, js) = (dir.join("xdp.json"), dir.join("kernel.json"), dir.join("silent.json"));
    let iface = format!("{}-c0", ns.prefix);
    let mut xdp_args = vec![
        "--stack",
        "xdp",
        "--iface",
        &iface,
        "--src",
        "198.19.0.1",
        "--id-prefix",
        "x-",
    ];
    xdp_args.extend(common_load);
    let xdp_load = start_load(&ns, &xdp_args, &jx);
    let mut kernel_args = vec!["--src", "198.19.0.2", "--id-prefix", "k-"];
    kernel_args.extend(common_load);
    let kernel_load = start_load(&ns, &kernel_args, &jk);
    wait_conns(&ns, 10_000, Duration::from_secs(60));

    // Silent connections (no pings) from a third address: they expire after 3 s.
    let silent = start_load(&ns, &["--conns", "300", "--src", "198.19.0.3", "--hold", "6s"], &js);
    let s = finish_load(silent, &js, Duration::from_secs(60));
    assert_eq!(s["established"], 300, "{s}");
    assert_eq!(
        s["counters"]["closed_by_server"],
        serde_json::json!({"4001": 300}),
        "every silent one got 4001: {s}"
    );

    assert_eq!(admin_post(&ns, "/push?id=x-17", b"for x-17")["queued"], true);
    assert_eq!(admin_post(&ns, "/push?id=k-4023", b"for k-4023")["queued"], true);
    assert_eq!(admin_post(&ns, "/push?id=nobody", b"x")["queued"], false);
    for _ in 0..2 {
        let b = admin_post(&ns, "/broadcast", b"");
        assert_eq!(b["websockets"], 10_000, "{b}");
    }
    let x = finish_load(xdp_load, &jx, Duration::from_secs(90));
    let k = finish_load(kernel_load, &jk, Duration::from_secs(90));
    five_thousand_served(&x, "x-17");
    five_thousand_served(&k, "k-4023");
    assert_eq!(x["stack"], "xdp");
    assert_eq!(k["stack"], "kernel");

    wait_conns(&ns, 0, Duration::from_secs(30));
    server_counts_both_clients(&ns, &x, &k);
}

/// What one 5,000-connection client of `both_client_kinds_at_five_thousand_each` saw.
fn five_thousand_served(summary: &serde_json::Value, device: &str) {
    assert_eq!(summary["established"], 5000, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    let c = &summary["counters"];
    assert_eq!(
        c["broadcasts"], 10_000,
        "every connection got both broadcasts: {summary}"
    );
    assert_eq!(c["targeted"], 1, "{summary}");
    assert_eq!(summary["targeted_devices"], serde_json::json!([device]));
    assert_eq!(c["closed_by_server"], serde_json::json!({}), "none expired: {summary}");
    assert!(c["pongs"].as_u64().unwrap() >= 5000, "heartbeats answered: {summary}");
    let (sent, echoes) = (c["sent_frames"].as_u64().unwrap(), c["echoes"].as_u64().unwrap());
    assert!(echoes >= 5000 && echoes + 5000 >= sent, "echo rounds: {summary}");
}

/// The server's /stats after both clients (`x`, `k`) and the 300 silent ones are gone.
fn server_counts_both_clients(ns: &Netns, x: &serde_json::Value, k: &serde_json::Value) {
    let stats = admin_json(ns, "/stats");
    let echoed = x["counters"]["echoes"].as_u64().unwrap() + k["counters"]["echoes"].as_u64().unwrap();
    assert_eq!(stats["stack"], "xdp", "{stats}");
    assert_eq!(stats["accepted"], 10_300, "{stats}");
    assert_eq!(stats["upgrades"], 10_300);
    assert_eq!(stats["expired"], 300);
    assert_eq!(stats["closed_by_client"], 10_000);
    assert_eq!(stats["closed"], 10_300);
    assert_eq!(stats["pushes_queued"], 2);
    assert_eq!(stats["broadcasts"], 2);
    assert_eq!(stats["devices"], 0, "device ids are released on close");
    assert_eq!(stats["slow_readers_closed"], 0);
    let (_, metrics) = testkit::http::http_in_netns(&ns.srv, "GET", admin(), "/metrics", b"").unwrap();
    promtool_check(&metrics);
    assert!(
        metrics.contains("stack=\"xdp\"} 1\n"),
        "build_info names the stack: {metrics}"
    );
    assert!(
        metrics.contains("wsserver_handshake_seconds_count 10300\n"),
        "{metrics}"
    );
    // Echoes the clients saw are at most what the server echoed (the last may be in flight).
    let server_echoed = stats["echoed"].as_u64().unwrap();
    assert!(server_echoed >= echoed && server_echoed <= echoed + 10_000, "{stats}");
    assert_eq!(
        stats["messages_out"].as_u64().unwrap(),
        2 * 10_000 + 2 + server_echoed,
        "{stats}"
    );
    let worker = &stats["per_worker"][0]["xdp"];
    assert_eq!(worker["stack"]["accepted"], 10_300, "{worker}");
    assert_eq!(worker["stack"]["rx_malformed"], 0, "{worker}");
    assert_eq!(worker["spill_exhausted"], 0, "{worker}");
    assert_eq!(stats["steering"]["no_socket"], 0, "{stats}");
    assert!(
        stats["steering"]["redirected"].as_u64().unwrap() >= worker["link"]["rx_frames"].as_u64().unwrap(),
        "{stats}"
    );
    assert_eq!(
        admin_json(ns, "/conns"),
        serde_json::json!({"closed": 10_300, "conns": 0})
    );
}

/// Python `websockets` and curl against the xdp server.
#[test]
fn standard_clients_against_the_xdp_server() {
    if !privileged("standard_clients_against_the_xdp_server") {
        return;
    }
    scenarios::standard_clients("wsbt8", &["--stack", "xdp", "--iface", "wsbt8-s0"]);
}

/// Long-polls held and answered (by timeout, or early by a targeted push) and echo rounds on the
/// xdp server.
#[test]
fn long_poll_and_echo_on_the_xdp_server() {
    if !privileged("long_poll_and_echo_on_the_xdp_server") {
        return;
    }
    scenarios::long_poll_and_echo("wsbtf", &["--stack", "xdp", "--iface", "wsbtf-s0"]);
}

/// Malformed upgrades, unmasked and oversize frames, junk and a slow head against the xdp
/// server: each a clean close, and everyone else still served.
#[test]
fn hostile_bytes_against_the_xdp_server() {
    if !privileged("hostile_bytes_against_the_xdp_server") {
        return;
    }
    scenarios::hostile_bytes("wsbt9", &["--stack", "xdp", "--iface", "wsbt9-s0"]);
}

/// A request head and a frame larger than the 256-byte receive buffer go through a spill buffer;
/// a server killed with SIGKILL leaves no XDP program behind (its attachment is a BPF link the
/// kernel drops with the process), a restart attaches afresh and serves; a clean stop detaches.
#[test]
fn large_messages_spill_and_a_crash_then_restart_works() {
    if !privileged("large_messages_spill_and_a_crash_then_restart_works") {
        return;
    }
    let dir = scratch("xdp-restart");
    let ns = Netns::setup("wsbta", 1).unwrap();
    let args = xdp_server_args(&ns);
    let attached = || {
        let (_, out) = run_in(&ns.srv, "ip", &["link", "show", "dev", "wsbta-s0"]);
        out.contains("prog/xdp")
    };
    let mut server = start_server(&ns, &strs(&args), &dir.join("first.log"));
    assert!(attached());
    let pid = server.pid();
    let workers = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    assert!(!workers.trim().is_empty(), "the server runs a worker process");
    // SAFETY: kill on the pid of the server we started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    server.wait_timeout(Duration::from_secs(5)).expect("killed");
    let detached = wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
        (!attached()).then_some(())
    });
    assert!(detached.is_some(), "the kernel dropped the killed server's link");
    // Its worker goes too (parent-death signal).
    let gone = wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        let alive = workers
            .split_whitespace()
            .any(|w| std::fs::read_to_string(format!("/proc/{w}/stat")).is_ok_and(|s| !s.contains(") Z ")));
        (!alive).then_some(())
    });
    assert!(gone.is_some(), "the worker of the killed server exited");

    let mut server = start_server(&ns, &strs(&args), &dir.join("second.log"));
    let log = std::fs::read_to_string(dir.join("second.log")).unwrap();
    assert!(
        !log.contains("left attached by an earlier run"),
        "nothing was left: {log}"
    );
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/ws_large_check.py");
    let mut cmd = ns.command(&ns.cli, std::path::Path::new("python3"));
    cmd.arg(&script)
        .arg(format!("ws://{SERVER}/ws?id=large"))
        .stdin(Stdio::null());
    let (ok, out) = output_of(cmd);
    assert!(ok, "{out}");
    assert!(out.contains("head 3000 ok"), "{out}");
    assert!(out.contains("frame 1500 accepted"), "{out}");
    let stats = admin_json(&ns, "/stats");
    assert_eq!(stats["upgrades"], 1, "{stats}");
    assert_eq!(stats["messages_in"], 1, "{stats}");
    assert_eq!(stats["protocol_errors"], 0, "{stats}");
    drop_guard(&mut server);
    assert!(!attached(), "a clean stop detaches the program");
    let log = std::fs::read_to_string(dir.join("second.log")).unwrap();
    assert!(log.contains("XDP steering detached"), "{log}");
}

fn drop_guard(server: &mut ChildGuard) {
    let status = server.stop(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "clean exit: {status:?}");
}

/// The userspace-stack load generator refuses bad settings with a clear message and leaves the
/// interface as it found it.
#[test]
fn load_generator_on_the_userspace_stack_explains_bad_settings() {
    if !privileged("load_generator_on_the_userspace_stack_explains_bad_settings") {
        return;
    }
    let ns = Netns::setup("wsbtc", 1).unwrap();
    let run = |args: &[&str]| {
        let mut cmd = ns.command(&ns.cli, &load_bin());
        cmd.args(["--stack", "xdp", "--conns", "10", "--progress", "off"])
            .args(args);
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (code, err) = run(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--iface"), "{err}");
    let (code, err) = run(&["--iface", "wsbtc-c0", "--server-mac", "zz:zz"]);
    assert_eq!(code, Some(2), "a usage error: {err}");
    assert!(err.contains("not a MAC address"), "{err}");
    let (code, err) = run(&["--iface", "nope0", "--hold", "1s"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no such interface"), "{err}");
    let (code, err) = run(&["--iface", "wsbtc-c0", "--procs", "3"]);
    assert_eq!(code, Some(2), "a usage error: {err}");
    assert!(err.contains("one process"), "{err}");
    // Nobody listens: every connection is refused, and the program is detached afterwards.
    let (code, _) = run(&["--iface", "wsbtc-c0", "--hold", "1s", "--connect-timeout", "2s"]);
    assert_eq!(code, Some(3), "not every connection was established");
    let (_, link) = run_in(&ns.cli, "ip", &["link", "show", "dev", "wsbtc-c0"]);
    assert!(!link.contains("prog/xdp"), "{link}");
}

/// Two receive queues, two worker processes: connections spread over both, a broadcast reaches
/// all of them, a targeted push finds its device on whichever worker holds it, and a device that
/// reconnects is replaced across workers (4002 to the older connection).
#[test]
fn two_queues_two_workers() {
    if !privileged("two_queues_two_workers") {
        return;
    }
    let dir = scratch("xdp-queues");
    let ns = Netns::setup_with_queues("wsbtd", 2, 2).unwrap();
    let mut args = xdp_server_args(&ns);
    args.extend(["--queues", "2", "--idle-timeout", "0"].iter().map(|s| s.to_string()));
    let _server = start_server(&ns, &strs(&args), &dir.join("server.log"));
    let json = dir.join("load.json");
    let load = start_load(
        &ns,
        &[
            "--conns",
            "2000",
            "--rate",
            "0",
            "--ids",
            "--src",
            "198.19.0.1-198.19.0.2",
            "--hold",
            "60s",
            "--expect-broadcasts",
            "1",
        ],
        &json,
    );
    wait_conns(&ns, 2000, Duration::from_secs(60));
    let stats = admin_json(&ns, "/stats");
    assert_eq!(stats["workers"], 2, "{stats}");
    let per: Vec<u64> = stats["per_worker"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["core"]["connections"].as_u64().unwrap())
        .collect();
    assert_eq!(per.iter().sum::<u64>(), 2000);
    assert!(per.iter().all(|&n| n > 0), "both queues carry connections: {per:?}");
    for w in stats["per_worker"].as_array().unwrap() {
        assert_eq!(
            w["xdp"]["stack"]["rx_no_connection"], 0,
            "no segment reached the wrong worker: {w}"
        );
    }
    assert_eq!(admin_post(&ns, "/push?id=dev-1234", b"to one")["queued"], true);
    // dev-5 connects again (a plain socket from the client namespace): the older connection, on
    // whichever worker, is closed with 4002.
    let cli = ns.cli.clone();
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let newer = std::thread::spawn(move || {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(format!("/var/run/netns/{cli}")).unwrap();
        // SAFETY: setns on an fd we own, for this thread only.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let mut s = std::net::TcpStream::connect(SERVER).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /ws?id=dev-5 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
        let mut head = [0u8; 129];
        s.read_exact(&mut head).unwrap();
        assert!(head.starts_with(b"HTTP/1.1 101 "));
        hold_rx.recv().unwrap();
    });
    let replaced = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        (admin_json(&ns, "/stats")["devices_replaced"] == 1).then_some(())
    });
    assert!(replaced.is_some(), "{}", admin_json(&ns, "/stats"));
    assert_eq!(admin_post(&ns, "/broadcast", b"to all")["websockets"], 2000);
    let summary = finish_load(load, &json, Duration::from_secs(60));
    hold_tx.send(()).unwrap();
    newer.join().unwrap();
    assert_eq!(summary["established"], 2000, "{summary}");
    assert_eq!(summary["counters"]["broadcasts"], 1999, "{summary}");
    assert_eq!(summary["counters"]["closed_by_server"], serde_json::json!({"4002": 1}));
    assert_eq!(summary["targeted_devices"], serde_json::json!(["dev-1234"]));
}

/// A program `testbed/attach.sh` pinned is adopted, not replaced, and left attached at exit for
/// `detach.sh` to remove.
#[test]
fn the_program_attach_sh_pinned_is_adopted_and_left_attached() {
    if !privileged("the_program_attach_sh_pinned_is_adopted_and_left_attached") {
        return;
    }
    let dir = scratch("xdp-adopt");
    let ns = Netns::setup("wsbte", 1).unwrap();
    let root = testkit::repo_root().unwrap();
    let script = |name: &str| {
        let mut cmd = std::process::Command::new("bash");
        cmd.arg(root.join("testbed").join(name)).args(["--prefix", "wsbte"]);
        output_of(cmd)
    };
    let (ok, out) = script("attach.sh");
    assert!(ok, "{out}");
    let attached = || run_in(&ns.srv, "ip", &["link", "show", "dev", "wsbte-s0"]).1;
    let before = attached();
    let mut server = start_server(&ns, &strs(&xdp_server_args(&ns)), &dir.join("server.log"));
    let (_, curl) = curl_upgrade(&ns);
    assert!(curl.starts_with("HTTP/1.1 101 "), "{curl}");
    drop_guard(&mut server);
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap();
    assert!(log.contains("adopted from its pin"), "{log}");
    assert!(!log.contains("XDP steering detached"), "{log}");
    assert_eq!(attached(), before, "the pinned program is still the one attached");
    let (ok, out) = script("detach.sh");
    assert!(ok, "{out}");
    assert!(!attached().contains("prog/xdp"));
}

/// The program as Debian's `xdp-loader` (libxdp) loads it, from the file `xdp-steer object`
/// writes: libxdp reads its run config (priority 20, chained on XDP_PASS); a server with
/// `--xdp-mode external` uses it and leaves it attached; `xdp-loader unload` removes it. Where the
/// kernel lets libxdp's dispatcher run (extension programs), another program (xdp-filter, denying
/// a UDP port) runs beside it on the same interface and both work.
#[test]
fn a_program_xdp_loader_attached_is_used_and_left_to_it() {
    if !privileged("a_program_xdp_loader_attached_is_used_and_left_to_it") {
        return;
    }
    let dir = scratch("xdp-loader");
    let ns = Netns::setup("wsbtx", 1).unwrap();
    let dev = "wsbtx-s0";
    let object = dir.join("wsb_steer.o");
    let xdp_steer = testkit::sibling_binary("xdp-steer").unwrap();
    let (ok, out) = output_of({
        let mut c = std::process::Command::new(&xdp_steer);
        c.args(["object", "-o"]).arg(&object);
        c
    });
    assert!(ok, "{out}");
    // libxdp pins its dispatcher on a bpffs; `ip netns exec` gives the namespace a /sys without one.
    let bpffs = dir.join("bpffs");
    std::fs::create_dir_all(&bpffs).unwrap();
    let (ok, out) = output_of({
        let mut c = std::process::Command::new("mount");
        c.args(["-t", "bpf", "bpf"]).arg(&bpffs);
        c
    });
    assert!(ok, "{out}");
    let _unmount = Unmount(bpffs.clone());
    let libxdp_env = format!("LIBXDP_BPFFS={}", bpffs.display());
    let with_env = |tool: &str, args: &[&str]| {
        let mut all = vec![libxdp_env.as_str(), tool];
        all.extend_from_slice(args);
        run_in(&ns.srv, "env", &all)
    };
    let loader = |args: &[&str]| with_env("xdp-loader", args);
    let (ok, out) = loader(&["load", "-v", "-m", "native", dev, object.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("Run prio: 20. Chain call actions: XDP_PASS"), "{out}");
    let dispatcher = !out.contains("Falling back to loading single prog without dispatcher");
    let (_, status) = loader(&["status", dev]);
    assert!(status.contains("wsb_steer"), "{status}");

    // Beside it, where libxdp can build its dispatcher: xdp-filter drops UDP to port 9.
    if dispatcher {
        let (ok, out) = with_env("xdp-filter", &["load", "-m", "native", "-f", "udp", dev]);
        assert!(ok, "{out}");
        let (ok, out) = with_env("xdp-filter", &["port", "9", "-p", "udp"]);
        assert!(ok, "{out}");
    } else {
        // Said as a skip (counted by testbed/run-tests.sh), straight to stderr so it is seen.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            "SKIP a_program_xdp_loader_attached_is_used_and_left_to_it (a second program beside it): \
             this kernel refuses extension (freplace) programs, so libxdp loads ours without its \
             dispatcher and no other program can share the interface; ours is checked alone\n"
                .as_bytes(),
        );
    }

    // Without --xdp-mode external the server does not take over the loader's program.
    let mut cmd = ns.command(&ns.srv, &server_bin());
    cmd.args(strs(&xdp_server_args(&ns)))
        .args(["--admin", "127.0.0.1:9002"]);
    let (ok, out) = output_of(cmd);
    assert!(!ok && out.contains("--xdp-mode external"), "{out}");
    assert!(loader(&["status", dev]).1.contains("wsb_steer"), "still the loader's");

    let mut args = xdp_server_args(&ns);
    args.extend(["--xdp-mode".to_string(), "external".to_string()]);
    let mut server = start_server(&ns, &strs(&args), &dir.join("server.log"));
    let (_, curl) = curl_upgrade(&ns);
    assert!(curl.starts_with("HTTP/1.1 101 "), "{curl}");
    if dispatcher {
        let got = udp_arrives(&ns, 9);
        assert!(!got, "xdp-filter lets UDP to port 9 through");
        assert!(
            udp_arrives(&ns, 10),
            "UDP to port 10 is not xdp-filter's and must arrive"
        );
    }
    drop_guard(&mut server);
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap();
    assert!(log.contains("attached by another loader"), "{log}");
    assert!(!log.contains("XDP steering detached"), "{log}");
    let (_, after) = loader(&["status", dev]);
    assert!(
        after.contains("wsb_steer"),
        "the server left the program to its loader: {after}"
    );
    let (ok, out) = loader(&["unload", "--all", dev]);
    assert!(ok, "{out}");
    assert!(!loader(&["status", dev]).1.contains("wsb_steer"));

    // Nothing of ours attached: a refusal that says so, not a server that steers nothing.
    let mut cmd = ns.command(&ns.srv, &server_bin());
    cmd.args(strs(&args)).args(["--admin", "127.0.0.1:9002"]);
    let (ok, out) = output_of(cmd);
    assert!(!ok, "{out}");
    assert!(out.contains("no steering program is attached on wsbtx-s0"), "{out}");
}

/// Unmounts a test's bpffs when dropped.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Whether a UDP datagram from the client namespace reaches a socket on `port` in the server's.
fn udp_arrives(ns: &Netns, port: u16) -> bool {
    let to: std::net::SocketAddr = format!("198.18.0.1:{port}").parse().unwrap();
    let socket = testkit::in_ns(&ns.srv, move || std::net::UdpSocket::bind(to).unwrap());
    socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    testkit::in_ns(&ns.cli, move || {
        let out = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..3 {
            let _ = out.send_to(b"hello", to);
        }
    });
    let mut buf = [0u8; 16];
    socket.recv_from(&mut buf).is_ok()
}

/// 2,000 userspace-stack clients get broadcasts of 300 B, 4 KiB and 60 KiB through the xdp
/// server's 256-byte send buffers, every byte, nobody closed.
#[test]
fn broadcasts_of_300_b_to_60_kib_reach_two_thousand_connections_on_xdp() {
    if !privileged("broadcasts_of_300_b_to_60_kib_reach_two_thousand_connections_on_xdp") {
        return;
    }
    messages::large_broadcasts_reach_everyone(
        "wsbtk",
        &["--stack", "xdp", "--iface", "wsbtk-s0", "--max-conns", "4000"],
        messages::Clients::Xdp,
    );
}

/// The same with Linux TCP clients, whose windows are larger than the server's buffers.
#[test]
fn broadcasts_of_300_b_to_60_kib_reach_kernel_clients_of_the_xdp_server() {
    if !privileged("broadcasts_of_300_b_to_60_kib_reach_kernel_clients_of_the_xdp_server") {
        return;
    }
    messages::large_broadcasts_reach_everyone(
        "wsbtl",
        &["--stack", "xdp", "--iface", "wsbtl-s0", "--max-conns", "4000"],
        messages::Clients::Kernel,
    );
}

/// Python's `websockets` receives a 60 KiB broadcast and a 60 KiB targeted push from the xdp
/// server.
#[test]
fn python_websockets_receives_60_kib_messages_from_the_xdp_server() {
    if !privileged("python_websockets_receives_60_kib_messages_from_the_xdp_server") {
        return;
    }
    messages::a_standard_client_receives_60_kib_messages("wsbtm", &["--stack", "xdp", "--iface", "wsbtm-s0"]);
}

/// 50 clients that never read are closed as slow readers by the xdp server; 1,000 readers get
/// all 20 broadcasts.
#[test]
fn never_reading_clients_are_closed_by_the_xdp_server() {
    if !privileged("never_reading_clients_are_closed_by_the_xdp_server") {
        return;
    }
    messages::never_readers_are_closed_and_nobody_else_waits(
        "wsbtn",
        &["--stack", "xdp", "--iface", "wsbtn-s0", "--max-conns", "4000"],
        messages::Clients::Xdp,
    );
}

/// 20,000 spoofed SYN/s for 20 s at 80% of --max-conns: everyone held gets a broadcast, 500
/// newcomers get in (on SYN cookies past the half-open pool), memory stays.
#[test]
fn a_syn_flood_near_capacity_stops_no_one() {
    if !privileged("a_syn_flood_near_capacity_stops_no_one") {
        return;
    }
    attacks::syn_flood_stops_no_one(
        "wsbtp",
        &["--stack", "xdp", "--iface", "wsbtp-s0"],
        messages::Clients::Xdp,
    );
}

/// 5,000 Linux TCP clients behind 5% loss, 1 ms delay and 10% reordering each way: every
/// handshake completes, every connection gets all three broadcasts.
#[test]
fn every_broadcast_arrives_through_loss_delay_and_reordering() {
    if !privileged("every_broadcast_arrives_through_loss_delay_and_reordering") {
        return;
    }
    impairment::every_broadcast_arrives_through_loss("wsbtr", &["--stack", "xdp", "--iface", "wsbtr-s0"]);
}

/// `--max-conns-per-source`: one address gets its share and resets past it; others are unaffected.
#[test]
fn one_address_holds_at_most_max_conns_per_source() {
    if !privileged("one_address_holds_at_most_max_conns_per_source") {
        return;
    }
    attacks::one_address_holds_at_most_its_share("wsbtv", &["--stack", "xdp", "--iface", "wsbtv-s0"]);
}

/// Churn at capacity: rounds of 2,500 against --max-conns 3000, back to back, all accepted.
#[test]
fn churn_at_capacity_is_accepted_round_after_round() {
    if !privileged("churn_at_capacity_is_accepted_round_after_round") {
        return;
    }
    attacks::churn_at_capacity_is_accepted_round_after_round("wsbtx", &["--stack", "xdp", "--iface", "wsbtx-s0"]);
}

/// With --device-key-file, only a device with its token gets its id: a hijack gets 401 and the
/// holder keeps its pushes.
#[test]
fn only_a_device_with_its_token_gets_its_id() {
    if !privileged("only_a_device_with_its_token_gets_its_id") {
        return;
    }
    trust::only_a_device_with_its_token_gets_its_id(
        "wsbtz",
        &["--stack", "xdp", "--iface", "wsbtz-s0"],
        messages::Clients::Xdp,
    );
}

/// Headless Chromium: a WebSocket with a token in a subprotocol (its long upgrade request through
/// a spill buffer), a push, a broadcast, a fetch long-poll.
#[test]
fn a_real_browser_connects_receives_and_long_polls() {
    if !privileged("a_real_browser_connects_receives_and_long_polls") {
        return;
    }
    browser::a_real_browser("wsbbx", "xdp", &["--stack", "xdp", "--iface", "wsbbx-s0"]);
}

/// SIGTERM drains 10,000 connections of the xdp server at --drain-rate 2000/s: /readyz 503 at
/// once, new clients refused, 1001 closes spread over ~5 s, then a clean exit.
#[test]
fn sigterm_drains_the_xdp_server_at_the_drain_rate() {
    if !privileged("sigterm_drains_the_xdp_server_at_the_drain_rate") {
        return;
    }
    scenarios::drain_on_sigterm(
        "wsbtdx",
        &["--stack", "xdp", "--iface", "wsbtdx-s0", "--max-conns", "12000"],
        // Linux TCP clients: curl's refused upgrade shares their namespace.
        messages::Clients::Kernel,
    );
}

/// Least privilege: the xdp server runs as `nobody` holding only CAP_NET_ADMIN, CAP_NET_RAW,
/// CAP_IPC_LOCK, CAP_BPF and CAP_PERFMON (setpriv, ambient), serves a WebSocket and detaches on
/// SIGTERM; with one of them missing it does not start and names it.
#[test]
fn the_xdp_server_runs_unprivileged_with_only_its_capabilities() {
    if !privileged("the_xdp_server_runs_unprivileged_with_only_its_capabilities") {
        return;
    }
    let ns = Netns::setup("wsbtcap", 1).unwrap();
    let dir = scratch("caps");
    let as_nobody = |caps: &str| {
        let mut cmd = ns.command(&ns.srv, std::path::Path::new("setpriv"));
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(format!("--inh-caps=-all,{caps}"))
            .arg(format!("--ambient-caps=-all,{caps}"))
            .arg(format!("--bounding-set=-all,{caps}"))
            .arg(server_bin())
            .args([
                "--stack",
                "xdp",
                "--iface",
                "wsbtcap-s0",
                "--listen",
                SERVER,
                "--admin",
                ADMIN,
            ])
            .args(["--insecure-ids", "--push-interval", "0", "--max-conns", "1000"]);
        cmd
    };
    let all = "+net_admin,+net_raw,+ipc_lock,+bpf,+perfmon";
    // One missing: a clear refusal naming it.
    let (ok, text) = output_of(as_nobody("+net_admin,+ipc_lock,+bpf,+perfmon"));
    assert!(!ok && text.contains("missing: CAP_NET_RAW"), "{text}");

    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let mut cmd = as_nobody(all);
    cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
    let mut server = testkit::ChildGuard::spawn("ws-server as nobody", cmd)
        .unwrap()
        .with_log(&dir.join("server.log"));
    let ready = testkit::wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        testkit::http::http_in_netns(&ns.srv, "GET", admin(), "/readyz", b"")
            .ok()
            .filter(|(s, _)| *s == 200)
    });
    assert!(ready.is_some(), "the unprivileged server became ready");
    let (_, upgrade) = curl_upgrade(&ns);
    assert!(upgrade.starts_with("HTTP/1.1 101"), "{upgrade}");
    let stats = admin_json(&ns, "/stats");
    assert_eq!(stats["stack"], "xdp");
    let status = server.stop(Duration::from_secs(10)).expect("it stops on SIGTERM");
    assert!(status.success(), "{status}");
    let (_, link) = run_in(&ns.srv, "ip", &["link", "show", "wsbtcap-s0"]);
    assert!(!link.contains("xdp"), "the program was detached: {link}");
}

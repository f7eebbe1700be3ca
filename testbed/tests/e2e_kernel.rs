//! End to end, as root, in network namespaces: ws-server --stack kernel with the ws-load load
//! generator, a standard WebSocket client library (Python `websockets`), curl, and hostile bytes
//! (the last two are `common/scenarios.rs`, shared with the xdp stack's tests).
//! Each test has its own namespace prefix, so they can run in parallel.

mod common;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use testkit::http::http_in_netns;
use testkit::Netns;

/// 2,400 connections from 4 client addresses: every connection gets both broadcasts, a targeted
/// push reaches exactly its device, and /stats agrees with what the clients saw.
#[test]
fn broadcast_targeted_push_and_stats_agree() {
    if !privileged("broadcast_targeted_push_and_stats_agree") {
        return;
    }
    let dir = scratch("bcast");
    let ns = Netns::setup("wsbt1", 4).unwrap();
    let _server = start_server(&ns, &["--workers", "2", "--idle-timeout", "0"], &dir.join("server.log"));
    let json = dir.join("load.json");
    let load = start_load(
        &ns,
        &[
            "--conns",
            "2400",
            "--rate",
            "0",
            "--ids",
            "--src",
            "198.19.0.1-198.19.0.4",
            "--hold",
            "60s",
            "--expect-broadcasts",
            "2",
        ],
        &json,
    );
    wait_conns(&ns, 2400, Duration::from_secs(60));

    // The server sees connections from all four client addresses.
    let (ok, ss) = run_in(&ns.srv, "ss", &["-Htn", "state", "established", "( sport = :8080 )"]);
    assert!(ok, "{ss}");
    let peers: BTreeSet<String> = ss
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter_map(|p| p.rsplit_once(':').map(|(a, _)| a.to_string()))
        .collect();
    assert_eq!(peers.len(), 4, "{peers:?}");

    let pushed = admin_post(&ns, "/push?id=dev-17", b"only for dev-17");
    assert_eq!(pushed["queued"], true);
    let missed = admin_post(&ns, "/push?id=nobody", b"x");
    assert_eq!(missed["queued"], false);
    assert_eq!(missed["result"], "not connected", "{missed}");
    assert!(missed["seq"].as_u64() > pushed["seq"].as_u64(), "{pushed} {missed}");
    for _ in 0..2 {
        let b = admin_post(&ns, "/broadcast", b"");
        assert_eq!(b["websockets"], 2400, "{b}");
        assert_eq!(b["queued"], 2400, "{b}");
    }
    let summary = finish_load(load, &json, Duration::from_secs(60));
    assert_eq!(summary["established"], 2400, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    let c = &summary["counters"];
    assert_eq!(c["broadcasts"], 4800, "every connection got both broadcasts: {summary}");
    assert_eq!(c["targeted"], 1, "{summary}");
    assert_eq!(summary["targeted_devices"], serde_json::json!(["dev-17"]));
    assert_eq!(summary["push_latency"]["count"], 4801);

    // The clients closed with a close handshake; the server's counters agree.
    wait_conns(&ns, 0, Duration::from_secs(20));
    let stats = admin_json(&ns, "/stats");
    assert_eq!(stats["accepted"], 2400, "{stats}");
    assert_eq!(stats["upgrades"], 2400);
    assert_eq!(stats["closed"], 2400);
    assert_eq!(stats["closed_by_client"], 2400);
    assert_eq!(stats["messages_out"], 4801);
    assert_eq!(stats["pushes_queued"], 1);
    assert_eq!(stats["broadcasts"], 2);
    assert_eq!(stats["devices"], 0, "device ids are released on close");
    assert_eq!(stats["workers"], 2);
    let per_worker: u64 = stats["per_worker"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["core"]["accepted"].as_u64().unwrap())
        .sum();
    assert_eq!(per_worker, 2400);
    assert_eq!(
        admin_json(&ns, "/conns"),
        serde_json::json!({"closed": 2400, "conns": 0})
    );
    let (status, metrics) = http_in_netns(&ns.srv, "GET", admin(), "/metrics", b"").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("wsserver_accepted_total 2400\n"), "{metrics}");
    promtool_check(&metrics);
}

/// Silent connections expire after the idle timeout; heartbeating ones do not.
#[test]
fn silent_connections_expire_heartbeating_ones_stay() {
    if !privileged("silent_connections_expire_heartbeating_ones_stay") {
        return;
    }
    let dir = scratch("expiry");
    let ns = Netns::setup("wsbt2", 2).unwrap();
    let _server = start_server(
        &ns,
        &["--workers", "2", "--idle-timeout", "3s"],
        &dir.join("server.log"),
    );
    let (ja, jb) = (dir.join("pinging.json"), dir.join("silent.json"));
    let pinging = start_load(
        &ns,
        &[
            "--conns",
            "300",
            "--src",
            "198.19.0.1",
            "--ping-interval",
            "1s",
            "--hold",
            "8s",
        ],
        &ja,
    );
    let silent = start_load(&ns, &["--conns", "300", "--src", "198.19.0.2", "--hold", "8s"], &jb);
    let a = finish_load(pinging, &ja, Duration::from_secs(60));
    let b = finish_load(silent, &jb, Duration::from_secs(60));
    assert_eq!(a["established"], 300, "{a}");
    assert_eq!(b["established"], 300, "{b}");
    assert_eq!(
        a["counters"]["closed_by_server"],
        serde_json::json!({}),
        "no pinging connection expired: {a}"
    );
    assert!(a["counters"]["pongs"].as_u64().unwrap() >= 300, "{a}");
    assert_eq!(
        b["counters"]["closed_by_server"],
        serde_json::json!({"4001": 300}),
        "every silent one got 4001: {b}"
    );
    let stats = admin_json(&ns, "/stats");
    assert_eq!(stats["expired"], 300, "{stats}");
    assert_eq!(stats["expiry"]["expired"], 300);
    assert!(
        stats["expiry"]["removal_capacity_per_s"].as_f64().unwrap() > 0.0,
        "{stats}"
    );
    wait_conns(&ns, 0, Duration::from_secs(20));
}

/// Long-poll holds are answered (by timeout, or early by a push), and data frames are echoed.
#[test]
fn long_poll_and_echo_rounds() {
    if !privileged("long_poll_and_echo_rounds") {
        return;
    }
    scenarios::long_poll_and_echo("wsbt4", &["--workers", "1"]);
}

/// A standard client library (Python `websockets`) connects, pings, receives a targeted push and a
/// broadcast, and closes cleanly; curl's upgrade request gets 101.
#[test]
fn standard_clients_python_websockets_and_curl() {
    if !privileged("standard_clients_python_websockets_and_curl") {
        return;
    }
    scenarios::standard_clients("wsbt3", &["--workers", "2"]);
}

/// Hostile bytes get a clean close with the right status or close code, and the server keeps
/// serving everyone else.
#[test]
fn hostile_bytes_get_a_clean_close_and_the_server_keeps_serving() {
    if !privileged("hostile_bytes_get_a_clean_close_and_the_server_keeps_serving") {
        return;
    }
    scenarios::hostile_bytes("wsbt5", &["--workers", "1"]);
}

/// Bad flags and busy ports give a clear error and a non-zero exit, not a panic.
#[test]
fn clear_errors_for_bad_flags_and_busy_ports() {
    if !privileged("clear_errors_for_bad_flags_and_busy_ports") {
        return;
    }
    let dir = scratch("errors");
    let ns = Netns::setup("wsbt6", 1).unwrap();
    let server = server_bin();
    let run = |args: &[&str]| {
        let out = ns
            .command(&ns.srv, &server)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (code, err) = run(&["--listen", "198.18.0.1:8080", "--max-frame", "lots"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a size"), "{err}");
    let (code, err) = run(&["--listen", "10.9.9.9:8080"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is not an address of this host"), "{err}");
    let (code, err) = run(&["--stack", "xdp"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--iface"), "xdp needs an interface: {err}");
    let (code, err) = run(&["--stack", "xdp", "--iface", "nope0"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no such interface"), "{err}");
    let (code, err) = run(&["--stack", "xdp", "--iface", "wsbt6-s0", "--listen", "10.9.9.9:8080"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is not an address of --iface"), "{err}");
    // Options that contradict each other are usage errors (2), like clap's own.
    let (code, err) = run(&["--stack", "xdp", "--iface", "wsbt6-s0", "--workers", "2"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--queues"), "{err}");
    let (code, err) = run(&["--stack", "xdp", "--iface", "wsbt6-s0", "--tx-buf", "100"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--tx-buf"), "{err}");
    let (_, link) = run_in(&ns.srv, "ip", &["link", "show", "dev", "wsbt6-s0"]);
    assert!(
        !link.contains("prog/xdp"),
        "a refused start leaves nothing attached: {link}"
    );
    let (code, err) = run(&["--max-conns", "9000000", "--workers", "2"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("needs at least"), "{err}");

    let _first = start_server(&ns, &["--workers", "1"], &dir.join("first.log"));
    let (code, err) = run(&["--listen", "198.18.0.1:8080", "--admin", "127.0.0.1:9002"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("already in use"), "{err}");
    let (code, err) = run(&["--listen", "198.18.0.1:8081", "--admin", ADMIN]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("admin endpoint") && err.contains("already in use"),
        "{err}"
    );
}

/// Nobody listens: every connection of the kernel-stack client is refused, the summary counts
/// each one by cause, and ws-load exits 3 (not every connection established), not 2 (usage).
#[test]
fn a_run_with_refused_connections_exits_3_and_counts_them() {
    if !privileged("a_run_with_refused_connections_exits_3_and_counts_them") {
        return;
    }
    let dir = scratch("refused");
    let ns = Netns::setup("wsbtg", 1).unwrap();
    let json = dir.join("load.json");
    let args = [
        "--conns",
        "50",
        "--src",
        "198.19.0.1",
        "--hold",
        "1s",
        "--connect-timeout",
        "2s",
    ];
    let mut load = start_load(&ns, &args, &json);
    let status = load.wait_timeout(Duration::from_secs(60)).expect("ws-load finishes");
    assert_eq!(status.code(), Some(3), "{status:?}");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(summary["established"], 0, "{summary}");
    assert_eq!(summary["failed"], 50, "{summary}");
    assert_eq!(
        summary["counters"]["failed"],
        serde_json::json!({"refused": 50}),
        "{summary}"
    );
    assert_eq!(summary["complete"], true, "{summary}");
}

/// `/stats` of a server with many workers (over tiny_http's 32 KiB chunking threshold) comes with a
/// Content-Length, so plain clients (and ws-bench) read it whole (found at 1M connections).
#[test]
fn stats_of_many_workers_is_one_plain_body() {
    if !privileged("stats_of_many_workers_is_one_plain_body") {
        return;
    }
    let dir = scratch("many-workers");
    let ns = Netns::setup("wsbtb", 1).unwrap();
    let _server = start_server(&ns, &["--workers", "40"], &dir.join("server.log"));
    let (status, body) = http_in_netns(&ns.srv, "GET", admin(), "/stats", b"").unwrap();
    assert_eq!(status, 200);
    assert!(body.len() > 32 * 1024, "{} bytes", body.len());
    let stats: serde_json::Value = serde_json::from_str(&body).expect("one JSON body, not chunks");
    assert_eq!(stats["workers"], 40);
}

/// 2,000 connections get broadcasts of 300 B, 4 KiB and 60 KiB, every byte, nobody closed.
#[test]
fn broadcasts_of_300_b_to_60_kib_reach_two_thousand_connections() {
    if !privileged("broadcasts_of_300_b_to_60_kib_reach_two_thousand_connections") {
        return;
    }
    messages::large_broadcasts_reach_everyone("wsbth", &["--workers", "2"], messages::Clients::Kernel);
}

/// Python's `websockets` receives a 60 KiB broadcast and a 60 KiB targeted push.
#[test]
fn python_websockets_receives_60_kib_messages() {
    if !privileged("python_websockets_receives_60_kib_messages") {
        return;
    }
    messages::a_standard_client_receives_60_kib_messages("wsbti", &["--workers", "1"]);
}

/// 50 clients that never read are closed as slow readers; 1,000 readers get all 20 broadcasts.
#[test]
fn never_reading_clients_are_closed_and_the_readers_get_everything() {
    if !privileged("never_reading_clients_are_closed_and_the_readers_get_everything") {
        return;
    }
    messages::never_readers_are_closed_and_nobody_else_waits("wsbtj", &["--workers", "1"], messages::Clients::Kernel);
}

/// 20,000 spoofed SYN/s for 20 s at 80% of --max-conns: everyone held gets a broadcast, 500
/// newcomers get in (Linux's SYN cookies on), memory stays.
#[test]
fn a_syn_flood_near_capacity_stops_no_one() {
    if !privileged("a_syn_flood_near_capacity_stops_no_one") {
        return;
    }
    attacks::syn_flood_stops_no_one("wsbto", &["--workers", "2"], messages::Clients::Kernel);
}

/// 5,000 Linux TCP clients behind 5% loss, 1 ms delay and 10% reordering each way: every
/// handshake completes, every connection gets all three broadcasts.
#[test]
fn every_broadcast_arrives_through_loss_delay_and_reordering() {
    if !privileged("every_broadcast_arrives_through_loss_delay_and_reordering") {
        return;
    }
    impairment::every_broadcast_arrives_through_loss("wsbtq", &["--workers", "1"]);
}

/// `--max-conns-per-source`: one address gets its share and resets past it; others are unaffected.
#[test]
fn one_address_holds_at_most_max_conns_per_source() {
    if !privileged("one_address_holds_at_most_max_conns_per_source") {
        return;
    }
    attacks::one_address_holds_at_most_its_share("wsbtu", &["--workers", "1"]);
}

/// Churn at capacity: rounds of 2,500 against --max-conns 3000, back to back, all accepted.
#[test]
fn churn_at_capacity_is_accepted_round_after_round() {
    if !privileged("churn_at_capacity_is_accepted_round_after_round") {
        return;
    }
    attacks::churn_at_capacity_is_accepted_round_after_round("wsbtw", &["--workers", "1"]);
}

/// With --device-key-file, only a device with its token gets its id: a hijack gets 401 and the
/// holder keeps its pushes.
#[test]
fn only_a_device_with_its_token_gets_its_id() {
    if !privileged("only_a_device_with_its_token_gets_its_id") {
        return;
    }
    trust::only_a_device_with_its_token_gets_its_id("wsbty", &["--workers", "2"], messages::Clients::Kernel);
}

/// Headless Chromium: a WebSocket with a token in a subprotocol, a push, a broadcast, a fetch
/// long-poll.
#[test]
fn a_real_browser_connects_receives_and_long_polls() {
    if !privileged("a_real_browser_connects_receives_and_long_polls") {
        return;
    }
    browser::a_real_browser("wsbbk", "kernel", &["--workers", "1"]);
}

/// SIGTERM drains 10,000 connections at --drain-rate 2000/s: /readyz 503 at once, new clients
/// refused, 1001 closes spread over ~5 s, then a clean exit.
#[test]
fn sigterm_drains_at_the_drain_rate() {
    if !privileged("sigterm_drains_at_the_drain_rate") {
        return;
    }
    scenarios::drain_on_sigterm("wsbtd", &["--workers", "2"], messages::Clients::Kernel);
}

/// A second SIGTERM ends a slow drain at once, every client still getting 1001.
#[test]
fn a_second_signal_ends_the_drain() {
    if !privileged("a_second_signal_ends_the_drain") {
        return;
    }
    scenarios::second_signal_ends_the_drain("wsbtsig", &["--workers", "2"]);
}

/// ws-load speaks TLS (`--tls-ca`) through haproxy terminating it in front of the kernel server:
/// 2,000 connections get broadcasts of 300 B, 4 KiB and 60 KiB, every byte checked; a load
/// generator trusting another authority gets no connection, each failure counted as a TLS error.
#[test]
fn tls_through_haproxy_every_byte_and_a_wrong_authority_is_refused() {
    if !privileged("tls_through_haproxy_every_byte_and_a_wrong_authority_is_refused") {
        return;
    }
    const CONNS: u64 = 2000;
    const SIZES: [usize; 3] = [300, 4096, 60 * 1024];
    let dir = scratch("tls-proxy");
    let ns = Netns::setup("wsbtt", 1).unwrap();
    let _server = start_server(&ns, &["--stack", "kernel"], &dir.join("server.log"));
    let tls = dir.join("tls");
    let _proxy = testbed::bench::tls_proxy::start_in(&ns, &tls, CONNS, SERVER).unwrap();
    let load = |ca: &std::path::Path, conns: u64, json: &std::path::Path| {
        let mut cmd = ns.command(&ns.cli, &load_bin());
        cmd.args(["--server", testbed::bench::tls_proxy::LISTEN, "--tls-ca"])
            .arg(ca)
            .args(["--conns", &conns.to_string(), "--rate", "0", "--hold", "120s"])
            .args(["--expect-broadcasts", "3", "--progress", "off", "--json"])
            .arg(json)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        testkit::ChildGuard::spawn("ws-load", cmd).unwrap()
    };
    // haproxy takes a moment to listen; a client refused meanwhile would count as failed.
    testkit::wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        testkit::in_ns(&ns.cli, || {
            std::net::TcpStream::connect(testbed::bench::tls_proxy::LISTEN).ok()
        })
    })
    .expect("haproxy listens");

    let json = dir.join("load.json");
    let running = load(&tls.join("ca.pem"), CONNS, &json);
    wait_conns(&ns, CONNS, Duration::from_secs(60));
    for len in SIZES {
        let b = admin_post(&ns, "/broadcast", testbed::load::pattern::text(len).as_bytes());
        assert_eq!(b["queued"], CONNS, "{len} B: {b}");
    }
    let summary = finish_load(running, &json, Duration::from_secs(150));
    let c = &summary["counters"];
    assert_eq!(summary["established"], CONNS, "{summary}");
    assert_eq!(c["broadcasts"], 3 * CONNS, "{summary}");
    assert_eq!(c["corrupt"], 0, "{summary}");
    let per_conn: u64 = SIZES
        .iter()
        .map(|&s| (s - testbed::load::pattern::PREFIX.len()) as u64)
        .sum();
    assert_eq!(c["checked_bytes"], CONNS * per_conn, "every byte checked: {summary}");

    // The server's own certificate is no authority: every handshake fails, as a TLS error.
    let json = dir.join("wrong-ca.json");
    let summary = finish_load(load(&tls.join("server.pem"), 20, &json), &json, Duration::from_secs(60));
    assert_eq!(summary["established"], 0, "{summary}");
    assert_eq!(
        summary["counters"]["failed"],
        serde_json::json!({"tls_error_in_handshake": 20}),
        "{summary}"
    );
}

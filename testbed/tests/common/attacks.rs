//! Attacks end to end, on both stacks (`e2e_kernel.rs`, `e2e_xdp.rs`): a SYN flood from spoofed
//! addresses that never answer, while the server is near its capacity.

use std::net::SocketAddrV4;
use std::time::Duration;

use testbed::flood::{self, SynFlood};
use testkit::{in_ns, spawn_in_ns, Netns};

use super::*;

/// A server at `--max-conns 5000` holding 4,000 connections; 20,000 spoofed SYN/s for 20 s from
/// addresses that never answer. During the flood all 4,000 (`clients`) receive a broadcast and 500
/// new connections (Linux TCP clients) succeed; afterwards the server's memory is what it was. The kernel stack runs
/// with Linux's own defence on (`tcp_syncookies=1` in its namespace); the xdp stack with ours.
pub fn syn_flood_stops_no_one(prefix: &str, server_args: &[&str], clients: messages::Clients) {
    let dir = scratch(&format!("flood-{prefix}"));
    let ns = Netns::setup(prefix, 2).unwrap();
    let (ok, out) = run_in(&ns.srv, "sysctl", &["-w", "net.ipv4.tcp_syncookies=1"]);
    assert!(ok, "{out}");
    let mut args = server_args.to_vec();
    args.extend(["--max-conns", "5000"]);
    let _server = start_server(&ns, &args, &dir.join("server.log"));
    let mut held_args = messages::load_args(&ns, clients);
    held_args.extend(
        [
            "--src",
            "198.19.0.1",
            "--conns",
            "4000",
            "--rate",
            "0",
            "--hold",
            "90s",
            "--expect-broadcasts",
            "1",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let held_json = dir.join("held.json");
    let held = start_load(&ns, &strs(&held_args), &held_json);
    wait_conns(&ns, 4000, Duration::from_secs(60));
    let rss_before = admin_json(&ns, "/stats")["memory"]["rss_bytes"].as_u64().unwrap();

    let target: SocketAddrV4 = SERVER.parse().unwrap();
    let (cli_dev, srv_dev) = (ns.client_dev(), ns.dev());
    let src_mac = in_ns(&ns.cli, move || host::iface::mac_of(&cli_dev)).unwrap();
    let dst_mac = in_ns(&ns.srv, move || host::iface::mac_of(&srv_dev)).unwrap();
    let plan = SynFlood {
        dev: ns.client_dev(),
        src_mac,
        dst_mac,
        target: (*target.ip(), target.port()),
        spoofed_prefix: [198, 19, 200],
        rate: 20_000,
        duration: Duration::from_secs(20),
    };
    let flooding = spawn_in_ns(&ns.cli, move || flood::run(&plan));
    std::thread::sleep(Duration::from_secs(3));

    // During the flood: a broadcast to everyone held, and 500 newcomers.
    let b = admin_post(&ns, "/broadcast", b"during the flood");
    assert_eq!(b["queued"], 4000, "{b}");
    // Newcomers on the Linux TCP stack from another address (one AF_XDP client per queue).
    let new_args = [
        "--src",
        "198.19.0.2",
        "--conns",
        "500",
        "--rate",
        "0",
        "--hold",
        "3s",
        "--connect-timeout",
        "10s",
    ];
    let new_json = dir.join("newcomers.json");
    let newcomers = start_load(&ns, &new_args, &new_json);
    let summary = finish_load(newcomers, &new_json, Duration::from_secs(60));
    assert_eq!(summary["established"], 500, "newcomers during the flood: {summary}");
    assert_eq!(summary["failed"], 0, "{summary}");

    let sent = flooding.join().expect("flood thread").expect("flood");
    assert!(sent >= 300_000, "the flood sent only {sent} SYNs");
    let stats = admin_json(&ns, "/stats");
    let held_summary = finish_load(held, &held_json, Duration::from_secs(120));
    let c = &held_summary["counters"];
    assert_eq!(
        c["broadcasts"], 4000,
        "every held connection got the broadcast: {held_summary}"
    );
    assert_eq!(c["closed_by_server"], serde_json::json!({}), "{held_summary}");
    let rss_after = stats["memory"]["rss_bytes"].as_u64().unwrap();
    assert!(
        rss_after < rss_before + (16 << 20),
        "server memory grew from {rss_before} to {rss_after} bytes during the flood"
    );
    if stats["stack"] == "xdp" {
        let stack = &stats["per_worker"][0]["xdp"]["stack"];
        let cookies = stack["syn_cookies_sent"].as_u64().unwrap();
        assert!(cookies > 100_000, "the flood was answered with cookies: {stack}");
        assert!(stack["half_open"].as_u64().unwrap() <= 5000 / 16, "{stack}");
        eprintln!("xdp flood: {sent} SYNs sent, {cookies} cookies, stack {stack}");
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `--max-conns-per-source 100`: 150 connections from one address get 100 places and 50 resets
/// (at the SYN on xdp: "connection refused"; right after the handshake on kernel sockets:
/// "connection reset"), counted; another address is not affected; places come back on close.
pub fn one_address_holds_at_most_its_share(prefix: &str, server_args: &[&str]) {
    let dir = scratch(&format!("per-source-{prefix}"));
    let ns = Netns::setup(prefix, 2).unwrap();
    let mut args = server_args.to_vec();
    args.extend(["--max-conns-per-source", "100"]);
    let _server = start_server(&ns, &args, &dir.join("server.log"));
    let greedy_json = dir.join("greedy.json");
    let greedy = start_load(
        &ns,
        &["--src", "198.19.0.1", "--conns", "150", "--rate", "0", "--hold", "4s"],
        &greedy_json,
    );
    wait_conns(&ns, 100, Duration::from_secs(30));
    let other_json = dir.join("other.json");
    let other = start_load(
        &ns,
        &["--src", "198.19.0.2", "--conns", "100", "--rate", "0", "--hold", "1s"],
        &other_json,
    );
    let o = finish_load(other, &other_json, Duration::from_secs(60));
    assert_eq!(
        (o["established"].as_u64(), o["failed"].as_u64()),
        (Some(100), Some(0)),
        "{o}"
    );
    let g = finish_load(greedy, &greedy_json, Duration::from_secs(60));
    assert_eq!(
        (g["established"].as_u64(), g["failed"].as_u64()),
        (Some(100), Some(50)),
        "{g}"
    );
    let causes = g["counters"]["failed"].as_object().expect("failure causes");
    assert!(
        causes.keys().all(|k| k == "refused" || k.starts_with("reset")),
        "refused with a reset, nothing else: {g}"
    );
    let stats = admin_json(&ns, "/stats");
    assert_eq!(stats["refused_per_source"], 50, "{stats}");
    // Every place is back: the same address gets 100 again.
    wait_conns(&ns, 0, Duration::from_secs(30));
    let again = start_load(
        &ns,
        &["--src", "198.19.0.1", "--conns", "100", "--rate", "0", "--hold", "1s"],
        &greedy_json,
    );
    let a = finish_load(again, &greedy_json, Duration::from_secs(60));
    assert_eq!(a["established"], 100, "{a}");
}

/// Churn at capacity: `--max-conns 3000`, five rounds of 2,500 connections that open, hold 2 s
/// and close, back to back. Every round is accepted in full (on xdp the TIME-WAITs the closes
/// leave hold no slot), and the server's memory does not grow round over round.
pub fn churn_at_capacity_is_accepted_round_after_round(prefix: &str, server_args: &[&str]) {
    let dir = scratch(&format!("churn-{prefix}"));
    let ns = Netns::setup(prefix, 1).unwrap();
    let mut args = server_args.to_vec();
    args.extend(["--max-conns", "3000"]);
    let _server = start_server(&ns, &args, &dir.join("server.log"));
    let mut rss = Vec::new();
    for round in 0..5 {
        let json = dir.join(format!("round-{round}.json"));
        let load = start_load(&ns, &["--conns", "2500", "--rate", "0", "--hold", "2s"], &json);
        let s = finish_load(load, &json, Duration::from_secs(60));
        assert_eq!(
            (s["established"].as_u64(), s["failed"].as_u64()),
            (Some(2500), Some(0)),
            "round {round}: {s}"
        );
        wait_conns(&ns, 0, Duration::from_secs(30));
        rss.push(admin_json(&ns, "/stats")["memory"]["rss_bytes"].as_u64().unwrap());
    }
    let stats = admin_json(&ns, "/stats");
    assert_eq!(stats["refused"], 0, "{stats}");
    assert!(
        rss[4] <= rss[1] + (4 << 20),
        "server memory grew round over round: {rss:?}"
    );
    if stats["stack"] == "xdp" {
        let stack = &stats["per_worker"][0]["xdp"]["stack"];
        assert!(stack["time_wait_parked"].as_u64().unwrap() > 0, "{stack}");
        eprintln!("churn {prefix}: rss {rss:?}; stack {stack}");
    }
}

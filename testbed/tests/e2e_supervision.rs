//! End to end, as root, in network namespaces: a worker that is killed (kill -9) or hangs
//! (SIGSTOP) is restarted on its index while the other workers keep every connection, on both
//! stacks. Three workers (kernel: three SO_REUSEPORT listeners; xdp: three receive queues, one
//! AF_XDP socket each), 600 connections from the load generator.
//!
//! The clients ping every second: on the xdp stack a dead worker's connections die with its
//! process without a FIN or a reset (their TCP state was in it), and a client learns it at its
//! next segment (a reset, from the kernel while no socket serves the queue, then from the
//! restarted worker's stack, which knows no such connection). A client whose TCP backed off
//! while the worker was stopped (SIGSTOP) may send that segment only much later.

mod common;

use std::time::{Duration, Instant};

use common::*;
use testkit::{wait_for, ChildGuard, Netns};

/// A restarted worker must be serving again within this of its predecessor's death.
const RESTART_WITHIN: Duration = Duration::from_secs(2);
/// The hang timeout the servers here run with (`--worker-hang-timeout`).
const HANG_TIMEOUT: Duration = Duration::from_secs(2);

/// One worker in `/stats`: (pid, open connections, connections accepted).
fn worker_of(stats: &serde_json::Value, index: usize) -> Option<(u32, u64, u64)> {
    stats["per_worker"].as_array()?.iter().find_map(|w| {
        (w["index"].as_u64()? == index as u64).then(|| {
            Some((
                w["pid"].as_u64()? as u32,
                w["core"]["connections"].as_u64()?,
                w["core"]["accepted"].as_u64()?,
            ))
        })?
    })
}

/// The parent of process `pid`, from /proc.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": the command may hold spaces, so start after its ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Send `signal` to worker `pid`, which must be a child of our server (never anyone else's).
fn signal_worker(server: &ChildGuard, pid: u32, signal: i32) {
    assert_eq!(
        parent_of(pid),
        Some(server.pid()),
        "pid {pid} is one of our server's workers"
    );
    // SAFETY: kill on the pid of a live child of the server this test started (checked above).
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
}

/// Wait until worker `index` runs under a pid other than `old`: (its new pid, how long it took).
fn wait_replaced(ns: &Netns, index: usize, old: u32, since: Instant) -> (u32, Duration) {
    let replaced = wait_for(Duration::from_secs(15), Duration::from_millis(20), || {
        let stats = admin_json(ns, "/stats");
        worker_of(&stats, index)
            .filter(|&(pid, _, _)| pid != old)
            .map(|(pid, _, _)| (pid, since.elapsed()))
    });
    replaced.unwrap_or_else(|| panic!("worker {index} was not restarted: {}", admin_json(ns, "/stats")))
}

/// Connections the server closed, any cause, in a ws-load summary.
fn closed_by_server(summary: &serde_json::Value) -> u64 {
    summary["counters"]["closed_by_server"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(serde_json::Value::as_u64).sum())
}

/// How a stack's clients learn that their worker died.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DeadConnections {
    /// The kernel closes a dead process's sockets: every client is told at once.
    ClosedAtOnce,
    /// The connections' TCP state died with the process (xdp): a client learns it at its next
    /// segment, which may be late if its TCP backed off while the worker was stopped.
    ResetWhenTheClientSends,
}

/// ws-load's arguments: `conns` from `src`, pinging every second, holding until every open
/// connection got one broadcast (at most `hold`).
fn load_args<'a>(conns: &'a str, src: &'a str, hold: &'a str, ids: bool) -> Vec<&'a str> {
    let mut args = vec![
        "--conns",
        conns,
        "--rate",
        "0",
        "--src",
        src,
        "--hold",
        hold,
        "--ping-interval",
        "1s",
        "--expect-broadcasts",
        "1",
    ];
    if ids {
        args.push("--ids");
    }
    args
}

/// The whole scenario on one stack: kill -9 of worker 1 under load, then SIGSTOP of worker 2.
fn a_dead_or_hung_worker_is_restarted(ns: &Netns, server_args: &[&str], dir: &std::path::Path, dead: DeadConnections) {
    let mut args = vec!["--idle-timeout", "0", "--worker-hang-timeout", "2s"];
    args.extend(server_args);
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.2} s] {}: {what}", t0.elapsed().as_secs_f64(), ns.prefix);
    let server = start_server(ns, &args, &dir.join("server.log"));
    let json_a = dir.join("load-a.json");
    let load_a = start_load(ns, &load_args("600", "198.19.0.1-198.19.0.2", "60s", true), &json_a);
    wait_conns(ns, 600, Duration::from_secs(60));
    phase("600 connections");
    let stats = admin_json(ns, "/stats");
    assert_eq!(stats["workers"], 3, "{stats}");
    let (victim, n1, _) = worker_of(&stats, 1).expect("worker 1");
    assert!(n1 > 0, "worker 1 holds connections: {stats}");

    // kill -9: worker 1 is back within RESTART_WITHIN, the others keep every connection.
    let killed = Instant::now();
    signal_worker(&server, victim, libc::SIGKILL);
    let (new_pid, restart) = wait_replaced(ns, 1, victim, killed);
    eprintln!("kill -9 of worker 1 (pid {victim}, {n1} connections): pid {new_pid} serving after {restart:?}");
    assert!(restart <= RESTART_WITHIN, "restarted after {restart:?}");
    assert_eq!(parent_of(new_pid), Some(server.pid()));
    let stats = admin_json(ns, "/stats");
    assert_eq!(
        stats["worker_restarts"],
        serde_json::json!({"total": 1, "exited": 0, "signal": 1, "hung": 0}),
        "{stats}"
    );
    let record = &stats["restarts"][0];
    assert_eq!(record["worker"], 1, "{stats}");
    assert_eq!(record["pid"], victim, "{stats}");
    assert_eq!(record["reason"], "signal", "{stats}");
    assert_eq!(record["new_pid"], new_pid, "{stats}");
    assert!(record["status"].as_str().unwrap().contains("signal 9"), "{stats}");
    assert_eq!(stats["connections"], 600 - n1, "the other workers keep theirs: {stats}");
    assert_eq!(stats["workers_missing"], serde_json::json!([]), "{stats}");

    // The restarted worker accepts new connections at once.
    let json_b = dir.join("load-b.json");
    let load_b = start_load(ns, &load_args("300", "198.19.0.3", "60s", false), &json_b);
    let accepted = wait_for(Duration::from_secs(20), Duration::from_millis(20), || {
        worker_of(&admin_json(ns, "/stats"), 1)
            .filter(|&(_, _, accepted)| accepted > 0)
            .map(|_| killed.elapsed())
    });
    let accepted = accepted.expect("the restarted worker accepts connections");
    eprintln!("the restarted worker accepted its first connection {accepted:?} after the kill");
    assert!(accepted <= RESTART_WITHIN, "first accept {accepted:?} after the kill");
    wait_conns(ns, 900 - n1, Duration::from_secs(60));
    // Accepted is not yet upgraded: wait for every one's 101 before broadcasting.
    let upgraded = wait_for(Duration::from_secs(30), Duration::from_millis(50), || {
        (admin_json(ns, "/stats")["websockets"].as_u64() == Some(900 - n1)).then_some(())
    });
    assert!(upgraded.is_some(), "{}", admin_json(ns, "/stats"));
    phase("restarted; 300 more connections");

    // The next broadcast reaches every connection of the other workers, and the new ones.
    let b = admin_post(ns, "/broadcast", b"next");
    assert_eq!(b["websockets"], 900 - n1, "{b}");
    let a = finish_load(load_a, &json_a, Duration::from_secs(60));
    phase("load A done");
    assert_eq!(a["established"], 600, "{a}");
    // Each connection can have got at most this one broadcast (sent after the kill).
    assert_eq!(
        a["counters"]["broadcasts"],
        600 - n1,
        "every connection of the other workers got the next broadcast: {a}"
    );
    assert_eq!(
        closed_by_server(&a),
        n1,
        "only the dead worker's connections closed: {a}"
    );
    let b = finish_load(load_b, &json_b, Duration::from_secs(60));
    assert_eq!(b["established"], 300, "{b}");
    assert_eq!(b["counters"]["broadcasts"], 300, "{b}");
    assert_eq!(closed_by_server(&b), 0, "{b}");
    wait_conns(ns, 0, Duration::from_secs(30));

    // SIGSTOP: worker 2 stops answering pings; it is killed and restarted, and an admin call
    // waiting for it is answered without it.
    let json_c = dir.join("load-c.json");
    let load_c = start_load(ns, &load_args("300", "198.19.0.1-198.19.0.3", "10s", false), &json_c);
    wait_conns(ns, 300, Duration::from_secs(60));
    let (stopped, n2, _) = worker_of(&admin_json(ns, "/stats"), 2).expect("worker 2");
    assert!(n2 > 0, "worker 2 holds connections");
    let hung_at = Instant::now();
    signal_worker(&server, stopped, libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(200));
    // /stats asked while it is stopped: answered once it is found hung, without its share.
    let asked = Instant::now();
    let waiting = admin_json(ns, "/stats");
    let answered = asked.elapsed();
    assert!(
        answered <= HANG_TIMEOUT + Duration::from_secs(2),
        "/stats waited {answered:?} for a hung worker"
    );
    let (new_pid, restart) = wait_replaced(ns, 2, stopped, hung_at);
    eprintln!(
        "SIGSTOP of worker 2 (pid {stopped}, {n2} connections): /stats answered in {answered:?}, pid {new_pid} serving after {restart:?}"
    );
    assert_eq!(
        waiting["workers_missing"],
        serde_json::json!([2]),
        "the hung worker's share is missing: {waiting}"
    );
    assert!(
        restart <= HANG_TIMEOUT + Duration::from_secs(1) + RESTART_WITHIN,
        "{restart:?}"
    );
    let stats = admin_json(ns, "/stats");
    assert_eq!(
        stats["worker_restarts"],
        serde_json::json!({"total": 2, "exited": 0, "signal": 1, "hung": 1}),
        "{stats}"
    );
    assert_eq!(stats["restarts"][1]["reason"], "hung", "{stats}");
    assert_eq!(stats["restarts"][1]["pid"], stopped, "{stats}");
    assert_eq!(stats["connections"], 300 - n2, "{stats}");
    assert_eq!(admin_post(ns, "/broadcast", b"after the hang")["websockets"], 300 - n2);
    let c = finish_load(load_c, &json_c, Duration::from_secs(60));
    phase("load C done");
    assert_eq!(c["counters"]["broadcasts"], 300 - n2, "{c}");
    match dead {
        DeadConnections::ClosedAtOnce => assert_eq!(closed_by_server(&c), n2, "{c}"),
        // Those whose retransmission timer backed off past the hold end it open.
        DeadConnections::ResetWhenTheClientSends => assert!(closed_by_server(&c) <= n2, "{c}"),
    }

    let metrics = testkit::http::http_in_netns(&ns.srv, "GET", admin(), "/metrics", b"")
        .unwrap()
        .1;
    assert!(
        metrics.contains("wsserver_worker_restarts_total{reason=\"signal\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wsserver_worker_restarts_total{reason=\"hung\"} 1\n"),
        "{metrics}"
    );
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap();
    assert!(
        log.contains(&format!("worker 1 (pid {victim}) killed by signal 9 (SIGKILL)")),
        "{log}"
    );
    assert!(log.contains(&format!("worker 2 (pid {stopped}) is hung")), "{log}");
}

/// Kernel stack: three workers share the port (SO_REUSEPORT); a killed one binds its listener
/// again.
#[test]
fn kernel_a_killed_or_hung_worker_is_restarted_and_the_others_keep_their_connections() {
    if !privileged("kernel_a_killed_or_hung_worker_is_restarted_and_the_others_keep_their_connections") {
        return;
    }
    let dir = scratch("supervision-kernel");
    let ns = Netns::setup("wsbsk", 3).unwrap();
    a_dead_or_hung_worker_is_restarted(&ns, &["--workers", "3"], &dir, DeadConnections::ClosedAtOnce);
}

/// xdp stack: three receive queues, one worker and AF_XDP socket each; a killed one binds a new
/// socket to its queue and replaces its XSKMAP entry.
#[test]
fn xdp_a_killed_or_hung_worker_is_restarted_on_its_queue() {
    if !privileged("xdp_a_killed_or_hung_worker_is_restarted_on_its_queue") {
        return;
    }
    let dir = scratch("supervision-xdp");
    let ns = Netns::setup_with_queues("wsbsx", 3, 3).unwrap();
    a_dead_or_hung_worker_is_restarted(
        &ns,
        &[
            "--stack",
            "xdp",
            "--iface",
            "wsbsx-s0",
            "--queues",
            "3",
            "--max-conns",
            "6000",
        ],
        &dir,
        DeadConnections::ResetWhenTheClientSends,
    );
}

//! Worker supervision on loopback, without root (the end-to-end tests under load, on both
//! stacks, are `testbed/tests/e2e_supervision.rs`): a worker that exits by itself or is killed
//! is restarted and counted by reason; one that keeps dying stops the server with a clear error
//! after `--max-restarts`, the other worker stopped cleanly.

mod common;

use std::time::{Duration, Instant};

use common::{admin_json, start_server};
use testkit::wait_for;

/// Worker `index`'s pid in `/stats`.
fn pid_of(admin: std::net::SocketAddr, index: u64) -> Option<u32> {
    admin_json(admin, "/stats")["per_worker"]
        .as_array()?
        .iter()
        .find(|w| w["index"].as_u64() == Some(index))
        .and_then(|w| w["pid"].as_u64())
        .map(|p| p as u32)
}

/// The parent of process `pid`, from /proc.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Signal worker `pid`, a child of `server` (checked: never anyone else's process).
fn signal(server: u32, pid: u32, sig: i32) {
    assert_eq!(parent_of(pid), Some(server), "{pid} is a worker of our server");
    // SAFETY: kill on a live child of the server this test started (checked above).
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

/// Wait until worker `index` runs under a pid other than `old`.
fn replaced(admin: std::net::SocketAddr, index: u64, old: u32) -> u32 {
    wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        pid_of(admin, index).filter(|&p| p != old)
    })
    .unwrap_or_else(|| panic!("worker {index} was not restarted"))
}

#[test]
fn a_worker_that_exits_or_is_killed_is_restarted_and_one_that_keeps_dying_stops_the_server() {
    let mut server = start_server("restarts", &["--workers", "2", "--max-restarts", "2"]);
    let (admin, sup) = (server.admin, server.child.pid());

    // SIGTERM: the worker closes its connections and exits 0 by itself: "exited".
    let first = pid_of(admin, 0).expect("worker 0");
    signal(sup, first, libc::SIGTERM);
    let second = replaced(admin, 0, first);
    let stats = admin_json(admin, "/stats");
    assert_eq!(
        stats["worker_restarts"],
        serde_json::json!({"total": 1, "exited": 1, "signal": 0, "hung": 0}),
        "{stats}"
    );
    assert_eq!(stats["restarts"][0]["status"], "exited with status 0", "{stats}");
    let other = pid_of(admin, 1).expect("worker 1");

    // Killed again at once: restarted after a pause (250 ms).
    let killed = Instant::now();
    signal(sup, second, libc::SIGKILL);
    let third = replaced(admin, 0, second);
    let paused = killed.elapsed();
    assert!(
        paused >= Duration::from_millis(250),
        "no pause before a second restart: {paused:?}"
    );
    assert_eq!(admin_json(admin, "/stats")["worker_restarts"]["signal"], 1);
    assert_eq!(pid_of(admin, 1), Some(other), "worker 1 untouched");

    // A third death within the minute is one more than --max-restarts 2: the server stops.
    signal(sup, third, libc::SIGKILL);
    let status = server
        .child
        .wait_timeout(Duration::from_secs(15))
        .expect("the server stops");
    assert_eq!(status.code(), Some(1), "{status:?}");
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        log.contains(&format!(
            "worker 0 died 3 times within 60 s (last: pid {third} killed by signal 9 (SIGKILL)); stopping the server (--max-restarts 2)"
        )),
        "{log}"
    );
    assert!(
        log.contains("worker 1: stopped"),
        "the other worker stopped cleanly: {log}"
    );
    assert!(parent_of(other).is_none_or(|p| p != sup), "worker 1 is gone");
}

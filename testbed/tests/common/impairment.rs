//! A lossy, slow, reordering path end to end, on both stacks (`e2e_kernel.rs`, `e2e_xdp.rs`).
//! This kernel has no `sch_netem`: iptables hands the client's TCP with the server, both ways, to
//! our NFQUEUE loop (`testbed::impair`), which drops 5%, delays the rest 1 ms and holds 10% for
//! 3 ms more, so that later packets overtake them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use testbed::impair::{self, Impairment};
use testkit::spawn_in_ns;

use super::*;

/// 5,000 Linux TCP clients behind that path: every handshake completes and every connection
/// receives all three broadcasts. The delivery figures are printed for the notes (performance is
/// shown by benchmarks, not asserted here).
pub fn every_broadcast_arrives_through_loss(prefix: &str, server_args: &[&str]) {
    let dir = scratch(&format!("loss-{prefix}"));
    let ns = Netns::setup(prefix, 1).unwrap();
    // Under 5% loss on two cores shared with the other tests (the NFQUEUE loop is a thread of
    // this test), a request head can take longer than the default 10 s to get through: this test
    // is about delivery, not about the request timeout.
    let mut args = server_args.to_vec();
    args.extend(["--request-timeout", "60s"]);
    let _server = start_server(&ns, &args, &dir.join("server.log"));
    for rule in [["OUTPUT", "-d"], ["INPUT", "-s"]] {
        let args = [
            "-A",
            rule[0],
            "-p",
            "tcp",
            rule[1],
            "198.18.0.1",
            "-j",
            "NFQUEUE",
            "--queue-num",
            "7",
            "--queue-bypass",
        ];
        let (ok, out) = run_in(&ns.cli, "iptables", &args);
        assert!(ok, "iptables {args:?}: {out}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let plan = Impairment {
        queue: 7,
        loss: 0.05,
        delay: Duration::from_millis(1),
        reorder: 0.10,
        reorder_extra: Duration::from_millis(3),
        limit: Duration::from_secs(300),
    };
    let impairing = {
        let stop = Arc::clone(&stop);
        spawn_in_ns(&ns.cli, move || impair::run(&plan, stop))
    };
    let json = dir.join("load.json");
    let load = start_load(
        &ns,
        &[
            "--conns",
            "5000",
            "--rate",
            "0",
            "--connect-timeout",
            "60s",
            "--hold",
            "180s",
            "--expect-broadcasts",
            "3",
        ],
        &json,
    );
    wait_conns(&ns, 5000, Duration::from_secs(120));
    // Upgrade requests lost on the way take a retransmission to arrive.
    let upgraded = testkit::wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
        (admin_json(&ns, "/stats")["websockets"] == 5000).then_some(())
    });
    assert!(upgraded.is_some(), "not all upgraded: {}", admin_json(&ns, "/stats"));
    for i in 0..3 {
        let b = admin_post(&ns, "/broadcast", format!("through loss {i}").as_bytes());
        assert_eq!(b["queued"], 5000, "{b}");
        std::thread::sleep(Duration::from_secs(1));
    }
    let summary = finish_load(load, &json, Duration::from_secs(240));
    stop.store(true, Ordering::Relaxed);
    let done = impairing.join().expect("impairment thread").expect("impairment");
    let c = &summary["counters"];
    assert_eq!(summary["established"], 5000, "{summary}");
    assert_eq!(summary["failed"], 0, "no failed handshake: {summary}");
    assert_eq!(c["broadcasts"], 15_000, "every connection got all three: {summary}");
    assert_eq!(c["closed_by_server"], serde_json::json!({}), "{summary}");
    assert!(done.dropped * 40 > done.packets, "the path was lossy: {done:?}");
    assert!(done.reordered * 20 > done.packets, "and reordering: {done:?}");
    eprintln!(
        "impaired path {prefix}: {done:?}; push latency {}; connect latency {}",
        summary["push_latency"], summary["connect_latency"]
    );
}

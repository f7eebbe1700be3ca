//! ws-bench end to end, as root, at a small N: every server it can measure (ours on both stacks,
//! and the peers users would pick, each built from testbed/peers/ on first use) holds every
//! connection of the same load generator, echoes its data rounds and delivers every broadcast, and
//! the report says which load generator that was; the Linux-TCP client drives our servers too.

use std::path::Path;
use std::process::Command;

use testkit::privileged;

const N: u64 = 300;
const BROADCASTS: u64 = 2;

/// Run ws-bench (with data rounds: 100 bytes every 200 ms from every connection, for 2 s) and
/// read its JSON report.
fn bench(prefix: &str, stacks: &str, client: &str, out: &Path) -> serde_json::Value {
    let status = Command::new(env!("CARGO_BIN_EXE_ws-bench"))
        .args(["--conns", &N.to_string(), "--stacks", stacks, "--client", client])
        .args([
            "--rate",
            "2000",
            "--settle",
            "1s",
            "--broadcasts",
            &BROADCASTS.to_string(),
        ])
        .args(["--data-rounds", "100B/200ms", "--data-seconds", "2s"])
        .args(["--prefix", prefix, "--out"])
        .arg(out)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "ws-bench --stacks {stacks} --client {client}: {status}"
    );
    let report = std::fs::read_to_string(out.join(format!("bench-{N}.json"))).unwrap();
    serde_json::from_str(&report).unwrap()
}

/// Every server of the report held all N and delivered every broadcast whole.
fn check(report: &serde_json::Value, servers: &[&str], client: &str) {
    assert_eq!(report["client"], client);
    let results = report["results"].as_array().unwrap();
    let names: Vec<&str> = results.iter().map(|r| r["stack"].as_str().unwrap()).collect();
    assert_eq!(names, servers);
    // With xdp in it, the raw path was measured first (xdp-flood), to compare broadcasts with.
    if servers.contains(&"xdp") {
        let link = report["link_frames_per_s"].as_f64().unwrap_or(0.0);
        assert!(link > 10_000.0, "the raw link rate: {}", report["link_frames_per_s"]);
    }
    for r in results {
        let name = &r["stack"];
        assert_eq!(r["client"], client, "{name}");
        assert_eq!(r["held"], N, "{name}: {r}");
        assert_eq!(r["failed"], 0, "{name}: {r}");
        assert_eq!(r["deliveries_expected"], N * BROADCASTS, "{name}: {r}");
        assert_eq!(r["deliveries"], N * BROADCASTS, "{name}: {r}");
        assert_eq!(r["corrupt"], 0, "{name}: {r}");
        assert!(r["all_in_total_bytes_per_conn"].as_f64().unwrap() > 0.0, "{name}: {r}");
        // Every connection sent rounds for at least the 2 s window, and (but for the last
        // round in flight when the load stopped) got each one back.
        let rounds = &r["data_rounds"];
        let (sent, echoed) = (rounds["sent"].as_u64().unwrap(), rounds["echoed"].as_u64().unwrap());
        assert!(sent >= N * 10, "{name}: {rounds}");
        assert!(echoed + N >= sent && echoed <= sent, "{name}: {rounds}");
        assert!(rounds["echo_rtt"]["p50_ms"].as_f64().unwrap() > 0.0, "{name}: {rounds}");
    }
}

#[test]
fn every_server_takes_the_same_load_and_delivers_every_broadcast() {
    if !privileged("every_server_takes_the_same_load_and_delivers_every_broadcast") {
        return;
    }
    let out = std::env::temp_dir().join(format!("bench-servers-{}", std::process::id()));
    let servers = ["kernel", "xdp", "gorilla", "node-ws", "tokio-tungstenite"];
    let report = bench("wsbsrv", &servers.join(","), "xdp", &out);
    check(&report, &servers, "xdp");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_linux_tcp_client_drives_both_of_our_stacks() {
    if !privileged("the_linux_tcp_client_drives_both_of_our_stacks") {
        return;
    }
    let out = std::env::temp_dir().join(format!("bench-kclient-{}", std::process::id()));
    let report = bench("wsbkcl", "kernel,xdp", "kernel", &out);
    check(&report, &["kernel", "xdp"], "kernel");
    let _ = std::fs::remove_dir_all(&out);
}

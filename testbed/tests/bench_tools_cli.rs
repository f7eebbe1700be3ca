//! The benchmark tools run, refuse bad input with a reason, and their JSON adds up: stack-bench
//! (in memory) and xdp-flood (as root, in namespaces of its own).

use std::process::Command;

use testkit::privileged;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stack-bench"))
}

#[test]
fn mem_mode_writes_rows_whose_breakdown_adds_up() {
    let dir = std::env::temp_dir().join(format!("stack-bench-{}", std::process::id()));
    let json = dir.join("mem.json");
    let out = bench()
        .args(["mem", "--conns", "500,2000", "--sample", "200", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("where the bytes go at 2000 connections"), "{stdout}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        let n = row["conns"].as_u64().unwrap();
        let r = &row["resident"];
        let parts = [
            "socket_bytes",
            "arena_bytes",
            "table_bytes",
            "slot_bytes",
            "free_list_bytes",
            "wheel_bytes",
            "queue_bytes",
        ]
        .iter()
        .map(|k| r[k].as_u64().unwrap())
        .sum::<u64>();
        let per_conn = row["bytes_per_conn"].as_f64().unwrap();
        assert!((parts as f64 / n as f64 - per_conn).abs() < 1.0);
        // Every connection carried an exchange, then idled: its socket is resident, its buffer
        // pages have gone back to the kernel.
        assert!(per_conn >= 360.0, "{per_conn}");
        let arena = r["arena_bytes"].as_u64().unwrap();
        assert!(arena < n * 16, "buffers still resident after idling: {arena} B for {n}");
        assert!(row["sample_packets"].as_u64().unwrap() > 0);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let out = bench().args(["mem", "--conns", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("positive"));
    let out = bench().args(["mem", "--rx-buf", "100"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rx-buf"));
    let out = bench().args(["veth", "--wave", "0"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "checked before anything starts, root or not"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_xdp-flood"))
        .args(["--frames", "1000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--frames"));
}

/// The flood benchmark's own accounting holds at a small size: every frame it sent was
/// redirected by XDP, and every redirected frame was received or counted as dropped by AF_XDP.
#[test]
fn flood_tool_accounts_for_every_frame() {
    if !privileged("flood_tool_accounts_for_every_frame") {
        return;
    }
    let json = std::env::temp_dir().join(format!("xdp-flood-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_xdp-flood"))
        .args(["--packets", "20000", "--prefix", "wsbx4", "--seconds", "30", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["sent"], 20000, "{r}");
    let redirected = r["xdp_counters"]["redirected"].as_u64().unwrap();
    let received = r["received"].as_u64().unwrap();
    let dropped = r["af_xdp"]["rx_dropped"].as_u64().unwrap();
    assert!(redirected <= 20000 && redirected > 0, "{r}");
    assert_eq!(received + dropped, redirected, "{r}");
    assert_eq!(r["xdp_counters"]["no_socket"], 0);
    assert!(
        !std::path::Path::new("/var/run/netns/wsbx4-srv").exists(),
        "namespaces removed"
    );
}

/// ws-bench checks its whole command line before it starts anything: an unknown stack after a
/// known one is refused at once (it used to run the kernel stack first), with the usage status.
#[test]
fn ws_bench_refuses_a_bad_command_line_before_it_starts() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ws-bench"))
            .args(args)
            .args(["--out", "/nonexistent/never-written"])
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (code, err) = run(&["--stacks", "kernel,bogus"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("bogus") && err.contains("kernel") && err.contains("xdp"),
        "{err}"
    );
    let (code, err) = run(&["--conns", "0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--conns"), "{err}");
    let (code, err) = run(&["--broadcasts", "0"]);
    assert_eq!(code, Some(2), "{err}");
    // The TLS row needs the load generator that speaks TLS.
    let (code, err) = run(&["--stacks", "kernel,kernel-tls"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--client kernel"), "{err}");
    let help = Command::new(env!("CARGO_BIN_EXE_ws-bench"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("Exit status"), "{help}");
}

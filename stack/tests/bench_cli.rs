//! The benchmark binary runs, refuses bad input with a reason, and its JSON adds up.

use std::process::Command;

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
        // Every connection carried an exchange: its socket and both buffers are resident.
        assert!(per_conn >= 360.0 + 512.0, "{per_conn}");
        assert!(row["sample_packets"].as_u64().unwrap() > 0);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let out = bench().args(["mem", "--conns", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("positive"));
    let out = bench().args(["mem", "--rx-buf", "100"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rx-buf"));
}

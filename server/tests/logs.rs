//! `--log-format json`: every line the supervisor and its workers write is one JSON object with
//! the time, level, target, pid and message, a worker's lines its index, and a line's structured
//! fields as fields (numbers as numbers).

mod common;

use std::time::Duration;

use common::start_server;
use testkit::http::http;

#[test]
fn json_lines_carry_worker_event_and_counts() {
    let mut server = start_server("json-logs", &["--workers", "2", "--log-format", "json"]);
    let (status, _) = http("POST", server.admin, "/broadcast", b"hello").unwrap();
    assert_eq!(status, 200);
    let exit = server.child.stop(Duration::from_secs(10));
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
    let text = std::fs::read_to_string(&server.log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object: {l:?}: {e}")))
        .collect();
    assert!(lines.len() >= 5, "{text}");
    for l in &lines {
        for key in ["ts", "level", "target", "pid", "msg"] {
            assert!(l.get(key).is_some(), "{key} missing in {l}");
        }
    }
    for w in [0, 1] {
        assert!(lines.iter().any(|l| l["worker"] == w), "a line of worker {w}: {text}");
    }
    let broadcast = lines
        .iter()
        .find(|l| l["event"] == "broadcast")
        .unwrap_or_else(|| panic!("the broadcast's line: {text}"));
    assert_eq!(broadcast["websockets"], 0, "{broadcast}");
    assert!(broadcast["seq"].is_u64(), "{broadcast}");
}

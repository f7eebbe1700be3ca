//! The Autobahn|Testsuite fuzzing-client cases against our server, on both stacks
//! (`e2e_kernel.rs`, `e2e_xdp.rs`), run on Python 3 by the PyPI package `kosoku` in the client
//! namespace: every case outside permessage-deflate (12.*, 13.*) must end OK, NON-STRICT or
//! INFORMATIONAL. The HTML report is kept in `results/autobahn-<stack>/` of the repository.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use super::*;
use testkit::ChildGuard;

/// The outcomes that conform (Autobahn's report: a NON-STRICT case breaks a SHOULD, an
/// INFORMATIONAL one only records behaviour the specification leaves open).
const CONFORMING: [&str; 3] = ["OK", "NON-STRICT", "INFORMATIONAL"];

pub fn autobahn(prefix: &str, stack: &str, stack_args: &[&str]) {
    let ns = Netns::setup(prefix, 1).unwrap();
    let dir = scratch(&format!("autobahn-{prefix}"));
    // Echo, limits as large as the suite's largest message (16 MiB), no periodic push (one
    // inside case 9.7.6 would fail it) (the harness sets --push-interval 0), and a message log
    // that holds the echoes of the two cases running at once (-p 2), up to 16 MiB each, while
    // their clients take them.
    let mut args = stack_args.to_vec();
    args.extend([
        "--echo",
        "--max-frame",
        "16M",
        "--max-message",
        "16M",
        "--log-size",
        "256M",
    ]);
    let _server = start_server(&ns, &args, &dir.join("server.log"));

    let report = testkit::repo_root()
        .unwrap()
        .join("results")
        .join(format!("autobahn-{stack}"));
    let _ = std::fs::remove_dir_all(&report);
    let mut cmd = ns.command(&ns.cli, std::path::Path::new("kosoku"));
    cmd.arg(format!("ws://{SERVER}/ws"))
        .args(["-p", "2", "-x", "12.*", "-x", "13.*", "-o"])
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut kosoku = ChildGuard::spawn("kosoku", cmd).unwrap();
    // Bounded: the whole suite takes about a minute on either stack here.
    let status = kosoku.wait_timeout(Duration::from_secs(600));
    assert!(status.is_some(), "kosoku did not finish in 10 minutes");

    let index = std::fs::read_to_string(report.join("index.json"))
        .unwrap_or_else(|e| panic!("no report in {}: {e} (kosoku: {status:?})", report.display()));
    let index: BTreeMap<String, BTreeMap<String, serde_json::Value>> = serde_json::from_str(&index).unwrap();
    let cases: Vec<(&String, &serde_json::Value)> = index.values().flat_map(|agent| agent.iter()).collect();
    assert!(cases.len() > 250, "only {} cases ran", cases.len());
    let failed: Vec<String> = cases
        .iter()
        .filter(|(_, c)| {
            !CONFORMING.contains(&c["behavior"].as_str().unwrap_or_default())
                || !CONFORMING.contains(&c["behaviorClose"].as_str().unwrap_or_default())
        })
        .map(|(id, c)| format!("{id}: {} / {}", c["behavior"], c["behaviorClose"]))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} Autobahn cases did not conform on {stack} (report: {}): {failed:?}",
        failed.len(),
        cases.len(),
        report.join("index.html").display()
    );
    assert!(report.join("index.html").exists());
}

//! ws-load's command line: usage errors exit 2 with a reason before anything starts (no load
//! process, no traffic), and --help lists every exit status. Needs no privileges.

use std::process::{Command, Stdio};

fn ws_load(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ws-load"))
        .args(["--progress", "off"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn help_lists_every_exit_status() {
    let (code, help, _) = ws_load(&["--help"]);
    assert_eq!(code, Some(0));
    let (_, status) = help.split_once("Exit status:").expect("an exit status section");
    let codes: Vec<&str> = status.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(codes, ["0", "1", "2", "3", "4", "5"], "{status}");
    assert!(status.contains("2  usage error"), "{status}");
    assert!(status.contains("3  not every connection was established"), "{status}");
}

#[test]
fn usage_errors_exit_2_with_a_reason() {
    let cases: [(&[&str], &str); 12] = [
        (&["--bogus"], "unexpected argument"),
        (&["--conns", "lots"], "invalid value"),
        (&["--conns", "0"], "--conns must be between"),
        (&["--concurrency", "0"], "--concurrency"),
        (&["--path", "ws"], "--path must start with"),
        (
            &["--send-interval", "1s", "--payload", "10"],
            "--payload must be at least 21",
        ),
        (&["--src", "198.19.0.300"], "not an IPv4 address"),
        (&["--stack", "xdp", "--iface", "lo", "--procs", "3"], "one process"),
        (
            &["--stack", "xdp", "--iface", "lo", "--server-mac", "zz:zz"],
            "not a MAC address",
        ),
        (&["--tls-ca", "/nonexistent/ca.pem"], "--tls-ca /nonexistent/ca.pem"),
        // A file that holds no certificate.
        (
            &["--tls-ca", concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")],
            "no PEM certificate",
        ),
        (
            &[
                "--stack",
                "xdp",
                "--iface",
                "lo",
                "--tls-ca",
                concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
            ],
            "kernel stack only",
        ),
    ];
    for (args, reason) in cases {
        let (code, stdout, stderr) = ws_load(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(reason),
            "{args:?}: {stderr}"
        );
        assert!(stdout.is_empty(), "{args:?} started a run: {stdout}");
    }
}

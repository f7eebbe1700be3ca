//! Running as a service: readiness told to systemd (Type=notify: READY=1 once every worker is up,
//! STOPPING=1 when the drain starts), and `dist/ws-server.service` passes `systemd-analyze
//! verify` without a warning.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::free_port;
use testkit::http::http;
use testkit::ChildGuard;

#[test]
fn readiness_and_stopping_are_told_to_systemd() {
    let dir = std::env::temp_dir().join(format!("ws-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let listen = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ws-server"));
    cmd.args([
        "--listen",
        &listen,
        "--admin",
        &admin,
        "--workers",
        "2",
        "--push-interval",
        "0",
    ])
    .env("NOTIFY_SOCKET", &path)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut server = ChildGuard::spawn("ws-server", cmd).unwrap();
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification within 20 s");
    let ready = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(ready.contains("READY=1\n"), "{ready}");
    // Ready means serving: the admin answers and both workers run.
    let (status, body) = http("GET", admin.parse().unwrap(), "/readyz", b"").unwrap();
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    // SAFETY: kill on the pid of a child we started and have not reaped.
    unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGTERM) };
    let n = socket.recv(&mut buf).expect("STOPPING=1 on SIGTERM");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1\n"));
    let exit = server.wait_timeout(Duration::from_secs(20)).expect("it exits");
    assert!(exit.success(), "{exit}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let Ok(found) = Command::new("systemd-analyze").arg("--version").output() else {
        panic!("systemd-analyze is needed (Debian package systemd; testbed/install-deps.sh installs it)");
    };
    assert!(found.status.success());
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/ws-server.service")).unwrap();
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let unit = unit.replace("/usr/local/bin/ws-server", env!("CARGO_BIN_EXE_ws-server"));
    for needed in [
        "Type=notify",
        "AmbientCapabilities=",
        "LimitNOFILE=",
        "LimitMEMLOCK=",
        "DynamicUser=yes",
        "KillMode=mixed",
    ] {
        assert!(unit.contains(needed), "{needed}");
    }
    let dir = std::env::temp_dir().join(format!("ws-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ws-server.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

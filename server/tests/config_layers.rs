//! `ws-server check-config`: settings from flags, the environment and a TOML file, in that order
//! of precedence; unknown keys and bad values are usage errors (exit 2). Nothing is started.

use std::process::Command;

fn server() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ws-server"))
}

fn scratch_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ws-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn flags_beat_the_environment_which_beats_the_file() {
    let file = scratch_file(
        "layers.toml",
        "max_conns = 50000\nidle-timeout = \"120s\"\npush_interval = \"5s\"\nallowed_origin = [\"https://a.example\", \"https://b.example\"]\necho = true\n",
    );
    let out = server()
        .arg("check-config")
        .arg("--config")
        .arg(&file)
        .args(["--push-interval", "7s", "--listen", "127.0.0.1:18999"])
        .env("WS_IDLE_TIMEOUT", "90s")
        .env_remove("WS_MAX_CONNS")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for line in [
        "max-conns = 50000    # config file",
        "idle-timeout = 90s    # environment",
        "push-interval = 7s    # command line",
        "allowed-origin = https://a.example, https://b.example    # config file",
        "echo = true    # config file",
        "admin = 127.0.0.1:9001    # default",
        "# the configuration is valid (kernel stack, ",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
}

#[test]
fn unknown_keys_and_bad_values_are_usage_errors() {
    for (name, toml, says) in [
        ("unknown.toml", "max_con = 5\n", "unknown key 'max_con'"),
        ("switch.toml", "echo = \"yes\"\n", "is a switch"),
        ("value.toml", "max_conns = \"lots\"\n", "lots"),
        ("syntax.toml", "max_conns = \n", "not TOML"),
    ] {
        let file = scratch_file(name, toml);
        let out = server()
            .arg("check-config")
            .arg("--config")
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(says), "{name}: {err}");
    }
    let out = server().args(["check-config", "--max-frame", "10"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "the same checks as a start");
}

#[test]
fn the_version_names_the_commit() {
    let out = server().arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // Built from this git checkout: a 12-digit commit, not "unknown".
    let commit = text
        .split("(commit ")
        .nth(1)
        .map(|c| c.trim_end().trim_end_matches(')'));
    assert!(
        commit.is_some_and(|c| c.len() == 12 && c.bytes().all(|b| b.is_ascii_hexdigit())),
        "{text}"
    );
}

//! Device credentials end to end, on both stacks (`e2e_kernel.rs`, `e2e_xdp.rs`): with
//! `--device-key-file`, ws-load's devices (tokens minted per id) all get in; the same ids without a
//! token, with a forged one, or with another device's, get `401`, and the devices holding those
//! ids keep them and their pushes; a page of an origin not allowed gets `403`; standard clients
//! (Python) present tokens the ways browsers and devices do.

use std::time::Duration;

use super::*;

/// curl's upgrade for `/ws?<query>` with extra headers, from the client namespace's second
/// address (the first is the load's; an xdp client takes over its TCP): the status line.
fn upgrade_status(ns: &Netns, query: &str, headers: &[&str]) -> String {
    let (_, out) = curl_upgrade_with(ns, query, headers, Some("198.19.0.2"));
    out.lines().next().unwrap_or_default().trim().to_string()
}

pub fn only_a_device_with_its_token_gets_its_id(prefix: &str, server_args: &[&str], clients: messages::Clients) {
    let dir = scratch(&format!("trust-{prefix}"));
    let ns = Netns::setup(prefix, 2).unwrap();
    let key_file = dir.join("device.key");
    std::fs::write(&key_file, "a device key for the e2e test, 40 bytes!\n").unwrap();
    let key = b"a device key for the e2e test, 40 bytes!";
    let key_arg = key_file.to_str().unwrap();
    let mut args = server_args.to_vec();
    args.extend(["--device-key-file", key_arg, "--allowed-origin", "https://app.example"]);
    let _server = start_server(&ns, &args, &dir.join("server.log"));

    // 300 devices with their tokens.
    let mut load_args = messages::load_args(&ns, clients);
    load_args.extend(
        [
            "--src",
            "198.19.0.1",
            "--conns",
            "300",
            "--rate",
            "0",
            "--ids",
            "--device-key-file",
            key_arg,
            "--hold",
            "60s",
            "--expect-broadcasts",
            "2",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let json = dir.join("devices.json");
    let devices = start_load(&ns, &load_args.iter().map(String::as_str).collect::<Vec<_>>(), &json);
    wait_conns(&ns, 300, Duration::from_secs(60));
    assert_eq!(admin_json(&ns, "/stats")["devices"], 300);

    // The same ids without their credential: no token, a forged one, an expired one, another
    // device's; a valid one through each of the three places is accepted.
    let forged = testbed::load::client::mint(b"not the server's key, but long enough", "dev-7");
    let other = testbed::load::client::mint(key, "dev-8");
    let expired = testbed::load::client::mint_expiring(key, "dev-7", -60);
    let auth = format!("Authorization: Bearer {forged}");
    assert!(upgrade_status(&ns, "id=dev-7", &[]).contains(" 401 "));
    assert!(upgrade_status(&ns, &format!("id=dev-7&token={forged}"), &[]).contains(" 401 "));
    assert!(upgrade_status(&ns, "id=dev-7", &[&auth]).contains(" 401 "));
    assert!(upgrade_status(&ns, &format!("id=dev-7&token={other}"), &[]).contains(" 401 "));
    assert!(upgrade_status(&ns, &format!("id=dev-7&token={expired}"), &[]).contains(" 401 "));
    // The long-poll way to the same id (an <img src> anywhere could try it): 401 too.
    let (_, poll) = run_in(
        &ns.cli,
        "curl",
        &[
            "-si",
            "--max-time",
            "2",
            "--interface",
            "198.19.0.2",
            &format!("http://{SERVER}/poll?id=dev-7"),
        ],
    );
    assert!(poll.starts_with("HTTP/1.1 401 "), "{poll}");
    let stats = admin_json(&ns, "/stats");
    let counted = [
        "auth_missing",
        "auth_bad_signature",
        "auth_wrong_device",
        "auth_expired",
    ]
    .map(|c| stats[c].clone());
    assert_eq!(counted, [2, 2, 1, 1].map(serde_json::Value::from), "{stats}");
    assert_eq!(stats["devices_replaced"], 0, "nobody took an id: {stats}");
    let push = admin_post(&ns, "/push?id=dev-7", b"still dev-7's");
    assert_eq!(push["result"], "queued to a connected device", "{push}");
    // An anonymous listener needs no token; a fresh id with its token, in a subprotocol.
    assert!(upgrade_status(&ns, "x=1", &[]).contains(" 101 "));
    // A page of another origin may not connect (RFC 6455 §10.2); one of the allowed may.
    assert!(upgrade_status(&ns, "x=1", &["Origin: https://evil.example"]).contains(" 403 "));
    assert!(upgrade_status(&ns, "x=1", &["Origin: https://app.example"]).contains(" 101 "));
    assert_eq!(admin_json(&ns, "/stats")["origin_refused"], 1);
    let mine = testbed::load::client::mint(key, "new-1");
    let offered = format!("Sec-WebSocket-Protocol: push.v1, bearer.{mine}");
    let answer = upgrade_status(&ns, "id=new-1", &[&offered]);
    assert!(answer.contains(" 101 "), "{answer}");
    let bearer = format!("Authorization: Bearer {}", testbed::load::client::mint(key, "new-2"));
    let answer = upgrade_status(&ns, "id=new-2", &[&bearer]);
    assert!(answer.contains(" 101 "), "{answer}");

    standard_clients_with_tokens(&ns, key);

    let b = admin_post(&ns, "/broadcast", b"to everyone");
    assert!(b["queued"].as_u64().unwrap() >= 300, "{b}");
    let b = admin_post(&ns, "/broadcast", b"again");
    assert!(b["queued"].as_u64().unwrap() >= 300, "{b}");
    let summary = finish_load(devices, &json, Duration::from_secs(90));
    assert_eq!(summary["established"], 300, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["counters"]["broadcasts"], 600, "{summary}");
    assert_eq!(
        summary["counters"]["targeted"], 1,
        "dev-7's push reached its holder: {summary}"
    );
}

/// Python's `websockets` with a forged token (401), then with its token in a subprotocol (as a
/// browser must send it: answered with the other subprotocol offered) receives its push; a
/// long-poll for a device without a token gets 401, with its token in `Authorization` it is
/// held and answered by the device's push.
fn standard_clients_with_tokens(ns: &Netns, key: &[u8]) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/ws_token_check.py");
    let mint = |id| testbed::load::client::mint(key, id);
    let forged = testbed::load::client::mint(b"not the server's key, but long enough", "py-dev");
    let mut cmd = ns.command(&ns.cli, std::path::Path::new("python3"));
    cmd.arg(&script)
        .args([SERVER, "198.19.0.2", &mint("py-dev"), &mint("poll-dev"), &forged]);
    let (_py, mut next) = talk_to("python websockets client with tokens", cmd);
    assert_eq!(next(), "refused 401");
    assert_eq!(next(), "connected push.v1");
    assert_eq!(admin_post(ns, "/push?id=py-dev", b"for python")["queued"], true);
    let line = next();
    let push: serde_json::Value = serde_json::from_str(line.strip_prefix("message ").expect(&line)).unwrap();
    assert_eq!(push["data"], "for python", "{push}");
    assert_eq!(next(), "closed 1000");
    assert_eq!(next(), "poll-refused 401");
    assert_eq!(next(), "polling");
    wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        (admin_json(ns, "/stats")["polls_held"].as_u64() == Some(1)).then_some(())
    })
    .expect("the long-poll with its token is held");
    assert_eq!(admin_post(ns, "/push?id=poll-dev", b"for the poller")["queued"], true);
    let line = next();
    let body = line.strip_prefix("poll 200 ").expect(&line);
    let push: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(push["data"], "for the poller", "{push}");
}

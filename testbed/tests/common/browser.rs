//! A real browser against both stacks (`e2e_kernel.rs`, `e2e_xdp.rs`): the system's headless
//! Chromium, driven by playwright-core (`testbed/browser/check.js`) in the client namespace,
//! opens a WebSocket as a device (its token in a subprotocol), receives a targeted push and a
//! broadcast, long-polls with `fetch`; a screenshot is kept in `results/browser-<stack>.png`.
//! Chromium's upgrade request is longer than the 256-byte receive buffer: on xdp it goes through
//! a spill buffer, with a real client.

use std::process::Command;
use std::time::Duration;

use super::*;

pub fn a_real_browser(prefix: &str, stack: &str, stack_args: &[&str]) {
    let root = testkit::repo_root().unwrap();
    let browser_dir = root.join("testbed").join("browser");
    let setup = Command::new("bash").arg(browser_dir.join("setup.sh")).status().unwrap();
    assert!(setup.success(), "installing chromium and playwright-core failed");

    let ns = Netns::setup(prefix, 1).unwrap();
    let dir = scratch(&format!("browser-{prefix}"));
    let key: &[u8] = b"the browser test's device key, 32";
    std::fs::write(dir.join("device.key"), key).unwrap();
    let mut args = stack_args.to_vec();
    let key_file = dir.join("device.key");
    args.extend(["--device-key-file", key_file.to_str().unwrap()]);
    let _server = start_server(&ns, &args, &dir.join("server.log"));

    let shot = root.join("results").join(format!("browser-{stack}.png"));
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&shot);
    let mint = |id| testbed::load::client::mint(key, id);
    let mut cmd = ns.command(&ns.cli, std::path::Path::new("node"));
    cmd.arg(browser_dir.join("check.js"))
        .args([
            SERVER,
            "browser-ws",
            &mint("browser-ws"),
            "browser-poll",
            &mint("browser-poll"),
        ])
        .arg(&shot);
    let (mut browser, mut next) = talk_to("chromium via playwright-core", cmd);

    assert_eq!(
        next(),
        "connected push.v1",
        "the upgrade answers the subprotocol offered"
    );
    assert_eq!(
        admin_post(&ns, "/push?id=browser-ws", b"to the browser")["queued"],
        true
    );
    let line = next();
    let push: serde_json::Value = serde_json::from_str(line.strip_prefix("message ").expect(&line)).unwrap();
    assert_eq!(
        (&push["kind"], &push["data"]),
        (&"push".into(), &"to the browser".into()),
        "{push}"
    );
    let b = admin_post(&ns, "/broadcast", b"to every page");
    assert_eq!(b["websockets"], 1, "{b}");
    let line = next();
    let broadcast: serde_json::Value = serde_json::from_str(line.strip_prefix("message ").expect(&line)).unwrap();
    assert_eq!(broadcast["kind"], "broadcast", "{broadcast}");

    assert_eq!(next(), "polling");
    wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        (admin_json(&ns, "/stats")["polls_held"].as_u64() == Some(1)).then_some(())
    })
    .expect("the browser's long-poll is held");
    assert_eq!(
        admin_post(&ns, "/push?id=browser-poll", b"to the poller")["queued"],
        true
    );
    let line = next();
    let body = line.strip_prefix("poll 200 ").expect(&line);
    let push: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(push["data"], "to the poller", "{push}");
    assert_eq!(next(), format!("screenshot {}", shot.display()));
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 1000,
        "a screenshot of the page"
    );
    let status = browser.wait_timeout(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

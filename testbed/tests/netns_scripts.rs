//! The namespace scripts' own test (netns-scripts/selftest.sh), run as part of the test suite.

mod common;

#[test]
fn netns_scripts_selftest() {
    if !common::privileged("netns_scripts_selftest") {
        return;
    }
    let root = testbed::harness::repo_root().unwrap();
    let out = std::process::Command::new("bash")
        .arg(root.join("netns-scripts/selftest.sh"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "selftest failed:\n{text}");
    assert!(text.contains(" passed, 0 failed"), "{text}");
}

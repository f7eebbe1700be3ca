//! The namespace scripts' own test (netns-scripts/selftest.sh), run as part of the test suite.

mod common;

#[test]
fn netns_scripts_selftest() {
    if !common::privileged("netns_scripts_selftest") {
        return;
    }
    let root = testkit::repo_root().unwrap();
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(root.join("netns-scripts/selftest.sh"));
    let (ok, text) = common::output_of(cmd);
    assert!(ok, "selftest failed:\n{text}");
    assert!(text.contains(" passed, 0 failed"), "{text}");
}

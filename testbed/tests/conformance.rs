//! The Autobahn|Testsuite cases (kosoku) against both stacks, in a test binary of their own: the
//! xdp run keeps a core busy for a minute, and the other end-to-end tests (timeouts under loss,
//! supervision) should not share the machine with it.

mod common;

use common::*;

/// Every case outside permessage-deflate conforms on the kernel stack.
#[test]
fn autobahn_cases_conform_on_the_kernel_stack() {
    if !privileged("autobahn_cases_conform_on_the_kernel_stack") {
        return;
    }
    conformance::autobahn("wsbak", "kernel", &["--workers", "1"]);
}

/// The same on the xdp stack, the largest messages (16 MiB) through 256-byte buffers and a spill
/// buffer.
#[test]
fn autobahn_cases_conform_on_the_xdp_stack() {
    if !privileged("autobahn_cases_conform_on_the_xdp_stack") {
        return;
    }
    conformance::autobahn(
        "wsbax",
        "xdp",
        &["--stack", "xdp", "--iface", "wsbax-s0", "--spill-buffers", "16"],
    );
}

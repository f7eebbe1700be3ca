#!/usr/bin/env bash
# The full test suite: unit tests of every crate, and the privileged end-to-end tests (network
# namespaces, the kernel-stack server, the load generator, Python's websockets, curl, hostile
# bytes). As root the privileged tests run; otherwise they skip saying why, unless
# WSB_REQUIRE_PRIVILEGED=1 (CI sets it), which turns a skip into a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

bash testbed/install-deps.sh
# The end-to-end tests start the ws-server and ws-load binaries: build them first.
cargo build --workspace --bins --quiet
cargo test --workspace --no-fail-fast "$@"

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
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --all-targets --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?

# One closing line for the whole suite (cargo prints one per test binary).
passed=$(awk '/^test result:/ {s += $4} END {print s + 0}' "$log")
failed=$(awk '/^test result:/ {s += $6} END {print s + 0}' "$log")
skipped=$(grep -c '^SKIP ' "$log" || true)
echo
echo "tests: $((passed - skipped)) passed, $failed failed, $skipped skipped"
exit "$status"

#!/usr/bin/env bash
# The full test suite: unit tests of every crate, the property tests of every wire parser, the
# privileged end-to-end tests (network namespaces, XDP, the servers, the load generator, Python's
# websockets, curl, hostile bytes), a kernel-only build of the server (no clang, no libbpf), and
# the userspace stack's tests under AddressSanitizer. As root the privileged tests run; otherwise
# they skip saying why, unless WSB_REQUIRE_PRIVILEGED=1 (CI sets it), which turns a skip into a
# failure. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\nrun-tests: %s\n' "$*" >&2; }

bash testbed/install-deps.sh

say "a kernel-only build of ws-server (--no-default-features): no XDP program, so no clang or libbpf"
tree=$(cargo tree -p ws-server --no-default-features --edges normal,build --prefix none)
for crate in xdp-prog libbpf-sys libbpf-cargo smoltcp; do
    if grep -q "^$crate " <<<"$tree"; then
        say "FAILED: the kernel-only build depends on $crate"
        exit 1
    fi
done
cargo build -p ws-server --no-default-features --quiet
cargo test -p ws-server --no-default-features --quiet --lib >/dev/null

# The end-to-end tests start the ws-server and ws-load binaries: build them first.
say "building the workspace"
cargo build --workspace --bins --quiet
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
say "cargo test --workspace"
cargo test --workspace --all-targets --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?

# The stack's one unsafe trick (stack/src/stack/one_slot.rs) and everything built on it, under
# AddressSanitizer: stable rustc ships the runtime, and RUSTC_BOOTSTRAP lets it take the flag.
# Leak checking is off: the arena and the tests' socket buffers are leaked on purpose.
asan_rt=$(find "$(rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/lib" -name 'librustc-*_rt.asan.a' 2>/dev/null | head -n 1)
if [[ -n $asan_rt ]]; then
    say "the stack's tests under AddressSanitizer"
    if ! ASAN_OPTIONS=detect_leaks=0 RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=address" \
        cargo test -p stack --lib --test mem --target x86_64-unknown-linux-gnu \
        --target-dir target/asan --quiet 2>&1 | tee -a "$log"; then
        status=1
    fi
else
    say "not run: the stack's tests under AddressSanitizer (this toolchain ships no runtime for it)"
    echo "SKIP stack tests under AddressSanitizer: no AddressSanitizer runtime in this toolchain" >>"$log"
fi

# One closing line for the whole suite (cargo prints one per test binary).
passed=$(awk '/^test result:/ {s += $4} END {print s + 0}' "$log")
failed=$(awk '/^test result:/ {s += $6} END {print s + 0}' "$log")
skipped=$(grep -c '^SKIP ' "$log" || true)
echo
echo "tests: $passed passed, $failed failed; $skipped skipped in whole or in part:"
grep '^SKIP ' "$log" | sed 's/^/  /' || true
exit "$status"

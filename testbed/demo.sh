#!/usr/bin/env bash
# The demo: build in release mode and run the side-by-side benchmark, kernel stack and xdp stack,
# at N connections (default 100,000: under a minute after the build; DEMO_CONNS=1000000 for the
# headline run, a few minutes). Needs root (network namespaces, XDP).
# Extra arguments go to ws-bench, e.g. `bash testbed/demo.sh --rate 10000`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash testbed/install-deps.sh
cargo build --workspace --bins --release --quiet
exec ./target/release/ws-bench --conns "${DEMO_CONNS:-100000}" --out results "$@"

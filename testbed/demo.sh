#!/usr/bin/env bash
# The demo: build in release mode and run the side-by-side benchmark at N connections
# (default 20,000; DEMO_CONNS=100000 for the full size). Needs root (network namespaces).
# Extra arguments go to ws-bench, e.g. `bash testbed/demo.sh --rate 10000`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash testbed/install-deps.sh
cargo build --workspace --bins --release --quiet
exec ./target/release/ws-bench --conns "${DEMO_CONNS:-20000}" --out results "$@"

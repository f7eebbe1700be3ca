#!/usr/bin/env bash
# The demo: build in release mode and run the side-by-side benchmark, kernel stack and xdp stack,
# at N connections (default 100,000: under a minute after the build; DEMO_CONNS=1000000 for the
# headline run, a few minutes). Needs root (network namespaces, XDP).
# Extra arguments go to ws-bench, e.g. `bash testbed/demo.sh --rate 10000`, or
# `--stacks kernel,xdp,gorilla,node-ws,tokio-tungstenite` for the servers users would pick instead.
# The table, the JSON report and the charts (SVG, PNG) go to results/.
set -euo pipefail
cd "$(dirname "$0")/.."

bash testbed/install-deps.sh
cargo build --workspace --bins --release --quiet
# --conns given here wins over DEMO_CONNS (two --conns would make a sweep of both).
conns=(--conns "${DEMO_CONNS:-100000}")
for arg in "$@"; do
    case $arg in --conns | --conns=* | -n | -n*) conns=() ;; esac
done
exec ./target/release/ws-bench "${conns[@]}" --out results "$@"

#!/usr/bin/env bash
# Build the tokio-tungstenite peer (release) into the project's target directory; the last line
# of standard output is the program. Needs only cargo (crates from the registry).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target="$here/../../../target/peers/tokio-tungstenite"
echo "tokio-tungstenite peer: cargo build --release (tokio, tokio-tungstenite from the registry)" >&2
cargo build --release --quiet --manifest-path "$here/Cargo.toml" --target-dir "$target" >&2
echo "$target/release/peer-tokio-tungstenite"

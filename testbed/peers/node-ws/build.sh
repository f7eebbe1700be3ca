#!/usr/bin/env bash
# Install the Node.js + ws peer's one dependency (npm, pinned in package.json) and name the
# program: the last line of standard output. Needs node and npm (Debian's nodejs, npm; installed
# here if missing, which needs root).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "node-ws peer: installing nodejs and npm (apt)" >&2
    [[ $(id -u) -eq 0 ]] || { echo "node-ws peer: need root to install them" >&2; exit 1; }
    # A fresh machine may have no package lists yet: refresh them once if the install fails.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >&2 ||
        { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >&2; }
fi
if [[ ! -d $here/node_modules/ws ]]; then
    echo "node-ws peer: npm install (ws $(sed -n 's/.*"ws": "\(.*\)".*/\1/p' "$here/package.json"))" >&2
    (cd "$here" && npm install --no-audit --no-fund --silent >&2)
fi
chmod +x "$here/server.js"
echo "node-ws peer: node $(node --version)" >&2
echo "$here/server.js"

#!/usr/bin/env bash
# What the browser test needs: Debian's chromium and the npm package playwright-core (pinned in
# package.json), installed here when missing (apt needs root). Quiet when all is there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v chromium >/dev/null 2>&1; then
    echo "browser test: installing chromium (apt)" >&2
    [[ $(id -u) -eq 0 ]] || { echo "browser test: need root to install chromium" >&2; exit 1; }
    # A fresh machine may have no package lists yet: refresh them once if the install fails.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null ||
        { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
fi
if [[ ! -d $here/node_modules/playwright-core ]]; then
    echo "browser test: npm install playwright-core" >&2
    (cd "$here" && npm install --no-audit --no-fund --silent >&2)
fi

#!/usr/bin/env bash
# Build the Go + gorilla/websocket peer offline from Debian's packages (golang-go,
# golang-github-gorilla-websocket-dev; installed here if missing, which needs root) into the
# project's target directory; the last line of standard output is the program.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target="$here/../../../target/peers/gorilla"
gocode=/usr/share/gocode
if ! command -v go >/dev/null || [[ ! -d $gocode/src/github.com/gorilla/websocket ]]; then
    echo "gorilla peer: installing golang-go and golang-github-gorilla-websocket-dev (apt)" >&2
    [[ $(id -u) -eq 0 ]] || { echo "gorilla peer: need root to install them" >&2; exit 1; }
    # A fresh machine may have no package lists yet: refresh them once if the install fails.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go golang-github-gorilla-websocket-dev >&2 ||
        { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go golang-github-gorilla-websocket-dev >&2; }
fi
mkdir -p "$target"
echo "gorilla peer: go build ($(go version | cut -d' ' -f3), gorilla/websocket from $gocode, offline)" >&2
# GOPATH mode: the library comes from Debian's source tree; nothing is fetched.
GO111MODULE=off GOPATH=$gocode GOCACHE="$target/cache" GOFLAGS= \
    go build -o "$target/peer-gorilla" "$here/main.go" >&2
echo "$target/peer-gorilla"

#!/usr/bin/env bash
# Install what the tests and the demo need on a fresh Debian machine of this kind (idempotent,
# quick when everything is there). Needs root for apt-get; says what is missing otherwise.
set -euo pipefail

say() { printf 'install-deps: %s\n' "$*" >&2; }

# command -> Debian package
declare -A need=(
    [ip]=iproute2 [ss]=iproute2 [ethtool]=ethtool [curl]=curl [ping]=iputils-ping
    [ps]=procps [python3]=python3 [iptables]=iptables
)
# The XDP program (xdp-prog/) is compiled by clang; libbpf-sys builds libbpf from source.
need+=([clang]=clang [make]=make [pkg-config]=pkgconf)
# The cluster tests start a real NATS server (with JetStream) as the nodes' broker.
need+=([nats-server]=nats-server)
# The service tests check dist/ws-server.service with systemd-analyze verify.
need+=([systemd-analyze]=systemd [setpriv]=util-linux)
# The coexistence test loads the XDP program with libxdp's xdp-loader, beside xdp-filter.
need+=([xdp-loader]=xdp-tools)
# TLS in front of a server (a test, and ws-bench --stacks kernel-tls): haproxy, certificates.
need+=([haproxy]=haproxy [openssl]=openssl)
# file -> Debian package
declare -A headers=(
    [/usr/include/libelf.h]=libelf-dev [/usr/include/zlib.h]=zlib1g-dev
    [/usr/include/linux/bpf.h]=linux-libc-dev
    # ws-bench's charts: the font their text is measured and rendered with.
    [/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf]=fonts-dejavu-core
)
missing=()
for cmd in "${!need[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
for h in "${!headers[@]}"; do
    [[ -e $h ]] || missing+=("${headers[$h]}")
done
if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    if [[ $(id -u) -ne 0 ]]; then
        say "missing packages: ${missing[*]} (run as root, or: apt-get install ${missing[*]})"
        exit 1
    fi
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The standard-client test uses Python's `websockets` library.
if ! python3 -c 'import websockets' 2>/dev/null; then
    say "installing the Python 'websockets' package"
    if ! python3 -m pip install --quiet --disable-pip-version-check websockets 2>/dev/null; then
        [[ $(id -u) -eq 0 ]] || { say "need root to install python3-websockets"; exit 1; }
        apt-get install -y -qq python3-websockets >/dev/null
    fi
    python3 -c 'import websockets' || { say "could not install the Python websockets package"; exit 1; }
fi

# The metrics tests lint /metrics with Prometheus' promtool. Only that binary is taken from the
# Debian package (installing the package would start a Prometheus server).
if ! command -v promtool >/dev/null 2>&1; then
    say "installing promtool (from the Debian package prometheus, without the server)"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1) ||
        { apt-get update -qq >/dev/null && (cd "$tmp" && apt-get download prometheus >/dev/null); }
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
    install -m 0755 "$tmp/x/usr/bin/promtool" /usr/local/bin/promtool
    rm -rf "$tmp"
    trap - EXIT
    command -v promtool >/dev/null 2>&1 || { say "could not install promtool"; exit 1; }
fi

# The conformance tests run the Autobahn|Testsuite cases with `kosoku` (PyPI; Python >= 3.10).
if ! command -v kosoku >/dev/null 2>&1; then
    say "installing the Python 'kosoku' package (Autobahn|Testsuite cases)"
    python3 -m pip install --quiet --disable-pip-version-check kosoku >/dev/null 2>&1 ||
        python3 -m pip install --quiet --disable-pip-version-check --break-system-packages kosoku >/dev/null
    command -v kosoku >/dev/null 2>&1 || { say "could not install kosoku (pip install kosoku)"; exit 1; }
fi

command -v cargo >/dev/null 2>&1 || { say "cargo (Rust) is required: https://rustup.rs"; exit 1; }
say "ok"

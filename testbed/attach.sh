#!/usr/bin/env bash
# Attach the steering XDP program to the server veth of a testbed made by netns-scripts/setup.sh,
# pinned under /run/wsb/bpffs/<prefix> (a bpffs mounted outside /sys: `ip netns exec` remounts
# /sys, so pins there would not be visible to a server started with it). Idempotent: a program
# already attached by us is replaced. Undo with testbed/detach.sh (or netns-scripts/teardown.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    cat <<USAGE
usage: testbed/attach.sh [--prefix P] [--endpoint ADDR:PORT]... [--mode auto|native|generic]

  --prefix P        testbed prefix given to netns-scripts/setup.sh (default wsb): attaches to
                    P-s0 in namespace P-srv
  --endpoint A:P    TCP endpoint to steer into AF_XDP sockets (repeatable; default 198.18.0.1:8080)
  --mode M          native (driver) XDP, generic (skb), or auto = native with a fallback (default)

Prints the status afterwards (xdp-steer status). Needs root.
USAGE
}

prefix=wsb
mode=auto
endpoints=()
while (($#)); do
    case $1 in
        --prefix) prefix=${2:?--prefix needs a value}; shift 2 ;;
        --endpoint) endpoints+=(--endpoint "${2:?--endpoint needs a value}"); shift 2 ;;
        --mode) mode=${2:?--mode needs a value}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "attach.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done
((${#endpoints[@]})) || endpoints=(--endpoint 198.18.0.1:8080)
[[ $(id -u) -eq 0 ]] || { echo "attach.sh: must run as root" >&2; exit 1; }
ns=$prefix-srv
dev=$prefix-s0
ip netns list | awk '{print $1}' | grep -qxF "$ns" \
    || { echo "attach.sh: no namespace $ns: run netns-scripts/setup.sh --prefix $prefix first" >&2; exit 1; }

bpffs=/run/wsb/bpffs
mkdir -p "$bpffs"
mountpoint -q "$bpffs" || mount -t bpf bpf "$bpffs"
pin=$bpffs/$prefix

# Build (incrementally) the XDP object and the loader, unless XDP_STEER names a built one.
steer=${XDP_STEER:-}
if [[ -z $steer ]]; then
    cargo build --quiet --release -p xdp-prog --bin xdp-steer
    steer=./target/release/xdp-steer
fi

# Replace a previous attachment of ours (a rerun, or a crash that left it).
if [[ -e $pin/prog ]] || ip -n "$ns" link show dev "$dev" | grep -q 'prog/xdp'; then
    "$steer" detach "$dev" --netns "$ns" --pin "$pin"
fi
"$steer" attach "$dev" --netns "$ns" --mode "$mode" "${endpoints[@]}" --pin "$pin"
"$steer" status "$dev" --netns "$ns" --pin "$pin"

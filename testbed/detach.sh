#!/usr/bin/env bash
# Detach the steering XDP program from a testbed's server veth and remove its pins. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=wsb
while (($#)); do
    case $1 in
        --prefix) prefix=${2:?--prefix needs a value}; shift 2 ;;
        -h|--help) echo "usage: testbed/detach.sh [--prefix P]   (undoes testbed/attach.sh; needs root)"; exit 0 ;;
        *) echo "detach.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[[ $(id -u) -eq 0 ]] || { echo "detach.sh: must run as root" >&2; exit 1; }
ns=$prefix-srv
dev=$prefix-s0
bpffs=/run/wsb/bpffs
pin=$bpffs/$prefix

if ip netns list | awk '{print $1}' | grep -qxF "$ns" && ip -n "$ns" link show dev "$dev" >/dev/null 2>&1; then
    steer=${XDP_STEER:-}
    if [[ -z $steer ]]; then
        cargo build --quiet --release -p xdp-prog --bin xdp-steer
        steer=./target/release/xdp-steer
    fi
    "$steer" detach "$dev" --netns "$ns" --pin "$pin"
elif [[ -d $pin ]]; then
    # The veth is gone (and the attachment with it): only the pins are left.
    rm -f -- "$pin"/prog "$pin"/xsks "$pin"/endpoints "$pin"/counters "$pin"/config
    rmdir -- "$pin"
    echo "detach.sh: $dev is gone; removed the pins under $pin"
else
    echo "detach.sh: nothing attached for prefix $prefix"
fi
# Unmount our bpffs once nothing of ours is pinned in it.
if mountpoint -q "$bpffs" && [[ -z $(find "$bpffs" -mindepth 1 -maxdepth 1 -type d) ]]; then
    umount "$bpffs" && rmdir "$bpffs" 2>/dev/null || true
fi

#!/usr/bin/env bash
# Remove the server/client network namespaces made by setup.sh.
# Idempotent: exits 0 when there is nothing to remove.
set -euo pipefail

PROG=teardown.sh
PREFIX=wsb
QUIET=0

usage() {
    cat <<EOF
Usage: $PROG [--prefix P] [--quiet] [--help]

Delete the network namespaces P-srv and P-cli created by setup.sh (deleting a
namespace also destroys the veth end inside it), plus a stray veth P-s0 / P-c0
left in the root namespace, if any. Nothing else is touched: only those exact
names are deleted, never any other namespace or interface.
Exits 0 when nothing exists (safe to run any number of times).

Options:
  --prefix P   name prefix used with setup.sh (default: wsb); 1-8 characters
               of [a-z0-9]
  --quiet      print only warnings and errors
  -h, --help   show this help and exit

Must run as root. Needs 'ip' (Debian package: iproute2).
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 1; }
warn() { echo "$PROG: warning: $*" >&2; }
info() { if (( ! QUIET )); then echo "$PROG: $*"; fi; }

while (( $# > 0 )); do
    case $1 in
        --prefix) [[ $# -ge 2 ]] || die "--prefix needs a value"; PREFIX=$2; shift 2 ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --quiet) QUIET=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

[[ $PREFIX =~ ^[a-z0-9]{1,8}$ ]] \
    || die "--prefix '$PREFIX' is invalid: use 1-8 characters of [a-z0-9]"
[[ $EUID -eq 0 ]] || die "must run as root (network namespaces need CAP_SYS_ADMIN/CAP_NET_ADMIN)"
command -v ip >/dev/null 2>&1 || die "'ip' not found: install the Debian package 'iproute2'"

netns_exists() {
    ip netns list 2>/dev/null | awk '{print $1}' | grep -qxF -- "$1"
}

rc=0
removed=0
for ns in "$PREFIX-cli" "$PREFIX-srv"; do
    if netns_exists "$ns"; then
        pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ' || true)
        if [[ -n ${pids// /} ]]; then
            warn "processes still run in $ns (pids: ${pids% }); the namespace (and its veth) lives on until they exit"
        fi
        if ip netns del "$ns"; then
            info "deleted namespace $ns"
            removed=$((removed + 1))
        else
            warn "could not delete namespace $ns"
            rc=1
        fi
    fi
done

# XDP steering pins of this prefix (testbed/attach.sh): the attachment went with the veth, but
# pinned maps and program live on in the bpffs until removed.
pins=/run/wsb/bpffs/$PREFIX
if [[ -d $pins ]]; then
    rm -f -- "$pins"/prog "$pins"/xsks "$pins"/endpoints "$pins"/counters "$pins"/config
    rmdir -- "$pins" 2>/dev/null && info "removed XDP pins $pins" && removed=$((removed + 1))
fi

# A veth end left in the root namespace (only possible if someone created it
# there by hand or an old version of setup crashed); delete only if it is a veth.
for dev in "$PREFIX-s0" "$PREFIX-c0"; do
    if ip link show dev "$dev" >/dev/null 2>&1; then
        if ip -d link show dev "$dev" | grep -qw veth; then
            if ip link del dev "$dev" 2>/dev/null; then
                info "deleted stray root-namespace device $dev"
                removed=$((removed + 1))
            elif ip link show dev "$dev" >/dev/null 2>&1; then
                # (deleting one veth end removes its peer too, so a failure
                # here is only real if the device is still present)
                warn "could not delete root-namespace device $dev"
                rc=1
            fi
        else
            warn "root-namespace device $dev exists but is not a veth; left alone"
        fi
    fi
done

if (( rc == 0 && removed == 0 )); then
    info "nothing to remove for prefix '$PREFIX'"
fi
exit "$rc"

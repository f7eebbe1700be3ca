#!/usr/bin/env bash
# A cluster on one machine: N server hosts, one client host that reaches all of
# them, and a broker host (NATS) on a backbone the servers share.
set -euo pipefail

PROG=cluster.sh

PREFIX=wsc
NODES=3
ACTION=up
PRINT_ENV=0
MAX_NODES=9

usage() {
    cat <<EOF
Usage: $PROG [up|down] [--prefix P] [--nodes N] [--print-env] [--help]

up (default): make the hosts of a cluster on this machine:

  netns P-cli  P-cK 198.18.K.2/24 <=== veth ===> P-sK 198.18.K.1/24  netns P-nK
                                                 P-bK 198.18.100.K/24
                                                   |  (veth to the bridge)
  netns P-bus  bridge P-br 198.18.100.254/24 <-----+  (the broker listens here)

  for every node K in 1..N. Node K's server listens on 198.18.K.1 (its XDP
  program, if any, goes on P-sK); the client host reaches every node directly;
  the nodes reach the broker, and each other, over the backbone (never through
  the client host). TX checksum offload is off on P-sK and P-cK (AF_XDP
  frames carry their own checksums).
down: remove everything 'up' made with this prefix (idempotent).

Options:
  --prefix P    name prefix, 1-6 characters of [a-z0-9] (default: wsc), so
                that interface names stay within 15 characters
  --nodes N     server hosts, 1..$MAX_NODES (default: 3)
  --print-env   after 'up', print KEY=VALUE lines (WSC_CLI_NS, WSC_BUS_NS,
                WSC_BROKER_ADDR, WSC_NODES, WSC_NODE<K>_NS, WSC_NODE<K>_ADDR,
                WSC_NODE<K>_DEV) instead of the human summary

If the namespaces exist already (after a crash), they are removed first. If
'up' fails or is interrupted half-way, what it made is removed again. Must run
as root; needs 'ip' (iproute2), 'ethtool' and 'sysctl' (procps).
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 1; }
warn() { echo "$PROG: warning: $*" >&2; }

while (( $# > 0 )); do
    case $1 in
        up|down)     ACTION=$1; shift ;;
        --prefix)    [[ $# -ge 2 ]] || die "--prefix needs a value"; PREFIX=$2; shift 2 ;;
        --prefix=*)  PREFIX=${1#*=}; shift ;;
        --nodes)     [[ $# -ge 2 ]] || die "--nodes needs a value"; NODES=$2; shift 2 ;;
        --nodes=*)   NODES=${1#*=}; shift ;;
        --print-env) PRINT_ENV=1; shift ;;
        -h|--help)   usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

[[ $PREFIX =~ ^[a-z0-9]{1,6}$ ]] || die "--prefix '$PREFIX' is invalid: use 1-6 characters of [a-z0-9]"
[[ $NODES =~ ^[1-9]$ ]] || die "--nodes '$NODES' is out of range 1..$MAX_NODES"
[[ $EUID -eq 0 ]] || die "must run as root (network namespaces need CAP_SYS_ADMIN/CAP_NET_ADMIN)"
command -v ip >/dev/null 2>&1 || die "'ip' not found: install the Debian package 'iproute2'"

CLI_NS=$PREFIX-cli
BUS_NS=$PREFIX-bus
BROKER_ADDR=198.18.100.254

netns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qxF -- "$1"; }

# Every namespace this prefix may have (any node count: a crash may have left more).
down() {
    local rc=0 ns
    for ns in "$CLI_NS" "$BUS_NS" $(seq -f "$PREFIX-n%g" 1 "$MAX_NODES"); do
        if netns_exists "$ns"; then
            local pids
            pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ' || true)
            [[ -z ${pids// /} ]] || warn "processes still run in $ns (pids: ${pids% }); its links live until they exit"
            ip netns delete "$ns" || { warn "could not delete namespace $ns"; rc=1; }
        fi
    done
    return "$rc"
}

if [[ $ACTION == down ]]; then
    down
    exit $?
fi

command -v ethtool >/dev/null 2>&1 || die "'ethtool' not found: install the Debian package 'ethtool'"
command -v sysctl >/dev/null 2>&1 || die "'sysctl' not found: install the Debian package 'procps'"

CREATED=0
on_exit() {
    local rc=$?
    if (( rc != 0 && CREATED )); then
        echo "$PROG: error: setup failed (exit $rc); removing what was made" >&2
        down || echo "$PROG: error: cleanup failed too; run: $0 down --prefix $PREFIX" >&2
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'trap - INT TERM; echo "$PROG: interrupted" >&2; exit 130' INT
trap 'trap - INT TERM; echo "$PROG: terminated" >&2; exit 143' TERM

down   # leftovers of a crashed run
CREATED=1

host_sysctls() {
    local ns=$1 kv
    for kv in net.ipv4.ip_local_port_range="1024 65535" net.core.somaxconn=65535 \
              net.ipv4.tcp_max_syn_backlog=65535 net.ipv4.tcp_tw_reuse=1 \
              net.ipv4.tcp_rmem="4096 4096 16777216" net.ipv4.tcp_wmem="4096 4096 16777216"; do
        ip netns exec "$ns" sysctl -qw "$kv" >/dev/null 2>&1 || warn "$ns: sysctl $kv not set"
    done
}

ip netns add "$CLI_NS"
ip netns add "$BUS_NS"
ip -n "$CLI_NS" link set lo up
ip -n "$BUS_NS" link set lo up
ip -n "$BUS_NS" link add "$PREFIX-br" type bridge
ip -n "$BUS_NS" addr add "$BROKER_ADDR/24" dev "$PREFIX-br"
ip -n "$BUS_NS" link set "$PREFIX-br" up
host_sysctls "$CLI_NS"

for k in $(seq 1 "$NODES"); do
    ns=$PREFIX-n$k
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    host_sysctls "$ns"
    # The client host's link to node k.
    ip link add "$PREFIX-s$k" netns "$ns" type veth peer name "$PREFIX-c$k" netns "$CLI_NS"
    ip -n "$ns" addr add "198.18.$k.1/24" dev "$PREFIX-s$k"
    ip -n "$CLI_NS" addr add "198.18.$k.2/24" dev "$PREFIX-c$k"
    ip -n "$ns" link set "$PREFIX-s$k" up
    ip -n "$CLI_NS" link set "$PREFIX-c$k" up
    ip netns exec "$ns" ethtool -K "$PREFIX-s$k" tx off >/dev/null
    ip netns exec "$CLI_NS" ethtool -K "$PREFIX-c$k" tx off >/dev/null
    # Node k's link to the backbone.
    ip link add "$PREFIX-b$k" netns "$ns" type veth peer name "$PREFIX-x$k" netns "$BUS_NS"
    ip -n "$ns" addr add "198.18.100.$k/24" dev "$PREFIX-b$k"
    ip -n "$ns" link set "$PREFIX-b$k" up
    ip -n "$BUS_NS" link set "$PREFIX-x$k" master "$PREFIX-br" up
done

if (( PRINT_ENV )); then
    echo "WSC_CLI_NS=$CLI_NS"
    echo "WSC_BUS_NS=$BUS_NS"
    echo "WSC_BROKER_ADDR=$BROKER_ADDR"
    echo "WSC_NODES=$NODES"
    for k in $(seq 1 "$NODES"); do
        echo "WSC_NODE${k}_NS=$PREFIX-n$k"
        echo "WSC_NODE${k}_ADDR=198.18.$k.1"
        echo "WSC_NODE${k}_DEV=$PREFIX-s$k"
    done
else
    echo "$PROG: $NODES nodes ($PREFIX-n1..$PREFIX-n$NODES at 198.18.K.1), client host $CLI_NS, broker host $BUS_NS at $BROKER_ADDR"
    echo "$PROG: remove with: $0 down --prefix $PREFIX"
fi

#!/usr/bin/env bash
# Create a "server host" and a "client host" on one machine: two network
# namespaces joined by a veth pair, with many client source addresses.
set -euo pipefail

PROG=setup.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TEARDOWN=$SCRIPT_DIR/teardown.sh

CONNS_PER_CLIENT=60000   # a client address gives at most 64512 ports (1024-65535)
MAX_CLIENTS=65000
MAX_QUEUES=8

PREFIX=wsb
CONNS=
CLIENTS=
QUEUES=1
SERVER_ADDR=198.18.0.1
PRINT_ENV=0

usage() {
    cat <<EOF
Usage: $PROG [--prefix P] [--conns N | --clients K] [--queues Q]
             [--server-addr A] [--print-env] [--help]

Make a server host and a client host on this machine:

  netns P-srv: P-s0  A/15  <==== veth ====>  P-c0  198.19.0.1..K /15 :netns P-cli

Options:
  --prefix P        name prefix (default: wsb); 1-8 characters of [a-z0-9] so
                    that interface names stay within 15 characters. Creates
                    namespaces P-srv, P-cli and veth ends P-s0, P-c0.
  --conns N         number of connections wanted (default: 10000); the client
                    address count becomes ceil(N / $CONNS_PER_CLIENT), at least 1.
  --clients K       number of client addresses, 1..$MAX_CLIENTS, instead of --conns.
                    Addresses are 198.19.0.1, 198.19.0.2, ... (counting up
                    through 198.19.x.y), all /15 on P-c0.
                    The kernel's cost per added address grows with the count:
                    1000 take ~0.25 s, 16000 ~3 s, 65000 ~1 min.
  --queues Q        rx and tx queue count of both veth ends, 1..$MAX_QUEUES (default: 1)
  --server-addr A   server address on P-s0 (default: 198.18.0.1); must be in
                    198.18.0.0/16 (RFC 2544 benchmarking range)
  --print-env       print shell KEY=VALUE lines (WSB_SRV_NS, WSB_CLI_NS,
                    WSB_SRV_DEV, WSB_CLI_DEV, WSB_SERVER_ADDR, WSB_CLIENT_FIRST,
                    WSB_CLIENT_LAST, WSB_CLIENT_COUNT, WSB_QUEUES) on stdout
                    instead of the human summary, for: eval "\$($PROG --print-env)"
  -h, --help        show this help and exit

In both namespaces it sets (per-namespace sysctls; never the root namespace's):
  net.ipv4.ip_local_port_range="1024 65535", net.ipv4.tcp_rmem and tcp_wmem
  ="4096 4096 16777216", net.core.somaxconn=65535,
  net.ipv4.tcp_max_syn_backlog=65535, net.ipv4.tcp_tw_reuse=1,
  net.ipv4.tcp_fin_timeout=15, net.ipv4.tcp_syncookies=0.
A sysctl that is not per-namespace or not writable gives a warning and is
skipped. TX checksum offload is turned off on both veth ends (ethtool -K tx off).

If P-srv/P-cli already exist (e.g. after a crash) they are removed first with
teardown.sh. If setup fails or is interrupted half-way, everything it created
is removed again and it exits non-zero.

Environment (for selftest.sh only):
  WSB_SETUP_TEST_STAGE=STAGE:fail|STAGE:hang  fail, or sleep 60 s, right after
                    STAGE (netns, veth, addrs, sysctl, offload).

Must run as root. Needs 'ip' (Debian package iproute2), 'ethtool' (package
ethtool) and 'sysctl' (package procps).
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 1; }
warn() { echo "$PROG: warning: $*" >&2; }
note() { echo "$PROG: note: $*" >&2; }

# ---------------------------------------------------------------- options
need_arg() { [[ $2 -ge 2 ]] || die "$1 needs a value (see --help)"; }
while (( $# > 0 )); do
    case $1 in
        --prefix)      need_arg "$1" $#; PREFIX=$2; shift 2 ;;
        --prefix=*)    PREFIX=${1#*=}; shift ;;
        --conns)       need_arg "$1" $#; CONNS=$2; shift 2 ;;
        --conns=*)     CONNS=${1#*=}; shift ;;
        --clients)     need_arg "$1" $#; CLIENTS=$2; shift 2 ;;
        --clients=*)   CLIENTS=${1#*=}; shift ;;
        --queues)      need_arg "$1" $#; QUEUES=$2; shift 2 ;;
        --queues=*)    QUEUES=${1#*=}; shift ;;
        --server-addr) need_arg "$1" $#; SERVER_ADDR=$2; shift 2 ;;
        --server-addr=*) SERVER_ADDR=${1#*=}; shift ;;
        --print-env)   PRINT_ENV=1; shift ;;
        -h|--help)     usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

# is_uint VALUE MAXDIGITS: decimal digits only, no sign, bounded length
is_uint() { [[ $1 =~ ^[0-9]+$ && ${#1} -le $2 ]]; }

[[ $PREFIX =~ ^[a-z0-9]{1,8}$ ]] \
    || die "--prefix '$PREFIX' is invalid: use 1-8 characters of [a-z0-9] (interface names must stay <= 15 characters)"

if [[ -n $CONNS && -n $CLIENTS ]]; then
    die "give either --conns or --clients, not both"
fi
if [[ -n $CLIENTS ]]; then
    is_uint "$CLIENTS" 6 || die "--clients '$CLIENTS' is not a number in 1..$MAX_CLIENTS"
    CLIENTS=$((10#$CLIENTS))
else
    CONNS=${CONNS:-10000}
    if ! is_uint "$CONNS" 12 || (( 10#$CONNS < 1 )); then
        die "--conns '$CONNS' is not a positive number"
    fi
    CONNS=$((10#$CONNS))
    CLIENTS=$(( (CONNS + CONNS_PER_CLIENT - 1) / CONNS_PER_CLIENT ))
    (( CLIENTS <= MAX_CLIENTS )) \
        || die "--conns $CONNS needs $CLIENTS client addresses; at most $MAX_CLIENTS are supported"
fi
(( CLIENTS >= 1 && CLIENTS <= MAX_CLIENTS )) || die "--clients $CLIENTS is out of range 1..$MAX_CLIENTS"

if ! is_uint "$QUEUES" 3 || (( 10#$QUEUES < 1 || 10#$QUEUES > MAX_QUEUES )); then
    die "--queues '$QUEUES' is out of range 1..$MAX_QUEUES"
fi
QUEUES=$((10#$QUEUES))

# Server: 198.18.a.b (not the network address 198.18.0.0), no leading zeros.
octet='(0|[1-9][0-9]{0,2})'
if [[ $SERVER_ADDR =~ ^198\.18\.$octet\.$octet$ ]] \
   && (( BASH_REMATCH[1] <= 255 && BASH_REMATCH[2] <= 255 )) \
   && [[ $SERVER_ADDR != 198.18.0.0 ]]; then
    :
else
    die "--server-addr '$SERVER_ADDR' is not allowed: the server address must be in 198.18.0.0/16 (RFC 2544 benchmarking range), not 198.18.0.0"
fi

# Client i (1-based) is 198.19.(i / 256).(i % 256): skips 198.19.0.0, and
# K <= 65000 never reaches 198.19.255.255.
client_addr() { echo "198.19.$(( $1 >> 8 )).$(( $1 & 255 ))"; }
CLIENT_FIRST=$(client_addr 1)
CLIENT_LAST=$(client_addr "$CLIENTS")

SRV_NS=$PREFIX-srv
CLI_NS=$PREFIX-cli
SRV_DEV=$PREFIX-s0
CLI_DEV=$PREFIX-c0

# ---------------------------------------------------------------- environment
[[ $EUID -eq 0 ]] || die "must run as root (network namespaces need CAP_SYS_ADMIN/CAP_NET_ADMIN); try: sudo $0"
command -v ip >/dev/null 2>&1 || die "'ip' not found: install the Debian package 'iproute2' (apt-get install -y iproute2)"
command -v ethtool >/dev/null 2>&1 || die "'ethtool' not found: install the Debian package 'ethtool' (apt-get install -y ethtool)"
command -v sysctl >/dev/null 2>&1 || die "'sysctl' not found: install the Debian package 'procps' (apt-get install -y procps)"
[[ -x $TEARDOWN ]] || die "$TEARDOWN not found or not executable"

# ---------------------------------------------------------------- cleanup
STAGE=start
CREATED=0
ERR_LINE=
HANG_PID=

on_exit() {
    local rc=$?
    if [[ -n $HANG_PID ]]; then kill "$HANG_PID" 2>/dev/null || true; fi
    if (( rc != 0 && CREATED )); then
        echo "$PROG: error: setup failed during stage '$STAGE'${ERR_LINE:+ (line $ERR_LINE)} (exit $rc); removing what was created" >&2
        "$TEARDOWN" --prefix "$PREFIX" --quiet \
            || echo "$PROG: error: cleanup failed too; run: $TEARDOWN --prefix $PREFIX" >&2
    fi
    exit "$rc"
}
on_signal() {
    echo "$PROG: interrupted by SIG$1" >&2
    trap - INT TERM
    exit "$2"          # runs on_exit, which cleans up
}
trap on_exit EXIT
trap 'ERR_LINE=$LINENO' ERR
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM

test_hook() {
    local hook=${WSB_SETUP_TEST_STAGE:-}
    [[ -n $hook && ${hook%%:*} == "$1" ]] || return 0
    case ${hook#*:} in
        fail) echo "$PROG: test hook: failing after stage '$1'" >&2; false ;;
        hang) echo "$PROG: test hook: sleeping after stage '$1'" >&2
              sleep 60 & HANG_PID=$!; wait "$HANG_PID"; HANG_PID= ;;
        *) die "bad WSB_SETUP_TEST_STAGE '$hook'" ;;
    esac
}

# ---------------------------------------------------------------- setup
netns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qxF -- "$1"; }

STAGE=cleanup-old
if netns_exists "$SRV_NS" || netns_exists "$CLI_NS" \
   || ip link show dev "$SRV_DEV" >/dev/null 2>&1 || ip link show dev "$CLI_DEV" >/dev/null 2>&1; then
    note "old $PREFIX-* namespaces/devices found; removing them first"
    "$TEARDOWN" --prefix "$PREFIX" --quiet
fi

STAGE=netns
CREATED=1
ip netns add "$SRV_NS"
ip netns add "$CLI_NS"
ip -n "$SRV_NS" link set lo up
ip -n "$CLI_NS" link set lo up
test_hook netns

STAGE=veth
# Created directly inside the namespaces: nothing ever appears in the root one.
ip -n "$SRV_NS" link add "$SRV_DEV" numtxqueues "$QUEUES" numrxqueues "$QUEUES" type veth \
    peer name "$CLI_DEV" numtxqueues "$QUEUES" numrxqueues "$QUEUES" netns "$CLI_NS"
test_hook veth

STAGE=addrs
ip -n "$SRV_NS" addr add "$SERVER_ADDR/15" dev "$SRV_DEV"
# One 'ip -batch' process for all client addresses.
for (( i = 1; i <= CLIENTS; i++ )); do
    printf 'addr add 198.19.%d.%d/15 dev %s\n' $(( i >> 8 )) $(( i & 255 )) "$CLI_DEV"
done | ip -n "$CLI_NS" -batch -
test_hook addrs

STAGE=sysctl
# key value pairs; values with spaces are single words here
SYSCTLS=(
    net.ipv4.ip_local_port_range "1024 65535"
    net.ipv4.tcp_rmem            "4096 4096 16777216"
    net.ipv4.tcp_wmem            "4096 4096 16777216"
    net.core.somaxconn           65535
    net.ipv4.tcp_max_syn_backlog 65535
    net.ipv4.tcp_tw_reuse        1
    net.ipv4.tcp_fin_timeout     15
    net.ipv4.tcp_syncookies      0
)
declare -A SKIP_SYSCTL=()
norm() { tr -s '[:space:]' ' ' | sed 's/^ //; s/ $//'; }
root_sysctl() { sysctl -n "$1" 2>/dev/null | norm; }

# Write KEY=VALUE in NS. A sysctl that turns out not to be per-namespace
# (the root value changed) is put back at once and skipped from then on.
set_ns_sysctl() {
    local ns=$1 key=$2 want=$3 before after got err
    [[ -z ${SKIP_SYSCTL[$key]:-} ]] || return 0
    before=$(root_sysctl "$key") || before=
    if ! err=$(ip netns exec "$ns" sysctl -qw "$key=$want" 2>&1); then
        warn "sysctl $key not writable in $ns (${err//$'\n'/ }); skipped"
        return 0
    fi
    after=$(root_sysctl "$key") || after=
    if [[ $after != "$before" ]]; then
        sysctl -qw "$key=$before" 2>/dev/null \
            || warn "could not restore root-namespace $key to '$before'"
        warn "sysctl $key is not per-namespace on this kernel (writing it in $ns changed the root namespace; restored); skipped"
        SKIP_SYSCTL[$key]=1
        return 0
    fi
    got=$(ip netns exec "$ns" sysctl -n "$key" 2>/dev/null | norm) || got=
    if [[ $got != "$want" ]]; then
        warn "sysctl $key in $ns reads '$got' after writing '$want'"
    fi
}
for ns in "$SRV_NS" "$CLI_NS"; do
    for (( j = 0; j < ${#SYSCTLS[@]}; j += 2 )); do
        set_ns_sysctl "$ns" "${SYSCTLS[j]}" "${SYSCTLS[j+1]}"
    done
done
test_hook sysctl

STAGE=offload
ip netns exec "$SRV_NS" ethtool -K "$SRV_DEV" tx off >/dev/null
ip netns exec "$CLI_NS" ethtool -K "$CLI_DEV" tx off >/dev/null
note "TX checksum offload turned off on $SRV_DEV and $CLI_DEV: kernel-sent veth frames are otherwise CHECKSUM_PARTIAL (no valid TCP checksum), which a userspace stack behind AF_XDP would drop"
test_hook offload

STAGE=link-up
# The kernel activates the qdisc (until then every packet is dropped) and
# reports operstate UP only from its link-watch work, which can run up to a
# second later: wait for it, so a benchmark started right after setup does not
# lose its first SYNs to a 1 s retransmit.
ip -n "$SRV_NS" link set "$SRV_DEV" up
ip -n "$CLI_NS" link set "$CLI_DEV" up
link_is_up() { ip -n "$1" -o link show dev "$2" | grep -q ' state UP '; }
for (( t = 0; ; t++ )); do
    if link_is_up "$SRV_NS" "$SRV_DEV" && link_is_up "$CLI_NS" "$CLI_DEV"; then
        break
    fi
    (( t < 100 )) || die "veth $SRV_DEV/$CLI_DEV not operationally up after 5 s"
    sleep 0.05
done

STAGE=finished
CREATED=0

if (( PRINT_ENV )); then
    printf 'WSB_SRV_NS=%q\n' "$SRV_NS"
    printf 'WSB_CLI_NS=%q\n' "$CLI_NS"
    printf 'WSB_SRV_DEV=%q\n' "$SRV_DEV"
    printf 'WSB_CLI_DEV=%q\n' "$CLI_DEV"
    printf 'WSB_SERVER_ADDR=%q\n' "$SERVER_ADDR"
    printf 'WSB_CLIENT_FIRST=%q\n' "$CLIENT_FIRST"
    printf 'WSB_CLIENT_LAST=%q\n' "$CLIENT_LAST"
    printf 'WSB_CLIENT_COUNT=%q\n' "$CLIENTS"
    printf 'WSB_QUEUES=%q\n' "$QUEUES"
else
    cat <<EOF
netns setup done (prefix $PREFIX):
  namespaces : $SRV_NS (server), $CLI_NS (client)
  devices    : $SRV_DEV (in $SRV_NS) <-> $CLI_DEV (in $CLI_NS), veth, $QUEUES rx/tx queue(s)
  server     : $SERVER_ADDR/15 on $SRV_DEV
  clients    : $CLIENT_FIRST .. $CLIENT_LAST ($CLIENTS address(es), /15) on $CLI_DEV
  run with   : ip netns exec $SRV_NS <server>   /   ip netns exec $CLI_NS <client>
  remove with: $TEARDOWN --prefix $PREFIX
EOF
fi

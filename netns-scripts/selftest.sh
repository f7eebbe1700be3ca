#!/usr/bin/env bash
# Real test of setup.sh and teardown.sh (needs root). Uses prefix 'wsbst'.
set -euo pipefail

PROG=selftest.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SETUP=$SCRIPT_DIR/setup.sh
TEARDOWN=$SCRIPT_DIR/teardown.sh

P=wsbst
SRV_NS=$P-srv
CLI_NS=$P-cli
SRV_DEV=$P-s0
CLI_DEV=$P-c0
DECOY_NS=wsbstdecoy-srv   # must survive 'teardown.sh --prefix wsbst'
PORT=47001

usage() {
    cat <<EOF
Usage: $PROG [--help]

Test setup.sh and teardown.sh for real: creates and removes the namespaces
$SRV_NS / $CLI_NS (prefix '$P', so it never collides with a real run) and
checks addresses, queues, sysctls, checksum offload, reachability (ping and
TCP), idempotence, cleanup after failure/interrupt and input validation.
Always tears down on exit. Ends with 'selftest: N passed, M failed'; exit
status 0 only if nothing failed.

Options:
  -h, --help   show this help and exit

Environment:
  WSB_REQUIRE_PRIVILEGED=1   when not root, fail (exit 1) instead of printing
                             'SKIP: needs root (network namespaces)' and exiting 0
EOF
}

case ${1:-} in
    -h|--help) usage; exit 0 ;;
    "") ;;
    *) echo "$PROG: error: unknown option '$1' (see --help)" >&2; exit 2 ;;
esac

if [[ $EUID -ne 0 ]]; then
    echo "SKIP: needs root (network namespaces)"
    if [[ ${WSB_REQUIRE_PRIVILEGED:-} == 1 ]]; then
        echo "$PROG: WSB_REQUIRE_PRIVILEGED=1, so a skip is a failure" >&2
        exit 1
    fi
    exit 0
fi
for tool in ip ethtool python3 ping; do
    command -v "$tool" >/dev/null 2>&1 \
        || { echo "$PROG: error: '$tool' not found (Debian packages: iproute2, ethtool, python3, iputils-ping)" >&2; exit 1; }
done

TMP=$(mktemp -d)
BG_PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    "$TEARDOWN" --prefix "$P" --quiet || true
    ip netns del "$DECOY_NS" 2>/dev/null || true
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PASS=0
FAIL=0
# check DESCRIPTION COMMAND...: run COMMAND, count and print the result.
check() {
    local desc=$1; shift
    if "$@" >"$TMP/out" 2>&1; then
        PASS=$((PASS + 1)); echo "ok    $desc"
    else
        FAIL=$((FAIL + 1)); echo "FAIL  $desc"
        sed 's/^/        | /' "$TMP/out" | head -20
    fi
}

# ---------------------------------------------------------------- helpers
# (each returns non-zero with a message on stdout when the check fails)
ns_exists() { ip netns list | awk '{print $1}' | grep -qxF -- "$1"; }
no_test_ns() {
    local left
    left=$(ip netns list | awk '{print $1}' | grep -xE "$SRV_NS|$CLI_NS" || true)
    [[ -z $left ]] || { echo "left over: $left"; return 1; }
}
both_ns_exist() { ns_exists "$SRV_NS" && ns_exists "$CLI_NS"; }
addrs_of() { ip -n "$1" -o -4 addr show dev "$2" | awk '{print $4}'; }
expect_eq() {   # expect_eq WHAT GOT WANT
    [[ $2 == "$3" ]] || { echo "$1: got '$2', want '$3'"; return 1; }
}
server_addr_ok() { expect_eq "addresses on $SRV_DEV" "$(addrs_of "$SRV_NS" "$SRV_DEV")" "198.18.0.1/15"; }
client_addrs_are() {   # client_addrs_are N
    local want="" i
    for (( i = 1; i <= $1; i++ )); do want+="198.19.$(( i >> 8 )).$(( i & 255 ))/15"$'\n'; done
    expect_eq "addresses on $CLI_DEV" "$(addrs_of "$CLI_NS" "$CLI_DEV")" "${want%$'\n'}"
}
queues_are() {   # queues_are NS DEV N
    local got
    got=$(ip netns exec "$1" ls "/sys/class/net/$2/queues" | tr '\n' ' ')
    expect_eq "queues of $2" "$got" "$(for (( q = 0; q < $3; q++ )); do printf 'rx-%d ' "$q"; done; for (( q = 0; q < $3; q++ )); do printf 'tx-%d ' "$q"; done)"
}
ns_sysctl_is() {   # ns_sysctl_is NS KEY WANT
    expect_eq "$2 in $1" "$(ip netns exec "$1" sysctl -n "$2" | tr -s '[:space:]' ' ' | sed 's/ $//')" "$3"
}
tx_csum_off() {   # tx_csum_off NS DEV
    local line
    line=$(ip netns exec "$1" ethtool -k "$2" | grep '^tx-checksumming:')
    expect_eq "$2 $line" "$line" "tx-checksumming: off"
}
root_links_clean() {
    local bad
    bad=$(ip -o link show | awk -F': ' '{print $2}' | grep "^$P-" || true)
    [[ -z $bad ]] || { echo "root namespace has: $bad"; return 1; }
}
ROOT_SYSCTLS=(net.ipv4.ip_local_port_range net.ipv4.tcp_rmem net.ipv4.tcp_wmem
    net.core.somaxconn net.ipv4.tcp_max_syn_backlog net.ipv4.tcp_tw_reuse
    net.ipv4.tcp_fin_timeout net.ipv4.tcp_syncookies)
root_sysctl_snapshot() { sysctl "${ROOT_SYSCTLS[@]}"; }
tcp_connect() {   # tcp_connect SRC: connect from SRC to a listener in $SRV_NS
    local src=$1 got lpid
    # Listener: accept one connection and send back the peer address it saw.
    ip netns exec "$SRV_NS" python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.18.0.1", int(sys.argv[1]))); s.listen(1); s.settimeout(10)
c, a = s.accept(); c.sendall(a[0].encode()); c.close()' "$PORT" &
    lpid=$!; BG_PIDS+=("$lpid")
    got=$(ip netns exec "$CLI_NS" python3 -c '
import socket, sys, time
for _ in range(50):
    try:
        s = socket.create_connection(("198.18.0.1", int(sys.argv[1])), timeout=3,
                                     source_address=(sys.argv[2], 0))
        break
    except ConnectionRefusedError:
        time.sleep(0.1)
else:
    sys.exit("listener never came up")
print(s.recv(64).decode())' "$PORT" "$src") || { wait "$lpid" || true; return 1; }
    wait "$lpid" || true
    expect_eq "peer address seen by the server" "$got" "$src"
}
expect_reject() {   # expect_reject ARGS...: setup must fail with a message, create nothing
    local rc=0
    "$SETUP" --prefix "$P" "$@" >"$TMP/rej.out" 2>"$TMP/rej.err" || rc=$?
    (( rc != 0 )) || { echo "exit status 0"; return 1; }
    [[ -s $TMP/rej.err ]] || { echo "no error message"; return 1; }
    echo "exit $rc: $(head -1 "$TMP/rej.err")"
    no_test_ns && root_links_clean
}
expect_reject_prefix() {   # like expect_reject but with its own --prefix
    local rc=0
    "$SETUP" "$@" >"$TMP/rej.out" 2>"$TMP/rej.err" || rc=$?
    if (( rc == 0 )) || [[ ! -s $TMP/rej.err ]]; then
        echo "exit $rc, stderr: $(cat "$TMP/rej.err")"; return 1
    fi
    no_test_ns && root_links_clean
}

# ---------------------------------------------------------------- checks
echo "== 0. preparation, --help"
"$TEARDOWN" --prefix "$P" --quiet
check "no $P namespaces before the test" no_test_ns
for script in "$SETUP" "$TEARDOWN"; do
    check "$(basename "$script") --help exits 0" "$script" --help
done
help_mentions_all() {
    local h opt; h=$("$SETUP" --help)
    for opt in --prefix --conns --clients --queues --server-addr --print-env --help; do
        grep -q -- "$opt" <<<"$h" || { echo "setup --help lacks $opt"; return 1; }
    done
    h=$("$TEARDOWN" --help)
    for opt in --prefix --quiet --help; do
        grep -q -- "$opt" <<<"$h" || { echo "teardown --help lacks $opt"; return 1; }
    done
}
check "--help texts mention every option" help_mentions_all
root_sysctl_snapshot >"$TMP/root-sysctl.before"

echo "== 1. setup --clients 5 --queues 2"
check "setup.sh --prefix $P --clients 5 --queues 2" "$SETUP" --prefix "$P" --clients 5 --queues 2
check "namespaces $SRV_NS and $CLI_NS exist" both_ns_exist
check "$SRV_DEV has 198.18.0.1/15" server_addr_ok
check "$CLI_DEV has exactly 198.19.0.1..5 /15" client_addrs_are 5
check "$SRV_DEV has 2 rx + 2 tx queues" queues_are "$SRV_NS" "$SRV_DEV" 2
check "$CLI_DEV has 2 rx + 2 tx queues" queues_are "$CLI_NS" "$CLI_DEV" 2
check "ip_local_port_range in $CLI_NS is '1024 65535'" ns_sysctl_is "$CLI_NS" net.ipv4.ip_local_port_range "1024 65535"
check "ip_local_port_range in $SRV_NS is '1024 65535'" ns_sysctl_is "$SRV_NS" net.ipv4.ip_local_port_range "1024 65535"
check "tcp_rmem in $CLI_NS is '4096 4096 16777216'" ns_sysctl_is "$CLI_NS" net.ipv4.tcp_rmem "4096 4096 16777216"
check "somaxconn in $SRV_NS is 65535" ns_sysctl_is "$SRV_NS" net.core.somaxconn 65535
check "tcp_syncookies in $SRV_NS is 0" ns_sysctl_is "$SRV_NS" net.ipv4.tcp_syncookies 0
check "tx-checksumming off on $SRV_DEV" tx_csum_off "$SRV_NS" "$SRV_DEV"
check "tx-checksumming off on $CLI_DEV" tx_csum_off "$CLI_NS" "$CLI_DEV"

echo "== 2. reachability"
check "ping from 198.19.0.5 to 198.18.0.1" ip netns exec "$CLI_NS" ping -c1 -W1 -I 198.19.0.5 198.18.0.1
check "TCP connect from 198.19.0.3 to a listener in $SRV_NS" tcp_connect 198.19.0.3
check "TCP connect from 198.19.0.5 to a listener in $SRV_NS" tcp_connect 198.19.0.5

echo "== 3. root namespace untouched"
check "no $P-* interface in the root namespace" root_links_clean
root_sysctls_unchanged() { root_sysctl_snapshot | diff "$TMP/root-sysctl.before" -; }
check "root-namespace sysctls unchanged" root_sysctls_unchanged

echo "== 4. idempotent rerun, --conns, --print-env"
check "setup.sh again while the namespaces exist" "$SETUP" --prefix "$P" --clients 5 --queues 2
check "... still exactly 5 client addresses" client_addrs_are 5
check "setup.sh --conns 130000" "$SETUP" --prefix "$P" --conns 130000
check "... gives 3 client addresses" client_addrs_are 3
check "... and 1 queue" queues_are "$CLI_NS" "$CLI_DEV" 1
conns_60000_one_addr() {
    "$SETUP" --prefix "$P" --conns 60000 && client_addrs_are 1
}
check "setup.sh --conns 60000 gives 1 client address" conns_60000_one_addr
print_env_ok() {
    local out WSB_SRV_NS='' WSB_CLI_NS='' WSB_SRV_DEV='' WSB_CLI_DEV='' WSB_SERVER_ADDR=''
    local WSB_CLIENT_FIRST='' WSB_CLIENT_LAST='' WSB_CLIENT_COUNT='' WSB_QUEUES=''
    out=$("$SETUP" --prefix "$P" --clients 300 --server-addr 198.18.7.9 --print-env 2>/dev/null)
    grep -qvE '^WSB_[A-Z_]+=' <<<"$out" && { echo "non KEY=VALUE line in: $out"; return 1; }
    eval "$out"
    expect_eq env "$WSB_SRV_NS $WSB_CLI_NS $WSB_SRV_DEV $WSB_CLI_DEV $WSB_SERVER_ADDR $WSB_CLIENT_FIRST $WSB_CLIENT_LAST $WSB_CLIENT_COUNT $WSB_QUEUES" \
        "$SRV_NS $CLI_NS $SRV_DEV $CLI_DEV 198.18.7.9 198.19.0.1 198.19.1.44 300 1" \
    && expect_eq "addresses on $SRV_DEV" "$(addrs_of "$SRV_NS" "$SRV_DEV")" "198.18.7.9/15" \
    && expect_eq "client address count" "$(addrs_of "$CLI_NS" "$CLI_DEV" | wc -l)" 300 \
    && expect_eq "last client address" "$(addrs_of "$CLI_NS" "$CLI_DEV" | tail -1)" "198.19.1.44/15"
}
check "--print-env --clients 300 --server-addr 198.18.7.9: eval-able, matches" print_env_ok
check "ping from the 300th client address 198.19.1.44 to 198.18.7.9" \
    ip netns exec "$CLI_NS" ping -c1 -W1 -I 198.19.1.44 198.18.7.9

echo "== 5. teardown"
ip netns add "$DECOY_NS"
check "teardown.sh (1st)" "$TEARDOWN" --prefix "$P"
check "teardown.sh (2nd, no-op) exits 0" "$TEARDOWN" --prefix "$P"
check "no $SRV_NS/$CLI_NS namespaces remain" no_test_ns
check "no $P-* interface in the root namespace" root_links_clean
check "other namespace $DECOY_NS untouched" ns_exists "$DECOY_NS"
ip netns del "$DECOY_NS"

echo "== 6. bad input is rejected and creates nothing"
check "--prefix TOO_LONG_PREFIX" expect_reject_prefix --prefix TOO_LONG_PREFIX
check "--prefix abcdefghi (9 chars)" expect_reject_prefix --prefix abcdefghi
check "--clients 0" expect_reject --clients 0
check "--clients 65001" expect_reject --clients 65001
check "--clients abc" expect_reject --clients abc
check "--conns 0" expect_reject --conns 0
check "--conns 5 --clients 2 (both)" expect_reject --conns 5 --clients 2
check "--queues 0" expect_reject --queues 0
check "--queues 9" expect_reject --queues 9
check "--server-addr 10.0.0.1" expect_reject --server-addr 10.0.0.1
check "--server-addr 198.19.0.1 (client range)" expect_reject --server-addr 198.19.0.1
check "--server-addr 198.18.0.256" expect_reject --server-addr 198.18.0.256
check "--server-addr 198.18.0.0" expect_reject --server-addr 198.18.0.0
check "unknown option --bogus" expect_reject --bogus
check "missing value: --clients" expect_reject --clients
as_nobody() {   # setup as an unprivileged user: clear message, nothing created
    local out rc=0
    out=$(setpriv --reuid=65534 --regid=65534 --clear-groups "$SETUP" --prefix "$P" 2>&1) || rc=$?
    if (( rc == 0 )) || ! grep -q 'must run as root' <<<"$out"; then
        echo "exit $rc: $out"; return 1
    fi
    no_test_ns
}
if command -v setpriv >/dev/null 2>&1; then
    check "setup.sh as non-root says 'must run as root'" as_nobody
fi

echo "== 7. cleanup after failure or interrupt half-way"
fails_cleanly() {   # fails_cleanly STAGE
    local rc=0
    WSB_SETUP_TEST_STAGE=$1:fail "$SETUP" --prefix "$P" --clients 20 >/dev/null 2>"$TMP/fail.err" || rc=$?
    (( rc != 0 )) || { echo "exit status 0"; return 1; }
    grep -q "setup failed during stage '$1'" "$TMP/fail.err" || { cat "$TMP/fail.err"; return 1; }
    no_test_ns && root_links_clean
}
for stage in netns veth addrs sysctl offload; do
    check "injected failure after stage '$stage': non-zero exit, message, all removed" fails_cleanly "$stage"
done
term_cleans_up() {
    local pid rc=0 t
    WSB_SETUP_TEST_STAGE=addrs:hang "$SETUP" --prefix "$P" --clients 20 >/dev/null 2>"$TMP/term.err" &
    pid=$!
    for (( t = 0; t < 100; t++ )); do
        grep -q 'test hook: sleeping' "$TMP/term.err" && break
        sleep 0.05
    done
    both_ns_exist || { echo "namespaces not there while setup hangs"; kill "$pid"; return 1; }
    kill -TERM "$pid"
    wait "$pid" || rc=$?
    expect_eq "exit status" "$rc" 143 || return 1
    grep -q 'interrupted by SIGTERM' "$TMP/term.err" || { cat "$TMP/term.err"; return 1; }
    no_test_ns && root_links_clean
}
check "SIGTERM during setup: exit 143, all removed" term_cleans_up
check "setup works again after the interrupted run" "$SETUP" --prefix "$P" --clients 2
check "... and reaches the server" ip netns exec "$CLI_NS" ping -c1 -W1 -I 198.19.0.2 198.18.0.1
check "teardown.sh" "$TEARDOWN" --prefix "$P"
check "no $SRV_NS/$CLI_NS namespaces remain" no_test_ns

echo "selftest: $PASS passed, $FAIL failed"
(( FAIL == 0 ))

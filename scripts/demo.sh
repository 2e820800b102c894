#!/usr/bin/env bash
# A first look at weft: three hosts (network namespaces made by scripts/lab.sh), one container each on net "blue",
# joined by weft: the hosts find each other by gossip over QUIC (mutual TLS, certificates from a fresh cluster CA)
# and carry the network encrypted, as ESP-in-UDP with AES-GCM.
#
#   scripts/demo.sh [--keep]
#     --keep   leave the lab and the daemons running at the end, and print how to take them down
#
# It installs what it needs (scripts/setup.sh), builds weft (release), brings up lab "demo" (hosts 198.18.0.1-3,
# containers 198.19.0.11/21/31 and 2001:db8:19:0::11/21/31), creates a CA and one certificate per host, starts weft on each host with only a seed
# address, pings across hosts over IPv4 and IPv6, runs a 5-second iperf3 between two containers, shows `weft status`,
# `weft peers`, `weft stats` and `weft fdb` of host 1, and checks that the underlay carried only ESP. Needs root.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

keep=0
while (($#)); do
    case $1 in
        --keep) keep=1; shift ;;
        -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "demo.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done
[[ $(id -u) -eq 0 ]] || { echo "demo.sh: must run as root (it creates network namespaces)" >&2; exit 1; }

LAB=demo
HOSTS=3
VNI=100
weft=${CARGO_TARGET_DIR:-$root/target}/release/weft
workdir=""
pids=()      # every process started here, for the teardown
weft_pids=() # the daemons, for --keep

section() { printf '\n===== %s =====\n' "$*"; }
say() { printf '$ %s\n' "$*"; }

# Stops the daemons by PID (politely, then not), removes the lab and the config directory. The EXIT trap.
cleanup() {
    local rc=$? pid tries
    trap - EXIT INT TERM
    if ((keep && rc == 0)); then
        section "kept running (--keep)"
        echo "weft PIDs: ${weft_pids[*]}; configs, logs and API sockets in $workdir"
        echo "try:       ip netns exec $LAB-h1-blue-c1 ping 198.19.0.31"
        echo "           $weft stats --socket $workdir/h1.sock"
        echo "take down: kill ${weft_pids[*]}; $root/scripts/lab.sh down $LAB; rm -rf $workdir"
        exit 0
    fi
    section "teardown"
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for ((tries = 0; tries < 100; tries++)); do # up to 10 s
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    "$root/scripts/lab.sh" down "$LAB" || rc=1
    [[ -z $workdir ]] || rm -rf "$workdir"
    if ((rc != 0)); then
        echo "demo.sh: failed (exit $rc)" >&2
    else
        echo "lab $LAB removed"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Polls "$@" every 0.1 s until it succeeds, for at most $1 seconds.
wait_for() {
    local seconds=$1 what=$2 tries
    shift 2
    for ((tries = 0; tries < seconds * 10; tries++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "demo.sh: timed out after ${seconds}s waiting for $what" >&2
    return 1
}

section "setup: the Debian packages the lab and the build need (scripts/setup.sh)"
scripts/setup.sh

section "build: weft (release)"
say cargo build --release -p weft
cargo build --release -p weft

section "lab: $HOSTS hosts, 1 container each on net blue"
workdir=$(mktemp -d /tmp/weft-demo.XXXXXX)
"$root/scripts/lab.sh" down "$LAB" # leftovers of an earlier run, if any
# Encrypted VXLAN costs 95 bytes on a 1500-byte underlay: the containers get MTU 1400.
say scripts/lab.sh up $LAB --hosts $HOSTS --containers 1 --cmtu 1400
"$root/scripts/lab.sh" up "$LAB" --hosts "$HOSTS" --containers 1 --cmtu 1400
"$root/scripts/lab.sh" list "$LAB"

section "pki: a cluster CA and one certificate per host"
say weft ca init --dir "$workdir/pki"
"$weft" ca init --dir "$workdir/pki"
for ((i = 1; i <= HOSTS; i++)); do
    say weft ca issue --dir "$workdir/pki" --node h$i
    "$weft" ca issue --dir "$workdir/pki" --node "h$i"
done

section "weft: one daemon per host, joined through host 1's address"
for ((i = 1; i <= HOSTS; i++)); do
    cat >"$workdir/h$i.toml" <<EOF
[node]
name = "h$i"
underlay = "198.18.0.$i"
api_socket = "$workdir/h$i.sock"

[control]
ca = "$workdir/pki/ca.crt"
cert = "$workdir/pki/h$i.crt"
key = "$workdir/pki/h$i.key"
seeds = ["198.18.0.1:7946"]

[[network]]
name = "blue"
vni = $VNI
subnet = "198.19.0.0/24"
bridge = "br-blue"
encrypted = true
mtu = 1400
EOF
    say ip netns exec $LAB-h$i weft run --config "$workdir/h$i.toml"
    NO_COLOR=1 ip netns exec "$LAB-h$i" "$weft" run --config "$workdir/h$i.toml" >"$workdir/h$i.log" 2>&1 &
    pids+=("$!")
    weft_pids+=("$!")
done
echo "host 1's config:"
sed 's/^/    /' "$workdir/h1.toml"
for ((i = 1; i <= HOSTS; i++)); do
    if ! wait_for 10 "weft on host $i" "$weft" stats --socket "$workdir/h$i.sock"; then
        cat "$workdir/h$i.log" >&2
        exit 1
    fi
done
echo "all $HOSTS daemons ready"
peers_agreed() {
    "$weft" peers --socket "$workdir/h$1.sock" --json \
        | jq -e --argjson n "$((HOSTS - 1))" '[.members[] | select(.sa != null)] | length == $n' >/dev/null
}
for ((i = 1; i <= HOSTS; i++)); do
    wait_for 15 "host $i to agree keys with every other host" peers_agreed "$i"
done
echo "gossip converged and every pair of hosts agreed keys"
ip netns exec "$LAB-h1" tcpdump -ni ul0 -w "$workdir/underlay.pcap" 'udp port 4789 or udp port 4500' >/dev/null 2>&1 &
capture=$!
pids+=("$capture")

section "ping across hosts, IPv4 and IPv6"
for ((i = 2; i <= HOSTS; i++)); do
    for addr in "198.19.0.${i}1" "2001:db8:19:0::${i}1"; do
        wait_for 10 "a first answer from $addr" ip netns exec "$LAB-h1-blue-c1" ping -c 1 -W 1 "$addr"
        say "[h1 container] ping -c 3 $addr"
        ip netns exec "$LAB-h1-blue-c1" ping -c 3 -i 0.2 "$addr"
    done
done

section "iperf3, 5 s, TCP: host 1's container -> host 2's container"
ip netns exec "$LAB-h2-blue-c1" iperf3 -s -1 >"$workdir/iperf3-server.log" 2>&1 &
pids+=("$!")
wait_for 5 "iperf3 to listen" bash -c "ip netns exec $LAB-h2-blue-c1 ss -Htln 'sport = :5201' | grep -q ."
say "[h1 container] iperf3 -c 198.19.0.21 -t 5"
ip netns exec "$LAB-h1-blue-c1" iperf3 -c 198.19.0.21 -t 5 -f g

section "weft status (host 1)"
"$weft" status --socket "$workdir/h1.sock"

section "weft peers (host 1): members and SA epochs"
"$weft" peers --socket "$workdir/h1.sock"
"$weft" peers --socket "$workdir/h1.sock" --json | grep -o '"epochs":\[[^]]*\]'

section "the underlay carried only ESP"
kill -INT "$capture" 2>/dev/null || true
wait "$capture" 2>/dev/null || true
esp=$(tcpdump -nr "$workdir/underlay.pcap" 'udp port 4500' 2>/dev/null | wc -l)
vxlan=$(tcpdump -nr "$workdir/underlay.pcap" 'udp port 4789' 2>/dev/null | wc -l)
echo "captured on host 1's underlay: $esp ESP-in-UDP packets (port 4500), $vxlan plaintext VXLAN packets (port 4789)"
((esp > 0 && vxlan == 0)) || { echo "demo.sh: expected only ESP on the underlay" >&2; exit 1; }

section "weft stats (host 1)"
"$weft" stats --socket "$workdir/h1.sock"

section "weft fdb (host 1)"
"$weft" fdb --socket "$workdir/h1.sock"

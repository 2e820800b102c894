#!/usr/bin/env bash
# End-to-end throughput and latency between two containers on two namespace hosts, through weft (plaintext VXLAN)
# and, in the same run on the same lab, through the kernel's own VXLAN: the baseline weft is measured against.
#
#   scripts/bench-e2e.sh [--time N] [--runs N] [--write] [--af-xdp]
#     --time N   seconds per iperf3 run (default 10)
#     --runs N   iperf3 runs per path; the median is reported (default 3)
#     --write    also write the table to docs/performance.md, section "Plaintext: weft and kernel VXLAN, latest run"
#     --af-xdp   instead: weft's udp underlay against its af_xdp underlay, TCP and 64-byte packets/s (af_xdp_bench
#                below); with --write, into the section "AF_XDP and UDP underlays, latest run"
#
# Per path: single-stream TCP (iperf3, container of host 1 -> container of host 2) and ICMP round trips
# (ping -c 200 -i 0.01: p50 and p99). Lab "bench": hosts 198.18.0.1-2 on a 1500-MTU veth underlay, containers
# 198.19.0.11 and 198.19.0.21 (MTU 1450), VNI 100. Needs root. The kernel VXLAN runs as it comes (offloads on):
# with a kernel at both ends, the inner checksums it leaves to the NIC are never checked by anyone who minds (see
# docs/interop.md for why weft <-> kernel in a veth lab needs `ethtool -K ul0 tx off`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

time_s=10
runs=3
write=0
af_xdp=0
while (($#)); do
    case $1 in
        --time) time_s=${2-}; shift 2 || true ;;
        --runs) runs=${2-}; shift 2 || true ;;
        --write) write=1; shift ;;
        --af-xdp) af_xdp=1; shift ;;
        -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-e2e.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done
if ! [[ $time_s =~ ^[0-9]+$ ]] || ((time_s < 1)); then
    echo "bench-e2e.sh: --time needs a number of seconds >= 1" >&2
    exit 2
fi
if ! [[ $runs =~ ^[0-9]+$ ]] || ((runs < 1)); then
    echo "bench-e2e.sh: --runs needs a number >= 1" >&2
    exit 2
fi
[[ $(id -u) -eq 0 ]] || { echo "bench-e2e.sh: must run as root (it creates network namespaces)" >&2; exit 1; }

LAB=${BENCH_LAB:-bench}  # BENCH_LAB: another lab name, when another bench may be running
C1=$LAB-h1-blue-c1
C2=$LAB-h2-blue-c1
DST=198.19.0.21
PINGS=200
weft=${CARGO_TARGET_DIR:-$root/target}/release/weft
workdir=""
pids=()

section() { printf '\n===== %s =====\n' "$*" >&2; }
log() { printf '%s\n' "$*" >&2; }

# Ends one process by PID: SIGTERM, up to 10 s, then SIGKILL; reaps it.
stop_pid() {
    local pid=$1 tries
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((tries = 0; tries < 100; tries++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do
        stop_pid "$pid"
    done
    "$root/scripts/lab.sh" down "$LAB" >&2 || rc=1
    [[ -z $workdir ]] || rm -rf "$workdir"
    ((rc == 0)) || log "bench-e2e.sh: failed (exit $rc)"
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
    log "bench-e2e.sh: timed out after ${seconds}s waiting for $what"
    return 1
}

# The median of numbers, one per line on stdin.
median() {
    sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Nearest-rank percentile $1 (0-100) of numbers, one per line on stdin.
percentile() {
    sort -g | awk -v q="$1" '{ v[NR] = $1 } END { r = int(q / 100 * NR); if (r < q / 100 * NR) r++; if (r < 1) r = 1; print v[r] }'
}

# Measures the current path: sets the globals gbps (median), gbps_runs, p50, p99 (ms).
measure() {
    local name=$1 r bps rtts
    wait_for 10 "a first ping over $name" ip netns exec "$C1" ping -c 1 -W 1 "$DST"
    gbps_runs=""
    for ((r = 1; r <= runs; r++)); do
        bps=$(ip netns exec "$C1" iperf3 -c "$DST" -t "$time_s" -J | jq '.end.sum_received.bits_per_second')
        gbps_runs+="$(awk -v b="$bps" 'BEGIN { printf "%.2f", b / 1e9 }') "
        log "$name: run $r of $runs: $(awk -v b="$bps" 'BEGIN { printf "%.2f", b / 1e9 }') Gb/s"
    done
    gbps_runs=${gbps_runs% }
    gbps=$(tr ' ' '\n' <<<"$gbps_runs" | median)
    rtts=$(ip netns exec "$C1" ping -n -c "$PINGS" -i 0.01 "$DST" | sed -n 's/.* time=\([0-9.]*\) ms$/\1/p')
    (($(wc -l <<<"$rtts") == PINGS)) || { log "$name: only $(wc -l <<<"$rtts") of $PINGS pings answered"; return 1; }
    p50=$(percentile 50 <<<"$rtts")
    p99=$(percentile 99 <<<"$rtts")
    log "$name: TCP median $gbps Gb/s ($gbps_runs); ping p50 $p50 ms, p99 $p99 ms"
}

# ----- --af-xdp: weft's two underlays, udp and af_xdp, in the same run on the same lab -----
# Per underlay (both hosts in that mode, plaintext VXLAN): single-stream TCP (iperf3, median of --runs), and the packet
# rate of 64-byte frames: iperf3 UDP with 22-byte payloads (inner Ethernet 14 + IPv4 20 + UDP 8 + 22 = 64 bytes),
# unlimited rate, one stream; the rate counts the datagrams that arrived (median of --runs). The generator (iperf3
# on one core) bounds the pps figure for both underlays alike.

# Starts weft on both hosts with underlay_mode $1 and checks that this mode is in effect.
af_xdp_start() {
    local mode=$1 i got
    af_xdp_pids=()
    for i in 1 2; do
        cat >"$workdir/h$i-$mode.toml" <<EOF
[node]
name = "h$i"
underlay = "198.18.0.$i"
api_socket = "$workdir/h$i.sock"
underlay_mode = "$mode"

[[network]]
name = "blue"
vni = 100
subnet = "198.19.0.0/24"
bridge = "br-blue"
peers = ["198.18.0.$((3 - i))"]
EOF
        ip netns exec "$LAB-h$i" "$weft" run --config "$workdir/h$i-$mode.toml" >"$workdir/h$i-$mode.log" 2>&1 &
        pids+=("$!")
        af_xdp_pids+=("$!")
    done
    for i in 1 2; do
        wait_for 10 "weft ($mode) on host $i" "$weft" stats --socket "$workdir/h$i.sock" ||
            { cat "$workdir/h$i-$mode.log" >&2; exit 1; }
        got=$("$weft" stats --socket "$workdir/h$i.sock" --json | jq -r '.underlay.mode')
        [[ $got == "$mode" ]] || { log "host $i runs underlay $got, not $mode"; cat "$workdir/h$i-$mode.log" >&2; exit 1; }
    done
}

# Sets pps (the median) and pps_runs for the current path, named $1 in the log.
af_xdp_pps() {
    local r rate
    pps_runs=""
    for ((r = 1; r <= runs; r++)); do
        rate=$(ip netns exec "$C1" iperf3 -c "$DST" -u -b 0 -l 22 -t "$time_s" -J |
            jq '(.end.sum.packets - .end.sum.lost_packets) / .end.sum.seconds | floor')
        pps_runs+="$rate "
        log "$1: 64-byte frames, run $r of $runs: $rate packets/s received"
    done
    pps_runs=${pps_runs% }
    pps=$(tr ' ' '\n' <<<"$pps_runs" | median)
}

af_xdp_bench() {
    local mode pid ratio_tcp ratio_pps table doc cpu new_section
    declare -A tcp tcp_all rate rate_all lat50 lat99
    for mode in udp af_xdp; do
        section "weft, underlay_mode = $mode"
        af_xdp_start "$mode"
        measure "$mode"
        tcp[$mode]=$gbps tcp_all[$mode]=$gbps_runs lat50[$mode]=$p50 lat99[$mode]=$p99
        af_xdp_pps "$mode"
        rate[$mode]=$pps rate_all[$mode]=$pps_runs
        log "$mode: 64-byte frames median $pps packets/s ($pps_runs)"
        log "$mode: host 1 underlay counters: $("$weft" stats --socket "$workdir/h1.sock" --json | jq -c '.underlay')"
        for pid in "${af_xdp_pids[@]}"; do
            stop_pid "$pid"
        done
    done
    ratio_tcp=$(awk -v a="${tcp[af_xdp]}" -v b="${tcp[udp]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
    ratio_pps=$(awk -v a="${rate[af_xdp]}" -v b="${rate[udp]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
    table=$(
        cat <<EOF
| underlay | TCP, 1 stream (median) | runs (Gb/s) | 64-byte frames (median) | runs (packets/s) | ping p50 | ping p99 |
| --- | --- | --- | --- | --- | --- | --- |
| udp (kernel UDP, GSO/GRO) | ${tcp[udp]} Gb/s | ${tcp_all[udp]} | ${rate[udp]} /s | ${rate_all[udp]} | ${lat50[udp]} ms | ${lat99[udp]} ms |
| af_xdp (copy mode on veth) | ${tcp[af_xdp]} Gb/s | ${tcp_all[af_xdp]} | ${rate[af_xdp]} /s | ${rate_all[af_xdp]} | ${lat50[af_xdp]} ms | ${lat99[af_xdp]} ms |
| af_xdp / udp | $ratio_tcp | | $ratio_pps | | | |
EOF
    )
    section "results: udp and af_xdp underlays, $runs x ${time_s}s per figure"
    echo "$table"
    ((write)) || return 0
    doc=$root/docs/performance.md
    cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
    new_section=$(
        cat <<EOF
## AF_XDP and UDP underlays, latest run

- Measured by \`scripts/bench-e2e.sh --af-xdp --time $time_s --runs $runs\` on $(date -u +%Y-%m-%d).
- Machine: $(nproc) cores (${cpu:-unknown CPU}), kernel $(uname -r).
- Lab: two namespace hosts on a 1500-MTU veth underlay, one container each (MTU 1450), VNI 100, plaintext; both
  hosts in the same underlay mode, udp first, then af_xdp (XDP native on veth, AF_XDP copy mode).
- TCP: iperf3, one stream, $runs runs of $time_s s; the median counts. 64-byte frames: iperf3 UDP with 22-byte
  payloads at an unlimited rate, datagrams received per second, $runs runs of $time_s s; the median counts.
- Latency: $PINGS pings at 10 ms intervals, nearest-rank percentiles.

$table
EOF
    )
    [[ -f $doc ]] || printf '# Performance\n' >"$doc"
    awk -v section="$new_section" '
        /^## AF_XDP and UDP underlays, latest run$/ { print section; skipping = 1; done = 1; next }
        skipping && /^## / { skipping = 0; print "" }
        !skipping { print }
        END { if (!done) { print ""; print section } }
    ' "$doc" >"$workdir/performance.md"
    cp "$workdir/performance.md" "$doc"
    log "wrote $doc"
}

section "build: weft (release)"
cargo build --release -p weft >&2

section "lab"
workdir=$(mktemp -d /tmp/weft-bench.XXXXXX)
"$root/scripts/lab.sh" down "$LAB" >&2
"$root/scripts/lab.sh" up "$LAB" --hosts 2 --containers 1 >&2
ip netns exec "$C2" iperf3 -s >"$workdir/iperf3-server.log" 2>&1 &
pids+=("$!")
wait_for 5 "iperf3 to listen" bash -c "ip netns exec $C2 ss -Htln 'sport = :5201' | grep -q ."

if ((af_xdp)); then
    af_xdp_bench
    exit 0
fi

section "weft (plaintext)"
weft_pids=()
for i in 1 2; do
    cat >"$workdir/h$i.toml" <<EOF
[node]
name = "h$i"
underlay = "198.18.0.$i"
api_socket = "$workdir/h$i.sock"

[[network]]
name = "blue"
vni = 100
subnet = "198.19.0.0/24"
bridge = "br-blue"
peers = ["198.18.0.$((3 - i))"]
EOF
    ip netns exec "$LAB-h$i" "$weft" run --config "$workdir/h$i.toml" >"$workdir/h$i.log" 2>&1 &
    pids+=("$!")
    weft_pids+=("$!")
done
for i in 1 2; do
    wait_for 10 "weft on host $i" "$weft" stats --socket "$workdir/h$i.sock" || { cat "$workdir/h$i.log" >&2; exit 1; }
done
measure weft
weft_gbps=$gbps weft_runs=$gbps_runs weft_p50=$p50 weft_p99=$p99
for pid in "${weft_pids[@]}"; do
    stop_pid "$pid"
done

section "kernel VXLAN"
for i in 1 2; do
    ip -n "$LAB-h$i" link add vx100 type vxlan id 100 dstport 4789 local "198.18.0.$i" dev ul0 nolearning
    ip -n "$LAB-h$i" link set vx100 mtu 1450 master br-blue up
    ip netns exec "$LAB-h$i" bridge fdb append 00:00:00:00:00:00 dev vx100 dst "198.18.0.$((3 - i))"
done
measure kernel
kernel_gbps=$gbps kernel_runs=$gbps_runs kernel_p50=$p50 kernel_p99=$p99

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
table=$(
    cat <<EOF
| path | TCP, 1 stream (median) | runs (Gb/s) | ping p50 | ping p99 |
| --- | --- | --- | --- | --- |
| weft, plaintext VXLAN | $weft_gbps Gb/s | $weft_runs | $weft_p50 ms | $weft_p99 ms |
| kernel VXLAN | $kernel_gbps Gb/s | $kernel_runs | $kernel_p50 ms | $kernel_p99 ms |
| weft / kernel | $(ratio "$weft_gbps" "$kernel_gbps") | | $(ratio "$weft_p50" "$kernel_p50") | $(ratio "$weft_p99" "$kernel_p99") |
EOF
)
section "results: $runs x ${time_s}s iperf3 and $PINGS pings per path"
echo "$table"

if ((write)); then
    doc=$root/docs/performance.md
    cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
    new_section=$(
        cat <<EOF
## Plaintext: weft and kernel VXLAN, latest run

- Measured by \`scripts/bench-e2e.sh --time $time_s --runs $runs\` on $(date -u +%Y-%m-%d).
- Machine: $(nproc) cores (${cpu:-unknown CPU}), kernel $(uname -r).
- Lab: two namespace hosts on a 1500-MTU veth underlay, one container each (MTU 1450), VNI 100.
- TCP: iperf3, one stream, container of host 1 to container of host 2, $runs runs of $time_s s; the median counts.
- Latency: $PINGS pings at 10 ms intervals, nearest-rank percentiles of the round-trip times.
- Both paths in the same run on the same lab: weft first, then the kernel's VXLAN (as it comes) with weft stopped.

$table
EOF
    )
    if [[ ! -f $doc ]]; then
        printf '# Performance\n\nFigures measured on this project'"'"'s lab; each section says how it was measured.\n' >"$doc"
    fi
    # Replace the section if it is there (up to the next "## " heading), else append it.
    awk -v section="$new_section" '
        /^## Plaintext: weft and kernel VXLAN, latest run$/ { print section; skipping = 1; done = 1; next }
        skipping && /^## / { skipping = 0; print "" }
        !skipping { print }
        END { if (!done) { print ""; print section } }
    ' "$doc" >"$workdir/performance.md"
    cp "$workdir/performance.md" "$doc"
    log "wrote $doc"
fi

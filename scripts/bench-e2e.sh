#!/usr/bin/env bash
# End-to-end throughput and latency between two containers on two namespace hosts, through weft in plaintext, weft
# encrypted (ESP-in-UDP, AES-128-GCM), weft in plaintext over its AF_XDP underlay and, in the same run on the same
# lab, the kernel's own VXLAN: the baseline weft is measured against. Ratios are to the kernel's figure of the same
# run, and af_xdp's also to weft's udp underlay (the "weft" path).
#
#   scripts/bench-e2e.sh [--time N] [--runs N] [--paths "weft esp xdp kernel"] [--write]
#     --time N    seconds per iperf3 TCP run (default 10; the 64-byte UDP runs take half)
#     --runs N    runs per measurement; the median is reported (default 3)
#     --paths P   which paths to measure, in this order (default "weft esp xdp kernel")
#     --write     also write the tables to docs/performance.md, section "End to end: weft and kernel VXLAN, latest run"
#
# Per path, container of host 1 -> container of host 2: TCP with one stream and with 8 (iperf3 -P 8), 64-byte
# frames received per second (iperf3 -u -l 22 -b 0: Ethernet 14 + IPv4 20 + UDP 8 + 22 bytes of payload; the one
# iperf3 sender on one core bounds this figure for every path alike), and ICMP round trips (ping -c 200 -i 0.01:
# p50 and p99).
# Lab "bench": hosts 198.18.0.1-2 on a 1500-MTU veth underlay, containers 198.19.0.11 and 198.19.0.21, VNI 100.
# Container MTU: 1450 for VXLAN (50 bytes of overhead), 1405 for ESP (95). Needs root. The kernel VXLAN runs as it
# comes (offloads on): with a kernel at both ends, the inner checksums it leaves to the NIC are never checked by
# anyone who minds (see docs/interop.md for why weft <-> kernel in a veth lab needs `ethtool -K ul0 tx off`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

time_s=10
runs=3
write=0
paths="weft esp xdp kernel"
while (($#)); do
    case $1 in
        --time) time_s=${2-}; shift 2 || true ;;
        --runs) runs=${2-}; shift 2 || true ;;
        --paths) paths=${2-}; shift 2 || true ;;
        --write) write=1; shift ;;
        -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
[[ -n ${paths// /} ]] || { echo "bench-e2e.sh: --paths is empty" >&2; exit 2; }
for path in $paths; do
    case $path in
        weft | esp | xdp | kernel) ;;
        *) echo "bench-e2e.sh: unknown path '$path' in --paths (known: weft esp xdp kernel)" >&2; exit 2 ;;
    esac
done
[[ $(id -u) -eq 0 ]] || { echo "bench-e2e.sh: must run as root (it creates network namespaces)" >&2; exit 1; }

LAB=${BENCH_LAB:-bench} # BENCH_LAB: another lab name, when another bench may be running
# BENCH_NODE: extra [node] lines for both weft hosts, e.g. BENCH_NODE=$'workers = 1\nbusy_poll_us = 0' to compare
# settings (say which in the write-up).
C1=$LAB-h1-blue-c1
C2=$LAB-h2-blue-c1
DST=198.19.0.21
PINGS=200
weft=${CARGO_TARGET_DIR:-$root/target}/release/weft
workdir=""
pids=()
weft_pids=()
current=""

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

# Runs "$@" $runs times; each run prints one number. Sets the globals runs_out (the numbers) and med (their median).
repeat() {
    local what=$1 r value
    shift
    runs_out=""
    for ((r = 1; r <= runs; r++)); do
        value=$("$@")
        [[ -n $value ]] || { log "$current: $what, run $r: no figure"; return 1; }
        runs_out+="$value "
        log "$current: $what, run $r of $runs: $value"
    done
    runs_out=${runs_out% }
    med=$(tr ' ' '\n' <<<"$runs_out" | median)
}

# CPU time in clock ticks: every CPU's busy time (user, nice, system, irq, softirq: not idle, iowait or steal), and
# the weft processes' user and system time (all their threads), as "machine weft_user weft_system".
cpu_ticks() {
    local pid u=0 s=0 fields
    for pid in "${weft_pids[@]}"; do
        # Fields 14 and 15 of /proc/PID/stat, counted after the command name (which may hold spaces).
        read -r -a fields < <(sed 's/^.*) //' "/proc/$pid/stat")
        u=$((u + fields[11])) s=$((s + fields[12]))
    done
    awk -v u="$u" -v s="$s" '/^cpu / { print $2 + $3 + $4 + $7 + $8, u, s; exit }' /proc/stat
}

# Gb/s received with $1 parallel TCP streams. With one stream, also appends the CPU the run cost to
# $workdir/cpu-$current: "GB received, machine CPU-s, weft user CPU-s, weft system CPU-s".
tcp_gbps() {
    local before after report
    before=$(cpu_ticks)
    report=$(ip netns exec "$C1" iperf3 -c "$DST" -t "$time_s" -P "$1" -J)
    after=$(cpu_ticks)
    if (($1 == 1)); then
        jq -r '.end.sum_received.bytes' <<<"$report" | awk -v b="$before" -v a="$after" -v hz="$(getconf CLK_TCK)" '
            { split(b, x, " "); split(a, y, " ")
              printf "%.4f %.3f %.3f %.3f\n", $1 / 1e9, (y[1] - x[1]) / hz, (y[2] - x[2]) / hz, (y[3] - x[3]) / hz }' \
            >>"$workdir/cpu-$current"
    fi
    jq '.end.sum_received.bits_per_second' <<<"$report" | awk '{ printf "%.2f", $1 / 1e9 }'
}

# CPU-seconds per GB received over the one-stream runs of the current path, from $workdir/cpu-$current: the
# machine's (everything: both iperf3, both hosts' kernels, weft), and weft's own user and system time.
cpu_per_gb() {
    awk '{ gb += $1; m += $2; u += $3; s += $4 }
        END { if (gb > 0) printf "%.2f %.2f %.2f\n", m / gb, u / gb, s / gb; else print "n/a n/a n/a" }' \
        "$workdir/cpu-$current"
}

# Thousands of 64-byte frames received per second, the sender going as fast as it can.
udp_kpps() {
    ip netns exec "$C1" iperf3 -c "$DST" -u -l 22 -b 0 -t "$(((time_s + 1) / 2))" -J \
        | jq '.end.sum_received | .bytes / 22 / .seconds' | awk '{ printf "%.0f", $1 / 1e3 }'
}

# Measures the current path into R[<path>.<metric>].
measure() {
    local rtts
    wait_for 30 "a first ping over $current" ip netns exec "$C1" ping -c 1 -W 1 "$DST"
    repeat "TCP, 1 stream (Gb/s)" tcp_gbps 1
    R[$current.tcp1]=$med R[$current.tcp1_runs]=$runs_out
    read -r "R[$current.cpu]" "R[$current.cpu_user]" "R[$current.cpu_sys]" < <(cpu_per_gb)
    log "$current: CPU-s per GB, one stream: machine ${R[$current.cpu]}, weft user ${R[$current.cpu_user]}, weft system ${R[$current.cpu_sys]}"
    repeat "TCP, 8 streams (Gb/s)" tcp_gbps 8
    R[$current.tcp8]=$med R[$current.tcp8_runs]=$runs_out
    repeat "64-byte frames (kpps)" udp_kpps
    R[$current.pps]=$med R[$current.pps_runs]=$runs_out
    rtts=$(ip netns exec "$C1" ping -n -c "$PINGS" -i 0.01 "$DST" | sed -n 's/.* time=\([0-9.]*\) ms$/\1/p')
    (($(wc -l <<<"$rtts") == PINGS)) || { log "$current: only $(wc -l <<<"$rtts") of $PINGS pings answered"; return 1; }
    R[$current.p50]=$(percentile 50 <<<"$rtts")
    R[$current.p99]=$(percentile 99 <<<"$rtts")
    log "$current: ping p50 ${R[$current.p50]} ms, p99 ${R[$current.p99]} ms"
}

# Sets both containers' MTU: the overlay MTU of the path.
container_mtu() {
    local i
    for i in 1 2; do
        ip -n "$LAB-h$i-blue-c1" link set eth0 mtu "$1"
    done
}

# Starts weft on both hosts; $1 is plaintext or encrypted (which adds the gossip control plane that agrees keys),
# $2 the underlay mode (udp or af_xdp), which is checked to be in effect.
start_weft() {
    local mode=$1 underlay=$2 i control="" encrypted=false got
    if [[ $mode == encrypted ]]; then
        encrypted=true
        if [[ ! -f $workdir/pki/ca.crt ]]; then
            "$weft" ca init --dir "$workdir/pki" --name bench >&2
            for i in 1 2; do
                "$weft" ca issue --dir "$workdir/pki" --node "h$i" >&2
            done
        fi
    fi
    for i in 1 2; do
        [[ $mode != encrypted ]] || control="[control]
ca = \"$workdir/pki/ca.crt\"
cert = \"$workdir/pki/h$i.crt\"
key = \"$workdir/pki/h$i.key\"
seeds = [\"198.18.0.1:7946\"]"
        cat >"$workdir/h$i.toml" <<EOF
[node]
name = "h$i"
underlay = "198.18.0.$i"
api_socket = "$workdir/h$i.sock"
underlay_mode = "$underlay"
${BENCH_NODE:-}

$control

[[network]]
name = "blue"
vni = 100
subnet = "198.19.0.0/24"
bridge = "br-blue"
encrypted = $encrypted
peers = ["198.18.0.$((3 - i))"]
EOF
        ip netns exec "$LAB-h$i" "$weft" run --config "$workdir/h$i.toml" >"$workdir/h$i-$mode.log" 2>&1 &
        pids+=("$!")
        weft_pids+=("$!")
    done
    for i in 1 2; do
        wait_for 10 "weft on host $i" "$weft" stats --socket "$workdir/h$i.sock" \
            || { cat "$workdir/h$i-$mode.log" >&2; exit 1; }
        got=$("$weft" stats --socket "$workdir/h$i.sock" --json | jq -r '.underlay.mode')
        [[ $got == "$underlay" ]] || { log "host $i runs underlay $got, not $underlay"; cat "$workdir/h$i-$mode.log" >&2; exit 1; }
    done
}

stop_weft() {
    local pid
    for pid in "${weft_pids[@]}"; do
        stop_pid "$pid"
    done
    weft_pids=()
}

start_kernel() {
    local i
    for i in 1 2; do
        ip -n "$LAB-h$i" link add vx100 type vxlan id 100 dstport 4789 local "198.18.0.$i" dev ul0 nolearning
        ip -n "$LAB-h$i" link set vx100 mtu 1450 master br-blue up
        ip netns exec "$LAB-h$i" bridge fdb append 00:00:00:00:00:00 dev vx100 dst "198.18.0.$((3 - i))"
    done
}

stop_kernel() {
    local i
    for i in 1 2; do
        ip -n "$LAB-h$i" link del vx100
    done
}

section "build: weft (release)"
cargo build --release -p weft >&2

section "lab"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
workdir=$(mktemp -d /tmp/weft-bench.XXXXXX)
"$root/scripts/lab.sh" down "$LAB" >&2
"$root/scripts/lab.sh" up "$LAB" --hosts 2 --containers 1 >&2
ip netns exec "$C2" iperf3 -s >"$workdir/iperf3-server.log" 2>&1 &
pids+=("$!")
wait_for 5 "iperf3 to listen" bash -c "ip netns exec $C2 ss -Htln 'sport = :5201' | grep -q ."

declare -A R
declare -A NAME=([weft]="weft, plaintext VXLAN" [esp]="weft, encrypted (ESP, AES-128-GCM)"
    [xdp]="weft, plaintext, af_xdp underlay" [kernel]="kernel VXLAN")
for current in $paths; do
    section "${NAME[$current]}"
    case $current in
        weft) container_mtu 1450; start_weft plaintext udp; measure; stop_weft ;;
        esp) container_mtu 1405; start_weft encrypted udp; measure; stop_weft ;;
        xdp) container_mtu 1450; start_weft plaintext af_xdp; measure; stop_weft ;;
        kernel) container_mtu 1450; start_kernel; measure; stop_kernel ;;
    esac
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b > 0) printf "%.2f", a / b; else print "n/a" }'; }
table="| path | TCP, 1 stream | TCP, 8 streams | 64-byte frames | ping p50 | ping p99 |
| --- | --- | --- | --- | --- | --- |"
for path in $paths; do
    table+="
| ${NAME[$path]} | ${R[$path.tcp1]} Gb/s | ${R[$path.tcp8]} Gb/s | ${R[$path.pps]} kpps | ${R[$path.p50]} ms | ${R[$path.p99]} ms |"
done
if [[ " $paths " == *" kernel "* ]]; then
    for path in $paths; do
        [[ $path != kernel ]] || continue
        table+="
| ${NAME[$path]} / kernel | $(ratio "${R[$path.tcp1]}" "${R[kernel.tcp1]}") | $(ratio "${R[$path.tcp8]}" "${R[kernel.tcp8]}") | $(ratio "${R[$path.pps]}" "${R[kernel.pps]}") | $(ratio "${R[$path.p50]}" "${R[kernel.p50]}") | $(ratio "${R[$path.p99]}" "${R[kernel.p99]}") |"
    done
fi
if [[ " $paths " == *" weft "* && " $paths " == *" xdp "* ]]; then
    table+="
| af_xdp underlay / udp underlay | $(ratio "${R[xdp.tcp1]}" "${R[weft.tcp1]}") | $(ratio "${R[xdp.tcp8]}" "${R[weft.tcp8]}") | $(ratio "${R[xdp.pps]}" "${R[weft.pps]}") | $(ratio "${R[xdp.p50]}" "${R[weft.p50]}") | $(ratio "${R[xdp.p99]}" "${R[weft.p99]}") |"
fi
runs_table="| path | TCP, 1 stream (Gb/s) | TCP, 8 streams (Gb/s) | 64-byte frames (kpps) |
| --- | --- | --- | --- |"
for path in $paths; do
    runs_table+="
| ${NAME[$path]} | ${R[$path.tcp1_runs]} | ${R[$path.tcp8_runs]} | ${R[$path.pps_runs]} |"
done
cpu_table="| path | machine | weft, user | weft, system |
| --- | --- | --- | --- |"
for path in $paths; do
    if [[ $path == kernel ]]; then
        cpu_table+="
| ${NAME[$path]} | ${R[$path.cpu]} | | |"
    else
        cpu_table+="
| ${NAME[$path]} | ${R[$path.cpu]} | ${R[$path.cpu_user]} | ${R[$path.cpu_sys]} |"
    fi
done
section "results: medians of $runs runs of ${time_s}s (UDP: $(((time_s + 1) / 2))s), $PINGS pings per path"
printf '%s\n\nEvery run:\n%s\n\nCPU-seconds per GB received, one TCP stream (all runs):\n%s\n' "$table" "$runs_table" "$cpu_table"

if ((write)); then
    doc=$root/docs/performance.md
    cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
    new_section="## End to end: weft and kernel VXLAN, latest run

- Measured by \`scripts/bench-e2e.sh --time $time_s --runs $runs --paths \"$paths\"\` on $(date -u +%Y-%m-%d), at
  commit $(git -C "$root" rev-parse --short HEAD).
- Machine: $(nproc) cores (${cpu:-unknown CPU}), kernel $(uname -r); load average before the run: $load_before.
- Lab: two namespace hosts on a 1500-MTU veth underlay, one container each, VNI 100. Container MTU 1450 for VXLAN,
  1405 for ESP.
- TCP: iperf3 with 1 and with 8 streams, container of host 1 to container of host 2, $runs runs of $time_s s each;
  the median counts. UDP: 64-byte frames (iperf3 -u -l 22 -b 0) received per second, $runs runs of
  $(((time_s + 1) / 2)) s; the single iperf3 sender bounds this figure for every path alike.
- Latency: $PINGS pings at 10 ms intervals, nearest-rank percentiles of the round-trip times.
- All paths in the same run on the same lab, one after the other, each with the others stopped. The af_xdp underlay
  runs in copy mode on veth (veth has no zero-copy AF_XDP); see docs/af_xdp.md.

$table

Every run:

$runs_table

CPU-seconds per GB received with one TCP stream, over all its runs: the machine's busy time (both iperf3, both
hosts' kernels, weft; from /proc/stat) and the two weft processes' own user and system time (/proc/PID/stat). When
the cores are saturated, a path's throughput is the cores over its machine figure.

$cpu_table"
    if [[ ! -f $doc ]]; then
        printf '# Performance\n\nFigures measured on this project'"'"'s lab; each section says how it was measured.\n' >"$doc"
    fi
    # Replace the section if it is there (up to the next "## " heading), else append it.
    awk -v section="$new_section" '
        /^## End to end: weft and kernel VXLAN, latest run$/ { print section; skipping = 1; done = 1; next }
        skipping && /^## / { skipping = 0; print "" }
        !skipping { print }
        END { if (!done) { print ""; print section } }
    ' "$doc" >"$workdir/performance.md"
    cp "$workdir/performance.md" "$doc"
    log "wrote $doc"
fi

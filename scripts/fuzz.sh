#!/usr/bin/env bash
# Fuzz weft's parsers and state machines with cargo fuzz (libFuzzer + AddressSanitizer). docs/fuzzing.md has the
# targets, their invariants and how to reproduce a crash.
#
#   scripts/fuzz.sh [--seconds N] [--jobs N] [--all | TARGET...]   the short run CI does: each target N s
#                                                                  (default 20)
#   scripts/fuzz.sh --long [--seconds N] [--all | TARGET...]       hours: each target N s (default 3600) on
#                                                                  every core, carrying on past findings
#   scripts/fuzz.sh --build-only [--all | TARGET...]               only build (test.sh builds while the namespace
#                                                                  suite runs, then fuzzes)
#   scripts/fuzz.sh --list                                         the targets
#
#     --jobs N   short run: targets fuzzed at once, one core each (default: the number of cores)
#     TARGET     only these targets. Without any, every target but `config` and `cni`: those link the whole
#                weft crate, whose instrumented build takes minutes more. --all includes them (test.sh does).
#
# Builds in release mode with debug assertions and overflow checks. cargo-fuzz needs nightly-only compiler flags
# (-Zsanitizer=address); RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them, so no nightly is needed.
# cargo-fuzz is installed from crates.io if missing; libfuzzer-sys builds libFuzzer with the system C++ compiler
# (scripts/setup.sh installs clang).
#
# Each target's corpus lives in fuzz/corpus/<target> (not versioned; seeded from fuzz/seeds/<target>) and grows
# from run to run. Findings go to fuzz/artifacts/<target>/, logs to fuzz/target/fuzz-logs/.
# Exit status: 0 when nothing was found, 1 when a target crashed, leaked, hung or ran out of memory (the reproducer's
# path and bytes are printed), 2 on a usage or build error.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
fuzz_dir=$root/fuzz

say() { printf 'fuzz: %s\n' "$*"; }
die() { printf 'fuzz: %s\n' "$*" >&2; exit 2; }

all_targets() {
    sed -n 's/^name = "\(.*\)"$/\1/p' "$fuzz_dir/Cargo.toml" | grep -v '^weft-fuzz$'
}

cpus=$(nproc 2>/dev/null || echo 1)
seconds=""
long=0
build_only=0
parallel=$cpus
targets=()
with_config=0
while (($#)); do
    case $1 in
        --seconds)
            [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || die "--seconds needs a positive number of seconds"
            seconds=$2; shift 2 ;;
        --jobs)
            [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || die "--jobs needs a positive number"
            parallel=$2; shift 2 ;;
        --long) long=1; shift ;;
        --build-only) build_only=1; shift ;;
        --all) with_config=1; shift ;;
        --list) all_targets; exit 0 ;;
        -h | --help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option '$1' (try --help)" ;;
        *) targets+=("$1"); shift ;;
    esac
done
mapfile -t known < <(all_targets)
if ((${#targets[@]} == 0)); then
    for t in "${known[@]}"; do
        [[ ($t != config && $t != cni) || $with_config == 1 ]] && targets+=("$t")
    done
elif ((with_config)); then
    die "--all and target names do not go together"
fi
for t in "${targets[@]}"; do
    printf '%s\n' "${known[@]}" | grep -qx -- "$t" || die "unknown target '$t'; targets: ${known[*]}"
done
if ((long)); then
    seconds=${seconds:-3600}
    parallel=1
else
    seconds=${seconds:-20}
fi

# The config and cni targets need the weft crate, behind the fuzz crate's `config` feature. Every cargo call of this
# run passes the same features, so that switching between targets never rebuilds.
features=()
printf '%s\n' "${targets[@]}" | grep -qxE 'config|cni' && features=(--features config)

command -v c++ >/dev/null 2>&1 || command -v clang++ >/dev/null 2>&1 ||
    die "no C++ compiler to build libFuzzer with: run scripts/setup.sh as root"
if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version '^0.13' || die "cannot install cargo-fuzz"
fi
export RUSTC_BOOTSTRAP=1

say "building ${#targets[@]} target(s) (release, debug assertions, AddressSanitizer)"
build_start=$SECONDS
build_args=(--release --debug-assertions "${features[@]}")
# All targets at once: one cargo invocation is faster than one per target, even for a few of them.
(cd "$fuzz_dir" && cargo fuzz build "${build_args[@]}") || die "build failed"
build_secs=$((SECONDS - build_start))
say "built in ${build_secs} s"
((build_only)) && exit 0

logs=$fuzz_dir/target/fuzz-logs
mkdir -p "$logs"
# Findings are the artifacts newer than this.
started=$logs/.started
touch "$started"

# Writes the seeds of a target into its corpus: `*.hex` files as the bytes they spell, other files as they are.
seed_corpus() {
    local target=$1 corpus=$2 seed name hex
    [[ -d $fuzz_dir/seeds/$target ]] || return 0
    for seed in "$fuzz_dir/seeds/$target"/*; do
        [[ -f $seed ]] || continue
        name=$(basename "$seed")
        case $name in
            *.hex)
                hex=$(sed 's/#.*//' "$seed" | tr -d ' \t\r\n')
                [[ $hex =~ ^([0-9a-fA-F]{2})*$ ]] || die "$seed: not an even number of hex digits"
                printf '%b' "$(printf '%s' "$hex" | sed 's/../\\x&/g')" >"$corpus/seed-${name%.hex}"
                ;;
            *) cp "$seed" "$corpus/seed-$name" ;;
        esac
    done
}

# Fuzzes one target; writes its log and exit status next to each other.
run_target() {
    local target=$1 corpus=$fuzz_dir/corpus/$1 artifacts=$fuzz_dir/artifacts/$1
    mkdir -p "$corpus" "$artifacts"
    seed_corpus "$target" "$corpus"
    local flags=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    # The stateful targets read their input as a list of operations: let inputs be long from the start, rather than
    # growing from a few bytes over the first minutes.
    case $target in forwarder | gossip_node) flags+=(-len_control=0) ;; esac
    if ((long)); then
        # Fork mode: one worker per core, and a finding does not stop the run.
        flags+=(-fork="$cpus" -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
    fi
    local rc=0
    (cd "$fuzz_dir" && cargo fuzz run "${build_args[@]}" "$target" "$corpus" -- \
        -artifact_prefix="$artifacts/" "${flags[@]}") >"$logs/$target.log" 2>&1 || rc=$?
    echo "$rc" >"$logs/$target.rc"
}

# From a libFuzzer log: runs, exec/s or cov. The final `stat::` lines are missing in fork mode (and after a crash);
# then the last progress line (`#N ... cov: N ... exec/s: N`) stands in.
stat() {
    local log=$1 name=$2 value=""
    case $name in
        runs) value=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
            [[ -n $value ]] || value=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#') ;;
        exec/s) value=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
            [[ -n $value ]] || value=$(grep -o 'exec/s: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$') ;;
        cov) value=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$') ;;
    esac
    echo "${value:-?}"
}

say "fuzzing each target for ${seconds} s$( ((long)) && echo " on $cpus core(s)" || echo ", $parallel at once")"
run_start=$SECONDS
for t in "${targets[@]}"; do
    rm -f "$logs/$t.rc"
    while (($(jobs -rp | wc -l) >= parallel)); do wait -n || true; done
    run_target "$t" &
done
wait
run_secs=$((SECONDS - run_start))

printf '\n%-16s %10s %10s %7s %7s  %s\n' target runs exec/s cov corpus result
failed=()
for t in "${targets[@]}"; do
    log=$logs/$t.log
    rc=$(cat "$logs/$t.rc" 2>/dev/null || echo 2)
    corpus_size=$(find "$fuzz_dir/corpus/$t" -type f | wc -l)
    result=ok
    ((rc == 0)) || { result="FAILED (exit $rc)"; failed+=("$t"); }
    printf '%-16s %10s %10s %7s %7s  %s\n' "$t" "$(stat "$log" runs)" \
        "$(stat "$log" exec/s)" "$(stat "$log" cov)" "$corpus_size" "$result"
done
printf '\nbuild %d s, fuzzing %d s, total %d s\n' "$build_secs" "$run_secs" "$((build_secs + run_secs))"

# Every artifact this run wrote is a finding; in long mode a target carries on past them and may still exit 0.
findings() { find "$fuzz_dir/artifacts/$1" -type f -newer "$started" 2>/dev/null | sort; }
for t in "${targets[@]}"; do
    if [[ -n $(findings "$t") ]] && ! printf '%s\n' "${failed[@]}" | grep -qx -- "$t"; then
        failed+=("$t")
    fi
done
((${#failed[@]} == 0)) && exit 0

host=$(rustc -vV | sed -n 's/^host: //p')
for t in "${failed[@]}"; do
    log=$logs/$t.log
    printf '\n===== %s: log %s =====\n' "$t" "${log#"$root"/}"
    units=$(findings "$t")
    if [[ -z $units ]]; then
        # Failed without leaving an input (a build or startup problem): the log's end says why.
        tail -20 "$log"
        continue
    fi
    while read -r unit; do
        printf 'reproducer: %s\n' "${unit#"$root"/}"
        printf '  bytes: %s\n' "$(od -An -tx1 -v "$unit" | tr -d ' \n' | head -c 2000)"
        # Run it once more for the message: in fork mode the log does not have it.
        (timeout 60 "$fuzz_dir/target/$host/release/$t" "$unit" 2>&1 || true) |
            grep -E -A3 -m1 "panicked at|ERROR: AddressSanitizer|ERROR: LeakSanitizer|ERROR: libFuzzer: (timeout|out-of-memory)" |
            sed 's/^/  | /'
        printf '  rerun: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run%s %s %s)\n' \
            "${features[*]:+ ${features[*]}}" "$t" "${unit#"$fuzz_dir"/}"
    done <<<"$units"
done
exit 1

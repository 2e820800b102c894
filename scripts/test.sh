#!/usr/bin/env bash
# weft's whole test run, as CI does it:
#   setup (as root) → rustfmt check → clippy → release build of weft → unit and property tests
#   → the namespace suite in integration/ (as root, one test at a time, ignored tests included), while the fuzz
#     targets build at the lowest CPU priority → every fuzz target for 5 s (scripts/fuzz.sh)
#
#   scripts/test.sh [--quick] [--only FILTER]
#     --quick        skip setup.sh, clippy and the fuzz run
#     --only FILTER  run only the integration tests whose name contains FILTER
#
# The namespace suite needs root; as another user this script fails there, after the other steps.
# WEFT_BIN names the weft binary the suite runs (default: target/release/weft, built here).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

quick=0
only=()
while (($#)); do
    case $1 in
        --quick) quick=1; shift ;;
        --only)
            [[ $# -ge 2 && -n $2 ]] || { echo "test.sh: --only needs a test name filter" >&2; exit 2; }
            only=("$2"); shift 2 ;;
        -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "test.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done

is_root=0
[[ $(id -u) -eq 0 ]] && is_root=1

section() { printf '\n===== %s =====\n' "$*"; }

if ((quick)); then
    section "setup: skipped (--quick)"
elif ((is_root)); then
    section "setup"
    scripts/setup.sh
else
    section "setup: skipped (not root)"
fi

section "rustfmt"
cargo fmt --all -- --check

if ((quick)); then
    section "clippy: skipped (--quick)"
else
    section "clippy"
    cargo clippy --workspace --all-targets -- -D warnings
fi

section "build: weft (release)"
cargo build --release -p weft

section "unit and property tests"
cargo test --workspace --exclude weft-integration

section "namespace suite${only:+ (only: ${only[0]})}"
if ((!is_root)); then
    echo "test.sh: the namespace suite needs root (it creates network namespaces); run: sudo scripts/test.sh" >&2
    exit 1
fi
export WEFT_BIN=${WEFT_BIN:-$root/target/release/weft}
echo "WEFT_BIN=$WEFT_BIN"
suite=(cargo test -p weft-integration --release --test suite)
"${suite[@]}" --no-run

# The suite spends most of its time waiting on namespaces, timers and loss; the instrumented fuzz build (minutes of
# CPU) fills those gaps at the lowest priority, so the tests still get the cores the moment they want them.
fuzz_build=""
if ((!quick)); then
    setsid nice -n 19 scripts/fuzz.sh --build-only --all >"$root/target/fuzz-build.log" 2>&1 &
    fuzz_build=$!
    # Ends the build's process group, and the PID itself in case setsid has not run yet.
    # shellcheck disable=SC2064 # the PID is meant to be expanded now
    trap "kill -- -$fuzz_build $fuzz_build 2>/dev/null || true" EXIT
fi

before=$(ip netns list | awk '{ print $1 }' | sort)
"${suite[@]}" -- --include-ignored --test-threads=1 "${only[@]}"

# Every test deletes what it creates; say so loudly if one did not. On a shared machine someone else may have made
# them meanwhile, so only CI (where nothing else runs) fails for it.
after=$(ip netns list | awk '{ print $1 }' | sort)
leaked=$(comm -13 <(echo "$before") <(echo "$after") | sed '/^$/d')
if [[ -n $leaked ]]; then
    echo "test.sh: namespaces appeared during the namespace suite and are still there: ${leaked//$'\n'/ }" >&2
    [[ ${CI:-} != true ]] || exit 1
fi

if ((quick)); then
    section "fuzz: skipped (--quick)"
else
    # --all: config and cni too (they link the weft crate, which makes the instrumented build minutes longer).
    section "fuzz: every target briefly (scripts/fuzz.sh --long runs them for hours)"
    if ! wait "$fuzz_build"; then
        tail -40 "$root/target/fuzz-build.log" >&2
        echo "test.sh: the fuzz build failed (log: target/fuzz-build.log)" >&2
        exit 1
    fi
    trap - EXIT
    sed -n 's/^fuzz: built in/fuzz: built (beside the namespace suite) in/p' "$root/target/fuzz-build.log"
    scripts/fuzz.sh --seconds 5 --all
fi

section "all passed"

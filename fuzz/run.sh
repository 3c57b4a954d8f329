#!/usr/bin/env bash
# Build and run every fuzz target, one at a time, for SECONDS each (default 60).
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). On a stable toolchain it runs
# with RUSTC_BOOTSTRAP=1, because cargo-fuzz passes nightly-only flags. The address
# sanitizer is used when it works (FUZZ_SANITIZER=address); the default is none, which
# still catches panics, overflows (debug assertions are on), hangs and memory blow-ups.
# Exits non-zero as soon as a target crashes, hangs or runs out of memory; the input
# that did it is left in fuzz/artifacts/TARGET/.
set -euo pipefail

cd "$(dirname "$0")"
seconds="${1:-60}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

export RUSTC_BOOTSTRAP="${RUSTC_BOOTSTRAP:-1}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
sanitizer="${FUZZ_SANITIZER:-none}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

for t in "${targets[@]}"; do
    cargo fuzz build --release --debug-assertions --sanitizer "$sanitizer" "$t"
done

status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    echo "=== $t: ${seconds}s"
    # -timeout: one input taking longer than 10 s is a hang; -rss_limit_mb: memory cap.
    # -print_final_stats: executions and coverage for BENCHMARKS.md.
    if ! cargo fuzz run --release --debug-assertions --sanitizer "$sanitizer" "$t" \
        "corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        2>&1 | tee "artifacts/$t/last-run.log"; then
        echo "!!! $t FAILED: see fuzz/artifacts/$t/" >&2
        status=1
        break
    fi
    echo "=== $t: corpus $(find "corpus/$t" -type f | wc -l) files"
done
exit "$status"

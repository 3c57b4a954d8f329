#!/usr/bin/env bash
# The escalation property test (tests/it/invariants/escalation_props.rs) at length: TOTAL
# random cases on one backend, as PARALLEL loops of CHUNK-case runs, each run with its own
# random seed (printed, so a failure can be replayed with PROPTEST_RNG_SEED). The test
# binary is built once in release mode. Every chunk's seed, case count, exit code and time
# go to LOG; the first failing chunk's output is kept beside it and stops that loop.
#
#   bench/property-long.sh sqlite                       # 10,000 cases, 1 loop of 1,000-case chunks
#   TOTAL=10000 PARALLEL=4 CHUNK=500 bench/property-long.sh postgres
#
# PostgreSQL cases wait on the server more than they compute, so loops in parallel help
# there; SQLite cases are CPU-bound on a small machine, so one loop is enough.
# Needs PostgreSQL at 127.0.0.1:5432 for the postgres backend
# (BENCH_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres).
set -euo pipefail
cd "$(dirname "$0")/.."

backend="${1:?usage: bench/property-long.sh sqlite|postgres}"
TOTAL="${TOTAL:-10000}"
PARALLEL="${PARALLEL:-1}"
CHUNK="${CHUNK:-1000}"
LOG="${LOG:-property-$backend.log}"
export AIRLOCK_TEST_POSTGRES_URL="${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

BIN="$(cargo test --release --test it --no-run --message-format=json 2>/dev/null \
  | grep -o '"executable":"[^"]*"' | grep '/it-' | head -n1 | cut -d'"' -f4)"
[ -x "$BIN" ] || { echo "could not build the test binary" >&2; exit 1; }

per_loop=$(( (TOTAL + PARALLEL - 1) / PARALLEL ))
loop() {
  local done_cases=0
  while [ "$done_cases" -lt "$per_loop" ]; do
    local start end out rc seed cases rejected
    start=$(date +%s)
    rc=0
    out=$(PROPTEST_CASES="$CHUNK" "$BIN" "invariants::escalation_props::$backend" \
      --test-threads 1 --nocapture 2>&1) || rc=$?
    end=$(date +%s)
    seed=$(echo "$out" | grep -o 'PROPTEST_RNG_SEED=[0-9]*' | head -n1)
    cases=$(echo "$out" | grep -o 'cases: [0-9]*' | head -n1)
    rejected=$(echo "$out" | grep -o '[0-9]* cases rejected after a stall' | head -n1)
    echo "$(date -u +%FT%TZ) loop $1 $seed $cases ${rejected:-} rc=$rc $((end - start))s" >> "$LOG"
    if [ "$rc" -ne 0 ]; then
      echo "$out" > "$LOG.failure-$start"
      return 1
    fi
    done_cases=$((done_cases + CHUNK))
  done
}

pids=()
for i in $(seq 1 "$PARALLEL"); do
  loop "$i" &
  pids+=("$!")
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
passed=$(grep -c 'rc=0' "$LOG" || true)
echo "$backend: $passed chunks of $CHUNK cases passed; see $LOG" >&2
exit "$status"

#!/usr/bin/env bash
# Load benchmark of the audited token endpoint (POST /envs/staging/token,
# client_credentials, client_secret_basic) on SQLite and PostgreSQL at 16 and 64
# concurrent connections. Targets 127.0.0.1 only; every run stops by itself.
#
#   bench/token-load.sh                # both backends, 16 and 64 clients, 15 s each
#   DURATION=30 BACKENDS=sqlite bench/token-load.sh
#   CEILING=1 ROUNDS=3 BACKENDS=sqlite CONNECTIONS=64 bench/token-load.sh
#
# CEILING=1 also starts the no-storage reference server of bench/ceiling/ (same endpoint,
# same Ed25519 JWT; no store, no audit, no secret check) and, right after each Airlock
# measurement, measures it with the same wrk script, clients and duration, then prints
# Airlock's rate as a share of it. ROUNDS (default 1) repeats each pair; the machine is
# shared, so adjacent pairs and the median of several are what to compare. Issue 9 asks
# that SQLite at 64 clients reach at least half of the ceiling.
#
# Needs: wrk (installed from Debian if missing), PostgreSQL at 127.0.0.1:5432 for the
# postgres runs (BENCH_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-15}"
CONNECTIONS="${CONNECTIONS:-16 64}"
BACKENDS="${BACKENDS:-sqlite postgres}"
PG_ADMIN="${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
PORT="${PORT:-18080}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
CEILING="${CEILING:-0}"
CEILING_PORT="${CEILING_PORT:-18081}"
CEILING_TARGET_DIR="${CEILING_TARGET_DIR:-bench/ceiling/target}"
ROUNDS="${ROUNDS:-1}"

if ! command -v wrk >/dev/null; then
  echo "bench: installing wrk" >&2
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --bin airlock >&2
BIN="$TARGET_DIR/release/airlock"
if [ "$CEILING" = 1 ]; then
  # Its own package and lock file (the same crate versions as Airlock's); --locked keeps them.
  cargo build --release --locked --manifest-path bench/ceiling/Cargo.toml --target-dir "$CEILING_TARGET_DIR" >&2
  CEILING_BIN="$CEILING_TARGET_DIR/release/airlock-bench-ceiling"
fi

WORK="$(mktemp -d)"
SERVER_PID=""
CEILING_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  [ -n "$CEILING_PID" ] && kill "$CEILING_PID" 2>/dev/null && wait "$CEILING_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = os.getenv("BENCH_AUTH")
wrk.body = "grant_type=client_credentials&scope=db%3Aread"
local non200 = 0
response = function(status, headers, body)
  if status ~= 200 then non200 = non200 + 1 end
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%.0f p50_ms=%.2f p99_ms=%.2f requests=%d errors=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout))
end
LUA

# CPU time (user + system, in clock ticks) the process $1 has used so far.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
CLK_TCK="$(getconf CLK_TCK)"

# One measurement: `wrk` at $2 clients against the token endpoint on port $1, served by
# process $3; the RESULT line, plus the server's CPU time per request. On a shared
# machine the CPU time per token moves much less than the rate does.
measure() {
  local before line requests after
  before="$(cpu_ticks "$3")"
  line="$(wrk -t2 -c"$2" -d"${DURATION}s" --timeout 5s -s "$WORK/post.lua" \
    "http://127.0.0.1:$1/envs/staging/token" | grep '^RESULT')"
  after="$(cpu_ticks "$3")"
  requests="$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$line")"
  echo "$line $(awk -v t="$((after - before))" -v hz="$CLK_TCK" -v n="$requests" \
    'BEGIN { printf "server_cpu_us_per_token=%.1f", (n > 0 ? t * 1e6 / hz / n : 0) }')"
}

# The rps=N figure of a RESULT line.
rps_of() { sed -n 's/.*rps=\([0-9]*\).*/\1/p' <<<"$1"; }

# Each backend's ratios to the ceiling, by clients: "sqlite:64" -> " 0.55 0.56".
declare -A RATIOS=()

run_backend() {
  local backend="$1" db_url
  case "$backend" in
    sqlite) db_url="sqlite://$WORK/$backend/airlock.db" ;;
    postgres)
      local name="airlock_bench_$$"
      psql "$PG_ADMIN" -qc "drop database if exists $name with (force)" -c "create database $name"
      db_url="$(python3 -c 'import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p._replace(path="/"+sys.argv[2]).geturl())' "$PG_ADMIN" "$name")"
      ;;
  esac
  mkdir -p "$WORK/$backend"
  export AIRLOCK_DATA_DIR="$WORK/$backend" AIRLOCK_DATABASE_URL="$db_url"
  export AIRLOCK_LISTEN="127.0.0.1:$PORT" AIRLOCK_PUBLIC_URL="http://127.0.0.1:$PORT"
  export AIRLOCK_LOG="airlock=warn,tower_http=warn" AIRLOCK_DATABASE__MAX_CONNECTIONS=16
  "$BIN" migrate >/dev/null 2>&1
  local creds id secret
  creds="$("$BIN" agent create --env staging --name bench --scope db:read --json 2>/dev/null)"
  id="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["client_id"])' <<<"$creds")"
  secret="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])' <<<"$creds")"
  export BENCH_AUTH="Basic $(printf '%s:%s' "$id" "$secret" | base64 -w0)"
  "$BIN" serve >"$WORK/$backend/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.2; done
  # Warm-up.
  wrk -t2 -c16 -d3s -s "$WORK/post.lua" "http://127.0.0.1:$PORT/envs/staging/token" >/dev/null
  if [ "$CEILING" = 1 ]; then
    # The same wrk script, hence the same Authorization header, which it decodes but
    # does not check.
    wrk -t2 -c16 -d3s -s "$WORK/post.lua" "http://127.0.0.1:$CEILING_PORT/envs/staging/token" >/dev/null
  fi
  for round in $(seq 1 "$ROUNDS"); do
    for c in $CONNECTIONS; do
      local line ours ceiling ratio
      line="$(measure "$PORT" "$c" "$SERVER_PID")"
      echo "$backend c=$c ${line#RESULT }"
      [ "$CEILING" = 1 ] || continue
      ours="$(rps_of "$line")"
      line="$(measure "$CEILING_PORT" "$c" "$CEILING_PID")"
      echo "ceiling c=$c ${line#RESULT }"
      ceiling="$(rps_of "$line")"
      ratio="$(awk -v a="$ours" -v b="$ceiling" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')"
      echo "ratio $backend/ceiling c=$c round=$round $ratio"
      RATIOS["$backend:$c"]+=" $ratio"
    done
  done
  local rss
  rss="$(awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status" 2>/dev/null || echo 0)"
  echo "$backend peak_rss_kib=$rss"
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
  # Every returned token must be in the audit trail, and the chain must verify.
  "$BIN" audit verify
  if [ "$backend" = postgres ]; then psql "$PG_ADMIN" -qc "drop database if exists airlock_bench_$$ with (force)"; fi
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, duration ${DURATION}s, wrk -t2, $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$CEILING" = 1 ]; then
  "$CEILING_BIN" "127.0.0.1:$CEILING_PORT" "http://127.0.0.1:$CEILING_PORT" >"$WORK/ceiling.log" 2>&1 &
  CEILING_PID=$!
  for _ in $(seq 1 50); do
    curl -s -o /dev/null -X POST "http://127.0.0.1:$CEILING_PORT/envs/staging/token" && break
    sleep 0.2
  done
fi
for b in $BACKENDS; do run_backend "$b"; done
if [ "$CEILING" = 1 ]; then
  echo "ceiling peak_rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$CEILING_PID/status" 2>/dev/null || echo 0)"
  kill "$CEILING_PID"; wait "$CEILING_PID" 2>/dev/null || true; CEILING_PID=""
  for key in "${!RATIOS[@]}"; do
    # shellcheck disable=SC2086 # one word per ratio
    echo "median ratio ${key%%:*}/ceiling c=${key#*:} $(printf '%s\n' ${RATIOS[$key]} | sort -n \
      | awk '{ r[NR] = $1 } END { printf "%.2f", (NR % 2 ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2) }') of${RATIOS[$key]}"
  done
  echo "load average $(cut -d' ' -f1-3 /proc/loadavg)"
fi

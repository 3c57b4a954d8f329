#!/usr/bin/env bash
# The agent token endpoint (POST /envs/staging/token, client_credentials) while 32
# clients hammer the login endpoint (POST /v1/sessions) with wrong passwords, beside the
# same figures without the flood, in one run (issue 3). Two server configurations, and a control:
#
#   throttled    default settings: failed sign-ins are throttled per account and per
#                client address (all load comes from 127.0.0.1, so the per-address
#                throttle answers most of the flood with a cheap 429);
#   unthrottled  AIRLOCK_AUTH__THROTTLE_FREE_FAILURES=1000000000: every attempt costs a
#                full Argon2id verification, and only the verification semaphore
#                (auth.max_concurrent_password_checks, default 1) protects the rest;
#   control      not a login flood: the same 32 connections on GET /healthz (no store,
#                no hashing), to show what any flood of cheap requests costs when the
#                server and both load generators share the machine's cores.
#
# For each backend, configuration and token-endpoint concurrency: an idle run, then a
# run with the flood going for the whole window. Targets: p99 under the flood at most 3x
# the idle p99, throughput at least half the idle throughput. Targets 127.0.0.1 only;
# every run stops by itself.
#
#   bench/login-flood.sh                     # SQLite and PostgreSQL, 16 and 64 clients, 12 s
#   DURATION=15 CONNECTIONS=64 BACKENDS=sqlite bench/login-flood.sh
#
# The flood signs in as a real account, "alice" (created with `airlock admin bootstrap`),
# with a different wrong password each time. FLOOD_USERNAME=random uses a random unknown
# username per request instead (same Argon2id work, by design; such refusals are audited
# one by one only up to a per-address budget, then summarised).
# Other knobs: FLOOD_CONNECTIONS (32), CONFIGS ("throttled unthrottled control"), PORT,
# BENCH_POSTGRES_URL, CARGO_TARGET_DIR, KEEP_WORK=1 (keep the temporary directory with
# the server logs).
# Needs: wrk (installed from Debian if missing), PostgreSQL at 127.0.0.1:5432 for the
# postgres runs. Exits non-zero if a target is missed.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-12}"
CONNECTIONS="${CONNECTIONS:-16 64}"
FLOOD_CONNECTIONS="${FLOOD_CONNECTIONS:-32}"
export FLOOD_USERNAME="${FLOOD_USERNAME:-alice}"
BACKENDS="${BACKENDS:-sqlite postgres}"
CONFIGS="${CONFIGS:-throttled unthrottled control}"
PG_ADMIN="${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
PORT="${PORT:-18081}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BASE="http://127.0.0.1:$PORT"

if ! command -v wrk >/dev/null; then
  echo "bench: installing wrk" >&2
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --bin airlock >&2
BIN="$TARGET_DIR/release/airlock"

pg() { PGOPTIONS="--client-min-messages=warning" psql "$PG_ADMIN" -q "$@"; }

WORK="$(mktemp -d)"
SERVER_PID=""
FLOOD_PID=""
PG_DB=""
stop() { # stop PID: stop one process this script started
  [ -n "$1" ] || return 0
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  stop "$FLOOD_PID"; FLOOD_PID=""
  stop "$SERVER_PID"; SERVER_PID=""
  if [ -n "$PG_DB" ]; then pg -c "drop database if exists $PG_DB with (force)" >/dev/null 2>&1 || true; fi
  if [ -n "${KEEP_WORK:-}" ]; then echo "bench: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Token endpoint: same request as bench/token-load.sh.
cat > "$WORK/token.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = os.getenv("BENCH_AUTH")
wrk.body = "grant_type=client_credentials&scope=db%3Aread"
done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%.0f p50_ms=%.2f p99_ms=%.2f requests=%d errors=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout))
end
LUA

# Login flood: wrong passwords, JSON body, status codes counted per thread.
cat > "$WORK/flood.lua" <<'LUA'
local fixed = os.getenv("FLOOD_USERNAME")
if fixed == "random" then fixed = nil end
local control = os.getenv("FLOOD_CONTROL") == "1"
local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  c200, c401, c429, c503, other = 0, 0, 0, 0, 0
end
request = function()
  if control then return wrk.format("GET", "/healthz") end
  local user = fixed or string.format("flood-%08x", math.random(0, 0x7fffffff))
  local body = string.format('{"username":"%s","password":"wrong-password-%08x"}',
    user, math.random(0, 0x7fffffff))
  return wrk.format("POST", "/v1/sessions", { ["Content-Type"] = "application/json" }, body)
end
response = function(status, headers, body)
  if status == 200 then c200 = c200 + 1
  elseif status == 401 then c401 = c401 + 1
  elseif status == 429 then c429 = c429 + 1
  elseif status == 503 then c503 = c503 + 1
  else other = other + 1 end
end
done = function(summary, latency, requests)
  local s200, s401, s429, s503, sother = 0, 0, 0, 0, 0
  for _, t in ipairs(threads) do
    s200 = s200 + t:get("c200"); s401 = s401 + t:get("c401"); s429 = s429 + t:get("c429")
    s503 = s503 + t:get("c503"); sother = sother + t:get("other")
  end
  io.write(string.format(
    "FLOOD rps=%.0f p99_ms=%.1f requests=%d 200=%d 401=%d 429=%d 503=%d other=%d socket_errors=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(99) / 1000,
    summary.requests, s200, s401, s429, s503, sother,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA

FAILED=0
token_run() { # token_run CONNECTIONS: prints "rps=... p50_ms=... p99_ms=... ..."
  local line
  line="$(wrk -t1 -c"$1" -d"${DURATION}s" --timeout 5s -s "$WORK/token.lua" \
    "$BASE/envs/staging/token" | grep '^RESULT')"
  echo "${line#RESULT }"
}
field() { sed -n "s/.*[[:space:]]$1=\([0-9.]*\).*/\1/p" <<<" $2"; }

run_config() {
  local backend="$1" config="$2" dir="$WORK/$1-$2" db_url
  mkdir -p "$dir"
  case "$backend" in
    sqlite) db_url="sqlite://$dir/airlock.db" ;;
    postgres)
      PG_DB="airlock_flood_$$"
      pg -c "drop database if exists $PG_DB with (force)" -c "create database $PG_DB" >/dev/null
      db_url="$(python3 -c 'import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p._replace(path="/"+sys.argv[2]).geturl())' "$PG_ADMIN" "$PG_DB")"
      ;;
  esac
  # A fresh database per configuration: throttle state must not carry over.
  export AIRLOCK_DATA_DIR="$dir" AIRLOCK_DATABASE_URL="$db_url"
  export AIRLOCK_LISTEN="127.0.0.1:$PORT" AIRLOCK_PUBLIC_URL="$BASE"
  export AIRLOCK_LOG="airlock=warn,airlock::app=info,tower_http=warn" AIRLOCK_DATABASE__MAX_CONNECTIONS=16
  export FLOOD_CONTROL=0
  case "$config" in
    throttled) unset AIRLOCK_AUTH__THROTTLE_FREE_FAILURES ;;
    unthrottled) export AIRLOCK_AUTH__THROTTLE_FREE_FAILURES=1000000000 ;;
    control) unset AIRLOCK_AUTH__THROTTLE_FREE_FAILURES; FLOOD_CONTROL=1 ;;
    *) echo "bench: unknown config $config" >&2; exit 2 ;;
  esac
  "$BIN" migrate >/dev/null 2>&1
  local creds id secret
  creds="$("$BIN" agent create --env staging --name bench --scope db:read --json 2>/dev/null)"
  id="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["client_id"])' <<<"$creds")"
  secret="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])' <<<"$creds")"
  export BENCH_AUTH="Basic $(printf '%s:%s' "$id" "$secret" | base64 -w0)"
  if [ "$FLOOD_USERNAME" != random ]; then
    printf 'correct horse battery staple\n' \
      | "$BIN" admin bootstrap --username "$FLOOD_USERNAME" --password-stdin >/dev/null
  fi
  "$BIN" serve >"$dir/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 50); do curl -sf "$BASE/healthz" >/dev/null && break; sleep 0.2; done
  curl -sf "$BASE/healthz" >/dev/null || { echo "bench: server did not start" >&2; cat "$dir/server.log" >&2; exit 1; }
  # Warm-up.
  wrk -t1 -c16 -d3s -s "$WORK/token.lua" "$BASE/envs/staging/token" >/dev/null
  for c in $CONNECTIONS; do
    local idle loaded flood
    idle="$(token_run "$c")"
    echo "$backend $config c=$c idle:  $idle"
    # The flood starts 1 s before the token run and ends about 1 s after it.
    wrk -t1 -c"$FLOOD_CONNECTIONS" -d"$((DURATION + 2))s" --timeout 10s -s "$WORK/flood.lua" \
      "$BASE/v1/sessions" >"$dir/flood-$c.out" 2>&1 &
    FLOOD_PID=$!
    sleep 1
    loaded="$(token_run "$c")"
    wait "$FLOOD_PID" || true; FLOOD_PID=""
    sleep 2 # let the server drain verifications still queued when the flood stopped
    flood="$(grep '^FLOOD' "$dir/flood-$c.out" || echo "FLOOD missing")"
    echo "$backend $config c=$c flood: $loaded"
    echo "$backend $config c=$c flood itself (c=$FLOOD_CONNECTIONS): ${flood#FLOOD }"
    local verdict
    verdict="$(awk -v ir="$(field rps "$idle")" -v ip="$(field p99_ms "$idle")" \
      -v lr="$(field rps "$loaded")" -v lp="$(field p99_ms "$loaded")" 'BEGIN {
        pr = lp / ip; rr = lr / ir; ok = (pr <= 3 && rr >= 0.5)
        printf "%s p99 x%.2f (target <= 3), throughput x%.2f (target >= 0.5)",
          ok ? "PASS" : "FAIL", pr, rr }')"
    if [ "$config" = control ]; then
      echo "$backend $config c=$c reference (not a login flood): ${verdict#* }"
    else
      echo "$backend $config c=$c verdict: $verdict; load average $(cut -d' ' -f1 /proc/loadavg)"
      case "$verdict" in FAIL*) FAILED=1 ;; esac
    fi
  done
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    local status=0; wait "$SERVER_PID" || status=$?
    echo "$backend $config SERVER STOPPED during the run (exit status $status; a \"shutdown signal\" line means something outside this script sent SIGTERM/SIGINT); last log lines:"
    tail -n 20 "$dir/server.log"
    SERVER_PID=""; FAILED=1
  else
    local rss threads
    rss="$(awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status")"
    threads="$(awk '/Threads/ {print $2}' "/proc/$SERVER_PID/status")"
    echo "$backend $config server peak_rss_kib=$rss threads=$threads"
    stop "$SERVER_PID"; SERVER_PID=""
  fi
  if grep -qiE 'panic|ERROR' "$dir/server.log"; then
    echo "$backend $config server log (errors):" >&2; grep -iE 'panic|ERROR' "$dir/server.log" | sort | uniq -c | head >&2
  fi
  "$BIN" audit verify | tail -n1
  if [ -n "$PG_DB" ]; then pg -c "drop database if exists $PG_DB with (force)" >/dev/null; PG_DB=""; fi
}

echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores, duration ${DURATION}s, wrk -t1 (token) + wrk -t1 -c$FLOOD_CONNECTIONS (flood as ${FLOOD_USERNAME}), $(uname -r)"
echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for b in $BACKENDS; do
  for cfg in $CONFIGS; do run_config "$b" "$cfg"; done
done
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$FAILED" = 0 ]; then echo "verdict: PASS (every login-flood configuration within the targets)"
else echo "verdict: FAIL (at least one login-flood configuration misses a target; see the lines above)"; fi
exit "$FAILED"

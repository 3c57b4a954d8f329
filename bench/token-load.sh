#!/usr/bin/env bash
# Load benchmark of the audited token endpoint (POST /envs/staging/token,
# client_credentials, client_secret_basic) on SQLite and PostgreSQL at 16 and 64
# concurrent connections. Targets 127.0.0.1 only; every run stops by itself.
#
#   bench/token-load.sh                # both backends, 16 and 64 clients, 15 s each
#   DURATION=30 BACKENDS=sqlite bench/token-load.sh
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

if ! command -v wrk >/dev/null; then
  echo "bench: installing wrk" >&2
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --bin airlock >&2
BIN="$TARGET_DIR/release/airlock"

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
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
  for c in $CONNECTIONS; do
    local line
    line="$(wrk -t2 -c"$c" -d"${DURATION}s" --timeout 5s -s "$WORK/post.lua" \
      "http://127.0.0.1:$PORT/envs/staging/token" | grep '^RESULT')"
    echo "$backend c=$c ${line#RESULT }"
  done
  local rss
  rss="$(awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status" 2>/dev/null || echo 0)"
  echo "$backend peak_rss_kib=$rss"
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
  # Every returned token must be in the audit trail, and the chain must verify.
  "$BIN" audit verify
  if [ "$backend" = postgres ]; then psql "$PG_ADMIN" -qc "drop database if exists airlock_bench_$$ with (force)"; fi
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, duration ${DURATION}s, wrk -t2, $(uname -r)"
for b in $BACKENDS; do run_backend "$b"; done

#!/usr/bin/env bash
# Side by side: the same load driver (benches/load.rs) against Starling,
# Prosody and ejabberd on this machine, in one run, all on loopback.
# Writes benches/results/results.jsonl, results.md (table) and latency.svg.
#
#   bash benches/side_by_side.sh            # defaults below
#   SESSIONS=10000 RATES="2000 5000 10000 25000" bash benches/side_by_side.sh
#
# Prosody and ejabberd come from Debian (apt-get install prosody ejabberd)
# and are started by ../shared/peers/ (configs written there, MAM off).
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS="${PEERS:-$(cd .. && pwd)/shared/peers}"
SESSIONS="${SESSIONS:-2000}"         # idle sessions per server
LOGINS="${LOGINS:-1000}"             # logins for the login-rate scenario
USERS="${USERS:-200}"                # clients exchanging messages
RATES="${RATES:-1000 2000 5000 10000}"
DURATION="${DURATION:-10}"
SERVERS="${SERVERS:-starling prosody ejabberd}"
OUT=benches/results
mkdir -p "$OUT"
: > "$OUT/results.jsonl"

cargo build --release --bin starling
cargo bench --bench load --no-run 2>&1 | tail -1
DRIVER=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)

STARLING_DIR=$(mktemp -d)
cleanup() {
  [ -n "${SPID:-}" ] && kill "$SPID" 2>/dev/null || true
  "$PEERS/stop-prosody.sh" >/dev/null 2>&1 || true
  "$PEERS/stop-ejabberd.sh" >/dev/null 2>&1 || true
  rm -rf "$STARLING_DIR"
}
trap cleanup EXIT

start_server() { # name -> sets ADDR DOMAIN PID
  case "$1" in
    starling)
      STARLING_DATA_DIR="$STARLING_DIR/data" STARLING_C2S_LISTEN=127.0.0.1:17222 \
      STARLING_C2S_DIRECT_TLS_LISTEN= STARLING_HTTP_LISTEN= STARLING_S2S_LISTEN= \
      STARLING_COMPONENT_LISTEN= STARLING_CLUSTER_LISTEN=127.0.0.1:17322 \
      STARLING_REGISTRATION_ALLOW=true STARLING_LOG_LEVEL=warn \
      STARLING_LIMITS_OFFLINE_MESSAGES=100000 STARLING_LIMITS_RATE_BYTES_PER_SEC=104857600 \
        target/release/starling serve > "$STARLING_DIR/ready" 2> "$STARLING_DIR/log" &
      SPID=$!
      for _ in $(seq 1 100); do grep -q ready "$STARLING_DIR/ready" 2>/dev/null && break; sleep 0.1; done
      ADDR=127.0.0.1:17222; DOMAIN=localhost; PID=$SPID ;;
    prosody)
      PEERS_MAM=0 "$PEERS/start-prosody.sh" --fresh >/dev/null
      ADDR=127.0.0.1:15222; DOMAIN=prosody.localhost; PID=$(cat "${PEERS_TMP:-/tmp/peers}/prosody/server.pid") ;;
    ejabberd)
      PEERS_MAM=0 "$PEERS/start-ejabberd.sh" --fresh >/dev/null
      ADDR=127.0.0.1:25222; DOMAIN=ejabberd.localhost; PID=$(cat "${PEERS_TMP:-/tmp/peers}/ejabberd/server.pid") ;;
  esac
}

stop_server() {
  case "$1" in
    starling) kill "$SPID"; wait "$SPID" 2>/dev/null || true; SPID= ;;
    prosody) "$PEERS/stop-prosody.sh" >/dev/null ;;
    ejabberd) "$PEERS/stop-ejabberd.sh" >/dev/null ;;
  esac
}

drive() { # label args...
  local label=$1; shift
  "$DRIVER" --server "$ADDR" --domain "$DOMAIN" --pid "$PID" --label "$label" "$@" \
    | tee /dev/stderr | grep '^RESULT ' | sed 's/^RESULT //' >> "$OUT/results.jsonl"
}

for s in $SERVERS; do
  echo "=== $s" >&2
  start_server "$s"
  drive "$s" --scenario idle --users "$SESSIONS" --register --prefix idle --connect-rate 1000 --sources 16
  drive "$s" --scenario login --users "$LOGINS" --prefix idle --concurrency 64 --sources 16
  drive "$s" --scenario messages --users "$USERS" --register --prefix chat --rate 0 --mode pingpong --duration "$DURATION"
  for r in $RATES; do
    drive "$s" --scenario messages --users "$USERS" --prefix chat --rate "$r" --duration "$DURATION"
  done
  stop_server "$s"
done

python3 benches/results_table.py "$OUT/results.jsonl" "$OUT"
echo "wrote $OUT/results.md and $OUT/latency.svg" >&2

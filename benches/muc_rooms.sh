#!/usr/bin/env bash
# Many small rooms, side by side: each of USERS users creates a group-chat
# room of its own (XEP-0045, an instant room) and stays in it, idle
# (starling-load --scenario rooms). Reported: rooms made and entered per
# second, and resident memory per idle room (with its one occupant), less
# what the sessions alone cost. Starling on one node and on three
# (`cluster up`; memory is the three processes together, so each room's
# replicated records count on every node), Prosody and ejabberd from
# ../shared/peers (their MUC components as configured there).
#
#   bash benches/muc_rooms.sh
#   USERS=2000 SERVERS=starling bash benches/muc_rooms.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS="${PEERS:-$(cd .. && pwd)/shared/peers}"
USERS="${USERS:-10000}"
SERVERS="${SERVERS:-starling starling-x3 prosody ejabberd}"
OUT="${OUT:-benches/results/muc-rooms-$(date +%F).jsonl}"
: > "$OUT"

cargo build --release --bin starling
cargo build --release -p starling-load
DRIVER=target/release/starling-load
DIR=$(mktemp -d)
cleanup() {
  [ -n "${SPID:-}" ] && kill "$SPID" 2>/dev/null || true
  "$PEERS/stop-prosody.sh" >/dev/null 2>&1 || true
  "$PEERS/stop-ejabberd.sh" >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap cleanup EXIT

run() { # label driver-args...
  local label=$1; shift
  "$DRIVER" "$@" --label "$label" --scenario rooms --users "$USERS" --register \
    --prefix "rooms-" --connect-rate 0 \
    | tee -a /dev/stderr | grep '^RESULT ' | sed 's/^RESULT //' >> "$OUT"
}

for s in $SERVERS; do
  echo "=== $s" >&2
  case "$s" in
    starling)
      rm -rf "$DIR/data"
      STARLING_DATA_DIR="$DIR/data" STARLING_C2S_LISTEN=127.0.0.1:17222 \
      STARLING_C2S_DIRECT_TLS_LISTEN= STARLING_HTTP_LISTEN= STARLING_S2S_LISTEN= \
      STARLING_COMPONENT_LISTEN= STARLING_CLUSTER_LISTEN=127.0.0.1:17322 \
      STARLING_REGISTRATION_ALLOW=true STARLING_REGISTRATION_PER_ADDRESS_PER_HOUR=100000000 \
      STARLING_LOG_LEVEL=warn \
        target/release/starling serve > "$DIR/ready" 2> "$DIR/log" &
      SPID=$!
      for _ in $(seq 1 100); do grep -q ready "$DIR/ready" 2>/dev/null && break; sleep 0.1; done
      run "starling" --server 127.0.0.1:17222 --domain localhost --pid "$SPID"
      kill "$SPID"; wait "$SPID" 2>/dev/null || true; SPID= ;;
    starling-x3)
      rm -rf "$DIR/c"; mkdir -p "$DIR/c"
      STARLING_REGISTRATION_ALLOW=true STARLING_REGISTRATION_PER_ADDRESS_PER_HOUR=100000000 \
      STARLING_LOG_LEVEL=warn \
        target/release/starling cluster up --nodes 3 --dir "$DIR/c" --port-offset 13000 > "$DIR/c/ready" 2> "$DIR/c/log" &
      SPID=$!
      for _ in $(seq 1 100); do [ "$(grep -c ready "$DIR/c/ready" 2>/dev/null)" = 3 ] && break; sleep 0.2; done
      sleep 2
      PIDS=$(pgrep -P "$SPID" | sed 's/^/--pid /' | tr '\n' ' ')
      # shellcheck disable=SC2086
      run "starling x3" --server 127.0.0.1:18222 --also 127.0.0.2:18222 \
        --also 127.0.0.3:18222 --domain localhost $PIDS
      kill "$SPID"; wait "$SPID" 2>/dev/null || true; SPID= ;;
    prosody)
      PEERS_MAM=0 "$PEERS/start-prosody.sh" --fresh >/dev/null
      run "prosody" --server 127.0.0.1:15222 --domain prosody.localhost \
        --pid "$(cat "${PEERS_TMP:-/tmp/peers}/prosody/server.pid")"
      "$PEERS/stop-prosody.sh" >/dev/null ;;
    ejabberd)
      PEERS_MAM=0 "$PEERS/start-ejabberd.sh" --fresh >/dev/null
      run "ejabberd" --server 127.0.0.1:25222 --domain ejabberd.localhost \
        --pid "$(cat "${PEERS_TMP:-/tmp/peers}/ejabberd/server.pid")"
      "$PEERS/stop-ejabberd.sh" >/dev/null ;;
  esac
done
echo "results: $OUT" >&2

#!/usr/bin/env bash
# Group chat fan-out, side by side: one room, every user in it, random
# occupants sending to it at a fixed rate (starling-load --mode room); the
# driver counts deliveries to occupants per second and their latency.
# Starling on one node and on three (`cluster up`, users spread over the
# nodes, the room on one of them), Prosody and ejabberd from ../shared/peers
# (their MUC components, room archives on, as configured there).
#
#   bash benches/muc_room.sh
#   OCCUPANTS=1000 RATES="10 20 50" bash benches/muc_room.sh
#
# ejabberd's mod_muc admits at most 200 occupants per room unless its
# `max_users` option is raised (the peers' config keeps the default), so
# ejabberd runs with min(OCCUPANTS, EJ_OCCUPANTS) occupants; compare rows
# with the same occupant count. With EJ_OCCUPANTS above 200, ejabberd runs
# from a copy of ../shared/peers whose mod_muc (and default room) max_users
# is raised to that.
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS="${PEERS:-$(cd .. && pwd)/shared/peers}"
OCCUPANTS="${OCCUPANTS:-1000}"
EJ_OCCUPANTS="${EJ_OCCUPANTS:-200}"
RATES="${RATES:-10 20 50}"
DURATION="${DURATION:-10}"
SERVERS="${SERVERS:-starling starling-x3 prosody ejabberd}"
OUT="${OUT:-benches/results/muc-$(date +%F).jsonl}"
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

run() { # label users rate driver-args...
  local label=$1 users=$2 rate=$3; shift 3
  "$DRIVER" "$@" --label "$label" --scenario messages --mode room --users "$users" \
    --register --prefix "room$rate-" --rate "$rate" --duration "$DURATION" \
    | tee -a /dev/stderr | grep '^RESULT ' | sed 's/^RESULT //' >> "$OUT"
}

for s in $SERVERS; do
  echo "=== $s" >&2
  for r in $RATES; do
    case "$s" in
      starling)
        rm -rf "$DIR/data"
        STARLING_DATA_DIR="$DIR/data" STARLING_C2S_LISTEN=127.0.0.1:17222 \
        STARLING_C2S_DIRECT_TLS_LISTEN= STARLING_HTTP_LISTEN= STARLING_S2S_LISTEN= \
        STARLING_COMPONENT_LISTEN= STARLING_CLUSTER_LISTEN=127.0.0.1:17322 \
        STARLING_REGISTRATION_ALLOW=true STARLING_REGISTRATION_PER_ADDRESS_PER_HOUR=100000000 \
        STARLING_LOG_LEVEL=warn STARLING_LIMITS_RATE_BYTES_PER_SEC=104857600 \
          target/release/starling serve > "$DIR/ready" 2> "$DIR/log" &
        SPID=$!
        for _ in $(seq 1 100); do grep -q ready "$DIR/ready" 2>/dev/null && break; sleep 0.1; done
        run "starling" "$OCCUPANTS" "$r" --server 127.0.0.1:17222 --domain localhost --pid "$SPID"
        kill "$SPID"; wait "$SPID" 2>/dev/null || true; SPID= ;;
      starling-x3)
        rm -rf "$DIR/c"; mkdir -p "$DIR/c"
        STARLING_REGISTRATION_ALLOW=true STARLING_REGISTRATION_PER_ADDRESS_PER_HOUR=100000000 \
        STARLING_LOG_LEVEL=warn STARLING_LIMITS_RATE_BYTES_PER_SEC=104857600 \
          target/release/starling cluster up --nodes 3 --dir "$DIR/c" --port-offset 13000 > "$DIR/c/ready" 2> "$DIR/c/log" &
        SPID=$!
        for _ in $(seq 1 100); do [ "$(grep -c ready "$DIR/c/ready" 2>/dev/null)" = 3 ] && break; sleep 0.2; done
        sleep 2
        PIDS=$(pgrep -P "$SPID" | sed 's/^/--pid /' | tr '\n' ' ')
        # shellcheck disable=SC2086
        run "starling x3" "$OCCUPANTS" "$r" --server 127.0.0.1:18222 --also 127.0.0.2:18222 \
          --also 127.0.0.3:18222 --domain localhost $PIDS
        kill "$SPID"; wait "$SPID" 2>/dev/null || true; SPID= ;;
      prosody)
        "$PEERS/start-prosody.sh" --fresh >/dev/null
        run "prosody" "$OCCUPANTS" "$r" --server 127.0.0.1:15222 --domain prosody.localhost \
          --room "bench@conference.prosody.localhost" \
          --pid "$(cat "${PEERS_TMP:-/tmp/peers}/prosody/server.pid")"
        "$PEERS/stop-prosody.sh" >/dev/null ;;
      ejabberd)
        n=$(( OCCUPANTS < EJ_OCCUPANTS ? OCCUPANTS : EJ_OCCUPANTS ))
        # EJ_OCCUPANTS above mod_muc's default of 200: a copy of
        # ../shared/peers whose config admits that many to a room.
        EJ_PEERS="$PEERS"
        if [ "$n" -gt 200 ]; then
          EJ_PEERS="$DIR/peers"; rm -rf "$EJ_PEERS"; cp -r "$PEERS" "$EJ_PEERS"
          sed -i -e "s|^    access_create: local\$|&\n    max_users: $n|" \
            -e "s|^      mam: true\$|&\n      max_users: $n|" "$EJ_PEERS/ejabberd/ejabberd.yml.tmpl"
          [ "$(grep -c "max_users: $n" "$EJ_PEERS/ejabberd/ejabberd.yml.tmpl")" = 2 ] || {
            echo "could not raise ejabberd's max_users in its config template" >&2; exit 1; }
        fi
        "$EJ_PEERS/start-ejabberd.sh" --fresh >/dev/null
        run "ejabberd" "$n" "$r" --server 127.0.0.1:25222 --domain ejabberd.localhost \
          --room "bench@conference.ejabberd.localhost" \
          --pid "$(cat "${PEERS_TMP:-/tmp/peers}/ejabberd/server.pid")"
        "$EJ_PEERS/stop-ejabberd.sh" >/dev/null ;;
    esac
  done
done
echo "results: $OUT" >&2

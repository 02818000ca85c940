#!/usr/bin/env bash
# Side by side: the same load driver (benches/load) against Starling,
# Prosody and ejabberd on this machine, in one run, all on loopback.
# Writes benches/results/results.jsonl, results.md (table) and latency.svg.
#
#   bash benches/side_by_side.sh            # defaults below
#   SESSIONS=10000 RATES="2000 5000 10000 25000" bash benches/side_by_side.sh
#
# Prosody and ejabberd come from Debian (apt-get install prosody ejabberd)
# and are started by ../shared/peers/ (configs written there). Servers:
#   starling        the defaults: message archive (XEP-0313) on
#   starling-nomam  the same with [mam] enabled = false
#   prosody, ejabberd              archives off
#   prosody-mam, ejabberd-mam      archives on (mod_mam)
#
#   SERVERS="starling starling-nomam prosody-mam ejabberd-mam" RATES="500 1000 10000 30000" \
#     CLUSTER=0 bash benches/side_by_side.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS="${PEERS:-$(cd .. && pwd)/shared/peers}"
SESSIONS="${SESSIONS:-2000}"         # idle sessions per server
LOGINS="${LOGINS:-1000}"             # logins for the login-rate scenario
USERS="${USERS:-200}"                # clients exchanging messages
RATES="${RATES:-1000 2000 5000 10000}"
DURATION="${DURATION:-10}"
SERVERS="${SERVERS:-starling prosody ejabberd}"
CLUSTER="${CLUSTER:-1}"              # also a three-node Starling cluster
CLUSTER_SESSIONS="${CLUSTER_SESSIONS:-0}"  # idle sessions over the cluster (e.g. 50000)
OUT="${OUT:-benches/results}"
mkdir -p "$OUT"
: > "$OUT/results.jsonl"

cargo build --release --bin starling
SERVER_SUM=$(sha256sum target/release/starling | cut -d' ' -f1)
# The driver is its own package: building it leaves the server binary as is.
cargo build --release -p starling-load
DRIVER=target/release/starling-load
if [ "$(sha256sum target/release/starling | cut -d' ' -f1)" != "$SERVER_SUM" ]; then
  echo "building the driver changed target/release/starling" >&2
  exit 1
fi

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
    starling|starling-nomam)
      MAM_ON=true; [ "$1" = starling-nomam ] && MAM_ON=false
      rm -rf "$STARLING_DIR/data"
      STARLING_MAM_ENABLED=$MAM_ON STARLING_DATA_DIR="$STARLING_DIR/data" STARLING_C2S_LISTEN=127.0.0.1:17222 \
      STARLING_C2S_DIRECT_TLS_LISTEN= STARLING_HTTP_LISTEN= STARLING_S2S_LISTEN= \
      STARLING_COMPONENT_LISTEN= STARLING_CLUSTER_LISTEN=127.0.0.1:17322 \
      STARLING_REGISTRATION_ALLOW=true STARLING_REGISTRATION_PER_ADDRESS_PER_HOUR=100000000 STARLING_LOG_LEVEL=warn \
      STARLING_LIMITS_OFFLINE_MESSAGES=100000 STARLING_LIMITS_RATE_BYTES_PER_SEC=104857600 \
        target/release/starling serve > "$STARLING_DIR/ready" 2> "$STARLING_DIR/log" &
      SPID=$!
      for _ in $(seq 1 100); do grep -q ready "$STARLING_DIR/ready" 2>/dev/null && break; sleep 0.1; done
      ADDR=127.0.0.1:17222; DOMAIN=localhost; PID=$SPID ;;
    prosody|prosody-mam)
      MAM=0; [ "$1" = prosody-mam ] && MAM=1
      PEERS_MAM=$MAM "$PEERS/start-prosody.sh" --fresh >/dev/null
      ADDR=127.0.0.1:15222; DOMAIN=prosody.localhost; PID=$(cat "${PEERS_TMP:-/tmp/peers}/prosody/server.pid") ;;
    ejabberd|ejabberd-mam)
      MAM=0; [ "$1" = ejabberd-mam ] && MAM=1
      PEERS_MAM=$MAM "$PEERS/start-ejabberd.sh" --fresh >/dev/null
      ADDR=127.0.0.1:25222; DOMAIN=ejabberd.localhost; PID=$(cat "${PEERS_TMP:-/tmp/peers}/ejabberd/server.pid") ;;
  esac
}

stop_server() {
  case "$1" in
    starling|starling-nomam) kill "$SPID"; wait "$SPID" 2>/dev/null || true; SPID= ;;
    prosody|prosody-mam) "$PEERS/stop-prosody.sh" >/dev/null ;;
    ejabberd|ejabberd-mam) "$PEERS/stop-ejabberd.sh" >/dev/null ;;
  esac
}

drive() { # label args...
  local label=$1; shift
  sleep 5   # let the previous scenario's disconnects settle
  "$DRIVER" --server "$ADDR" --domain "$DOMAIN" --pid "$PID" --label "$label" "$@" \
    | tee -a /dev/stderr | grep '^RESULT ' | sed 's/^RESULT //' >> "$OUT/results.jsonl"
}

for s in $SERVERS; do
  echo "=== $s" >&2
  start_server "$s"
  # ejabberd's listener (as ../shared/peers configures it) drops connection
  # attempts beyond a small backlog: with more than a few handshakes in
  # flight its clients wait for SYN retransmits (7 logins/s at 64 in
  # flight, 620/s at 4). It gets 4 in flight so that it is measured at its best.
  conc=64; case "$s" in ejabberd*) conc=4 ;; esac
  drive "$s" --scenario idle --users "$SESSIONS" --register --prefix idle --connect-rate 1000 --concurrency "$conc" --sources 16 --logout-wait 25
  drive "$s" --scenario login --users "$LOGINS" --prefix idle --concurrency "$conc" --sources 16
  drive "$s" --scenario messages --users "$USERS" --register --prefix chat --rate 0 --mode pingpong --duration "$DURATION" --concurrency "$conc"
  for r in $RATES; do
    drive "$s" --scenario messages --users "$USERS" --prefix chat --rate "$r" --duration "$DURATION" --concurrency "$conc"
  done
  stop_server "$s"
done

if [ "$CLUSTER" = 1 ]; then
  # Three Starling nodes on 127.0.0.1-3 (`cluster up`), users spread over
  # them; the driver reports same-node and cross-node latency apart.
  echo "=== starling cluster" >&2
  CDIR=$(mktemp -d)
  STARLING_REGISTRATION_ALLOW=true STARLING_REGISTRATION_PER_ADDRESS_PER_HOUR=100000000 STARLING_LOG_LEVEL=warn \
  STARLING_LIMITS_RATE_BYTES_PER_SEC=104857600 \
    target/release/starling cluster up --nodes 3 --dir "$CDIR" --port-offset 13000 > "$CDIR/ready" 2> "$CDIR/log" &
  UPID=$!
  for _ in $(seq 1 100); do [ "$(grep -c ready "$CDIR/ready" 2>/dev/null)" = 3 ] && break; sleep 0.2; done
  sleep 2
  PIDS=$(pgrep -P "$UPID" | sed 's/^/--pid /' | tr '\n' ' ')
  ADDR=127.0.0.1:18222; DOMAIN=localhost; PID=
  for r in $RATES; do
    "$DRIVER" --server 127.0.0.1:18222 --also 127.0.0.2:18222 --also 127.0.0.3:18222 --domain localhost \
      $PIDS --label "starling x3" --scenario messages --users "$USERS" --register --prefix chat \
      --rate "$r" --duration "$DURATION" \
      | tee -a /dev/stderr | grep '^RESULT ' | sed 's/^RESULT //' >> "$OUT/results.jsonl"
  done
  if [ "$CLUSTER_SESSIONS" -gt 0 ]; then
    # Last, as 50,000 logouts leave the cluster busy for a while.
    # One driver per node (a process holds at most `ulimit -n` sockets,
    # 20000 here), a third of the sessions each. They register, then
    # connect together and read memory at the same moment (--sync-dir), so
    # each node's figure includes what it holds for the other nodes'
    # sessions (the replicated session table).
    SYNC=$(mktemp -d)
    per=$(( (CLUSTER_SESSIONS + 2) / 3 ))
    WAITS=()
    for i in 1 2 3; do
      npid=$(ss -Hltnp "sport = :18222" | grep "127.0.0.$i:" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
      ( "$DRIVER" --server "127.0.0.$i:18222" --domain localhost --scenario register --users "$per" \
          --register --prefix "idle$i" --concurrency 32 --sources 16 >&2 \
        && "$DRIVER" --server "127.0.0.$i:18222" --domain localhost --pid "$npid" \
          --label "starling x3" --scenario idle --users "$per" --prefix "idle$i" \
          --connect-rate 500 --concurrency 32 --sources 16 --sync-dir "$SYNC" --sync-parties 3 \
        | grep '^RESULT ' | sed 's/^RESULT //' > "$SYNC/result.$i" ) &
      WAITS+=($!)
    done
    wait "${WAITS[@]}" || true
    cat "$SYNC"/result.* | tee -a /dev/stderr >> "$OUT/results.jsonl"
    rm -rf "$SYNC"
  fi
  kill -INT "$UPID"; wait "$UPID" 2>/dev/null || true
  rm -rf "$CDIR"
fi

python3 benches/results_table.py "$OUT/results.jsonl" "$OUT"
cargo bench --bench plot -- "$OUT/results.jsonl" "$OUT/latency.svg"
echo "wrote $OUT/results.md and $OUT/latency.svg" >&2

#!/usr/bin/env bash
# Phones reconnecting (issue: push, SASL2/FAST): logins per second with
# RFC 6120 SCRAM, with SASL2 SCRAM + Bind 2, and with SASL2 + a FAST token
# (HT-SHA-256-NONE); then one client's reconnection with a
# stream-management resume, classic (STARTTLS, SCRAM, restart, <resume/>)
# against SASL2 (STARTTLS, FAST, inline resume), in round trips and
# milliseconds. One release server per run, the load driver (benches/load).
# Results: benches/results/fast-logins.jsonl (one RESULT per line).
#   USERS=1000 CONC=16 RECONNECTS=200 bash benches/fast_logins.sh
set -euo pipefail
cd "$(dirname "$0")/.."
USERS="${USERS:-1000}"; CONC="${CONC:-16}"; RECONNECTS="${RECONNECTS:-200}"
OUT="${OUT:-benches/results/fast-logins.jsonl}"
cargo build --release --bin starling
cargo build --release -p starling-load
DIR=$(mktemp -d)
cleanup() { [ -n "${SPID:-}" ] && kill "$SPID" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
start() {
  rm -rf "$DIR/data"
  STARLING_DATA_DIR="$DIR/data" STARLING_C2S_LISTEN=127.0.0.1:18222 STARLING_C2S_DIRECT_TLS_LISTEN= \
  STARLING_HTTP_LISTEN= STARLING_S2S_LISTEN= STARLING_COMPONENT_LISTEN= STARLING_CLUSTER_LISTEN=127.0.0.1:18322 \
  STARLING_REGISTRATION_ALLOW=true STARLING_REGISTRATION_PER_ADDRESS_PER_HOUR=1000000 \
  STARLING_LOG_LEVEL=warn target/release/starling serve > "$DIR/ready" 2> "$DIR/log" &
  SPID=$!
  for _ in $(seq 1 100); do grep -q ready "$DIR/ready" 2>/dev/null && break; sleep 0.1; done
}
stop() { kill "$SPID"; wait "$SPID" 2>/dev/null || true; SPID=; }
for auth in scram sasl2 fast; do
  start
  target/release/starling-load --server 127.0.0.1:18222 --users "$USERS" --register \
    --scenario login --auth "$auth" --concurrency "$CONC" --pid "$SPID" --label "starling $auth" \
    | tee /dev/stderr | grep '^RESULT ' | sed 's/^RESULT //' >> "$OUT"
  stop
done
start
target/release/starling-load --server 127.0.0.1:18222 --users "$RECONNECTS" --register \
  --scenario reconnect --auth fast --resume --pid "$SPID" --label "starling reconnect" \
  | tee /dev/stderr | grep '^RESULT ' | sed 's/^RESULT //' >> "$OUT"
stop

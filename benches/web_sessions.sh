#!/usr/bin/env bash
# WebSocket beside TCP (issue: web transports): logins/s and server memory
# per idle session over ws, wss and TCP (STARTTLS), one release server per
# run, the same Node driver (benches/web_sessions.mjs, @xmpp/client) for
# each. Results: benches/results/web-sessions.jsonl (one RESULT per line).
#   USERS=1000 LOGINS=1000 CONC=16 bash benches/web_sessions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
USERS="${USERS:-1000}"; LOGINS="${LOGINS:-1000}"; CONC="${CONC:-16}"
OUT="${OUT:-benches/results/web-sessions.jsonl}"
[ -d tests/web/node_modules ] || (cd tests/web && npm ci --no-audit --no-fund)
cargo build --release --bin starling
DIR=$(mktemp -d)
cleanup() { [ -n "${SPID:-}" ] && kill "$SPID" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
for svc in ws wss tcp; do
  rm -rf "$DIR/data"
  STARLING_DATA_DIR="$DIR/data" STARLING_C2S_LISTEN=127.0.0.1:18222 STARLING_C2S_DIRECT_TLS_LISTEN= \
  STARLING_HTTP_LISTEN=127.0.0.1:18280 STARLING_HTTP_TLS_LISTEN=127.0.0.1:18443 \
  STARLING_S2S_LISTEN= STARLING_COMPONENT_LISTEN= STARLING_CLUSTER_LISTEN=127.0.0.1:18322 \
  STARLING_LOG_LEVEL=warn target/release/starling serve > "$DIR/ready" 2> "$DIR/log" &
  SPID=$!
  for _ in $(seq 1 100); do grep -q ready "$DIR/ready" 2>/dev/null && break; sleep 0.1; done
  for i in $(seq 0 $((USERS - 1))); do echo "bench$i pw"; done > "$DIR/users"
  while read -r u p; do STARLING_DATA_DIR="$DIR/data" target/release/starling user add "$u" --password "$p" >/dev/null; done < "$DIR/users"
  case $svc in
    ws) URL=ws://127.0.0.1:18280/xmpp-websocket ;;
    wss) URL=wss://127.0.0.1:18443/xmpp-websocket ;;
    tcp) URL=xmpp://127.0.0.1:18222 ;;
  esac
  node benches/web_sessions.mjs "$URL" localhost "$SPID" "starling $svc" "$USERS" "$LOGINS" "$CONC" \
    | tee /dev/stderr | grep '^RESULT ' | sed 's/^RESULT //' >> "$OUT"
  kill "$SPID"; wait "$SPID" 2>/dev/null || true; SPID=
done

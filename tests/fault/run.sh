#!/usr/bin/env bash
# Fault harness for issue 12 ("nothing acknowledged is lost").
#
#   tests/fault/run.sh STARLING_BINARY SCENARIO...
#
# For each scenario: a fresh three-node cluster from STARLING_BINARY (temp
# data dirs, fixed ports below 32768 on 127.0.0.1..3; node 1 bootstraps,
# 2 and 3 join), users u0..u(N-1) made with `starling user add` through
# node 1's admin socket, Debian's HAProxy in front (tests/deploy/haproxy.cfg,
# the compose topology), and tests/fault/checker.py (slixmpp clients with
# stream management) sending traffic through HAProxy while the fault is
# injected. Prints per scenario
#
#   SCENARIO <name> acked=X lost=Y dup=Z late=W PASS|FAIL
#
# late counts messages that reached their addressee only at the final
# login: left offline while the addressee was online. PASS iff lost=0,
# dup=0 and late=0. Exit 0 if all passed, 1 if any failed, 2 on a
# harness error. Scenarios:
#
#   none           no fault: 60 s of traffic (the checker's own baseline)
#   rolling        SIGTERM each node in turn, restart it, wait until it is
#                  back (ready, in the cluster), 3 passes
#   kill-follower  kill -9 a non-leader, restart it 10 s later
#   kill-leader    kill -9 the Raft leader, restart it 3 s later; 3 times
#   crash-loop     every 10 s for 2 min kill -9 a random node, restart it 1 s later
#   sigstop        SIGSTOP a non-leader (SIGSTOP_TARGET=leader: the leader)
#                  for 10 s, then SIGCONT
#   partition      node 3 runs in a network namespace made here (veth,
#                  10.77.0.0/24); nftables inside it drops the mesh port
#                  (Raft and relays) both ways for 25 s while c2s and HTTP
#                  stay reachable, then heals
#
# Needs root for `partition` (ip netns, nft), haproxy, curl, nft
# (apt-get install haproxy nftables curl), and a Python with slixmpp:
# .venv (python3 -m venv .venv && .venv/bin/pip install -r
# tests/interop/requirements.txt) or STARLING_PYTHON.
#
# Environment knobs: CLIENTS (16), LOG_LEVEL (node log filter, default
# "info,starling_cluster::transport=debug" so relay failures show),
# KEEP=1 keeps the data dirs, OUT=dir for logs (default a new /tmp dir,
# always kept and printed), SEED for the crash loop's choices.
set -uo pipefail

usage() {
  sed -n '2,/^set -uo/p' "$0" | sed 's/^# \{0,1\}//; /^set -uo/d' >&2
  exit 2
}
[ $# -ge 2 ] || usage
BIN=$(realpath "$1") || usage
shift
[ -x "$BIN" ] || { echo "not an executable: $BIN" >&2; exit 2; }
SCENARIOS=("$@")
for s in "${SCENARIOS[@]}"; do
  case "$s" in
    none|rolling|kill-follower|kill-leader|crash-loop|sigstop|partition) ;;
    *) echo "unknown scenario: $s" >&2; usage ;;
  esac
done

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY=${STARLING_PYTHON:-$ROOT/.venv/bin/python}
CHECKER=$HERE/checker.py
HAPROXY_CFG=$ROOT/tests/deploy/haproxy.cfg
CLIENTS=${CLIENTS:-16}
LOG_LEVEL=${LOG_LEVEL:-info,starling_cluster::transport=debug}
SEED=${SEED:-$$}
RANDOM=$SEED

# Fixed ports, below 32768 and apart from the ones the cargo tests use.
C2S_PORT=12222
HTTP_PORT=12280
MESH_PORT=12722
FRONT=127.0.0.1:12300
SECRET=fault-checker-secret-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')

# Partition network: node 3 inside the namespace, nodes 1 and 2 on the
# root side of the veth pair.
NS=sfault$$
VETH_ROOT=sfr$$
VETH_NS=sfn$$
NET=10.77.0

for tool in haproxy curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install $tool)" >&2; exit 2; }
done
[ -x "$PY" ] || { echo "no Python with slixmpp at $PY (see the header)" >&2; exit 2; }
"$PY" -c 'import slixmpp' 2>/dev/null || { echo "$PY has no slixmpp" >&2; exit 2; }

# One harness at a time: the ports are fixed.
exec 9>/tmp/starling-fault.lock
flock -n 9 || { echo "another tests/fault/run.sh is running" >&2; exit 2; }

OUT=${OUT:-$(mktemp -d /tmp/starling-fault-logs.XXXXXX)}
mkdir -p "$OUT"
T=""            # per-scenario data dir
declare -A NODE_PID=()
declare -a NODE_IP=()
IN_NS=0         # node 3 runs in the namespace
HAPROXY_PID=""
CHECKER_PID=""
NET_UP=0
SCEN=""

now() { date +%s.%N | cut -c1-14; }
# sleep that a trapped signal interrupts at once (a foreground sleep would
# hold the trap until it ends)
NAP_PID=""
nap() { sleep "$1" 9>&- & NAP_PID=$!; wait "$NAP_PID"; NAP_PID=""; }
say() { echo "[run $(date +%H:%M:%S)] $*" >&2; }
event() { echo "$(now) $*" >>"$OUT/$SCEN.events"; say "$SCEN: $*"; }

kill_pid() { # pid: SIGCONT (in case it is stopped) and SIGKILL, then reap
  local p=$1
  [ -n "$p" ] || return 0
  kill -CONT "$p" 2>/dev/null
  kill -KILL "$p" 2>/dev/null
  wait "$p" 2>/dev/null
  return 0
}

net_down() {
  [ "$NET_UP" = 1 ] || return 0
  ip netns del "$NS" 2>/dev/null
  ip link del "$VETH_ROOT" 2>/dev/null
  NET_UP=0
}

teardown() {
  if [ -n "$NAP_PID" ]; then kill "$NAP_PID" 2>/dev/null; NAP_PID=""; fi
  if [ -n "$CHECKER_PID" ]; then kill_pid "$CHECKER_PID"; CHECKER_PID=""; fi
  exec 7>&-
  for i in "${!NODE_PID[@]}"; do kill_pid "${NODE_PID[$i]}"; done
  NODE_PID=()
  if [ -n "$HAPROXY_PID" ]; then kill_pid "$HAPROXY_PID"; HAPROXY_PID=""; fi
  net_down
  if [ -n "$T" ] && [ "${KEEP:-0}" != 1 ]; then rm -rf "$T"; fi
  T=""
}
trap 'teardown' EXIT
trap 'say "interrupted"; teardown; exit 130' INT TERM

net_up() {
  command -v nft >/dev/null || { echo "partition needs nft (apt-get install nftables)" >&2; return 1; }
  ip netns add "$NS" || return 1
  NET_UP=1
  ip link add "$VETH_ROOT" type veth peer name "$VETH_NS" || return 1
  ip link set "$VETH_NS" netns "$NS" || return 1
  ip addr add "$NET.1/24" dev "$VETH_ROOT" || return 1
  ip addr add "$NET.2/24" dev "$VETH_ROOT" || return 1
  ip link set "$VETH_ROOT" up || return 1
  ip netns exec "$NS" ip link set lo up || return 1
  ip netns exec "$NS" ip addr add "$NET.3/24" dev "$VETH_NS" || return 1
  ip netns exec "$NS" ip link set "$VETH_NS" up || return 1
  # Wait until the veth carries traffic (DAD off on IPv4; just check link).
  for _ in $(seq 50); do
    ip netns exec "$NS" ping -c1 -W1 "$NET.1" >/dev/null 2>&1 && return 0
    nap 0.1
  done
  # ping may be absent: fall back to trusting the link.
  return 0
}

cut_mesh() { # inside the namespace: drop the mesh port both ways
  ip netns exec "$NS" nft -f - <<EOF
table inet fault {
  chain in { type filter hook input priority 0; policy accept;
    tcp dport $MESH_PORT drop
    tcp sport $MESH_PORT drop
  }
  chain out { type filter hook output priority 0; policy accept;
    tcp dport $MESH_PORT drop
    tcp sport $MESH_PORT drop
  }
}
EOF
}
heal_mesh() { ip netns exec "$NS" nft delete table inet fault; }

start_node() { # i
  local i=$1 ip=${NODE_IP[$1]} join=""
  [ "$i" != 1 ] && join="${NODE_IP[1]}:$MESH_PORT"
  local -a pre=()
  [ "$i" = 3 ] && [ "$IN_NS" = 1 ] && pre=(ip netns exec "$NS")
  mkdir -p "$T/node$i"
  echo "=== start $(date +%T.%N)" >>"$OUT/$SCEN.node$i.log"
  (cd "$T" && exec "${pre[@]}" env -i PATH="$PATH" \
    STARLING_DATA_DIR="$T/node$i" \
    STARLING_DOMAIN=localhost \
    STARLING_CLUSTER_NODE_ID="$i" \
    STARLING_CLUSTER_SECRET="$SECRET" \
    STARLING_CLUSTER_TLS_CA="$T/certs/ca.pem" \
    STARLING_CLUSTER_TLS_CERT="$T/certs/node-$i.pem" \
    STARLING_CLUSTER_TLS_KEY="$T/certs/node-$i-key.pem" \
    STARLING_CLUSTER_JOIN="$join" \
    STARLING_CLUSTER_LISTEN="$ip:$MESH_PORT" \
    STARLING_C2S_LISTEN="$ip:$C2S_PORT" \
    STARLING_C2S_DIRECT_TLS_LISTEN="" \
    STARLING_HTTP_LISTEN="$ip:$HTTP_PORT" \
    STARLING_S2S_LISTEN="" \
    STARLING_COMPONENT_LISTEN="" \
    STARLING_LOG_LEVEL="$LOG_LEVEL" \
    "$BIN" serve >>"$OUT/$SCEN.node$i.out" 2>>"$OUT/$SCEN.node$i.log") 9>&- &
  NODE_PID[$i]=$!
}

alive() { [ -n "${NODE_PID[$1]:-}" ] && kill -0 "${NODE_PID[$1]}" 2>/dev/null; }

ready() { # i: /health/ready answers 200
  [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://${NODE_IP[$1]}:$HTTP_PORT/health/ready")" = 200 ]
}

status() { # i: `starling cluster status` asked of node i
  (cd "${T:-/tmp}" && timeout 5 env -i PATH="$PATH" STARLING_CLUSTER_SECRET="$SECRET" \
    STARLING_CLUSTER_TLS_CA="$T/certs/ca.pem" STARLING_CLUSTER_TLS_CERT="$T/certs/admin.pem" \
    STARLING_CLUSTER_TLS_KEY="$T/certs/admin-key.pem" \
    "$BIN" cluster status --node "${NODE_IP[$1]}:$MESH_PORT" 2>&1)
}

in_cluster() { # i: ready, has a leader, sees 3 members
  local s
  ready "$1" || return 1
  s=$(status "$1") || return 1
  echo "$s" | head -1 | grep -Eq '\((leader|follower)\) term [0-9]+ leader [1-9]' || return 1
  [ "$(echo "$s" | grep -Ec '^  [0-9]+[[:space:]]')" -ge 3 ]
}

wait_back() { # i [timeout]: node i back in the cluster; restarts it if it died
  local i=$1 limit=${2:-60} t0=$SECONDS restarts=0
  while [ $((SECONDS - t0)) -lt "$limit" ]; do
    if ! alive "$i"; then
      wait "${NODE_PID[$i]}" 2>/dev/null
      local rc=$?
      event "node $i exited (status $rc) while waiting for it; starting it again"
      restarts=$((restarts + 1))
      [ $restarts -gt 3 ] && break
      nap 1
      start_node "$i"
    fi
    if in_cluster "$i"; then
      event "node $i back in the cluster after $((SECONDS - t0)) s"
      return 0
    fi
    nap 0.5
  done
  event "node $i NOT back in the cluster within $limit s: $(status "$i" | head -1)"
  return 1
}

leader() { # the leader's node id as any live node sees it, or empty
  local i l
  for i in 1 2 3; do
    alive "$i" || continue
    l=$(status "$i" | head -1 | sed -nE 's/.* leader ([1-9][0-9]*) commit.*/\1/p')
    [ -n "$l" ] && { echo "$l"; return 0; }
  done
  return 1
}

follower() { # a node that is not the leader
  local l i
  l=$(leader) || l=1
  for i in 3 2 1; do
    [ "$i" != "$l" ] && { echo "$i"; return 0; }
  done
}

sigterm_and_wait() { # i: SIGTERM (drain), wait for the exit (bounded 30 s)
  local i=$1 p=${NODE_PID[$1]} t0=$SECONDS
  kill -TERM "$p" 2>/dev/null
  while kill -0 "$p" 2>/dev/null; do
    if [ $((SECONDS - t0)) -ge 30 ]; then
      event "node $i did not exit within 30 s of SIGTERM: SIGKILL"
      kill_pid "$p"
      return 1
    fi
    nap 0.2
  done
  wait "$p" 2>/dev/null
  event "node $i exited $? after SIGTERM ($((SECONDS - t0)) s)"
}

kill9() { # i
  event "kill -9 node $1"
  kill_pid "${NODE_PID[$1]}"
}

# --- scenarios: each runs while traffic flows --------------------------------

fault_none() { nap 60; }

fault_rolling() {
  local pass i
  for pass in 1 2 3; do
    for i in 1 2 3; do
      event "pass $pass: SIGTERM node $i"
      sigterm_and_wait "$i"
      start_node "$i"
      event "restarted node $i"
      wait_back "$i" 60
      nap 3
    done
  done
}

fault_kill-follower() {
  local f
  f=$(follower)
  event "leader is $(leader), killing follower $f"
  kill9 "$f"
  nap 10
  start_node "$f"
  event "restarted node $f"
  wait_back "$f" 60
  nap 20
}

fault_kill-leader() {
  local n l
  for n in 1 2 3; do
    l=$(leader)
    if [ -z "$l" ]; then event "no leader known; waiting"; nap 3; l=$(leader) || l=1; fi
    event "round $n: killing leader $l"
    kill9 "$l"
    nap 3
    start_node "$l"
    event "restarted node $l"
    wait_back "$l" 60
    event "leader now $(leader)"
    nap 10
  done
}

fault_crash-loop() {
  local t0=$SECONDS i
  while [ $((SECONDS - t0)) -lt 120 ]; do
    i=$((RANDOM % 3 + 1))
    kill9 "$i"
    nap 1
    start_node "$i"
    event "restarted node $i"
    nap 9
  done
  for i in 1 2 3; do wait_back "$i" 90; done
  nap 10
}

fault_sigstop() {
  local f
  if [ "${SIGSTOP_TARGET:-follower}" = leader ]; then f=$(leader) || f=1; else f=$(follower); fi
  event "leader is $(leader); SIGSTOP node $f"
  kill -STOP "${NODE_PID[$f]}"
  nap 10
  kill -CONT "${NODE_PID[$f]}"
  event "SIGCONT node $f"
  wait_back "$f" 60
  nap 25
}

fault_partition() {
  event "leader is $(leader); cutting node 3 off the mesh (nft in netns $NS)"
  cut_mesh || { event "nft failed"; return 1; }
  nap 25
  heal_mesh
  event "healed the mesh"
  wait_back 3 60
  nap 20
}

# --- one scenario --------------------------------------------------------------

RESULTS=()
WORST=0

run_scenario() {
  SCEN=$1
  : >"$OUT/$SCEN.events"
  T=$(mktemp -d /tmp/starling-fault-data.XXXXXX)
  # The mesh is mutual TLS, as `starling cluster up` sets it up.
  env -i PATH="$PATH" "$BIN" cluster certs --dir "$T/certs" --nodes 1,2,3 >/dev/null
  NODE_IP=("" 127.0.0.1 127.0.0.2 127.0.0.3)
  IN_NS=0
  if [ "$SCEN" = partition ]; then
    if ! net_up; then
      echo "SCENARIO $SCEN cannot run: network namespace setup failed (root? iproute2?)"
      RESULTS+=("SCENARIO $SCEN ERROR (netns)")
      WORST=2
      teardown
      return
    fi
    NODE_IP=("" "$NET.1" "$NET.2" "$NET.3")
    IN_NS=1
  fi
  event "cluster from $BIN, data in $T, logs in $OUT"
  local i
  start_node 1
  local t0=$SECONDS
  until ready 1; do
    if ! alive 1 || [ $((SECONDS - t0)) -gt 60 ]; then
      echo "SCENARIO $SCEN ERROR: node 1 did not start (see $OUT/$SCEN.node1.log)"
      RESULTS+=("SCENARIO $SCEN ERROR (node 1 did not start)")
      WORST=2; teardown; return
    fi
    nap 0.3
  done
  for i in 2 3; do start_node "$i"; nap 0.5; done
  for i in 1 2 3; do
    wait_back "$i" 60 || {
      echo "SCENARIO $SCEN ERROR: node $i did not join"
      RESULTS+=("SCENARIO $SCEN ERROR (node $i did not join)")
      WORST=2; teardown; return
    }
  done
  for ((i = 0; i < CLIENTS; i++)); do
    (cd "$T" && env -i PATH="$PATH" STARLING_DATA_DIR="$T/node1" \
      "$BIN" user add "u$i" --password pw >/dev/null 2>>"$OUT/$SCEN.useradd.log") || {
      echo "SCENARIO $SCEN ERROR: user add u$i failed: $(tail -1 "$OUT/$SCEN.useradd.log")"
      RESULTS+=("SCENARIO $SCEN ERROR (user add)")
      WORST=2; teardown; return
    }
  done
  # Every replica has the accounts before clients log in anywhere.
  t0=$SECONDS
  for i in 2 3; do
    until [ "$( (cd "$T" && env -i PATH="$PATH" STARLING_DATA_DIR="$T/node$i" "$BIN" user list 2>/dev/null) | grep -c '^u')" -ge "$CLIENTS" ]; do
      [ $((SECONDS - t0)) -gt 30 ] && { event "node $i does not list all users yet; going on"; break; }
      nap 0.3
    done
  done
  BIND=$FRONT NODE1=${NODE_IP[1]} NODE2=${NODE_IP[2]} NODE3=${NODE_IP[3]} \
    C2S_PORT=$C2S_PORT HTTP_PORT=$HTTP_PORT \
    haproxy -f "$HAPROXY_CFG" -db >"$OUT/$SCEN.haproxy.log" 2>&1 9>&- &
  HAPROXY_PID=$!
  nap 2
  kill -0 "$HAPROXY_PID" 2>/dev/null || {
    echo "SCENARIO $SCEN ERROR: haproxy did not start: $(tail -3 "$OUT/$SCEN.haproxy.log")"
    RESULTS+=("SCENARIO $SCEN ERROR (haproxy)")
    WORST=2; teardown; return
  }

  rm -f "$T/ctl" "$T/ready"
  mkfifo "$T/ctl"
  "$PY" "$CHECKER" --host "${FRONT%:*}" --port "${FRONT#*:}" --clients "$CLIENTS" \
    --duration 400 --ready-file "$T/ready" \
    <"$T/ctl" >"$OUT/$SCEN.checker.out" 2>"$OUT/$SCEN.checker.err" 9>&- &
  CHECKER_PID=$!
  exec 7>"$T/ctl"
  t0=$SECONDS
  until [ -s "$T/ready" ]; do
    if ! kill -0 "$CHECKER_PID" 2>/dev/null || [ $((SECONDS - t0)) -gt 120 ]; then
      echo "SCENARIO $SCEN ERROR: the clients did not come online: $(tail -3 "$OUT/$SCEN.checker.err")"
      RESULTS+=("SCENARIO $SCEN ERROR (clients)")
      WORST=2; teardown; return
    fi
    nap 0.5
  done
  event "clients online; traffic"
  nap 10
  event "fault $SCEN begins"
  "fault_$SCEN"
  event "fault $SCEN over; 15 s more traffic"
  nap 15
  event "stop traffic"
  (echo stop >&7) 2>/dev/null
  exec 7>&-
  t0=$SECONDS
  while kill -0 "$CHECKER_PID" 2>/dev/null; do
    if [ $((SECONDS - t0)) -gt 240 ]; then
      event "checker still running after 240 s: killed"
      kill_pid "$CHECKER_PID"
      break
    fi
    nap 1
  done
  wait "$CHECKER_PID" 2>/dev/null
  local rc=$?
  CHECKER_PID=""
  # Cluster state at the end, for the record.
  for i in 1 2 3; do
    { echo "--- node $i"; alive "$i" && status "$i"; } >>"$OUT/$SCEN.status" 2>&1
  done
  teardown

  local line
  line=$("$PY" - "$OUT/$SCEN.checker.out" "$OUT/$SCEN.events" <<'EOF'
import json, sys
out, events = sys.argv[1], sys.argv[2]
rep = None
for l in open(out):
    l = l.strip()
    if l.startswith("{"):
        try:
            rep = json.loads(l)
        except ValueError:
            pass
if rep is None or "acked" not in rep:
    print("ERROR")
    sys.exit(0)
lost, dup = len(rep["lost"]), len(rep["dup"])
# late: delivered only at the final login, i.e. left in offline storage
# while its addressee was online (issue 12: never for more than a second).
late = rep["from_offline_sweep"]
verdict = "PASS" if lost == 0 and dup == 0 and late == 0 else "FAIL"
print(f"acked={rep['acked']} lost={lost} dup={dup} late={late} {verdict}")
t0 = rep.get("t0", 0)
info = (f"  sent={rep['sent']} delivered={rep['delivered']} resumed={rep['resumed']}"
        f" new_sessions={rep['new_sessions']} unacked_at_end={rep['unacked_at_end']}"
        f" from_offline_sweep={rep['from_offline_sweep']} bounced={len(rep['bounced'])}"
        f" misrouted={len(rep['misrouted'])} failures={len(rep['failures'])}"
        f" lost_by_addressing={rep['lost_by_addressing']}")
print(info, file=sys.stderr)
print(f"  traffic t={rep['traffic'][0]}..{rep['traffic'][1]} s (checker clock); events:", file=sys.stderr)
for l in open(events):
    ts, _, what = l.strip().partition(" ")
    print(f"    t={float(ts) - t0:7.1f} {what}", file=sys.stderr)
if lost:
    ts = sorted(d["sent_t"] for d in rep["lost_detail"])
    print(f"  lost sent at t={ts[0]}..{ts[-1]} (first 60): "
          + " ".join(d["id"] for d in rep["lost_detail"][:12]), file=sys.stderr)
if dup:
    print("  dup (first 12): " + " ".join(rep["dup"][:12]), file=sys.stderr)
for f in rep["failures"][:8]:
    print(f"  failure: {f}", file=sys.stderr)
if rep.get("client_log_problems"):
    print(f"  client log: {rep['client_log_problems']}", file=sys.stderr)
EOF
)
  if [ -z "$line" ] || [ "$line" = ERROR ]; then
    echo "SCENARIO $SCEN ERROR: checker exit $rc, no report (see $OUT/$SCEN.checker.err)"
    RESULTS+=("SCENARIO $SCEN ERROR (checker exit $rc)")
    WORST=2
    return
  fi
  # Node logs: warnings and errors, most frequent first.
  for i in 1 2 3; do
    local f="$OUT/$SCEN.node$i.log"
    [ -f "$f" ] || continue
    echo "  node $i: $(grep -c ' WARN ' "$f") WARN, $(grep -c ' ERROR ' "$f") ERROR, $(grep -c 'relay failed' "$f") 'relay failed'" >&2
    grep -E ' (WARN|ERROR) ' "$f" | sed -E 's/^[^ ]+ +//; s/\x1b\[[0-9;]*m//g; s/(session|sid|id|peer|jid|addr|from|to|h|index|term)=[^ ]+/\1=…/g' \
      | cut -c1-160 | sort | uniq -c | sort -rn | head -5 | sed 's/^/      /' >&2
  done
  echo "SCENARIO $SCEN $line"
  RESULTS+=("SCENARIO $SCEN $line")
  case "$line" in *FAIL) [ "$WORST" -lt 1 ] && WORST=1 ;; esac
}

say "logs in $OUT (seed $SEED)"
for s in "${SCENARIOS[@]}"; do
  run_scenario "$s"
done
echo "--- summary (logs in $OUT)"
printf '%s\n' "${RESULTS[@]}"
exit "$WORST"

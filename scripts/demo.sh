#!/usr/bin/env bash
# Installs what is missing, builds Tern and shows the continuum on this machine, ending
# by itself: `tern up` starts nats-server, the control plane and a cloud, an edge and an
# IoT node (each its own process, with emulated links between their sites); two apps
# are deployed and their placement explained; the aggregator is live-migrated, its node
# drained, then another node is killed with SIGKILL and the app restored from its last
# checkpoint; its output and its file are checked against an uninterrupted run; then
# everything stops. Everything it makes is under target/demo-continuum.
# (`scripts/demo-runtime.sh` tours the runtime itself: sandboxing, limits, compiling for
# another architecture, checkpoints and a migration between two `tern` processes.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PATH:$HOME/.local/share/tern/nats/bin"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; }

# Waits until a condition holds, trying it again and again, up to a deadline: this
# machine may be busy, so nothing here waits a fixed time. At the deadline it says what
# it waited for, shows the continuum's state and the log of `tern up`, and fails.
#   wait_for SECONDS "what it waits for" COMMAND...
wait_for() {
  local within=$1 what=$2
  shift 2
  local deadline=$(( $(date +%s) + within ))
  until "$@" >/dev/null 2>&1; do
    if [ -n "${up_pid:-}" ] && ! kill -0 "$up_pid" 2>/dev/null; then
      echo "demo: tern up ended while waiting for $what" >&2
      tail -n 20 "$demo/up.log" >&2
      exit 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "demo: gave up after ${within} s waiting for $what" >&2
      "$tern" ps >&2 || true
      tail -n 20 "$demo/up.log" >&2
      exit 1
    fi
    sleep 0.2
  done
}

# True when app $1 is on node $2 (any node if empty) in one of the states $3 (a
# regular expression, e.g. 'running|exited').
app_is() {
  "$tern" ps --json | python3 -c '
import json, re, sys
app, node, states = sys.argv[1:4]
a = {x["name"]: x for x in json.load(sys.stdin)}.get(app)
ok = a is not None and (not node or a.get("node") == node) and re.fullmatch(states, a.get("state", ""))
sys.exit(0 if ok else 1)' "$1" "$2" "$3"
}

# The node app $1 is on.
node_of() {
  "$tern" ps --json | python3 -c '
import json, sys
print({x["name"]: x for x in json.load(sys.stdin)}[sys.argv[1]]["node"] or "")' "$1"
}

# True when `tern nodes` lists $1 nodes and every pair of sites has a round trip.
nodes_measured() {
  # The API needs a token for reads too: the one `tern up` keeps, once it is there.
  export TERN_TOKEN
  TERN_TOKEN=$(cat "$demo/state/api/token" 2>/dev/null || true)
  [ "$("$tern" nodes --json | grep -c '"name"')" = "$1" ] &&
    [ "$("$tern" nodes --latency --json | grep -c '"ms"')" = "$2" ]
}

step "building tern (first build compiles Wasmtime: a few minutes)"
cargo build --quiet -p tern
tern="$PWD/target/debug/tern"
demo=target/demo-continuum
rm -rf "$demo" && mkdir -p "$demo/apps" "$demo/reference"
cc=(clang-19 --target=wasm32-wasi --sysroot=/usr -O2)
"${cc[@]}" examples/continuum/sensor-agg.c -o "$demo/apps/sensor-agg.wasm"
"${cc[@]}" guests/steps.c -o "$demo/apps/steps.wasm"
cp -r examples/continuum/*.toml examples/continuum/readings "$demo/apps/"

# A port of its own, so that a `tern up` already running elsewhere is left alone.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export TERN_API="http://127.0.0.1:$port"
up_pid=""
stop_up() {
  if [ -n "$up_pid" ] && kill -0 "$up_pid" 2>/dev/null; then
    kill -INT "$up_pid"
    wait "$up_pid" 2>/dev/null || true
  fi
}
trap stop_up EXIT

step "1. a continuum on this machine: nats-server, the control plane, three nodes"
show tern up --state "$demo/state" --listen "127.0.0.1:$port" '&'
"$tern" up --state "$demo/state" --listen "127.0.0.1:$port" 2> "$demo/up.log" &
up_pid=$!
wait_for 300 "three nodes to join, and their round trips to be measured" nodes_measured 3 3
export TERN_TOKEN
TERN_TOKEN=$(cat "$demo/state/api/token")
head -n 1 "$demo/up.log"
show tern nodes
"$tern" nodes
show tern nodes --latency "   # measured through the emulated links: cloud–edge 20 ms, edge–iot 5 ms, cloud–iot 40 ms"
"$tern" nodes --latency

step "2. deploy: an aggregator near the edge (migratable, checkpointed every second) and a batch job"
show cat sensor-agg.toml
grep -v '^#' "$demo/apps/sensor-agg.toml"
show tern deploy sensor-agg.toml
"$tern" deploy "$demo/apps/sensor-agg.toml"
show tern deploy batch.toml
"$tern" deploy "$demo/apps/batch.toml"
# A node compiles a module the first time it runs it: that can take a while.
wait_for 300 "sensor-agg to run on the edge" app_is sensor-agg edge running
wait_for 300 "batch to run" app_is batch "" 'running|exited'
show tern ps
"$tern" ps

step "3. why there: every node, every score part, every filter that refused"
show tern explain sensor-agg
"$tern" explain sensor-agg
show tern explain sensor-agg --why-not iot
"$tern" explain sensor-agg --why-not iot

step "4. move it live to the cloud, and its output goes on where it was"
show tern migrate sensor-agg --to cloud --wait
"$tern" migrate sensor-agg --to cloud --wait
wait_for 300 "sensor-agg to run on the cloud" app_is sensor-agg cloud running
lines=$("$tern" logs sensor-agg | wc -l)
more() { [ "$("$tern" logs sensor-agg | wc -l)" -gt "$1" ]; }
wait_for 120 "sensor-agg to write more on the cloud" more "$lines"
show "tern logs sensor-agg | tail -n 2"
"$tern" logs sensor-agg | tail -n 2

step "5. drain the cloud: the aggregator moves live, the batch job restarts elsewhere"
batch_was=$(node_of batch)
show tern drain cloud --wait
"$tern" drain cloud --wait
wait_for 300 "sensor-agg to run off the cloud" app_is sensor-agg edge 'running|exited'
if [ "$batch_was" = cloud ]; then
  wait_for 300 "batch to run off the cloud" app_is batch edge 'running|exited'
fi
show tern ps
"$tern" ps
show tern drain cloud --undo
"$tern" drain cloud --undo

step "6. kill the edge node with SIGKILL: tern up starts it again, and its apps resume"
# Found by its command line (a minimal machine may have no pgrep).
edge=""
for p in /proc/[0-9]*; do
  cmd=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) || continue
  case "$cmd" in *" node "*"--name edge "*"$demo/state"*) edge=${p#/proc/}; break ;; esac
done
[ -n "$edge" ] || { echo "demo: the edge node's process was not found" >&2; exit 1; }
restarts=$("$tern" ps --json | python3 -c 'import json,sys; print({x["name"]: x for x in json.load(sys.stdin)}["sensor-agg"]["restarts"])')
show "kill -KILL $edge   # the edge node's process"
kill -KILL "$edge"
killed=$(date +%s%N)
# Running again, one restart more: on the edge node tern up started again (from the
# app's last checkpoint), or wherever the control plane placed it if it declared the
# edge lost first.
resumed() {
  "$tern" ps --json | python3 -c '
import json, sys
a = {x["name"]: x for x in json.load(sys.stdin)}["sensor-agg"]
sys.exit(0 if a["state"] == "running" and a["restarts"] > int(sys.argv[1]) else 1)' "$1"
}
wait_for 300 "sensor-agg to run again after the SIGKILL" resumed "$restarts"
echo "sensor-agg runs again on $(node_of sensor-agg), $(( ($(date +%s%N) - killed) / 1000000 )) ms after the SIGKILL"
grep -E 'node edge exited|node edge started again' "$demo/up.log" | head -n 2
show tern ps
"$tern" ps

step "7. nothing lost, nothing repeated: the same output and file as an uninterrupted run"
wait_for 600 "sensor-agg to finish" app_is sensor-agg "" 'exited|failed'
app_is sensor-agg "" exited || { echo "demo: sensor-agg failed" >&2; "$tern" ps >&2; exit 1; }
"$tern" logs sensor-agg > "$demo/sensor-agg.out"
show tern cp sensor-agg:/data/agg.csv agg.csv
"$tern" cp sensor-agg:/data/agg.csv "$demo/agg.csv"
mkdir -p "$demo/reference/data" && cp "$demo/apps/readings/calibration.csv" "$demo/reference/data/"
# The same program and arguments as the manifest's, run once without interruption.
args=$(python3 -c '
import json, sys
line = next(l for l in open(sys.argv[1]) if l.startswith("args"))
print(" ".join(json.loads(line.split("=", 1)[1])))' "$demo/apps/sensor-agg.toml")
# shellcheck disable=SC2086
"$tern" run --dir "$demo/reference/data::/data" "$demo/apps/sensor-agg.wasm" $args > "$demo/reference.out"
tail -n 1 "$demo/sensor-agg.out"
if cmp -s "$demo/sensor-agg.out" "$demo/reference.out"; then
  echo "output: identical to an uninterrupted run ($(wc -l < "$demo/reference.out") lines)"
else
  echo "demo: the output differs from an uninterrupted run:" >&2
  diff "$demo/reference.out" "$demo/sensor-agg.out" | head -n 20 >&2
  exit 1
fi
if cmp -s "$demo/agg.csv" "$demo/reference/data/agg.csv"; then
  echo "/data/agg.csv: identical ($(wc -l < "$demo/agg.csv") lines)"
else
  echo "demo: /data/agg.csv differs from an uninterrupted run's" >&2
  exit 1
fi

step "8. Ctrl-C stops it all"
stop_up
up_pid=""
tail -n 1 "$demo/up.log"
step "done: see README.md, \"The continuum\", for every verb"

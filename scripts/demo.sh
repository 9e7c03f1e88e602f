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
for _ in $(seq 300); do
  [ "$("$tern" nodes --json 2>/dev/null | grep -c '"name"')" = 3 ] && break
  kill -0 "$up_pid" 2>/dev/null || { cat "$demo/up.log"; exit 1; }
  sleep 0.2
done
export TERN_TOKEN
TERN_TOKEN=$(cat "$demo/state/nats/join-token")
head -n 1 "$demo/up.log"
show tern nodes
"$tern" nodes
sleep 3
show tern nodes --latency "   # measured through the emulated links: cloud–edge 20 ms, edge–iot 5 ms, cloud–iot 40 ms"
"$tern" nodes --latency

step "2. deploy: an aggregator near the edge (migratable, checkpointed every second) and a batch job"
show cat sensor-agg.toml
grep -v '^#' "$demo/apps/sensor-agg.toml"
show tern deploy sensor-agg.toml
"$tern" deploy "$demo/apps/sensor-agg.toml"
show tern deploy batch.toml
"$tern" deploy "$demo/apps/batch.toml"
sleep 2
show tern ps
"$tern" ps

step "3. why there: every node, every score part, every filter that refused"
show tern explain sensor-agg
"$tern" explain sensor-agg
show tern explain sensor-agg --why-not iot
"$tern" explain sensor-agg --why-not iot

step "4. move it live to the cloud, and its output goes on where it was"
show tern migrate sensor-agg --to cloud
"$tern" migrate sensor-agg --to cloud
sleep 2
show "tern logs sensor-agg | tail -n 2"
"$tern" logs sensor-agg | tail -n 2

step "5. drain the cloud: the aggregator moves live, the batch job restarts elsewhere"
show tern drain cloud
"$tern" drain cloud || true
sleep 1
"$tern" ps
show tern drain cloud --undo
"$tern" drain cloud --undo

step "6. kill the edge node with SIGKILL: its apps come back on the cloud"
sleep 2
# Found by its command line (a minimal machine may have no pgrep).
edge=""
for p in /proc/[0-9]*; do
  cmd=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) || continue
  case "$cmd" in *" node "*"--name edge "*"$demo/state"*) edge=${p#/proc/}; break ;; esac
done
show "kill -KILL $edge   # the edge node's process"
kill -KILL "$edge"
killed=$(date +%s%N)
for _ in $(seq 100); do
  "$tern" ps --json | python3 -c '
import json, sys
apps = {a["name"]: a for a in json.load(sys.stdin)}
a = apps.get("sensor-agg", {})
sys.exit(0 if a.get("node") == "cloud" and a.get("state") in ("running", "exited") else 1)' && break
  sleep 0.1
done
echo "back on the cloud $(( ($(date +%s%N) - killed) / 1000000 )) ms after the SIGKILL"
show tern ps
"$tern" ps

step "7. nothing lost, nothing repeated: the same output and file as an uninterrupted run"
for _ in $(seq 600); do
  "$tern" ps --json | grep -q '"name": "sensor-agg"' || break
  "$tern" ps --json | python3 -c '
import json, sys
a = {x["name"]: x for x in json.load(sys.stdin)}["sensor-agg"]
sys.exit(0 if a["state"] in ("exited", "failed") else 1)' && break
  sleep 0.2
done
"$tern" logs sensor-agg > "$demo/sensor-agg.out"
show tern cp sensor-agg:/data/agg.csv agg.csv
"$tern" cp sensor-agg:/data/agg.csv "$demo/agg.csv"
mkdir -p "$demo/reference/data" && cp "$demo/apps/readings/calibration.csv" "$demo/reference/data/"
"$tern" run --dir "$demo/reference/data::/data" "$demo/apps/sensor-agg.wasm" --window 60 --ticks 3000 > "$demo/reference.out"
tail -n 1 "$demo/sensor-agg.out"
cmp "$demo/sensor-agg.out" "$demo/reference.out" && echo "output: identical to an uninterrupted run ($(wc -l < "$demo/reference.out") lines)"
cmp "$demo/agg.csv" "$demo/reference/data/agg.csv" && echo "/data/agg.csv: identical ($(wc -l < "$demo/agg.csv") lines)"

step "8. Ctrl-C stops it all"
stop_up
up_pid=""
tail -n 1 "$demo/up.log"
step "done: see README.md, \"The continuum\", for every verb"

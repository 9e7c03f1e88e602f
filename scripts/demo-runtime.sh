#!/usr/bin/env bash
# Installs what is missing, builds Tern and shows its main job on real C programs:
# a WASI program run sandboxed on two engines, hostile guests stopped, an artifact
# compiled for another architecture, a running program checkpointed and resumed on the
# other engine, and a live migration with an open file between two tern processes.
# Ends by itself; everything it makes is under target/demo. (`scripts/demo.sh` shows the
# continuum: nodes, placement, moves.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; }

step "building tern (first build compiles Wasmtime: a few minutes)"
cargo build --quiet -p tern
tern=target/debug/tern
demo=target/demo
rm -rf "$demo" && mkdir -p "$demo/out"
cc=(clang-19 --target=wasm32-wasi --sysroot=/usr -O2)
"${cc[@]}" examples/wordfreq.c -o "$demo/wordfreq.wasm"
for g in spin membomb escape steps journal; do "${cc[@]}" "guests/$g.c" -o "$demo/$g.wasm"; done
mkdir -p "$demo/jail/inner" && echo "host secret" > "$demo/jail/secret.txt" && ln -s .. "$demo/jail/inner/link-out"

step "1. a C program, sandboxed: reads the docs read-only, writes its report to /out"
show tern run --ro-dir .::/repo --dir "$demo/out::/out" wordfreq.wasm /out/report.txt /repo/README.md /repo/ARCHITECTURE.md
$tern run --ro-dir .::/repo --dir "$demo/out::/out" "$demo/wordfreq.wasm" /out/report.txt /repo/README.md /repo/ARCHITECTURE.md
cat "$demo/out/report.txt"

step "2. the same module on Pulley, the portable interpreter: same report"
$tern run --engine pulley --ro-dir .::/repo --dir "$demo/out::/out" "$demo/wordfreq.wasm" /out/report-pulley.txt /repo/README.md /repo/ARCHITECTURE.md
cmp "$demo/out/report.txt" "$demo/out/report-pulley.txt" && echo "reports are identical"

step "3. hostile guests end with a message naming the limit; the host is untouched"
show tern run --timeout 1s spin.wasm
set +e
$tern run --timeout 1s "$demo/spin.wasm"; echo "exit code $?"
show tern run --max-memory 64MiB membomb.wasm
$tern run --max-memory 64MiB "$demo/membomb.wasm"; echo "exit code $?"
set -e
show tern run --dir "$demo/jail/inner::/data" escape.wasm /data
$tern run --dir "$demo/jail/inner::/data" "$demo/escape.wasm" /data

step "4. compile once in the cloud for an arm64 edge box (no arm64 toolchain needed)"
show tern compile --target aarch64-unknown-linux-gnu wordfreq.wasm
$tern compile --target aarch64-unknown-linux-gnu "$demo/wordfreq.wasm" -o "$demo/wordfreq.aarch64.cwasm"
set +e
show tern run wordfreq.aarch64.cwasm
$tern run "$demo/wordfreq.aarch64.cwasm"; echo "exit code $? (this machine is $(uname -m))"
set -e

step "5. checkpoint a running program under Cranelift, resume it under Pulley"
show tern run --checkpoint-after 150ms --checkpoint-out steps.snap steps.wasm 40 10000000
$tern run --checkpoint-after 150ms --checkpoint-out "$demo/steps.snap" "$demo/steps.wasm" 40 10000000 | tail -n 3
if [ -f "$demo/steps.snap" ]; then
  show tern restore --engine pulley steps.snap
  set +e
  $tern restore --engine pulley "$demo/steps.snap" | tail -n 3; echo "exit code ${PIPESTATUS[0]} (the program's own)"
  set -e
else
  echo "(this machine ran the whole program before the checkpoint: nothing to restore)"
fi

step "6. live-migrate a program with an open file to another tern process"
mkdir -p "$demo/src" "$demo/dst"
show tern receive --listen 127.0.0.1:0 --dir dst::/data '&'
$tern receive --listen 127.0.0.1:0 --dir "$demo/dst::/data" 2> "$demo/receive.err" > "$demo/receive.out" &
receiver=$!
for _ in $(seq 50); do grep -q "listening on" "$demo/receive.err" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^receive: listening on //p' "$demo/receive.err")
show tern run --migrate-to "$addr" --migrate-after 1s --dir src::/data journal.wasm /data 150 20000000
$tern run --migrate-to "$addr" --migrate-after 1s --dir "$demo/src::/data" "$demo/journal.wasm" /data 150 20000000 \
  > "$demo/source.out" 2> "$demo/source.err"
cat "$demo/source.err"
if grep -q "^migrated to" "$demo/source.err"; then
  wait "$receiver"
  echo "-- the source printed $(wc -l < "$demo/source.out") lines, ending:"
  tail -n 2 "$demo/source.out"
  echo "-- the destination printed $(wc -l < "$demo/receive.out") lines, starting and ending:"
  head -n 2 "$demo/receive.out"
  tail -n 2 "$demo/receive.out"
  echo "-- its copy of the journal has $(wc -l < "$demo/dst/journal.txt") records"
else
  # The program ended (or the migration failed) on the source: it finished there.
  kill "$receiver" 2>/dev/null || true
  wait "$receiver" 2>/dev/null || true
  tail -n 1 "$demo/source.out"
fi

step "done: see README.md for tern run, compile, restore, receive and their flags"

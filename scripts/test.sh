#!/usr/bin/env bash
# Installs what is missing, then runs Tern's whole test suite: formatting, lints, unit
# and integration tests (real C guests built with clang-19 and wasi-libc).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== tests" >&2
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --workspace --no-fail-fast
  # Doc tests are not run by nextest.
  cargo test --workspace --doc --quiet
else
  cargo test --workspace --no-fail-fast
fi

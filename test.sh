#!/usr/bin/env bash
# Runs every test of the workspace against real redis-servers that the tests start themselves:
# doc tests (README and API examples) first, then unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")"
scripts/ensure-redis.sh
cargo test --workspace --doc
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --profile ci
else
  cargo test --workspace --lib --bins --tests
fi

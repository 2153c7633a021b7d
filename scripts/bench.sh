#!/usr/bin/env bash
# Runs `dlock bench` against a throwaway redis-server on a free loopback port.
# Any arguments go to `dlock bench` (e.g. --duration 2s, --json, --svg chart.svg).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-redis.sh
cargo build --quiet --release -p dlock-cli
source scripts/throwaway-redis.sh
start_throwaway_redis
port=$REDIS_PORT
echo "dlock bench against redis-server $(redis-server --version | awk '{print $3}') on 127.0.0.1:$port, $(nproc) cores" >&2
target/release/dlock bench --redis "redis://127.0.0.1:$port/" "$@"

#!/usr/bin/env bash
# Runs `dlock bench` against a throwaway redis-server on a free loopback port.
# Any arguments go to `dlock bench` (e.g. --duration 2s, --json, --svg chart.svg).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-redis.sh
cargo build --quiet --release -p dlock-cli
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
  --logfile "$dir/redis.log" --daemonize no &
redis_pid=$!
trap 'kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
echo "dlock bench against redis-server $(redis-server --version | awk '{print $3}') on 127.0.0.1:$port, $(nproc) cores" >&2
target/release/dlock bench --redis "redis://127.0.0.1:$port/" "$@"

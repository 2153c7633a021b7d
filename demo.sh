#!/usr/bin/env bash
# dlock demo: the seeds' duplicate batch job, refused. Starts (and stops) its own redis-server.
set -euo pipefail
cd "$(dirname "$0")"
scripts/ensure-redis.sh
cargo build --quiet --release -p dlock --example job_once
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
  --logfile "$dir/redis.log" --daemonize no &
redis_pid=$!
trap 'kill $redis_pid 2>/dev/null; wait $redis_pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
echo "== two copies of main:hello start at once (redis on port $port)"
DLOCK_REDIS_URL="redis://127.0.0.1:$port/" target/release/examples/job_once

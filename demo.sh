#!/usr/bin/env bash
# dlock demo: the seeds' duplicate batch job, refused.
# Builds dlock, starts a throwaway redis-server on a free port, starts two copies of a
# one-second "hello, world" job at the same moment, shows `dlock status` while it runs,
# and cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")"
scripts/ensure-redis.sh
echo "== building dlock"
cargo build --quiet --release -p dlock-cli
dlock="$PWD/target/release/dlock"

source scripts/throwaway-redis.sh
start_throwaway_redis
port=$REDIS_PORT
export DLOCK_REDIS_URL="redis://127.0.0.1:$port/"

# The seeds' Rake task: sleep 1 (a long-running task), then print hello, world.
job=(sh -c 'sleep 1; echo "***hello, world***"')
echo "== two copies of main:hello start at once (redis on port $port):"
echo "   dlock run main:hello -- sh -c 'sleep 1; echo \"***hello, world***\"'   (x2)"
"$dlock" run main:hello -- "${job[@]}" 2>&1 & first=$!
"$dlock" run main:hello -- "${job[@]}" 2>&1 & second=$!
sleep 0.4
echo "== dlock status main:hello (while the job runs):"
"$dlock" status main:hello | sed 's/^/   /'
set +e
wait "$first"; first_code=$?
wait "$second"; second_code=$?
set -e
echo "== exit codes: $first_code and $second_code (75 = another process was already running it)"
echo "== dlock status main:hello (after the job):"
"$dlock" status main:hello | sed 's/^/   /'
if [ $((first_code + second_code)) -ne 75 ]; then
  echo "demo failed: expected one copy to run (0) and one to be refused (75)" >&2
  exit 1
fi
echo "== ran once, refused once: done"

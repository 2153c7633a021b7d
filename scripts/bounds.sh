#!/usr/bin/env bash
# What any Rust client reaches on this machine with bare commands (scripts/bounds/src/main.rs),
# as a multiple of the peer bench's lock-cycle floor measured in the same run: redis-benchmark
# (C, one connection) doing SET NX PX and the compare-and-delete EVALSHA, 1 / (1/SET + 1/EVALSHA).
# Each async mode runs on the adapters' runtime (multi-thread, two workers) and on a
# current-thread one. Starts five throwaway redis-servers (W3 needs five masters) and builds the
# bounds binary.
#
#   scripts/bounds.sh [--rounds N] [--seconds S] [--dlock PATH]
#
# With --dlock (a release dlock binary), it also times `dlock run KEY -- true` per start
# against `true` and an empty Rust process (the fixed cost of each process `dlock run` starts).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3 seconds=4 dlock=""
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --dlock) dlock=$2; shift 2 ;;
    *) echo "usage: $0 [--rounds N] [--seconds S] [--dlock PATH]" >&2; exit 2 ;;
  esac
done
scripts/ensure-redis.sh
(cd scripts/bounds && cargo build --quiet --release)
bounds=scripts/bounds/target/release/dlock-bounds

dir=$(mktemp -d)
pids=()
trap 'kill ${pids[@]+"${pids[@]}"} 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
# Five consecutive free ports: W3's masters are PORT..PORT+4 (scripts/throwaway-redis.sh starts
# one server on any free port, so it is not used here).
port=$(python3 -c '
import socket
for base in range(20000, 60000, 7):
    try:
        ss = [socket.socket() for _ in range(5)]
        for i, s in enumerate(ss): s.bind(("127.0.0.1", base + i))
        print(base); break
    except OSError: pass
    finally:
        for s in ss: s.close()')
if [ -z "$port" ]; then
  echo "error: no five consecutive free ports found" >&2
  exit 1
fi
for i in 0 1 2 3 4; do
  redis-server --port $((port + i)) --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$dir" --logfile "$dir/redis-$i.log" --daemonize no &
  pids+=($!)
done
for i in 0 1 2 3 4; do
  for _ in $(seq 100); do redis-cli -p $((port + i)) ping >/dev/null 2>&1 && break; sleep 0.05; done
done

release='if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0'
sha=$(redis-cli -p "$port" script load "$release")
rps() { redis-benchmark -p "$port" -c 1 -n 20000 --csv "$@" | tail -1 | cut -d, -f2 | tr -d '"'; }
echo "bare commands against the lock-cycle floor, $(nproc) cores, redis-server $(redis-server --version | awk '{print $3}')"
for round in $(seq "$rounds"); do
  set_nx=$(rps set floor:lock token NX PX 10000)
  evalsha=$(rps evalsha "$sha" 1 floor:lock token)
  floor=$(python3 -c "print(round(1 / (1 / $set_nx + 1 / $evalsha)))")
  echo "round $round: floor $floor cycles/s"
  ratio() { python3 -c "print(f'{$1 / $floor:.2f}')"; }
  for mode in w1-raw-sync w3-raw-sync; do
    read -r _ rate < <("$bounds" "$mode" "$port" "$seconds")
    printf '  %-18s %6s /s  %sx floor\n' "$mode" "$rate" "$(ratio "$rate")"
  done
  for mode in w1-raw-async w1-redis-rs w1-redis-rs-driven w3-raw-async w3-redis-rs w2-ring; do
    read -r _ rate < <("$bounds" "$mode" "$port" "$seconds")
    read -r _ current < <(BOUNDS_CURRENT_THREAD=1 "$bounds" "$mode" "$port" "$seconds")
    printf '  %-18s %6s /s  %sx floor   current-thread runtime: %6s /s  %sx floor\n' \
      "$mode" "$rate" "$(ratio "$rate")" "$current" "$(ratio "$current")"
  done
done
if [ -n "$dlock" ]; then
  "$bounds" process-start true
  "$bounds" process-start "$dlock" run --redis "redis://127.0.0.1:$port/" bounds:run -- true
fi

#!/usr/bin/env bash
# Makes sure redis-server is available: dlock's tests and demo start their own servers.
# Installs Debian's package when it is missing (as root, or with sudo).
set -euo pipefail
if [ -n "${DLOCK_REDIS_SERVER:-}" ] && [ -x "$DLOCK_REDIS_SERVER" ]; then exit 0; fi
if command -v redis-server >/dev/null 2>&1; then exit 0; fi
echo "redis-server not found; installing it with apt-get" >&2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: no apt-get here; install redis-server yourself (e.g. 'brew install redis')" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq redis-server >/dev/null
command -v redis-server >/dev/null 2>&1 || { echo "error: redis-server still missing" >&2; exit 1; }

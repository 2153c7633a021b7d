#!/usr/bin/env bash
# Makes sure what dlock's tests and demo need is installed: redis-server (they start their own
# servers; redis-cli comes with it), openssl (the TLS test makes a throwaway certificate),
# python3 (a CLI test's job uses it to exit its main thread) and setsid (util-linux; the
# terminal test starts a session with it).
# Installs Debian's packages when something is missing (as root, or with sudo).
set -euo pipefail
missing=()
if ! { [ -n "${DLOCK_REDIS_SERVER:-}" ] && [ -x "$DLOCK_REDIS_SERVER" ]; } &&
  ! command -v redis-server >/dev/null 2>&1; then
  missing+=(redis-server)
fi
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v setsid >/dev/null 2>&1 || missing+=(util-linux)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing ${missing[*]} with apt-get" >&2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: no apt-get here; install ${missing[*]} yourself (e.g. 'brew install redis')" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq "${missing[@]}" >/dev/null
command -v redis-server >/dev/null 2>&1 || { echo "error: redis-server still missing" >&2; exit 1; }

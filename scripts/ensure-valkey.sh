#!/usr/bin/env bash
# Installs valkey-server, for test.sh's second pass of the suite (against Valkey instead of
# Redis). Where the machine's package sources already offer it, it is simply installed. On
# Debian bookworm it is in bookworm-backports (Valkey 8.0): that suite is added to the stock
# `Suites: bookworm bookworm-updates` line of the machine's own debian.sources entry, so this
# script names no host. Anywhere else it says what to do and exits 1, changing nothing.
set -euo pipefail
command -v valkey-server >/dev/null 2>&1 && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: no apt-get here; install valkey-server yourself" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
if apt-cache policy valkey-server 2>/dev/null | grep -q 'Candidate: [0-9]'; then
  $sudo apt-get install -y -qq valkey-server >/dev/null
  exit 0
fi
release=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
sources=/etc/apt/sources.list.d/debian.sources
if [ "$release" != bookworm ] || ! grep -qx 'Suites: bookworm bookworm-updates' "$sources" 2>/dev/null; then
  echo "error: no package source here offers valkey-server, and this is not a stock Debian" \
    "bookworm to add bookworm-backports to; install valkey-server yourself" >&2
  exit 1
fi
$sudo sed -i 's/^Suites: bookworm bookworm-updates$/Suites: bookworm bookworm-updates bookworm-backports/' "$sources"
$sudo apt-get update -qq
$sudo apt-get install -y -qq -t bookworm-backports valkey-server >/dev/null
command -v valkey-server >/dev/null 2>&1

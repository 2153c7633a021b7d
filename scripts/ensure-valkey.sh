#!/usr/bin/env bash
# Installs valkey-server, for test.sh's second pass of the suite (against Valkey instead of
# Redis). Debian bookworm has it in bookworm-backports (Valkey 8.0): that suite is added to the
# machine's existing apt source entry, so this script names no host. Exits 1 when no package
# source here offers valkey-server.
set -euo pipefail
command -v valkey-server >/dev/null 2>&1 && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: no apt-get here; install valkey-server yourself" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
deb822=/etc/apt/sources.list.d/debian.sources
release=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
backports=""
if [ -n "$release" ] && [ -f "$deb822" ] &&
  grep -q "^Suites: .*\b$release\b" "$deb822" && ! grep -q "$release-backports" "$deb822"; then
  # deb822: the first Suites line naming the release gains its backports suite.
  $sudo sed -i "0,/^Suites: \(.*\b$release\b.*\)$/s//Suites: \1 $release-backports/" "$deb822"
elif [ -n "$release" ] && [ -f /etc/apt/sources.list ] &&
  ! grep -qs "$release-backports" /etc/apt/sources.list /etc/apt/sources.list.d/*.list; then
  # One-line format: the same mirror's entry for the release, with its backports suite.
  grep -E "^deb [^ ]+ $release main" /etc/apt/sources.list | head -1 |
    sed "s/ $release main/ $release-backports main/" |
    $sudo tee /etc/apt/sources.list.d/backports.list >/dev/null
fi
grep -qs "$release-backports" "$deb822" /etc/apt/sources.list.d/*.list && backports="-t $release-backports"
$sudo apt-get update -qq
# shellcheck disable=SC2086 # $backports is empty or two words
if ! $sudo apt-get install -y -qq $backports valkey-server >/dev/null; then
  echo "error: no package source here offers valkey-server" >&2
  exit 1
fi
command -v valkey-server >/dev/null 2>&1

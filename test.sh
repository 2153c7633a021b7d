#!/usr/bin/env bash
# Runs every test of the workspace against real redis-servers that the tests start themselves:
# doc tests (README and API examples) first, then unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")"
scripts/ensure-redis.sh
# The README's install command, into a throwaway root: the binary lands in ROOT/bin and runs
# from there. A debug build sharing the suite's target dir (seconds, not a release build's
# minutes).
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target} \
  cargo install --quiet --locked --debug --path crates/dlock-cli --root "$root"
"$root/bin/dlock" --version
# Both crates package and build as published (the test kit is publish = false). It asks the
# crate registry's index, so it is skipped offline (CARGO_NET_OFFLINE=true).
if [ "${CARGO_NET_OFFLINE:-}" != true ]; then
  # cargo verifies dlock-cli against dlock unpacked from the package into CARGO_HOME, and
  # treats that copy as an immutable registry crate: it skips the unpacking when an earlier run
  # left the same version there, and keeps the build of it in the target dir. A CARGO_HOME kept
  # between runs built dlock-cli against an old dlock and failed. Drop both first.
  rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/dlock-[0-9]* \
    "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/dlock-cli-[0-9]*
  CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target} cargo clean --quiet -p dlock
  cargo publish --quiet --dry-run --allow-dirty -p dlock -p dlock-cli
fi
# Formatting and lints first: they fail in seconds, before the long suite. Skipped where the
# toolchain lacks rustfmt or clippy (both are rustup components).
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all --check
fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --quiet --workspace --all-targets -- -D warnings
fi
cargo test --workspace --doc
suite() {
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --profile ci
  else
    cargo test --workspace --lib --bins --tests
  fi
}
suite
# The same suite against Valkey, when it is installed (scripts/ensure-valkey.sh; CI does).
if valkey=$(command -v valkey-server); then
  echo "== again against $("$valkey" --version | cut -d' ' -f1-3)"
  DLOCK_REDIS_SERVER=$valkey suite
else
  echo "== valkey-server is not installed: the Valkey pass is skipped (scripts/ensure-valkey.sh)"
fi

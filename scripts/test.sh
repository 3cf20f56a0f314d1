#!/usr/bin/env bash
# The test command of the README: installs what the build and the tests need when it is
# missing (a fresh Debian machine has no cmake), then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# tests/external.rs runs the reference ext_proc processor (examples/ext_proc/processor.py).
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

# Lints first: they are part of "the tests pass".
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The library API is public: every public item documented (missing_docs), no broken doc links.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
cargo test --workspace --locked "$@"
# Fresh cache hits have a fast path; the cache tests also run with every request on the full
# RFC 9111 path.
TOLLGATE_CACHE_FAST_HITS=0 cargo test --locked --test cache --test cache_rfc "$@"

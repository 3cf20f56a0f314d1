#!/usr/bin/env bash
# Quick start: build tollgate (release) and run it on a config (default conf/tollgate.toml).
# A fresh Debian machine lacks cmake, which a dependency's C build needs: install it first.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cmake >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq cmake
fi
cargo build --release --locked
exec target/release/tollgate run -c "${1:-conf/tollgate.toml}"

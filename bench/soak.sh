#!/usr/bin/env bash
# Memory soak (see bench/soak.py): builds tollgate (release) if needed, then sends two million
# requests at 256 connections to 127.0.0.1 and checks RSS. Bounded by SOAK_TIMEOUT (900 s).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in nginx wrk cargo python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "missing $tool (apt-get install -y nginx-light wrk)" >&2; exit 1; }
done
timeout 1800 cargo build --release --locked
out="bench/results/$(date +%F)-$(git rev-parse --short HEAD 2>/dev/null || echo norev)-soak.txt"
python3 bench/soak.py 2>&1 | tee "$out"
exit "${PIPESTATUS[0]}"

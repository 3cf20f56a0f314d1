#!/usr/bin/env bash
# tollgate benchmark: builds tollgate and the bare Pingora floor (release), starts an nginx
# upstream and the reference proxies on free 127.0.0.1 ports, runs wrk in interleaved rounds
# and writes bench/results/<date>-<rev>.md. See bench/README.md.
#
#   bench/run.sh                          # full run: 10s x 3 rounds x -c64/-c256 (~7 min)
#   DURATION=3s ROUNDS=1 bench/run.sh     # smoke run (~1 min once built)
#   REV=HEAD bench/run.sh                 # measure a commit (clean export), not the working tree
#   REV=HEAD BASELINE=a5fbe2b bench/run.sh  # A/B: both revisions in the same rounds
#
# Every phase is bounded: BUILD_TIMEOUT (default 1800 s) for the two builds together,
# BENCH_TIMEOUT for the load phase (default: an estimate from DURATION/ROUNDS plus 3 min).
# All load goes to 127.0.0.1 only. Every process started here is killed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

for tool in nginx wrk cargo python3; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "missing $tool (Debian: apt-get install -y nginx-light wrk)" >&2
    exit 1
  fi
done

BENCH_TMP=$(mktemp -d /tmp/tollgate-bench.XXXXXX)
export BENCH_TMP
DRIVER_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$DRIVER_PID" ] && kill -0 "$DRIVER_PID" 2>/dev/null; then
    # The driver stops what it started on SIGTERM; give it 8 s.
    kill -TERM "$DRIVER_PID" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$DRIVER_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$DRIVER_PID" 2>/dev/null || true
  fi
  # Whatever the driver started and did not stop (e.g. it was SIGKILLed): SIGINT is a fast
  # shutdown for nginx and Pingora alike; then SIGKILL.
  if [ -f "$BENCH_TMP/pids" ]; then
    while read -r pid; do
      kill -INT "$pid" 2>/dev/null || true
    done <"$BENCH_TMP/pids"
    sleep 1
    while read -r pid; do
      kill -KILL "$pid" 2>/dev/null || true
    done <"$BENCH_TMP/pids"
  fi
  if [ "$rc" -ne 0 ] && [ -d "$BENCH_TMP" ]; then
    echo "bench failed (exit $rc); logs and configs kept in $BENCH_TMP" >&2
  else
    rm -rf "$BENCH_TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- build (bounded) ------------------------------------------------------------------------
# See bench/prepare.sh: tollgate (working tree, or REV=<commit> from a clean export),
# BASELINE=<commit> too if set, the floor; and whether the nginx + Lua reference can run.
source "$ROOT/bench/prepare.sh"

# ---- load (bounded) -------------------------------------------------------------------------
BENCH_TIMEOUT=${BENCH_TIMEOUT:-$(python3 bench/run.py --time-bound)}
echo "load phase bounded to ${BENCH_TIMEOUT}s" >&2
timeout -k 10 "$BENCH_TIMEOUT" python3 "$ROOT/bench/run.py" &
DRIVER_PID=$!
wait "$DRIVER_PID"

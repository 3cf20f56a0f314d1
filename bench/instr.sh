#!/usr/bin/env bash
# tollgate instruction counts: builds like run.sh (REV=, BASELINE=), then runs bench/instr.py:
# every target under valgrind --tool=callgrind, warm-up, counters zeroed, exactly REQUESTS
# keep-alive requests, dump; prints user-space instructions per request and writes
# bench/results/<date>-<rev>[-vs-<base>]-instr.md. See bench/README.md.
#
#   REV=HEAD bench/instr.sh                      # one revision: ~5 min once built
#   REV=HEAD BASELINE=a5fbe2b bench/instr.sh     # two revisions in one invocation
#   REQUESTS=20000 REPEAT=2 SCENARIOS=proxy,fullchain TARGETS=... ANNOTATE=1 (defaults but the last)
#
# Bounded: BUILD_TIMEOUT (1800 s) for the builds, INSTR_TIMEOUT (default from the settings) for
# the measurements. All traffic goes to 127.0.0.1. Every process started here is killed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

for tool in nginx valgrind callgrind_control cargo python3; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "missing $tool (Debian: apt-get install -y nginx-light valgrind)" >&2
    exit 1
  fi
done

BENCH_TMP=$(mktemp -d /tmp/tollgate-instr.XXXXXX)
export BENCH_TMP
DRIVER_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$DRIVER_PID" ] && kill -0 "$DRIVER_PID" 2>/dev/null; then
    # The driver stops what it started on SIGTERM (valgrind may take a while to exit); give it 8 s.
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
    echo "instr failed (exit $rc); logs, configs and callgrind dumps kept in $BENCH_TMP" >&2
  else
    rm -rf "$BENCH_TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


# See bench/prepare.sh (the same builds as run.sh).
source "$ROOT/bench/prepare.sh"

# ---- measure (bounded) ----------------------------------------------------------------------
if [ -z "${INSTR_TIMEOUT:-}" ]; then
  # Under callgrind a proxy serves roughly 1-3k requests/s here; allow 250 req/s plus 60 s
  # start-up and stop per target, for at least 10 targets (4 references + the scenarios, twice
  # with BASELINE), plus 40 s per scenario for the OTLP sink's settle waits (trace* scenarios).
  n=$(( ${REQUESTS:-20000} * ${REPEAT:-2} + ${WARMUP_REQUESTS:-2000} ))
  scen=$(echo "${SCENARIOS:-proxy,fullchain}" | tr ',' '\n' | grep -c .)
  mult=1
  [ -z "${BASELINE:-}" ] || mult=2
  targets=$(( 4 + scen * mult ))
  [ "$targets" -ge 10 ] || targets=10
  INSTR_TIMEOUT=$(( targets * (n / 250 + 60) + 40 * scen + 120 ))
fi
echo "measurements bounded to ${INSTR_TIMEOUT}s" >&2
timeout -k 10 "$INSTR_TIMEOUT" python3 "$ROOT/bench/instr.py" &
DRIVER_PID=$!
wait "$DRIVER_PID"

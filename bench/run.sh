#!/usr/bin/env bash
# tollgate benchmark: builds tollgate and the bare Pingora floor (release), starts an nginx
# upstream and the reference proxies on free 127.0.0.1 ports, runs wrk in interleaved rounds
# and writes bench/results/<date>-<rev>.md. See bench/README.md.
#
#   bench/run.sh                          # full run: 10s x 3 rounds x -c64/-c256 (~7 min)
#   DURATION=3s ROUNDS=1 bench/run.sh     # smoke run (~1 min once built)
#   REV=HEAD bench/run.sh                 # measure a commit (clean export), not the working tree
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
# tollgate: the working tree (`cargo build --release` at the root), or with REV=<commit> a clean
# `git archive` export of that commit built in bench/.build (gitignored), so a result is
# labelled with exactly the source it measured and revisions can be compared.
# The floor has its own [workspace] and its own target dir (bench/floor/target, gitignored).
BUILD_TIMEOUT=${BUILD_TIMEOUT:-1800}
build_start=$(date +%s)
time_left() {
  local left=$((BUILD_TIMEOUT - ($(date +%s) - build_start)))
  [ "$left" -gt 0 ] || { echo "build timeout (${BUILD_TIMEOUT}s)" >&2; exit 1; }
  echo "$left"
}
if [ -n "${REV:-}" ]; then
  full=$(git rev-parse --verify "${REV}^{commit}")
  short=$(git rev-parse --short "$full")
  src="$ROOT/bench/.build/src-$short"
  if [ ! -f "$src/.complete" ]; then
    rm -rf "$src"
    mkdir -p "$src"
    git archive "$full" | tar -x -C "$src"
    touch "$src/.complete"
  fi
  echo "building tollgate $short (release, clean export in ${src#"$ROOT"/})..." >&2
  CARGO_TARGET_DIR="$ROOT/bench/.build/target" \
    timeout "$(time_left)" cargo build --release --manifest-path "$src/Cargo.toml"
  export TOLLGATE_BIN="$ROOT/bench/.build/target/release/tollgate"
  export BENCH_REV="$short"
else
  # Label: HEAD, "-dirty" if the sources differ from it. Taken before and after the build: if
  # the sources changed meanwhile, what was built is uncertain, so it is labelled dirty.
  src_state() {
    git rev-parse --short HEAD
    git status --porcelain -- src plugins Cargo.toml Cargo.lock
    git diff HEAD -- src plugins Cargo.toml Cargo.lock | sha1sum
  }
  before=$(src_state)
  label=$(git rev-parse --short HEAD)
  [ -z "$(git status --porcelain -- src plugins Cargo.toml Cargo.lock)" ] || label="$label-dirty"
  echo "building tollgate (release, working tree $label)..." >&2
  timeout "$(time_left)" cargo build --release
  if [ "$(src_state)" != "$before" ]; then
    echo "WARNING: the sources changed during the build; labelling the result dirty" >&2
    case "$label" in *-dirty) ;; *) label="$label-dirty" ;; esac
  fi
  export BENCH_REV="$label"
fi
echo "building the Pingora floor (release)..." >&2
timeout "$(time_left)" cargo build --release --locked --manifest-path bench/floor/Cargo.toml

# ---- load (bounded) -------------------------------------------------------------------------
BENCH_TIMEOUT=${BENCH_TIMEOUT:-$(python3 bench/run.py --time-bound)}
echo "load phase bounded to ${BENCH_TIMEOUT}s" >&2
timeout -k 10 "$BENCH_TIMEOUT" python3 "$ROOT/bench/run.py" &
DRIVER_PID=$!
wait "$DRIVER_PID"

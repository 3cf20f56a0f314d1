# Sourced by bench/run.sh and bench/instr.sh (bash, set -euo pipefail, cwd = repository root,
# ROOT set): builds what the bench measures, bounded by BUILD_TIMEOUT (default 1800 s) for
# all builds together, and exports
#   TOLLGATE_BIN, BENCH_REV                        the tollgate to measure and its label
#   TOLLGATE_BASELINE_BIN, BENCH_BASELINE_REV      with BASELINE=<commit>
#   NGINX_LUA=0                                    when the nginx + Lua reference cannot run
#   TOLLGATE_CUSTOM_BIN                            working-tree runs (unless CUSTOM=0): the
#                                                  custom binary of examples/custom-plugin
# and builds the floor (bench/floor/target).
#
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
# bench/build.sh does the REV/BASELINE builds: export in bench/.build/src-<short>, shared target
# dir bench/.build/target, binary copied to bench/.build/bin/ per commit (and reused).
if [ -n "${REV:-}" ]; then
  TOLLGATE_BIN=$(timeout "$(time_left)" bench/build.sh "$REV")
  export TOLLGATE_BIN
  BENCH_REV=$(git rev-parse --short "$(git rev-parse --verify "${REV}^{commit}")")
  export BENCH_REV
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
  timeout "$(time_left)" nice -n 10 cargo build --release
  if [ "$(src_state)" != "$before" ]; then
    echo "WARNING: the sources changed during the build; labelling the result dirty" >&2
    case "$label" in *-dirty) ;; *) label="$label-dirty" ;; esac
  fi
  export BENCH_REV="$label"
  # The custom binary (examples/custom-plugin) for the custom-plugin scenario; same profile.
  if [ "${CUSTOM:-1}" != "0" ]; then
    echo "building the custom binary (release, examples/custom-plugin)..." >&2
    timeout "$(time_left)" nice -n 10 cargo build --release -p tollgate-example-custom-plugin --bin tollgate-hmac
    export TOLLGATE_CUSTOM_BIN="$ROOT/target/release/tollgate-hmac"
  fi
fi
# BASELINE=<commit>: a second tollgate from that commit, same config, own port; every tollgate
# scenario runs against both in the same rounds (labels `tollgate@<short> ...`).
if [ -n "${BASELINE:-}" ]; then
  TOLLGATE_BASELINE_BIN=$(timeout "$(time_left)" bench/build.sh "$BASELINE")
  export TOLLGATE_BASELINE_BIN
  BENCH_BASELINE_REV=$(git rev-parse --short "$(git rev-parse --verify "${BASELINE}^{commit}")")
  export BENCH_BASELINE_REV
  if [ "$BENCH_BASELINE_REV" = "${BENCH_REV%-dirty}" ] && [ "$BENCH_REV" = "${BENCH_REV%-dirty}" ]; then
    echo "note: BASELINE is the same commit as the measured one (an A/A run: the ratios show the noise)" >&2
  fi
fi
echo "building the Pingora floor (release)..." >&2
timeout "$(time_left)" nice -n 10 cargo build --release --locked --manifest-path bench/floor/Cargo.toml

# The nginx + Lua reference needs Debian's libnginx-mod-http-lua (and lua-resty-core).
if [ "${NGINX_LUA:-}" != "0" ] && ! why=$(python3 bench/run.py --lua-check); then
  echo "skipping the nginx+lua reference: $why" >&2
  export NGINX_LUA=0
fi

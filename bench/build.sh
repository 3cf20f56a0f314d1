#!/usr/bin/env bash
# Build tollgate (release) at a commit, from a clean `git archive` export, and print the path
# of the binary on stdout (progress goes to stderr). Used by run.sh and instr.sh for REV= and
# BASELINE=.
#
#   bench/build.sh <commit>            -> bench/.build/bin/tollgate-<short>-<toolchain>
#
# - export: bench/.build/src-<short> (made once per commit; a half-made export is redone)
# - target dir: bench/.build/target, shared by all revisions (dependencies are built once)
# - the binary is copied to bench/.build/bin/, named by commit and rustc version, so two
#   revisions built one after the other do not overwrite each other and a commit already built
#   with this toolchain is not built again (FORCE_BUILD=1 rebuilds it).
# - BUILD_DEBUG=line-tables-only (or any `debug` profile value) builds a variant with line
#   tables for annotated profiles; it gets its own binary name (`-dbg-<value>`).
# - the build runs under `nice`; bound it from the caller (`timeout`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
[ $# -eq 1 ] || { echo "usage: $0 <commit>" >&2; exit 2; }

full=$(git rev-parse --verify "${1}^{commit}")
short=$(git rev-parse --short "$full")
toolchain=$(rustc -V | sha1sum | cut -c1-8)
variant=""
if [ -n "${BUILD_DEBUG:-}" ]; then
  variant="-dbg-${BUILD_DEBUG}"
  export CARGO_PROFILE_RELEASE_DEBUG="$BUILD_DEBUG"
fi
bin="$ROOT/bench/.build/bin/tollgate-$short-$toolchain$variant"
if [ -x "$bin" ] && [ -z "${FORCE_BUILD:-}" ]; then
  echo "tollgate $short$variant: already built ($(rustc -V)): ${bin#"$ROOT"/}" >&2
  echo "$bin"
  exit 0
fi

src="$ROOT/bench/.build/src-$short"
if [ ! -f "$src/.complete" ]; then
  rm -rf "$src"
  mkdir -p "$src"
  git archive "$full" | tar -x -C "$src"
  touch "$src/.complete"
fi
echo "building tollgate $short$variant (release, clean export in ${src#"$ROOT"/})..." >&2
CARGO_TARGET_DIR="$ROOT/bench/.build/target" \
  nice -n 10 cargo build --release --manifest-path "$src/Cargo.toml" >&2
mkdir -p "$ROOT/bench/.build/bin"
cp "$ROOT/bench/.build/target/release/tollgate" "$bin.tmp"
mv "$bin.tmp" "$bin"
echo "$bin"

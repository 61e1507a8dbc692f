#!/usr/bin/env bash
# The README's quick start:
#   scripts/quickstart.sh compare [args...]   build and run examples/moe-compare with args
#   scripts/quickstart.sh test                build the test programs and run the whole test suite
# Both install missing dependencies first (scripts/install-deps.sh) and use the `release`
# preset (build/release). Set CMAKE_BUILD_PARALLEL_LEVEL / CTEST_PARALLEL_LEVEL to change
# the job count (default: the number of cores).
set -euo pipefail

usage() {
  echo "usage: $0 compare [args...] | test" >&2
  exit 64
}
[[ $# -ge 1 ]] || usage
command=$1
shift
case "$command" in
  compare | test) ;;
  *) usage ;;
esac

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
cores=$(nproc 2>/dev/null || echo 2)
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$cores}
export CTEST_PARALLEL_LEVEL=${CTEST_PARALLEL_LEVEL:-$cores}

# moe-compare --plots DIR draws with Debian's python3-matplotlib: install it too then.
for arg in "$@"; do
  [[ "$arg" == --plots ]] && export MOE_PLOTS=1
done

echo "== installing dependencies"
scripts/install-deps.sh

echo "== configuring (preset release)"
cmake --preset release >/dev/null

case "$command" in
  compare)
    # build/release/moe-examples.txt lists "target<TAB>path" for every example (CMakeLists.txt).
    exe=$(awk -F'\t' '$1 == "moe-compare" { print $2 }' build/release/moe-examples.txt 2>/dev/null || true)
    if [[ -z "$exe" ]]; then
      echo "quickstart: the example moe-compare is not part of this checkout yet" \
        "(no CMake target moe-compare in examples/)" >&2
      exit 2
    fi
    echo "== building moe-compare"
    cmake --build --preset release --target moe-compare
    echo "== running ${exe#"$root"/} $*"
    exec "$exe" "$@"
    ;;
  test)
    # moe_tests: every program ctest runs (tests/CMakeLists.txt); the benchmarks and the
    # examples no test runs are left to `cmake --build --preset release` (CI builds them).
    echo "== building the test programs"
    cmake --build --preset release --target moe_tests
    echo "== testing"
    exec ctest --preset release
    ;;
esac

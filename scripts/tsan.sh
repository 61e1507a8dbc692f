#!/usr/bin/env bash
# ThreadSanitizer job (issue #6): builds the [threads] tests (the thread pool, the layer's
# bit-identical results for any pool size, one const layer shared by several threads with
# separate workspaces) with g++ -fsanitize=thread -O1 -g1 in build/tsan, and runs them through
# ctest. Any TSan report (data race, lock-order inversion, ...) stops the test with exit 66
# and fails the job. docs/reliability.md#ci.
#
#   scripts/tsan.sh
#
# Environment: MOE_JOBS (build parallelism, default 2).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

cmake --preset tsan >/dev/null
cmake --build --preset tsan -j "${MOE_JOBS:-2}"

# TSan's runtime (gcc 12, clang 14) assumes the address layout of older kernels; with more
# mmap randomisation bits than it expects it dies with "unexpected memory mapping" before
# main. Probe once and, if so, run with address randomisation off for this process tree.
exe=build/tsan/tests/moe_threads_tests
prefix=()
# Catch2 2's --list-* exits with the number of tests listed, so the output is what is checked.
probe=$("$exe" --list-test-names-only "[threads]" 2>&1) || true
if grep -q "unexpected memory mapping" <<<"$probe"; then
  echo "-- TSan cannot map its shadow memory with this kernel's ASLR: running under setarch -R"
  prefix=(setarch "$(uname -m)" -R)
  probe=$("${prefix[@]}" "$exe" --list-test-names-only "[threads]" 2>&1) || true
fi
count=$(grep -c . <<<"$probe" || true)
if [[ $count -eq 0 ]] || grep -q "ThreadSanitizer" <<<"$probe"; then
  echo "$probe" >&2
  echo "scripts/tsan.sh: $exe lists no [threads] test or cannot start" >&2
  exit 1
fi
echo "-- $count [threads] test case(s) under ThreadSanitizer"
"${prefix[@]}" ctest --preset tsan

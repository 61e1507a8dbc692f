#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/) with clang in build/fuzz and runs each on its
# seed corpus for a share of the given time, the targets side by side.
#
#   scripts/fuzz.sh [SECONDS]        total fuzzing time, split evenly across targets (default 60)
#   scripts/fuzz.sh --regen-corpus   rewrite tests/fuzz/corpus/ from tests/fuzz/make_corpus.cpp
#
# Exits non-zero when a target crashes, leaks, times out on one input (-timeout 10), runs out
# of memory, or a sanitizer (ASan, UBSan) reports; the input that did it is left in
# build/fuzz/artifacts/. Reproduce with build/fuzz/tests/fuzz/<target> <that file>, then add it
# to tests/io/fuzz_regression_test.cpp. New inputs the fuzzer finds go to build/fuzz/corpus/,
# never into the checked-in seeds. Environment: CXX (default clang++), MOE_FUZZ_JOBS (build
# parallelism, default 2).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build=build/fuzz
targets=(fuzz_safetensors fuzz_loaders fuzz_gguf)
cxx=${CXX:-clang++}
if [[ $("$cxx" --version 2>/dev/null || true) != *clang* ]]; then
  cxx=clang++  # libFuzzer is clang's; a g++ in CXX would fail the configure anyway
fi

# libFuzzer's runtime is in libclang-rt-14-dev, which Debian's clang only recommends (and
# scripts/install-deps.sh installs without recommends): probe it, and in CI install it.
probe_libfuzzer() {
  local dir
  dir=$(mktemp -d)
  echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' >"$dir/p.cpp"
  "$cxx" -fsanitize=fuzzer,address,undefined "$dir/p.cpp" -o "$dir/p" >/dev/null 2>&1
  local rc=$?
  rm -rf "$dir"
  return $rc
}
if [[ ${1:-} != --regen-corpus ]] && ! probe_libfuzzer; then
  if [[ ${CI:-} == true && $(id -u) -eq 0 ]]; then
    echo "-- libFuzzer runtime missing: installing libclang-rt-14-dev"
    env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libclang-rt-14-dev >/dev/null ||
      { env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null &&
        env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libclang-rt-14-dev >/dev/null; }
  fi
  if ! probe_libfuzzer; then
    echo "scripts/fuzz.sh: $cxx cannot link -fsanitize=fuzzer; install libclang-rt-14-dev (Debian 12)" >&2
    exit 2
  fi
fi

configure_and_build() {
  cmake -S . -B "$build" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE= -DMOE_BUILD_FUZZERS=ON \
    -DMOE_BUILD_TESTS=OFF -DMOE_BUILD_EXAMPLES=OFF -DMOE_BUILD_BENCHMARKS=OFF -DMOE_INSTALL=OFF \
    -DMOE_WARNINGS_AS_ERRORS=ON >/dev/null
  cmake --build "$build" --target "$@" -j "${MOE_FUZZ_JOBS:-2}"
}

if [[ ${1:-} == --regen-corpus ]]; then
  configure_and_build fuzz_make_corpus
  rm -rf tests/fuzz/corpus
  "$build/tests/fuzz/fuzz_make_corpus" tests/fuzz/corpus
  exit 0
fi

total=${1:-60}
if ! [[ $total =~ ^[0-9]+$ ]] || ((total < ${#targets[@]})); then
  echo "usage: scripts/fuzz.sh [SECONDS >= ${#targets[@]}] | --regen-corpus" >&2
  exit 2
fi
per=$((total / ${#targets[@]}))

configure_and_build "${targets[@]}"

mkdir -p "$build/artifacts"
status=0
runs_total=0
summary=()
# The targets fuzz at the same time (one core each on a 2-core machine), so the phase takes
# about SECONDS / targets of wall time for SECONDS of fuzzing in all.
pids=()
for t in "${targets[@]}"; do
  work="$build/corpus/$t"
  mkdir -p "$work"
  echo "-- $t: ${per}s on tests/fuzz/corpus/$t ($(ls tests/fuzz/corpus/$t | wc -l) seeds)"
  # The first folder collects new inputs; the checked-in seeds are only read.
  "$build/tests/fuzz/$t" -max_total_time="$per" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$build/artifacts/$t-" "$work" "tests/fuzz/corpus/$t" \
    >"$build/$t.log" 2>&1 </dev/null &
  pids+=($!)
done
for i in "${!targets[@]}"; do
  t=${targets[$i]}
  log="$build/$t.log"
  rc=0
  wait "${pids[$i]}" || rc=$?
  runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n 1)
  runs=${runs:-0}
  runs_total=$((runs_total + runs))
  if [[ $rc -ne 0 ]]; then
    status=1
    summary+=("$(printf '%-18s FAILED (exit %d) after %s runs; see %s' "$t" "$rc" "$runs" "$log")")
    echo "== $t failed (exit $rc):" >&2
    grep -E 'ERROR|SUMMARY|runtime error|Test unit written|terminate called|deadly signal' "$log" | head -n 20 >&2 || true
    tail -n 40 "$log" >&2
  else
    summary+=("$(printf '%-18s ok: Done %s runs in %ss' "$t" "$runs" "$per")")
  fi
  grep -E '^Done [0-9]+ runs' "$log" || true
done
echo
echo "== fuzz summary"
printf '   %s\n' "${summary[@]}"
echo "   total: $runs_total executions"
exit $status

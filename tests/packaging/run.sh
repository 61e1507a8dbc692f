#!/usr/bin/env bash
# tests/packaging/run.sh <scratch-dir>
# Packaging is a test: configure moe (tests/examples/benchmarks off), install it into
# <scratch-dir>/prefix, then build and run
#   find_package/      against the installed tree (with moe::io, and again without nlohmann_json)
#   add_subdirectory/  on the source tree
#   pkg-config         g++ $(pkg-config --cflags moe-io) on consumer.cpp, PKG_CONFIG_PATH
#                      pointing into the install prefix.
# Exits non-zero on any failure. Honours CXX, CMAKE_GENERATOR and MOE_PACKAGING_JOBS (default 2).
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 <scratch-dir>" >&2
  exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
scratch=$1
jobs=${MOE_PACKAGING_JOBS:-2}
# The consumers check that the package is found and usable, not how fast it runs: they build
# with no build type (no -O, no -g), which takes 10.7 s of CPU per consumer instead of 15 s at
# Release's -O3 (docs/reliability.md#ci). moe's own targets are INTERFACE targets, the same in
# every configuration.
consumer_build_type=""

# Fresh every time: a stale install tree would hide a missing install rule.
rm -rf "$scratch"
mkdir -p "$scratch"
scratch=$(cd "$scratch" && pwd)
prefix=$scratch/prefix

step() { echo "-- packaging: $*"; }

step "configure and install moe into $prefix"
cmake -S "$root" -B "$scratch/moe" -DCMAKE_BUILD_TYPE=Release \
  -DMOE_BUILD_TESTS=OFF -DMOE_BUILD_EXAMPLES=OFF -DMOE_BUILD_BENCHMARKS=OFF -DMOE_INSTALL=ON
cmake --build "$scratch/moe" --parallel "$jobs"
cmake --install "$scratch/moe" --prefix "$prefix"

step "every header is installed"
(cd "$root/include" && find moe -name '*.hpp' | sort) > "$scratch/headers.src"
(cd "$prefix/include" && find moe -name '*.hpp' | sort) > "$scratch/headers.installed"
diff -u "$scratch/headers.src" "$scratch/headers.installed"
test -f "$prefix/share/cmake/moe/moeConfig.cmake"
test -f "$prefix/share/cmake/moe/moeConfigVersion.cmake"

# The four consumers are independent once the tree is installed: they build at the same time
# (each its own scratch folder and log), and their logs are printed in this order afterwards.
find_package_io() {
  step "find_package consumer (moe::moe + moe::io)"
  cmake -S "$here/find_package" -B "$scratch/find_package" -DCMAKE_BUILD_TYPE="$consumer_build_type" \
    -DCMAKE_PREFIX_PATH="$prefix"
  cmake --build "$scratch/find_package" --parallel "$jobs"
  "$scratch/find_package/consumer"
}

find_package_no_io() {
  step "find_package consumer without nlohmann_json (moe::moe only)"
  cmake -S "$here/find_package" -B "$scratch/find_package_no_io" -DCMAKE_BUILD_TYPE="$consumer_build_type" \
    -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_DISABLE_FIND_PACKAGE_nlohmann_json=ON -DEXPECT_IO=OFF
  cmake --build "$scratch/find_package_no_io" --parallel "$jobs"
  "$scratch/find_package_no_io/consumer"

  step "find_package rejects an incompatible major version"
  mkdir -p "$scratch/version_check"
  cat > "$scratch/version_check/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.21)
project(moe_version_check NONE)
find_package(moe 99 QUIET)
if(moe_FOUND)
  message(FATAL_ERROR "find_package(moe 99) accepted version ${moe_VERSION}")
endif()
CMAKE
  cmake -S "$scratch/version_check" -B "$scratch/version_check/b" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
}

pkg_config_consumer() {
  step "pkg-config consumer (${CXX:-c++} \$(pkg-config --cflags moe-io))"
  test -f "$prefix/share/pkgconfig/moe.pc"
  test -f "$prefix/share/pkgconfig/moe-io.pc"
  export PKG_CONFIG_PATH="$prefix/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  pkg-config --print-errors --exists "moe >= 0.1" moe-io
  # The include directory is the installed one, reached from the .pc file's own location.
  test "$(realpath "$(pkg-config --variable=includedir moe)")" = "$(realpath "$prefix/include")"
  mkdir -p "$scratch/pkg_config"
  # shellcheck disable=SC2046 # the flags are meant to split into words
  "${CXX:-c++}" -std=c++20 $(pkg-config --cflags moe-io) -DMOE_CONSUMER_KIND='"pkg-config"' \
    -DMOE_CONSUMER_USE_IO=1 "$here/consumer.cpp" -o "$scratch/pkg_config/consumer"
  "$scratch/pkg_config/consumer"
}

add_subdirectory_consumer() {
  step "add_subdirectory consumer"
  cmake -S "$here/add_subdirectory" -B "$scratch/add_subdirectory" -DCMAKE_BUILD_TYPE="$consumer_build_type" \
    -DMOE_SOURCE_DIR="$root"
  cmake --build "$scratch/add_subdirectory" --parallel "$jobs"
  "$scratch/add_subdirectory/consumer"
}

consumers=(find_package_io find_package_no_io pkg_config_consumer add_subdirectory_consumer)
pids=()
for c in "${consumers[@]}"; do
  # set -e holds inside each: the first failing command ends that consumer with its status.
  (set -euo pipefail; "$c") >"$scratch/$c.log" 2>&1 &
  pids+=($!)
done
failed=()
for i in "${!consumers[@]}"; do
  status=0
  wait "${pids[$i]}" || status=$?
  cat "$scratch/${consumers[$i]}.log"
  if [[ $status -ne 0 ]]; then
    failed+=("${consumers[$i]} (exit $status)")
  fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "-- packaging: FAILED: ${failed[*]}" >&2
  exit 1
fi

step "all passed"

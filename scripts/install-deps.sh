#!/usr/bin/env bash
# Installs the Debian 12 packages moe's build, tests, examples, benchmarks and helper scripts
# need. Idempotent: asks dpkg first, and calls apt-get (update + install) only for what is
# missing, so a machine that has everything never touches apt. Uses sudo when not root.
#   scripts/install-deps.sh          install what is missing
#   scripts/install-deps.sh --list   print the package list (the one place it is kept)
set -euo pipefail

packages=(
  build-essential cmake g++ clang          # compilers and CMake >= 3.21 (Debian 12: 3.25)
  libclang-rt-14-dev                       # libFuzzer and sanitizer runtimes for clang (scripts/fuzz.sh)
  libeigen3-dev                            # Eigen 3.4
  libxsimd-dev                             # xsimd 8.1
  catch2                                   # Catch2 2.13 (tests)
  nlohmann-json3-dev                       # nlohmann-json 3.11 (moe::io)
  libbenchmark-dev                         # Google Benchmark 1.7 (bench/)
  python3 python3-numpy                    # helper scripts
  valgrind                                 # memcheck on the examples (scripts/memcheck.sh, CI phase memcheck)
  clang-tidy-14                            # static analysis with .clang-tidy (scripts/tidy.sh, CI phase tidy)
  openmpi-bin libopenmpi-dev               # Open MPI 4.1: expert parallelism (MOE_WITH_MPI, docs/expert_parallel.md)
)

# Optional: OpenBLAS for the MOE_USE_BLAS=ON build (EIGEN_USE_BLAS; docs/benchmarks.md#blas).
if [[ "${MOE_USE_BLAS:-0}" == 1 ]]; then
  packages+=(libopenblas-dev)
fi

# Optional: matplotlib for moe-compare --plots (scripts/compare_plots.py; docs/compare.md).
# scripts/quickstart.sh compare sets it when its arguments ask for plots.
if [[ "${MOE_PLOTS:-0}" == 1 ]]; then
  packages+=(python3-matplotlib)
fi

if [[ "${1:-}" == "--list" ]]; then
  printf '%s\n' "${packages[@]}"
  exit 0
fi

missing=()
for pkg in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  if [[ "$status" != "installed" ]]; then
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#packages[@]} packages already installed"
  exit 0
fi

as_root=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "install-deps: missing ${missing[*]}; run as root or install sudo" >&2
    exit 1
  fi
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"

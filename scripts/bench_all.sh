#!/usr/bin/env bash
# Every performance ratio of issue #5 in one command, and docs/PERFORMANCE.md from the results:
#
#   scripts/bench_all.sh            # about 12 minutes on a busy 2-core machine
#   scripts/bench_all.sh --ggml DIR # and the ggml peer from a llama.cpp/ggml build in DIR
#
# 1. builds the release preset's benchmark targets and moe-compare (build/release), and
#    moe_bench_forward once more with MOE_USE_BLAS=ON (Eigen on OpenBLAS) in build/release-blas,
#    configured with the release preset's flags plus -DMOE_USE_BLAS=ON -DBLA_VENDOR=OpenBLAS
#    (needs libopenblas-dev: MOE_USE_BLAS=1 scripts/install-deps.sh; without it that row is left out);
# 2. runs, one after the other, on one thread except d, writing JSON into build/perf/:
#      moe_bench_forward   -> forward.json   (a: MoE forward / ideal expert GEMMs)
#      moe_bench_forward (BLAS build) -> forward-blas.json (a and tokens/s with OpenBLAS's GEMM)
#      moe_bench_threads   -> threads.json   (d: T = 2048 forward, pool of 1 / pool of n threads)
#      moe_bench_backward  -> backward.json  (e: forward+backward / forward)
#      moe_bench_decode    -> decode.json    (c: T = 1 latency / STREAM-triad bound; T = 4, 16; bf16)
#      moe_bench_products  -> products.json  (issue #11: packed, bf16, gemm, OpenBLAS, FMA peak)
#      moe_bench_quant     -> quant.json     (issue #12: F32, BF16, Q8_0, Q4_0, Q4_K expert products)
#      the ggml peer: with --ggml DIR (or GGML_DIR=DIR), DIR a ggml or llama.cpp checkout built with
#        CMake (its libggml-cpu.so somewhere under DIR), bench/peers/ggml_moe.cpp is compiled
#        against it and run on one core (taskset -c 0) -> ggml.jsonl: ggml_mul_mat_id on this
#        page's shapes, types, T and routing (test-backend-ops' perf mode has fixed shapes of its
#        own); without it the reason goes to ggml-skipped.txt ("ggml peer skipped: no GGML_DIR
#        given"). Nothing of ggml is downloaded or built: give it a build of your own checkout;
#      bench/peers/torch_moe.py -> torch.json (b: the transformers MoE loop in PyTorch)
#      moe-compare --tokens T at the Mixtral-scaled shape -> compare-T.json for T in 32 128 512
#      2048 (tokens/s per router)
#    and machine.json (CPU, cores, load average before and after, date, commit);
# 3. calls scripts/perf_report.py, which writes docs/PERFORMANCE.md and docs/perf/*.png.
#
# The PyTorch peer needs Debian's python3-torch, the report python3-matplotlib (neither is needed
# to build or test the library): apt-get install -y python3-torch python3-matplotlib.
# Both run under /usr/bin/python3, Debian's interpreter, which is where apt installs them.
#
# Environment: JOBS (build jobs, default 2), REPS (repetitions of the Google Benchmark
# programs, default 3), PEER_REPS (timed calls per torch case, default 5), PEER_BLAS=system
# (run the peer on the system's libblas.so.3 instead of OpenBLAS), SKIP_BUILD=1, SKIP_REPORT=1,
# BLAS=0 (leave out the OpenBLAS build), FILTER (a --benchmark_filter regex for the forward,
# BLAS-forward and backward programs, e.g. 'olmoe-scaled/(T:)?32$' for a quick check: backward's
# names have no T:), SKIP_PEER=1,
# SKIP_COMPARE=1, GGML_DIR (as --ggml), DOCS_DIR (where perf_report.py writes, default docs), BUILD_DIR,
# BLAS_BUILD_DIR, PERF_DIR (default build/release,
# build/release-blas, build/perf; a BUILD_DIR other than build/release is configured with the
# release preset's flags instead of the preset). Not part of CI: timings on shared machines are
# noise for a pass/fail check.
set -euo pipefail

ggml_dir=${GGML_DIR:-}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --ggml) [[ $# -ge 2 ]] || { echo "bench_all: --ggml needs a directory" >&2; exit 2; }; ggml_dir=$2; shift 2 ;;
    --ggml=*) ggml_dir=${1#--ggml=}; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "bench_all: unknown argument $1 (--ggml DIR, or the environment variables in the header)" >&2; exit 2 ;;
  esac
done

# A relative --ggml is relative to where the script was called from.
if [[ -n "$ggml_dir" && -d "$ggml_dir" ]]; then ggml_dir=$(cd "$ggml_dir" && pwd); fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${PERF_DIR:-build/perf}
bin=${BUILD_DIR:-build/release}
blas_bin=${BLAS_BUILD_DIR:-build/release-blas}
filter=()
[[ -n "${FILTER:-}" ]] && filter=(--benchmark_filter="$FILTER")
# The release preset's cache variables, for build folders the preset does not name.
release_flags=(-DCMAKE_BUILD_TYPE=Release -DMOE_WARNINGS_AS_ERRORS=ON -DMOE_NATIVE=ON)
py=/usr/bin/python3
jobs=${JOBS:-2}
reps=${REPS:-3}
peer_reps=${PEER_REPS:-5}
mkdir -p "$out"

# One thread everywhere but moe_bench_threads (its own ThreadPool): the peer must run with the
# same thread count, and OpenBLAS must not start threads of its own under the BLAS build.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  echo "== build (release preset)"
  if [[ "$bin" == build/release ]]; then
    cmake --preset release >/dev/null
  else
    cmake -S . -B "$bin" "${release_flags[@]}" >/dev/null
  fi
  cmake --build "$bin" --target moe_bench_forward moe_bench_threads moe_bench_backward moe_bench_decode \
    moe_bench_products moe_bench_quant moe-compare \
    -j "$jobs"
  if [[ "${BLAS:-1}" != 0 ]]; then
    echo "== build (release flags + MOE_USE_BLAS=ON: Eigen on OpenBLAS) in $blas_bin"
    if cmake -S . -B "$blas_bin" "${release_flags[@]}" -DMOE_USE_BLAS=ON -DBLA_VENDOR=OpenBLAS \
        -DMOE_BUILD_TESTS=OFF -DMOE_BUILD_EXAMPLES=OFF >"$out/blas-configure.log" 2>&1; then
      cmake --build "$blas_bin" --target moe_bench_forward -j "$jobs"
    else
      echo "bench_all: no OpenBLAS to build against (MOE_USE_BLAS=1 scripts/install-deps.sh); the BLAS rows are left out; see $out/blas-configure.log" >&2
    fi
  fi
fi

# What was built: the commit, and the uncommitted files under include/, bench/ and examples/
# (the working tree is what was measured).
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git status --porcelain -- include bench examples 2>/dev/null | cut -c4- >"$out/dirty.txt" || true
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
t0=$(date +%s)

echo "== moe_bench_forward ($reps repetitions)"
"$bin/bench/moe_bench_forward" --benchmark_repetitions="$reps" --benchmark_color=false "${filter[@]}" \
  --benchmark_out="$out/forward.json" --benchmark_out_format=json | tee "$out/forward.txt"

rm -f "$out/forward-blas.json"
if [[ "${BLAS:-1}" != 0 && -x "$blas_bin/bench/moe_bench_forward" ]]; then
  echo "== moe_bench_forward, Eigen on OpenBLAS ($reps repetitions, OPENBLAS_NUM_THREADS=$OPENBLAS_NUM_THREADS)"
  blas_lib=$(sed -n 's/^BLAS_openblas_LIBRARY:FILEPATH=//p' "$blas_bin/CMakeCache.txt" | head -1)
  "$blas_bin/bench/moe_bench_forward" --benchmark_repetitions="$reps" --benchmark_color=false "${filter[@]}" \
    --benchmark_context=blas="OpenBLAS ${blas_lib:-?}" \
    --benchmark_out="$out/forward-blas.json" --benchmark_out_format=json | tee "$out/forward-blas.txt"
fi

echo "== moe_bench_threads (ratio d, pools of 1 to $(getconf _NPROCESSORS_ONLN) threads)"
"$bin/bench/moe_bench_threads" --benchmark_repetitions="$reps" --benchmark_color=false \
  --benchmark_out="$out/threads.json" --benchmark_out_format=json | tee "$out/threads.txt"

echo "== moe_bench_backward ($reps repetitions)"
"$bin/bench/moe_bench_backward" --benchmark_repetitions="$reps" --benchmark_color=false "${filter[@]}" \
  --benchmark_out="$out/backward.json" --benchmark_out_format=json | tee "$out/backward.txt"

echo "== moe_bench_decode"
"$bin/bench/moe_bench_decode" --json "$out/decode.json" | tee "$out/decode.txt"

echo "== moe_bench_products (issue #11: packed expert products, bf16, OpenBLAS, FMA peak)"
"$bin/bench/moe_bench_products" --reps "$(( reps + 2 ))" --json "$out/products.json" | tee "$out/products.txt"

echo "== moe_bench_quant (issue #12: quantized expert products, $reps repetitions)"
rm -f "$out/routing.txt"
# MOE_BENCH_ROUTING: the benchmark writes each (shape, T)'s routing there, for the ggml peer.
MOE_BENCH_ROUTING="$out/routing.txt" "$bin/bench/moe_bench_quant" --benchmark_repetitions="$reps" --benchmark_color=false \
  --benchmark_context=commit="$commit" \
  --benchmark_out="$out/quant.json" --benchmark_out_format=json | tee "$out/quant.txt"

echo "== ggml peer (bench/peers/ggml_moe.cpp: MUL_MAT_ID on the same shapes, types and routing)"
rm -f "$out/ggml.jsonl" "$out/ggml-skipped.txt"
ggml_skip() { echo "$1" | tee "$out/ggml-skipped.txt" >&2; }
if [[ -z "$ggml_dir" ]]; then
  ggml_skip "ggml peer skipped: no GGML_DIR given"
else
  # A ggml checkout (include/) or a llama.cpp one (ggml/include/), built with CMake under it.
  inc=""
  for c in "$ggml_dir/include" "$ggml_dir/ggml/include"; do
    if [[ -f "$c/ggml.h" && -f "$c/ggml-cpu.h" ]]; then inc=$c; break; fi
  done
  lib=$(find "$ggml_dir" -name 'libggml-cpu.so' -print -quit 2>/dev/null)
  if [[ -z "$inc" || -z "$lib" ]]; then
    ggml_skip "ggml peer skipped: no ggml.h/ggml-cpu.h (include/ or ggml/include/) and built libggml-cpu.so under $ggml_dir"
  else
    libdir=$(dirname "$lib")
    libs=(-L"$libdir" -lggml -lggml-cpu -lggml-base)
    # llama.cpp puts libggml-base.so beside libggml.so, which may be another folder.
    base=$(find "$ggml_dir" -name 'libggml-base.so' -print -quit 2>/dev/null)
    [[ -n "$base" ]] && libs+=(-L"$(dirname "$base")" -Wl,-rpath,"$(dirname "$base")")
    peer_bin="$out/ggml_moe"
    if ! ${CXX:-c++} -O2 -std=c++17 "$root/bench/peers/ggml_moe.cpp" -I"$inc" "${libs[@]}" -Wl,-rpath,"$libdir" \
        -o "$peer_bin" 2>"$out/ggml-build.log"; then
      ggml_skip "ggml peer skipped: bench/peers/ggml_moe.cpp did not build against $ggml_dir ($out/ggml-build.log)"
    else
      pin=()
      command -v taskset >/dev/null && pin=(taskset -c 0)
      commit_ggml=$(git -C "$ggml_dir" rev-parse --short HEAD 2>/dev/null || echo unknown)
      echo "# ggml peer: ${pin[*]} $peer_bin --threads 1 --routing $out/routing.txt; ggml_dir $ggml_dir; commit $commit_ggml" >&2
      if ! "${pin[@]}" "$peer_bin" --threads 1 --routing "$out/routing.txt" >"$out/ggml.jsonl"; then
        ggml_skip "ggml peer failed: see $out/ggml.jsonl"
      fi
      echo "{\"ggml_dir\": \"$ggml_dir\", \"ggml_commit\": \"$commit_ggml\"}" >>"$out/ggml.jsonl"
    fi
  fi
fi

echo "== PyTorch peer (bench/peers/torch_moe.py, 1 thread)"
rm -f "$out/torch.json"
if [[ "${SKIP_PEER:-0}" == 1 ]]; then
  echo "bench_all: SKIP_PEER=1, the peer is left out" >&2
elif "$py" -c 'import torch' 2>/dev/null; then
  # Debian's torch does its GEMMs in whatever libblas.so.3 resolves to, which is the reference
  # (netlib) BLAS unless an optimised one is installed: a peer 5x slower than it should be. Give
  # the peer OpenBLAS for this command only: the system's if it is there, else Debian's
  # libopenblas0-pthread unpacked into build/perf/openblas (apt-get download, no system change).
  # PEER_BLAS=system keeps whatever the system resolves.
  peer_env=()
  multiarch=/usr/lib/x86_64-linux-gnu
  if [[ "${PEER_BLAS:-openblas}" != system && "$(readlink -f $multiarch/libblas.so.3)" != *openblas* ]]; then
    dir=$multiarch/openblas-pthread
    if [[ ! -e $dir/libblas.so.3 ]]; then
      dir=$root/$out/openblas/root$multiarch/openblas-pthread
      if [[ ! -e $dir/libblas.so.3 ]]; then
        (mkdir -p "$out/openblas" && cd "$out/openblas" && apt-get download libopenblas0-pthread &&
          dpkg -x libopenblas0-pthread_*.deb root) || echo "bench_all: no OpenBLAS; the peer uses $(readlink -f $multiarch/libblas.so.3)" >&2
      fi
    fi
    [[ -e $dir/libblas.so.3 ]] && peer_env=(env "LD_LIBRARY_PATH=$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
  fi
  # T = 4 and 16 beside moe_bench_forward's T for moe_bench_products' rows (issue #11).
  "${peer_env[@]}" "$py" bench/peers/torch_moe.py --threads 1 --reps "$peer_reps" --tokens 1,4,16,32,512,2048 \
    --json "$out/torch.json"
else
  echo "bench_all: $py cannot import torch (apt-get install python3-torch); the peer is left out" >&2
fi

echo "== moe-compare, every router policy"
# moe-compare times with the wall clock: enough repetitions that each router processes at
# least 4096 tokens, so a small T is not one 10 ms sample of a busy machine.
for T in 32 128 512 2048; do
  [[ "${SKIP_COMPARE:-0}" == 1 ]] && break
  r=$(( 4096 / T > 3 ? 4096 / T : 3 ))
  # At the Mixtral-scaled shape of the benchmarks (bench/bench_shapes.hpp), every family beside
  # softmax top-k (issue #15 item 10).
  "$bin/examples/moe-compare" --throughput --tokens "$T" --reps "$r" --d-model 1024 --d-ff 2816 --experts 8 --top-k 2 \
    --json "$out/compare-$T.json"
done

load_after=$(cut -d' ' -f1-3 /proc/loadavg)
"$py" - "$out/machine.json" "$started" "$load_before" "$load_after" "$(( $(date +%s) - t0 ))" "$commit" <<'EOF'
import json, os, subprocess, sys
path, started, before, after, seconds, commit = sys.argv[1:]
def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""
model = next((l.split(":", 1)[1].strip() for l in run("lscpu").splitlines() if l.startswith("Model name")), "")
dirty = open(os.path.join(os.path.dirname(path), "dirty.txt")).read().split()
json.dump({"cpu": model, "cores": os.cpu_count(), "compiler": (run("c++", "--version").splitlines() or ["?"])[0],
           "commit": commit, "dirty": dirty, "date": started,
           "load_before": before, "load_after": after, "seconds": int(seconds),
           "mem_total_kb": int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")))},
          open(path, "w"), indent=2)
EOF
echo "bench_all: measured in $(( $(date +%s) - t0 )) s, load average $load_before -> $load_after"

if [[ "${SKIP_REPORT:-0}" != 1 ]]; then
  "$py" scripts/perf_report.py "$out" ${DOCS_DIR:+--docs "$DOCS_DIR"}
fi

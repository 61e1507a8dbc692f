#!/usr/bin/env bash
# valgrind memcheck on the examples (issue #6): builds the example programs with the memcheck
# preset (RelWithDebInfo -O1 -g1, no -march=native: valgrind 3.19 cannot decode AVX-512) in
# build/memcheck and runs every line of examples/ci-run.txt under
#   valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect
# Any memcheck error (invalid read/write, use of uninitialised values, a definite or indirect
# leak) or a non-zero exit fails the run; where examples/<name>.expected exists, stdout must
# still match it. docs/reliability.md#ci.
#
#   scripts/memcheck.sh
#
# Lines of ci-run.txt are run as .ci/run's examples phase runs them (but for mpirun lines,
# which are not run here), with two changes: paths
# under build/release/ written by an example go to build/memcheck/ instead, and the lines
# listed in `shorten` below run with a smaller workload (they would take minutes under
# valgrind, which runs code about 30-50x slower). Environment: MOE_JOBS (default 2): how many
# programs build, and how many lines run under valgrind, at a time.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
exec </dev/null

if ! command -v valgrind >/dev/null; then
  echo "scripts/memcheck.sh: valgrind not found (scripts/install-deps.sh installs it)" >&2
  exit 2
fi

build=build/memcheck
cmake --preset memcheck >/dev/null
list=$build/moe-examples.txt
declare -A example_path=()
while IFS=$'\t' read -r target path; do
  [[ -n $target ]] && example_path[$target]=$path
done <"$list"
# Build the example targets the lines below run under valgrind (not those only run on MPI
# ranks, which are skipped there).
declare -A wanted=()
while IFS= read -r line || [[ -n $line ]]; do
  [[ $line =~ ^[[:space:]]*(#|$) || $line == mpirun\ * ]] && continue
  read -r first _ <<<"$line"
  [[ -n ${example_path[$first]:-} ]] && wanted[$first]=1
done <examples/ci-run.txt
cmake --build --preset memcheck -j "${MOE_JOBS:-2}" --target "${!wanted[@]}"

# Lines whose full workload is too slow under valgrind: the line as written in ci-run.txt ->
# what runs instead (same code paths, fewer tokens).
declare -A shorten=(
  ["moe-compare --throughput --tokens 512 --reps 1"]="moe-compare --throughput --tokens 64 --d-model 64 --d-ff 128 --reps 1"
  ["moe-compare --quick --threads 2"]="moe-compare --quick --threads 2 --steps 10 --eval-every 5"
)

vg=(valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect
  --show-leak-kinds=definite,indirect --track-origins=yes)
out_dir=$build/ci-examples
rm -rf "$out_dir" && mkdir -p "$out_dir"
jobs=${MOE_JOBS:-2}
start=$SECONDS
# First pass: start every line under valgrind, at most $jobs at a time (the lines are
# independent: each writes its own files); second pass: check them in the file's order.
lines=()
while IFS= read -r line || [[ -n $line ]]; do
  [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
  # Lines run on several MPI ranks (mpirun -np N ...) are not run under valgrind: Open MPI's
  # own libraries report uninitialised bytes and leaks that would need a suppression file. The
  # code they run is the MPI tests' (ctest -L mpirun) and the release run checks their output.
  if [[ $line == mpirun\ * ]]; then
    echo "-- not under valgrind (MPI): $line"
    continue
  fi
  lines+=("$line")
  n=${#lines[@]}
  run=${shorten[$line]:-$line}
  run=${run//build\/release\//$build/}
  read -r first rest <<<"$run"
  exe=${example_path[$first]:-$first}
  while [[ $(jobs -rp | wc -l) -ge $jobs ]]; do
    wait -n || true
  done
  (
    t0=$SECONDS
    rc=0
    # shellcheck disable=SC2086  # rest is the line's own arguments, split as .ci/run splits them
    "${vg[@]}" --log-file="$out_dir/$n.valgrind" "$exe" $rest >"$out_dir/$n.out" 2>"$out_dir/$n.err" || rc=$?
    echo "$((SECONDS - t0))" >"$out_dir/$n.seconds"
    echo "$rc" >"$out_dir/$n.rc"
  ) </dev/null &
done <examples/ci-run.txt
wait
n=0
for line in "${lines[@]}"; do
  n=$((n + 1))
  rc=$(cat "$out_dir/$n.rc" 2>/dev/null || echo "none (the run did not finish)")
  run=${shorten[$line]:-$line}
  run=${run//build\/release\//$build/}
  read -r first rest <<<"$run"
  name=$(basename "$first")
  note=""
  [[ $run != "$line" ]] && note=" (ran: $run)"
  echo "-- [$n] $line$note: $(cat "$out_dir/$n.seconds" 2>/dev/null || echo '?') s"
  if [[ $rc != 0 ]]; then
    echo "memcheck failed (exit $rc): $run" >&2
    cat "$out_dir/$n.valgrind" >&2
    tail -n 20 "$out_dir/$n.out" "$out_dir/$n.err" >&2
    exit 1
  fi
  if [[ -s $out_dir/$n.valgrind ]]; then
    echo "valgrind reported, though the exit status is 0: $run" >&2
    cat "$out_dir/$n.valgrind" >&2
    exit 1
  fi
  if [[ -f examples/$name.expected && -z ${shorten[$line]:-} ]]; then
    if ! diff -u "examples/$name.expected" "$out_dir/$n.out"; then
      echo "output under valgrind differs from examples/$name.expected: $run" >&2
      exit 1
    fi
    echo "   output matches examples/$name.expected"
  fi
done
echo "-- $n example command(s) clean under valgrind memcheck in $((SECONDS - start)) s"

#!/usr/bin/env bash
# clang-tidy job (issue #6): runs clang-tidy 14 with the checked-in .clang-tidy profile on a
# few translation units that together include every public header, through
# build/tidy/compile_commands.json (the tidy preset: clang, configure only, nothing built).
# Findings are reported for include/moe/ (HeaderFilterRegex) and are errors
# (WarningsAsErrors), so any finding fails the run. docs/reliability.md#ci.
#
#   scripts/tidy.sh            the CI set below, two clang-tidy processes at a time
#   scripts/tidy.sh FILE...    other translation units of the build (e.g. a test file)
#
# Before running it checks that every header under include/moe/ is reached by one of the
# translation units (clang -MM), so a new header cannot escape the check. Environment:
# CLANG_TIDY (default clang-tidy-14, else clang-tidy), MOE_JOBS (default 2).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
exec </dev/null

tidy=${CLANG_TIDY:-}
if [[ -z $tidy ]]; then
  for candidate in clang-tidy-14 clang-tidy; do
    command -v "$candidate" >/dev/null && { tidy=$candidate; break; }
  done
fi
if [[ -z $tidy ]]; then
  echo "scripts/tidy.sh: clang-tidy not found (scripts/install-deps.sh installs clang-tidy-14)" >&2
  exit 2
fi

# tests/tidy/all_headers.cpp: every header, every layer alias forward and backward, in float;
# its copy build/tidy/tests/tidy/all_headers_double.cpp (tests/CMakeLists.txt) the same in
# double, a second unit so the halves run side by side; load_hf_layer: the safetensors reader
# and the loaders; train_mixture: the optimisers; expert_parallel: include/moe/parallel/ (the
# MPI component, which all_headers.cpp cannot include: the tidy preset turns MOE_WITH_MPI on).
units=(tests/tidy/all_headers.cpp build/tidy/tests/tidy/all_headers_double.cpp examples/load_hf_layer.cpp
  examples/train_mixture.cpp examples/expert_parallel.cpp)
[[ $# -gt 0 ]] && units=("$@")

cmake --preset tidy >/dev/null
db=build/tidy/compile_commands.json

# Every public header must be reached by some unit: the dependency lists from clang -MM with
# each unit's own command line.
if [[ $# -eq 0 ]]; then
  python3 - "$db" "${units[@]}" <<'EOF'
import json, os, shlex, subprocess, sys
db, units = sys.argv[1], [os.path.abspath(u) for u in sys.argv[2:]]
commands = {os.path.abspath(os.path.join(e["directory"], e["file"])): e for e in json.load(open(db))}
reached = set()
for unit in units:
    if unit not in commands:
        sys.exit(f"scripts/tidy.sh: {unit} is not in {db}")
    entry = commands[unit]
    args = shlex.split(entry["command"]) if "command" in entry else entry["arguments"]
    out, skip = [], False
    for a in args:  # drop -o FILE and -c; keep everything else
        if skip:
            skip = False
        elif a == "-o":
            skip = True
        elif a != "-c":
            out.append(a)
    deps = subprocess.run(out + ["-MM", "-MF", "-"], cwd=entry["directory"], check=True,
                          capture_output=True, text=True).stdout
    for word in deps.replace("\\\n", " ").split():
        path = os.path.realpath(os.path.join(entry["directory"], word))
        if path.endswith(".hpp"):
            reached.add(path)
include = os.path.realpath("include/moe")
headers = sorted(os.path.realpath(os.path.join(d, f)) for d, _, fs in os.walk(include) for f in fs if f.endswith(".hpp"))
missing = [os.path.relpath(h) for h in headers if h not in reached]
if missing:
    sys.exit("scripts/tidy.sh: no translation unit includes " + ", ".join(missing)
             + "; add them to tests/tidy/all_headers.cpp")
print(f"-- {len(headers)} headers under include/moe/, all reached by {len(units)} translation units")
EOF
fi

out=build/tidy/findings
rm -rf "$out" && mkdir -p "$out"
echo "-- $tidy $("$tidy" --version | sed -n 's/.*version \([0-9.]*\).*/\1/p' | head -n 1) on ${units[*]}"
start=$SECONDS
status=0
# One clang-tidy per unit, MOE_JOBS at a time; each writes its own log.
printf '%s\n' "${units[@]}" | xargs -P "${MOE_JOBS:-2}" -I{} bash -c '
  log="$1/$(echo "$2" | tr / _).log"
  t0=$SECONDS
  rc=0
  "$0" -p build/tidy --quiet "$2" >"$log" 2>&1 || rc=$?
  echo "   $2: $((SECONDS - t0)) s, exit $rc"
  exit $rc' "$tidy" "$out" {} || status=1
# The same header finding comes once per unit that includes it: count distinct ones.
# (grep finds nothing on a clean run: `|| true`, or pipefail would end the script there.)
findings=$({ cat "$out"/*.log | grep -E '(warning|error): .*\[[a-z0-9.,-]+\]$' || true; } | sort -u | wc -l)
if [[ $status -ne 0 ]]; then
  cat "$out"/*.log | grep -E -A3 '(warning|error): ' | grep -v '^--$' >&2 || cat "$out"/*.log >&2
  echo "== clang-tidy: $findings finding(s) (logs in $out/), $((SECONDS - start)) s" >&2
  exit 1
fi
echo "== clang-tidy: no findings in $((SECONDS - start)) s"

#!/usr/bin/env python3
"""Compile-fail tests over one translation unit (tests/compile_fail/cases.cpp).

    check.py build LOG -- COMMAND...      run COMMAND (the build of cases.cpp), write its
                                          output to LOG; pass when the build FAILED
    check.py case LOG SOURCE NAME REGEX   pass when an error of case NAME in LOG matches REGEX

cases.cpp holds every case, each starting at a line "// CASE <name>" and ending where the next
case (or "// END") starts. An error belongs to the case whose lines it points into: its own
location when that is in cases.cpp, else the instantiation context that leads to it, which is
g++'s "SOURCE:LINE:COL:   required from ..." line nearest above the error (the outermost, "required
from here", is the last one g++ prints before the error) or clang's last "SOURCE:LINE:COL: note:
in instantiation of ... requested here" after it; an error either compiler prints with no
context of its own (the second error of one instantiation) belongs where the error before it
does. An error that points into no case fails every case: cases.cpp itself must be well-formed outside its cases. The test names the case and
prints the errors it did get, so a regression shows which message changed.
"""
import re
import subprocess
import sys
from pathlib import Path

CONTEXT = re.compile(r": In (instantiation of|substitution of|function|member function|static member function|"
                     r"constructor|destructor|lambda function)|^In file included from")
CLANG_NOTE = re.compile(r": note: in instantiation of ")
ERROR = re.compile(r"^(?P<file>[^:\s][^:]*):(?P<line>\d+):(?P<col>\d+): (?:fatal )?error: (?P<message>.*)$")


def build(log: Path, command: list[str]) -> int:
    run = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    log.write_text(run.stdout)
    errors = sum(1 for line in run.stdout.splitlines() if ERROR.match(line))
    if run.returncode == 0:
        print(f"compile_fail: {' '.join(command)} compiled, so no case failed (every case must)")
        return 1
    print(f"compile_fail: the build failed as it must, {errors} errors, output in {log}")
    return 0 if errors else 1


def case_ranges(source: Path) -> list[tuple[int, int, str]]:
    starts = []
    lines = source.read_text().splitlines()
    for number, text in enumerate(lines, start=1):
        m = re.match(r"^// (CASE (\w+)|END)\s*$", text)
        if m:
            starts.append((number, m.group(2)))
    ranges = []
    for (first, name), (nxt, _) in zip(starts, starts[1:]):
        if name:
            ranges.append((first, nxt - 1, name))
    return ranges


def attribute(log_lines: list[str], source: Path, ranges) -> list[tuple[str | None, str]]:
    """(case name or None, error line) for every error in the log."""
    base = re.escape(source.name)
    gcc_context = re.compile(r"(?:^|/)" + base + r":(\d+):\d+:\s+required from")
    clang_context = re.compile(r"(?:^|/)" + base + r":(\d+):\d+: note: in instantiation of .* requested here")

    def case_of(line_number: int) -> str | None:
        for first, last, name in ranges:
            if first <= line_number <= last:
                return name
        return None

    error_at = [i for i, line in enumerate(log_lines) if ERROR.match(line)]
    result = []
    for k, i in enumerate(error_at):
        line = log_lines[i]
        m = ERROR.match(line)
        found = None
        if Path(m.group("file")).name == source.name:
            found = case_of(int(m.group("line")))
        if found is None:  # g++: the nearest "required from" above, back to the previous error
            stop = error_at[k - 1] if k > 0 else -1
            new_context = False
            for j in range(i - 1, stop, -1):
                c = gcc_context.search(log_lines[j])
                if c:
                    found = case_of(int(c.group(1)))
                    break
                new_context = new_context or bool(CONTEXT.search(log_lines[j]))
            # g++ prints the context once for the errors of one instantiation: an error with
            # no context of its own above it belongs where the error before it does.
            if found is None and not new_context and result and k > 0:
                found = result[-1][0]
        if found is None:  # clang: the last "requested here" below, up to the next error
            stop = error_at[k + 1] if k + 1 < len(error_at) else len(log_lines)
            any_note = False
            for j in range(i + 1, stop):
                any_note = any_note or bool(CLANG_NOTE.search(log_lines[j]))
                c = clang_context.search(log_lines[j])
                if c and case_of(int(c.group(1))):
                    found = case_of(int(c.group(1)))
            # clang too prints an instantiation's context once: an error in a header with no
            # "in instantiation of" note of its own belongs where the error before it does.
            if found is None and not any_note and result and k > 0:
                found = result[-1][0]
        result.append((found, line))
    return result


def check(log: Path, source: Path, name: str, pattern: str) -> int:
    if not log.exists():
        print(f"compile_fail: {log} is missing: the fixture compile_fail.build must run first")
        return 1
    ranges = case_ranges(source)
    if name not in {r[2] for r in ranges}:
        print(f"compile_fail: {source} has no case '{name}' (expected a line '// CASE {name}')")
        return 1
    errors = attribute(log.read_text().splitlines(), source, ranges)
    stray = [line for case, line in errors if case is None]
    if stray:
        print(f"compile_fail: {len(stray)} errors point into no case of {source.name}; the file must be"
              " well-formed outside its cases:")
        print("\n".join("  " + s for s in stray))
        return 1
    mine = [line for case, line in errors if case == name]
    if not mine:
        print(f"compile_fail.{name}: no error points into this case: it compiled, and must not")
        return 1
    regex = re.compile(pattern)
    if any(regex.search(line) for line in mine):
        print(f"compile_fail.{name}: refused with the expected message:")
        print("\n".join("  " + line for line in mine if regex.search(line)))
        return 0
    print(f"compile_fail.{name}: refused, but no error matches /{pattern}/; its errors:")
    print("\n".join("  " + line for line in mine))
    return 1


def main(argv: list[str]) -> int:
    if len(argv) >= 4 and argv[1] == "build" and argv[3] == "--":
        return build(Path(argv[2]), argv[4:])
    if len(argv) == 6 and argv[1] == "case":
        return check(Path(argv[2]), Path(argv[3]), argv[4], argv[5])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

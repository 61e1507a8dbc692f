#!/usr/bin/env python3
"""Checks that the code blocks the docs name are the code the tests compile.

A fenced block of docs/*.md is a snippet when it is tagged ```cpp title="NAME"``` or when the
line right before its fence is <!-- snippet: NAME -->. Each snippet must appear, line for line
(trailing whitespace ignored), in tests/layer/custom_policies_test.cpp between the lines
`// snippet: NAME` and `// end snippet`. Also fails on a test snippet no page shows, and on a
name used twice. Prints every mismatch and exits 1 if there is any; exits 0 with a one-line
summary otherwise.

Usage: scripts/check_doc_snippets.py [repo root]
"""
import difflib
import re
import sys
from pathlib import Path

FENCE_TITLE = re.compile(r'^```cpp\s+title="([^"]+)"\s*$')
FENCE_OPEN = re.compile(r"^```cpp\s*$")
MARKER = re.compile(r"^<!--\s*snippet:\s*([\w.-]+)\s*-->\s*$")
TEST_BEGIN = re.compile(r"^\s*//\s*snippet:\s*([\w.-]+)\s*$")
TEST_END = re.compile(r"^\s*//\s*end snippet\s*$")
TEST_FILE = Path("tests/layer/custom_policies_test.cpp")


def norm(lines):
    return [line.rstrip() for line in lines]


def doc_snippets(path: Path, errors):
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        name = None
        m = FENCE_TITLE.match(lines[i])
        if m:
            name = m.group(1)
        elif FENCE_OPEN.match(lines[i]) and i > 0 and MARKER.match(lines[i - 1]):
            name = MARKER.match(lines[i - 1]).group(1)
        elif MARKER.match(lines[i]) and not (i + 1 < len(lines) and lines[i + 1].startswith("```")):
            errors.append(f"{path}:{i + 1}: snippet marker not followed by a ```cpp fence")
        if name is None:
            i += 1
            continue
        start = i + 1
        end = start
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        if end == len(lines):
            errors.append(f"{path}:{i + 1}: snippet '{name}' has no closing fence")
        out.append((name, start + 1, norm(lines[start:end])))
        i = end + 1
    return out


def test_snippets(path: Path, errors):
    lines = path.read_text().splitlines()
    out, name, start = {}, None, 0
    for n, line in enumerate(lines, 1):
        m = TEST_BEGIN.match(line)
        if m:
            if name is not None:
                errors.append(f"{path}:{n}: snippet '{m.group(1)}' opens inside snippet '{name}'")
            name, start = m.group(1), n
        elif TEST_END.match(line):
            if name is None:
                errors.append(f"{path}:{n}: '// end snippet' without an opening '// snippet: NAME'")
                continue
            if name in out:
                errors.append(f"{path}:{start}: snippet '{name}' defined twice")
            out[name] = (start, norm(lines[start:n - 1]))
            name = None
    if name is not None:
        errors.append(f"{path}:{start}: snippet '{name}' has no '// end snippet'")
    return out


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    errors = []
    test_path = root / TEST_FILE
    if not test_path.exists():
        print(f"check_doc_snippets: {TEST_FILE} does not exist")
        return 1
    tests = test_snippets(test_path, errors)
    seen = {}
    for doc in sorted((root / "docs").glob("*.md")):
        for name, line, body in doc_snippets(doc, errors):
            where = f"{doc.relative_to(root)}:{line}"
            if name in seen:
                errors.append(f"{where}: snippet '{name}' also shown at {seen[name]}")
                continue
            seen[name] = where
            if name not in tests:
                errors.append(f"{where}: snippet '{name}' is not in {TEST_FILE} "
                              f"(add it between '// snippet: {name}' and '// end snippet')")
                continue
            if body != tests[name][1]:
                diff = difflib.unified_diff(body, tests[name][1], fromfile=where,
                                            tofile=f"{TEST_FILE}:{tests[name][0]}", lineterm="")
                errors.append(f"{where}: snippet '{name}' differs from the test:\n  " + "\n  ".join(diff))
    for name, (line, _) in tests.items():
        if name not in seen:
            errors.append(f"{TEST_FILE}:{line}: snippet '{name}' is shown by no page of docs/")
    for e in errors:
        print(e)
    if errors:
        print(f"check_doc_snippets: {len(errors)} problem(s)")
        return 1
    print(f"check_doc_snippets: {len(seen)} snippet(s) match {TEST_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

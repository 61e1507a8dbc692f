#!/usr/bin/env python3
"""Checks the layering of include/moe/ (docs/architecture.md#layers).

A header may include headers of its own folder and of folders below it in this order:

    core < contracts < kernels < dispatch < {gather, expert, loss} < router < combine
         < layer < {parallel, store, train, io, deploy} < moe.hpp (the umbrella)

Folders on one rank ({gather, expert, loss}, {parallel, store, train, io, deploy}) may not include
each other. kernels/reference/ is part of kernels. Also fails on an include cycle, on an
#include of a moe header that does not exist, and on a folder the order does not name.
Prints every violation and exits 1 if there is any; exits 0 with a one-line summary otherwise.
"""
import re
import sys
from pathlib import Path

RANKS = {
    "core": 0, "contracts": 1, "kernels": 2, "dispatch": 3,
    "gather": 4, "expert": 4, "loss": 4, "router": 5, "combine": 6, "layer": 7,
    "parallel": 8, "store": 8, "train": 8, "io": 8, "deploy": 8, "": 9,
}
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"](moe/[^>"]+)[>"]')


def folder(rel: str) -> str:
    parts = rel.split("/")  # moe/<folder>/... or moe/moe.hpp
    return parts[1] if len(parts) > 2 else ""


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "include")
    headers = {str(p.relative_to(root)): p for p in sorted(root.glob("moe/**/*.hpp"))}
    errors, edges = [], {}
    for rel, path in headers.items():
        src = folder(rel)
        if src not in RANKS:
            errors.append(f"{rel}: folder '{src}' is not in the layer order (scripts/check_includes.py RANKS)")
            continue
        edges[rel] = []
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            m = INCLUDE.match(line)
            if not m:
                continue
            target = m.group(1)
            if target not in headers:
                errors.append(f"{rel}:{lineno}: includes {target}, which does not exist")
                continue
            dst = folder(target)
            edges[rel].append(target)
            if dst == src:
                continue
            if dst not in RANKS or RANKS[dst] >= RANKS[src]:
                errors.append(f"{rel}:{lineno}: {src or 'moe.hpp'} (rank {RANKS[src]}) includes {target} "
                              f"({dst}, rank {RANKS.get(dst, '?')}): expected only folders below it")
    # Cycles (within a folder, the only place the rank rule allows them).
    state = {}

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in edges.get(node, []):
            if state.get(nxt) == 1:
                errors.append("include cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in edges:
        if node not in state:
            visit(node, [])
    for e in errors:
        print(e)
    if errors:
        print(f"check_includes: {len(errors)} violation(s) in {len(headers)} headers")
        return 1
    print(f"check_includes: {len(headers)} headers, {sum(map(len, edges.values()))} includes, layering respected")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Checks that tests/ mirrors include/moe/ (docs/architecture.md#tests).

Every header include/moe/<dir>/<name>.hpp has its test file tests/<dir>/<name>_test.cpp; a
tests/<dir>/<name>_backward_test.cpp beside it may hold the training half. Exceptions:

  * NO_BEHAVIOUR below lists the headers with no behaviour of their own (declarations only,
    concepts the compile-fail tests check, umbrella headers that only include others), each
    with the reason. A header whose functions or member functions compute something is not
    one of them.
  * kernels/reference/<name>.hpp, the scalar twin of kernels/<name>.hpp, is tested by
    tests/kernels/<name>_test.cpp, the SIMD kernel's test, which must include the twin and
    call it (moe::kernels::reference::<function>: the kernel is checked against its twin
    there); no tests/kernels/reference/ folder.
  * TESTED_BY maps a header split out of another (the bodies of a class declared there) to
    the test file of that other header, which must include one of the two.

Every tests/<dir>/*_test.cpp in turn is the test file of a header as above, or is listed in
CROSS_CUTTING with the reason (a property of every layer, a conformance suite): a test file
of no header and no reason is a name that drifted from the header it tests.

Prints every violation and exits 1 if there is any; exits 0 with a one-line summary otherwise.
Usage: check_test_mirror.py [repository root]
"""
import re
import sys
from pathlib import Path

# Headers without behaviour of their own, relative to include/moe/.
NO_BEHAVIOUR = {
    "moe.hpp": "umbrella: includes every public header",
    "kernels/kernels.hpp": "umbrella: includes every kernel header",
    "kernels/reference/kernels.hpp": "umbrella: includes every scalar twin",
    "train/train.hpp": "umbrella: includes the training utilities",
    "kernels/op.hpp": "one enum (Op), no functions",
    "core/context.hpp": "enums and a struct of defaults (ForwardContext); the layer reads them (tests/layer/)",
    "contracts/statistics.hpp": "plain struct (LayerStatistics), no functions",
    "contracts/executor.hpp": "plain structs of references (ExpertStep, ExpertStepBackward), no functions",
    "contracts/combine.hpp": "plain structs (CombineScratch, CombineContext); pool() returns a member",
    "contracts/training.hpp": "plain structs of the training protocol; empty_matrix() returns a 0 x 0 matrix",
    "contracts/concepts.hpp": "concepts and NoLosses; the static_asserts built on them are the compile-fail tests "
                              "(tests/compile_fail/)",
    "layer/workspace.hpp": "caller-owned buffers; its three members bundle references to them, computing nothing "
                           "(reuse across shapes: tests/layer/moe_layer_test.cpp)",
}

# Headers whose code is the body of another header's declarations: tested by that header's test.
TESTED_BY = {
    "io/safetensors_impl.hpp": "io/safetensors_test.cpp",
}

# Test files, relative to tests/, that test no one header; a key ending in "/" is a folder.
CROSS_CUTTING = {
    "alloc/alloc_test.cpp": "steady-state allocation of every layer family (own program: it replaces operator new)",
    "conformance/": "golden conformance suites: each family's layer against its reference's outputs and gradients",
    "layer/determinism_test.cpp": "bit-identity of every family across calls, workspaces, batch splits and threads",
    "layer/threads_test.cpp": "forward and backward bit-identical for every pool size, across families",
    "layer/concurrent_layer_test.cpp": "one const layer of every family used from several threads at once",
    "layer/gradcheck_test.cpp": "finite-difference gradients of every family of layer (router, experts, combiner, losses)",
    "layer/numerics_test.cpp": "extreme, non-finite, denormal and edge-size inputs through kernels, routers and layer",
    "layer/arch_test.cpp": "the Arch parameter through every policy kind, the executor and the losses",
    "layer/replay_test.cpp": "routing record and replay through the layer: tape modes, bit identity, gradients",
    "layer/custom_policies_test.cpp": "the docs' custom policies of every kind (scripts/check_doc_snippets.py)",
    "router/router_properties_test.cpp": "the properties every router keeps, checked over all routers",
    "io/loader_robustness_test.cpp": "every loader against every family's file and its corruptions",
    "io/fuzz_regression_test.cpp": "the fuzz corpus and its findings through every reader",
    "train/train_mixture_test.cpp": "end to end: a mixture trained with layer, losses and optimiser",
    "train/compare_test.cpp": "moe-compare's training harness (examples/compare/): model gradients, metrics",
}

# Folders of tests/ that hold no test programs of this rule.
NOT_STAGES = {"support", "compile_fail", "fuzz", "packaging", "tidy"}

TEST_NAME = re.compile(r'\b(?:TEMPLATE_(?:LIST_)?)?TEST_CASE\(\s*"((?:[^"\\]|\\.)*)"')
REFERENCE = re.compile(r"\breference::\w+\s*[(<]")


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    include, tests = root / "include" / "moe", root / "tests"
    headers = sorted(str(p.relative_to(include)) for p in include.glob("**/*.hpp"))
    test_files = sorted(str(p.relative_to(tests)) for p in tests.glob("*/**/*_test.cpp")
                        if p.relative_to(tests).parts[0] not in NOT_STAGES)
    errors, claimed = [], set()
    for table, name in ((NO_BEHAVIOUR, "NO_BEHAVIOUR"), (TESTED_BY, "TESTED_BY")):
        for h in table:
            if h not in headers:
                errors.append(f"{name} lists include/moe/{h}, which does not exist")
    for h in headers:
        stem = h[:-len(".hpp")]
        if h in NO_BEHAVIOUR:
            if any(t in test_files for t in (stem + "_test.cpp", stem + "_backward_test.cpp")):
                errors.append(f"include/moe/{h} is listed in NO_BEHAVIOUR but has a test file: remove the entry")
            continue
        if h in TESTED_BY:
            t = TESTED_BY[h]
            if t not in test_files:
                errors.append(f"include/moe/{h}: TESTED_BY names tests/{t}, which does not exist")
                continue
            # The header itself, or one that includes it.
            owners = [h] + [o for o in headers if f"moe/{h}" in (include / o).read_text()]
            if not any(f"moe/{o}" in (tests / t).read_text() for o in owners):
                errors.append(f"include/moe/{h}: tests/{t} (TESTED_BY) includes none of " +
                              ", ".join(f"moe/{o}" for o in owners))
            claimed.add(t)
            continue
        if stem.startswith("kernels/reference/"):
            t = "kernels/" + stem.split("/")[-1] + "_test.cpp"
            if t not in test_files:
                errors.append(f"include/moe/{h}: no tests/{t} (the scalar twin is tested by its kernel's test)")
            else:
                text = (tests / t).read_text()
                if f"moe/{h}" not in text or not REFERENCE.search(text):
                    errors.append(f"include/moe/{h}: tests/{t} must include moe/{h} and call its functions "
                                  f"(moe::kernels::reference::...)")
            continue
        test, backward = stem + "_test.cpp", stem + "_backward_test.cpp"
        if test not in test_files:
            hint = " (the _backward_test.cpp needs its _test.cpp beside it)" if backward in test_files else ""
            errors.append(f"include/moe/{h}: no tests/{test}{hint}; write one, or list the header in NO_BEHAVIOUR "
                          f"with the reason it has no behaviour")
            continue
        claimed.add(test)
        if backward in test_files:
            claimed.add(backward)
    for key in CROSS_CUTTING:
        present = [t for t in test_files if (t.startswith(key) if key.endswith("/") else t == key)]
        if not present:
            errors.append(f"CROSS_CUTTING lists tests/{key}, which holds no test file")
        elif not key.endswith("/") and key in claimed:
            errors.append(f"tests/{key} is the test file of a header and also listed in CROSS_CUTTING: remove the entry")
    cross = {t for t in test_files for key in CROSS_CUTTING if t == key or (key.endswith("/") and t.startswith(key))}
    for t in test_files:
        if t in claimed or t in cross:
            continue
        h = t.replace("_backward_test.cpp", ".hpp").replace("_test.cpp", ".hpp")
        if h not in headers:
            errors.append(f"tests/{t}: no header include/moe/{h}; rename it after the header it tests, "
                          f"or list it in CROSS_CUTTING with the reason")
        elif h not in NO_BEHAVIOUR:  # a _backward_test.cpp without its _test.cpp, reported above
            errors.append(f"tests/{t}: include/moe/{h} has no tests/{h[:-4]}_test.cpp beside it")
    # catch_discover_tests registers one ctest test per Catch test name, and CMake lists split on
    # ';': a name with one becomes two tests that match nothing and fail. Caught here, at once.
    for t in test_files:
        for lineno, line in enumerate((tests / t).read_text().splitlines(), 1):
            m = TEST_NAME.search(line)
            if m and ";" in m.group(1):
                errors.append(f"tests/{t}:{lineno}: test name {m.group(1)!r} contains ';' (ctest would split it)")
    for e in errors:
        print(e)
    if errors:
        print(f"check_test_mirror: {len(errors)} violation(s) in {len(headers)} headers, {len(test_files)} test files")
        return 1
    print(f"check_test_mirror: {len(headers)} headers ({len(NO_BEHAVIOUR)} without behaviour), "
          f"{len(test_files)} test files ({len(cross)} cross-cutting), tests/ mirrors include/moe/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

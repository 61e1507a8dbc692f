#!/usr/bin/env python3
"""The invariants of moe-compare's --quick training comparison (issue #17 item 7; ctest
example.moe_compare.quick). Not the values: that every router is there, every figure that
applies is finite, the dense baseline's active expert FLOPs equal softmax top-k's, the
table names every router, and the output is the same, bit for bit, for two thread counts.

    check_compare.py MOE_COMPARE_BINARY

Exits 1 naming the first broken invariant.
"""
import json
import math
import subprocess
import sys

# Wall-clock figures and the machine: the only fields two runs of one seed may differ in.
TIMING = {"train_tokens_per_s", "infer_tokens_per_s", "threads", "arch"}
# Figures every policy has; the rest may be null where they do not apply (docs/compare.md).
ALWAYS = {"eval_loss", "expert_flops_per_token", "load_cv_train", "load_cv_end", "max_mean_end",
          "dropped_train", "dropped_end", "train_tokens_per_s", "infer_tokens_per_s"}


def fail(msg):
    print("check_compare: " + msg)
    sys.exit(1)


def run(binary, *args):
    p = subprocess.run([binary, *args], capture_output=True, text=True)
    if p.returncode != 0:
        fail("%s %s exited %d: %s" % (binary, " ".join(args), p.returncode, p.stderr[-2000:]))
    return p.stdout


def strip(obj):
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj


def check_task(binary, task, names):
    base = ["--quick", "--task", task, "--seeds", "2"]
    one = json.loads(run(binary, *base, "--threads", "1", "--json"))
    two = json.loads(run(binary, *base, "--threads", "2", "--json"))
    routers = [r["router"] for r in one["results"]]
    if routers != names:
        fail("%s: routers expected %s (--list), got %s" % (task, names, routers))
    for r in one["results"]:
        for run_ in r["runs"]:
            for key, v in run_.items():
                if key in ("seed", "curve"):
                    continue
                if v is None:
                    if key in ALWAYS or (key == "bits_per_char" and task == "text"):
                        fail("%s: %s seed %s: %s expected a number, got null" % (task, r["router"], run_["seed"], key))
                    continue
                if not math.isfinite(v):
                    fail("%s: %s seed %s: %s expected finite, got %r" % (task, r["router"], run_["seed"], key, v))
            if len(run_["curve"]) < 2:
                fail("%s: %s: expected a curve of at least 2 points, got %d" % (task, r["router"], len(run_["curve"])))
            for p in run_["curve"]:
                if not math.isfinite(p["eval_loss"]):
                    fail("%s: %s: held-out loss at step %d expected finite, got %r" % (task, r["router"], p["step"], p["eval_loss"]))
    by = {r["router"]: r for r in one["results"]}
    for baseline in ("dense", "frozen-random"):
        for a, b in zip(by[baseline]["runs"], by["softmax-topk"]["runs"]):
            if a["expert_flops_per_token"] != b["expert_flops_per_token"]:
                fail("%s: %s's active expert FLOPs per token expected softmax-topk's %r, got %r"
                     % (task, baseline, b["expert_flops_per_token"], a["expert_flops_per_token"]))
    if strip(one) != strip(two):
        for r1, r2 in zip(one["results"], two["results"]):
            if strip(r1) != strip(r2):
                fail("%s: %s: results with 1 and 2 threads differ" % (task, r1["router"]))
        fail("%s: results with 1 and 2 threads differ" % task)
    # Same seeds, same figures: the JSON holds both seeds' runs, and seed 2's differ from seed 1's.
    if all(r["runs"][0]["eval_loss"] == r["runs"][1]["eval_loss"] for r in one["results"]):
        fail("%s: seeds 1 and 2 gave the same held-out losses for every router" % task)
    table = run(binary, "--quick", "--task", task, "--threads", "2")
    lines = {line.split()[0] for line in table.splitlines() if line.strip()}
    missing = [n for n in names if n not in lines]
    if missing:
        fail("%s: the table has no row for %s" % (task, missing))
    print("check_compare: %s: %d routers x 2 seeds, figures finite, FLOPs of the baselines equal, "
          "threads 1 and 2 identical" % (task, len(names)))


def main():
    if len(sys.argv) != 2:
        fail("usage: check_compare.py MOE_COMPARE_BINARY")
    binary = sys.argv[1]
    names = [line.split()[0] for line in run(binary, "--list").splitlines() if line.strip()]
    if len(names) < 21 or "dense" not in names or "frozen-random" not in names:
        fail("--list: expected at least 21 routers with dense and frozen-random, got %s" % names)
    for task in ("text", "synthetic"):
        check_task(binary, task, names)


if __name__ == "__main__":
    main()

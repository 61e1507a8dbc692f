#!/usr/bin/env python3
"""Plots of a moe-compare training comparison (docs/compare.md), from its JSON.

    compare_plots.py COMPARE.json OUT_DIR [--router NAME]

Writes three PNGs into OUT_DIR:
  loss.png       held-out loss against steps, one line per router (mean over seeds, band +- std)
  load_cv.png    coefficient of variation of the per-expert load against steps
  load_heatmap_<router>.png   expert x step share of the load for one router (first seed)
moe-compare --plots DIR calls it; it needs python3-matplotlib (Debian package).
"""
import argparse
import json
import math
import os
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def curves(result, key):
    """Steps and the mean and std over seeds of one curve key."""
    runs = result["runs"]
    steps = [p["step"] for p in runs[0]["curve"]]
    mean, std = [], []
    for i in range(len(steps)):
        vals = [r["curve"][i][key] for r in runs if r["curve"][i][key] is not None]
        m = sum(vals) / len(vals) if vals else math.nan
        s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        mean.append(m)
        std.append(s)
    return steps, mean, std


def line_plot(data, key, ylabel, title, path, skip_first=False):
    """One line per router; skip_first leaves out step 0 (the untrained model), whose value
    would squeeze the differences that matter into the bottom of the plot."""
    fig, ax = plt.subplots(figsize=(11, 6.5))
    cmap = plt.get_cmap("tab20")
    for i, result in enumerate(data["results"]):
        steps, mean, std = curves(result, key)
        if skip_first:
            steps, mean, std = steps[1:], mean[1:], std[1:]
        style = "--" if result.get("baseline") else "-"
        colour = "black" if result["router"] == "frozen-random" else cmap(i % 20)
        ax.plot(steps, mean, style, color=colour, label=result["router"], linewidth=1.4)
        if any(s > 0 for s in std):
            lo = [m - s for m, s in zip(mean, std)]
            hi = [m + s for m, s in zip(mean, std)]
            ax.fill_between(steps, lo, hi, color=colour, alpha=0.12)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title("\n".join(textwrap.wrap(title, 120)), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print("compare_plots: wrote " + path)


def heatmap(data, router, path):
    result = next((r for r in data["results"] if r["router"] == router), None)
    if result is None:
        sys.exit("compare_plots: router '%s' is not in the JSON" % router)
    curve = result["runs"][0]["curve"]
    if not curve or not curve[0]["load_share"]:
        print("compare_plots: no per-expert load for %s; heat map skipped" % router)
        return
    steps = [p["step"] for p in curve]
    experts = len(curve[0]["load_share"])
    grid = [[p["load_share"][e] for p in curve] for e in range(experts)]
    fig, ax = plt.subplots(figsize=(10, 0.35 * experts + 2))
    im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(experts))
    ax.set_ylabel("expert")
    ticks = list(range(0, len(steps), max(1, len(steps) // 10)))
    ax.set_xticks(ticks)
    ax.set_xticklabels([steps[i] for i in ticks])
    ax.set_xlabel("step")
    ax.set_title("%s: share of the held-out load per expert (seed %s, first block)"
                 % (router, result["runs"][0]["seed"]), fontsize=10)
    fig.colorbar(im, ax=ax, label="share of kept assignments")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print("compare_plots: wrote " + path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json")
    ap.add_argument("out_dir")
    ap.add_argument("--router", default="softmax-topk")
    args = ap.parse_args()
    with open(args.json) as f:
        data = json.load(f)
    os.makedirs(args.out_dir, exist_ok=True)
    seeds = len(data["seeds"])
    subtitle = "%s; %d steps, %d seed%s" % (data["task"], data["config"]["steps"], seeds, "" if seeds == 1 else "s")
    line_plot(data, "eval_loss", "held-out loss (nats)", "Held-out loss (from the first evaluation after step 0). " + subtitle,
              os.path.join(args.out_dir, "loss.png"), skip_first=True)
    line_plot(data, "load_cv", "load CV (held-out)", "Load coefficient of variation. " + subtitle,
              os.path.join(args.out_dir, "load_cv.png"))
    heatmap(data, args.router, os.path.join(args.out_dir, "load_heatmap_%s.png" % args.router))


if __name__ == "__main__":
    main()

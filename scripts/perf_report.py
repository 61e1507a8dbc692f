#!/usr/bin/python3
"""Writes docs/PERFORMANCE.md and docs/perf/*.png from the JSON that scripts/bench_all.sh leaves
in build/perf/ (issue #5's ratios, each from one run).

    /usr/bin/python3 scripts/perf_report.py [build/perf] [--docs docs]

Reads forward.json, backward.json (Google Benchmark JSON of moe_bench_forward and
moe_bench_backward), threads.json (moe_bench_threads, ratio d), forward-blas.json
(moe_bench_forward built with MOE_USE_BLAS=ON, Eigen on OpenBLAS), decode.json
(moe_bench_decode), products.json (moe_bench_products), quant.json (moe_bench_quant, Google
Benchmark JSON), ggml.jsonl or ggml-skipped.txt (the ggml peer's times, or why it did not run),
torch.json (bench/peers/torch_moe.py), compare-<T>.json (moe-compare
--json) and machine.json. A missing file leaves its rows out and
says so in the page. Needs python3-matplotlib (Debian); plots use the Agg backend, no display.
"""

import argparse
import glob
import json
import os
import re
import sys

UNIT = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}
SHAPES = ["mixtral-scaled", "olmoe-scaled"]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:  # empty: the program ran no benchmark (a FILTER matched none)
        print(f"perf_report: {path} is not JSON (empty?); left out", file=sys.stderr)
        return None


def gbench_best(doc, clock="cpu_time"):
    """{run name without /min_time:X, /repeats:N or /real_time: best seconds of `clock`} from Google
    Benchmark JSON: the fastest repetition (load from other processes only adds time), the `min`
    aggregate where only aggregates were written."""
    best, agg_min, samples = {}, {}, {}
    for b in (doc or {}).get("benchmarks", []):
        if b.get("error_occurred"):
            continue
        # Per-benchmark MinTime() and Repetitions() put /min_time:X and /repeats:N in the name.
        name = re.sub(r"/(min_time:[\d.]+|repeats:\d+|real_time)", "", b.get("run_name", b["name"]))
        t = b[clock] * UNIT[b.get("time_unit", "ns")]
        if b.get("run_type", "iteration") == "iteration":
            best[name] = min(best.get(name, t), t)
            samples.setdefault(name, []).append(t)
        elif b.get("aggregate_name") == "min":
            agg_min[name] = t
    for k, v in agg_min.items():
        best.setdefault(k, v)
    return best, {k: sorted(v)[len(v) // 2] for k, v in samples.items()}


def div(a, b):
    return a / b if a is not None and b else None


def fmt(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}"


def verdict(value, goal, larger_is_better):
    if value is None or goal is None:
        return "—"
    ok = value >= goal if larger_is_better else value <= goal
    return "met" if ok else "**not met**"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("perf", nargs="?", default="build/perf")
    ap.add_argument("--docs", default="docs")
    args = ap.parse_args()

    fwd_doc = load(os.path.join(args.perf, "forward.json"))
    bwd_doc = load(os.path.join(args.perf, "backward.json"))
    dec = load(os.path.join(args.perf, "decode.json"))
    peer = load(os.path.join(args.perf, "torch.json"))
    machine = load(os.path.join(args.perf, "machine.json")) or {}
    compare = {}
    for p in glob.glob(os.path.join(args.perf, "compare-*.json")):
        doc = load(p)
        compare[int(doc["workload"]["tokens"])] = doc
    (fwd, fwd_median), (bwd, _) = gbench_best(fwd_doc), gbench_best(bwd_doc)
    threads_doc = load(os.path.join(args.perf, "threads.json"))
    threads, _ = gbench_best(threads_doc, clock="real_time")
    blas_doc = load(os.path.join(args.perf, "forward-blas.json"))
    fwd_blas, fwd_blas_median = gbench_best(blas_doc)

    tokens = sorted({int(m.group(1)) for k in fwd for m in [re.search(r"/T:(\d+)$", k)] if m})
    moe_s = {(s, T): fwd.get(f"moe_forward/{s}/T:{T}") for s in SHAPES for T in tokens}
    ideal_s = {(s, T): fwd.get(f"ideal_experts/{s}/T:{T}") for s in SHAPES for T in tokens}
    # The ratio of medians beside the ratio of best repetitions: where they disagree, the run was noisy.
    a_median = {(s, T): div(fwd_median.get(f"moe_forward/{s}/T:{T}"), fwd_median.get(f"ideal_experts/{s}/T:{T}"))
                for s in SHAPES for T in tokens}
    torch_s = {(r["shape"], r["tokens"]): r["cpu_s"] for r in (peer or {}).get("results", [])}

    rows = []  # (id, ratio, shape, T, goal text, goal, value, larger_is_better)
    for s in SHAPES:
        for T in tokens:
            goal = 1.10 if T >= 512 else None
            rows.append(("a", "MoE forward / ideal expert GEMMs", s, T, "≤ 1.10 (T ≥ 512)" if goal else "—", goal,
                         div(moe_s[(s, T)], ideal_s[(s, T)]), False))
    for s in SHAPES:
        for T in sorted({T for (sh, T) in torch_s if sh == s} or tokens):
            goal = 4.0 if (T <= 32 or s.startswith("olmoe")) else 2.0
            rows.append(("b", "PyTorch time / moe time", s, T, f"≥ {goal:g}", goal,
                         div(torch_s.get((s, T)), moe_s.get((s, T))), True))
    for r in (dec or {}).get("decode", []):
        if r.get("tokens", 1) != 1 or r.get("weights", "float") != "float":
            continue  # T = 4 and 16, and bf16 weights, are in the decode table and the products section
        rows.append(("c", "T = 1 latency / (weight bytes / triad bandwidth)", r["shape"], 1, "≤ 1.3", 1.3,
                     r["ratio"], False))
    # d: wall time with a pool of 1 thread / with n threads, forward at T = 2048.
    thread_t = {}  # (shape, T, n) -> seconds
    for k, v in threads.items():
        m = re.fullmatch(r"threads/([^/]+)/T:(\d+)/threads:(\d+)", k)
        if m:
            thread_t[(m.group(1), int(m.group(2)), int(m.group(3)))] = v
    d_rows = []
    for (s, T, n) in sorted(thread_t, key=lambda k: (SHAPES.index(k[0]) if k[0] in SHAPES else 99, k[1], k[2])):
        if n == 1:
            continue
        goal = {2: 1.8, 16: 12.0}.get(n)
        value = div(thread_t.get((s, T, 1)), thread_t[(s, T, n)])
        d_rows.append((s, T, n, value))
        rows.append(("d", f"time(1 thread) / time({n} threads)", s, T, f"≥ {goal:g}" if goal else "—", goal,
                     value, True))
    if not d_rows:
        rows.append(("d", "threads", "—", None, "—", None, None, False))
    blas_s = {(s, T): fwd_blas.get(f"moe_forward/{s}/T:{T}") for s in SHAPES for T in tokens}
    blas_ideal = {(s, T): fwd_blas.get(f"ideal_experts/{s}/T:{T}") for s in SHAPES for T in tokens}
    bwd_T = sorted({int(k.rsplit("/", 1)[1]) for k in bwd if k.startswith("forward/")})
    for s in SHAPES:
        for T in bwd_T:
            rows.append(("e", "(forward + backward) / forward", s, T, "≤ 3.3", 3.3,
                         div(bwd.get(f"forward_backward/{s}/{T}"), bwd.get(f"forward/{s}/{T}")), False))

    os.makedirs(os.path.join(args.docs, "perf"), exist_ok=True)
    plots = make_plots(args.docs, compare, tokens, moe_s, torch_s)
    prod = load(os.path.join(args.perf, "products.json"))
    if prod and products_plot(args.docs, prod):
        plots.append("products_gflops.png")
    quant = quant_rows(load(os.path.join(args.perf, "quant.json")))
    if quant and quant_plot(args.docs, quant):
        plots.append("quant_tokens_per_s.png")
    write_page(args, machine, rows, moe_s, ideal_s, a_median, torch_s, dec, peer, compare, bwd, bwd_T, plots,
               tokens, thread_t, blas_s, blas_ideal, blas_doc)


def plain_log_y(ax):
    """Labels at 1, 2, 5 times each power of ten, as plain numbers: a tokens/s axis spanning
    less than a decade otherwise shows a single label."""
    import matplotlib.ticker as tk
    ax.yaxis.set_major_locator(tk.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(tk.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.yaxis.set_minor_formatter(tk.NullFormatter())


def products_section(add, prod, dec, torch_s):
    """Issue #11's goals: the packed expert products against the FMA peak, OpenBLAS sgemm, the
    PyTorch peer, bf16 against float, and decode against the bandwidth bound."""
    add("## Expert products (issue #11)")
    add("")
    if not prod:
        add("Not measured in this run (no products.json: `moe_bench_products`).")
        add("")
        return
    ctx = prod["context"]
    peak = ctx["fma_peak_gflops"]
    add(f"`moe_bench_products`, one thread: FMA peak {peak:.1f} GFLOP/s (float, {ctx['moe_kernel_arch']}); "
        f"packed kernels: float `{ctx['packed_float']}`, bf16 `{ctx['packed_bf16']}`; BLAS row: {ctx['blas']}. "
        "GFLOP/s of the expert products (gate|up, SwiGLU, down) on the slabs the layer routed, best of "
        f"{ctx['reps']} calls; the layer rows are whole forwards.")
    add("")
    add("| shape | T | packed GFLOP/s | % of peak | bf16 GFLOP/s | bf16 / packed | gemm GFLOP/s | packed / gemm | "
        "OpenBLAS GFLOP/s | packed / OpenBLAS | layer float ms | layer bf16 ms | PyTorch ms | PyTorch / layer | "
        "bf16 max rel. diff |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    goals = []  # (what, shape, T, goal text, goal, value, larger)
    for r in prod["products"]:
        gf = lambda t: r["flops"] / t * 1e-9 if t else None
        pk, b16, gm, ob = gf(r["packed_s"]), gf(r["bf16_s"]), gf(r["gemm_s"]), gf(r["openblas_s"])
        torch = torch_s.get((r["shape"], r["tokens"]))
        T = r["tokens"]
        add(f"| {r['shape']} | {T} | {fmt(pk, 1)} | {fmt(pk and 100 * pk / peak, 1)} | {fmt(b16, 1)} | "
            f"{fmt(div(r['packed_s'], r['bf16_s']))} | {fmt(gm, 1)} | {fmt(div(r['gemm_s'], r['packed_s']))} | "
            f"{fmt(ob, 1)} | {fmt(div(r['openblas_s'] or None, r['packed_s']))} | {fmt(r['layer_float_s'] * 1e3, 3)} | "
            f"{fmt(r['layer_bf16_s'] * 1e3, 3)} | {fmt(torch and torch * 1e3, 3)} | "
            f"{fmt(div(torch, r['layer_float_s']))} | {r['bf16_max_rel_diff']:.1e} |")
        if T >= 512:
            goals.append(("packed float, % of the FMA peak", r["shape"], T, "≥ 85", 85.0, pk and 100 * pk / peak, True))
            goals.append(("bf16 / packed float", r["shape"], T, "≥ 1.7", 1.7, div(r["packed_s"], r["bf16_s"]), True))
        goals.append(("packed / OpenBLAS sgemm, same products", r["shape"], T, "≥ 1.0", 1.0,
                      div(r["openblas_s"] or None, r["packed_s"]), True))
        if T >= 512 or T <= 32:
            g = 1.15 if T >= 512 else 2.0
            goals.append(("PyTorch / layer forward", r["shape"], T, f"≥ {g:g}", g, div(torch, r["layer_float_s"]), True))
    for r in (dec or {}).get("decode", []):
        goals.append((f"decode latency / bandwidth bound, {r.get('weights', 'float')} weights", r["shape"],
                      r.get("tokens", 1), "≤ 1.3", 1.3, r["ratio"], False))
    add("")
    add("![expert products against T](perf/products_gflops.png)")
    add("")
    add("| goal | shape | T | target | measured | |")
    add("|---|---|---:|---|---:|---|")
    for what, shape, T, text, goal, value, larger in goals:
        add(f"| {what} | {shape} | {T} | {text} | {fmt(value)} | {verdict(value, goal, larger)} |")
    add("")


QUANT_TYPES = ["F32", "BF16", "Q8_0", "Q4_0", "Q4_K"]


def quant_rows(doc):
    """moe_bench_quant's JSON as {(shape, T, type): benchmark object of the fastest repetition,
    with its CPU seconds per call under "s"}, and the document under None."""
    rows = {}
    for b in (doc or {}).get("benchmarks", []):
        if b.get("error_occurred") or b.get("run_type", "iteration") != "iteration":
            continue
        name = re.sub(r"/(iterations:\d+|repeats:\d+|min_time:[\d.]+)", "", b.get("run_name", b["name"]))
        m = re.fullmatch(r"([^/]+)/([^/]+)/T:(\d+)", name)
        if not m:
            continue
        key = (m.group(2), int(m.group(3)), m.group(1))
        t = b["cpu_time"] * UNIT[b.get("time_unit", "ns")]
        if key not in rows or t < rows[key]["s"]:
            rows[key] = dict(b, s=t, reps=rows.get(key, {}).get("reps", 0) + 1)
        else:
            rows[key]["reps"] += 1
    if rows:
        rows[None] = doc
    return rows


def quant_section(add, quant, machine, perf_dir, plotted):
    """Issue #12 item 6: the experts' products with quantized weights, decode against the
    bandwidth bound of the bytes read, prefill against float, and the ggml peer."""
    add("## Quantized products (issue #12)")
    add("")
    if not quant:
        add("Not measured in this run (no quant.json: `moe_bench_quant`).")
        add("")
        quant_peer(add, perf_dir)
        return
    ctx = quant[None].get("context", {})
    gbs = float(ctx.get("triad_gb_per_s", "nan"))
    path = ctx.get("quant_path", "?")
    vnni = "vnni" in path
    reps = max(r["reps"] for k, r in quant.items() if k is not None)
    kernels = ", ".join(f"{t} `{ctx['kernel_' + t]}`" for t in QUANT_TYPES if ctx.get("kernel_" + t))
    add(f"`moe_bench_quant`, one thread: the routed experts' products (gate|up, SwiGLU, down on the slabs "
        f"the layer routed, every expert that received rows) with the weights stored as each type, all "
        f"from the same N(0, 0.02) floats (`QuantMatrix<Block>::quantize`, packed float and bf16 by "
        f"`pack_for`). Kernels: {kernels}. Before every call a {ctx.get('sweep_mib', '?')} MiB read evicts "
        f"the weights from the caches (untimed), so each call reads them from memory. STREAM triad "
        f"{gbs:.1f} GB/s (CPU time, measured at the start of the same run, moe_bench_decode's method). "
        f"CPU time of the fastest of {reps} repetition{'s' if reps != 1 else ''}.")
    when = ctx.get("date", "?")
    load_avg = ctx.get("load_avg")
    same_run = machine.get("commit") and ctx.get("commit") == machine.get("commit")
    add("")
    add(f"Run: {when}" + (f", commit `{ctx['commit']}`" if ctx.get("commit") else "")
        + (f", load average {', '.join(f'{x:.2f}' for x in load_avg)} at the start" if load_avg else "")
        + ("." if same_run else "; measured apart from the rest of this page (its header describes the other "
           "programs' run), on the same machine."))
    add("")
    add("| shape | T | type | ms | tokens/s | GFLOP/s | weights read (MB) | bound (ms) | ratio | vs F32 | "
        "act. quant. share | max rel. diff vs F32 |")
    add("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    keys = sorted((k for k in quant if k is not None),
                  key=lambda k: (SHAPES.index(k[0]) if k[0] in SHAPES else 99, k[1],
                                 QUANT_TYPES.index(k[2]) if k[2] in QUANT_TYPES else 99))
    goals, speedups = [], []  # (what, shape, T, goal text, goal, value, larger): decode, then prefill
    limits = []  # Q8_0 speed-ups not met with VNNI: (shape, T, vs, share, vs without quantizing)
    for shape, T, typ in keys:
        r = quant[(shape, T, typ)]
        t = r["s"]
        byts = r.get("weight_bytes")
        bound = byts / (gbs * 1e9) if byts else None
        ratio = div(t, bound)
        f32 = quant.get((shape, T, "F32"))
        vs = div(f32["s"], t) if f32 and typ != "F32" and T >= 512 else None
        share = r.get("act_quant_share")
        diff = r.get("max_rel_diff")
        add(f"| {shape} | {T} | {typ} | {t * 1e3:.3f} | {T / t:.0f} | {fmt(r.get('GFLOP/s'), 1)} | "
            f"{fmt(byts and byts / 1e6, 1)} | {fmt(bound and bound * 1e3, 3)} | {fmt(ratio)} | {fmt(vs)} | "
            f"{fmt(share and 100 * share, 0) + ' %' if share else '—'} | {f'{diff:.1e}' if diff is not None else '—'} |")
        if T <= 16:
            goals.append((f"decode latency / bandwidth bound, {typ}", shape, T, "≤ 1.3", 1.3, ratio, False))
        if T >= 512 and typ == "Q8_0":
            if vnni:
                speedups.append(("Q8_0 speed-up over F32 (VNNI)", shape, T, "≥ 2", 2.0, vs, True))
                if vs is not None and vs < 2 and share:
                    limits.append((shape, T, vs, share, f32["s"] / (t * (1 - share))))
            else:
                speedups.append((f"Q8_0 speed-up over F32 ({path}: the goal is for VNNI)", shape, T, "—", None, vs,
                                 True))
    goals += speedups
    add("")
    add("ratio = time / (weights read / triad bandwidth), at T ≤ 16, weights read = `bytes()` of the "
        "`QuantMatrix` or `PackedMatrix` of every expert with rows (gate|up and down); vs F32 = F32 time / "
        "this time, at T ≥ 512; act. quant. share = the time of quantizing the call's activation rows "
        "(`QuantActivations::quantize` on every slab, timed apart with warm caches) over the call's time; "
        "max rel. diff = max |y − y_F32| / max |y_F32| over the slabs, the weights' quantization error "
        "included (which is why Q4's is near 0.15: a 4-bit step is about a tenth of a weight's scale).")
    add("")
    if plotted:
        add("![quantized expert products against T](perf/quant_tokens_per_s.png)")
        add("")
    add("| goal | shape | T | target | measured | |")
    add("|---|---|---:|---|---:|---|")
    for what, shape, T, text, goal, value, larger in goals:
        add(f"| {what} | {shape} | {T} | {text} | {fmt(value)} | {verdict(value, goal, larger)} |")
    add("")
    if not vnni:
        add(f"- This run's path is `{path}`: the Q8_0 ≥ 2 goal is for machines with VNNI, so it is shown, "
            "not judged.")
    else:
        add(f"- An AVX2-only machine is not measured here: this machine runs `{path}`. The AVX2 path "
            "(`vpmaddubsw` + `vpmaddwd`, register tiles of 8 weight rows) is tested against the twin on this machine "
            "(docs/kernels.md#quantized-products) but not timed on a CPU that has only AVX2.")
    missed = [(what, shape, T, value) for what, shape, T, _, goal, value, larger in goals
              if goal is not None and value is not None and verdict(value, goal, larger) != "met"]
    dec_all = [g for g in goals if g[0].startswith("decode") and g[5] is not None]
    dec_missed = [m for m in missed if m[0].startswith("decode")]
    if dec_all:
        t1 = [f"{w.split(', ')[1]} {s} ({v:.2f})" for w, s, T, v in dec_missed if T == 1]
        add(f"- Decode: {len(dec_all) - len(dec_missed)} of {len(dec_all)} rows meet ≤ 1.3"
            + (f"; at T = 1 the misses are {', '.join(t1)}" if t1 else "; every T = 1 row meets it")
            + ". docs/kernels.md#quantized-products says what limits them.")
        low = [f"{w.split(', ')[1]} {s} T = {T} ({v:.2f})" for w, s, T, _, _, v, _ in dec_all if v < 0.9]
        if low:
            add("- Ratios below 0.9 (" + ", ".join(low) + ") mean those calls found more bandwidth than the "
                "triad did at the start of the run: on a shared machine the bandwidth left to one core moves "
                "with the other processes' load, and single decode rows move by tenths from run to run.")
    if limits:
        add("- Q8_0 below 2x float: " + "; ".join(
            f"{s} T = {T}: {v:.2f}x, of which {100 * sh:.0f} % of the call quantizes activations "
            f"({w:.2f}x without that part)" for s, T, v, sh, w in limits)
            + ". The activation rows are quantized once per product (on 16 lanes on AVX-512, else by the "
              "scalar reference quantizer); docs/kernels.md#quantized-products.")
    add("")
    quant_peer(add, perf_dir, quant)


def quant_peer(add, perf_dir, quant=None):
    """The ggml peer: bench/peers/ggml_moe.cpp's MUL_MAT_ID times on the same shapes, types, T
    and routing, against moe_bench_quant's rows; or why it did not run."""
    add("### ggml peer")
    add("")
    out = os.path.join(perf_dir, "ggml.jsonl")
    skipped = os.path.join(perf_dir, "ggml-skipped.txt")
    rows, meta = {}, {}
    if os.path.exists(out):
        for line in open(out):
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            if "shape" in r:
                rows[(r["shape"], int(r["tokens"]), r["type"].upper())] = r
            else:
                meta.update(r)
    if rows:
        routings = sorted({r.get("routing", "?") for r in rows.values()})
        add(f"`scripts/bench_all.sh --ggml DIR` built `bench/peers/ggml_moe.cpp` against ggml "
            f"(`{meta.get('ggml_dir', '?')}`, commit `{meta.get('ggml_commit', '?')}`) and ran it on one core, "
            "one thread: the same two products per routed row as the table above (`ggml_mul_mat_id` with "
            "gate and up fused in one [d, 2ff, E] weight, down in [ff, d, E]), the same shapes, types and "
            f"T, routing from {', '.join(routings)}, and the same 128 MiB cache sweep before each timed "
            "call; the fastest of at least three calls. ggml runs its plain CPU kernels here (no repacked "
            "extra buffer: what test-backend-ops measures too).")
        add("")
        add("| shape | T | type | ggml ms | moe ms | moe / ggml speed | goal > 1 |")
        add("|---|---:|---|---:|---:|---:|---|")
        behind = []
        for key in sorted(rows, key=lambda k: (SHAPES.index(k[0]) if k[0] in SHAPES else 99, k[1],
                                               QUANT_TYPES.index(k[2]) if k[2] in QUANT_TYPES else 99)):
            g = rows[key]
            ours = (quant or {}).get(key)
            speed = div(g["best_s"], ours["s"]) if ours else None
            if speed is not None and speed <= 1:
                behind.append(f"{key[2]} {key[0]} T = {key[1]} ({speed:.2f})")
            add(f"| {key[0]} | {key[1]} | {key[2]} | {g['best_s'] * 1e3:.3f} | "
                f"{fmt(ours and ours['s'] * 1e3, 3)} | {fmt(speed)} | {verdict(speed, 1.0, True)} |")
        add("")
        add("- Ahead of ggml in every row." if not behind else "- Not ahead: " + "; ".join(behind) + ".")
    else:
        reason = open(skipped).read().strip() if os.path.exists(skipped) else \
            "ggml peer skipped: no GGML_DIR given (no ggml.jsonl in build/perf)"
        add(f"{reason}. `scripts/bench_all.sh --ggml DIR` (or `GGML_DIR=DIR`) compiles "
            "`bench/peers/ggml_moe.cpp` against a ggml or llama.cpp checkout you built with CMake; the script "
            "downloads and builds nothing of ggml. The goal (ahead of ggml for every type at every T) is not "
            "judged.")
    add("")


def reading(add, rows, moe_s, ideal_s, a_median, torch_s, dec, peer, thread_t, blas_s):
    """What the numbers say, written from the numbers, so the page stays true when rerun."""
    add("## Reading the results")
    add("")
    a_missed = [(s, T, v) for rid, _, s, T, _, goal, v, _ in rows
                if rid == "a" and goal is not None and v is not None and v > goal]
    if a_missed:
        parts = []
        for s, T, v in a_missed:
            med = a_median.get((s, T))
            parts.append(f"{s} at T = {T} ({v:.3f}; ratio of medians {fmt(med, 3)})")
        add("- **a** misses its goal at " + "; ".join(parts) + ". Where the best-repetition ratio and "
            "the ratio of medians disagree by several percent the run was noisy; a rerun on a quiet "
            "machine decides. The forward's extra work (routing, plan, gather, combine, statistics) "
            "is a few percent of the expert GEMMs at these shapes.")
    else:
        add("- **a** meets its goal at every T ≥ 512: routing, the plan, gather, combine and the "
            "statistics cost at most 10% of the expert GEMMs.")
    b_rows = [(s, T, v) for rid, _, s, T, _, _, v, _ in rows if rid == "b" and v is not None]
    if b_rows:
        slower = [(s, T) for s, T, v in b_rows if v < 1]
        gemm_bound = [(s, T) for s, T in slower if ideal_s.get((s, T)) and torch_s.get((s, T))
                      and torch_s[(s, T)] < ideal_s[(s, T)]]
        blas_info = (peer or {}).get("context", {}).get("blas")
        core = blas_info.get("openblas_core") if isinstance(blas_info, dict) else None
        blas = f"OpenBLAS ({core} kernels)" if core else "the peer's BLAS"
        if slower:
            add(f"- **b** the PyTorch peer is faster than this library at "
                + ", ".join(f"{s} T = {T}" for s, T in slower) + ". "
                + (f"At {'each of them' if gemm_bound == slower else ', '.join(f'{s} T = {T}' for s, T in gemm_bound)} the peer's whole block, Python "
                   f"loop and all, takes less time than moe's expert GEMMs alone (the ideal of a), so "
                   f"the gap is in the GEMMs, Eigen's against {blas}, not in routing or dispatch; a "
                   f"faster expert GEMM (a small-row path, or a packed-weight kernel) is what closes it."
                   if gemm_bound else "")
                )
        fast = [(s, T, v) for s, T, v in b_rows if v >= 1]
        if fast:
            add("- **b** moe is ahead at " + ", ".join(f"{s} T = {T} ({v:.2f}x)" for s, T, v in fast)
                + ": with few tokens per expert the peer's per-expert Python and dispatch overhead "
                "(`torch.where`, gather, three `Linear`s, `index_add_`, for each expert hit) is not "
                "hidden behind GEMM time.")
    if dec:
        add(f"- **c** the triad bandwidth follows STREAM's count (two reads and one write per element, "
            f"write-allocate traffic not counted), so with write-allocate caches it understates what "
            f"the memory system moves by a quarter (four transfers per element, not three) and the bound "
            f"it gives is a loose one; a ratio below 1 "
            f"means the forward read its weights faster than triad moved its arrays, which pure reads can.")
    d_rows = [(s, T, v) for rid, _, s, T, _, goal, v, _ in rows if rid == "d" and v is not None]
    if d_rows:
        cores = max(n for (_, _, n) in thread_t)
        add(f"- **d** `moe_bench_threads` measured 1 to {cores} threads (as many as the machine has; the "
            "16-thread goal needs a 16-core machine): "
            + "; ".join(f"{s} {v:.2f}x" for s, T, v in d_rows if v is not None) + ". Wall time, so other "
            "processes on the machine's cores show up here: a pool of n threads on n shared cores is only as "
            "fast as the busiest core lets its slowest task be (the forward waits for every task).")
    else:
        add("- **d** is not measured in this run (no build/perf/threads.json from `moe_bench_threads`).")
    e_rows = [(s, T, v, goal) for rid, _, s, T, _, goal, v, _ in rows if rid == "e" and v is not None]
    e_missed = [(s, T, v) for s, T, v, goal in e_rows if v > goal]
    if e_rows:
        triad = f" ({dec['triad']['gb_per_s']:.1f} GB/s triad in this run)" if dec and dec.get("triad") else ""
        add("- **e** backward runs twice the forward's GEMM work (dX and dW for each product), so 3.0 is "
            "the ratio of equally efficient products; what it adds beyond that is memory traffic: it reads "
            "each selected expert's weights again (for dX) and reads and writes its weight gradient "
            "(accumulated), three times the forward's weight traffic. With few tokens per expert "
            "(T·k/E: 64 for olmoe-scaled at T = 512) the products are close to memory-bound, so there "
            "the ratio follows the machine's bandwidth" + triad + "."
            + (" Over the goal: " + ", ".join(f"{s} T = {T} ({v:.2f})" for s, T, v in e_missed) + "."
               if e_missed else " Every measured T meets the goal."))
    b_blas = [(s, T, div(moe_s.get((s, T)), v)) for (s, T), v in blas_s.items() if v and moe_s.get((s, T))]
    if b_blas:
        faster = [f"{s} T = {T} ({r:.2f}x)" for s, T, r in b_blas if r > 1]
        add("- **BLAS** with `MOE_USE_BLAS=ON` (Eigen's products in OpenBLAS, one thread), the forward is "
            + ("faster than with Eigen's own GEMM at " + ", ".join(faster) if faster else
               "not faster than with Eigen's own GEMM at any measured T")
            + " (Eigen time / OpenBLAS time in parentheses). The library's expert products go through "
            "moe::kernels::gemm, so this compares the two ways that function's Eigen products can run.")
    add("")


def make_plots(docs, compare, tokens, moe_s, torch_s):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    made = []
    if compare:
        routers = [r["router"] for r in compare[min(compare)]["results"]]
        fig, ax = plt.subplots(figsize=(8, 5))
        markers = "os^vD<>pX*h"
        Ts = sorted(compare)
        for i, name in enumerate(routers):
            ys = [next((r["tokens_per_s"] for r in compare[T]["results"] if r["router"] == name), float("nan"))
                  for T in Ts]
            ax.plot(Ts, ys, marker=markers[i % len(markers)], label=name)
        w = compare[Ts[0]]["workload"]
        ax.set(xscale="log", yscale="log", xlabel="tokens per forward (T)", ylabel="tokens/s (wall clock)",
               title=f"moe-compare: every router policy (d {w['d_model']}, ff {w['d_ff']}, "
                     f"{w['experts']} experts, top-{w['top_k']}, 1 thread)")
        ax.set_xticks(Ts, [str(T) for T in Ts])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        plain_log_y(ax)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        fig.tight_layout()
        fig.savefig(os.path.join(docs, "perf", "routers_tokens_per_s.png"), dpi=110)
        plt.close(fig)
        made.append("routers_tokens_per_s.png")

    if any(v for v in moe_s.values()):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
        for ax, s in zip(axes, SHAPES):
            Ts = [T for T in tokens if moe_s.get((s, T))]
            ax.plot(Ts, [T / moe_s[(s, T)] for T in Ts], marker="o", label="moe (C++)")
            Tp = [T for T in tokens if torch_s.get((s, T))]
            if Tp:
                ax.plot(Tp, [T / torch_s[(s, T)] for T in Tp], marker="s", label="PyTorch, transformers loop")
            style_tokens_axes(ax, Ts, s)
        axes[0].set_ylabel("tokens/s (CPU time, 1 thread)")
        fig.suptitle("MoE forward against the PyTorch peer")
        fig.tight_layout()
        fig.savefig(os.path.join(docs, "perf", "peer_vs_moe.png"), dpi=110)
        plt.close(fig)
        made.append("peer_vs_moe.png")
    return made


def style_tokens_axes(ax, Ts, title):
    """Log-log axes over the token counts Ts, labelled, gridded, with a legend."""
    import matplotlib.ticker
    ax.set(xscale="log", yscale="log", xlabel="tokens per forward (T)", title=title)
    ax.set_xticks(Ts, [str(T) for T in Ts])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    plain_log_y(ax)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def products_plot(docs, prod):
    """GFLOP/s of the expert products against T for each kernel, with the FMA peak."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    peak = prod["context"]["fma_peak_gflops"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
    for ax, s in zip(axes, SHAPES):
        rs = sorted((r for r in prod["products"] if r["shape"] == s), key=lambda r: r["tokens"])
        if not rs:
            continue
        Ts = [r["tokens"] for r in rs]
        for key, label, marker in (("packed_s", "packed float", "o"), ("bf16_s", "packed bf16", "^"),
                                   ("gemm_s", "kernels::gemm (before)", "s"), ("openblas_s", "OpenBLAS sgemm", "x")):
            pts = [(r["tokens"], r["flops"] / r[key] * 1e-9) for r in rs if r.get(key)]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=label)
        ax.axhline(peak, color="gray", linestyle="--", linewidth=1, label=f"float FMA peak ({peak:.0f})")
        style_tokens_axes(ax, Ts, s)
    axes[0].set_ylabel("GFLOP/s of the expert products (1 thread)")
    fig.suptitle(f"Expert products: {prod['context']['packed_float']}, {prod['context']['packed_bf16']}")
    fig.tight_layout()
    fig.savefig(os.path.join(docs, "perf", "products_gflops.png"), dpi=110)
    plt.close(fig)
    return True


def quant_plot(docs, quant):
    """Tokens per second of the experts' products against T for each weight type."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
    for ax, s in zip(axes, SHAPES):
        Ts = sorted({T for (sh, T, _) in (k for k in quant if k is not None) if sh == s})
        if not Ts:
            continue
        for typ, marker in zip(QUANT_TYPES, "os^vD"):
            pts = [(T, T / quant[(s, T, typ)]["s"]) for T in Ts if (s, T, typ) in quant]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=typ)
        style_tokens_axes(ax, Ts, s)
    axes[0].set_ylabel("tokens/s of the expert products (1 thread)")
    ctx = quant[None].get("context", {})
    fig.suptitle(f"Expert products by weight type ({ctx.get('quant_path', '?')}; weights read from memory)")
    fig.tight_layout()
    fig.savefig(os.path.join(docs, "perf", "quant_tokens_per_s.png"), dpi=110)
    plt.close(fig)
    return True


def write_page(args, machine, rows, moe_s, ideal_s, a_median, torch_s, dec, peer, compare, bwd, bwd_T, plots, tokens,
               thread_t, blas_s, blas_ideal, blas_doc):
    L = []
    add = L.append
    add("# Performance")
    add("")
    add("<!-- Generated by scripts/perf_report.py from build/perf/*.json (scripts/bench_all.sh); "
        "edit those scripts, not this page. -->")
    add("")
    add("The ratios of issue #5, each measured within one run of `scripts/bench_all.sh`, which builds "
        "the `release` preset's benchmarks (and `moe_bench_forward` again on OpenBLAS), runs them one after "
        "the other on one thread (ratio d: on pools of 1 to n threads), runs the "
        "PyTorch peer, and regenerates this page and its plots:")
    add("")
    add("```sh")
    add("apt-get install -y python3-torch python3-matplotlib   # only for the peer and the plots")
    add("scripts/bench_all.sh")
    add("```")
    add("")
    dirty = machine.get("dirty") or []
    add("| | |")
    add("|---|---|")
    add(f"| machine | {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
        f"{machine.get('mem_total_kb', 0) / 2**20:.0f} GiB |")
    add(f"| compiler | {machine.get('compiler', '?')}, `-O3 -march=native` (release preset) |")
    arch = ((load(os.path.join(args.perf, 'forward.json')) or {}).get("context", {}))
    if arch.get("moe_kernel_arch"):
        add(f"| kernels | `{arch['moe_kernel_arch']}`; Eigen `{arch.get('eigen_simd', '?')}` |")
    add(f"| date | {machine.get('date', '?')} |")
    add(f"| commit | `{machine.get('commit', '?')}`"
        + (f" with {len(dirty)} uncommitted files under include/, bench/, examples/ in the working tree"
           if dirty else "") + " |")
    add(f"| load average | {machine.get('load_before', '?')} before, {machine.get('load_after', '?')} after "
        f"(1, 5, 15 min), on {machine.get('cores', '?')} cores |")
    add(f"| run time | {machine.get('seconds', '?')} s of measurement |")
    if peer:
        blas = peer["context"].get("blas")
        blas = blas if isinstance(blas, dict) else {}
        libs = [os.path.basename(x) for x in blas.get("libraries", [])]
        core = f", kernel `{blas['openblas_core']}`" if blas.get("openblas_core") else ""
        add(f"| peer | PyTorch {peer['context']['torch']} (Debian python3-torch) on "
            f"{', '.join(f'`{x}`' for x in libs) or 'an unknown BLAS'}{core}, "
            f"{peer['context']['threads']} thread, best of {peer['context']['reps']} after a warm-up |")
    add("")
    add("All times but d's are CPU time of the measuring thread (another process taking the core does not "
        "count; d's are wall time, since the pool's workers do the work), best repetition: on a shared machine load only ever adds time. The machine was "
        "shared with other engineers' compilers (see the load average), so treat differences of "
        "a few percent as noise.")
    add("")
    add("## Ratios against the goals")
    add("")
    add("| | ratio | shape | T | goal | measured | |")
    add("|---|---|---|---:|---|---:|---|")
    for rid, what, shape, T, goal_text, goal, value, larger in rows:
        if rid == "d" and value is None and T is None:
            add("| d | threads | — | — | — | not measured in this run (no threads.json) | — |")
            continue
        add(f"| {rid} | {what} | {shape} | {T} | {goal_text} | {fmt(value, 3 if rid in 'ac' else 2)} | "
            f"{verdict(value, goal, larger)} |")
    missing = [n for n, d in (("forward.json", moe_s and any(moe_s.values())), ("torch.json", torch_s),
                              ("decode.json", dec), ("backward.json", bwd), ("threads.json", thread_t),
                              ("forward-blas.json", any(blas_s.values()))) if not d]
    if missing:
        add("")
        add("Left out (no results in build/perf): " + ", ".join(missing) + ".")
    add("")
    add("- **a** `moe_bench_forward`: `layer.forward` against the same expert GEMMs on rows already "
        "grouped by expert (bench/README.md). The issue sets its goal at T ≥ 512; smaller T are shown "
        "for information.")
    add("- **b** `bench/peers/torch_moe.py`: transformers' eager MoE block (router, float softmax, "
        "top-k, renormalise for Mixtral, one-hot mask, loop over the experts that received tokens "
        "with `torch.where` gather and `index_add_`) against `moe_bench_forward`'s MoE time at the "
        "same shape and T, both on one thread. Goal ≥ 2 at every T, ≥ 4 at T ≤ 32 and at every T "
        "of the 64-expert shape.")
    add("- **c** `moe_bench_decode`: T = 1 forward latency against the time to stream the k selected "
        "experts' weights (k · 3 · d · ff · 4 bytes) and the router's (E · d · 4) at the STREAM-triad "
        "bandwidth measured in the same run.")
    add("- **d** `moe_bench_threads`: forward at T = 2048 with a `ThreadPool` of 1 thread against n "
        "threads (`ForwardContext::pool`), wall time, every pool size in one run. Goal ≥ 1.8 for 2 "
        "threads; ≥ 12 for 16 threads on a 16-core machine (measured only where the machine has them).")
    add("- **e** `moe_bench_backward`: a training step (forward in training mode, then backward) "
        "against the training forward alone.")
    add("")

    reading(add, rows, moe_s, ideal_s, a_median, torch_s, dec, peer, thread_t, blas_s)
    products_section(add, load(os.path.join(args.perf, "products.json")), dec, torch_s)
    quant_section(add, quant_rows(load(os.path.join(args.perf, "quant.json"))), machine, args.perf,
                  "quant_tokens_per_s.png" in plots)

    add("## Times")
    add("")
    add("Forward, one thread, CPU time of the best repetition, in ms:")
    add("")
    add("| shape | T | moe | ideal | moe / ideal, medians | PyTorch | moe tokens/s | PyTorch tokens/s |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|")
    for s in SHAPES:
        for T in tokens:
            m, i, p = moe_s.get((s, T)), ideal_s.get((s, T)), torch_s.get((s, T))
            add(f"| {s} | {T} | {fmt(m and m * 1e3)} | {fmt(i and i * 1e3)} | {fmt(a_median[(s, T)], 3)} | "
                f"{fmt(p and p * 1e3)} | "
                f"{fmt(m and T / m, 0)} | {fmt(p and T / p, 0)} |")
    add("")
    if dec:
        tr = dec["triad"]
        add(f"Decode: STREAM triad {tr['gb_per_s']:.1f} GB/s (CPU time; {tr['gb_per_s_wall']:.1f} GB/s wall), "
            f"{dec['context']['triad_mib_per_array']} MiB per array, best of {dec['context']['triad_reps']} passes; "
            f"{dec['context']['reps']} forwards per shape and T over 64 different tokens; the row is the call "
            f"with the best ratio, weights read = the distinct experts its tokens selected (k at T = 1) "
            f"and the router. T = 4 and 16 run the decode path (row-wise kernel, each selected expert's "
            f"weights read once for all its tokens).")
        add("")
        add("| shape | weights | T | weights read (MB) | latency (us) | median (us) | bound (us) | ratio |")
        add("|---|---|---:|---:|---:|---:|---:|---:|")
        for r in sorted(dec["decode"], key=lambda r: (r["shape"], r.get("weights", "float"), r.get("tokens", 1))):
            add(f"| {r['shape']} | {r.get('weights', 'float')} | {r.get('tokens', 1)} | {r['weight_bytes'] / 1e6:.1f} | "
                f"{r['latency_s'] * 1e6:.0f} | "
                f"{r['median_latency_s'] * 1e6:.0f} | {r['bound_s'] * 1e6:.0f} | {r['ratio']:.3f} |")
        add("")
    if any(blas_s.values()):
        ctx = (blas_doc or {}).get("context", {})
        add("Forward with Eigen's own GEMM (the default build) and with Eigen on OpenBLAS "
            "(`MOE_USE_BLAS=ON`, `OPENBLAS_NUM_THREADS=1`), the same benchmark in the same run of "
            "bench_all.sh; one thread, CPU time of the best repetition, in ms"
            + (f" (BLAS build: {ctx['blas']})" if ctx.get("blas") else "") + ":")
        add("")
        add("| shape | T | Eigen | OpenBLAS | Eigen / OpenBLAS | a, Eigen | a, OpenBLAS | "
            "b, Eigen | b, OpenBLAS | tokens/s, Eigen | tokens/s, OpenBLAS |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for s in SHAPES:
            for T in tokens:
                m, b, p = moe_s.get((s, T)), blas_s.get((s, T)), torch_s.get((s, T))
                add(f"| {s} | {T} | {fmt(m and m * 1e3)} | {fmt(b and b * 1e3)} | {fmt(div(m, b))} | "
                    f"{fmt(div(m, ideal_s.get((s, T))), 3)} | {fmt(div(b, blas_ideal.get((s, T))), 3)} | "
                    f"{fmt(div(p, m))} | {fmt(div(p, b))} | {fmt(m and T / m, 0)} | {fmt(b and T / b, 0)} |")
        add("")
    if thread_t:
        add("Threads: forward at T = 2048, wall time of the best repetition, in ms (d = time(1) / time(n)):")
        add("")
        add("| shape | T | threads | ms | d |")
        add("|---|---:|---:|---:|---:|")
        for (s, T, n) in sorted(thread_t):
            t = thread_t[(s, T, n)]
            add(f"| {s} | {T} | {n} | {fmt(t * 1e3)} | {fmt(div(thread_t.get((s, T, 1)), t))} |")
        add("")
    if bwd:
        add("Training step, CPU time of the best repetition, in ms:")
        add("")
        add("| shape | T | forward | forward + backward | ratio |")
        add("|---|---:|---:|---:|---:|")
        for s in SHAPES:
            for T in bwd_T:
                f, fb = bwd.get(f"forward/{s}/{T}"), bwd.get(f"forward_backward/{s}/{T}")
                add(f"| {s} | {T} | {fmt(f and f * 1e3)} | {fmt(fb and fb * 1e3)} | "
                    f"{fmt(f and fb and fb / f)} |")
        add("")

    add("## Plots")
    add("")
    if "peer_vs_moe.png" in plots:
        add("Tokens per second against T, the C++ layer and the PyTorch peer, one thread "
            "(CPU time; the `moe` line is `moe_bench_forward`'s MoE forward):")
        add("")
        add("![moe against PyTorch](perf/peer_vs_moe.png)")
        add("")
    if "routers_tokens_per_s.png" in plots:
        w = compare[min(compare)]["workload"]
        add(f"Tokens per second against T for every router policy of `moe-compare` (d {w['d_model']}, "
            f"ff {w['d_ff']}, {w['experts']} SwiGLU experts, top-{w['top_k']}, clustered inputs; at least "
            f"4096 tokens timed per point after a warm-up, wall clock, so load on the machine shows up here "
            f"and not in the tables above). Expert rows per token is the compute: top-p and threshold "
            f"skipping run fewer than k experts per token:")
        add("")
        add("![tokens/s per router](perf/routers_tokens_per_s.png)")
        add("")
        Ts = sorted(compare)
        add("| router | " + " | ".join(f"T = {T}" for T in Ts) + " | expert rows per token |")
        add("|---|" + "---:|" * (len(Ts) + 1))
        for r0 in compare[Ts[0]]["results"]:
            name = r0["router"]
            vals = [next((r["tokens_per_s"] for r in compare[T]["results"] if r["router"] == name), None)
                    for T in Ts]
            add(f"| {name} | " + " | ".join(fmt(v, 0) for v in vals)
                + f" | {compare[Ts[-1]]['results'][[r['router'] for r in compare[Ts[-1]]['results']].index(name)]['expert_rows_per_token']:.2f} |")
        add("")

    add("## Reproducing")
    add("")
    add("`scripts/bench_all.sh` (environment: `REPS`, `PEER_REPS`, `PEER_BLAS=system`, `JOBS`, "
        "`SKIP_BUILD=1`; its header says what each does) writes "
        "`build/perf/*.json` and the console output beside them (`forward.txt`, `backward.txt`, "
        "`decode.txt`, `quant.txt`, `ggml.jsonl`); `/usr/bin/python3 scripts/perf_report.py build/perf` regenerates this page "
        "from them. bench/README.md and docs/benchmarks.md describe the C++ benchmarks, "
        "bench/peers/README.md the peer. None of this runs in CI: on shared machines timings are "
        "too noisy to gate on.")
    add("")
    path = os.path.join(args.docs, "PERFORMANCE.md")
    with open(path, "w") as f:
        f.write("\n".join(L))
    print(f"perf_report: wrote {path} and {', '.join(os.path.join(args.docs, 'perf', p) for p in plots)}",
          file=sys.stderr)


if __name__ == "__main__":
    main()

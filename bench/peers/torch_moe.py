#!/usr/bin/python3
"""The Hugging Face transformers sparse MoE block, in plain PyTorch, timed at the shapes of
moe_bench_forward (bench/peers/README.md).

    /usr/bin/python3 bench/peers/torch_moe.py [--threads 1] [--reps 5] [--json FILE]

The block is written from the algorithm of transformers' MixtralSparseMoeBlock and
OlmoeSparseMoeBlock (the eager loop, not a fused kernel):

    logits  = gate(x)                                   # Linear(d, E), no bias
    p       = softmax(logits, dim=1, dtype=float32)
    w, sel  = topk(p, k)
    w      /= w.sum(-1, keepdim=True)                   # Mixtral only (OLMoE: norm_topk_prob False)
    mask    = one_hot(sel, E).permute(2, 1, 0)          # [E, k, T]
    for every expert e that received a token:           # transformers' expert_hit loop
        slot, tok = torch.where(mask[e])
        h = down(silu(gate_e(x[tok])) * up_e(x[tok])) * w[tok, slot, None]
        out.index_add_(0, tok, h)

float32, torch.inference_mode(), torch.set_num_threads(--threads). Each (shape, T) gets one
warm-up call, then --reps timed calls; the JSON keeps the best CPU time of this thread (the
other benchmarks report CPU time, which a process sharing the core does not inflate) and the
best wall time. Needs Debian's python3-torch (only this script does).
"""

import argparse
import ctypes
import json
import os
import platform
import re
import sys
import time

import torch
import torch.nn.functional as F

# The shapes of moe_bench_forward's default run (bench/README.md).
SHAPES = [
    {"name": "mixtral-scaled", "d": 1024, "ff": 2816, "experts": 8, "top_k": 2, "renormalize": True},
    {"name": "olmoe-scaled", "d": 1024, "ff": 512, "experts": 64, "top_k": 8, "renormalize": False},
]
TOKENS = [1, 32, 512, 2048]


class SwiGLUExpert(torch.nn.Module):
    """transformers' MixtralBlockSparseTop2MLP / OlmoeMLP: w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, d, ff):
        super().__init__()
        self.w1 = torch.nn.Linear(d, ff, bias=False)  # gate_proj
        self.w3 = torch.nn.Linear(d, ff, bias=False)  # up_proj
        self.w2 = torch.nn.Linear(ff, d, bias=False)  # down_proj

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SparseMoeBlock(torch.nn.Module):
    def __init__(self, d, ff, experts, top_k, renormalize):
        super().__init__()
        self.num_experts = experts
        self.top_k = top_k
        self.renormalize = renormalize
        self.gate = torch.nn.Linear(d, experts, bias=False)
        self.experts = torch.nn.ModuleList(SwiGLUExpert(d, ff) for _ in range(experts))

    def forward(self, x):
        tokens, d = x.shape
        router_logits = self.gate(x)
        routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        routing_weights, selected = torch.topk(routing_weights, self.top_k, dim=-1)
        if self.renormalize:
            routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
        routing_weights = routing_weights.to(x.dtype)
        out = torch.zeros((tokens, d), dtype=x.dtype, device=x.device)
        expert_mask = F.one_hot(selected, num_classes=self.num_experts).permute(2, 1, 0)
        # Only the experts that received a token, as transformers does since 4.48 (and as the
        # C++ layer skips empty experts).
        expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
        for expert_idx in expert_hit:
            e = int(expert_idx)
            slot, top_x = torch.where(expert_mask[e])
            current_state = x[None, top_x].reshape(-1, d)
            current_hidden = self.experts[e](current_state) * routing_weights[top_x, slot, None]
            out.index_add_(0, top_x, current_hidden.to(x.dtype))
        return out, router_logits


def init_(block, d, ff):
    """N(0, 1/fan_in) as in moe_bench_forward: gate, up and router 1/d, down 1/ff."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        block.gate.weight.normal_(0.0, d ** -0.5, generator=gen)
        for ex in block.experts:
            ex.w1.weight.normal_(0.0, d ** -0.5, generator=gen)
            ex.w3.weight.normal_(0.0, d ** -0.5, generator=gen)
            ex.w2.weight.normal_(0.0, ff ** -0.5, generator=gen)


def dense_reference(block, x):
    """Every expert on every token, weighted by the top-k gates (zero elsewhere): the same
    function computed without the gather / index_add_ bookkeeping, to check the loop."""
    logits = x @ block.gate.weight.T
    p = torch.softmax(logits.double(), dim=1)
    w, sel = torch.topk(p, block.top_k, dim=-1)
    if block.renormalize:
        w = w / w.sum(-1, keepdim=True)
    gates = torch.zeros_like(p).scatter_(1, sel, w)
    out = torch.zeros_like(x, dtype=torch.double)
    xd = x.double()
    for e, ex in enumerate(block.experts):
        h = F.silu(xd @ ex.w1.weight.double().T) * (xd @ ex.w3.weight.double().T)
        out += gates[:, e:e + 1] * (h @ ex.w2.weight.double().T)
    return out


def time_block(block, x, reps):
    block(x)  # warm-up: allocator, one-time dispatch
    best_cpu, best_wall, cpu_samples = float("inf"), float("inf"), []
    for _ in range(reps):
        c0, w0 = time.thread_time(), time.perf_counter()
        block(x)
        c1, w1 = time.thread_time(), time.perf_counter()
        best_cpu, best_wall = min(best_cpu, c1 - c0), min(best_wall, w1 - w0)
        cpu_samples.append(c1 - c0)
    cpu_samples.sort()
    return best_cpu, best_wall, cpu_samples[len(cpu_samples) // 2]


def blas_in_use():
    """The BLAS library this process actually mapped (torch's "generic" BLAS is whatever
    libblas.so.3 resolves to: Debian's reference BLAS unless OpenBLAS is picked), and
    OpenBLAS's kernel name where it is OpenBLAS."""
    libs = sorted({line.split()[-1] for line in open("/proc/self/maps")
                   if re.search(r"/lib(open)?blas[^/]*\.so", line)})
    info = {"libraries": libs}
    for path in libs:
        if "openblas" in path:
            try:
                lib = ctypes.CDLL(path)
                lib.openblas_get_corename.restype = ctypes.c_char_p
                lib.openblas_get_config.restype = ctypes.c_char_p
                info["openblas_core"] = lib.openblas_get_corename().decode()
                info["openblas_config"] = lib.openblas_get_config().decode()
            except (OSError, AttributeError):
                pass
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5, help="timed calls per (shape, T) after one warm-up")
    ap.add_argument("--tokens", type=str, default=",".join(map(str, TOKENS)))
    ap.add_argument("--shapes", type=str, default=",".join(s["name"] for s in SHAPES))
    ap.add_argument("--json", type=str, default=None, help="write the results here (default: stdout)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    tokens = [int(t) for t in args.tokens.split(",") if t]
    wanted = set(args.shapes.split(","))

    results = []
    with torch.inference_mode():
        for s in SHAPES:
            if s["name"] not in wanted:
                continue
            block = SparseMoeBlock(s["d"], s["ff"], s["experts"], s["top_k"], s["renormalize"]).eval()
            init_(block, s["d"], s["ff"])
            # The loop must compute the MoE, or its time means nothing.
            xc = torch.randn(16, s["d"], generator=torch.Generator().manual_seed(7))
            err = (block(xc)[0].double() - dense_reference(block, xc)).abs().max().item()
            if not err < 1e-4:
                sys.exit(f"torch_moe: {s['name']}: the loop differs from the dense reference by {err}")
            for T in tokens:
                x = torch.randn(T, s["d"], generator=torch.Generator().manual_seed(100 + T))
                cpu, wall, median = time_block(block, x, args.reps)
                results.append({"shape": s["name"], "tokens": T, "cpu_s": cpu, "wall_s": wall,
                                "median_cpu_s": median, "tokens_per_s": T / cpu})
                print(f"{s['name']:16s} T={T:5d}  {cpu * 1e3:10.2f} ms CPU  {wall * 1e3:10.2f} ms wall  "
                      f"{T / cpu:10.0f} tokens/s", file=sys.stderr)

    out = {
        "context": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "reps": args.reps,
            "blas": blas_in_use(),
            "torch_config": torch.__config__.show(),
            "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                  "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "LD_LIBRARY_PATH")
                    if k in os.environ},
        },
        "results": results,
    }
    text = json.dumps(out, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()

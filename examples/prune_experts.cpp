// prune_experts: measure how a layer uses its experts on calibration data, remove half of
// them, and report what that saves and costs (docs/pruning.md).
//
// The steps (include/moe/deploy/prune.hpp):
//   calibrate(layer, batch, usage, ws)       per calibration batch: per expert its tokens
//                                            (frequency), their gate sum (gate mass) and the
//                                            REAP saliency, mean gate * ||expert output||
//   select_by_usage(usage, n, criterion)     the n experts with the largest measure
//   select_by_reconstruction(layer, x, n, m) NAEE: every n-subset (at most m), the one whose
//                                            output is closest to the full layer's on x
//   prune_experts(layer, kept)               the same layer type with only those experts
//
// The layer is Mixtral-like (SwiGLU experts, softmax top-2 renormalised). Inputs carry a
// constant feature on which the router scores experts 5, 6 and 7 low, so they are rarely
// chosen; expert 2 is chosen often but its output is small (its down projection scaled by
// 0.1), which frequency cannot see and saliency can. REAP's saliency is a mean over the
// tokens an expert receives, so it ranks the rarely chosen experts by what they add when
// chosen, not by how often: the held-out error shows what each choice costs on this data.
//
//   ./prune_experts
#include <moe/deploy/prune.hpp>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "example_util.hpp"

namespace {

using S = double;  // double: the printed digits do not depend on the SIMD width
constexpr moe::Index E = 8, d = 16, ff = 32, k = 2, keep = 4, batch = 256;

/// T tokens of N(0, 1) features with column 0 the constant 1.
moe::RowMatrix<S> tokens(moe::Index T, std::uint64_t seed) {
  moe::RowMatrix<S> x(T, d);
  moe::examples::fill_normal(x, seed, 1.0);
  x.col(0).setConstant(1.0);
  return x;
}

std::string list(const std::vector<moe::Index>& kept) {
  std::string s;
  for (const moe::Index e : kept) s += std::to_string(e) + " ";
  return s;
}

/// ||a - b||_F / ||b||_F.
double relative_error(const moe::RowMatrix<S>& a, const moe::RowMatrix<S>& b) { return (a - b).norm() / b.norm(); }

}  // namespace

int main() {
  moe::SwiGLUExperts<S> experts(E, d, ff);
  moe::examples::fill_normal(experts.gate_up(), 1, 1.0 / std::sqrt(double(d)));
  moe::examples::fill_normal(experts.down(), 2, 1.0 / std::sqrt(double(ff)));
  experts.down_proj(2) *= 0.1;
  moe::RowMatrix<S> gate(E, d);
  moe::examples::fill_normal(gate, 3, 0.5);
  gate(5, 0) = -2.0;  // rarely chosen
  gate(6, 0) = -2.5;
  gate(7, 0) = -3.0;
  const moe::MixtralMoE<S> layer(std::move(experts), moe::SoftmaxTopKRouter<S>(gate, k, moe::SoftmaxTopK<S>{true}));

  // Calibrate on two batches; usage accumulates.
  const moe::RowMatrix<S> calib1 = tokens(batch, 10), calib2 = tokens(batch, 11);
  moe::ExpertUsage usage;
  moe::Workspace<S> ws;
  (void)moe::calibrate(layer, calib1, usage, ws);
  (void)moe::calibrate(layer, calib2, usage, ws);
  std::printf("Mixtral-like layer: %ld experts (d %ld, ff %ld), top-%ld; calibration: %ld batches, %ld tokens\n",
              long(E), long(d), long(ff), long(k), long(usage.batches), long(usage.tokens_seen));
  std::printf("expert | tokens | share of assignments | gate mass | REAP saliency\n");
  moe::Index assignments = 0;
  for (const moe::Index f : usage.frequency) assignments += f;
  for (moe::Index e = 0; e < E; ++e) {
    const auto u = static_cast<std::size_t>(e);
    std::printf("%6ld | %6ld | %19.1f%% | %9.1f | %13.3f\n", long(e), long(usage.frequency[u]),
                100.0 * double(usage.frequency[u]) / double(assignments), usage.gate_mass[u], usage.saliency(e));
  }

  // Held-out batch: the full layer's output is the reference.
  const moe::RowMatrix<S> held_out = tokens(batch, 20);
  const moe::RowMatrix<S> y = layer.forward(held_out, ws);
  const moe::Index params = moe::parameter_count(layer);
  const std::string title = "keep " + std::to_string(keep) + " of " + std::to_string(E) + " experts";
  std::printf("\n%-25s | kept      | parameters | bytes  | held-out relative error\n", title.c_str());
  std::printf("%-25s | %-9s | %10ld | %6ld | %s\n", "all (unpruned)", "0-7", long(params),
              long(params * moe::Index(sizeof(S))), "0");
  const auto report = [&](const char* name, const std::vector<moe::Index>& kept) {
    const moe::MixtralMoE<S> pruned = moe::prune_experts(layer, kept);
    const moe::Index n = moe::parameter_count(pruned);
    std::printf("%-25s | %-9s | %10ld | %6ld | %.3g\n", name, list(kept).c_str(), long(n),
                long(n * moe::Index(sizeof(S))), relative_error(pruned.forward(held_out, ws), y));
  };
  report("by frequency", moe::select_by_usage(usage, keep, moe::PruneCriterion::frequency));
  report("by gate mass", moe::select_by_usage(usage, keep, moe::PruneCriterion::gate_mass));
  report("by REAP saliency", moe::select_by_usage(usage, keep, moe::PruneCriterion::saliency));

  // NAEE: every 4-subset of 8 (C(8, 4) = 70), each pruned layer run on the calibration batch.
  const moe::ReconstructionChoice choice = moe::select_by_reconstruction(layer, calib1, keep, /*max_subsets=*/100);
  report("by reconstruction (NAEE)", choice.kept);
  std::printf("reconstruction: %ld subsets tried; best calibration error %.3g (sum of squares), relative %.3g\n",
              long(choice.subsets_tried), choice.loss, std::sqrt(choice.loss) / layer.forward(calib1, ws).norm());
  return 0;
}

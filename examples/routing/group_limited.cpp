// routing_group_limited: sigmoid scores, group-limited top-k, scaled gates (DeepSeek-V3).
//
// The rule (moe::GroupLimitedRouter = TopKRouter<SigmoidGroupLimited>, moe::DeepSeekV3MoE):
//   s      = sigmoid(x Wg^T)                          one independent score per expert
//   b      = s + correction_bias                      the bias steers selection only
//   the E experts form n_group groups; a group scores the sum of its 2 best b, and only the
//   topk_group best groups stay: every expert of another group is out of the running
//   chosen = the k largest b among the experts left; equal b: the lower expert index
//   gates  = routed_scaling_factor * s_chosen / sum(s_chosen)   (unbiased s, renormalised)
// So each token's gates sum to routed_scaling_factor, not to 1. DeepSeek-V3 itself has 256
// experts in 8 groups, keeps 4 groups, takes 8 experts and scales by 2.5; here 8 experts in
// 4 groups of 2, 2 groups kept, top-2. The shared expert adds its output for every token,
// outside the routing.
//
//   ./routing_group_limited
#include <moe/moe.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

#include "../example_util.hpp"

int main() {
  using S = double;  // double: the printed digits do not depend on the SIMD width
  constexpr moe::Index T = 8, E = 8, d = 8, ff = 16, k = 2;

  moe::SigmoidGroupLimited<S> gating;
  gating.n_group = 4;
  gating.topk_group = 2;
  gating.routed_scaling_factor = 2.5;
  gating.renormalize = true;
  moe::RowMatrix<S> bias(1, E);
  moe::examples::fill_normal(bias, 5, 0.2);
  gating.correction_bias = bias.row(0).transpose();
  moe::RowMatrix<S> weight(E, d);
  moe::examples::fill_normal(weight, 3, 0.5);
  moe::GroupLimitedRouter<S> router(weight, k, gating);

  moe::SwiGLUExperts<S> experts(E, d, ff), shared(1, d, ff);
  moe::examples::fill_normal(experts.gate_up(), 1, 1.0 / std::sqrt(double(d)));
  moe::examples::fill_normal(experts.down(), 2, 1.0 / std::sqrt(double(ff)));
  moe::examples::fill_normal(shared.gate_up(), 6, 1.0 / std::sqrt(double(d)));
  moe::examples::fill_normal(shared.down(), 7, 1.0 / std::sqrt(double(ff)));
  using Combiner = moe::SharedExpertCombiner<moe::SwiGLUExperts<S>, moe::SharedGate::none>;
  const moe::DeepSeekV3MoE<S> layer(std::move(experts), std::move(router), Combiner(std::move(shared)));

  moe::RowMatrix<S> x(T, d);
  moe::examples::fill_normal(x, 4, 1.0);
  moe::Workspace<S> ws;
  const moe::RowMatrix<S> y = layer.forward(x, ws);

  const moe::RoutingResult<S>& r = ws.routing;  // scores = s (sigmoid, before the bias)
  std::printf("group-limited routing (DeepSeek-V3): %ld tokens, %ld experts in %ld groups of %ld, keep %ld groups, "
              "top-%ld, scale %.1f\n",
              long(T), long(E), long(gating.n_group), long(E / gating.n_group), long(gating.topk_group), long(k),
              double(gating.routed_scaling_factor));
  std::printf("correction bias:");
  for (moe::Index e = 0; e < E; ++e) std::printf(" %6.3f", bias(0, e));
  std::printf("\n");
  const moe::Index group_size = E / gating.n_group;
  int limited = 0;
  for (moe::Index t = 0; t < T; ++t) {
    // The selection written out: biased scores, group scores, the kept groups.
    std::vector<double> b(E), group(std::size_t(gating.n_group));
    for (moe::Index e = 0; e < E; ++e) b[std::size_t(e)] = r.scores(t, e) + bias(0, e);
    for (moe::Index g = 0; g < gating.n_group; ++g) {
      double hi = b[std::size_t(g * group_size)], lo = b[std::size_t(g * group_size + 1)];
      if (lo > hi) std::swap(lo, hi);
      group[std::size_t(g)] = hi + lo;  // groups of 2: the sum of both
    }
    std::printf("token %ld\n  s      ", long(t));
    for (moe::Index e = 0; e < E; ++e) std::printf(" %6.3f", r.scores(t, e));
    std::printf("\n  s + b  ");
    for (moe::Index e = 0; e < E; ++e) std::printf(" %6.3f", b[std::size_t(e)]);
    // Kept: the topk_group = 2 best groups (equal scores: the lower group index).
    moe::Index g_best = 0, g_second = -1;
    for (moe::Index g = 1; g < gating.n_group; ++g)
      if (group[std::size_t(g)] > group[std::size_t(g_best)]) g_best = g;
    for (moe::Index g = 0; g < gating.n_group; ++g)
      if (g != g_best && (g_second < 0 || group[std::size_t(g)] > group[std::size_t(g_second)])) g_second = g;
    std::printf("\n  groups ");
    for (moe::Index g = 0; g < gating.n_group; ++g)
      std::printf("    %6.3f%s  ", group[std::size_t(g)], g == g_best || g == g_second ? "*" : " ");
    // The two best experts by s + b with no group limit, to show when the limit mattered.
    moe::Index best = 0, second = -1;
    for (moe::Index e = 1; e < E; ++e)
      if (b[std::size_t(e)] > b[std::size_t(best)]) best = e;
    for (moe::Index e = 0; e < E; ++e)
      if (e != best && (second < 0 || b[std::size_t(e)] > b[std::size_t(second)])) second = e;
    const moe::Index e0 = r.expert[std::size_t(t * k)], e1 = r.expert[std::size_t(t * k + 1)];
    const double g0 = r.gate[std::size_t(t * k)], g1 = r.gate[std::size_t(t * k + 1)];
    const bool changed = !((best == e0 && second == e1) || (best == e1 && second == e0));
    limited += changed;
    std::printf("(* kept)\n  chosen experts %ld %ld (groups %ld %ld), gates %.3f %.3f, sum %.3f\n", long(e0), long(e1),
                long(e0 / group_size), long(e1 / group_size), g0, g1, g0 + g1);
    if (changed)
      std::printf("  the group limit mattered: over all experts the top-2 of s + b is %ld %ld\n", long(best),
                  long(second));
  }
  std::printf("tokens whose choice the group limit changed: %d\n", limited);
  std::printf("per-expert load:");
  for (moe::Index e = 0; e < E; ++e) std::printf(" e%ld %ld", long(e), long(ws.stats.expert_load[std::size_t(e)]));
  std::printf("; dropped %ld of %ld (dropless)\n", long(ws.stats.dropped), long(ws.stats.assignments));
  std::printf("output [%ld x %ld] (routed experts + shared expert), finite: %s\n", long(y.rows()), long(y.cols()),
              y.allFinite() ? "yes" : "no");
  return 0;
}

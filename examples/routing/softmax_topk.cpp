// routing_softmax_topk: softmax, then top-k, then renormalise (Mixtral).
//
// The rule (moe::SoftmaxTopKRouter, moe::MixtralMoE):
//   p      = softmax(x Wg^T) over all E experts            (ws.routing.scores)
//   chosen = the k experts with the largest p; equal p: the lower expert index
//   gates  = the chosen p divided by their sum, so each token's gates sum to 1
//   y_t    = sum over the chosen experts of gate * expert_e(x_t)
// OLMoE and Qwen2-MoE with norm_topk_prob = false skip the division (SoftmaxTopK{false}):
// the gates are then the raw probabilities and sum to less than 1.
//
//   ./routing_softmax_topk
#include <moe/moe.hpp>

#include <cmath>
#include <cstdio>

#include "../example_util.hpp"

int main() {
  using S = double;  // double: the printed digits do not depend on the SIMD width
  constexpr moe::Index T = 8, E = 4, d = 8, ff = 16, k = 2;

  moe::SwiGLUExperts<S> experts(E, d, ff);
  moe::examples::fill_normal(experts.gate_up(), 1, 1.0 / std::sqrt(double(d)));
  moe::examples::fill_normal(experts.down(), 2, 1.0 / std::sqrt(double(ff)));
  moe::SoftmaxTopKRouter<S> router(E, d, k, moe::SoftmaxTopK<S>{.renormalize = true});
  moe::examples::fill_normal(router.weight(), 3, 0.5);
  const moe::MixtralMoE<S> layer(std::move(experts), std::move(router));

  moe::RowMatrix<S> x(T, d);
  moe::examples::fill_normal(x, 4, 1.0);
  moe::Workspace<S> ws;
  const moe::RowMatrix<S> y = layer.forward(x, ws);

  // k triples per token, best first: token t's are [t*k, t*k + k).
  const moe::RoutingResult<S>& r = ws.routing;
  std::printf("softmax top-%ld, renormalised (Mixtral): %ld tokens, %ld experts\n", long(k), long(T), long(E));
  std::printf("token | p = softmax(x Wg^T)         | top-%ld | p_a + p_b | gates = p / (p_a + p_b) | sum\n", long(k));
  for (moe::Index t = 0; t < T; ++t) {
    std::printf("%5ld |", long(t));
    for (moe::Index e = 0; e < E; ++e) std::printf(" %.3f ", r.scores(t, e));
    std::printf("|  ");
    double chosen = 0, sum = 0;
    for (moe::Index j = 0; j < k; ++j) {
      const moe::Index e = r.expert[std::size_t(t * k + j)];
      std::printf("%ld ", long(e));
      chosen += r.scores(t, e);
    }
    std::printf("  |   %.3f   |", chosen);
    for (moe::Index j = 0; j < k; ++j) {
      std::printf(" %.3f", r.gate[std::size_t(t * k + j)]);
      sum += r.gate[std::size_t(t * k + j)];
    }
    std::printf("             | %.3f\n", sum);
  }
  std::printf("per-expert load:");
  for (moe::Index e = 0; e < E; ++e) std::printf(" e%ld %ld", long(e), long(ws.stats.expert_load[std::size_t(e)]));
  std::printf("; dropped %ld of %ld (dropless)\n", long(ws.stats.dropped), long(ws.stats.assignments));
  std::printf("output [%ld x %ld], finite: %s\n", long(y.rows()), long(y.cols()), y.allFinite() ? "yes" : "no");
  return 0;
}

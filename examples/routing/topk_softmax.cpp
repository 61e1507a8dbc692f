// routing_topk_softmax: top-k of the logits, then softmax over those k (GPT-OSS).
//
// The rule (moe::TopKSoftmaxRouter, moe::GptOssMoE):
//   l      = x Wg^T + b  (the router has a learned logit bias b)   (ws.routing.logits)
//   chosen = the k experts with the largest l; equal l: the lower expert index
//   gates  = softmax over the k chosen logits only, so each token's gates sum to 1
// In exact arithmetic this picks the same experts with the same gates as softmax-then-top-k
// renormalised (exp(l_a) / (exp(l_a) + exp(l_b)) = p_a / (p_a + p_b)); what differs is that
// the other E - k logits never enter a softmax, so in training they get no gradient.
//
//   ./routing_topk_softmax
#include <moe/moe.hpp>

#include <cmath>
#include <cstdio>

#include "../example_util.hpp"

int main() {
  using S = double;  // double: the printed digits do not depend on the SIMD width
  constexpr moe::Index T = 8, E = 4, d = 8, ff = 16, k = 2;

  moe::GptOssExperts<S> experts(E, d, ff);
  moe::examples::fill_normal(experts.gate_up(), 1, 1.0 / std::sqrt(double(d)));
  moe::examples::fill_normal(experts.down(), 2, 1.0 / std::sqrt(double(ff)));
  moe::RowMatrix<S> weight(E, d), bias(1, E);
  moe::examples::fill_normal(weight, 3, 0.5);
  moe::examples::fill_normal(bias, 5, 0.5);
  moe::TopKSoftmaxRouter<S> router(weight, k, moe::TopKSoftmax<S>{}, bias.row(0).transpose());
  const moe::GptOssMoE<S> layer(std::move(experts), std::move(router));

  moe::RowMatrix<S> x(T, d);
  moe::examples::fill_normal(x, 4, 1.0);
  moe::Workspace<S> ws;
  const moe::RowMatrix<S> y = layer.forward(x, ws);

  const moe::RoutingResult<S>& r = ws.routing;
  std::printf("top-%ld then softmax (GPT-OSS): %ld tokens, %ld experts\n", long(k), long(T), long(E));
  std::printf("logit bias b:");
  for (moe::Index e = 0; e < E; ++e) std::printf(" %.3f", bias(0, e));
  std::printf("\ntoken | l = x Wg^T + b               | top-%ld | gates = softmax(l_a, l_b) | sum\n", long(k));
  for (moe::Index t = 0; t < T; ++t) {
    std::printf("%5ld |", long(t));
    for (moe::Index e = 0; e < E; ++e) std::printf(" %6.3f", r.logits(t, e));
    std::printf("  |  ");
    for (moe::Index j = 0; j < k; ++j) std::printf("%ld ", long(r.expert[std::size_t(t * k + j)]));
    std::printf("  |");
    double sum = 0;
    for (moe::Index j = 0; j < k; ++j) {
      std::printf(" %.3f", r.gate[std::size_t(t * k + j)]);
      sum += r.gate[std::size_t(t * k + j)];
    }
    std::printf("               | %.3f\n", sum);
  }
  std::printf("per-expert load:");
  for (moe::Index e = 0; e < E; ++e) std::printf(" e%ld %ld", long(e), long(ws.stats.expert_load[std::size_t(e)]));
  std::printf("; dropped %ld of %ld (dropless)\n", long(ws.stats.dropped), long(ws.stats.assignments));
  std::printf("output [%ld x %ld], finite: %s\n", long(y.rows()), long(y.cols()), y.allFinite() ? "yes" : "no");
  return 0;
}

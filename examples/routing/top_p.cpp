// routing_top_p: top-p routing, each token takes as many experts as it needs (Huang et al.
// 2024, "Harder Tasks Need More Experts: Dynamic Routing in MoE Models").
//
// The rule (moe::TopPRouter, moe::TopPMoE):
//   p      = softmax(x Wg^T) over all E experts                      (ws.routing.scores)
//   chosen = the fewest experts, largest p first, whose p sum to at least the threshold (the
//            one that crosses it included), at most k (= max_k, the cap)
//   gates  = the chosen p as they are: not renormalised, so a token's gates sum to >= the
//            threshold (or less, where the cap stopped it)
//   y_t    = sum over the chosen experts of gate * expert_e(x_t)
// A confident token (one large p) runs one expert, an uncertain one several: the result holds
// 1..k pairs per token, token-major (RoutingResult::k = 0), and ws.stats.experts_per_token
// counts them. moe::RoutingEntropyLoss, the paper's dynamic loss, is the mean entropy of p:
// training with it sharpens p, so tokens need fewer experts.
//
//   ./routing_top_p
#include <moe/moe.hpp>

#include <cmath>
#include <cstdio>

#include "../example_util.hpp"

namespace {

constexpr moe::Index T = 10, E = 6, d = 8, ff = 16, max_k = 4;
constexpr double threshold = 0.6;

moe::TopPMoE<double> make_layer(double router_scale) {
  moe::SwiGLUExperts<double> experts(E, d, ff);
  moe::examples::fill_normal(experts.gate_up(), 1, 1.0 / std::sqrt(double(d)));
  moe::examples::fill_normal(experts.down(), 2, 1.0 / std::sqrt(double(ff)));
  moe::TopPRouter<double> router(E, d, max_k, moe::TopP<double>{threshold});
  moe::examples::fill_normal(router.weight(), 3, router_scale);
  return moe::TopPMoE<double>(std::move(experts), std::move(router));
}

}  // namespace

int main() {
  using S = double;  // double: the printed digits do not depend on the SIMD width
  const moe::TopPMoE<S> layer = make_layer(0.5);
  moe::RowMatrix<S> x(T, d);
  moe::examples::fill_normal(x, 4, 1.0);
  moe::Workspace<S> ws;
  const moe::RowMatrix<S> y = layer.forward(x, ws);

  const moe::RoutingResult<S>& r = ws.routing;
  std::printf("top-p routing, threshold %.2f, at most %ld of %ld experts, %ld tokens\n", threshold, long(max_k), long(E),
              long(T));
  std::printf("token | p = softmax(x Wg^T)                     | chosen (largest p first) | gates = p, not renormalised | sum\n");
  moe::Index i = 0;  // the pairs are token-major: token t's are consecutive
  for (moe::Index t = 0; t < T; ++t) {
    std::printf("%5ld |", long(t));
    for (moe::Index e = 0; e < E; ++e) std::printf(" %.3f ", r.scores(t, e));
    std::printf("| ");
    const moe::Index begin = i;
    while (i < r.size() && r.token[std::size_t(i)] == t) ++i;
    for (moe::Index j = begin; j < begin + max_k; ++j)
      j < i ? std::printf("%ld ", long(r.expert[std::size_t(j)])) : std::printf("  ");
    std::printf("                | ");
    double sum = 0;
    for (moe::Index j = begin; j < begin + max_k; ++j) {
      if (j < i) {
        std::printf("%.3f ", r.gate[std::size_t(j)]);
        sum += r.gate[std::size_t(j)];
      } else {
        std::printf("      ");
      }
    }
    std::printf("   | %.3f\n", sum);
  }
  std::printf("experts per token:");
  for (moe::Index n = 1; n <= max_k; ++n)
    std::printf(" %ld: %ld tokens;", long(n), long(ws.stats.experts_per_token[std::size_t(n)]));
  std::printf(" mean %.2f\n", ws.stats.mean_experts_per_token());
  std::printf("expert rows run: %ld, against %ld for top-%ld (%.0f %% saved)\n", long(r.size()), long(T * max_k),
              long(max_k), 100.0 * (1.0 - double(r.size()) / double(T * max_k)));
  std::printf("routing entropy (RoutingEntropyLoss): %.3f (log E = %.3f)\n", moe::RoutingEntropyLoss{}(r),
              std::log(double(E)));

  // A sharper router (its weights x 4): lower entropy, fewer experts per token.
  const moe::TopPMoE<S> sharp = make_layer(2.0);
  moe::Workspace<S> ws_sharp;
  (void)sharp.forward(x, ws_sharp);
  std::printf("router weights x 4: routing entropy %.3f, mean experts per token %.2f\n",
              moe::RoutingEntropyLoss{}(ws_sharp.routing), ws_sharp.stats.mean_experts_per_token());
  std::printf("output [%ld x %ld], finite: %s\n", long(y.rows()), long(y.cols()), y.allFinite() ? "yes" : "no");
  return 0;
}

// routing_threshold_skip: top-k, then skip the experts that matter little (dynamic skipping,
// Lu et al. 2024, "Not All Experts are Equal").
//
// The rule (moe::ThresholdSkipRouter, moe::ThresholdSkipMoE):
//   p      = softmax(x Wg^T) over all E experts                      (ws.routing.scores)
//   top-k  = the k experts with the largest p; the first is the largest
//   chosen = the first, and every other top-k expert j with p_j >= beta * p_first
//   gates  = the chosen p divided by their sum, so each token's gates sum to 1 (a token that
//            keeps its first expert only has gate 1)
//   y_t    = sum over the chosen experts of gate * expert_e(x_t)
// beta = 0 keeps all k (softmax top-k, renormalised: Mixtral); beta = 1 keeps only the first
// (unless tied). The result holds 1..k pairs per token, token-major (RoutingResult::k = 0),
// and ws.stats.experts_per_token counts them.
//
//   ./routing_threshold_skip
#include <moe/moe.hpp>

#include <cmath>
#include <cstdio>

#include "../example_util.hpp"

namespace {

constexpr moe::Index T = 10, E = 6, d = 8, ff = 16, k = 3;

moe::ThresholdSkipMoE<double> make_layer(double beta) {
  moe::SwiGLUExperts<double> experts(E, d, ff);
  moe::examples::fill_normal(experts.gate_up(), 1, 1.0 / std::sqrt(double(d)));
  moe::examples::fill_normal(experts.down(), 2, 1.0 / std::sqrt(double(ff)));
  moe::ThresholdSkipRouter<double> router(E, d, k, moe::ThresholdSkip<double>{beta});
  moe::examples::fill_normal(router.weight(), 3, 0.7);
  return moe::ThresholdSkipMoE<double>(std::move(experts), std::move(router));
}

}  // namespace

int main() {
  using S = double;  // double: the printed digits do not depend on the SIMD width
  constexpr double beta = 0.5;
  const moe::ThresholdSkipMoE<S> layer = make_layer(beta);
  moe::RowMatrix<S> x(T, d);
  moe::examples::fill_normal(x, 4, 1.0);
  moe::Workspace<S> ws;
  const moe::RowMatrix<S> y = layer.forward(x, ws);

  const moe::RoutingResult<S>& r = ws.routing;
  std::printf("threshold skipping, top-%ld, beta %.2f, %ld experts, %ld tokens\n", long(k), beta, long(E), long(T));
  std::printf("token | p = softmax(x Wg^T)                     | top-%ld | p / p_first       | kept  | gates (sum 1)\n",
              long(k));
  moe::Index i = 0;  // the pairs are token-major: token t's are consecutive
  for (moe::Index t = 0; t < T; ++t) {
    const S* p = r.scores.data() + t * E;
    std::printf("%5ld |", long(t));
    for (moe::Index e = 0; e < E; ++e) std::printf(" %.3f ", p[e]);
    // The top k by p, ties to the lower index, as the rule takes them.
    moe::Index top[k];
    moe::kernels::top_k(p, E, k, top);
    std::printf("| ");
    for (const moe::Index e : top) std::printf("%ld ", long(e));
    std::printf(" | ");
    for (const moe::Index e : top) std::printf("%.3f ", p[e] / p[top[0]]);
    std::printf("| ");
    const moe::Index begin = i;
    while (i < r.size() && r.token[std::size_t(i)] == t) ++i;
    for (moe::Index j = begin; j < begin + k; ++j)
      j < i ? std::printf("%ld ", long(r.expert[std::size_t(j)])) : std::printf("  ");
    std::printf("| ");
    for (moe::Index j = begin; j < i; ++j) std::printf("%.3f ", r.gate[std::size_t(j)]);
    std::printf("\n");
  }
  std::printf("experts per token:");
  for (moe::Index n = 1; n <= k; ++n)
    std::printf(" %ld: %ld tokens;", long(n), long(ws.stats.experts_per_token[std::size_t(n)]));
  std::printf(" mean %.2f (top-%ld: %ld)\n", ws.stats.mean_experts_per_token(), long(k), long(k));
  std::printf("beta | mean experts per token\n");
  for (const double b : {0.0, 0.25, 0.5, 0.75, 1.0}) {
    moe::Workspace<S> w;
    (void)make_layer(b).forward(x, w);
    std::printf("%.2f | %.2f\n", b, w.stats.mean_experts_per_token());
  }
  std::printf("output [%ld x %ld], finite: %s\n", long(y.rows()), long(y.cols()), y.allFinite() ? "yes" : "no");
  return 0;
}

// routing_hierarchical: a primary router picks groups of experts, a router per group picks
// experts inside each kept group (hierarchical MoE, Shazeer et al. 2017).
//
// The rule (moe::HierarchicalRouter, moe::HierarchicalMoE), a groups of b experts:
//   Gp = softmax(x Wp^T) over the a groups, keep the top k1, renormalise   (primary)
//   Gi = softmax(x Wi^T) over group i's b experts, keep the top k2, renormalise
//   gate(i, j) = Gp_i * Gi_j for each kept pair; expert (i, j) is index i * b + j
//   y_t = sum over the k1 * k2 kept pairs of gate * expert(x_t)
// Each token's gates sum to 1 (both levels renormalised). Only the kept groups' routers decide
// anything, so with many experts a token scores a + k1 * b of them instead of a * b.
//
//   ./routing_hierarchical
#include <moe/moe.hpp>

#include <cmath>
#include <cstdio>

#include "../example_util.hpp"

int main() {
  using S = double;  // double: the printed digits do not depend on the SIMD width
  constexpr moe::Index T = 8, a = 3, b = 4, d = 8, ff = 16, k1 = 2, k2 = 2;

  moe::SwiGLUExperts<S> experts(a * b, d, ff);
  moe::examples::fill_normal(experts.gate_up(), 1, 1.0 / std::sqrt(double(d)));
  moe::examples::fill_normal(experts.down(), 2, 1.0 / std::sqrt(double(ff)));
  moe::HierarchicalRouter<S> router(a, b, d, k1, k2);
  moe::examples::fill_normal(router.primary(), 3, 0.5);
  moe::examples::fill_normal(router.groups(), 4, 0.5);
  const moe::HierarchicalMoE<S> layer(std::move(experts), std::move(router));

  moe::RowMatrix<S> x(T, d);
  moe::examples::fill_normal(x, 5, 1.0);
  moe::Workspace<S> ws;
  const moe::RowMatrix<S> y = layer.forward(x, ws);

  // The primary probabilities, for the table (the routing keeps the secondary logits).
  moe::RowMatrix<S> p(T, a);
  layer.router().primary_logits(x, p);
  for (moe::Index t = 0; t < T; ++t) p.row(t) = (p.row(t).array() - p.row(t).maxCoeff()).exp() / (p.row(t).array() - p.row(t).maxCoeff()).exp().sum();

  const moe::RoutingResult<S>& r = ws.routing;
  const moe::Index k = k1 * k2;
  std::printf("hierarchical: %ld groups of %ld experts, top-%ld groups x top-%ld experts = %ld pairs per token\n",
              long(a), long(b), long(k1), long(k2), long(k));
  std::printf("token | primary p over groups | kept pairs (group.expert: Gp * Gi = gate)                  | sum\n");
  for (moe::Index t = 0; t < T; ++t) {
    std::printf("%5ld |", long(t));
    for (moe::Index i = 0; i < a; ++i) std::printf(" %.3f ", p(t, i));
    std::printf(" |");
    double sum = 0;
    for (moe::Index n = t * k; n < t * k + k; ++n) {
      const moe::Index e = r.expert[std::size_t(n)], i = e / b, j = e % b;
      const double q = r.scores(t, e);  // group i's softmax for expert j
      double group_sum = 0;            // its kept experts' sum, for Gi's renormalisation
      for (moe::Index m = t * k; m < t * k + k; ++m)
        if (r.expert[std::size_t(m)] / b == i) group_sum += r.scores(t, r.expert[std::size_t(m)]);
      std::printf(" %ld.%ld: %.2f*%.2f=%.3f", long(i), long(j), r.gate[std::size_t(n)] / (q / group_sum), q / group_sum,
                  r.gate[std::size_t(n)]);
      sum += r.gate[std::size_t(n)];
    }
    std::printf(" | %.3f\n", sum);
  }
  std::printf("per-expert load:");
  for (moe::Index e = 0; e < a * b; ++e) std::printf(" %ld", long(ws.stats.expert_load[std::size_t(e)]));
  std::printf("\noutput [%ld x %ld], finite: %s\n", long(y.rows()), long(y.cols()), y.allFinite() ? "yes" : "no");
  return 0;
}

// routing_multi_head: each token is split into h sub-tokens that are routed on their own
// (multi-head MoE, MH-MoE, Wu et al. 2024).
//
// The rule (moe::MultiHeadLayer, moe::MultiHeadMoE), d = h * d/h:
//   x' = x Wh^T                                  (head_proj [d, d])
//   sub-token (t, j) = x'_t[j d/h, (j+1) d/h)     (row t*h + j of x' viewed as [T*h, d/h])
//   each sub-token: softmax(sub Wg^T), top k, renormalise; z = sum gate * SwiGLU_e(sub)
//   merged_t = [z_(t,0) | ... | z_(t,h-1)],  y = merged Wm^T   (merge_proj [d, d])
// The experts are d/h wide, so h sub-tokens of a token cost what one token costs in a d-wide
// layer, yet a token reaches up to h * k experts instead of k.
//
//   ./routing_multi_head
#include <moe/layer/multi_head_layer.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

#include "../example_util.hpp"

int main() {
  using S = double;  // double: the printed digits do not depend on the SIMD width
  constexpr moe::Index T = 6, d = 8, h = 4, dh = d / h, E = 6, ff = 16, k = 2;

  moe::SwiGLUExperts<S> experts(E, dh, ff);
  moe::examples::fill_normal(experts.gate_up(), 1, 1.0 / std::sqrt(double(dh)));
  moe::examples::fill_normal(experts.down(), 2, 1.0 / std::sqrt(double(ff)));
  moe::SoftmaxTopKRouter<S> router(E, dh, k);
  moe::examples::fill_normal(router.weight(), 3, 1.0);
  moe::RowMatrix<S> head_proj(d, d), merge_proj(d, d);
  moe::examples::fill_normal(head_proj, 4, 1.0 / std::sqrt(double(d)));
  moe::examples::fill_normal(merge_proj, 5, 1.0 / std::sqrt(double(d)));
  const moe::MultiHeadMoE<S> layer(moe::MixtralMoE<S>(std::move(experts), std::move(router)), h, std::move(head_proj),
                                   std::move(merge_proj));

  moe::RowMatrix<S> x(T, d);
  moe::examples::fill_normal(x, 6, 1.0);
  moe::MultiHeadWorkspace<S> ws;
  const moe::RowMatrix<S> y = layer.forward(x, ws);

  // The inner layer's routing: T*h sub-tokens, k pairs each, sub-token (t, j) at row t*h + j.
  const moe::RoutingResult<S>& r = ws.inner.routing;
  std::printf("multi-head: d %ld split into %ld heads of %ld; %ld SwiGLU experts %ld -> %ld -> %ld; softmax top-%ld "
              "per sub-token, renormalised\n",
              long(d), long(h), long(dh), long(E), long(dh), long(ff), long(dh), long(k));
  std::printf("token |");
  for (moe::Index j = 0; j < h; ++j) std::printf(" head %ld (row t*%ld+%ld) |", long(j), long(h), long(j));
  std::printf(" experts reached\n");
  double reached_sum = 0;
  for (moe::Index t = 0; t < T; ++t) {
    std::printf("%5ld |", long(t));
    std::vector<bool> reached(static_cast<std::size_t>(E), false);
    for (moe::Index j = 0; j < h; ++j) {
      const moe::Index row = t * h + j;
      for (moe::Index n = row * k; n < row * k + k; ++n) {
        std::printf(" e%ld %.3f", long(r.expert[std::size_t(n)]), r.gate[std::size_t(n)]);
        reached[std::size_t(r.expert[std::size_t(n)])] = true;
      }
      std::printf("  |");
    }
    int count = 0;
    for (const bool b : reached) count += b ? 1 : 0;
    reached_sum += count;
    std::printf(" %d\n", count);
  }
  std::printf("per-expert load (sub-token assignments, %ld in all):", long(T * h * k));
  for (moe::Index e = 0; e < E; ++e) std::printf(" %ld", long(ws.inner.stats.expert_load[std::size_t(e)]));
  std::printf("\nexperts reached per token: mean %.2f of at most %ld (h * k); a single-head top-%ld layer reaches %ld\n",
              reached_sum / double(T), long(h * k < E ? h * k : E), long(k), long(k));
  std::printf("output [%ld x %ld], finite: %s\n", long(y.rows()), long(y.cols()), y.allFinite() ? "yes" : "no");
  return 0;
}

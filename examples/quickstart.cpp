// quickstart: build a Mixtral-like layer with random weights, run it, print the load.
//
//   ./quickstart
#include <moe/moe.hpp>

#include <cmath>
#include <cstdio>

#include "example_util.hpp"

int main() {
  using S = float;
  constexpr moe::Index d_model = 64, d_ff = 128, num_experts = 8, top_k = 2, tokens = 64;

  // 1. The policies: E SwiGLU experts, a softmax top-2 router (renormalised, as Mixtral).
  moe::SwiGLUExperts<S> experts(num_experts, d_model, d_ff);
  moe::examples::fill_normal(experts.gate_up(), 1, 1.0 / std::sqrt(double(d_model)));
  moe::examples::fill_normal(experts.down(), 2, 1.0 / std::sqrt(double(d_ff)));
  moe::SoftmaxTopKRouter<S> router(num_experts, d_model, top_k, moe::SoftmaxTopK<S>{.renormalize = true});
  moe::examples::fill_normal(router.weight(), 3, 1.0 / std::sqrt(double(d_model)));

  // 2. The layer, assembled at compile time; MixtralMoE<S> names this combination.
  const moe::MixtralMoE<S> layer(std::move(experts), std::move(router));

  // 3. Forward: x [T, d] -> y [T, d]. The workspace holds every buffer and the statistics.
  moe::RowMatrix<S> x(tokens, d_model);
  moe::examples::fill_normal(x, 4, 1.0);
  moe::Workspace<S> ws;
  const moe::RowMatrix<S> y = layer.forward(x, ws);

  std::printf("Mixtral-like layer: d_model %ld, d_ff %ld, %ld experts, top-%ld, %ld tokens\n", long(d_model),
              long(d_ff), long(num_experts), long(top_k), long(tokens));
  std::printf("output [%ld x %ld], finite: %s\n", long(y.rows()), long(y.cols()), y.allFinite() ? "yes" : "no");
  std::printf("per-expert load (assignments out of %ld):\n", long(ws.stats.assignments));
  for (moe::Index e = 0; e < num_experts; ++e) {
    const moe::Index load = ws.stats.expert_load[static_cast<std::size_t>(e)];
    std::printf("  expert %ld: %3ld  ", long(e), long(load));
    for (moe::Index i = 0; i < load; ++i) std::putchar('#');
    std::putchar('\n');
  }
  std::printf("aux loss %.4f (k = %ld at perfect balance), z loss %.4f\n",
              double(moe::LoadBalancingLoss{}(ws.routing)), long(top_k), double(moe::RouterZLoss{}(ws.routing)));
  return 0;
}

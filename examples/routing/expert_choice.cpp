// routing_expert_choice: experts choose tokens (Zhou et al. 2022).
//
// The rule (moe::ExpertChoiceRouter, moe::ExpertChoiceMoE):
//   S = softmax(x Wg^T) over experts, as for token choice               [T, E]
//   c = floor(T * capacity_factor / E) tokens per expert
//   expert e takes the c tokens with the largest S[t, e] (a column of S, not a row; equal
//   scores: the lower token index), each with gate S[t, e]
// Every expert is exactly full, so nothing is dropped and load is perfectly balanced; in
// exchange a token may be taken by several experts or by none (it then gets y = 0, and the
// residual connection carries x). There is no per-token gate sum: a token's gates are
// distinct entries of its softmax row, so they add up to anything from 0 to at most 1.
//
//   ./routing_expert_choice
#include <moe/moe.hpp>

#include <cmath>
#include <cstdio>
#include <string>

#include "../example_util.hpp"

int main() {
  using S = double;  // double: the printed digits do not depend on the SIMD width
  constexpr moe::Index T = 8, E = 4, d = 8, ff = 16;
  constexpr double capacity_factor = 1.0;

  moe::SwiGLUExperts<S> experts(E, d, ff);
  moe::examples::fill_normal(experts.gate_up(), 1, 1.0 / std::sqrt(double(d)));
  moe::examples::fill_normal(experts.down(), 2, 1.0 / std::sqrt(double(ff)));
  moe::RowMatrix<S> wg(E, d);
  moe::examples::fill_normal(wg, 3, 0.5);
  const moe::ExpertChoiceMoE<S> layer(std::move(experts), moe::ExpertChoiceRouter<S>(wg, capacity_factor));

  moe::RowMatrix<S> x(T, d);
  moe::examples::fill_normal(x, 4, 1.0);
  moe::Workspace<S> ws;
  const moe::RowMatrix<S> y = layer.forward(x, ws);

  // E * c triples, expert-major: expert e's are [e*c, e*c + c), best first.
  const moe::RoutingResult<S>& r = ws.routing;
  const moe::Index c = layer.router().tokens_per_expert(T);
  std::printf("expert choice (Zhou 2022): %ld tokens, %ld experts, capacity factor %.2f -> each expert takes c = %ld\n",
              long(T), long(E), capacity_factor, long(c));
  std::printf("S = softmax(x Wg^T); * marks the c largest of each column\ntoken |");
  for (moe::Index e = 0; e < E; ++e) std::printf("   e%ld   ", long(e));
  std::printf("| taken by     | gate sum\n");
  const moe::RowMatrix<S> gates = r.dense_gates();  // [T, E], 0 where not taken
  for (moe::Index t = 0; t < T; ++t) {
    std::printf("%5ld |", long(t));
    for (moe::Index e = 0; e < E; ++e) std::printf(" %.3f%s ", r.scores(t, e), gates(t, e) != 0 ? "*" : " ");
    std::string taken;
    for (moe::Index e = 0; e < E; ++e)
      if (gates(t, e) != 0) taken += std::to_string(e) + " ";
    if (taken.empty()) taken = y.row(t).isZero(0) ? "none (y = 0)" : "none (y != 0?)";
    std::printf("| %-12s | %.3f\n", taken.c_str(), gates.row(t).sum());
  }
  std::printf("per expert, best first:\n");
  for (moe::Index e = 0; e < E; ++e) {
    std::printf("  e%ld takes", long(e));
    for (moe::Index j = 0; j < c; ++j) {
      const std::size_t i = std::size_t(e * c + j);
      std::printf(" token %ld (%.3f)", long(r.token[i]), r.gate[i]);
    }
    std::printf("\n");
  }
  std::printf("per-expert load:");
  for (moe::Index e = 0; e < E; ++e) std::printf(" e%ld %ld", long(e), long(ws.stats.expert_load[std::size_t(e)]));
  std::printf("; dropped %ld\n", long(ws.stats.dropped));
  return 0;
}

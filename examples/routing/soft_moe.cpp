// routing_soft_moe: Soft MoE, the dense router (Puigcerver et al. 2023).
//
// The rule (moe::SoftRouter, moe::SoftCombiner, moe::SoftMoE), per sequence X [n, d]:
//   logits = X Phi                      [n, E*p]: every token against every slot
//   D = softmax over the tokens (down each column)  dispatch: each column sums to 1
//   C = softmax over the slots (along each row)     combine:  each row sums to 1
//   slot inputs  = D^T X                a slot is a weighted average of its sequence's
//                                       tokens; slot i goes to expert i / p
//   y            = C (slot outputs)     a token's output is a weighted average of the slots
// Nothing is discrete: no token is chosen or dropped, and every expert processes exactly
// p slots per sequence. ForwardContext::sequence_length says where sequences end (the
// softmax over tokens stays inside one); 0 means the whole batch is one sequence.
//
//   ./routing_soft_moe
#include <moe/moe.hpp>

#include <cmath>
#include <cstdio>

#include "../example_util.hpp"

int main() {
  using S = double;  // double: the printed digits do not depend on the SIMD width
  constexpr moe::Index T = 8, E = 4, d = 8, ff = 16, p = 1, n = 4;  // 2 sequences of 4 tokens

  moe::FFNExperts<S, moe::Activation::gelu_erf> experts(E, d, ff);
  moe::examples::fill_normal(experts.wi(), 1, 1.0 / std::sqrt(double(d)));
  moe::examples::fill_normal(experts.wo(), 2, 1.0 / std::sqrt(double(ff)));
  moe::SoftRouter<S> router(E, d, p);
  moe::examples::fill_normal(router.phi(), 3, 0.5);
  const moe::SoftMoE<S> layer(std::move(experts), std::move(router));

  moe::RowMatrix<S> x(T, d);
  moe::examples::fill_normal(x, 4, 1.0);
  moe::ForwardContext ctx;
  ctx.sequence_length = n;
  moe::Workspace<S> ws;
  const moe::RowMatrix<S> y = layer.forward(x, ws, ctx);

  const moe::RowMatrix<S>& D = ws.routing.scores;                       // dispatch [T, E*p]
  const moe::RowMatrix<S>& C = moe::SoftCombiner<S>::combine_weights(ws);  // combine [T, E*p]
  std::printf("Soft MoE (Puigcerver 2023): %ld tokens in %ld sequences of %ld, %ld experts x %ld slot = %ld slots\n",
              long(T), long(T / n), long(n), long(E), long(p), long(E * p));
  for (const char* which : {"dispatch D (softmax down each column, per sequence)",
                            "combine C (softmax along each row)"}) {
    const bool dispatch = which[0] == 'd';
    const moe::RowMatrix<S>& W = dispatch ? D : C;
    std::printf("%s\n  token |", which);
    for (moe::Index s = 0; s < E * p; ++s) std::printf(" slot %ld", long(s));
    std::printf(" | row sum\n");
    for (moe::Index t = 0; t < T; ++t) {
      std::printf("  %5ld |", long(t));
      for (moe::Index s = 0; s < E * p; ++s) std::printf("  %.3f", W(t, s));
      std::printf(" |  %.3f\n", W.row(t).sum());
      if (dispatch && (t + 1) % n == 0) {
        std::printf("    sum |");
        for (moe::Index s = 0; s < E * p; ++s) std::printf("  %.3f", W.block(t + 1 - n, s, n, 1).sum());
        std::printf(" |   (sequence %ld)\n", long(t / n));
      }
    }
  }
  std::printf("per-expert load (slot rows):");
  for (moe::Index e = 0; e < E; ++e) std::printf(" e%ld %ld", long(e), long(ws.stats.expert_load[std::size_t(e)]));
  std::printf("; dropped %ld\n", long(ws.stats.dropped));
  std::printf("output [%ld x %ld], finite: %s\n", long(y.rows()), long(y.cols()), y.allFinite() ? "yes" : "no");
  return 0;
}

// routing_noisy_topk: noisy top-k gating (Shazeer et al. 2017).
//
// The rule (moe::NoisyTopKRouter, moe::NoisyTopKMoE), as tensor2tensor's noisy_top_k_gating:
//   clean  = x Wg^T
//   stddev = softplus(x Wn^T) + 0.01              a learned, per-token noise scale
//   noisy  = clean + eps * stddev,  eps ~ N(0, 1)   in training only
//   chosen = the k largest noisy logits;  gates = softmax over those k (they sum to 1)
// eps(t, e) is CounterRng(seed, step).normal(t, e): the same (seed, step) replays the same
// routing, a new step draws new noise. In inference no noise is added and the clean logits
// decide. The noise lets experts that are rarely first get tokens, and makes the load
// differentiable (moe::LoadLoss).
//
//   ./routing_noisy_topk
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
  moe::RowMatrix<S> wg(E, d), wn(E, d);
  moe::examples::fill_normal(wg, 3, 0.5);
  moe::examples::fill_normal(wn, 5, 0.3);
  const moe::NoisyTopKMoE<S> layer(std::move(experts), moe::NoisyTopKRouter<S>(wg, wn, k));

  moe::RowMatrix<S> x(T, d);
  moe::examples::fill_normal(x, 4, 1.0);
  moe::Workspace<S> ws;
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  ctx.seed = 2024;
  ctx.step = 1;
  (void)layer.forward(x, ws, ctx);
  const moe::RoutingResult<S> step1 = ws.routing;
  moe::NoisyGatingTerms<S> terms;  // what route() computed, for printing
  layer.router().gating_terms(x, ctx, terms);

  std::printf("noisy top-%ld (Shazeer 2017), training, seed %lu step %lu: %ld tokens, %ld experts\n", long(k),
              static_cast<unsigned long>(ctx.seed), static_cast<unsigned long>(ctx.step), long(T), long(E));
  for (moe::Index t = 0; t < T; ++t) {
    std::printf("token %ld\n  clean  ", long(t));
    for (moe::Index e = 0; e < E; ++e) std::printf(" %6.3f", terms.clean(t, e));
    std::printf("\n  stddev ");
    for (moe::Index e = 0; e < E; ++e) std::printf(" %6.3f", terms.stddev(t, e));
    std::printf("\n  noisy  ");
    for (moe::Index e = 0; e < E; ++e) std::printf(" %6.3f", terms.noisy(t, e));
    const std::size_t a = std::size_t(t * k);
    std::printf("\n  chosen experts %ld %ld, gates %.3f %.3f (sum %.3f)\n", long(step1.expert[a]),
                long(step1.expert[a + 1]), step1.gate[a], step1.gate[a + 1], step1.gate[a] + step1.gate[a + 1]);
  }

  // The same tokens at another step, at step 1 again, and in inference.
  ctx.step = 2;
  (void)layer.forward(x, ws, ctx);
  const moe::RoutingResult<S> step2 = ws.routing;
  ctx.step = 1;
  (void)layer.forward(x, ws, ctx);
  const moe::RoutingResult<S> replay = ws.routing;
  (void)layer.forward(x, ws, moe::ForwardContext{});  // Mode::inference: no noise
  const moe::RoutingResult<S> clean = ws.routing;
  std::printf("chosen experts per token:\n  token | step 1 | step 2 | step 1 again | inference (clean logits)\n");
  for (moe::Index t = 0; t < T; ++t) {
    const std::size_t a = std::size_t(t * k);
    std::printf("  %5ld |  %ld %ld   |  %ld %ld   |     %ld %ld      |  %ld %ld\n", long(t), long(step1.expert[a]),
                long(step1.expert[a + 1]), long(step2.expert[a]), long(step2.expert[a + 1]), long(replay.expert[a]),
                long(replay.expert[a + 1]), long(clean.expert[a]), long(clean.expert[a + 1]));
  }
  std::printf("step 1 replayed bit for bit: %s\n",
              replay.gate == step1.gate && replay.expert == step1.expert ? "yes" : "no");
  return 0;
}

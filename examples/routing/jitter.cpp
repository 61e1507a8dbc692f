// routing_jitter: router input jitter (Switch Transformers), moe::Jittered<R>.
//
// The rule: in training, the router sees x'(t, c) = x(t, c) * u(t, c), with
//   u(t, c) uniform in [1 - eps, 1 + eps),  drawn from CounterRng(seed, step)
// and routes x' as the wrapped router would; the experts still get the clean x. So the
// noise only moves the routing decision (here Switch's top-1: expert and gate p_max of
// softmax(x' Wg^T)), a little differently at every step, which keeps the router from
// settling too early on one expert per token. In inference, or with eps = 0, Jittered<R>
// is R exactly. Switch uses eps = 0.01; this example uses 0.1 so that a flip shows up.
//
//   ./routing_jitter
#include <moe/moe.hpp>

#include <cmath>
#include <cstdio>

#include "../example_util.hpp"

int main() {
  using S = double;  // double: the printed digits do not depend on the SIMD width
  constexpr moe::Index T = 8, E = 4, d = 8, ff = 16;
  constexpr double eps = 0.1;
  using Router = moe::SoftmaxTopKRouter<S>;

  moe::FFNExperts<S, moe::Activation::relu> experts(E, d, ff);
  moe::examples::fill_normal(experts.wi(), 1, 1.0 / std::sqrt(double(d)));
  moe::examples::fill_normal(experts.wo(), 2, 1.0 / std::sqrt(double(ff)));
  Router router(E, d, 1, moe::SoftmaxTopK<S>{.renormalize = false});
  moe::examples::fill_normal(router.weight(), 3, 0.5);
  const moe::MoELayer<moe::FFNExperts<S, moe::Activation::relu>, moe::Jittered<Router>, moe::WeightedSumCombiner<S>>
      layer(std::move(experts), moe::Jittered<Router>(std::move(router), eps), {});

  moe::RowMatrix<S> x(T, d);
  moe::examples::fill_normal(x, 4, 1.0);
  moe::Workspace<S> ws;
  (void)layer.forward(x, ws);  // inference: no jitter
  const moe::RoutingResult<S> clean = ws.routing;
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  ctx.seed = 2024;
  moe::RoutingResult<S> steps[3];
  for (std::uint64_t step = 1; step <= 3; ++step) {
    ctx.step = step;
    (void)layer.forward(x, ws, ctx);
    steps[step - 1] = ws.routing;
  }

  std::printf("router jitter, eps %.2f, top-1 (Switch): %ld tokens, %ld experts\n"
              "expert (gate p_max) per token, in inference and at three training steps (seed 2024)\n", eps,
              long(T), long(E));
  std::printf("token | inference (clean x) |  step 1        step 2        step 3       |\n");
  for (moe::Index t = 0; t < T; ++t) {
    const auto i = std::size_t(t);
    std::printf("%5ld |      %ld (%.3f)      |", long(t), long(clean.expert[i]), clean.gate[i]);
    for (const moe::RoutingResult<S>& r : steps)
      std::printf("  %ld (%.3f)%s", long(r.expert[i]), r.gate[i], r.expert[i] != clean.expert[i] ? " <-" : "   ");
    std::printf(" |\n");
  }
  std::printf("<- : the jittered router picked another expert than the clean one\n");
  // The experts saw the clean x: the output of token t is gate * expert(x_t) for its expert.
  const moe::Index t = 0;
  const moe::Index e = steps[2].expert[0];
  moe::RowMatrix<S> hidden(1, layer.experts().hidden_cols()), expert_out(1, d);
  layer.experts().forward(e, x.row(t), hidden, expert_out);
  const moe::RowMatrix<S> y = layer.forward(x, ws, ctx);  // step 3 again
  std::printf("token 0 at step 3: max |y - gate * expert_%ld(clean x)| = %.3f\n", long(e),
              (y.row(t) - steps[2].gate[0] * expert_out.row(0)).cwiseAbs().maxCoeff());
  return 0;
}

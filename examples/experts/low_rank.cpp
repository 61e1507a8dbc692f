// experts_low_rank: low-rank (LoRA) experts over a shared frozen base (MoLoRA).
//
// The layer (moe::LowRankMoE, moe::LowRankExperts, moe::LinearExperts):
//   y_t = x_t W0^T                                   the base, every token, no gate
//       + sum over the chosen experts of gate * scale * (x_t A_e^T) B_e^T
// with A_e [r, d] (lora_A), B_e [d, r] (lora_B), scale = alpha / r, and the gates of any router
// (softmax top-2 here). The base is the shared expert of a SharedExpertCombiner<LinearExperts,
// SharedGate::none>; set_trainable(false) freezes it: it lists no parameter, so the optimiser
// never sees it, and backward still passes dx through it.
//
// A teacher is the base plus one rank-2 update per input cluster (4 clusters). The student
// starts from the teacher's base, frozen, with LoRA's initialisation (A random, B = 0: the
// layer starts as the base alone), and trains the adapters and the router with Adam.
//
//   ./experts_low_rank
#include <moe/moe.hpp>
#include <moe/train/train.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

#include "../example_util.hpp"

namespace {

using S = double;  // double: the printed digits do not depend on the SIMD width
constexpr moe::Index d = 16, E = 4, r = 2, k = 2, batch = 64, steps = 400;
constexpr double alpha = 4.0;

/// Tokens near one of E cluster centres; cluster c's target is x (W0 + U_c V_c)^T.
struct Data {
  moe::RowMatrix<S> x, y;
  std::vector<moe::Index> cluster;
};

Data make_data(moe::Index n, std::uint64_t seed, const moe::RowMatrix<S>& w0, const std::vector<moe::RowMatrix<S>>& delta) {
  moe::RowMatrix<S> centres(E, d), noise(n, d);
  moe::examples::fill_normal(centres, 50, 1.0);
  moe::examples::fill_normal(noise, seed, 0.3);
  Data data{moe::RowMatrix<S>(n, d), moe::RowMatrix<S>(n, d), std::vector<moe::Index>(std::size_t(n))};
  for (moe::Index t = 0; t < n; ++t) {
    const moe::Index c = (t * 7 + moe::Index(seed)) % E;
    data.cluster[std::size_t(t)] = c;
    data.x.row(t) = centres.row(c) + noise.row(t);
    data.y.row(t) = data.x.row(t) * (w0 + delta[std::size_t(c)]).transpose();
  }
  return data;
}

double mse(const moe::LowRankMoE<S>& layer, const Data& data) {
  moe::Workspace<S> ws;
  const moe::RowMatrix<S> y = layer.forward(data.x, ws);
  return (y - data.y).squaredNorm() / double(y.size());
}

}  // namespace

int main() {
  // The teacher: a base W0 and a rank-2 update per cluster.
  moe::RowMatrix<S> w0(d, d);
  moe::examples::fill_normal(w0, 1, 1.0 / std::sqrt(double(d)));
  std::vector<moe::RowMatrix<S>> delta;
  for (moe::Index c = 0; c < E; ++c) {
    moe::RowMatrix<S> u(d, r), v(r, d);
    moe::examples::fill_normal(u, 10 + 2 * std::uint64_t(c), 0.5);
    moe::examples::fill_normal(v, 11 + 2 * std::uint64_t(c), 0.5);
    delta.push_back(u * v);
  }

  // The student: the teacher's base, frozen; LoRA adapters A ~ N(0, 1/d), B = 0.
  moe::LinearExperts<S> base(1, d, d);
  base.weights() = w0;
  base.set_trainable(false);
  moe::LowRankExperts<S> adapters(E, d, r, S(alpha / r));
  moe::examples::fill_normal(adapters.a(), 20, 1.0 / std::sqrt(double(d)));
  moe::SoftmaxTopKRouter<S> router(E, d, k);
  moe::examples::fill_normal(router.weight(), 21, 0.1);
  moe::LowRankMoE<S> layer(std::move(adapters), std::move(router),
                           moe::SharedExpertCombiner<moe::LinearExperts<S>, moe::SharedGate::none>(std::move(base)));

  moe::Index trainable = 0;
  layer.for_each_parameter([&](const std::string&, const auto& block) { trainable += block.size(); });
  std::printf("low-rank experts: %ld adapters of rank %ld (scale alpha / r = %.1f) over a frozen base [%ld x %ld]\n",
              long(E), long(r), alpha / r, long(d), long(d));
  std::printf("trainable parameters: %ld (router %ld, adapters %ld); the base's %ld are frozen\n", long(trainable),
              long(E * d), long(E * 2 * r * d), long(d * d));

  const Data eval = make_data(256, 99, w0, delta);
  std::printf("held-out MSE before training: %.4f (the base alone; B = 0)\n", mse(layer, eval));

  auto grads = layer.make_gradients();
  moe::Adam<S> opt(S(1e-2));
  moe::Workspace<S> ws;
  for (moe::Index step = 0; step < steps; ++step) {
    const Data b = make_data(batch, 1000 + std::uint64_t(step), w0, delta);
    moe::ForwardContext ctx;
    ctx.mode = moe::Mode::training;
    const moe::RowMatrix<S> y = layer.forward(b.x, ws, ctx);
    const moe::RowMatrix<S> dy = (y - b.y) * (2.0 / double(batch * d));  // d mean((y - target)^2)
    moe::zero_grad(grads);
    (void)layer.backward(dy, ws, grads, moe::LossWeights<S>{.aux = S(0.01)});
    opt.step(layer, grads);
    if ((step + 1) % 100 == 0) std::printf("step %3ld: held-out MSE %.4f\n", long(step + 1), mse(layer, eval));
  }
  const double moved = (layer.combiner().shared_expert().weights() - w0).cwiseAbs().maxCoeff();
  std::printf("largest change of the frozen base: %.1f\n", moved);

  // Which adapter each cluster's tokens use (share of their top-2 assignments).
  (void)layer.forward(eval.x, ws);
  std::vector<double> use(std::size_t(E * E), 0.0);
  for (std::size_t i = 0; i < ws.routing.token.size(); ++i)
    use[std::size_t(eval.cluster[std::size_t(ws.routing.token[i])] * E + ws.routing.expert[i])] += 1.0;
  std::printf("cluster | share of its assignments per adapter\n");
  for (moe::Index c = 0; c < E; ++c) {
    double total = 0;
    for (moe::Index e = 0; e < E; ++e) total += use[std::size_t(c * E + e)];
    std::printf("%7ld |", long(c));
    for (moe::Index e = 0; e < E; ++e) std::printf(" e%ld %5.1f %%", long(e), 100.0 * use[std::size_t(c * E + e)] / total);
    std::printf("\n");
  }
  return 0;
}

// experts_conv: convolutional experts, a depthwise causal convolution over the token's own
// sequence before each expert (moe::CausalConvExperts, moe::ConvMoE).
//
// Expert e computes u_t = sum_{tau < w} c_e[tau] * x_{t-tau} (elementwise; c_e[0] multiplies
// the current token; x_{t-tau} = 0 before the start of t's sequence, never another
// sequence), then its inner expert on u_t. The router reads x_t alone. Here the inner experts
// are linear (moe::LinearExperts), so an expert is a learnable causal filter.
//
// A teacher filters each token by its kind: tokens near centre 0 want a moving average of
// the last three tokens, tokens near centre 1 the difference from the previous token. A
// top-1 layer with two experts, kernels of 3 taps starting at [1, 0, 0] (the identity) and
// identity weights, learns the filters and which tokens need which, with Adam. Last, the
// gradient of one token's output reaches the inputs of the two tokens before it, and never
// the other sequence's.
//
//   ./experts_conv
#include <moe/moe.hpp>
#include <moe/train/train.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

#include "../example_util.hpp"

namespace {

using S = double;  // double: the printed digits do not depend on the SIMD width
constexpr moe::Index d = 6, E = 2, w = 3, seq = 12, sequences = 8, steps = 300;
using Layer = moe::MoELayer<moe::CausalConvExperts<moe::LinearExperts<S>>, moe::SoftmaxTopKRouter<S>,
                            moe::WeightedSumCombiner<S>>;

/// `sequences` sequences of `seq` tokens; token t is near centre kind(t).
struct Data {
  moe::RowMatrix<S> x, y;
  std::vector<moe::Index> kind;
};

Data make_data(std::uint64_t seed) {
  const moe::Index T = sequences * seq;
  moe::RowMatrix<S> centres(E, d), noise(T, d);
  moe::examples::fill_normal(centres, 7, 1.0);
  moe::examples::fill_normal(noise, seed, 0.5);
  Data data{moe::RowMatrix<S>(T, d), moe::RowMatrix<S>::Zero(T, d), std::vector<moe::Index>(std::size_t(T))};
  for (moe::Index t = 0; t < T; ++t) {
    const moe::Index c = ((t * 5 + moe::Index(seed)) / 3) % E;
    data.kind[std::size_t(t)] = c;
    data.x.row(t) = centres.row(c) + noise.row(t);
  }
  for (moe::Index t = 0; t < T; ++t) {
    const moe::Index pos = t % seq;
    const auto prev = [&](moe::Index tau) -> moe::RowMatrix<S> {
      return tau <= pos ? moe::RowMatrix<S>(data.x.row(t - tau)) : moe::RowMatrix<S>::Zero(1, d);
    };
    if (data.kind[std::size_t(t)] == 0)
      data.y.row(t) = (prev(0) + prev(1) + prev(2)) / 3.0;  // moving average
    else
      data.y.row(t) = prev(0) - prev(1);  // difference
  }
  return data;
}

moe::ForwardContext context(moe::Mode mode) {
  moe::ForwardContext ctx;
  ctx.sequence_length = seq;  // the convolution never crosses a sequence boundary
  ctx.mode = mode;
  return ctx;
}

double mse(const Layer& layer, const Data& data) {
  moe::Workspace<S> ws;
  const moe::RowMatrix<S> y = layer.forward(data.x, ws, context(moe::Mode::inference));
  return (y - data.y).squaredNorm() / double(y.size());
}

}  // namespace

int main() {
  moe::LinearExperts<S> inner(E, d, d);
  for (moe::Index e = 0; e < E; ++e) inner.weight(e).setIdentity();
  moe::CausalConvExperts<moe::LinearExperts<S>> experts(std::move(inner), w);
  for (moe::Index e = 0; e < E; ++e) experts.conv(e).row(0).setOnes();  // start as the identity filter
  moe::SoftmaxTopKRouter<S> router(E, d, 1);
  moe::examples::fill_normal(router.weight(), 3, 0.1);
  Layer layer(std::move(experts), std::move(router));

  std::printf("convolutional experts: %ld experts, kernels of %ld taps over sequences of %ld tokens, top-1\n",
              long(E), long(w), long(seq));
  const Data eval = make_data(99);
  std::printf("held-out MSE before training: %.4f\n", mse(layer, eval));

  auto grads = layer.make_gradients();
  moe::Adam<S> opt(S(2e-2));
  moe::Workspace<S> ws;
  for (moe::Index step = 0; step < steps; ++step) {
    const Data b = make_data(1000 + std::uint64_t(step));
    const moe::RowMatrix<S> y = layer.forward(b.x, ws, context(moe::Mode::training));
    const moe::RowMatrix<S> dy = (y - b.y) * (2.0 / double(y.size()));  // d mean((y - target)^2)
    moe::zero_grad(grads);
    (void)layer.backward(dy, ws, grads);
    opt.step(layer, grads);
    if ((step + 1) % 100 == 0) std::printf("step %3ld: held-out MSE %.4f\n", long(step + 1), mse(layer, eval));
  }

  // Which expert each kind of token chose, and each expert's kernel (mean over features).
  (void)layer.forward(eval.x, ws, context(moe::Mode::inference));
  std::vector<double> use(std::size_t(E * E), 0.0);
  for (std::size_t i = 0; i < ws.routing.token.size(); ++i)
    use[std::size_t(eval.kind[std::size_t(ws.routing.token[i])] * E + ws.routing.expert[i])] += 1.0;
  std::printf("token kind       | share routed to e0, e1\n");
  for (moe::Index c = 0; c < E; ++c)
    std::printf("%-16s | %5.1f %% %5.1f %%\n", c == 0 ? "moving average" : "difference",
                100.0 * use[std::size_t(c * E)] / (use[std::size_t(c * E)] + use[std::size_t(c * E + 1)]),
                100.0 * use[std::size_t(c * E + 1)] / (use[std::size_t(c * E)] + use[std::size_t(c * E + 1)]));
  for (moe::Index e = 0; e < E; ++e) {
    // The end-to-end filter of expert e: tap tau maps x_{t-tau} through diag(c_e[tau]) then W_e.
    std::printf("expert %ld, mean diagonal of W_e diag(c_e[tau]) for tau = 0, 1, 2:", long(e));
    for (moe::Index tau = 0; tau < w; ++tau) {
      const moe::RowMatrix<S> tap = layer.experts().inner().weight(e) * layer.experts().conv(e).row(tau).asDiagonal();
      std::printf(" %6.3f", tap.diagonal().mean());
    }
    std::printf("\n");
  }

  // dL/dx for L = the sum of token 13's output (sequence 1, position 1): its own input and
  // the one before it get gradient, no token of sequence 0 does.
  (void)layer.forward(eval.x, ws, context(moe::Mode::training));
  moe::RowMatrix<S> dy = moe::RowMatrix<S>::Zero(eval.x.rows(), d);
  dy.row(seq + 1).setOnes();
  grads = layer.make_gradients();
  const moe::RowMatrix<S> dx = layer.backward(dy, ws, grads);
  std::printf("tokens whose input gets gradient from token %ld's output:", long(seq + 1));
  for (moe::Index t = 0; t < dx.rows(); ++t)
    if (dx.row(t).cwiseAbs().maxCoeff() > 0) std::printf(" %ld", long(t));
  std::printf("\n");
  return 0;
}

// Backward through the layer when the router drew randomness from the forward's context
// (generated noise, generated jitter), and with the sequence-wise loss in LossWeights:
// checked against central finite differences of the same seeded computation (double).
#include <moe/moe.hpp>

#include <catch2/catch.hpp>

#include <random>
#include <string>
#include <vector>

#include "support/finite_difference.hpp"
#include "support/gradient_check.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;

using moe::test::fill;

/// L = sum(y * G) + loss terms; checks dx and every parameter against finite differences,
/// with the routing held fixed (asserted) under each perturbation.
template <class Layer>
void check_layer(Layer layer, const moe::ForwardContext& ctx, const moe::LossWeights<double>& weights,
                 const std::function<double(const moe::Workspace<double>&)>& extra_loss) {
  const Index T = 12, d = layer.input_dim();
  RowMatrix<double> x(T, d), G(T, layer.output_dim());
  fill(x, 31);
  fill(G, 32);
  moe::Workspace<double> ws;
  RowMatrix<double> y(T, layer.output_dim()), dx(T, d);
  layer.forward(x, y, ws, ctx);
  const std::vector<Index> experts = ws.routing.expert;
  const auto loss = [&] {
    moe::Workspace<double> w;
    RowMatrix<double> out(T, layer.output_dim());
    layer.forward(x, out, w, ctx);
    REQUIRE(w.routing.expert == experts);
    return (out.array() * G.array()).sum() + extra_loss(w);
  };
  auto grads = layer.make_gradients();
  layer.forward(x, y, ws, ctx);
  layer.backward(G, dx, ws, grads, weights);
  CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(x, loss)) < 1e-6);
  moe::test::check_parameter_gradients(layer, grads, loss, 1e-6);
}

moe::SwiGLUExperts<double> experts(Index E, Index d) {
  moe::SwiGLUExperts<double> bank(E, d, 5);
  fill(bank.gate_up(), 1, 0.4);
  fill(bank.down(), 2, 0.4);
  return bank;
}

}  // namespace

TEST_CASE("noisy top-k with noise generated from the context: backward through the layer", "[layer][backward]") {
  RowMatrix<double> wg(6, 4), wn(6, 4);
  fill(wg, 3);
  fill(wn, 4);
  const moe::NoisyTopKMoE<double> layer(experts(6, 4), moe::NoisyTopKRouter<double>(wg, wn, 2));
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  ctx.seed = 17;
  ctx.step = 5;
  check_layer(layer, ctx, {}, [](const moe::Workspace<double>&) { return 0.0; });
}

TEST_CASE("jitter generated from the context: backward through the layer", "[layer][backward]") {
  RowMatrix<double> w(6, 4);
  fill(w, 5);
  using Router = moe::Jittered<moe::SoftmaxTopKRouter<double>>;
  const moe::MoELayer<moe::SwiGLUExperts<double>, Router, moe::WeightedSumCombiner<double>> layer(
      experts(6, 4), Router(moe::SoftmaxTopKRouter<double>(w, 2), 0.1));
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  ctx.seed = 3;
  ctx.step = 9;
  check_layer(layer, ctx, {}, [](const moe::Workspace<double>&) { return 0.0; });
}

TEST_CASE("the sequence-wise balance loss through LossWeights", "[layer][backward]") {
  RowMatrix<double> w(8, 4);
  fill(w, 6);
  moe::SigmoidGroupLimited<double> g;
  g.n_group = 2;
  g.topk_group = 1;
  g.routed_scaling_factor = 1.5;
  g.correction_bias = moe::Vector<double>::Zero(8);
  const moe::MoELayer<moe::SwiGLUExperts<double>, moe::GroupLimitedRouter<double>, moe::WeightedSumCombiner<double>>
      layer(experts(8, 4), moe::GroupLimitedRouter<double>(w, 2, g));
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  ctx.sequence_length = 4;
  moe::LossWeights<double> weights;
  weights.sequence = 0.5;
  weights.sequence_loss.alpha = 1.0;
  check_layer(layer, ctx, weights, [&](const moe::Workspace<double>& w) {
    return 0.5 * weights.sequence_loss(w.routing, ctx.sequence_length);
  });
}

// PositionScaledExperts, the shipped expert that reads its slab's ExpertContext: through the
// layer, each token's output is the wrapped bank's divided by (1 + decay * position in its
// sequence), against a reference that routes by hand; and backward (dx, every weight)
// against central finite differences in double.
#include <moe/expert/position_scaled_experts.hpp>
#include <moe/layer/moe_layer.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "support/finite_difference.hpp"
#include "support/gradient_check.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using Bank = moe::PositionScaledExperts<moe::SwiGLUExperts<double>>;
using Layer = moe::MoELayer<Bank, moe::SoftmaxTopKRouter<double>, moe::WeightedSumCombiner<double>>;

Layer make_layer(double decay) {
  const Index E = 3, d = 5, ff = 4;
  RowMatrix<double> router(E, d);
  moe::test::fill(router, 7);
  return Layer(Bank(moe::test::swiglu<double>(E, d, ff, 5), decay), moe::SoftmaxTopKRouter<double>(router, 2));
}

}  // namespace

TEST_CASE("position-scaled experts scale each token by its position in its sequence", "[expert][context]") {
  static_assert(moe::expert_traits<Bank>::needs_context);
  const Layer layer = make_layer(0.5);
  const Index T = 12, L = 4;
  RowMatrix<double> x(T, layer.input_dim());
  moe::test::fill(x, 9);
  moe::ForwardContext ctx;
  ctx.sequence_length = L;
  moe::Workspace<double> ws;
  const RowMatrix<double> y = layer.forward(x, ws, ctx);

  // Reference: each token through its experts one at a time, gate-weighted, then scaled.
  const auto& inner = layer.experts().inner();
  RowMatrix<double> ref = RowMatrix<double>::Zero(T, layer.output_dim());
  for (Index i = 0; i < ws.routing.size(); ++i) {
    const Index t = ws.routing.token[static_cast<std::size_t>(i)];
    const Index e = ws.routing.expert[static_cast<std::size_t>(i)];
    RowMatrix<double> h(1, inner.hidden_cols()), out(1, inner.output_dim());
    inner.forward<xsimd::default_arch>(e, x.row(t), h, out);
    ref.row(t) += ws.routing.gate[static_cast<std::size_t>(i)] * out / (1.0 + 0.5 * double(t % L));
  }
  CHECK(moe::test::relative_gap(y, ref) < 1e-13);
  // Position 0 of every sequence is unscaled; with decay 0 the wrapper is the inner bank.
  const Layer plain = make_layer(0.0);
  moe::Workspace<double> ws2;
  const RowMatrix<double> y0 = plain.forward(x, ws2, ctx);
  for (Index t = 0; t < T; t += L) CHECK(y0.row(t) == y.row(t));
  CHECK(y0 != y);
}

TEST_CASE("position-scaled experts: backward matches finite differences", "[expert][context][backward]") {
  Layer layer = make_layer(0.3);
  const Index T = 10, L = 5;
  RowMatrix<double> x(T, layer.input_dim()), G(T, layer.output_dim());
  moe::test::fill(x, 11);
  moe::test::fill(G, 12);
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  ctx.sequence_length = L;
  moe::Workspace<double> ws;
  (void)layer.forward(x, ws, ctx);
  const std::vector<Index> experts = ws.routing.expert;
  auto grads = layer.make_gradients();
  const RowMatrix<double> dx = layer.backward(G, ws, grads);
  const auto loss = [&] {
    moe::Workspace<double> w;
    const RowMatrix<double> out = layer.forward(x, w, ctx);
    REQUIRE(w.routing.expert == experts);
    return (out.array() * G.array()).sum();
  };
  CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(x, loss)) < 1e-7);
  moe::test::check_parameter_gradients(layer, grads, loss, 1e-7);
}

TEST_CASE("position-scaled experts refuse a negative or non-finite decay", "[expert][context][errors]") {
  REQUIRE_THROWS_WITH(Bank(moe::SwiGLUExperts<double>(1, 2, 2), -1.0),
                      "PositionScaledExperts::PositionScaledExperts(): decay expected finite and >= 0, got -1");
}

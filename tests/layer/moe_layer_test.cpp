// MoELayer end to end against the dense scalar oracle, and its argument errors.
#include <moe/moe.hpp>

#include <catch2/catch.hpp>

#include <random>

#include "support/random.hpp"
#include "support/reference_moe.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;

using moe::test::fill;

moe::MixtralMoE<double> random_mixtral(Index E, Index d, Index ff, Index k) {
  moe::SwiGLUExperts<double> experts(E, d, ff);
  fill(experts.gate_up(), 1, 0.3);
  fill(experts.down(), 2, 0.3);
  moe::SoftmaxTopKRouter<double> router(E, d, k);
  fill(router.weight(), 3);
  return {std::move(experts), std::move(router)};
}

}  // namespace

TEST_CASE("a Mixtral layer equals the dense mixture of its experts under its own gates", "[layer]") {
  for (const Index k : {Index{1}, Index{2}, Index{8}}) {
    const auto layer = random_mixtral(8, 12, 10, k);
    RowMatrix<double> x(33, 12);
    fill(x, 4);
    moe::Workspace<double> ws;
    const RowMatrix<double> y = layer.forward(x, ws);
    const RowMatrix<double> gates = ws.routing.dense_gates();
    const auto& ex = layer.experts();
    const RowMatrix<double> ref = moe::test::ref_mixture(
        x, gates,
        [&](Index e, const moe::RowVector<double>& xt) {
          return moe::test::ref_swiglu(xt, ex.gate_proj(e), ex.up_proj(e), ex.down_proj(e));
        },
        12);
    REQUIRE((y - ref).cwiseAbs().maxCoeff() < 1e-12);
    // Every token's k choices were kept; the load adds up.
    Index total = 0;
    for (Index l : ws.stats.expert_load) total += l;
    REQUIRE(total == 33 * k);
    REQUIRE(ws.stats.dropped == 0);
  }
}

TEST_CASE("a workspace is reusable across shapes and calls give identical results", "[layer]") {
  const auto layer = random_mixtral(4, 6, 5, 2);
  moe::Workspace<double> ws;
  RowMatrix<double> a(9, 6), b(3, 6);
  fill(a, 5);
  fill(b, 6);
  const RowMatrix<double> ya = layer.forward(a, ws);
  const RowMatrix<double> yb = layer.forward(b, ws);
  moe::Workspace<double> fresh;
  REQUIRE(layer.forward(a, ws) == ya);
  REQUIRE(layer.forward(b, fresh) == yb);
}

TEST_CASE("zero tokens give an empty output", "[layer]") {
  const auto layer = random_mixtral(4, 6, 5, 2);
  moe::Workspace<double> ws;
  const RowMatrix<double> y = layer.forward(RowMatrix<double>(0, 6), ws);
  REQUIRE(y.rows() == 0);
  REQUIRE(y.cols() == 6);
  REQUIRE(ws.stats.assignments == 0);
}

TEST_CASE("layer arguments of the wrong shape are refused with what was expected", "[layer][errors]") {
  const auto layer = random_mixtral(4, 6, 5, 2);
  moe::Workspace<double> ws;
  REQUIRE_THROWS_WITH(layer.forward(RowMatrix<double>::Zero(3, 5), ws),
                      "MoELayer::forward(): x columns (input_dim) expected 6, got 5");
  RowMatrix<double> y(2, 6);
  REQUIRE_THROWS_WITH(layer.forward(RowMatrix<double>::Zero(3, 6), y, ws),
                      "MoELayer::forward(): y expected shape [3, 6], got [2, 6]");
  REQUIRE_THROWS_WITH(moe::MixtralMoE<double>(moe::SwiGLUExperts<double>(4, 6, 5), moe::SoftmaxTopKRouter<double>(5, 6, 2)),
                      "MoELayer::MoELayer(): router num_experts (= experts) expected 4, got 5");
  REQUIRE_THROWS_WITH(moe::MixtralMoE<double>(moe::SwiGLUExperts<double>(4, 6, 5), moe::SoftmaxTopKRouter<double>(4, 7, 2)),
                      "MoELayer::MoELayer(): router input_dim (= experts input_dim) expected 6, got 7");
}

TEST_CASE("weights resized through an accessor are refused before any stage reads them", "[layer][errors]") {
  auto layer = random_mixtral(4, 6, 5, 2);
  moe::Workspace<double> ws;
  const RowMatrix<double> x = RowMatrix<double>::Zero(3, 6);
  layer.experts().down().resize(4 * 6, 4);
  REQUIRE_THROWS_WITH(layer.forward(x, ws), "SwiGLUExperts::check_shapes(): down() expected shape [24, 5], got [24, 4]");
  auto other = random_mixtral(4, 6, 5, 4);
  other.router().weight().resize(3, 6);
  REQUIRE_THROWS_WITH(other.forward(x, ws), "TopKRouter::check_shapes(): k expected in [1, num_experts = 3], got 4");
  auto third = random_mixtral(4, 6, 5, 1);
  third.router().weight().resize(3, 6);
  REQUIRE_THROWS_WITH(third.forward(x, ws), "MoELayer::forward(): router num_experts (= experts) expected 4, got 3");
}

TEST_CASE("a sparse layer ignores sequence_length and is unchanged", "[layer]") {
  moe::SwiGLUExperts<double> experts(4, 6, 5);
  fill(experts.gate_up(), 1, 0.3);
  fill(experts.down(), 2, 0.3);
  moe::SoftmaxTopKRouter<double> router(4, 6, 2);
  fill(router.weight(), 3);
  const moe::MixtralMoE<double> layer(std::move(experts), std::move(router));
  RowMatrix<double> x(7, 6);
  fill(x, 81);
  moe::Workspace<double> ws;
  const RowMatrix<double> y = layer.forward(x, ws);
  const std::vector<Index> load = ws.stats.expert_load;
  const RowMatrix<double> gates = ws.routing.dense_gates();
  moe::ForwardContext ctx;
  ctx.sequence_length = 3;  // does not divide 7: a sparse router never reads it
  moe::Workspace<double> ws2;
  CHECK(layer.forward(x, ws2, ctx) == y);
  CHECK(ws2.stats.expert_load == load);
  CHECK(ws2.routing.dense_gates() == gates);
  CHECK(ws2.stats.assignments == 14);
  // Still the dense mixture of its experts under its gates.
  const auto& ex = layer.experts();
  const RowMatrix<double> ref = moe::test::ref_mixture(
      x, gates,
      [&](Index e, const moe::RowVector<double>& xt) {
        return moe::test::ref_swiglu(xt, ex.gate_proj(e), ex.up_proj(e), ex.down_proj(e));
      },
      6);
  CHECK((y - ref).cwiseAbs().maxCoeff() < 1e-12);
}

// The layer's training protocol (issue #10): backward's loss list, its LossWeights shorthand,
// and the errors of a backward that cannot run.
#include <moe/moe.hpp>

#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "support/finite_difference.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;

moe::MixtralMoE<double> protocol_mixtral() {
  RowMatrix<double> router(4, 6);
  moe::test::fill(router, 3);
  return {moe::test::swiglu<double>(4, 6, 5, 1), moe::SoftmaxTopKRouter<double>(router, 2)};
}

std::vector<RowMatrix<double>> all_gradients(const moe::MixtralMoE<double>::gradients_type& g) {
  std::vector<RowMatrix<double>> out;
  g.for_each_parameter([&](const std::string&, const auto& b) { out.emplace_back(b); });
  return out;
}

}  // namespace

TEST_CASE("a loss list gives the bits of the same losses by LossWeights", "[layer][losses]") {
  const auto layer = protocol_mixtral();
  RowMatrix<double> x(11, 6), G(11, 6);
  moe::test::fill(x, 4);
  moe::test::fill(G, 5);
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  moe::Workspace<double> ws1, ws2;
  (void)layer.forward(x, ws1, ctx);
  (void)layer.forward(x, ws2, ctx);
  auto g1 = layer.make_gradients(), g2 = layer.make_gradients();
  const RowMatrix<double> dx1 = layer.backward(G, ws1, g1, moe::LossWeights<double>{.aux = 0.3, .z = 0.2});
  const RowMatrix<double> dx2 = layer.backward(
      G, ws2, g2, moe::losses(moe::weighted(moe::LoadBalancingLoss{}, 0.3), moe::weighted(moe::RouterZLoss{}, 0.2)));
  CHECK(dx1 == dx2);
  CHECK(all_gradients(g1) == all_gradients(g2));
  // And the losses changed something: without them dx differs.
  moe::Workspace<double> ws3;
  (void)layer.forward(x, ws3, ctx);
  auto g3 = layer.make_gradients();
  CHECK(layer.backward(G, ws3, g3, moe::no_losses) != dx1);
}

TEST_CASE("the importance loss trains any sparse router through its gates", "[layer][losses][importance]") {
  auto layer = protocol_mixtral();
  RowMatrix<double> x(10, 6), G(10, 6);
  moe::test::fill(x, 6);
  moe::test::fill(G, 7);
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  moe::Workspace<double> ws;
  (void)layer.forward(x, ws, ctx);
  const std::vector<Index> experts = ws.routing.expert;
  auto grads = layer.make_gradients();
  const RowMatrix<double> dx = layer.backward(G, ws, grads, moe::LossWeights<double>{.importance = 0.8});
  const auto loss = [&] {
    moe::Workspace<double> w;
    const RowMatrix<double> y = layer.forward(x, w, ctx);
    REQUIRE(w.routing.expert == experts);
    return (y.array() * G.array()).sum() + 0.8 * moe::ImportanceLoss{}(w.routing);
  };
  CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(x, loss)) < 1e-7);
  CHECK(moe::test::relative_gap(grads.router.weight(), moe::test::numeric_gradient(layer.router().weight(), loss)) <
        1e-7);
}

TEST_CASE("backward refuses what it cannot run, with its own message for each", "[layer][errors]") {
  const auto layer = protocol_mixtral();
  auto grads = layer.make_gradients();
  const RowMatrix<double> G = RowMatrix<double>::Zero(3, 6);
  moe::Workspace<double> fresh;
  REQUIRE_THROWS_WITH(layer.backward(G, fresh, grads),
                      "MoELayer::backward(): the workspace expected one on which forward ran in Mode::training, got "
                      "one on which no forward has completed (run forward with ctx.mode = Mode::training first)");
  moe::Workspace<double> ws;
  RowMatrix<double> x(3, 6);
  moe::test::fill(x, 8);
  (void)layer.forward(x, ws);
  REQUIRE_THROWS_WITH(layer.backward(G, ws, grads),
                      "MoELayer::backward(): the workspace's last forward expected one in Mode::training, got one in "
                      "Mode::inference");
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  (void)layer.forward(x, ws, ctx);
  REQUIRE_THROWS_WITH(layer.backward(G, ws, grads, moe::LossWeights<double>{.load = 0.1}),
                      "MoELayer::backward(): LossWeights::load (LoadLoss reads noisy top-k's gating terms; this router "
                      "has none) expected 0, got 0.1");
}

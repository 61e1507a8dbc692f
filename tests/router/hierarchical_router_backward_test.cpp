// Hierarchical routing trained through a whole MoELayer against central finite differences in
// double: L = sum(y * G) (+ the z-loss on the secondary logits) for dx, the primary router,
// every group router and the experts, over several a, b, k1, k2, with and without the
// renormalisation, and under a capacity that drops. A group's router gets gradient only from
// the tokens that kept the group. Every perturbed forward must route as the unperturbed one.
#include <moe/moe.hpp>

#include <catch2/catch.hpp>

#include <vector>

#include "support/finite_difference.hpp"
#include "support/gradient_check.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::test::random_matrix;

void hierarchical_gradcheck(const moe::HierarchicalMoE<double>& layer_in, Index T, unsigned seed, double w_z = 0,
                            moe::Capacity capacity = {}) {
  moe::HierarchicalMoE<double> layer = layer_in;
  layer.set_capacity(capacity);
  RowMatrix<double> x = random_matrix(T, layer.input_dim(), seed);
  const RowMatrix<double> G = random_matrix(T, layer.output_dim(), seed + 1);
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  moe::Workspace<double> ws;
  RowMatrix<double> y(T, layer.output_dim()), dx(T, layer.input_dim());
  layer.forward(x, y, ws, ctx);
  const std::vector<Index> experts0 = ws.routing.expert, slots0 = ws.plan.slot_of;
  auto grads = layer.make_gradients();
  layer.backward(G, dx, ws, grads, moe::losses(moe::weighted(moe::RouterZLoss{}, w_z)));
  moe::Workspace<double> ws2;
  const auto loss = [&] {
    layer.forward(x, y, ws2, ctx);
    REQUIRE(ws2.routing.expert == experts0);
    REQUIRE(ws2.plan.slot_of == slots0);
    return (y.array() * G.array()).sum() + w_z * moe::RouterZLoss{}(ws2.routing);
  };
  CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(x, loss)) < 1e-6);
  moe::test::check_parameter_gradients(layer, grads, loss, 1e-6);
}

moe::HierarchicalMoE<double> hierarchical_layer(Index a, Index b, Index k1, Index k2, bool renorm, unsigned seed) {
  const Index d = 5;
  return moe::HierarchicalMoE<double>(
      moe::test::swiglu<double>(a * b, d, 4, seed + 2),
      // Router weights N(0, 0.6^2): no gate so small that its expert's gradient (~gate) drowns
      // in the finite difference's rounding at h = 1e-6 (with N(0, 1.3^2), gates of 1e-3 left
      // expert gradients of 1e-5, checked only to 4e-6 at h = 1e-6 but to 4e-8 at h = 1e-4).
      moe::HierarchicalRouter<double>(random_matrix(a, d, seed, 0.6), random_matrix(a * b, d, seed + 1, 0.6), k1, k2,
                                      renorm));
}

}  // namespace

TEST_CASE("hierarchical layers: dx, the primary and group routers and the experts match finite differences",
          "[router][backward][hierarchical]") {
  struct Case {
    Index a, b, k1, k2;
  };
  unsigned seed = 900;
  for (const Case c : {Case{4, 4, 2, 2}, Case{3, 2, 1, 2}, Case{2, 3, 2, 1}, Case{3, 3, 3, 3}, Case{1, 4, 1, 2}})
    for (const bool renorm : {true, false}) {
      INFO("a " << c.a << ", b " << c.b << ", k1 " << c.k1 << ", k2 " << c.k2 << ", renormalise " << renorm);
      const auto layer = hierarchical_layer(c.a, c.b, c.k1, c.k2, renorm, seed);
      hierarchical_gradcheck(layer, 9, seed + 5);
      INFO("with the z-loss on the secondary logits");
      hierarchical_gradcheck(layer, 9, seed + 7, 0.3);
      seed += 10;
    }
}

TEST_CASE("hierarchical layers under a capacity that drops: gradients match finite differences",
          "[router][backward][hierarchical][capacity]") {
  const auto layer = hierarchical_layer(3, 2, 2, 1, true, 950);
  hierarchical_gradcheck(layer, 12, 955, 0.0, moe::Capacity::fixed(3));
}

TEST_CASE("a group router gets no gradient from tokens that did not keep its group", "[router][backward][hierarchical]") {
  // One group kept per token (two of its three experts, so the group factor has a gradient),
  // and the batch keeps only group 0 or 1 of 4 when group 2 and 3's primary rows are pushed far
  // down: their routers get exactly zero.
  auto layer = hierarchical_layer(4, 3, 1, 2, true, 960);
  layer.router().primary().row(2).setConstant(-50.0);
  layer.router().primary().row(3).setConstant(-50.0);
  RowMatrix<double> x = random_matrix(10, 5, 961).cwiseAbs();  // positive inputs: rows 2 and 3 score far below
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  moe::Workspace<double> ws;
  const RowMatrix<double> y = layer.forward(x, ws, ctx);
  for (const Index e : ws.routing.expert) REQUIRE(e / 3 < 2);
  auto grads = layer.make_gradients();
  (void)layer.backward(y, ws, grads, moe::no_losses);
  CHECK(grads.router.group_gate(2).cwiseAbs().maxCoeff() == 0.0);
  CHECK(grads.router.group_gate(3).cwiseAbs().maxCoeff() == 0.0);
  CHECK(grads.router.group_gate(0).cwiseAbs().maxCoeff() + grads.router.group_gate(1).cwiseAbs().maxCoeff() > 0.0);
}

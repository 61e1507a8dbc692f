// The adaptive gating rules (TopP, ThresholdSkip: 1..k experts per token) trained through a
// whole MoELayer, against central finite differences in double: L = sum(y * G), plus the
// routing-entropy loss and the load-balancing loss where a case asks, for dx, the router's
// weight and every expert parameter, over several E, k, thresholds and a capacity that drops.
// Routing decisions are piecewise constant: the data are random, and every perturbed forward
// must route and drop exactly as the unperturbed one did.
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

template <class Router>
using AdaptiveLayer = moe::MoELayer<moe::SwiGLUExperts<double>, Router, moe::WeightedSumCombiner<double>>;

/// Checks dx and every parameter gradient for L = sum(y * G) + w_entropy * H + w_aux * LB.
template <class Router>
void adaptive_gradcheck(AdaptiveLayer<Router>& layer, Index T, unsigned seed, double w_entropy = 0,
                        double w_aux = 0) {
  RowMatrix<double> x = random_matrix(T, layer.input_dim(), seed);
  const RowMatrix<double> G = random_matrix(T, layer.output_dim(), seed + 1);
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  moe::Workspace<double> ws;
  RowMatrix<double> y(T, layer.output_dim()), dx(T, layer.input_dim());
  layer.forward(x, y, ws, ctx);
  const std::vector<Index> experts0 = ws.routing.expert, tokens0 = ws.routing.token, slots0 = ws.plan.slot_of;
  auto grads = layer.make_gradients();
  layer.backward(G, dx, ws, grads,
                 moe::losses(moe::weighted(moe::RoutingEntropyLoss{}, w_entropy),
                             moe::weighted(moe::LoadBalancingLoss{}, w_aux)));

  moe::Workspace<double> ws2;
  const auto loss = [&] {
    layer.forward(x, y, ws2, ctx);
    REQUIRE(ws2.routing.expert == experts0);
    REQUIRE(ws2.routing.token == tokens0);
    REQUIRE(ws2.plan.slot_of == slots0);
    return (y.array() * G.array()).sum() + w_entropy * moe::RoutingEntropyLoss{}(ws2.routing) +
           w_aux * moe::LoadBalancingLoss{}(ws2.routing);
  };
  CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(x, loss)) < 1e-6);
  moe::test::check_parameter_gradients(layer, grads, loss, 1e-6);
}

struct AdaptiveCase {
  Index E, k;
  double setting;  // TopP's threshold or ThresholdSkip's beta
};
constexpr AdaptiveCase top_p_cases[] = {{4, 2, 0.5}, {6, 3, 0.7}, {8, 4, 0.9}, {5, 5, 0.99}, {3, 1, 0.5}};
constexpr AdaptiveCase threshold_cases[] = {{4, 2, 0.5}, {6, 3, 0.3}, {8, 4, 0.6}, {5, 5, 0.1}, {3, 1, 0.5}};

template <class Router, class Rule>
AdaptiveLayer<Router> adaptive_layer(const AdaptiveCase& c, unsigned seed, moe::Capacity capacity = {}) {
  // Router weights N(0, 1.5^2): spread probabilities, so the tokens keep different counts.
  return AdaptiveLayer<Router>(moe::test::swiglu<double>(c.E, 5, 4, seed + 1),
                               Router(random_matrix(c.E, 5, seed, 1.5), c.k, Rule{c.setting}), {}, capacity);
}

}  // namespace

TEST_CASE("top-p layers: dx, the router and the experts' gradients match finite differences",
          "[router][backward][top_p]") {
  unsigned seed = 300;
  for (const auto& c : top_p_cases) {
    INFO("E " << c.E << ", max_k " << c.k << ", threshold " << c.setting);
    auto layer = adaptive_layer<moe::TopPRouter<double>, moe::TopP<double>>(c, seed);
    adaptive_gradcheck(layer, 9, seed + 5);
    INFO("with the routing-entropy and load-balancing losses");
    adaptive_gradcheck(layer, 9, seed + 7, 0.7, 0.3);
    seed += 10;
  }
}

TEST_CASE("threshold-skip layers: dx, the router and the experts' gradients match finite differences",
          "[router][backward][threshold_skip]") {
  unsigned seed = 400;
  for (const auto& c : threshold_cases) {
    INFO("E " << c.E << ", k " << c.k << ", beta " << c.setting);
    auto layer = adaptive_layer<moe::ThresholdSkipRouter<double>, moe::ThresholdSkip<double>>(c, seed);
    adaptive_gradcheck(layer, 9, seed + 5);
    INFO("with the routing-entropy and load-balancing losses");
    adaptive_gradcheck(layer, 9, seed + 7, 0.5, 0.4);
    seed += 10;
  }
}

TEST_CASE("adaptive layers under a capacity that drops: gradients match finite differences",
          "[router][backward][top_p][threshold_skip][capacity]") {
  // 12 tokens, 4 experts, 2 slots each: some assignments are dropped.
  const AdaptiveCase c{4, 3, 0.8};
  auto top_p = adaptive_layer<moe::TopPRouter<double>, moe::TopP<double>>(c, 500, moe::Capacity::fixed(2));
  adaptive_gradcheck(top_p, 12, 505);
  auto skip = adaptive_layer<moe::ThresholdSkipRouter<double>, moe::ThresholdSkip<double>>({4, 3, 0.2}, 510,
                                                                                          moe::Capacity::fixed(2));
  adaptive_gradcheck(skip, 12, 515);
  moe::Workspace<double> ws;
  RowMatrix<double> x = random_matrix(12, 5, 505), y(12, 5);
  top_p.forward(x, y, ws);
  CHECK(ws.stats.dropped > 0);
}

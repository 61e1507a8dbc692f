// Router backward against finite differences: L = sum_t,j c_tj * gate_tj for fixed random
// coefficients, through every gating rule (selection is fixed near the point, as routing
// decisions are piecewise constant).
#include <moe/contracts/concepts.hpp>
#include <moe/core/parameters.hpp>
#include <moe/router/top_k_router.hpp>

#include <catch2/catch.hpp>

#include <random>

#include "support/finite_difference.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;

using moe::test::random_matrix;

template <class Router>
void check_router_backward(Router router, Index T) {
  const Index d = router.input_dim(), E = router.num_experts(), k = router.k();
  RowMatrix<double> x = random_matrix(T, d, 21);
  const RowMatrix<double> c = random_matrix(T, k, 22);
  // The coefficients follow the (token, expert) pair, so the loss is a smooth function as
  // long as the selected set does not change.
  moe::RoutingResult<double> base;
  router.route(x, base);
  const auto loss = [&] {
    moe::RoutingResult<double> r;
    router.route(x, r);
    double l = 0;
    for (Index t = 0; t < T; ++t)
      for (Index j = 0; j < k; ++j) {
        const auto i = static_cast<size_t>(t * k + j);
        REQUIRE(r.expert[i] == base.expert[i]);
        l += c(t, j) * r.gate[i];
      }
    return l;
  };
  RowMatrix<double> dlogits = RowMatrix<double>::Zero(T, E), dx = RowMatrix<double>::Zero(T, d);
  Router grad = moe::zeros_like(router);
  router.backward(moe::RouterBackward<double>{.x = x, .routing = base, .dgate = c.data(), .dlogits = dlogits, .dx = dx},
                  grad, moe::no_losses);
  CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(x, loss)) < 1e-7);
  CHECK(moe::test::relative_gap(grad.weight(), moe::test::numeric_gradient(router.weight(), loss)) < 1e-7);
  if (router.bias().size() != 0)
    CHECK(moe::test::relative_gap(grad.bias(), moe::test::numeric_gradient(router.bias(), loss)) < 1e-7);
}

}  // namespace

TEST_CASE("softmax top-k backward matches finite differences", "[router][backward]") {
  for (const bool renorm : {true, false})
    for (const Index k : {Index{1}, Index{3}, Index{6}})
      check_router_backward(moe::SoftmaxTopKRouter<double>(random_matrix(6, 5, 1), k, moe::SoftmaxTopK<double>{renorm}), 7);
}

TEST_CASE("top-k then softmax with bias backward matches finite differences", "[router][backward]") {
  for (const Index k : {Index{1}, Index{2}, Index{6}})
    check_router_backward(moe::TopKSoftmaxRouter<double>(random_matrix(6, 5, 2), k, {}, random_matrix(6, 1, 3)), 7);
}

TEST_CASE("sigmoid group-limited backward matches finite differences, the correction bias gets none",
          "[router][backward]") {
  for (const bool renorm : {true, false}) {
    moe::SigmoidGroupLimited<double> g;
    g.n_group = 4;
    g.topk_group = 2;
    g.routed_scaling_factor = 2.5;
    g.renormalize = renorm;
    g.correction_bias = random_matrix(8, 1, 4, 0.2);
    moe::GroupLimitedRouter<double> router(random_matrix(8, 5, 5), 3, g);
    check_router_backward(router, 9);
    int params = 0;
    router.for_each_parameter([&](const std::string& name, auto&&) {
      ++params;
      CHECK(name == "gate.weight");
    });
    CHECK(params == 1);
  }
}

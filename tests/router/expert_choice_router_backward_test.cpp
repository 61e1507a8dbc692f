// Expert-choice backward against finite differences: L = sum_i c_i gate_i + sum A .* logits,
// with each coefficient following its (token, expert) pair, while the choices stay fixed.
#include <moe/contracts/concepts.hpp>
#include <moe/core/parameters.hpp>
#include <moe/router/expert_choice_router.hpp>

#include <catch2/catch.hpp>

#include <random>
#include <string>

#include "support/finite_difference.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;

using moe::test::random_matrix;

void check_expert_choice_backward(double capacity_factor) {
  const Index T = 8, d = 5, E = 4;
  moe::ExpertChoiceRouter<double> router(random_matrix(E, d, 11), capacity_factor);
  RowMatrix<double> x = random_matrix(T, d, 12);
  const RowMatrix<double> coeff = random_matrix(T, E, 13);  // by (token, expert)
  const RowMatrix<double> a = random_matrix(T, E, 14, 0.3);
  moe::RoutingResult<double> base;
  router.route(x, base);
  const auto loss = [&] {
    moe::RoutingResult<double> r;
    router.route(x, r);
    REQUIRE(r.token == base.token);
    REQUIRE(r.expert == base.expert);
    double l = (a.array() * r.logits.array()).sum();
    for (size_t i = 0; i < r.token.size(); ++i) l += coeff(r.token[i], r.expert[i]) * r.gate[i];
    return l;
  };
  std::vector<double> dgate(base.token.size());
  for (size_t i = 0; i < dgate.size(); ++i) dgate[i] = coeff(base.token[i], base.expert[i]);
  RowMatrix<double> dlogits = a, dx = RowMatrix<double>::Zero(T, d);
  auto grad = moe::zeros_like(router);
  router.backward(moe::RouterBackward<double>{.x = x, .routing = base, .dgate = dgate.data(), .dlogits = dlogits, .dx = dx},
                  grad, moe::no_losses);
  CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(x, loss)) < 1e-7);
  CHECK(moe::test::relative_gap(grad.weight(), moe::test::numeric_gradient(router.weight(), loss)) < 1e-7);
}

}  // namespace

TEST_CASE("expert-choice backward matches finite differences through the softmax over experts",
          "[router][backward][expert_choice]") {
  // c = 1, 4 (a token may be taken by several experts), and 8 = T (every expert takes all).
  for (const double cf : {0.5, 2.0, 4.0}) {
    INFO("capacity factor " << cf);
    check_expert_choice_backward(cf);
  }
}

TEST_CASE("expert choice names its weight as in the checkpoint", "[router][backward][expert_choice]") {
  moe::ExpertChoiceRouter<float> router(4, 3, 1.0);
  int n = 0;
  router.for_each_parameter([&](const std::string& name, auto&&) {
    ++n;
    CHECK(name == "gate.weight");
  });
  CHECK(n == 1);
}

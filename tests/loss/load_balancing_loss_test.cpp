// The load-balancing (aux) loss against its definition.
#include <moe/loss/load_balancing_loss.hpp>
#include <moe/router/top_k_router.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "support/finite_difference.hpp"
#include "support/random.hpp"

namespace {
using moe::Index;
using moe::RowMatrix;

/// A routing result for T = E * m tokens where token t chooses experts t, t+1, ... (mod E)
/// and all logits are equal: perfect balance, uniform probabilities.
moe::RoutingResult<double> balanced(Index E, Index k, Index m) {
  moe::RoutingResult<double> r;
  const Index T = E * m;
  r.reset(T, E, T * k, k);
  r.logits = RowMatrix<double>::Zero(T, E);
  for (Index t = 0; t < T; ++t)
    for (Index j = 0; j < k; ++j) {
      r.token[size_t(t * k + j)] = t;
      r.expert[size_t(t * k + j)] = (t + j) % E;
      r.gate[size_t(t * k + j)] = 1.0 / double(k);
    }
  return r;
}

/// The routing of 11 N(0, 1) tokens by a softmax top-2 router of 6 experts (N(0, 1) weights).
moe::RoutingResult<double> routed_logits() {
  std::mt19937 gen(7);
  const RowMatrix<double> x = moe::test::random_matrix<double>(11, 5, gen);
  const moe::SoftmaxTopKRouter<double> router(moe::test::random_matrix<double>(6, 5, gen), 2);
  moe::RoutingResult<double> r;
  router.route(x, r);
  return r;
}
}  // namespace

TEST_CASE("the load-balancing loss is k at perfect balance, 1 with unit normalisation", "[loss]") {
  for (const Index k : {Index{1}, Index{2}, Index{4}}) {
    const auto r = balanced(8, k, 3);
    REQUIRE(moe::LoadBalancingLoss{}(r) == Approx(double(k)).epsilon(1e-14));
    REQUIRE(moe::LoadBalancingLoss{moe::LoadBalancingLoss::Normalization::unit}(r) == Approx(1.0).epsilon(1e-14));
  }
}

TEST_CASE("the load-balancing loss is E * sum f_e P_e from the logits and the choices", "[loss]") {
  std::mt19937 gen(1);
  const RowMatrix<double> x = moe::test::random_matrix<double>(20, 5, gen);
  moe::SoftmaxTopKRouter<double> router(moe::test::random_matrix<double>(6, 5, gen), 2);
  moe::RoutingResult<double> r;
  router.route(x, r);
  std::vector<double> f(6, 0.0), p(6, 0.0);
  for (Index e : r.expert) f[size_t(e)] += 1.0 / 20;
  for (Index t = 0; t < 20; ++t) {
    double sum = 0;
    for (Index e = 0; e < 6; ++e) sum += std::exp(r.logits(t, e));
    for (Index e = 0; e < 6; ++e) p[size_t(e)] += std::exp(r.logits(t, e)) / sum / 20;
  }
  double expected = 0;
  for (size_t e = 0; e < 6; ++e) expected += 6 * f[e] * p[e];
  REQUIRE(moe::LoadBalancingLoss{}(r) == Approx(expected).epsilon(1e-13));
}

TEST_CASE("the load-balancing loss of an empty batch is zero", "[loss]") {
  moe::RoutingResult<float> r;
  r.reset(0, 4, 0, 2);
  r.logits.resize(0, 4);
  REQUIRE(moe::LoadBalancingLoss{}(r) == 0.0f);
}

TEST_CASE("the load-balancing loss's gradient with respect to the logits matches finite differences", "[loss][backward]") {
  const moe::RoutingResult<double> r = routed_logits();
  for (const auto norm : {moe::LoadBalancingLoss::Normalization::transformers, moe::LoadBalancingLoss::Normalization::unit}) {
    const moe::LoadBalancingLoss aux{norm};
    RowMatrix<double> d = RowMatrix<double>::Zero(11, 6);
    aux.backward(r, 0.7, d);
    // The choices (f) stay fixed while the logits move: differentiate with r's triples.
    moe::RoutingResult<double> moved = r;
    const auto numeric = moe::test::numeric_gradient(moved.logits, [&] { return 0.7 * aux(moved); });
    CHECK(moe::test::relative_gap(d, numeric) < 1e-7);
  }
}

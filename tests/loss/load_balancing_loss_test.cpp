// The aux and z losses against their definitions.
#include <moe/loss/load_balancing_loss.hpp>
#include <moe/loss/z_loss.hpp>
#include <moe/router/top_k_router.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <random>

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
  std::normal_distribution<double> n;
  RowMatrix<double> x(20, 5), w(6, 5);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = n(gen);
  for (Index i = 0; i < w.size(); ++i) w.data()[i] = n(gen);
  moe::SoftmaxTopKRouter<double> router(w, 2);
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

TEST_CASE("the z-loss is the mean squared logsumexp", "[loss]") {
  auto r = balanced(4, 1, 2);  // zero logits: logsumexp = log 4
  REQUIRE(moe::RouterZLoss{}(r) == Approx(std::log(4.0) * std::log(4.0)).epsilon(1e-14));
  r.logits(0, 2) = 1000.0;  // stays finite: logsumexp = 1000 for that token
  const double lse = std::log(4.0);
  REQUIRE(moe::RouterZLoss{}(r) == Approx((1000.0 * 1000.0 + 7 * lse * lse) / 8).epsilon(1e-12));
}

TEST_CASE("losses of an empty batch are zero", "[loss]") {
  moe::RoutingResult<float> r;
  r.reset(0, 4, 0, 2);
  r.logits.resize(0, 4);
  REQUIRE(moe::LoadBalancingLoss{}(r) == 0.0f);
  REQUIRE(moe::RouterZLoss{}(r) == 0.0f);
}

#include "support/finite_difference.hpp"

TEST_CASE("aux and z loss gradients with respect to the logits match finite differences", "[loss][backward]") {
  std::mt19937 gen(7);
  std::normal_distribution<double> n;
  RowMatrix<double> x(11, 5), w(6, 5);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = n(gen);
  for (Index i = 0; i < w.size(); ++i) w.data()[i] = n(gen);
  moe::SoftmaxTopKRouter<double> router(w, 2);
  moe::RoutingResult<double> r;
  router.route(x, r);
  for (const auto norm : {moe::LoadBalancingLoss::Normalization::transformers, moe::LoadBalancingLoss::Normalization::unit}) {
    const moe::LoadBalancingLoss aux{norm};
    RowMatrix<double> d = RowMatrix<double>::Zero(11, 6);
    aux.backward(r, 0.7, d);
    // The choices (f) stay fixed while the logits move: differentiate with r's triples.
    const auto numeric = moe::test::numeric_gradient(r.logits, [&] { return 0.7 * aux(r); });
    CHECK(moe::test::relative_gap(d, numeric) < 1e-7);
  }
  RowMatrix<double> dz = RowMatrix<double>::Zero(11, 6);
  moe::RouterZLoss{}.backward(r, 1.3, dz);
  CHECK(moe::test::relative_gap(dz, moe::test::numeric_gradient(r.logits, [&] { return 1.3 * moe::RouterZLoss{}(r); })) < 1e-7);
}

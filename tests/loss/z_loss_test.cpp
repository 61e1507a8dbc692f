// The router z-loss of ST-MoE against its definition: mean over tokens of logsumexp^2.
#include <moe/loss/z_loss.hpp>
#include <moe/router/top_k_router.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <random>

#include "support/finite_difference.hpp"
#include "support/random.hpp"

using moe::Index;
using moe::RowMatrix;

TEST_CASE("the z-loss is the mean squared logsumexp", "[loss]") {
  moe::RoutingResult<double> r;  // 8 tokens of 4 zero logits: logsumexp = log 4
  r.reset(8, 4, 8, 1);
  r.logits = RowMatrix<double>::Zero(8, 4);
  REQUIRE(moe::RouterZLoss{}(r) == Approx(std::log(4.0) * std::log(4.0)).epsilon(1e-14));
  r.logits(0, 2) = 1000.0;  // stays finite: logsumexp = 1000 for that token
  const double lse = std::log(4.0);
  REQUIRE(moe::RouterZLoss{}(r) == Approx((1000.0 * 1000.0 + 7 * lse * lse) / 8).epsilon(1e-12));
}

TEST_CASE("the z-loss of an empty batch is zero", "[loss]") {
  moe::RoutingResult<float> r;
  r.reset(0, 4, 0, 2);
  r.logits.resize(0, 4);
  REQUIRE(moe::RouterZLoss{}(r) == 0.0f);
}

TEST_CASE("the z-loss's gradient with respect to the logits matches finite differences", "[loss][backward]") {
  std::mt19937 gen(7);
  const RowMatrix<double> x = moe::test::random_matrix<double>(11, 5, gen);
  const moe::SoftmaxTopKRouter<double> router(moe::test::random_matrix<double>(6, 5, gen), 2);
  moe::RoutingResult<double> r;
  router.route(x, r);
  RowMatrix<double> dz = RowMatrix<double>::Zero(11, 6);
  moe::RouterZLoss{}.backward(r, 1.3, dz);
  CHECK(moe::test::relative_gap(dz, moe::test::numeric_gradient(r.logits, [&] { return 1.3 * moe::RouterZLoss{}(r); })) < 1e-7);
}

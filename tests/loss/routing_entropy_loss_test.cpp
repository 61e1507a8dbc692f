// The routing-entropy loss (top-p's dynamic loss, Huang et al. 2024) against its definition,
// mean over tokens of -sum_e p log p with p = softmax(logits), written as loops; its bounds;
// its gradient against finite differences; masked (-inf) logits.
#include <moe/loss/routing_entropy_loss.hpp>
#include <moe/router/top_k_router.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "support/finite_difference.hpp"
#include "support/random.hpp"

using moe::Index;
using moe::RowMatrix;

namespace {

/// mean_t -sum_e p_te log p_te by loops, p from exp(z - max) / sum.
double entropy_by_loops(const RowMatrix<double>& z) {
  double total = 0;
  for (Index t = 0; t < z.rows(); ++t) {
    const double max = z.row(t).maxCoeff();
    double sum = 0;
    for (Index e = 0; e < z.cols(); ++e) sum += std::exp(z(t, e) - max);
    for (Index e = 0; e < z.cols(); ++e) {
      const double p = std::exp(z(t, e) - max) / sum;
      if (p > 0) total -= p * std::log(p);
    }
  }
  return total / static_cast<double>(z.rows());
}

moe::RoutingResult<double> entropy_routing(const RowMatrix<double>& logits) {
  moe::RoutingResult<double> r;
  r.reset(logits.rows(), logits.cols(), 0, 0);
  r.logits = logits;
  return r;
}

}  // namespace

TEST_CASE("the routing entropy is the mean entropy of softmax(logits), between 0 and log E", "[loss][entropy]") {
  const RowMatrix<double> z = moe::test::random_matrix(13, 6, 41, 2.0);
  const double h = moe::RoutingEntropyLoss{}(entropy_routing(z));
  CHECK(h == Approx(entropy_by_loops(z)).epsilon(1e-13));
  CHECK(h > 0.0);
  CHECK(h < std::log(6.0));
  // Equal logits: log E. One logit far above the rest: close to 0.
  CHECK(moe::RoutingEntropyLoss{}(entropy_routing(RowMatrix<double>::Constant(3, 5, 0.7))) ==
        Approx(std::log(5.0)).epsilon(1e-14));
  RowMatrix<double> peaked = RowMatrix<double>::Zero(1, 4);
  peaked(0, 2) = 60.0;
  CHECK(moe::RoutingEntropyLoss{}(entropy_routing(peaked)) < 1e-20);
}

TEST_CASE("the routing entropy of an empty batch is zero", "[loss][entropy]") {
  moe::RoutingResult<float> r;
  r.reset(0, 4, 0, 0);
  r.logits.resize(0, 4);
  CHECK(moe::RoutingEntropyLoss{}(r) == 0.0f);
}

TEST_CASE("masked experts (-inf logits) add nothing to the routing entropy or its gradient", "[loss][entropy]") {
  RowMatrix<double> z = moe::test::random_matrix(4, 5, 42);
  RowMatrix<double> open = z.leftCols(3);
  z.col(3).setConstant(-std::numeric_limits<double>::infinity());
  z.col(4).setConstant(-std::numeric_limits<double>::infinity());
  CHECK(moe::RoutingEntropyLoss{}(entropy_routing(z)) == Approx(entropy_by_loops(open)).epsilon(1e-13));
  RowMatrix<double> dz = RowMatrix<double>::Zero(4, 5), dopen = RowMatrix<double>::Zero(4, 3);
  moe::RoutingEntropyLoss{}.backward(entropy_routing(z), 1.0, dz);
  moe::RoutingEntropyLoss{}.backward(entropy_routing(open), 1.0, dopen);
  CHECK(dz.allFinite());
  CHECK(dz.rightCols(2).cwiseAbs().maxCoeff() == 0.0);
  CHECK(moe::test::relative_gap(dz.leftCols(3), dopen) < 1e-14);
}

TEST_CASE("the routing entropy's gradient with respect to the logits matches finite differences",
          "[loss][entropy][backward]") {
  for (const Index E : {2, 5, 9}) {
    INFO("E " << E);
    RowMatrix<double> z = moe::test::random_matrix(7, E, static_cast<unsigned>(50 + E), 1.5);
    RowMatrix<double> dz = RowMatrix<double>::Constant(7, E, 0.25);  // backward adds to what is there
    moe::RoutingEntropyLoss{}.backward(entropy_routing(z), 1.7, dz);
    const auto loss = [&] { return 1.7 * moe::RoutingEntropyLoss{}(entropy_routing(z)); };
    const RowMatrix<double> expected = moe::test::numeric_gradient(z, loss).array() + 0.25;
    CHECK(moe::test::relative_gap(dz, expected) < 1e-8);
  }
}

TEST_CASE("the routing entropy through the loss protocol, from a router's routing", "[loss][entropy]") {
  const moe::TopPRouter<double> router(moe::test::random_matrix(6, 4, 43), 3, moe::TopP<double>{0.7});
  const RowMatrix<double> x = moe::test::random_matrix(10, 4, 44);
  moe::RoutingResult<double> r;
  router.route(x, r);
  const moe::LossInput<double> in{r, moe::BackwardContext{}};
  CHECK(moe::RoutingEntropyLoss{}.value(in) == Approx(entropy_by_loops(r.logits)).epsilon(1e-13));
}

// Gradients of Shazeer et al.'s balancing losses against finite differences: cv^2 itself, the
// importance loss through the gates, and the load loss through clean, stddev and the noisy
// logits (its threshold), each for fixed top-k membership.
#include <moe/loss/importance_loss.hpp>

#include <catch2/catch.hpp>

#include <random>
#include <vector>

#include "support/finite_difference.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::Vector;

using moe::test::random_matrix;

}  // namespace

TEST_CASE("cv^2's gradient matches finite differences", "[loss][backward][importance]") {
  for (const unsigned seed : {1u, 2u, 3u}) {
    Vector<double> v = random_matrix(7, 1, seed).cwiseAbs();
    const auto loss = [&] { return moe::cv_squared(v); };
    CHECK(moe::test::relative_gap(moe::cv_squared_gradient(v), moe::test::numeric_gradient(v, loss)) < 1e-7);
  }
  // A constant vector is a minimum: zero gradient.
  CHECK(moe::cv_squared_gradient(Vector<double>(Vector<double>::Constant(4, 2.5))).isZero(1e-15));
}

TEST_CASE("the importance loss's gradient per gate matches finite differences", "[loss][backward][importance]") {
  const Index T = 6, E = 4, k = 2;
  moe::RoutingResult<double> r;
  r.reset(T, E, T * k, k);
  std::mt19937 gen(4);
  std::uniform_real_distribution<double> u(0.05, 1.0);
  for (Index t = 0; t < T; ++t)
    for (Index j = 0; j < k; ++j) {
      const auto i = static_cast<size_t>(t * k + j);
      r.token[i] = t;
      r.expert[i] = (t + 3 * j) % E;
      r.gate[i] = u(gen);
    }
  Eigen::Map<RowMatrix<double>> gates(r.gate.data(), T, k);
  const auto loss = [&] { return 2.5 * moe::ImportanceLoss{}(r); };
  std::vector<double> dgate(r.gate.size(), 1.0);  // adds to what is there
  moe::ImportanceLoss{}.backward(r, 2.5, dgate.data());
  RowMatrix<double> analytic = Eigen::Map<RowMatrix<double>>(dgate.data(), T, k).array() - 1.0;
  CHECK(moe::test::relative_gap(analytic, moe::test::numeric_gradient(gates, loss)) < 1e-7);
}

TEST_CASE("the load loss's gradient through clean, stddev and the threshold matches finite differences",
          "[loss][backward][load]") {
  const Index T = 7, E = 5;
  for (const Index k : {Index{1}, Index{2}, Index{4}}) {
    INFO("k " << k);
    moe::NoisyGatingTerms<double> terms;
    terms.clean = random_matrix(T, E, 10);
    terms.stddev = random_matrix(T, E, 11).cwiseAbs().array() + 0.3;
    terms.noisy = terms.clean + random_matrix(T, E, 12).cwiseProduct(terms.stddev);
    const RowMatrix<double> p0 = moe::prob_in_top_k(terms, k);
    std::vector<Index> top0(static_cast<size_t>(T * (k + 1)));
    for (Index t = 0; t < T; ++t) moe::kernels::top_k(terms.noisy.row(t).data(), E, k + 1, top0.data() + t * (k + 1));
    const auto loss = [&] {
      // Membership and threshold positions must not move under the perturbation.
      std::vector<Index> top(static_cast<size_t>(k + 1));
      for (Index t = 0; t < T; ++t) {
        moe::kernels::top_k(terms.noisy.row(t).data(), E, k + 1, top.data());
        REQUIRE(std::equal(top.begin(), top.end(), top0.begin() + t * (k + 1)));
      }
      return 1.7 * moe::LoadLoss{}(terms, k);
    };
    RowMatrix<double> dclean = RowMatrix<double>::Zero(T, E), dsd = dclean, dnoisy = dclean;
    moe::LoadLoss{}.backward(terms, k, 1.7, dclean, dsd, dnoisy);
    CHECK(moe::test::relative_gap(dclean, moe::test::numeric_gradient(terms.clean, loss)) < 1e-7);
    CHECK(moe::test::relative_gap(dsd, moe::test::numeric_gradient(terms.stddev, loss)) < 1e-7);
    CHECK(moe::test::relative_gap(dnoisy, moe::test::numeric_gradient(terms.noisy, loss)) < 1e-7);
  }
}

TEST_CASE("the load loss has no gradient without noise or with k = E", "[loss][backward][load]") {
  const Index T = 4, E = 3;
  moe::NoisyGatingTerms<double> terms{random_matrix(T, E, 20), RowMatrix<double>::Zero(T, E), random_matrix(T, E, 20)};
  RowMatrix<double> dclean = RowMatrix<double>::Zero(T, E), dsd = dclean, dnoisy = dclean;
  moe::LoadLoss{}.backward(terms, 1, 1.0, dclean, dsd, dnoisy);
  CHECK(dclean.isZero(0.0));
  CHECK(dsd.isZero(0.0));
  CHECK(dnoisy.isZero(0.0));
  terms.stddev.setOnes();
  moe::LoadLoss{}.backward(terms, E, 1.0, dclean, dsd, dnoisy);
  CHECK(dclean.isZero(0.0));
  CHECK(dnoisy.isZero(0.0));
  RowMatrix<double> wrong = RowMatrix<double>::Zero(T, E + 1);
  REQUIRE_THROWS_WITH(moe::LoadLoss{}.backward(terms, 1, 1.0, dclean, wrong, dnoisy),
                      "LoadLoss::backward(): dstddev (as noisy) expected shape [4, 3], got [4, 4]");
}

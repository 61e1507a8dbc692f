// DomainLoss (issue #18): the mean over tokens of -log q[t, domain_ids[t]] against loops, its
// gradient with respect to the classifier's logits z (q = softmax(z)) against central finite
// differences of the value, and its argument errors.
#include <moe/loss/domain_loss.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/errors.hpp"
#include "support/finite_difference.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::test::random_matrix;

/// Row-wise softmax by loops.
RowMatrix<double> domain_loss_softmax(const RowMatrix<double>& z) {
  RowMatrix<double> q(z.rows(), z.cols());
  for (Index t = 0; t < z.rows(); ++t) {
    double max = z(t, 0);
    for (Index j = 1; j < z.cols(); ++j) max = std::max(max, z(t, j));
    double sum = 0;
    for (Index j = 0; j < z.cols(); ++j) sum += (q(t, j) = std::exp(z(t, j) - max));
    for (Index j = 0; j < z.cols(); ++j) q(t, j) /= sum;
  }
  return q;
}

std::vector<std::int64_t> domain_loss_ids(Index T, Index D, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<std::int64_t> pick(0, D - 1);
  std::vector<std::int64_t> ids(static_cast<size_t>(T));
  for (auto& id : ids) id = pick(gen);
  return ids;
}

}  // namespace

TEST_CASE("domain loss is the mean of -log q[t, id] over the tokens", "[loss][domain]") {
  for (const Index D : {Index{1}, Index{2}, Index{3}, Index{7}}) {
    const Index T = 13;
    const RowMatrix<double> q = domain_loss_softmax(random_matrix(T, D, 10 + static_cast<unsigned>(D), 2.0));
    const auto ids = domain_loss_ids(T, D, 20 + static_cast<unsigned>(D));
    double expected = 0;
    for (Index t = 0; t < T; ++t) expected -= std::log(q(t, ids[size_t(t)])) / double(T);
    INFO("D " << D);
    CHECK(moe::DomainLoss{}(moe::ConstMatrixRef<double>(q), ids) == Approx(expected).epsilon(1e-14));
    if (D == 1) CHECK(moe::DomainLoss{}(moe::ConstMatrixRef<double>(q), ids) == 0.0);
  }
  // A hand case: q rows (0.5, 0.25, 0.25) and (0.1, 0.2, 0.7), labels 0 and 2.
  RowMatrix<double> q(2, 3);
  q << 0.5, 0.25, 0.25, 0.1, 0.2, 0.7;
  const std::vector<std::int64_t> ids = {0, 2};
  CHECK(moe::DomainLoss{}(moe::ConstMatrixRef<double>(q), ids) ==
        Approx(-(std::log(0.5) + std::log(0.7)) / 2).epsilon(1e-15));
  // The overload on any Eigen matrix (a RowMatrix as domain_probs returns, an expression).
  CHECK(moe::DomainLoss{}(q, ids) == Approx(-(std::log(0.5) + std::log(0.7)) / 2).epsilon(1e-15));
  CHECK(moe::DomainLoss{}(q.topRows(1), std::vector<std::int64_t>{1}) == Approx(-std::log(0.25)).epsilon(1e-15));
  // Uniform q over D domains: log D.
  const RowMatrix<double> uniform = RowMatrix<double>::Constant(4, 5, 0.2);
  const std::vector<std::int64_t> four = {0, 4, 2, 3};
  CHECK(moe::DomainLoss{}(moe::ConstMatrixRef<double>(uniform), four) == Approx(std::log(5.0)).epsilon(1e-14));
}

TEST_CASE("domain loss in float", "[loss][domain]") {
  RowMatrix<float> q(2, 2);
  q << 0.25f, 0.75f, 0.5f, 0.5f;
  const std::vector<std::int64_t> ids = {1, 0};
  CHECK(moe::DomainLoss{}(moe::ConstMatrixRef<float>(q), ids) ==
        Approx(-(std::log(0.75) + std::log(0.5)) / 2).epsilon(1e-6));
}

TEST_CASE("domain loss of no tokens is zero", "[loss][domain]") {
  const RowMatrix<double> q(0, 3);
  const std::vector<std::int64_t> none;
  CHECK(moe::DomainLoss{}(moe::ConstMatrixRef<double>(q), none) == 0.0);
  RowMatrix<double> dz(0, 3);
  moe::DomainLoss{}.backward<double>(q, none, 1.0, dz);
}

TEST_CASE("domain loss gradient with respect to the classifier's logits matches finite differences",
          "[loss][domain][backward]") {
  for (const Index D : {Index{1}, Index{2}, Index{4}, Index{6}})
    for (const double w : {1.0, 0.3, -2.0}) {
      INFO("D " << D << ", weight " << w);
      const Index T = 11;
      RowMatrix<double> z = random_matrix(T, D, 30 + static_cast<unsigned>(D), 1.5);
      const auto ids = domain_loss_ids(T, D, 40 + static_cast<unsigned>(D));
      const RowMatrix<double> q = domain_loss_softmax(z);
      // backward adds into what dz holds.
      const RowMatrix<double> before = random_matrix(T, D, 50);
      RowMatrix<double> dz = before;
      moe::DomainLoss{}.backward<double>(q, ids, w, dz);
      const auto numeric = moe::test::numeric_gradient(z, [&] {
        const RowMatrix<double> qz = domain_loss_softmax(z);
        return w * moe::DomainLoss{}(moe::ConstMatrixRef<double>(qz), ids);
      });
      const RowMatrix<double> added = dz - before;
      if (D == 1) {
        CHECK(added.cwiseAbs().maxCoeff() < 1e-15);
        CHECK(numeric.cwiseAbs().maxCoeff() < 1e-9);
      } else {
        CHECK(moe::test::relative_gap(added, numeric) < 1e-7);
      }
      // Each row of the gradient sums to 0 (q and the one-hot both sum to 1).
      RowMatrix<double> fresh = RowMatrix<double>::Zero(T, D);
      moe::DomainLoss{}.backward<double>(q, ids, w, fresh);
      for (Index t = 0; t < T; ++t) CHECK(std::abs(fresh.row(t).sum()) < 1e-15);
      // Weight 0 adds nothing.
      RowMatrix<double> untouched = before;
      moe::DomainLoss{}.backward<double>(q, ids, 0.0, untouched);
      CHECK(untouched == before);
    }
}

TEST_CASE("domain loss refuses bad ids and a dz of the wrong shape", "[loss][domain][errors]") {
  const RowMatrix<double> q = domain_loss_softmax(random_matrix(4, 3, 60));
  const moe::ConstMatrixRef<double> qr(q);
  RowMatrix<double> dz = RowMatrix<double>::Zero(4, 3);
  SECTION("ids length") {
    const std::vector<std::int64_t> three = {0, 1, 2};
    const std::vector<std::string> parts = {"domain_ids length (one per token; ForwardContext::domain_ids)",
                                            "expected 4, got 3"};
    moe::test::require_invalid([&] { (void)moe::DomainLoss{}(qr, three); },
                                {"DomainLoss::operator()", parts[0], parts[1]});
    moe::test::require_invalid([&] { moe::DomainLoss{}.backward<double>(q, three, 1.0, dz); },
                                {"DomainLoss::backward()", parts[0], parts[1]});
    const std::vector<std::int64_t> none;
    moe::test::require_invalid([&] { (void)moe::DomainLoss{}(qr, none); }, {"expected 4, got 0"});
  }
  SECTION("ids out of range") {
    const std::vector<std::int64_t> high = {0, 1, 3, 2}, negative = {-1, 0, 1, 2};
    moe::test::require_invalid([&] { (void)moe::DomainLoss{}(qr, high); },
                                {"DomainLoss::operator()", "domain_ids[2]", "expected in [0, num_domains = 3)",
                                 "got 3"});
    moe::test::require_invalid([&] { moe::DomainLoss{}.backward<double>(q, negative, 1.0, dz); },
                                {"DomainLoss::backward()", "domain_ids[0]", "got -1"});
  }
  SECTION("dz shape") {
    const std::vector<std::int64_t> ids = {0, 1, 2, 2};
    RowMatrix<double> wrong = RowMatrix<double>::Zero(4, 2);
    moe::test::require_invalid([&] { moe::DomainLoss{}.backward<double>(q, ids, 1.0, wrong); },
                                {"DomainLoss::backward()", "dz (as q)", "expected shape [4, 3]", "got [4, 2]"});
    RowMatrix<double> tall = RowMatrix<double>::Zero(5, 3);
    moe::test::require_invalid([&] { moe::DomainLoss{}.backward<double>(q, ids, 1.0, tall); },
                                {"dz (as q)", "got [5, 3]"});
  }
}

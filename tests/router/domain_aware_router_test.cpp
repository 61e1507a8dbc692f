// DomainAwareRouter (issue #18) against a scalar reference written from the rule (golden-variety
// README, domain_aware): q = softmax(x C^T) over D domains, logits = x Wg^T + q A (A used as
// stored), then softmax, top-k, renormalise; its parameters' names and its shape errors.
#include <moe/router/domain_aware_router.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "support/errors.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::test::random_matrix;

/// What the rule computes for every token, by loops.
struct DomainAwareReference {
  RowMatrix<double> domain_logits, q, logits, gates;
};

DomainAwareReference domain_aware_reference(const RowMatrix<double>& x, const RowMatrix<double>& wg,
                                            const RowMatrix<double>& c, const RowMatrix<double>& a, Index k,
                                            bool renorm, const moe::Vector<double>& bias = {}) {
  const Index T = x.rows(), d = x.cols(), E = wg.rows(), D = c.rows();
  DomainAwareReference out{RowMatrix<double>::Zero(T, D), RowMatrix<double>::Zero(T, D),
                           RowMatrix<double>::Zero(T, E), RowMatrix<double>::Zero(T, E)};
  for (Index t = 0; t < T; ++t) {
    for (Index j = 0; j < D; ++j)
      for (Index i = 0; i < d; ++i) out.domain_logits(t, j) += x(t, i) * c(j, i);
    double max = out.domain_logits(t, 0);
    for (Index j = 1; j < D; ++j) max = std::max(max, out.domain_logits(t, j));
    double sum = 0;
    for (Index j = 0; j < D; ++j) sum += (out.q(t, j) = std::exp(out.domain_logits(t, j) - max));
    for (Index j = 0; j < D; ++j) out.q(t, j) /= sum;
    std::vector<double> p(static_cast<size_t>(E));
    for (Index e = 0; e < E; ++e) {
      double z = bias.size() != 0 ? bias[e] : 0.0;
      for (Index i = 0; i < d; ++i) z += x(t, i) * wg(e, i);
      for (Index j = 0; j < D; ++j) z += out.q(t, j) * a(j, e);
      out.logits(t, e) = z;
    }
    double zmax = out.logits(t, 0);
    for (Index e = 1; e < E; ++e) zmax = std::max(zmax, out.logits(t, e));
    double psum = 0;
    for (Index e = 0; e < E; ++e) psum += (p[size_t(e)] = std::exp(out.logits(t, e) - zmax));
    for (Index e = 0; e < E; ++e) p[size_t(e)] /= psum;
    std::vector<Index> order(static_cast<size_t>(E));
    std::iota(order.begin(), order.end(), Index{0});
    std::stable_sort(order.begin(), order.end(), [&](Index u, Index v) { return p[size_t(u)] > p[size_t(v)]; });
    double kept = 0;
    for (Index j = 0; j < k; ++j) kept += p[size_t(order[size_t(j)])];
    for (Index j = 0; j < k; ++j) {
      const Index e = order[size_t(j)];
      out.gates(t, e) = renorm ? p[size_t(e)] / kept : p[size_t(e)];
    }
  }
  return out;
}

}  // namespace

TEST_CASE("domain-aware router: logits x Wg^T + q A with q = softmax(x C^T), gates as the scalar reference",
          "[router][domain]") {
  struct Config {
    Index E, D, k;
    bool renorm;
  };
  for (const Config c : {Config{4, 2, 1, true}, Config{6, 3, 2, true}, Config{6, 3, 2, false}, Config{8, 5, 3, true},
                         Config{5, 1, 2, true}, Config{7, 4, 7, true}}) {
    INFO("E " << c.E << ", D " << c.D << ", k " << c.k << ", renormalise " << c.renorm);
    const Index d = 6, T = 21;
    const RowMatrix<double> wg = random_matrix(c.E, d, 11), C = random_matrix(c.D, d, 12),
                            A = random_matrix(c.D, c.E, 13, 2.0), x = random_matrix(T, d, 14);
    const moe::DomainAwareSoftmaxTopKRouter<double> router(
        moe::SoftmaxTopKRouter<double>(wg, c.k, moe::SoftmaxTopK<double>{c.renorm}), C, A);
    CHECK(router.num_domains() == c.D);
    CHECK(router.num_experts() == c.E);
    CHECK(router.input_dim() == d);
    CHECK(router.k() == c.k);
    const auto ref = domain_aware_reference(x, wg, C, A, c.k, c.renorm);
    moe::RoutingResult<double> out;
    router.route(x, out);
    REQUIRE(out.size() == T * c.k);
    CHECK((out.logits - ref.logits).cwiseAbs().maxCoeff() < 1e-12);
    CHECK((out.dense_gates() - ref.gates).cwiseAbs().maxCoeff() < 1e-13);

    RowMatrix<double> z(T, c.D);
    router.domain_logits(x, z);
    CHECK((z - ref.domain_logits).cwiseAbs().maxCoeff() < 1e-12);
    const RowMatrix<double> q = router.domain_probs(x);
    CHECK((q - ref.q).cwiseAbs().maxCoeff() < 1e-14);
    for (Index t = 0; t < T; ++t) {
      CHECK(q.row(t).sum() == Approx(1.0).epsilon(1e-14));
      CHECK(q.row(t).minCoeff() > 0);
    }
    RowMatrix<double> q2(T, c.D);
    router.domain_probs(x, q2, moe::GemmKernel::batch_invariant);
    CHECK((q2 - ref.q).cwiseAbs().maxCoeff() < 1e-14);
    // The affinity term changes the logits (it is not a no-op at these draws).
    CHECK((ref.logits - x * wg.transpose()).cwiseAbs().maxCoeff() > 1e-3);
  }
}

TEST_CASE("domain-aware router adds the domain term after the wrapped router's bias", "[router][domain]") {
  const RowMatrix<double> wg = random_matrix(5, 4, 21), C = random_matrix(3, 4, 22), A = random_matrix(3, 5, 23),
                          x = random_matrix(13, 4, 24);
  const moe::Vector<double> b = random_matrix(5, 1, 25);
  const moe::DomainAwareSoftmaxTopKRouter<double> router(moe::SoftmaxTopKRouter<double>(wg, 2, {}, b), C, A);
  const auto ref = domain_aware_reference(x, wg, C, A, 2, true, b);
  moe::RoutingResult<double> out;
  router.route(x, out);
  CHECK((out.logits - ref.logits).cwiseAbs().maxCoeff() < 1e-12);
  CHECK((out.dense_gates() - ref.gates).cwiseAbs().maxCoeff() < 1e-13);
}

TEST_CASE("domain-aware router with zero weights: uniform domain probabilities, zero logits", "[router][domain]") {
  const moe::DomainAwareSoftmaxTopKRouter<double> router(6, 5, 4, 2);
  CHECK(router.classifier().rows() == 4);
  CHECK(router.classifier().cols() == 5);
  CHECK(router.affinity().rows() == 4);
  CHECK(router.affinity().cols() == 6);
  const RowMatrix<double> x = random_matrix(3, 5, 31);
  const RowMatrix<double> q = router.domain_probs(x);
  CHECK((q.array() - 0.25).abs().maxCoeff() < 1e-15);
  moe::RoutingResult<double> out;
  router.route(x, out);
  CHECK(out.logits.isZero(0.0));
}

TEST_CASE("domain-aware router names its parameters as the checkpoint", "[router][domain]") {
  moe::DomainAwareSoftmaxTopKRouter<float> router(6, 5, 3, 2);
  std::vector<std::string> names;
  std::vector<std::pair<Index, Index>> shapes;
  router.for_each_parameter([&](const std::string& n, auto&& block) {
    names.push_back(n);
    shapes.emplace_back(block.rows(), block.cols());
  });
  CHECK(names == std::vector<std::string>{"gate.weight", "domain_classifier.weight", "domain_affinity"});
  CHECK(shapes == std::vector<std::pair<Index, Index>>{{6, 5}, {3, 5}, {3, 6}});
  const auto& const_router = router;
  names.clear();
  const_router.for_each_parameter([&](const std::string& n, const auto&) { names.push_back(n); });
  CHECK(names == std::vector<std::string>{"gate.weight", "domain_classifier.weight", "domain_affinity"});
  // Writing through the mutable visit reaches the router's tensors.
  router.for_each_parameter([](const std::string&, auto&& block) { block.setConstant(2.0f); });
  CHECK(router.classifier().isConstant(2.0f));
  CHECK(router.affinity().isConstant(2.0f));
  CHECK(router.weight().isConstant(2.0f));
  // Renamed (a checkpoint with other names).
  router.names().classifier = "dc.weight";
  router.names().affinity = "aff";
  names.clear();
  router.for_each_parameter([&](const std::string& n, auto&&) { names.push_back(n); });
  CHECK(names == std::vector<std::string>{"gate.weight", "dc.weight", "aff"});
}

TEST_CASE("domain-aware router refuses mismatched classifier and affinity shapes", "[router][domain][errors]") {
  const RowMatrix<double> wg = random_matrix(6, 5, 41);
  const auto make = [&](RowMatrix<double> c, RowMatrix<double> a) {
    return moe::DomainAwareSoftmaxTopKRouter<double>(moe::SoftmaxTopKRouter<double>(wg, 2), std::move(c),
                                                     std::move(a));
  };
  SECTION("classifier columns") {
    moe::test::require_invalid([&] { (void)make(random_matrix(3, 4, 42), random_matrix(3, 6, 43)); },
                                 {"DomainAwareRouter::DomainAwareRouter()", "classifier columns (input_dim)",
                                  "expected 5, got 4"});
  }
  SECTION("affinity shape") {
    moe::test::require_invalid([&] { (void)make(random_matrix(3, 5, 42), random_matrix(3, 5, 43)); },
                                 {"DomainAwareRouter::DomainAwareRouter()", "affinity shape",
                                  "expected [num_domains = 3, num_experts = 6], got [3, 5]"});
    moe::test::require_invalid([&] { (void)make(random_matrix(3, 5, 42), random_matrix(2, 6, 43)); },
                                 {"affinity shape", "got [2, 6]"});
  }
  SECTION("no domain") {
    moe::test::require_invalid([&] { (void)make(RowMatrix<double>(0, 5), RowMatrix<double>(0, 6)); },
                                 {"num_domains (classifier rows) expected >= 1, got 0"});
  }
  SECTION("check_shapes() after a tensor was resized through its accessor") {
    auto router = make(random_matrix(3, 5, 42), random_matrix(3, 6, 43));
    CHECK_NOTHROW(router.check_shapes());
    router.classifier() = random_matrix(3, 4, 44);
    moe::test::require_invalid([&] { router.check_shapes(); },
                                 {"DomainAwareRouter::check_shapes()", "classifier columns (input_dim)",
                                  "expected 5, got 4"});
    router.classifier() = random_matrix(4, 5, 45);
    moe::test::require_invalid([&] { router.check_shapes(); },
                                 {"DomainAwareRouter::check_shapes()", "affinity shape",
                                  "expected [num_domains = 4, num_experts = 6], got [3, 6]"});
    router.affinity() = random_matrix(4, 6, 46);
    CHECK_NOTHROW(router.check_shapes());
    router.weight() = random_matrix(7, 5, 47);
    moe::test::require_invalid([&] { router.check_shapes(); }, {"affinity shape", "num_experts = 7"});
    router.weight() = random_matrix(6, 5, 48);
    // No domain left: refused as at construction.
    router.classifier() = RowMatrix<double>(0, 5);
    router.affinity() = RowMatrix<double>(0, 6);
    moe::test::require_invalid([&] { router.check_shapes(); },
                                 {"DomainAwareRouter::check_shapes()", "num_domains (classifier rows) expected >= 1, got 0"});
  }
  SECTION("x of the wrong width") {
    const auto router = make(random_matrix(3, 5, 42), random_matrix(3, 6, 43));
    const RowMatrix<double> x = random_matrix(4, 3, 48);
    RowMatrix<double> z(4, 3);
    moe::test::require_invalid([&] { router.domain_logits(x, z); },
                                 {"DomainAwareRouter::domain_logits()", "x columns (input_dim)", "expected 5, got 3"});
    moe::RoutingResult<double> out;
    moe::test::require_invalid([&] { router.route(x, out); }, {"x columns (input_dim)", "expected 5, got 3"});
  }
}

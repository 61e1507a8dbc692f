// TopKRouter with each gating rule against a scalar reference written from the definitions.
#include <moe/router/top_k_router.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;

// The k best of v (descending; equal values: lower index first), by a full stable sort.
std::vector<Index> reference_top_k(const std::vector<double>& v, Index k) {
  std::vector<Index> idx(v.size());
  std::iota(idx.begin(), idx.end(), Index{0});
  std::stable_sort(idx.begin(), idx.end(), [&](Index a, Index b) { return v[size_t(a)] > v[size_t(b)]; });
  idx.resize(static_cast<size_t>(k));
  return idx;
}

std::vector<double> logits_row(const RowMatrix<double>& x, const RowMatrix<double>& w, Index t) {
  std::vector<double> z(static_cast<size_t>(w.rows()));
  for (Index e = 0; e < w.rows(); ++e) {
    double s = 0;
    for (Index j = 0; j < w.cols(); ++j) s += x(t, j) * w(e, j);
    z[size_t(e)] = s;
  }
  return z;
}

RowMatrix<double> reference_softmax_topk(const RowMatrix<double>& x, const RowMatrix<double>& w, Index k, bool renorm) {
  RowMatrix<double> g = RowMatrix<double>::Zero(x.rows(), w.rows());
  for (Index t = 0; t < x.rows(); ++t) {
    auto z = logits_row(x, w, t);
    const double m = *std::max_element(z.begin(), z.end());
    double sum = 0;
    for (double& v : z) sum += (v = std::exp(v - m));
    for (double& v : z) v /= sum;
    const auto top = reference_top_k(z, k);
    double s = 0;
    for (Index e : top) s += z[size_t(e)];
    for (Index e : top) g(t, e) = renorm ? z[size_t(e)] / s : z[size_t(e)];
  }
  return g;
}

RowMatrix<double> reference_topk_softmax(const RowMatrix<double>& x, const RowMatrix<double>& w,
                                         const moe::Vector<double>& b, Index k) {
  RowMatrix<double> g = RowMatrix<double>::Zero(x.rows(), w.rows());
  for (Index t = 0; t < x.rows(); ++t) {
    auto z = logits_row(x, w, t);
    for (Index e = 0; e < w.rows(); ++e) z[size_t(e)] += b[e];
    const auto top = reference_top_k(z, k);
    double m = z[size_t(top[0])], sum = 0;
    for (Index e : top) sum += std::exp(z[size_t(e)] - m);
    for (Index e : top) g(t, e) = std::exp(z[size_t(e)] - m) / sum;
  }
  return g;
}

RowMatrix<double> reference_group_limited(const RowMatrix<double>& x, const RowMatrix<double>& w,
                                          const moe::SigmoidGroupLimited<double>& c, Index k) {
  const Index E = w.rows(), G = c.n_group, size = E / G;
  RowMatrix<double> g = RowMatrix<double>::Zero(x.rows(), E);
  for (Index t = 0; t < x.rows(); ++t) {
    auto z = logits_row(x, w, t);
    std::vector<double> s(static_cast<size_t>(E)), biased(static_cast<size_t>(E));
    for (Index e = 0; e < E; ++e) {
      s[size_t(e)] = 1 / (1 + std::exp(-z[size_t(e)]));
      biased[size_t(e)] = s[size_t(e)] + c.correction_bias[e];
    }
    std::vector<double> group_score(static_cast<size_t>(G));
    for (Index q = 0; q < G; ++q) {
      std::vector<double> members(biased.begin() + q * size, biased.begin() + (q + 1) * size);
      std::sort(members.rbegin(), members.rend());
      group_score[size_t(q)] = members[0] + (size > 1 ? members[1] : 0.0);
    }
    const auto kept = reference_top_k(group_score, c.topk_group);
    std::vector<double> masked(static_cast<size_t>(E), -INFINITY);
    for (Index q : kept)
      for (Index e = q * size; e < (q + 1) * size; ++e) masked[size_t(e)] = biased[size_t(e)];
    const auto top = reference_top_k(masked, k);
    double sum = 0;
    for (Index e : top) sum += s[size_t(e)];
    for (Index e : top) g(t, e) = (c.renormalize ? s[size_t(e)] / (sum + 1e-20) : s[size_t(e)]) * c.routed_scaling_factor;
  }
  return g;
}

using moe::test::random_matrix;

}  // namespace

TEST_CASE("softmax top-k gates match the scalar reference, with and without renormalisation", "[router]") {
  for (const bool renorm : {true, false}) {
    for (const Index k : {Index{1}, Index{2}, Index{5}, Index{8}}) {
      const auto w = random_matrix(8, 16, 1), x = random_matrix(37, 16, 2);
      moe::SoftmaxTopKRouter<double> router(w, k, moe::SoftmaxTopK<double>{renorm});
      moe::RoutingResult<double> out;
      router.route(x, out);
      REQUIRE(out.size() == 37 * k);
      REQUIRE((out.dense_gates() - reference_softmax_topk(x, w, k, renorm)).cwiseAbs().maxCoeff() < 1e-14);
      REQUIRE((out.logits - x * w.transpose()).cwiseAbs().maxCoeff() < 1e-12);
      if (renorm) REQUIRE((out.dense_gates().rowwise().sum().array() - 1.0).abs().maxCoeff() < 1e-14);
    }
  }
}

TEST_CASE("top-k then softmax with a logit bias matches the scalar reference", "[router]") {
  const auto w = random_matrix(8, 16, 3), x = random_matrix(29, 16, 4);
  moe::Vector<double> b = random_matrix(8, 1, 5);
  for (const Index k : {Index{1}, Index{2}, Index{4}, Index{8}}) {
    moe::TopKSoftmaxRouter<double> router(w, k, {}, b);
    moe::RoutingResult<double> out;
    router.route(x, out);
    REQUIRE((out.dense_gates() - reference_topk_softmax(x, w, b, k)).cwiseAbs().maxCoeff() < 1e-14);
  }
}

TEST_CASE("sigmoid group-limited routing matches the scalar reference", "[router]") {
  const auto w = random_matrix(32, 16, 6), x = random_matrix(41, 16, 7);
  for (const bool renorm : {true, false}) {
    for (const Index groups : {Index{1}, Index{4}, Index{8}}) {
      moe::SigmoidGroupLimited<double> c;
      c.n_group = groups;
      c.topk_group = std::max<Index>(1, groups / 2);
      c.routed_scaling_factor = 2.5;
      c.renormalize = renorm;
      c.correction_bias = 0.3 * random_matrix(32, 1, 8);
      const Index k = std::min<Index>(4, c.topk_group * (32 / groups));
      moe::GroupLimitedRouter<double> router(w, k, c);
      moe::RoutingResult<double> out;
      router.route(x, out);
      REQUIRE((out.dense_gates() - reference_group_limited(x, w, c, k)).cwiseAbs().maxCoeff() < 1e-13);
      // Experts of groups not kept are never chosen: at most topk_group groups per token.
      for (Index t = 0; t < x.rows(); ++t) {
        std::vector<bool> used(static_cast<size_t>(groups), false);
        for (Index j = 0; j < k; ++j) used[size_t(out.expert[size_t(t * k + j)] / (32 / groups))] = true;
        REQUIRE(std::count(used.begin(), used.end(), true) <= c.topk_group);
      }
    }
  }
}

TEST_CASE("equal scores select the lower expert index", "[router]") {
  // All-zero weights: every logit is equal, so experts 0..k-1 win.
  moe::SoftmaxTopKRouter<float> router(6, 4, 3, moe::SoftmaxTopK<float>{true});
  moe::RoutingResult<float> out;
  router.route(RowMatrix<float>::Ones(2, 4), out);
  for (Index t = 0; t < 2; ++t)
    for (Index j = 0; j < 3; ++j) REQUIRE(out.expert[size_t(t * 3 + j)] == j);
}

TEST_CASE("zero tokens route to an empty result", "[router]") {
  moe::SoftmaxTopKRouter<float> router(4, 8, 2);
  moe::RoutingResult<float> out;
  router.route(RowMatrix<float>(0, 8), out);
  REQUIRE(out.size() == 0);
  REQUIRE(out.logits.rows() == 0);
}

TEST_CASE("router settings out of range name the setting, the expectation and the value", "[router][errors]") {
  using R = moe::SoftmaxTopKRouter<float>;
  REQUIRE_THROWS_WITH(R(4, 8, 0), "TopKRouter::TopKRouter(): k expected in [1, num_experts = 4], got 0");
  REQUIRE_THROWS_WITH(R(4, 8, 5), "TopKRouter::TopKRouter(): k expected in [1, num_experts = 4], got 5");
  REQUIRE_THROWS_WITH(R(0, 8, 1), "TopKRouter::TopKRouter(): num_experts expected >= 1, got 0");
  REQUIRE_THROWS_WITH(moe::TopKSoftmaxRouter<float>(RowMatrix<float>::Zero(4, 8), 2, {}, moe::Vector<float>::Zero(3)),
                      "TopKRouter::TopKRouter(): bias length expected 0 or num_experts = 4, got 3");
  moe::SigmoidGroupLimited<float> c;
  c.n_group = 3;
  REQUIRE_THROWS_WITH(moe::GroupLimitedRouter<float>(8, 4, 2, c),
                      "SigmoidGroupLimited::validate(): n_group dividing num_experts expected a divisor of 8, got 3");
  c.n_group = 4;
  c.topk_group = 5;
  REQUIRE_THROWS_WITH(moe::GroupLimitedRouter<float>(8, 4, 2, c),
                      "SigmoidGroupLimited::validate(): topk_group expected in [1, n_group = 4], got 5");
  c.topk_group = 1;
  REQUIRE_THROWS_WITH(moe::GroupLimitedRouter<float>(8, 4, 3, c),
                      "SigmoidGroupLimited::validate(): top_k expected <= topk_group * experts per group = 2, got 3");
  R router(4, 8, 2);
  moe::RoutingResult<float> out;
  REQUIRE_THROWS_WITH(router.route(RowMatrix<float>::Zero(3, 7), out),
                      "TopKRouter::route(): x columns (input_dim) expected 8, got 7");
}

// Hierarchical routing against the rule written as loops (primary softmax top-k1 over groups,
// each kept group's softmax top-k2, gate = product, renormalised at both levels or not),
// its layout (k1 * k2 pairs per token, token-major, kept groups best first), its checks, and a
// layer whose forward matches the dense sum over the chosen experts.
#include <moe/moe.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "support/errors.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::test::random_matrix;

/// softmax of v by loops.
std::vector<double> hier_softmax(const std::vector<double>& v) {
  const double m = *std::max_element(v.begin(), v.end());
  std::vector<double> p(v.size());
  double s = 0;
  for (std::size_t i = 0; i < v.size(); ++i) s += (p[i] = std::exp(v[i] - m));
  for (double& x : p) x /= s;
  return p;
}

/// The k largest of p, ties to the lower index.
std::vector<Index> hier_top(const std::vector<double>& p, Index k) {
  std::vector<Index> order(p.size());
  for (std::size_t i = 0; i < p.size(); ++i) order[i] = static_cast<Index>(i);
  std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return p[std::size_t(a)] > p[std::size_t(b)]; });
  order.resize(static_cast<std::size_t>(k));
  return order;
}

/// The dense [T, a*b] gates of the rule, by loops.
RowMatrix<double> hier_reference(const RowMatrix<double>& x, const RowMatrix<double>& wp, const RowMatrix<double>& wg,
                                 Index k1, Index k2, bool renorm) {
  const Index a = wp.rows(), b = wg.rows() / a;
  RowMatrix<double> gates = RowMatrix<double>::Zero(x.rows(), a * b);
  for (Index t = 0; t < x.rows(); ++t) {
    std::vector<double> z(std::size_t(a), 0.0);
    for (Index i = 0; i < a; ++i) z[std::size_t(i)] = x.row(t).dot(wp.row(i));
    const std::vector<double> p = hier_softmax(z);
    const std::vector<Index> groups = hier_top(p, k1);
    double sp = 0;
    for (const Index i : groups) sp += p[std::size_t(i)];
    for (const Index i : groups) {
      std::vector<double> zi(std::size_t(b), 0.0);
      for (Index j = 0; j < b; ++j) zi[std::size_t(j)] = x.row(t).dot(wg.row(i * b + j));
      const std::vector<double> q = hier_softmax(zi);
      const std::vector<Index> experts = hier_top(q, k2);
      double sq = 0;
      for (const Index j : experts) sq += q[std::size_t(j)];
      for (const Index j : experts)
        gates(t, i * b + j) = (renorm ? p[std::size_t(i)] / sp : p[std::size_t(i)]) *
                              (renorm ? q[std::size_t(j)] / sq : q[std::size_t(j)]);
    }
  }
  return gates;
}

}  // namespace

TEST_CASE("HierarchicalRouter agrees with the rule written as loops", "[router][hierarchical]") {
  struct Case {
    Index a, b, k1, k2;
  };
  for (const Case c : {Case{4, 4, 2, 2}, Case{3, 5, 1, 2}, Case{2, 3, 2, 3}, Case{5, 2, 3, 1}, Case{1, 6, 1, 4}})
    for (const bool renorm : {true, false}) {
      INFO("a " << c.a << ", b " << c.b << ", k1 " << c.k1 << ", k2 " << c.k2 << ", renormalise " << renorm);
      const RowMatrix<double> wp = random_matrix(c.a, 6, 810, 1.2), wg = random_matrix(c.a * c.b, 6, 811, 1.2);
      const moe::HierarchicalRouter<double> router(wp, wg, c.k1, c.k2, renorm);
      REQUIRE(router.num_experts() == c.a * c.b);
      REQUIRE(router.k() == c.k1 * c.k2);
      const RowMatrix<double> x = random_matrix(15, 6, 812);
      moe::RoutingResult<double> r;
      router.route(x, r);
      REQUIRE(r.k == c.k1 * c.k2);
      REQUIRE(r.size() == 15 * r.k);
      const RowMatrix<double> want = hier_reference(x, wp, wg, c.k1, c.k2, renorm);
      CHECK((r.dense_gates() - want).cwiseAbs().maxCoeff() < 1e-14);
      // Token-major; each token's pairs come group by group, k2 of each, best group first.
      for (Index t = 0; t < 15; ++t)
        for (Index g = 0; g < c.k1; ++g) {
          const Index i = r.expert[std::size_t(t * r.k + g * c.k2)] / c.b;
          for (Index j = 0; j < c.k2; ++j) {
            CHECK(r.token[std::size_t(t * r.k + g * c.k2 + j)] == t);
            CHECK(r.expert[std::size_t(t * r.k + g * c.k2 + j)] / c.b == i);
          }
        }
      // logits: every group's secondary logits, kept or not.
      CHECK((r.logits - x * wg.transpose()).cwiseAbs().maxCoeff() < 1e-13);
      RowMatrix<double> z(15, c.a);
      router.primary_logits(x, z);
      CHECK((z - x * wp.transpose()).cwiseAbs().maxCoeff() < 1e-13);
    }
}

TEST_CASE("a hierarchical layer's output is the gated sum of the chosen SwiGLU experts", "[router][hierarchical]") {
  const Index a = 3, b = 2, d = 5;
  const RowMatrix<double> wp = random_matrix(a, d, 820), wg = random_matrix(a * b, d, 821);
  const moe::HierarchicalMoE<double> layer(moe::test::swiglu<double>(a * b, d, 4, 822),
                                           moe::HierarchicalRouter<double>(wp, wg, 2, 1));
  const RowMatrix<double> x = random_matrix(7, d, 823);
  moe::Workspace<double> ws;
  const RowMatrix<double> y = layer.forward(x, ws);
  const RowMatrix<double> gates = hier_reference(x, wp, wg, 2, 1, true);
  RowMatrix<double> want = RowMatrix<double>::Zero(7, d);
  for (Index e = 0; e < a * b; ++e) {
    RowMatrix<double> hidden(7, layer.experts().hidden_cols()), ye(7, d);
    layer.experts().forward(e, x, hidden, ye);
    want += gates.col(e).asDiagonal() * ye;
  }
  CHECK((y - want).cwiseAbs().maxCoeff() < 1e-13);
}

TEST_CASE("HierarchicalRouter names what it refuses", "[router][hierarchical][errors]") {
  using moe::test::require_invalid;
  const RowMatrix<float> wp = RowMatrix<float>::Zero(3, 4);
  require_invalid([&] { moe::HierarchicalRouter<float>(wp, RowMatrix<float>::Zero(7, 4), 1, 1); },
                  {"HierarchicalRouter::HierarchicalRouter(): group routers' rows expected a positive multiple of "
                   "num_groups = 3 (a * experts_per_group), got 7"});
  require_invalid([&] { moe::HierarchicalRouter<float>(wp, RowMatrix<float>::Zero(6, 5), 1, 1); },
                  {"group routers' columns expected input_dim = 4, got 5"});
  require_invalid([&] { moe::HierarchicalRouter<float>(wp, RowMatrix<float>::Zero(6, 4), 4, 1); },
                  {"top_k_groups expected in [1, num_groups = 3], got 4"});
  require_invalid([&] { moe::HierarchicalRouter<float>(wp, RowMatrix<float>::Zero(6, 4), 1, 3); },
                  {"top_k_per_group expected in [1, experts_per_group = 2], got 3"});
  require_invalid([] { moe::HierarchicalRouter<float>(0, 2, 4, 1, 1); },
                  {"HierarchicalRouter::HierarchicalRouter(): num_groups expected >= 1, got 0"});
  moe::HierarchicalRouter<float> router(3, 2, 4, 2, 1);
  require_invalid([&] { (void)router.group_gate(3); }, {"HierarchicalRouter::group_gate(): group index expected in [0, 3), got 3"});
  moe::RoutingResult<float> r;
  require_invalid([&] { router.route(RowMatrix<float>::Zero(2, 5), r); }, {"x columns (input_dim) expected 4, got 5"});
  router.groups().resize(5, 4);
  require_invalid([&] { router.check_shapes(); }, {"HierarchicalRouter::check_shapes(): group routers' rows"});
  int listed = 0;
  moe::HierarchicalRouter<float>(3, 2, 4, 2, 1).for_each_parameter([&](const std::string& name, const auto& block) {
    if (listed == 0) CHECK(name == "gate.weight");
    if (listed == 3) {
      CHECK(name == "group_gates.2.weight");
      CHECK(block.rows() == 2);
    }
    ++listed;
  });
  CHECK(listed == 4);
}

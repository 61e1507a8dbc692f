// HierarchicalBalancingLoss: each level's value against the rule written as loops over tokens
// (softmaxes recomputed here from the router's weights), both levels at k1 and k2 under an even
// spread, and its gradient through a whole HierarchicalMoE against central finite differences
// in double (alone with dy = 0, and with L = sum(y * G)), for several a, b, k1, k2 and level
// weights. The loss reaches the routers only: the experts get none of it.
#include <moe/loss/hierarchical_balancing_loss.hpp>
#include <moe/moe.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "support/finite_difference.hpp"
#include "support/gradient_check.hpp"
#include "support/random.hpp"

namespace hierarchical_balancing_test {

using moe::Index;
using moe::RowMatrix;

/// softmax of x W^T rows [T, rows(W)], in double, as loops.
RowMatrix<double> softmax_of(const RowMatrix<double>& x, const RowMatrix<double>& w) {
  RowMatrix<double> p(x.rows(), w.rows());
  for (Index t = 0; t < x.rows(); ++t) {
    double mx = -1e300;
    for (Index e = 0; e < w.rows(); ++e) {
      double z = 0;
      for (Index i = 0; i < x.cols(); ++i) z += x(t, i) * w(e, i);
      p(t, e) = z;
      mx = std::max(mx, z);
    }
    double sum = 0;
    for (Index e = 0; e < w.rows(); ++e) sum += (p(t, e) = std::exp(p(t, e) - mx));
    p.row(t) /= sum;
  }
  return p;
}

/// The indices of the k largest of v (ties to the lower index), best first.
std::vector<Index> top_indices(const std::vector<double>& v, Index k) {
  std::vector<Index> idx(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) idx[i] = static_cast<Index>(i);
  std::stable_sort(idx.begin(), idx.end(), [&](Index a, Index b) {
    return v[static_cast<std::size_t>(a)] > v[static_cast<std::size_t>(b)];
  });
  idx.resize(static_cast<std::size_t>(k));
  return idx;
}

struct Levels {
  double groups = 0, experts = 0;
};

/// Both levels from the README-style rule, every choice recomputed here.
Levels reference_levels(const moe::HierarchicalRouter<double>& router, const RowMatrix<double>& x) {
  const Index T = x.rows(), a = router.num_groups(), b = router.experts_per_group();
  const Index k1 = router.top_k_groups(), k2 = router.top_k_per_group();
  const RowMatrix<double> p = softmax_of(x, router.primary());
  std::vector<double> fg(static_cast<std::size_t>(a), 0.0), n(static_cast<std::size_t>(a), 0.0);
  RowMatrix<double> fe = RowMatrix<double>::Zero(a, b), qsum = RowMatrix<double>::Zero(a, b);
  for (Index t = 0; t < T; ++t) {
    const std::vector<double> pt(p.row(t).data(), p.row(t).data() + a);
    for (const Index i : top_indices(pt, k1)) {
      fg[static_cast<std::size_t>(i)] += 1;
      n[static_cast<std::size_t>(i)] += 1;
      const RowMatrix<double> wi = router.group_gate(i);
      const RowMatrix<double> q = softmax_of(RowMatrix<double>(x.row(t)), wi);
      const std::vector<double> qt(q.data(), q.data() + b);
      for (const Index j : top_indices(qt, k2)) fe(i, j) += 1;
      qsum.row(i) += q.row(0);
    }
  }
  Levels l;
  for (Index i = 0; i < a; ++i) l.groups += fg[static_cast<std::size_t>(i)] / double(T) * p.col(i).mean();
  l.groups *= double(a);
  Index reached = 0;
  for (Index i = 0; i < a; ++i) {
    const double ni = n[static_cast<std::size_t>(i)];
    if (ni == 0) continue;
    ++reached;
    double s = 0;
    for (Index j = 0; j < b; ++j) s += fe(i, j) / ni * qsum(i, j) / ni;
    l.experts += double(b) * s;
  }
  l.experts /= double(reached);
  return l;
}

moe::HierarchicalMoE<double> balancing_layer(Index a, Index b, Index k1, Index k2, unsigned seed) {
  const Index d = 5;
  return moe::HierarchicalMoE<double>(
      moe::test::swiglu<double>(a * b, d, 4, seed + 2),
      moe::HierarchicalRouter<double>(moe::test::random_matrix(a, d, seed, 0.6),
                                      moe::test::random_matrix(a * b, d, seed + 1, 0.6), k1, k2));
}

}  // namespace hierarchical_balancing_test

using hierarchical_balancing_test::balancing_layer;
using hierarchical_balancing_test::reference_levels;
using moe::Index;
using moe::RowMatrix;

TEST_CASE("HierarchicalBalancingLoss: each level as loops over the tokens and their choices",
          "[loss][hierarchical]") {
  struct Case {
    Index a, b, k1, k2;
  };
  unsigned seed = 1200;
  for (const Case c : {Case{4, 4, 2, 2}, Case{3, 2, 1, 2}, Case{2, 3, 2, 1}, Case{1, 4, 1, 2}}) {
    INFO("a " << c.a << ", b " << c.b << ", k1 " << c.k1 << ", k2 " << c.k2);
    const auto layer = balancing_layer(c.a, c.b, c.k1, c.k2, seed);
    const RowMatrix<double> x = moe::test::random_matrix(11, layer.input_dim(), seed + 3);
    moe::Workspace<double> ws;
    (void)layer.forward(x, ws);
    const auto want = reference_levels(layer.router(), x);
    const moe::HierarchicalBalancingLoss loss{0.7, 0.2};
    const double groups = loss.primary_value(layer.router(), moe::ConstMatrixRef<double>(x), ws.routing);
    const double experts = loss.group_value(ws.routing, c.a, c.k1, c.k2);
    CHECK(groups == Approx(want.groups).epsilon(1e-12));
    CHECK(experts == Approx(want.experts).epsilon(1e-12));
    CHECK(loss.value(layer.router(), moe::ConstMatrixRef<double>(x), ws.routing) ==
          Approx(0.7 * want.groups + 0.2 * want.experts).epsilon(1e-12));
    seed += 10;
  }
}

TEST_CASE("HierarchicalBalancingLoss: k1 and k2 when choices and probabilities are even", "[loss][hierarchical]") {
  // Zero routers: uniform probabilities at both levels (P_i = 1/a, Q_ij = 1/b), whatever the
  // choices, so each level is a * sum_i f_i / a = k1 and b * sum_j f_ij / b = k2.
  const moe::HierarchicalMoE<double> layer(moe::test::swiglu<double>(6, 4, 3, 5),
                                           moe::HierarchicalRouter<double>(3, 2, 4, 2, 1));
  const RowMatrix<double> x = moe::test::random_matrix(7, 4, 6);
  moe::Workspace<double> ws;
  (void)layer.forward(x, ws);
  const moe::HierarchicalBalancingLoss loss;
  CHECK(loss.primary_value(layer.router(), moe::ConstMatrixRef<double>(x), ws.routing) == Approx(2.0).epsilon(1e-14));
  CHECK(loss.group_value(ws.routing, 3, 2, 1) == Approx(1.0).epsilon(1e-14));
}

TEST_CASE("HierarchicalBalancingLoss through a HierarchicalMoE: gradients match finite differences",
          "[loss][hierarchical][backward]") {
  struct Case {
    Index a, b, k1, k2;
    double w_primary, w_group;
  };
  // k1 < a in every case: with every group kept, f_i = 1 and the group level is the constant a.
  unsigned seed = 1300;
  for (const Case c : {Case{4, 4, 2, 2, 1, 1}, Case{3, 2, 1, 2, 0.5, 2}, Case{3, 3, 2, 1, 1, 0}, Case{3, 3, 2, 2, 0, 1}}) {
    for (const bool with_output : {false, true}) {
      INFO("a " << c.a << ", b " << c.b << ", k1 " << c.k1 << ", k2 " << c.k2 << ", weights " << c.w_primary << "/"
                << c.w_group << (with_output ? ", plus sum(y * G)" : ", the loss alone"));
      auto layer = balancing_layer(c.a, c.b, c.k1, c.k2, seed);
      const RowMatrix<double> x0 = moe::test::random_matrix(10, layer.input_dim(), seed + 3);
      RowMatrix<double> x = x0;
      RowMatrix<double> G = moe::test::random_matrix(10, layer.output_dim(), seed + 4);
      if (!with_output) G.setZero();
      const moe::HierarchicalBalancingLoss bal{c.w_primary, c.w_group};
      const double w = 0.8;
      moe::ForwardContext ctx;
      ctx.mode = moe::Mode::training;
      moe::Workspace<double> ws;
      RowMatrix<double> y = layer.forward(x, ws, ctx);
      const std::vector<Index> experts0 = ws.routing.expert;
      auto grads = layer.make_gradients();
      const RowMatrix<double> dx = layer.backward(G, ws, grads, moe::losses(moe::weighted(bal, w)));
      const auto loss = [&] {
        moe::Workspace<double> w2;
        const RowMatrix<double> yy = layer.forward(x, w2, ctx);
        REQUIRE(w2.routing.expert == experts0);
        return (yy.array() * G.array()).sum() + w * bal.value(layer.router(), moe::ConstMatrixRef<double>(x), w2.routing);
      };
      CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(x, loss)) < 1e-6);
      moe::test::check_parameter_gradients(layer, grads, loss, 1e-6);
      if (!with_output) {
        double expert_grad = 0;
        grads.experts.for_each_parameter([&](const std::string&, const auto& g) { expert_grad += g.cwiseAbs().sum(); });
        CHECK(expert_grad == 0.0);
      }
      seed += 10;
    }
  }
}

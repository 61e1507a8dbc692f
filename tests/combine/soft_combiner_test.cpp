// SoftCombiner on a dense plan: y[t] = sum over its sequence's slots of softmax(logits[t]) *
// slot output, with the slot rows located by a layout written out in the test.
#include <moe/layer/moe_layer.hpp>
#include <moe/combine/soft_combiner.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <random>

#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;

using moe::test::fill;

}  // namespace

TEMPLATE_TEST_CASE("the soft combiner mixes each token's sequence slots by softmax over slots", "[combine][soft]", float,
                   double) {
  using S = TestType;
  const double tol = std::is_same_v<S, float> ? 1e-5 : 1e-13;
  const Index E = 3, p = 2, B = 2, n = 4, T = B * n, d = 5;
  moe::Workspace<S> ws;
  ws.routing.reset(T, E, 0, 0);
  RowMatrix<double> logits(T, E * p), slots(E * B * p, d);
  fill(logits, 1);
  fill(slots, 2);
  ws.routing.logits = logits.cast<S>();
  moe::SlotLayout layout{B, n, E, p};
  moe::DispatchPlan<S> plan;
  moe::build_slot_plan(layout, T, plan);
  REQUIRE(plan.rows() == E * B * p);
  REQUIRE(plan.capacity == B * p);
  for (Index e = 0; e < E; ++e) REQUIRE(plan.begin(e) == e * B * p);
  const RowMatrix<S> x = RowMatrix<S>::Zero(T, d);
  const RowMatrix<S> y_perm = slots.cast<S>();
  RowMatrix<S> y(T, d);
  moe::SoftCombiner<S>{}.combine(x, plan, y_perm, y, ws.combine_context());

  RowMatrix<double> ref = RowMatrix<double>::Zero(T, d);
  for (Index t = 0; t < T; ++t) {
    const Index b = t / n;
    double mx = -INFINITY, sum = 0;
    for (Index i = 0; i < E * p; ++i) mx = std::max(mx, double(S(logits(t, i))));
    for (Index i = 0; i < E * p; ++i) sum += std::exp(double(S(logits(t, i))) - mx);
    for (Index i = 0; i < E * p; ++i) {
      const double c = std::exp(double(S(logits(t, i))) - mx) / sum;
      CHECK(double(ws.combine.hidden(t, i)) == Approx(c).epsilon(tol));
      // Slot i of sequence b: expert i / p's slab, then sequence b's p rows, then slot i % p.
      const Index row = (i / p) * (B * p) + b * p + i % p;
      REQUIRE(layout.row(b, i) == row);
      for (Index j = 0; j < d; ++j) ref(t, j) += c * double(y_perm(row, j));
    }
  }
  CHECK((y.template cast<double>() - ref).cwiseAbs().maxCoeff() / ref.cwiseAbs().maxCoeff() < tol);
}

TEST_CASE("the soft combiner refuses a slot matrix of the wrong shape", "[combine][soft][errors]") {
  moe::Workspace<double> ws;
  ws.routing.reset(4, 2, 0, 0);
  ws.routing.logits = RowMatrix<double>::Zero(4, 2);
  moe::DispatchPlan<double> plan;
  moe::build_slot_plan(moe::SlotLayout{1, 4, 2, 1}, 4, plan);
  RowMatrix<double> y(4, 3);
  REQUIRE_THROWS_WITH(
      moe::SoftCombiner<double>{}.combine(RowMatrix<double>::Zero(4, 3), plan, RowMatrix<double>::Zero(3, 3), y, ws.combine_context()),
      "SoftCombiner::combine(): y_perm expected shape [2, 3], got [3, 3]");
  REQUIRE_THROWS_WITH(
      moe::SoftCombiner<double>{}.combine(RowMatrix<double>::Zero(5, 3), plan, RowMatrix<double>::Zero(2, 3), y, ws.combine_context()),
      "SoftCombiner::combine(): routing logits and plan rows (tokens) expected 5, got 4 and 4");
}

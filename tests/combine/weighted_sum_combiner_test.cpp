// Step 5: y[token] = sum over its kept assignments of gate * expert output, and its backward,
// against loops over the plan's rows.
#include <moe/combine/weighted_sum_combiner.hpp>
#include <moe/dispatch/dispatch_plan.hpp>

#include <catch2/catch.hpp>

#include <random>
#include <vector>

#include "support/random.hpp"

using moe::Index;
using moe::RowMatrix;

TEST_CASE("the weighted-sum combiner adds gate * expert output per kept assignment, any pool", "[combine]") {
  std::mt19937 rng(7);
  const Index T = 150, d = 6;  // more than one task of 64 tokens
  const moe::RoutingResult<double> r = moe::test::random_routing(rng, T, 5, 2);
  moe::DispatchPlan<double> plan;
  moe::build_plan(r, plan, moe::Capacity::from_factor(1.0));
  REQUIRE(!plan.dropped.empty());  // a dropped assignment adds nothing
  const RowMatrix<double> y_perm = moe::test::random_matrix(plan.rows(), d, 8);
  const RowMatrix<double> x = RowMatrix<double>::Zero(T, d);
  RowMatrix<double> want = RowMatrix<double>::Zero(T, d);
  for (Index p = 0; p < plan.rows(); ++p)
    want.row(plan.token[std::size_t(p)]) += plan.gate[std::size_t(p)] * y_perm.row(p);
  moe::CombineScratch<double> scratch;
  moe::ForwardContext fwd;
  RowMatrix<double> y = RowMatrix<double>::Constant(T, d, 5.0);  // overwritten
  moe::WeightedSumCombiner<double>{}.combine(x, plan, y_perm, y, moe::CombineContext<double>{r, fwd, scratch});
  CHECK((y - want).cwiseAbs().maxCoeff() < 1e-14);
  moe::ThreadPool pool(4);
  fwd.pool = &pool;
  RowMatrix<double> pooled(T, d);
  moe::WeightedSumCombiner<double>{}.combine(x, plan, y_perm, pooled, moe::CombineContext<double>{r, fwd, scratch});
  CHECK(pooled == y);
}

TEST_CASE("the weighted-sum combiner's backward: dy_perm = gate * dy of its token, dgate = dy of its token . y_perm",
          "[combine][backward]") {
  std::mt19937 rng(9);
  const Index T = 90, d = 4;
  const moe::RoutingResult<double> r = moe::test::random_routing(rng, T, 3, 2);
  moe::DispatchPlan<double> plan;
  moe::build_plan(r, plan);
  const Index N = plan.rows();
  const RowMatrix<double> y_perm = moe::test::random_matrix(N, d, 10);
  const RowMatrix<double> dy = moe::test::random_matrix(T, d, 11);
  const RowMatrix<double> x = RowMatrix<double>::Zero(T, d);
  RowMatrix<double> dy_perm(N, d), dx = RowMatrix<double>::Zero(T, d);
  std::vector<double> dgate(static_cast<std::size_t>(N), 0.0);
  moe::CombineScratch<double> scratch;
  const moe::ForwardContext fwd;
  moe::WeightedSumCombiner<double> combiner, grad;
  combiner.backward(moe::CombinerBackward<double>{.x = x, .plan = plan, .y_perm = y_perm, .dy = dy, .dy_perm = dy_perm,
                                                  .dgate_slot = dgate.data(), .dx = dx},
                    grad, moe::CombineContext<double>{r, fwd, scratch});
  for (Index p = 0; p < N; ++p) {
    const Index t = plan.token[std::size_t(p)];
    CHECK((dy_perm.row(p) - plan.gate[std::size_t(p)] * dy.row(t)).cwiseAbs().maxCoeff() < 1e-15);
    CHECK(std::abs(dgate[std::size_t(p)] - dy.row(t).dot(y_perm.row(p))) < 1e-13);
  }
  CHECK(dx.isZero(0.0));  // no path of its own into x
}

// Step 3: each plan row is its token's row of x, in the plan's expert-major order.
#include <moe/dispatch/dispatch_plan.hpp>
#include <moe/gather/gather.hpp>

#include <catch2/catch.hpp>

#include <random>

#include "support/random.hpp"

using moe::Index;
using moe::RowMatrix;

TEST_CASE("gather_tokens copies the row of x of plan.token(p) into row p, serially and on a pool", "[gather]") {
  std::mt19937 rng(5);
  // 700 tokens, k = 2: 1400 rows, more than one task of 256 rows.
  const moe::RoutingResult<float> r = moe::test::random_routing<float>(rng, 700, 6, 2);
  moe::DispatchPlan<float> plan;
  moe::build_plan(r, plan, moe::Capacity::from_factor(1.0));  // drops some: not every assignment has a row
  REQUIRE(!plan.dropped.empty());
  RowMatrix<float> x(700, 9);
  moe::test::fill(x, 1);
  RowMatrix<float> got(plan.rows(), 9);
  moe::gather_tokens(x, plan, got);
  for (Index p = 0; p < plan.rows(); ++p) REQUIRE(got.row(p) == x.row(plan.token[static_cast<std::size_t>(p)]));
  moe::ThreadPool pool(3);
  RowMatrix<float> pooled = RowMatrix<float>::Zero(plan.rows(), 9);
  moe::gather_tokens(x, plan, pooled, &pool);
  REQUIRE(pooled == got);
}

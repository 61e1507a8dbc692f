// Step 6: what a forward call did, read from its plan.
#include <moe/dispatch/dispatch_plan.hpp>
#include <moe/dispatch/statistics.hpp>

#include <catch2/catch.hpp>

#include <vector>

using moe::Index;

TEST_CASE("record_statistics reads tokens, assignments, drops and each expert's kept load", "[dispatch][statistics]") {
  moe::RoutingResult<double> r;
  r.reset(4, 3, 4, 1);
  r.token = {0, 1, 2, 3};
  r.expert = {0, 0, 0, 2};  // three tokens want expert 0, which holds two
  r.gate = {1, 1, 1, 1};
  moe::DispatchPlan<double> plan;
  moe::build_plan(r, plan, moe::Capacity::fixed(2));
  moe::LayerStatistics stats;
  stats.expert_load = {9, 9, 9, 9, 9};  // stale, longer than E: resized
  moe::record_statistics(plan, r.size(), stats);
  CHECK(stats.tokens == 4);
  CHECK(stats.assignments == 4);
  CHECK(stats.dropped == 1);
  CHECK(stats.expert_load == std::vector<Index>{2, 0, 1});
}

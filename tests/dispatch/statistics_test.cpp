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

TEST_CASE("record_statistics counts the experts each token ran through, after capacity", "[dispatch][statistics]") {
  // A variable count per token (as TopP and ThresholdSkip write, k = 0): token 0 three
  // experts, token 1 one, token 2 two, token 3 none (a hand-made result); expert 0 holds two.
  moe::RoutingResult<double> r;
  r.reset(4, 3, 6, 0);
  r.token = {0, 0, 0, 1, 2, 2};
  r.expert = {0, 1, 2, 0, 0, 1};
  r.gate = {0.5, 0.3, 0.2, 1, 0.6, 0.4};
  moe::DispatchPlan<double> plan;
  moe::LayerStatistics stats;
  moe::build_plan(r, plan, moe::Capacity::unlimited());
  moe::record_statistics(plan, r.size(), stats);
  CHECK(stats.experts_per_token == std::vector<Index>{1, 1, 1, 1});  // 0, 1, 2 and 3 experts: one token each
  CHECK(stats.mean_experts_per_token() == 1.5);
  // Capacity 2 per expert: token 2's expert 0 (the third claim, by (rank, token)) is dropped.
  moe::build_plan(r, plan, moe::Capacity::fixed(2));
  moe::record_statistics(plan, r.size(), stats);
  CHECK(stats.dropped == 1);
  CHECK(stats.experts_per_token == std::vector<Index>{1, 2, 0, 1});
  CHECK(stats.mean_experts_per_token() == 1.25);
  // No tokens: E + 1 zero bins, mean 0.
  moe::RoutingResult<double> empty;
  empty.reset(0, 3, 0, 0);
  moe::build_plan(empty, plan, moe::Capacity::unlimited());
  moe::record_statistics(plan, 0, stats);
  CHECK(stats.experts_per_token == std::vector<Index>{0, 0, 0, 0});
  CHECK(stats.mean_experts_per_token() == 0.0);
}

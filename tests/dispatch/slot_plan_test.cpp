// The dense path's plan: E slabs of B*p slot rows, no token map.
#include <moe/dispatch/slot_plan.hpp>

#include <catch2/catch.hpp>

#include <vector>

using moe::Index;

TEST_CASE("build_slot_plan gives every expert a slab of B*p rows and clears the token map", "[dispatch][soft]") {
  moe::SlotLayout l;
  l.num_sequences = 2;
  l.sequence_length = 3;
  l.num_experts = 4;
  l.slots_per_expert = 3;
  moe::DispatchPlan<double> plan;
  plan.token = {1, 2};  // left over from a sparse call
  plan.gate = {0.5, 0.5};
  plan.dropped = {0};
  moe::build_slot_plan(l, 6, plan);
  CHECK(plan.num_tokens == 6);
  CHECK(plan.num_experts == 4);
  CHECK(plan.capacity == 6);
  CHECK(plan.offsets == std::vector<Index>{0, 6, 12, 18, 24});
  CHECK(plan.rows() == l.rows());
  for (Index e = 0; e < 4; ++e) CHECK(plan.count(e) == 6);
  CHECK(plan.token.empty());
  CHECK(plan.gate.empty());
  CHECK(plan.assignment.empty());
  CHECK(plan.slot_of.empty());
  CHECK(plan.dropped.empty());
  // The plan gives back the layout it was built with.
  const moe::SlotLayout back = moe::slot_layout(plan, l.slots_per_sequence());
  CHECK(back.num_sequences == 2);
  CHECK(back.sequence_length == 3);
  CHECK(back.slots_per_expert == 3);
}

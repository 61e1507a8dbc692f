// The capacity rule and the plan's accessors, on their own (build_plan's use of them:
// tests/dispatch/dispatch_plan_test.cpp).
#include <moe/contracts/dispatch_plan.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

using moe::Capacity;
using moe::Index;

TEST_CASE("Capacity::slots: -1 unlimited, the absolute count, or max(minimum, ceil(factor * n / E))",
          "[contracts][capacity]") {
  CHECK(Capacity::unlimited().slots(100, 3) == -1);
  CHECK(Capacity::fixed(5).slots(100, 3) == 5);
  CHECK(Capacity::fixed(0).slots(100, 3) == 0);
  CHECK(Capacity::from_factor(1.0).slots(10, 4) == 3);    // ceil(2.5)
  CHECK(Capacity::from_factor(1.0).slots(12, 4) == 3);    // exact
  CHECK(Capacity::from_factor(1.5).slots(10, 4) == 4);    // ceil(3.75)
  CHECK(Capacity::from_factor(0.5, 2).slots(10, 4) == 2); // ceil(1.25) = 2, minimum 2
  CHECK(Capacity::from_factor(0.5, 7).slots(10, 4) == 7); // the minimum wins
  CHECK(Capacity::from_factor(2.0, 3).slots(10, 0) == 3); // no experts: the minimum
  CHECK(Capacity::from_factor(1.0).slots(0, 4) == 0);
  CHECK(Capacity::fixed(4, moe::Priority::batch_prioritized).priority == moe::Priority::batch_prioritized);
  CHECK(Capacity::from_factor(1.0).priority == moe::Priority::position);
}

TEST_CASE("Capacity::validate refuses factors, minima and counts it cannot use", "[contracts][capacity][errors]") {
  REQUIRE_NOTHROW(Capacity::unlimited().validate());
  REQUIRE_THROWS_WITH(Capacity::from_factor(-1.0).validate(), "Capacity::validate(): factor expected finite and > 0, got -1");
  REQUIRE_THROWS_WITH(Capacity::from_factor(std::numeric_limits<double>::infinity()).slots(4, 2),
                      "Capacity::validate(): factor expected finite and > 0, got inf");
  REQUIRE_THROWS_AS(Capacity::from_factor(std::nan("")).validate(), std::invalid_argument);
  REQUIRE_THROWS_WITH(Capacity::from_factor(1.0, -3).validate(), "Capacity::validate(): minimum expected >= 0, got -3");
  REQUIRE_THROWS_WITH(Capacity::fixed(-1).slots(4, 2), "Capacity::validate(): absolute capacity expected >= 0, got -1");
}

TEST_CASE("DispatchPlan: rows, each expert's slab and which assignments were kept", "[contracts]") {
  moe::DispatchPlan<float> plan;
  CHECK(plan.rows() == 0);  // no offsets yet
  plan.num_experts = 3;
  plan.offsets = {0, 2, 2, 5};
  plan.slot_of = {0, -1, 1, 2, -1};
  CHECK(plan.rows() == 5);
  CHECK(plan.begin(0) == 0);
  CHECK(plan.count(0) == 2);
  CHECK(plan.begin(1) == 2);
  CHECK(plan.count(1) == 0);
  CHECK(plan.begin(2) == 2);
  CHECK(plan.count(2) == 3);
  CHECK(plan.kept(0));
  CHECK_FALSE(plan.kept(1));
  CHECK(plan.kept(3));
  CHECK_FALSE(plan.kept(4));
}

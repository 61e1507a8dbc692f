// How a dense routing's slots lie in X_perm, and the layouts read back from a routing or a plan.
#include <moe/contracts/slot_layout.hpp>

#include <catch2/catch.hpp>

#include <set>

using moe::Index;

TEST_CASE("SlotLayout::row is expert-major: expert, then sequence, then the expert's p slots", "[contracts][soft]") {
  moe::SlotLayout l;
  l.num_sequences = 2;
  l.sequence_length = 5;
  l.num_experts = 3;
  l.slots_per_expert = 2;
  CHECK(l.slots_per_sequence() == 6);
  CHECK(l.rows_per_expert() == 4);
  CHECK(l.rows() == 12);
  // Slot i of sequence b belongs to expert i / p and is the (i % p)-th of its p slots there.
  CHECK(l.row(0, 0) == 0);
  CHECK(l.row(0, 1) == 1);
  CHECK(l.row(1, 0) == 2);
  CHECK(l.row(1, 1) == 3);
  CHECK(l.row(0, 2) == 4);
  CHECK(l.row(1, 5) == 11);
  std::set<Index> rows;
  for (Index b = 0; b < 2; ++b)
    for (Index s = 0; s < 6; ++s) rows.insert(l.row(b, s));
  CHECK(rows.size() == 12);  // a bijection onto [0, 12)
  CHECK(*rows.rbegin() == 11);
}

TEST_CASE("make_slot_layout and slot_layout read B, n, E and p back", "[contracts][soft]") {
  moe::RoutingResult<float> r;
  r.num_tokens = 12;
  r.num_experts = 3;
  r.logits.resize(12, 6);
  const moe::SlotLayout a = moe::make_slot_layout(r, 4);
  CHECK(a.num_sequences == 3);
  CHECK(a.sequence_length == 4);
  CHECK(a.num_experts == 3);
  CHECK(a.slots_per_expert == 2);
  const moe::SlotLayout whole = moe::make_slot_layout(r, 0);
  CHECK(whole.num_sequences == 1);
  CHECK(whole.sequence_length == 12);

  moe::DispatchPlan<float> plan;
  plan.num_tokens = 12;
  plan.num_experts = 3;
  plan.capacity = a.rows_per_expert();  // B * p = 6
  const moe::SlotLayout b = moe::slot_layout(plan, 6);
  CHECK(b.num_sequences == 3);
  CHECK(b.sequence_length == 4);
  CHECK(b.slots_per_expert == 2);
  CHECK(moe::detail::num_sequences(0, 4, "f()") == 0);
}

TEST_CASE("layouts refuse a sequence length, logits width or plan capacity that does not divide", "[contracts][soft][errors]") {
  moe::RoutingResult<float> r;
  r.num_tokens = 12;
  r.num_experts = 3;
  r.logits.resize(12, 7);
  REQUIRE_THROWS_WITH(moe::make_slot_layout(r, 4),
                      "moe::make_slot_layout(): logits columns (num_experts * slots_per_expert) expected a multiple of "
                      "num_experts = 3, got 7");
  r.logits.resize(12, 6);
  REQUIRE_THROWS_WITH(moe::make_slot_layout(r, 5),
                      "moe::make_slot_layout(): ctx.sequence_length expected 0 or a divisor of the number of tokens 12, "
                      "got 5");
  REQUIRE_THROWS_AS(moe::make_slot_layout(r, -1), std::invalid_argument);
  moe::DispatchPlan<float> plan;
  plan.num_tokens = 12;
  plan.num_experts = 3;
  plan.capacity = 5;
  REQUIRE_THROWS_WITH(moe::slot_layout(plan, 6),
                      "moe::slot_layout(): plan capacity (rows per expert of a dense plan) expected a multiple of "
                      "slots_per_expert = 2, got 5");
  REQUIRE_THROWS_WITH(moe::slot_layout(plan, 7),
                      "moe::slot_layout(): slots per sequence expected a multiple of num_experts = 3, got 7");
}

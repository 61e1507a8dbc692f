// RoutingTape and RoutingRecord on their own: record() copies routing and kept flags, append()
// validates (every rule of RoutingRecord::validate, with its message), next() pairs calls with
// records in order, and replay_routing / replay_plan rebuild what build_plan laid out.
#include <moe/dispatch/dispatch_plan.hpp>
#include <moe/dispatch/routing_tape.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "support/random.hpp"
#include "support/routing_tape.hpp"

namespace {

using moe::Index;
using moe::RoutingRecord;
using moe::RoutingTape;


std::string append_error(RoutingRecord r) {
  RoutingTape tape;
  try {
    tape.append(std::move(r));
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_CASE("routing tape: record() keeps routing and kept flags, replay rebuilds build_plan's plan",
          "[dispatch][replay]") {
  std::mt19937 rng(3);
  for (const Index capacity : {Index{-1}, Index{0}, Index{2}, Index{5}}) {
    INFO("capacity " << capacity);
    const moe::RoutingResult<float> routing = moe::test::random_routing<float>(rng, 11, 5, 2);
    moe::DispatchPlan<float> plan;
    moe::build_plan(routing, plan, capacity < 0 ? moe::Capacity::unlimited() : moe::Capacity::fixed(capacity));
    RoutingTape tape;
    tape.record(3, routing, plan);
    REQUIRE(tape.size() == 1);
    const RoutingRecord& r = tape.records()[0];
    CHECK(r.layer_index == 3);
    CHECK(r.k == 2);
    CHECK(r.capacity == capacity);
    for (Index i = 0; i < routing.size(); ++i) {
      const auto iu = static_cast<std::size_t>(i);
      CHECK(r.token[iu] == routing.token[iu]);
      CHECK(r.expert[iu] == routing.expert[iu]);
      CHECK(static_cast<float>(r.gate[iu]) == routing.gate[iu]);
      CHECK(r.kept[iu] == (plan.kept(i) ? 1 : 0));
    }
    CHECK_NOTHROW(r.validate("test"));

    tape.set_mode(moe::TapeMode::replay);
    const RoutingRecord& next = tape.next(3, 11, 5, "test");
    moe::RoutingResult<float> replayed;
    moe::DispatchPlan<float> replayed_plan;
    moe::replay_routing(next, replayed, true);
    moe::replay_plan(next, replayed, replayed_plan);
    CHECK(replayed.expert == routing.expert);
    CHECK(replayed.gate == routing.gate);
    CHECK(replayed_plan.offsets == plan.offsets);
    CHECK(replayed_plan.token == plan.token);
    CHECK(replayed_plan.gate == plan.gate);
    CHECK(replayed_plan.assignment == plan.assignment);
    CHECK(replayed_plan.slot_of == plan.slot_of);
    CHECK(replayed_plan.dropped == plan.dropped);
    CHECK(replayed_plan.token_offsets == plan.token_offsets);
    CHECK(replayed_plan.token_slots == plan.token_slots);
    CHECK(replayed_plan.capacity == plan.capacity);
  }
}

TEST_CASE("routing tape: append() refuses every inconsistent record with its rule", "[dispatch][replay][errors]") {
  CHECK(append_error(moe::test::small_routing_record()) == "no error");
  const auto damaged = [](auto change) {
    RoutingRecord r = moe::test::small_routing_record();
    change(r);
    return append_error(std::move(r));
  };
  const std::string p = "RoutingTape::append(): ";
  CHECK(damaged([](RoutingRecord& r) { r.expert[3] = 4; }) == p + "record expert expected in [0, 4), got 4 at assignment 3");
  CHECK(damaged([](RoutingRecord& r) { r.expert[1] = 1; }) ==
        p + "record expert expected each expert at most once per token, got 1 twice for token 0");
  CHECK(damaged([](RoutingRecord& r) { r.token[5] = 3; }) ==
        p + "record token expected token-major indices in [0, num_tokens), got 3 at assignment 5");
  CHECK(damaged([](RoutingRecord& r) { r.kept[0] = 7; }) == p + "record kept flag expected 0 or 1, got 7 at assignment 0");
  CHECK(damaged([](RoutingRecord& r) { r.kept[4] = 1; }) ==
        p + "record kept assignments per expert expected <= capacity 2, got 3 for expert 1");
  CHECK(damaged([](RoutingRecord& r) { r.kept.push_back(1); }) ==
        p + "record arrays of one length (token, expert, gate, kept) expected 6, got 6, 6, 7");
  CHECK(damaged([](RoutingRecord& r) { r.k = 5; }) ==
        p + "record shape (tokens in [0, 2^31), experts in [1, 2^31), k in [0, experts], capacity >= -1) expected "
            "valid, got tokens 3, experts 4, k 5, capacity 2");
  // Variable counts (k = 0): any number per token, still token-major and distinct.
  CHECK(damaged([](RoutingRecord& r) {
          r.k = 0;
          r.token = {0, 1, 1, 1, 2, 2};
          r.expert = {1, 0, 2, 3, 1, 0};
        }) == "no error");
  CHECK(damaged([](RoutingRecord& r) {
          r.k = 0;
          r.token = {0, 1, 1, 1, 2, 2};
          r.expert = {1, 0, 2, 0, 1, 3};
        }) == p + "record expert expected each expert at most once per token, got 0 twice for token 1");
}

TEST_CASE("routing tape: next() walks the records in order and names what does not match", "[dispatch][replay][errors]") {
  RoutingTape tape;
  tape.append(moe::test::small_routing_record());
  RoutingRecord second = moe::test::small_routing_record();
  second.layer_index = 6;
  tape.append(second);
  tape.set_mode(moe::TapeMode::replay);
  CHECK(tape.next(5, 3, 4, "f()").layer_index == 5);
  CHECK(tape.cursor() == 1);
  CHECK_THROWS_WITH(tape.next(5, 3, 4, "f()"), "f(): routing tape record 1 layer_index expected 5, got 6");
  tape.rewind();
  CHECK_THROWS_WITH(tape.next(5, 3, 3, "f()"), "f(): routing tape record 0 experts expected 3, got 4");
  tape.rewind();
  (void)tape.next(5, 3, 4, "f()");
  (void)tape.next(6, 3, 4, "f()");
  CHECK_THROWS_WITH(tape.next(5, 3, 4, "f()"),
                    "f(): routing tape expected a record for this call, got the end of the tape (2 records; rewind() to "
                    "replay again)");
  tape.set_mode(moe::TapeMode::record);
  CHECK(tape.cursor() == 0);
  tape.clear();
  CHECK(tape.size() == 0);
}

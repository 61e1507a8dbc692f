// build_plan against a scalar reference of the capacity rules, written from their definitions:
//   position:          serve every rank-0 choice in token order, then every rank-1 choice, ...
//   batch_prioritized: the same ranks, but tokens sorted by decreasing top-1 gate (ties: lower
//                      token first);
// an assignment whose expert already holds `capacity` rows is dropped; the kept rows of an
// expert are laid out in routing order.
#include <moe/dispatch/dispatch_plan.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <new>
#include <random>
#include <vector>

#include "support/random.hpp"

// Counts operator new calls so the steady-state test can tell that build_plan allocates
// nothing. Every file of this program is a dispatch test, so replacing it here is harmless.
// AddressSanitizer keeps its own books of new and free and reports the replacement as a
// mismatch, so under it the test falls back to checking that no buffer moved. g++ says
// -fsanitize=address with __SANITIZE_ADDRESS__, clang with __has_feature(address_sanitizer).
#if defined(__SANITIZE_ADDRESS__)
#define MOE_TEST_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MOE_TEST_UNDER_ASAN 1
#endif
#endif
#if defined(MOE_TEST_UNDER_ASAN)
namespace {
const std::size_t g_allocations = 0;
}
#else
namespace {
std::size_t g_allocations = 0;
}
void* operator new(std::size_t size) {
  ++g_allocations;
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
// GCC 12 sees free() on what its own operator new returned and warns (-Wmismatched-new-delete),
// not knowing that the replacement above allocates with malloc.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop
#endif

namespace {

using moe::Capacity;
using moe::DispatchPlan;
using moe::Index;
using moe::Priority;
using moe::RoutingResult;

using moe::test::random_routing;

struct Reference {
  std::vector<Index> offsets, token, assignment, slot_of, dropped;
  std::vector<double> gate;
};

/// The definitions, with plain loops. capacity < 0 means unlimited.
Reference reference_plan(const RoutingResult<double>& r, Index capacity, Priority priority) {
  const Index T = r.num_tokens, E = r.num_experts, k = r.k, n = T * k;
  // Token serving order: position = 0..T-1; BPR = by decreasing top-1 gate, lower token on ties
  // (insertion sort, written out so that it shares nothing with the library).
  std::vector<Index> tokens;
  for (Index t = 0; t < T; ++t) {
    Index pos = static_cast<Index>(tokens.size());
    if (priority == Priority::batch_prioritized)
      while (pos > 0 && r.gate[static_cast<std::size_t>(tokens[static_cast<std::size_t>(pos - 1)] * k)] <
                            r.gate[static_cast<std::size_t>(t * k)])
        --pos;
    tokens.insert(tokens.begin() + pos, t);
  }
  std::vector<bool> kept(static_cast<std::size_t>(n), true);
  std::vector<Index> load(static_cast<std::size_t>(E), 0);
  for (Index j = 0; j < k; ++j)
    for (Index t : tokens) {
      const Index i = t * k + j;
      const Index e = r.expert[static_cast<std::size_t>(i)];
      if (capacity >= 0 && load[static_cast<std::size_t>(e)] >= capacity) kept[static_cast<std::size_t>(i)] = false;
      else ++load[static_cast<std::size_t>(e)];
    }
  Reference ref;
  ref.slot_of.assign(static_cast<std::size_t>(n), -1);
  ref.offsets.push_back(0);
  for (Index e = 0; e < E; ++e) {
    for (Index i = 0; i < n; ++i)
      if (kept[static_cast<std::size_t>(i)] && r.expert[static_cast<std::size_t>(i)] == e) {
        ref.slot_of[static_cast<std::size_t>(i)] = static_cast<Index>(ref.token.size());
        ref.token.push_back(r.token[static_cast<std::size_t>(i)]);
        ref.gate.push_back(r.gate[static_cast<std::size_t>(i)]);
        ref.assignment.push_back(i);
      }
    ref.offsets.push_back(static_cast<Index>(ref.token.size()));
  }
  for (Index i = 0; i < n; ++i)
    if (!kept[static_cast<std::size_t>(i)]) ref.dropped.push_back(i);
  return ref;
}

void check_against_reference(const RoutingResult<double>& r, const DispatchPlan<double>& plan, Index capacity,
                             Priority priority) {
  const Reference ref = reference_plan(r, capacity, priority);
  CHECK(plan.capacity == capacity);
  CHECK(plan.offsets == ref.offsets);
  CHECK(plan.token == ref.token);
  CHECK(plan.gate == ref.gate);
  CHECK(plan.assignment == ref.assignment);
  CHECK(plan.slot_of == ref.slot_of);
  CHECK(plan.dropped == ref.dropped);
}

/// Properties that hold whatever the priority.
void check_properties(const RoutingResult<double>& r, const DispatchPlan<double>& plan) {
  const Index E = r.num_experts, n = r.size();
  REQUIRE(plan.offsets.size() == static_cast<std::size_t>(E + 1));
  CHECK(plan.offsets[0] == 0);
  std::vector<Index> kept_per_expert(static_cast<std::size_t>(E), 0);
  std::vector<Index> routed(static_cast<std::size_t>(E), 0);
  for (Index i = 0; i < n; ++i) {
    ++routed[static_cast<std::size_t>(r.expert[static_cast<std::size_t>(i)])];
    if (plan.slot_of[static_cast<std::size_t>(i)] >= 0) ++kept_per_expert[static_cast<std::size_t>(r.expert[static_cast<std::size_t>(i)])];
  }
  Index expected_drops = 0;
  for (Index e = 0; e < E; ++e) {
    // offsets are the CSR (prefix sums) of the kept counts.
    CHECK(plan.count(e) == kept_per_expert[static_cast<std::size_t>(e)]);
    CHECK(plan.offsets[static_cast<std::size_t>(e) + 1] == plan.offsets[static_cast<std::size_t>(e)] + kept_per_expert[static_cast<std::size_t>(e)]);
    if (plan.capacity >= 0) {
      CHECK(plan.count(e) <= plan.capacity);
      // An expert drops only what overflows: it keeps min(routed, capacity).
      CHECK(plan.count(e) == std::min(routed[static_cast<std::size_t>(e)], plan.capacity));
      expected_drops += std::max<Index>(0, routed[static_cast<std::size_t>(e)] - plan.capacity);
    } else {
      CHECK(plan.count(e) == routed[static_cast<std::size_t>(e)]);
    }
    // Kept rows keep routing (token) order within an expert.
    for (Index p = plan.begin(e) + 1; p < plan.begin(e) + plan.count(e); ++p) {
      CHECK(plan.assignment[static_cast<std::size_t>(p - 1)] < plan.assignment[static_cast<std::size_t>(p)]);
      CHECK(plan.token[static_cast<std::size_t>(p - 1)] < plan.token[static_cast<std::size_t>(p)]);
    }
  }
  CHECK(static_cast<Index>(plan.dropped.size()) == expected_drops);
  CHECK(plan.rows() == n - expected_drops);
  // slot_of and assignment are inverse on the kept assignments.
  for (Index p = 0; p < plan.rows(); ++p)
    CHECK(plan.slot_of[static_cast<std::size_t>(plan.assignment[static_cast<std::size_t>(p)])] == p);
}

}  // namespace

TEST_CASE("build_plan matches the scalar reference of the priority rules on random routings",
          "[dispatch][capacity]") {
  std::mt19937 rng(20240611);
  int cases = 0;
  for (Index k : {1, 2}) {
    for (Priority priority : {Priority::position, Priority::batch_prioritized}) {
      for (int trial = 0; trial < 200; ++trial) {
        const Index E = std::uniform_int_distribution<Index>(std::max<Index>(k, 1), 8)(rng);
        const Index T = std::uniform_int_distribution<Index>(0, 40)(rng);
        const Index capacity = std::uniform_int_distribution<Index>(0, 2 * T * k / E + 2)(rng);
        const RoutingResult<double> r = random_routing(rng, T, E, k);
        DispatchPlan<double> plan;
        moe::build_plan(r, plan, Capacity::fixed(capacity, priority));
        INFO("k " << k << " E " << E << " T " << T << " capacity " << capacity << " bpr "
                  << (priority == Priority::batch_prioritized));
        check_against_reference(r, plan, capacity, priority);
        check_properties(r, plan);
        ++cases;
      }
    }
  }
  CHECK(cases == 800);
}

TEST_CASE("unlimited capacity drops nothing and keeps routing order", "[dispatch][capacity]") {
  std::mt19937 rng(7);
  for (Index k : {1, 2, 3}) {
    const RoutingResult<double> r = random_routing(rng, 37, 5, k);
    DispatchPlan<double> plan;
    moe::build_plan(r, plan);
    CHECK(plan.capacity == -1);
    CHECK(plan.dropped.empty());
    CHECK(plan.rows() == r.size());
    check_against_reference(r, plan, -1, Priority::position);
    check_properties(r, plan);
  }
}

TEST_CASE("the worked example of docs/capacity.md", "[dispatch][capacity]") {
  // 6 tokens, 2 experts, top-1, capacity 2. Expert 0 is chosen by tokens 0, 1, 3, 4.
  RoutingResult<double> r;
  r.reset(6, 2, 6, 1);
  const Index experts[] = {0, 0, 1, 0, 0, 1};
  const double gates[] = {0.5, 0.9, 0.6, 0.7, 0.8, 0.4};
  for (Index t = 0; t < 6; ++t) {
    r.token[static_cast<std::size_t>(t)] = t;
    r.expert[static_cast<std::size_t>(t)] = experts[t];
    r.gate[static_cast<std::size_t>(t)] = gates[t];
  }
  DispatchPlan<double> plan;
  SECTION("position: the first two tokens of expert 0 win") {
    moe::build_plan(r, plan, Capacity::fixed(2));
    CHECK(plan.offsets == std::vector<Index>{0, 2, 4});
    CHECK(plan.token == std::vector<Index>{0, 1, 2, 5});
    CHECK(plan.dropped == std::vector<Index>{3, 4});
    CHECK(plan.slot_of == std::vector<Index>{0, 1, 2, -1, -1, 3});
  }
  SECTION("batch prioritized: the two most confident tokens of expert 0 win, kept in token order") {
    moe::build_plan(r, plan, Capacity::fixed(2, Priority::batch_prioritized));
    CHECK(plan.offsets == std::vector<Index>{0, 2, 4});
    CHECK(plan.token == std::vector<Index>{1, 4, 2, 5});
    CHECK(plan.gate == std::vector<double>{0.9, 0.8, 0.6, 0.4});
    CHECK(plan.dropped == std::vector<Index>{0, 3});
  }
  SECTION("capacity 0 drops everything") {
    moe::build_plan(r, plan, Capacity::fixed(0, Priority::batch_prioritized));
    CHECK(plan.rows() == 0);
    CHECK(plan.dropped.size() == 6);
  }
}

TEST_CASE("for k = 2 every first choice is served before any second choice", "[dispatch][capacity]") {
  // Token 0's second choice and token 1's first choice both want expert 1 (capacity 1): the
  // first choice wins although token 0 comes first.
  RoutingResult<double> r;
  r.reset(2, 3, 4, 2);
  r.token = {0, 0, 1, 1};
  r.expert = {0, 1, 1, 2};
  r.gate = {0.6, 0.4, 0.7, 0.3};
  DispatchPlan<double> plan;
  for (Priority p : {Priority::position, Priority::batch_prioritized}) {
    moe::build_plan(r, plan, Capacity::fixed(1, p));
    CHECK(plan.dropped == std::vector<Index>{1});
  }
}

TEST_CASE("capacity from a factor is ceil(cf * k * T / E), at least the minimum", "[dispatch][capacity]") {
  // Factors exact in binary, so ceil sees the exact rational: ceil(p/q * kT / E) = ceil(p kT / (q E)).
  for (Index T : {0, 1, 7, 40, 1000})
    for (Index k : {1, 2, 8})
      for (Index E : {1, 3, 8, 64}) {
        const auto ceil_div = [](Index a, Index b) { return (a + b - 1) / b; };
        CHECK(Capacity::from_factor(1.0).slots(T * k, E) == ceil_div(T * k, E));
        CHECK(Capacity::from_factor(1.25).slots(T * k, E) == ceil_div(5 * T * k, 4 * E));
        CHECK(Capacity::from_factor(2.0).slots(T * k, E) == ceil_div(2 * T * k, E));
        CHECK(Capacity::from_factor(0.5, 4).slots(T * k, E) == std::max<Index>(4, ceil_div(T * k, 2 * E)));
      }
  CHECK(Capacity::fixed(5).slots(100, 3) == 5);
  CHECK(Capacity::unlimited().slots(100, 3) == -1);

  // The layer's plan uses n = T * k assignments.
  std::mt19937 rng(3);
  const RoutingResult<double> r = random_routing(rng, 40, 8, 2);
  DispatchPlan<double> plan;
  moe::build_plan(r, plan, Capacity::from_factor(1.25));
  CHECK(plan.capacity == 13);  // ceil(1.25 * 2 * 40 / 8) = ceil(12.5)
  check_properties(r, plan);
  moe::build_plan(r, plan, Capacity::from_factor(0.25, 6));
  CHECK(plan.capacity == 6);  // ceil(2.5) = 3 < minimum 6
  check_properties(r, plan);
}

TEST_CASE("an explicit priority order overrides the policy", "[dispatch][capacity]") {
  RoutingResult<double> r;
  r.reset(3, 1, 3, 1);
  r.token = {0, 1, 2};
  r.expert = {0, 0, 0};
  r.gate = {0.2, 0.3, 0.5};
  DispatchPlan<double> plan;
  const std::vector<Index> last_first = {2, 1, 0};
  moe::build_plan(r, plan, Capacity::fixed(2), last_first);
  CHECK(plan.dropped == std::vector<Index>{0});
  CHECK(plan.token == std::vector<Index>{1, 2});
}

TEST_CASE("bad capacities and priority orders are refused with pinned texts", "[dispatch][capacity][errors]") {
  RoutingResult<double> r;
  r.reset(3, 2, 3, 1);
  r.token = {0, 1, 2};
  r.expert = {0, 1, 0};
  r.gate = {1, 1, 1};
  DispatchPlan<double> plan;
  REQUIRE_THROWS_WITH(moe::build_plan(r, plan, Capacity::from_factor(0.0)),
                      "Capacity::validate(): factor expected finite and > 0, got 0");
  REQUIRE_THROWS_WITH(moe::build_plan(r, plan, Capacity::from_factor(1.0, -1)),
                      "Capacity::validate(): minimum expected >= 0, got -1");
  REQUIRE_THROWS_WITH(moe::build_plan(r, plan, Capacity::fixed(-2)),
                      "Capacity::validate(): absolute capacity expected >= 0, got -2");
  const std::vector<Index> repeated = {0, 1, 1};
  REQUIRE_THROWS_WITH(moe::build_plan(r, plan, Capacity::fixed(1), repeated),
                      "moe::build_plan(): priority entry expected a permutation of [0, 3), got 1 at position 2");
  const std::vector<Index> too_short = {0, 1};
  REQUIRE_THROWS_WITH(moe::build_plan(r, plan, Capacity::fixed(1), too_short),
                      "moe::build_plan(): priority length expected 3, got 2");
  r.expert[1] = 2;
  REQUIRE_THROWS_WITH(moe::build_plan(r, plan), "moe::build_plan(): expert index in [0, num_experts) expected [0, 2), got 2");
}

TEST_CASE("a steady-state build_plan allocates nothing", "[dispatch][capacity][alloc]") {
  std::mt19937 rng(11);
  for (Index k : {1, 2})
    for (Priority p : {Priority::position, Priority::batch_prioritized}) {
      const RoutingResult<double> r = random_routing(rng, 64, 8, k);
      const RoutingResult<double> r2 = random_routing(rng, 64, 8, k);
      DispatchPlan<double> plan;
      const Capacity c = Capacity::from_factor(1.0, 0, p);
      moe::build_plan(r, plan, c);  // sizes the plan
      const auto buffers = [&] {
        return std::vector<const void*>{plan.offsets.data(), plan.token.data(),   plan.gate.data(),
                                        plan.assignment.data(), plan.slot_of.data(), plan.dropped.data(),
                                        plan.order.data(),      plan.rank.data(),    plan.token_count.data(),
                                        plan.token_score.data(), plan.token_offsets.data(),
                                        plan.token_slots.data()};
      };
      const std::vector<const void*> first = buffers();
      const std::size_t before = g_allocations;
      moe::build_plan(r2, plan, c);
      moe::build_plan(r, plan, c);
      const std::size_t after = g_allocations;
      INFO("k " << k << " bpr " << (p == Priority::batch_prioritized));
      CHECK(after == before);
      CHECK(buffers() == first);
      CHECK(!plan.dropped.empty());  // the calls did drop, so the drop path ran
    }
}

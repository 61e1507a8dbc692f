// build_plan_rerouted against a scalar reference written from the rule of docs/capacity.md#rerouting:
//   1. serve every assignment in the base policy's order (position: by (rank, token); batch
//      prioritized: by (rank, decreasing first gate, token)); an assignment finding its expert
//      full overflows;
//   2. each overflowing assignment, in that order, takes the first of its token's next r experts
//      (the experts it does not hold, sorted by decreasing score, ties to the lower index) that
//      has a free slot, else it is dropped;
//   3. the gates of a token that moved are the router's rule on its new experts (here softmax
//      probabilities renormalised over the token's experts, or raw).
// Plus the properties the issue names: capacity never exceeded; no assignment dropped while one
// of its r candidates has room; rerouting never drops more than the base policy; every first
// choice the base policy keeps stays where it was.
#include <moe/dispatch/dispatch_plan.hpp>
#include <moe/dispatch/reroute.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

namespace {

using moe::Capacity;
using moe::DispatchPlan;
using moe::Index;
using moe::Priority;
using moe::RoutingResult;
using S = double;

/// Softmax top-k routing of random logits: scores = probabilities, gates renormalised or raw.
RoutingResult<S> random_softmax_routing(Index T, Index E, Index k, bool renormalize, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> n(0.0, 1.5);
  RoutingResult<S> r;
  r.reset(T, E, T * k, k);
  r.scores.resize(T, E);
  for (Index t = 0; t < T; ++t) {
    double sum = 0;
    for (Index e = 0; e < E; ++e) sum += (r.scores(t, e) = std::exp(n(gen)));
    for (Index e = 0; e < E; ++e) r.scores(t, e) /= sum;
    std::vector<Index> idx(static_cast<std::size_t>(E));
    std::iota(idx.begin(), idx.end(), Index{0});
    std::stable_sort(idx.begin(), idx.end(), [&](Index a, Index b) { return r.scores(t, a) > r.scores(t, b); });
    double kept = 0;
    for (Index j = 0; j < k; ++j) kept += r.scores(t, idx[static_cast<std::size_t>(j)]);
    for (Index j = 0; j < k; ++j) {
      const auto i = static_cast<std::size_t>(t * k + j);
      r.token[i] = t;
      r.expert[i] = idx[static_cast<std::size_t>(j)];
      r.gate[i] = r.scores(t, r.expert[i]) / (renormalize ? kept : 1.0);
    }
  }
  r.logits = r.scores;
  return r;
}

/// The rule's gates: probabilities of the token's experts, renormalised over them or raw.
struct RuleRegate {
  bool renormalize;
  void operator()(RoutingResult<S>& r, Index t, Index begin, Index end) const {
    double sum = 0;
    for (Index i = begin; i < end; ++i) sum += r.scores(t, r.expert[static_cast<std::size_t>(i)]);
    for (Index i = begin; i < end; ++i)
      r.gate[static_cast<std::size_t>(i)] = r.scores(t, r.expert[static_cast<std::size_t>(i)]) / (renormalize ? sum : 1.0);
  }
};

struct RerouteReference {
  std::vector<Index> expert;           // per assignment, after rerouting
  std::vector<bool> kept;              // per assignment
  std::vector<Index> rerouted;         // in serving order
  std::vector<Index> base_kept_expert; // per assignment: the base policy's expert if kept there, else -1
};

RerouteReference reroute_reference(const RoutingResult<S>& r, Index capacity, Priority priority, Index tries) {
  const Index n = r.size(), E = r.num_experts, k = r.k;
  std::vector<Index> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), Index{0});
  auto first_gate = [&](Index i) { return r.gate[static_cast<std::size_t>((i / k) * k)]; };
  std::sort(order.begin(), order.end(), [&](Index a, Index b) {
    if (a % k != b % k) return a % k < b % k;
    if (priority == Priority::batch_prioritized && first_gate(a) != first_gate(b)) return first_gate(a) > first_gate(b);
    return a / k < b / k;
  });
  RerouteReference ref{r.expert, std::vector<bool>(static_cast<std::size_t>(n), false), {},
                std::vector<Index>(static_cast<std::size_t>(n), -1)};
  std::vector<Index> load(static_cast<std::size_t>(E), 0);
  std::vector<Index> overflow;
  for (Index i : order) {
    const auto e = static_cast<std::size_t>(r.expert[static_cast<std::size_t>(i)]);
    if (load[e] < capacity) {
      ++load[e];
      ref.kept[static_cast<std::size_t>(i)] = true;
      ref.base_kept_expert[static_cast<std::size_t>(i)] = static_cast<Index>(e);
    } else {
      overflow.push_back(i);
    }
  }
  for (Index i : overflow) {
    const Index t = i / k;
    std::vector<Index> candidates;
    for (Index e = 0; e < E; ++e) {
      bool held = false;
      for (Index j = 0; j < k; ++j) held = held || ref.expert[static_cast<std::size_t>(t * k + j)] == e;
      if (!held) candidates.push_back(e);
    }
    std::stable_sort(candidates.begin(), candidates.end(), [&](Index a, Index b) { return r.scores(t, a) > r.scores(t, b); });
    for (std::size_t c = 0; c < candidates.size() && static_cast<Index>(c) < tries; ++c) {
      const auto e = static_cast<std::size_t>(candidates[c]);
      if (load[e] < capacity) {
        ++load[e];
        ref.expert[static_cast<std::size_t>(i)] = static_cast<Index>(e);
        ref.kept[static_cast<std::size_t>(i)] = true;
        ref.rerouted.push_back(i);
        break;
      }
    }
  }
  return ref;
}

}  // namespace

TEST_CASE("overflow rerouting matches the scalar reference and keeps the issue's properties",
          "[dispatch][capacity][reroute]") {
  DispatchPlan<S> plan, base_plan;
  int cases = 0, rerouted_cases = 0;
  for (unsigned seed = 1; seed <= 40; ++seed) {
    for (const Index k : {Index{1}, Index{2}, Index{3}}) {
      for (const auto priority : {Priority::position, Priority::batch_prioritized}) {
        for (const Index tries : {Index{1}, Index{2}, Index{8}}) {
          const Index T = 5 + static_cast<Index>(seed % 11), E = 6;
          const bool renormalize = seed % 2 == 0;
          const RoutingResult<S> original = random_softmax_routing(T, E, k, renormalize, seed);
          const Index capacity = std::max<Index>(0, static_cast<Index>(seed % 3) + (T * k) / E - 1);
          INFO("seed " << seed << ", k " << k << ", priority " << int(priority) << ", tries " << tries
                       << ", capacity " << capacity);
          RoutingResult<S> r = original;
          moe::build_plan_rerouted(r, plan, Capacity::fixed(capacity, priority).rerouted(tries), RuleRegate{renormalize});
          const RerouteReference ref = reroute_reference(original, capacity, priority, tries);
          ++cases;

          // The reference: experts, kept flags, the rerouted list in serving order.
          REQUIRE(r.expert == ref.expert);
          for (Index i = 0; i < r.size(); ++i) REQUIRE(plan.kept(i) == ref.kept[static_cast<std::size_t>(i)]);
          REQUIRE(plan.rerouted == ref.rerouted);
          for (std::size_t j = 0; j < plan.rerouted.size(); ++j)
            REQUIRE(plan.rerouted_from[j] == original.expert[static_cast<std::size_t>(plan.rerouted[j])]);
          if (!plan.rerouted.empty()) ++rerouted_cases;
          // Gates: the rule on each token's experts (exactly: the same operations in the same order).
          RoutingResult<S> expected = r;
          for (Index t = 0; t < T; ++t) RuleRegate{renormalize}(expected, t, t * k, t * k + k);
          for (Index t = 0; t < T; ++t) {
            bool moved = false;
            for (Index j = 0; j < k; ++j) moved = moved || r.expert[static_cast<std::size_t>(t * k + j)] != original.expert[static_cast<std::size_t>(t * k + j)];
            for (Index j = 0; j < k; ++j) {
              const auto i = static_cast<std::size_t>(t * k + j);
              REQUIRE(r.gate[i] == (moved ? expected.gate[i] : original.gate[i]));
            }
          }
          // The plan's slabs hold the kept assignments with their (rerouted) experts and gates.
          for (Index e = 0; e < E; ++e)
            for (Index p = plan.begin(e); p < plan.begin(e + 1); ++p) {
              const auto a = static_cast<std::size_t>(plan.assignment[static_cast<std::size_t>(p)]);
              REQUIRE(r.expert[a] == e);
              REQUIRE(plan.gate[static_cast<std::size_t>(p)] == r.gate[a]);
            }

          // Properties. Capacity never exceeded.
          for (Index e = 0; e < E; ++e) REQUIRE(plan.count(e) <= capacity);
          // No assignment dropped while one of its first `tries` candidates has room.
          for (const Index i : plan.dropped) {
            const Index t = i / k;
            std::vector<Index> candidates;
            for (Index e = 0; e < E; ++e)
              if (std::find(r.expert.begin() + t * k, r.expert.begin() + t * k + k, e) == r.expert.begin() + t * k + k)
                candidates.push_back(e);
            std::stable_sort(candidates.begin(), candidates.end(),
                             [&](Index a, Index b) { return r.scores(t, a) > r.scores(t, b); });
            for (std::size_t c = 0; c < candidates.size() && static_cast<Index>(c) < tries; ++c)
              REQUIRE(plan.count(candidates[c]) == capacity);
          }
          // Never more drops than the base policy; what the base policy keeps stays put.
          moe::build_plan(original, base_plan, Capacity::fixed(capacity, priority));
          REQUIRE(plan.dropped.size() + plan.rerouted.size() == base_plan.dropped.size());
          for (Index i = 0; i < r.size(); ++i)
            if (base_plan.kept(i)) {
              REQUIRE(plan.kept(i));
              REQUIRE(r.expert[static_cast<std::size_t>(i)] == original.expert[static_cast<std::size_t>(i)]);
            }
        }
      }
    }
  }
  CHECK(cases == 720);
  CHECK(rerouted_cases > 300);  // most configurations overflow and reroute
}

TEST_CASE("the rerouting example of docs/capacity.md", "[dispatch][capacity][reroute]") {
  // Four tokens, three experts, top-1, capacity 1. Scores (rows = tokens):
  RoutingResult<S> r;
  r.reset(4, 3, 4, 1);
  r.scores.resize(4, 3);
  r.scores << 0.6, 0.3, 0.1,   // token 0 -> expert 0
      0.5, 0.2, 0.3,           // token 1 -> expert 0 (full): next best 2
      0.7, 0.1, 0.2,           // token 2 -> expert 0 (full): next best 2 (full), then 1
      0.4, 0.35, 0.25;         // token 3 -> expert 0 (full): 1 and 2 full
  for (Index t = 0; t < 4; ++t) {
    r.token[static_cast<std::size_t>(t)] = t;
    r.expert[static_cast<std::size_t>(t)] = 0;
    r.gate[static_cast<std::size_t>(t)] = r.scores(t, 0);
  }
  DispatchPlan<S> plan;
  SECTION("two tries") {
    moe::build_plan_rerouted(r, plan, Capacity::fixed(1).rerouted(2), RuleRegate{false});
    CHECK(r.expert == std::vector<Index>{0, 2, 1, 0});
    CHECK(r.gate == std::vector<S>{0.6, 0.3, 0.1, 0.4});
    CHECK(plan.rerouted == std::vector<Index>{1, 2});
    CHECK(plan.rerouted_from == std::vector<Index>{0, 0});
    CHECK(plan.dropped == std::vector<Index>{3});
    CHECK(plan.token == std::vector<Index>{0, 2, 1});
  }
  SECTION("one try: token 2's next best (expert 2) is full, so it is dropped; token 3's (1) has room") {
    moe::build_plan_rerouted(r, plan, Capacity::fixed(1).rerouted(1), RuleRegate{false});
    CHECK(r.expert == std::vector<Index>{0, 2, 0, 1});
    CHECK(plan.dropped == std::vector<Index>{2});
  }
  SECTION("batch prioritized: token 2 (0.7) keeps expert 0; token 0 moves to 1, token 1 to 2") {
    moe::build_plan_rerouted(r, plan, Capacity::fixed(1, Priority::batch_prioritized).rerouted(2), RuleRegate{false});
    CHECK(r.expert == std::vector<Index>{1, 2, 0, 0});
    CHECK(plan.rerouted == std::vector<Index>{0, 1});
    CHECK(plan.dropped == std::vector<Index>{3});
  }
}

TEST_CASE("rerouting: unlimited capacity and zero tries are build_plan, bad input is refused",
          "[dispatch][capacity][reroute][errors]") {
  const RoutingResult<S> original = random_softmax_routing(9, 4, 2, true, 7);
  DispatchPlan<S> plan, base;
  RoutingResult<S> r = original;
  moe::build_plan_rerouted(r, plan, Capacity::unlimited().rerouted(3), RuleRegate{true});
  moe::build_plan(original, base);
  CHECK(r.expert == original.expert);
  CHECK(plan.token == base.token);
  CHECK(plan.rerouted.empty());

  r = original;
  REQUIRE_THROWS_WITH(moe::build_plan(r, plan, Capacity::fixed(2).rerouted(1)),
                      "moe::build_plan(): Capacity::reroute expected 0 (rerouting recomputes gates by the router's "
                      "rule: build_plan_rerouted), got 1");
  REQUIRE_THROWS_WITH(moe::build_plan_rerouted(r, plan, Capacity::fixed(2).rerouted(-1), RuleRegate{true}),
                      "Capacity::validate(): reroute (tries) expected >= 0, got -1");
  RoutingResult<S> no_scores = original;
  no_scores.scores.resize(0, 0);
  REQUIRE_THROWS_WITH(moe::build_plan_rerouted(no_scores, plan, Capacity::fixed(2).rerouted(1), RuleRegate{true}),
                      "moe::build_plan_rerouted(): routing.scores shape expected [9, 4] (the router's order), got [0, 0]");
  RoutingResult<S> shuffled = original;
  std::swap(shuffled.token[0], shuffled.token[17]);
  REQUIRE_THROWS_WITH(moe::build_plan_rerouted(shuffled, plan, Capacity::fixed(2).rerouted(1), RuleRegate{true}),
                      "moe::build_plan_rerouted(): token indices expected token-major routing (non-decreasing, in "
                      "[0, num_tokens)), got 0 at assignment 1");
}

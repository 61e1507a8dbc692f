// Step 2: from routing triples to an expert-major permutation (CSR by expert).
#ifndef MOE_DISPATCH_DISPATCH_PLAN_HPP
#define MOE_DISPATCH_DISPATCH_PLAN_HPP

#include <moe/core/error.hpp>
#include <moe/core/types.hpp>
#include <moe/contracts/dispatch_plan.hpp>
#include <moe/contracts/routing_result.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

namespace moe {

namespace detail {

/// Fills plan.order with the serving order of `priority` (see Priority).
template <class S>
void priority_order(const RoutingResult<S>& routing, DispatchPlan<S>& plan, Priority priority) {
  const Index n = routing.size();
  const Index T = routing.num_tokens;
  const Index k = routing.k;
  const auto nu = static_cast<std::size_t>(n);
  plan.order.resize(nu);

  // Token-major layout (token t's choices at [t*k, t*k+k)): rank = i mod k, and the position
  // order (rank, token) is written directly, without sorting.
  bool token_major = k > 0 && n == T * k;
  for (Index i = 0; token_major && i < n; ++i) token_major = routing.token[static_cast<std::size_t>(i)] == i / k;
  if (token_major && priority == Priority::position) {
    std::size_t q = 0;
    for (Index j = 0; j < k; ++j)
      for (Index t = 0; t < T; ++t) plan.order[q++] = t * k + j;
    return;
  }

  // General case: rank = number of earlier assignments of the same token.
  plan.rank.resize(nu);
  plan.token_count.assign(static_cast<std::size_t>(T), 0);
  for (std::size_t i = 0; i < nu; ++i) {
    const Index t = routing.token[i];
    if (t < 0 || t >= T)
      detail::throw_invalid("moe::build_plan()", "token index in [0, num_tokens)", detail::concat("[0, ", T, ")"), t);
    plan.rank[i] = plan.token_count[static_cast<std::size_t>(t)]++;
  }
  const bool bpr = priority == Priority::batch_prioritized;
  if (bpr) {
    // The token's score is the gate of its first assignment; NaN sorts last so the order
    // stays a strict weak ordering.
    plan.token_score.assign(static_cast<std::size_t>(T), -std::numeric_limits<S>::infinity());
    for (std::size_t i = 0; i < nu; ++i)
      if (plan.rank[i] == 0 && !std::isnan(routing.gate[i]))
        plan.token_score[static_cast<std::size_t>(routing.token[i])] = routing.gate[i];
  }
  for (std::size_t i = 0; i < nu; ++i) plan.order[i] = static_cast<Index>(i);
  // std::sort with a total order (the assignment index breaks every tie) is deterministic and,
  // unlike std::stable_sort, never allocates.
  std::sort(plan.order.begin(), plan.order.end(), [&](Index a, Index b) {
    const auto au = static_cast<std::size_t>(a);
    const auto bu = static_cast<std::size_t>(b);
    if (plan.rank[au] != plan.rank[bu]) return plan.rank[au] < plan.rank[bu];
    const Index ta = routing.token[au];
    const Index tb = routing.token[bu];
    if (bpr) {
      const S sa = plan.token_score[static_cast<std::size_t>(ta)];
      const S sb = plan.token_score[static_cast<std::size_t>(tb)];
      if (sa != sb) return sa > sb;
    }
    if (ta != tb) return ta < tb;
    return a < b;
  });
}

/// Fills token_offsets / token_slots: a stable counting sort of the slots by token.
template <class S>
void build_token_map(DispatchPlan<S>& plan) {
  const auto T = static_cast<std::size_t>(plan.num_tokens);
  const Index N = plan.rows();
  plan.token_offsets.assign(T + 1, 0);
  plan.token_slots.resize(static_cast<std::size_t>(N));
  for (Index p = 0; p < N; ++p) ++plan.token_offsets[static_cast<std::size_t>(plan.token[static_cast<std::size_t>(p)]) + 1];
  for (std::size_t t = 0; t < T; ++t) plan.token_offsets[t + 1] += plan.token_offsets[t];
  for (Index p = 0; p < N; ++p) {
    const auto t = static_cast<std::size_t>(plan.token[static_cast<std::size_t>(p)]);
    plan.token_slots[static_cast<std::size_t>(plan.token_offsets[t]++)] = p;
  }
  for (std::size_t t = T; t > 0; --t) plan.token_offsets[t] = plan.token_offsets[t - 1];
  if (T > 0) plan.token_offsets[0] = 0;
}

/// build_plan's second half. On entry plan.offsets[e + 1] counts expert e's kept assignments
/// and plan.slot_of[i] is 0 for a kept assignment, -1 for a dropped one; lays the kept ones
/// out expert-major in routing order and builds the token map.
template <class S>
void layout_plan(const RoutingResult<S>& routing, DispatchPlan<S>& plan) {
  const Index n = routing.size();
  const auto En = static_cast<std::size_t>(plan.num_experts);
  for (std::size_t e = 0; e < En; ++e) plan.offsets[e + 1] += plan.offsets[e];

  const auto rows = static_cast<std::size_t>(plan.offsets[En]);
  // rows <= n: reserving n keeps a same-sized batch allocation-free whatever its routing.
  plan.token.reserve(static_cast<std::size_t>(n));
  plan.gate.reserve(static_cast<std::size_t>(n));
  plan.assignment.reserve(static_cast<std::size_t>(n));
  plan.token.resize(rows);
  plan.gate.resize(rows);
  plan.assignment.resize(rows);
  // The offsets double as cursors: a second pass in routing order keeps token order.
  std::vector<Index>& cursor = plan.offsets;  // advanced below, then restored
  for (Index i = 0; i < n; ++i) {
    const auto iu = static_cast<std::size_t>(i);
    if (plan.slot_of[iu] < 0) continue;
    const auto e = static_cast<std::size_t>(routing.expert[iu]);
    const Index p = cursor[e]++;
    plan.slot_of[iu] = p;
    plan.token[static_cast<std::size_t>(p)] = routing.token[iu];
    plan.gate[static_cast<std::size_t>(p)] = routing.gate[iu];
    plan.assignment[static_cast<std::size_t>(p)] = i;
  }
  // cursor[e] now equals the old offsets[e + 1]: shift back to restore the CSR offsets.
  for (std::size_t e = En; e > 0; --e) plan.offsets[e] = plan.offsets[e - 1];
  plan.offsets[0] = 0;
  plan.token_slots.reserve(static_cast<std::size_t>(n));  // kept rows vary with capacity; n bounds them
  build_token_map(plan);
}

}  // namespace detail

/// Builds the plan by a stable counting sort over experts.
///
/// With a bounded capacity, assignments claim slots in the order of `capacity.priority`
/// (computed here from the routing), or in the order `priority` gives when it is not empty (a
/// permutation of the assignment indices); an assignment that finds its expert full is
/// dropped. The kept ones are then laid out in routing order inside each expert, so capacity
/// only decides who is dropped, never the order of the kept rows.
template <class S>
void build_plan(const RoutingResult<S>& routing, DispatchPlan<S>& plan, const Capacity& capacity = {},
                std::span<const Index> priority = {}) {
  const Index E = routing.num_experts;
  const Index n = routing.size();
  const auto En = static_cast<std::size_t>(E);
  if (!priority.empty())
    detail::require(static_cast<Index>(priority.size()) == n, "moe::build_plan()", "priority length", n,
                    priority.size());
  plan.num_tokens = routing.num_tokens;
  plan.num_experts = E;
  plan.capacity = capacity.slots(n, E);
  if (capacity.reroute != 0)
    detail::throw_invalid("moe::build_plan()", "Capacity::reroute", "0 (rerouting recomputes gates by the router's rule: "
                          "build_plan_rerouted)", capacity.reroute);
  plan.offsets.assign(En + 1, 0);
  plan.slot_of.assign(static_cast<std::size_t>(n), 0);
  plan.dropped.clear();
  plan.rerouted.clear();
  plan.rerouted_from.clear();

  for (Index i = 0; i < n; ++i) {
    const Index e = routing.expert[static_cast<std::size_t>(i)];
    if (e < 0 || e >= E)
      detail::throw_invalid("moe::build_plan()", "expert index in [0, num_experts)", detail::concat("[0, ", E, ")"), e);
  }

  // Counting: offsets[e + 1] counts expert e's kept assignments. slot_of marks drops with -1.
  if (plan.capacity < 0) {
    for (Index e : routing.expert) ++plan.offsets[static_cast<std::size_t>(e) + 1];
  } else {
    if (priority.empty()) {
      detail::priority_order(routing, plan, capacity.priority);
      priority = plan.order;
    }
    // slot_of: -2 not yet served, 0 kept, -1 dropped; a repeated entry finds no -2.
    std::fill(plan.slot_of.begin(), plan.slot_of.end(), Index{-2});
    for (Index q = 0; q < n; ++q) {
      const Index i = priority[static_cast<std::size_t>(q)];
      // throw_invalid behind an if: require() would build its strings on every iteration.
      if (i < 0 || i >= n || plan.slot_of[static_cast<std::size_t>(i)] != -2)
        detail::throw_invalid("moe::build_plan()", "priority entry", detail::concat("a permutation of [0, ", n, ")"),
                              detail::concat(i, " at position ", q));
      const auto e = static_cast<std::size_t>(routing.expert[static_cast<std::size_t>(i)]);
      if (plan.offsets[e + 1] < plan.capacity) {
        ++plan.offsets[e + 1];
        plan.slot_of[static_cast<std::size_t>(i)] = 0;
      } else {
        plan.slot_of[static_cast<std::size_t>(i)] = -1;
      }
    }
    plan.dropped.reserve(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i)
      if (plan.slot_of[static_cast<std::size_t>(i)] < 0) plan.dropped.push_back(i);
  }
  detail::layout_plan(routing, plan);
}

/// Builds the plan from keep/drop decisions made elsewhere (a routing record's replay, a
/// capacity decided over several processes): kept[i] != 0 keeps routing assignment i, 0 drops
/// it; `capacity` is recorded as the plan's. The kept ones are laid out as build_plan lays them
/// out (expert-major, routing order inside an expert).
template <class S>
void build_plan_from_kept(const RoutingResult<S>& routing, DispatchPlan<S>& plan, Index capacity,
                          std::span<const std::uint8_t> kept) {
  constexpr const char* where = "moe::build_plan_from_kept()";
  const Index n = routing.size();
  const Index E = routing.num_experts;
  detail::require(static_cast<Index>(kept.size()) == n, where, "kept flags (one per assignment)", n, kept.size());
  plan.num_tokens = routing.num_tokens;
  plan.num_experts = E;
  plan.capacity = capacity;
  plan.offsets.assign(static_cast<std::size_t>(E) + 1, 0);
  plan.slot_of.assign(static_cast<std::size_t>(n), 0);
  plan.dropped.clear();
  plan.rerouted.clear();
  plan.rerouted_from.clear();
  plan.dropped.reserve(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) {
    const auto iu = static_cast<std::size_t>(i);
    const Index e = routing.expert[iu];
    if (e < 0 || e >= E)
      detail::throw_invalid(where, "expert index in [0, num_experts)", detail::concat("[0, ", E, ")"), e);
    if (kept[iu] != 0) {
      ++plan.offsets[static_cast<std::size_t>(e) + 1];
    } else {
      plan.slot_of[iu] = -1;
      plan.dropped.push_back(i);
    }
  }
  detail::layout_plan(routing, plan);
}

}  // namespace moe

#endif  // MOE_DISPATCH_DISPATCH_PLAN_HPP

// Step 2, optional: overflow rerouting, an assignment that finds its expert full moves to the
// token's next-best expert with room (docs/capacity.md#rerouting).
#ifndef MOE_DISPATCH_REROUTE_HPP
#define MOE_DISPATCH_REROUTE_HPP

#include <moe/contracts/dispatch_plan.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/core/error.hpp>
#include <moe/core/types.hpp>
#include <moe/dispatch/dispatch_plan.hpp>

#include <cmath>
#include <cstddef>
#include <vector>

namespace moe {

/// build_plan with overflow rerouting (Capacity::reroute = r > 0, docs/capacity.md#rerouting).
///
/// 1. Every assignment is served in the order of capacity.priority, exactly as build_plan
///    does; those that find their expert full are the overflow, kept in that serving order.
/// 2. Each overflowing assignment, in that order, tries the token's next r experts in the
///    router's order (decreasing routing.scores, ties to the lower index; experts the token
///    already holds and NaN scores skipped) and moves to the first with a free slot; if none
///    of the r has room it is dropped. First choices are thus never displaced by a rerouted
///    assignment, and a dropped assignment found all of its r candidates full.
/// 3. regate(routing, t, begin, end) recomputes the gates of every token whose assignments
///    moved (its run [begin, end) of the token-major routing) by the router's rule; then the
///    kept assignments are laid out as build_plan does.
///
/// routing is modified: a moved assignment's expert is the one it landed on, and the gates of
/// its token are the regated ones, so the router's backward sees the routing the experts ran.
/// Needs token-major routing (every token's assignments consecutive) with scores [T, E].
template <class S, class Regate>
void build_plan_rerouted(RoutingResult<S>& routing, DispatchPlan<S>& plan, const Capacity& capacity,
                         Regate&& regate) {
  constexpr const char* where = "moe::build_plan_rerouted()";
  const Index E = routing.num_experts;
  const Index T = routing.num_tokens;
  const Index n = routing.size();
  const auto En = static_cast<std::size_t>(E);
  Capacity base = capacity;
  base.reroute = 0;
  if (capacity.slots(n, E) < 0 || capacity.reroute == 0) {  // nothing to reroute: build_plan sizes the plan
    build_plan(routing, plan, base);
    return;
  }
  plan.num_tokens = T;
  plan.num_experts = E;
  plan.capacity = capacity.slots(n, E);
  plan.offsets.assign(En + 1, 0);
  plan.slot_of.assign(static_cast<std::size_t>(n), 0);
  plan.dropped.clear();
  plan.rerouted.clear();
  plan.rerouted_from.clear();
  if (routing.scores.rows() != T || routing.scores.cols() != E)
    detail::throw_invalid(where, "routing.scores shape", detail::concat("[", T, ", ", E, "] (the router's order)"),
                          detail::concat("[", routing.scores.rows(), ", ", routing.scores.cols(), "]"));
  for (Index i = 0; i < n; ++i) {
    const Index e = routing.expert[static_cast<std::size_t>(i)];
    if (e < 0 || e >= E)
      detail::throw_invalid(where, "expert index in [0, num_experts)", detail::concat("[0, ", E, ")"), e);
  }
  for (Index i = 0; i < n; ++i) {
    const Index t = routing.token[static_cast<std::size_t>(i)];
    if (t < 0 || t >= T || (i > 0 && t < routing.token[static_cast<std::size_t>(i) - 1]))
      detail::throw_invalid(where, "token indices", "token-major routing (non-decreasing, in [0, num_tokens))",
                            detail::concat(t, " at assignment ", i));
  }
  detail::priority_order(routing, plan, base.priority);
  // Token runs, after priority_order (which uses token_count as its own scratch):
  // token_count[t] .. token_count[t + 1] are token t's assignments.
  plan.token_count.assign(static_cast<std::size_t>(T) + 1, 0);
  for (Index i = 0; i < n; ++i) ++plan.token_count[static_cast<std::size_t>(routing.token[static_cast<std::size_t>(i)]) + 1];
  for (std::size_t t = 0; t < static_cast<std::size_t>(T); ++t) plan.token_count[t + 1] += plan.token_count[t];

  // 1. The base policy; the overflow goes to plan.rerouted (scratch until step 2 settles it).
  std::vector<Index>& load = plan.offsets;  // load[e + 1]
  plan.rerouted.reserve(static_cast<std::size_t>(n));
  plan.rerouted_from.reserve(static_cast<std::size_t>(n));
  plan.dropped.reserve(static_cast<std::size_t>(n));
  std::vector<Index>& overflow = plan.dropped;  // serving order; reset to routing order below
  for (Index q = 0; q < n; ++q) {
    const Index i = plan.order[static_cast<std::size_t>(q)];
    const auto e = static_cast<std::size_t>(routing.expert[static_cast<std::size_t>(i)]);
    if (load[e + 1] < plan.capacity) {
      ++load[e + 1];
    } else {
      plan.slot_of[static_cast<std::size_t>(i)] = -1;
      overflow.push_back(i);
    }
  }
  // 2. Reroute the overflow in serving order. plan.rank marks tokens to regate (1).
  plan.rank.assign(static_cast<std::size_t>(T), 0);
  for (const Index i : overflow) {
    const auto iu = static_cast<std::size_t>(i);
    const Index t = routing.token[iu];
    const Index begin = plan.token_count[static_cast<std::size_t>(t)];
    const Index end = plan.token_count[static_cast<std::size_t>(t) + 1];
    const S* row = routing.scores.data() + t * E;
    auto holds = [&](Index e) {
      for (Index j = begin; j < end; ++j)
        if (routing.expert[static_cast<std::size_t>(j)] == e) return true;
      return false;
    };
    // The candidates in the router's order: the best score below the previous candidate's
    // (score, index) pair, among the experts the token does not hold.
    Index prev = -1;
    for (Index tried = 0; tried < capacity.reroute; ++tried) {
      Index best = -1;
      for (Index e = 0; e < E; ++e) {
        const S v = row[e];
        if (std::isnan(v) || holds(e)) continue;
        if (prev >= 0) {
          const S pv = row[prev];
          if (v > pv || (v == pv && e <= prev)) continue;  // at or before the previous candidate
        }
        if (best < 0 || v > row[best]) best = e;
      }
      if (best < 0) break;  // no expert left to try
      prev = best;
      if (load[static_cast<std::size_t>(best) + 1] < plan.capacity) {
        ++load[static_cast<std::size_t>(best) + 1];
        plan.rerouted.push_back(i);
        plan.rerouted_from.push_back(routing.expert[iu]);
        routing.expert[iu] = best;
        plan.slot_of[iu] = 0;
        plan.rank[static_cast<std::size_t>(t)] = 1;
        break;
      }
    }
  }
  // 3. Regate the tokens that moved, then lay out as build_plan does.
  for (Index t = 0; t < T; ++t)
    if (plan.rank[static_cast<std::size_t>(t)] != 0)
      regate(routing, t, plan.token_count[static_cast<std::size_t>(t)], plan.token_count[static_cast<std::size_t>(t) + 1]);
  plan.dropped.clear();
  for (Index i = 0; i < n; ++i)
    if (plan.slot_of[static_cast<std::size_t>(i)] < 0) plan.dropped.push_back(i);
  detail::layout_plan(routing, plan);
}

}  // namespace moe

#endif  // MOE_DISPATCH_REROUTE_HPP

// Step 2: from routing triples to an expert-major permutation (CSR by expert).
#ifndef MOE_DISPATCH_DISPATCH_PLAN_HPP
#define MOE_DISPATCH_DISPATCH_PLAN_HPP

#include <moe/core/error.hpp>
#include <moe/core/types.hpp>
#include <moe/router/routing_result.hpp>

#include <algorithm>
#include <cmath>
#include <span>
#include <vector>

namespace moe {

/// How many assignments one expert may take. Dropless (`none`) is the default.
struct Capacity {
  enum class Kind : std::uint8_t { none, factor, absolute };
  Kind kind = Kind::none;
  /// capacity = max(minimum, ceil(factor * assignments / E)) for Kind::factor.
  double factor = 1.0;
  Index minimum = 0;
  /// The capacity itself for Kind::absolute.
  Index absolute = 0;

  static Capacity unlimited() { return {}; }
  static Capacity from_factor(double f, Index min = 0) { return {Kind::factor, f, min, 0}; }
  static Capacity fixed(Index c) { return {Kind::absolute, 1.0, 0, c}; }

  /// Slots per expert for n assignments over E experts; -1 when unlimited.
  [[nodiscard]] Index slots(Index num_assignments, Index num_experts) const {
    switch (kind) {
      case Kind::none: return -1;
      case Kind::absolute: return absolute;
      case Kind::factor: {
        const double c = std::ceil(factor * static_cast<double>(num_assignments) / static_cast<double>(num_experts));
        return std::max(minimum, static_cast<Index>(c));
      }
    }
    return -1;
  }
};

/// The permutation every later stage reuses: rows of X_perm are grouped by expert
/// (expert-major) and keep token order inside an expert, so results do not depend on
/// thread count or on the order work is scheduled.
template <class S>
struct DispatchPlan {
  Index num_tokens = 0;
  Index num_experts = 0;
  /// Slots per expert, -1 when unlimited.
  Index capacity = -1;

  /// offsets[e] .. offsets[e+1] are expert e's rows in X_perm; size E + 1.
  std::vector<Index> offsets;
  /// Per slot p: the token whose row goes there, its gate, and the routing assignment.
  std::vector<Index> token;
  std::vector<S> gate;
  std::vector<Index> assignment;
  /// Per routing assignment: its slot, or -1 when capacity dropped it.
  std::vector<Index> slot_of;
  /// Routing assignments dropped by capacity, in routing order.
  std::vector<Index> dropped;

  [[nodiscard]] Index rows() const noexcept { return offsets.empty() ? 0 : offsets.back(); }
  [[nodiscard]] Index begin(Index e) const { return offsets[static_cast<std::size_t>(e)]; }
  [[nodiscard]] Index count(Index e) const {
    return offsets[static_cast<std::size_t>(e) + 1] - offsets[static_cast<std::size_t>(e)];
  }
};

/// Builds the plan by a stable counting sort over experts.
///
/// With a capacity, assignments claim slots in `priority` order (a permutation of the
/// assignment indices; empty means routing order, i.e. first come, first served); the kept
/// ones are then laid out in routing order inside each expert, so capacity only decides who
/// is dropped, never the order of the kept rows.
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
  plan.offsets.assign(En + 1, 0);
  plan.slot_of.assign(static_cast<std::size_t>(n), 0);
  plan.dropped.clear();

  for (Index i = 0; i < n; ++i) {
    const Index e = routing.expert[static_cast<std::size_t>(i)];
    detail::require(e >= 0 && e < E, "moe::build_plan()", "expert index in [0, num_experts)",
                    detail::concat("[0, ", E, ")"), e);
  }

  // Counting: offsets[e + 1] counts expert e's kept assignments. slot_of marks drops with -1.
  if (plan.capacity < 0) {
    for (Index e : routing.expert) ++plan.offsets[static_cast<std::size_t>(e) + 1];
  } else {
    for (Index q = 0; q < n; ++q) {
      const Index i = priority.empty() ? q : priority[static_cast<std::size_t>(q)];
      const auto e = static_cast<std::size_t>(routing.expert[static_cast<std::size_t>(i)]);
      if (plan.offsets[e + 1] < plan.capacity) {
        ++plan.offsets[e + 1];
      } else {
        plan.slot_of[static_cast<std::size_t>(i)] = -1;
      }
    }
    for (Index i = 0; i < n; ++i)
      if (plan.slot_of[static_cast<std::size_t>(i)] < 0) plan.dropped.push_back(i);
  }
  for (std::size_t e = 0; e < En; ++e) plan.offsets[e + 1] += plan.offsets[e];

  const auto rows = static_cast<std::size_t>(plan.offsets[En]);
  plan.token.resize(rows);
  plan.gate.resize(rows);
  plan.assignment.resize(rows);
  // Reuse `dropped`-free cursor storage: a second pass in routing order keeps token order.
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
}

}  // namespace moe

#endif  // MOE_DISPATCH_DISPATCH_PLAN_HPP

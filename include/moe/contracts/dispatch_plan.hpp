// Step 2's output, read by every later stage: the capacity rule and the expert-major plan.
#ifndef MOE_CONTRACTS_DISPATCH_PLAN_HPP
#define MOE_CONTRACTS_DISPATCH_PLAN_HPP

#include <moe/core/error.hpp>
#include <moe/core/types.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace moe {

/// The order in which assignments claim an expert's slots when capacity is bounded. It only
/// decides who is dropped: the kept rows of an expert always stay in routing (token) order.
///
/// An assignment's rank is its place among its token's assignments in routing order (j for
/// the j-th choice of a token-choice router, best first).
enum class Priority : std::uint8_t {
  /// First come, first served over the flattened batch: by (rank, token), so for k > 1 every
  /// first choice is served before any second choice (GShard); for k = 1 token order.
  position,
  /// Batch Prioritized Routing (V-MoE): by (rank, decreasing gate of the token's first
  /// assignment, token), so confident tokens keep their expert when it overflows.
  batch_prioritized,
};

/// How many assignments one expert may take. Dropless (`none`) is the default.
struct Capacity {
  enum class Kind : std::uint8_t { none, factor, absolute };
  Kind kind = Kind::none;
  /// Kind::factor: capacity = max(minimum, ceil(factor * n / E)) for n assignments, i.e.
  /// ceil(cf * k * T / E) for a token-choice router (n = T * k), computed in double.
  double factor = 1.0;
  Index minimum = 0;
  /// The capacity itself for Kind::absolute.
  Index absolute = 0;
  /// Who claims slots first when an expert overflows.
  Priority priority = Priority::position;
  /// Overflow rerouting (docs/capacity.md#rerouting): 0 drops an assignment whose expert is
  /// full; r > 0 tries the token's next r experts in its router's order (those it did not
  /// choose, best first) and moves the assignment to the first with room, its gate recomputed
  /// by the router's rule. Needs a router that can recompute gates (a `regate` member).
  Index reroute = 0;

  static Capacity unlimited() { return {}; }
  static Capacity from_factor(double f, Index min = 0, Priority p = Priority::position) {
    return {Kind::factor, f, min, 0, p};
  }
  static Capacity fixed(Index c, Priority p = Priority::position) { return {Kind::absolute, 1.0, 0, c, p}; }
  /// This capacity with overflow rerouting over up to `tries` next-best experts.
  [[nodiscard]] Capacity rerouted(Index tries) const {
    Capacity c = *this;
    c.reroute = tries;
    return c;
  }

  /// Throws std::invalid_argument for a factor that is not positive and finite, or a negative
  /// minimum or absolute capacity.
  void validate() const {
    constexpr const char* where = "Capacity::validate()";
    if (kind == Kind::factor) {
      detail::require(std::isfinite(factor) && factor > 0, where, "factor", "finite and > 0", factor);
      detail::require(minimum >= 0, where, "minimum", ">= 0", minimum);
    }
    if (kind == Kind::absolute) detail::require(absolute >= 0, where, "absolute capacity", ">= 0", absolute);
    if (reroute != 0) detail::require(reroute > 0, where, "reroute (tries)", ">= 0", reroute);
  }

  /// Slots per expert for n assignments over E experts; -1 when unlimited.
  [[nodiscard]] Index slots(Index num_assignments, Index num_experts) const {
    validate();
    switch (kind) {
      case Kind::none: return -1;
      case Kind::absolute: return absolute;
      case Kind::factor: {
        if (num_experts <= 0) return minimum;
        // factor * n first, as the frameworks write ceil(cf * tokens / E).
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
  /// Overflow rerouting (Capacity::reroute > 0): the assignments moved to another expert, in
  /// the order they were served, and the expert each first chose (the routing result holds
  /// the one it landed on). Empty otherwise.
  std::vector<Index> rerouted;
  std::vector<Index> rerouted_from;
  /// The transpose, token-major: token t's slots are token_slots[token_offsets[t] ..
  /// token_offsets[t + 1]), in ascending slot order (so in expert order). Combine and the
  /// transposed gather run per token from it, in parallel and in a fixed summation order.
  std::vector<Index> token_offsets;
  std::vector<Index> token_slots;

  /// Scratch of build_plan when capacity is bounded (kept so a steady-state call allocates
  /// nothing): the serving order of the assignments, each assignment's rank, a per-token
  /// counter, and the per-token priority score of batch-prioritized routing.
  std::vector<Index> order;
  std::vector<Index> rank;
  std::vector<Index> token_count;
  std::vector<S> token_score;

  [[nodiscard]] Index rows() const noexcept { return offsets.empty() ? 0 : offsets.back(); }
  [[nodiscard]] Index begin(Index e) const { return offsets[static_cast<std::size_t>(e)]; }
  [[nodiscard]] Index count(Index e) const {
    return offsets[static_cast<std::size_t>(e) + 1] - offsets[static_cast<std::size_t>(e)];
  }
  /// Whether routing assignment i kept its slot.
  [[nodiscard]] bool kept(Index i) const { return slot_of[static_cast<std::size_t>(i)] >= 0; }
};

}  // namespace moe

#endif  // MOE_CONTRACTS_DISPATCH_PLAN_HPP

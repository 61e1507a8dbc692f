// Step 6 (bookkeeping): what a forward call did, for users and for balancing.
#ifndef MOE_DISPATCH_STATISTICS_HPP
#define MOE_DISPATCH_STATISTICS_HPP

#include <moe/contracts/dispatch_plan.hpp>
#include <moe/contracts/statistics.hpp>

#include <algorithm>
#include <cstddef>

namespace moe {

/// Per-expert kept load, dropped assignments and the experts-per-token histogram of the last
/// forward. The histogram comes from the plan's token map (token_offsets, T + 1 entries); a
/// plan without one (the dense path's slot plan) leaves it empty.
template <class S>
void record_statistics(const DispatchPlan<S>& plan, Index num_assignments, LayerStatistics& stats) {
  stats.tokens = plan.num_tokens;
  stats.assignments = num_assignments;
  stats.dropped = static_cast<Index>(plan.dropped.size());
  stats.rerouted = static_cast<Index>(plan.rerouted.size());
  stats.expert_load.resize(static_cast<std::size_t>(plan.num_experts));
  for (Index e = 0; e < plan.num_experts; ++e) stats.expert_load[static_cast<std::size_t>(e)] = plan.count(e);
  const auto T = static_cast<std::size_t>(plan.num_tokens);
  if (plan.token_offsets.size() != T + 1) {
    stats.experts_per_token.clear();
    return;
  }
  // E + 1 bins whatever the batch: the size stays put, so a steady state allocates nothing.
  stats.experts_per_token.assign(static_cast<std::size_t>(plan.num_experts) + 1, 0);
  for (std::size_t t = 0; t < T; ++t) {
    const Index n = plan.token_offsets[t + 1] - plan.token_offsets[t];
    ++stats.experts_per_token[static_cast<std::size_t>(std::min(n, plan.num_experts))];
  }
}

}  // namespace moe

#endif  // MOE_DISPATCH_STATISTICS_HPP

// Step 6 (bookkeeping): what a forward call did, for users and for balancing.
#ifndef MOE_DISPATCH_STATISTICS_HPP
#define MOE_DISPATCH_STATISTICS_HPP

#include <moe/contracts/dispatch_plan.hpp>
#include <moe/contracts/statistics.hpp>

namespace moe {

/// Per-expert kept load and dropped assignments of the last forward.
template <class S>
void record_statistics(const DispatchPlan<S>& plan, Index num_assignments, LayerStatistics& stats) {
  stats.tokens = plan.num_tokens;
  stats.assignments = num_assignments;
  stats.dropped = static_cast<Index>(plan.dropped.size());
  stats.expert_load.resize(static_cast<std::size_t>(plan.num_experts));
  for (Index e = 0; e < plan.num_experts; ++e) stats.expert_load[static_cast<std::size_t>(e)] = plan.count(e);
}

}  // namespace moe

#endif  // MOE_DISPATCH_STATISTICS_HPP

// Step 6's output: what one forward call did, for users and for balancing.
#ifndef MOE_CONTRACTS_STATISTICS_HPP
#define MOE_CONTRACTS_STATISTICS_HPP

#include <moe/core/types.hpp>

#include <vector>

namespace moe {

/// What one forward call saw: per-expert load after capacity, and drops.
struct LayerStatistics {
  Index tokens = 0;
  Index assignments = 0;
  Index dropped = 0;
  std::vector<Index> expert_load;  ///< kept assignments per expert
};

}  // namespace moe

#endif  // MOE_CONTRACTS_STATISTICS_HPP

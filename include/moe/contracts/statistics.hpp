// Step 6's output: what one forward call did, for users and for balancing.
#ifndef MOE_CONTRACTS_STATISTICS_HPP
#define MOE_CONTRACTS_STATISTICS_HPP

#include <moe/core/types.hpp>

#include <vector>

namespace moe {

/// What one forward call saw: per-expert load after capacity, drops, and how many experts
/// each token ran through.
struct LayerStatistics {
  Index tokens = 0;
  Index assignments = 0;
  Index dropped = 0;
  /// Assignments overflow rerouting moved to another expert (Capacity::reroute > 0); they are
  /// kept, so not counted in `dropped`.
  Index rerouted = 0;
  std::vector<Index> expert_load;  ///< kept assignments per expert
  /// experts_per_token[n]: the tokens that ran through n experts (kept assignments, after
  /// capacity), n = 0..E. Varies with the token under adaptive routing (TopP, ThresholdSkip),
  /// expert choice and capacity; empty for a dense router (Soft MoE), whose every token
  /// reaches every slot.
  std::vector<Index> experts_per_token;

  /// The mean number of experts a token ran through: kept assignments / tokens (0 for none).
  [[nodiscard]] double mean_experts_per_token() const noexcept {
    return tokens == 0 ? 0.0 : static_cast<double>(assignments - dropped) / static_cast<double>(tokens);
  }
};

}  // namespace moe

#endif  // MOE_CONTRACTS_STATISTICS_HPP

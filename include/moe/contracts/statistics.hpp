// Step 6's output: what one forward call did, for users and for balancing.
#ifndef MOE_CONTRACTS_STATISTICS_HPP
#define MOE_CONTRACTS_STATISTICS_HPP

#include <moe/core/types.hpp>

#include <cstdint>
#include <vector>

namespace moe {

/// What an executor that brings experts in from storage (store::OnDemandExecutor) did in one
/// call, forward or backward: Workspace::expert_loads holds the last call's. Zeros for an
/// executor that loads nothing (LocalExecutor).
struct ExpertLoadStatistics {
  std::uint64_t hits = 0;        ///< needed experts found resident (or being loaded by another call)
  std::uint64_t misses = 0;      ///< needed experts this call loaded
  std::uint64_t bytes_read = 0;  ///< bytes read from the files by this call's loads
  std::uint64_t evictions = 0;   ///< experts this call evicted to make room
  ExpertLoadStatistics& operator+=(const ExpertLoadStatistics& o) noexcept {
    hits += o.hits, misses += o.misses, bytes_read += o.bytes_read, evictions += o.evictions;
    return *this;
  }
  friend bool operator==(const ExpertLoadStatistics&, const ExpertLoadStatistics&) = default;
};

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

// The statistics of one forward over all ranks from each rank's own (docs/expert_parallel.md). MPI-free.
#ifndef MOE_PARALLEL_MERGE_STATISTICS_HPP
#define MOE_PARALLEL_MERGE_STATISTICS_HPP

#include <moe/contracts/statistics.hpp>
#include <moe/core/error.hpp>
#include <moe/core/types.hpp>

#include <algorithm>
#include <cstddef>
#include <span>

namespace moe::parallel {

/// The LayerStatistics of the whole batch from those of its parts (one per rank, in rank
/// order): counts and per-expert loads summed, the experts-per-token histograms summed bin by
/// bin. Everything is an integer, so the result does not depend on the order; under expert
/// parallelism it equals what the single-process layer records for the concatenated batch
/// (with per-rank capacity groups where capacity is on). A part with an empty histogram (a
/// rank with zero tokens records one of E + 1 zeros; a dense router none) adds nothing to it.
[[nodiscard]] inline LayerStatistics merge_statistics(std::span<const LayerStatistics> parts) {
  LayerStatistics out;
  std::size_t experts = 0, bins = 0;
  for (const LayerStatistics& p : parts) {
    experts = std::max(experts, p.expert_load.size());
    bins = std::max(bins, p.experts_per_token.size());
  }
  out.expert_load.assign(experts, 0);
  out.experts_per_token.assign(bins, 0);
  for (std::size_t r = 0; r < parts.size(); ++r) {
    const LayerStatistics& p = parts[r];
    detail::require(p.expert_load.size() == experts, "moe::parallel::merge_statistics()",
                    detail::concat("expert_load length of part ", r), experts, p.expert_load.size());
    out.tokens += p.tokens;
    out.assignments += p.assignments;
    out.dropped += p.dropped;
    out.rerouted += p.rerouted;
    for (std::size_t e = 0; e < experts; ++e) out.expert_load[e] += p.expert_load[e];
    if (p.experts_per_token.empty()) continue;
    detail::require(p.experts_per_token.size() == bins, "moe::parallel::merge_statistics()",
                    detail::concat("experts_per_token length of part ", r), bins, p.experts_per_token.size());
    for (std::size_t b = 0; b < bins; ++b) out.experts_per_token[b] += p.experts_per_token[b];
  }
  return out;
}

}  // namespace moe::parallel

#endif  // MOE_PARALLEL_MERGE_STATISTICS_HPP

// Which rank owns which experts under expert parallelism: contiguous blocks, E need not divide
// by the rank count (docs/expert_parallel.md). MPI-free.
#ifndef MOE_PARALLEL_EXPERT_PARTITION_HPP
#define MOE_PARALLEL_EXPERT_PARTITION_HPP

#include <moe/core/error.hpp>
#include <moe/core/types.hpp>

namespace moe::parallel {

/// E experts over P ranks in contiguous blocks: rank r owns [floor(r E / P), floor((r + 1) E / P)).
/// Block sizes differ by at most one (E = 6, P = 4: 1, 2, 1, 2 experts), and the owners of
/// consecutive experts never decrease, so the rows a rank sends to rank q are one contiguous
/// range of its expert-major rows. Every rank owns at least one expert (P <= E).
class ExpertPartition {
 public:
  ExpertPartition(Index num_experts, Index num_ranks) : num_experts_(num_experts), num_ranks_(num_ranks) {
    constexpr const char* where = "ExpertPartition::ExpertPartition()";
    detail::require(num_ranks >= 1, where, "num_ranks", ">= 1", num_ranks);
    detail::require(num_experts >= num_ranks, where, "num_experts (every rank owns an expert)",
                    detail::concat(">= num_ranks = ", num_ranks), num_experts);
  }

  [[nodiscard]] Index num_experts() const noexcept { return num_experts_; }
  [[nodiscard]] Index num_ranks() const noexcept { return num_ranks_; }

  /// Rank r's first expert; first(P) = E.
  [[nodiscard]] Index first(Index r) const {
    detail::require(r >= 0 && r <= num_ranks_, "ExpertPartition::first()", "rank",
                    detail::concat("in [0, ", num_ranks_, "]"), r);
    return r * num_experts_ / num_ranks_;
  }
  /// How many experts rank r owns.
  [[nodiscard]] Index count(Index r) const { return first(r + 1) - first(r); }
  /// The largest block, in experts.
  [[nodiscard]] Index max_count() const noexcept { return (num_experts_ + num_ranks_ - 1) / num_ranks_; }
  /// The rank that owns expert e: the largest r with floor(r E / P) <= e.
  [[nodiscard]] Index owner(Index e) const {
    detail::require(e >= 0 && e < num_experts_, "ExpertPartition::owner()", "expert index",
                    detail::concat("in [0, ", num_experts_, ")"), e);
    return ((e + 1) * num_ranks_ - 1) / num_experts_;
  }

  friend bool operator==(const ExpertPartition&, const ExpertPartition&) = default;

 private:
  Index num_experts_;
  Index num_ranks_;
};

}  // namespace moe::parallel

#endif  // MOE_PARALLEL_EXPERT_PARTITION_HPP

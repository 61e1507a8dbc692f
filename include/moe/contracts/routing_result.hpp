// Step 1's output: who goes where, with what weight.
#ifndef MOE_CONTRACTS_ROUTING_RESULT_HPP
#define MOE_CONTRACTS_ROUTING_RESULT_HPP

#include <moe/core/types.hpp>

#include <vector>

namespace moe {

/// The routing decision for one batch, as (token, expert, gate) triples.
///
/// Token-choice routers write T*k triples, token-major (token t's choices are rows
/// [t*k, t*k+k), best first); adaptive token-choice rules (TopP, ThresholdSkip) write 1..k per
/// token, still token-major and best first, with k = 0; expert-choice routers write E*c, hash
/// routers T. The triples
/// are the decision before capacity is applied: the DispatchPlan records which were dropped,
/// so balancing losses see what the router chose. `logits` and `scores` keep what the losses
/// and the backward pass need.
template <class S>
struct RoutingResult {
  Index num_tokens = 0;
  Index num_experts = 0;
  /// Assignments per token for token-choice routers; 0 when the count varies per token.
  Index k = 0;

  std::vector<Index> token;
  std::vector<Index> expert;
  std::vector<S> gate;

  /// Router logits [T, E] (after any learned logit bias).
  RowMatrix<S> logits;
  /// The scores selection was made on [T, E]: softmax probabilities, sigmoid scores, or the
  /// logits themselves for routers that select before normalising.
  RowMatrix<S> scores;

  [[nodiscard]] Index size() const noexcept { return static_cast<Index>(token.size()); }

  /// Sizes every array for T tokens, E experts and n assignments. Keeps capacity, so a
  /// steady-state batch shape allocates nothing.
  void reset(Index num_tokens_, Index num_experts_, Index num_assignments, Index k_) {
    num_tokens = num_tokens_;
    num_experts = num_experts_;
    k = k_;
    const auto n = static_cast<std::size_t>(num_assignments);
    token.resize(n);
    expert.resize(n);
    gate.resize(n);
  }

  /// The dense [T, E] gate matrix: the weight token t gives expert e, 0 where not routed.
  [[nodiscard]] RowMatrix<S> dense_gates() const {
    RowMatrix<S> g = RowMatrix<S>::Zero(num_tokens, num_experts);
    for (std::size_t i = 0; i < token.size(); ++i) g(token[i], expert[i]) += gate[i];
    return g;
  }

  /// Number of assignments each expert received (before capacity).
  [[nodiscard]] std::vector<Index> expert_counts() const {
    std::vector<Index> counts(static_cast<std::size_t>(num_experts), 0);
    for (Index e : expert) ++counts[static_cast<std::size_t>(e)];
    return counts;
  }
};

}  // namespace moe

#endif  // MOE_CONTRACTS_ROUTING_RESULT_HPP

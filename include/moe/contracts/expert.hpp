// What step 4 hands an expert bank that asks for it (expert_traits<E>::needs_context): the
// forward's context, the whole input and which tokens its slab holds.
#ifndef MOE_CONTRACTS_EXPERT_HPP
#define MOE_CONTRACTS_EXPERT_HPP

#include <moe/core/context.hpp>
#include <moe/core/types.hpp>

#include <span>

namespace moe {

/// The context of one expert slab. Row i of the slab is token tokens[i] of the layer's input
/// (sparse path, rows in token order); on the dense path (Soft MoE) rows are slots that mix
/// tokens, and `tokens` is empty.
template <class S>
struct ExpertContext {
  const ForwardContext& forward;
  /// The layer's whole input x [T, d]: an expert that needs a token's neighbours in its
  /// sequence (convolution, recurrence) reads them here.
  ConstMatrixRef<S> input;
  /// Token index of each row of the slab; empty on the dense path.
  std::span<const Index> tokens{};
  /// Backward only, for banks with expert_traits<E>::reads_other_tokens: the layer's dL/dx
  /// [T, d], into which the expert adds the gradient of the other tokens' inputs it read
  /// (its slab's own rows go to dx as usual). nullptr in forward and for other banks.
  MatrixRef<S>* input_grad = nullptr;

  /// Tokens per sequence (ForwardContext::sequence_length; the whole batch when 0).
  [[nodiscard]] Index sequence_length() const noexcept {
    return forward.sequence_length > 0 ? forward.sequence_length : input.rows();
  }
  /// Position of row i's token in its sequence.
  [[nodiscard]] Index position(Index i) const noexcept {
    const Index t = tokens[static_cast<std::size_t>(i)];
    return forward.sequence_length > 0 ? t % forward.sequence_length : t;
  }
  /// Sequence of row i's token.
  [[nodiscard]] Index sequence(Index i) const noexcept {
    const Index t = tokens[static_cast<std::size_t>(i)];
    return forward.sequence_length > 0 ? t / forward.sequence_length : 0;
  }
};

}  // namespace moe

#endif  // MOE_CONTRACTS_EXPERT_HPP

// The dense path's layout of slots (Soft MoE): read by the plan, the gather, the router, the
// combiner and the layer, so it lives with the other contracts between stages.
#ifndef MOE_CONTRACTS_SLOT_LAYOUT_HPP
#define MOE_CONTRACTS_SLOT_LAYOUT_HPP

#include <moe/contracts/dispatch_plan.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/core/error.hpp>
#include <moe/core/types.hpp>

#include <string_view>

namespace moe {

/// How the slots of a dense routing lie in X_perm.
///
/// The batch holds B sequences of S consecutive tokens; each sequence has E*p slots, slot i
/// belonging to expert i / p. X_perm is expert-major (expert, then sequence, then the
/// expert's p slots), so one expert sees the slots of every sequence as one slab and runs one
/// GEMM chain on B*p rows.
struct SlotLayout {
  Index num_sequences = 0;
  Index sequence_length = 0;
  Index num_experts = 0;
  Index slots_per_expert = 0;

  [[nodiscard]] Index slots_per_sequence() const noexcept { return num_experts * slots_per_expert; }
  /// Rows of one expert's slab: its p slots in each of the B sequences.
  [[nodiscard]] Index rows_per_expert() const noexcept { return num_sequences * slots_per_expert; }
  [[nodiscard]] Index rows() const noexcept { return num_experts * rows_per_expert(); }
  /// The X_perm row of slot `slot` (in [0, E*p)) of sequence b.
  [[nodiscard]] Index row(Index b, Index slot) const noexcept {
    const Index e = slot / slots_per_expert;
    return e * rows_per_expert() + b * slots_per_expert + slot % slots_per_expert;
  }
};

namespace detail {

/// Checks ForwardContext::sequence_length against T tokens and returns B.
/// Runs every forward and backward: the message is built only on failure (no allocation).
inline Index num_sequences(Index tokens, Index sequence_length, std::string_view where) {
  if (sequence_length < 0 || (sequence_length != 0 && tokens % sequence_length != 0))
    throw_invalid(where, "ctx.sequence_length", concat("0 or a divisor of the number of tokens ", tokens),
                  sequence_length);
  if (tokens == 0) return 0;
  return sequence_length == 0 ? 1 : tokens / sequence_length;
}

}  // namespace detail

/// The layout of a dense routing result: T and E from the result, p from the width of its
/// logits [T, E*p], B from the sequence length (0: the whole batch is one sequence).
template <class S>
[[nodiscard]] SlotLayout make_slot_layout(const RoutingResult<S>& routing, Index sequence_length) {
  constexpr const char* where = "moe::make_slot_layout()";
  const Index T = routing.num_tokens;
  const Index E = routing.num_experts;
  // Messages are built only on failure: this runs every call.
  if (E < 1 || routing.logits.cols() % E != 0)
    detail::throw_invalid(where, "logits columns (num_experts * slots_per_expert)",
                          detail::concat("a multiple of num_experts = ", E), routing.logits.cols());
  SlotLayout l;
  l.num_sequences = detail::num_sequences(T, sequence_length, where);
  l.sequence_length = l.num_sequences == 0 ? 0 : T / l.num_sequences;
  l.num_experts = E;
  l.slots_per_expert = routing.logits.cols() / E;
  return l;
}

/// The layout a dense plan was built with; `slots_per_sequence` is E*p (the logits' width).
template <class S>
[[nodiscard]] SlotLayout slot_layout(const DispatchPlan<S>& plan, Index slots_per_sequence) {
  constexpr const char* where = "moe::slot_layout()";
  const Index E = plan.num_experts;
  // Messages are built only on failure: this runs every forward and backward.
  if (E < 1 || slots_per_sequence % E != 0)
    detail::throw_invalid(where, "slots per sequence", detail::concat("a multiple of num_experts = ", E),
                          slots_per_sequence);
  SlotLayout l;
  l.num_experts = E;
  l.slots_per_expert = slots_per_sequence / E;
  if (l.slots_per_expert < 1 || plan.capacity < 0 || plan.capacity % l.slots_per_expert != 0)
    detail::throw_invalid(where, "plan capacity (rows per expert of a dense plan)",
                          detail::concat("a multiple of slots_per_expert = ", l.slots_per_expert), plan.capacity);
  l.num_sequences = plan.capacity / l.slots_per_expert;
  l.sequence_length = l.num_sequences == 0 ? 0 : plan.num_tokens / l.num_sequences;
  return l;
}

}  // namespace moe

#endif  // MOE_CONTRACTS_SLOT_LAYOUT_HPP

// Per-call inputs beside x that some policies need.
#ifndef MOE_CORE_CONTEXT_HPP
#define MOE_CORE_CONTEXT_HPP

#include <moe/core/types.hpp>

#include <cstdint>
#include <span>

namespace moe {

/// What a forward call knows besides the activations. Routers read what their traits say
/// they need (token ids for hash routing, the seed and step for noise and jitter, the
/// sequence length for dense routers).
struct ForwardContext {
  Mode mode = Mode::inference;
  /// One id per token (row of x); only read by routers whose traits set needs_token_ids.
  std::span<const std::int64_t> token_ids{};
  /// Counter-based randomness is keyed by (seed, step, token).
  std::uint64_t seed = 0;
  std::uint64_t step = 0;
  /// Tokens per sequence: x holds B = T / sequence_length sequences of consecutive rows. Only
  /// dense routers (Soft MoE) read it, since their softmax over tokens runs within a sequence;
  /// 0 means the whole batch is one sequence.
  Index sequence_length = 0;
};

}  // namespace moe

#endif  // MOE_CORE_CONTEXT_HPP

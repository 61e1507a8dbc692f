// Per-call inputs beside x that some policies need.
#ifndef MOE_CORE_CONTEXT_HPP
#define MOE_CORE_CONTEXT_HPP

#include <moe/core/types.hpp>

#include <cstdint>
#include <span>

namespace moe {

class ThreadPool;
class RoutingTelemetry;
class RoutingTape;

/// What MoELayer::forward does with a NaN or an infinity in x.
enum class NonFinitePolicy : std::uint8_t {
  /// Throw std::invalid_argument naming the first non-finite entry (row-major order). A NaN
  /// that reaches the router would otherwise pick experts silently (top-k's comparisons with
  /// NaN are all false), so it is refused where it enters.
  error,
  /// Skip the check (one pass over x less) and let IEEE arithmetic carry the value: a NaN in
  /// token t's row makes that token's logits, gates and output row NaN; other rows are
  /// unaffected, to rounding, for per-token routers without capacity (docs/reliability.md).
  propagate,
};

/// Which kernel computes the products of a forward (kernels::gemm, docs/kernels.md).
enum class GemmKernel : std::uint8_t {
  /// The fastest: Eigen's GEMM, and the row-wise kernel for at most kernels::rowwise_max_rows
  /// rows (decode). A row's bits can depend on the other rows of its product, since Eigen picks
  /// its micro-kernel by a row's position in a block: a token routed in another batch may differ
  /// in the last bits. Results never depend on the thread count.
  fast,
  /// The row-wise kernel for every product whose rows are tokens, in the router, the shared
  /// gate and the experts' unpacked path: a token's output has the same bits in any batch and
  /// at any position in it (per-token routers without a capacity). The shipped expert banks'
  /// packed forward is batch-invariant in either mode (docs/experts.md#packed-weights).
  batch_invariant,
};

/// What a forward call knows besides the activations. Routers read what their traits say
/// they need (token ids for hash routing, the seed and step for noise and jitter, the
/// sequence length for dense routers).
struct ForwardContext {
  Mode mode = Mode::inference;
  /// One id per token (row of x); only read by routers whose traits set needs_token_ids.
  std::span<const std::int64_t> token_ids{};
  /// One modality id per token (text, image, ...), in [0, M); only read by ModalityRouter and
  /// ModalityLoadBalancingLoss (docs/routers.md#modality-experts).
  std::span<const std::int64_t> modality_ids{};
  /// One domain id per token, in [0, D): the labels of the supervised DomainLoss of
  /// DomainAwareRouter (docs/routers.md#domain-aware-routing); routing itself never reads them.
  std::span<const std::int64_t> domain_ids{};
  /// One task id per token, in [0, N): read by TaskAwareRouter's route and backward, which mix
  /// the base router with the token's task router (docs/routers.md#task-aware-routing).
  std::span<const std::int64_t> task_ids{};
  /// Threads for the expert, gather and combine stages; nullptr runs serially. The work is
  /// cut into the same tasks for any pool size, so results are bit-identical.
  ThreadPool* pool = nullptr;
  /// Counter-based randomness is keyed by (seed, step, token).
  std::uint64_t seed = 0;
  std::uint64_t step = 0;
  /// Tokens per sequence: x holds B = T / sequence_length sequences of consecutive rows. Only
  /// dense routers (Soft MoE) read it, since their softmax over tokens runs within a sequence;
  /// 0 means the whole batch is one sequence.
  Index sequence_length = 0;
  /// Whether forward checks x for NaN and infinities first (the default) or lets them through.
  NonFinitePolicy non_finite = NonFinitePolicy::error;
  /// The product kernel for this forward; batch_invariant trades speed for batch-independent rows.
  GemmKernel gemm = GemmKernel::fast;
  /// A collector of per-call routing records (RoutingTelemetry, dispatch/telemetry.hpp):
  /// forward appends one record per call when set; nullptr (the default) records nothing.
  RoutingTelemetry* telemetry = nullptr;
  /// The tag of this call's record in `telemetry` and `routing_tape` (which layer of a model
  /// it was).
  Index layer_index = 0;
  /// Routing record and replay (RoutingTape, dispatch/routing_tape.hpp; docs/replay.md): in
  /// TapeMode::record forward appends its decisions; in a replay mode it takes them from the
  /// tape's next record instead of routing. nullptr (the default): route as usual.
  RoutingTape* routing_tape = nullptr;
};

}  // namespace moe

#endif  // MOE_CORE_CONTEXT_HPP

// How much each auxiliary loss adds to the training objective.
#ifndef MOE_LOSS_LOSS_WEIGHTS_HPP
#define MOE_LOSS_LOSS_WEIGHTS_HPP

#include <moe/loss/bias_balancing.hpp>
#include <moe/loss/load_balancing_loss.hpp>

namespace moe {

/// Weights of the auxiliary losses backward adds to dL/dlogits (0 = not trained).
/// aux, z and sequence apply to every router with logits; importance and load are read by
/// routers that define them (noisy top-k).
template <class S>
struct LossWeights {
  S aux = S(0);
  S z = S(0);
  S importance = S(0);
  S load = S(0);
  /// DeepSeek-V3's sequence-wise balance loss (sequence_loss, alpha included), per sequence
  /// of ForwardContext::sequence_length tokens of the forward call.
  S sequence = S(0);
  LoadBalancingLoss aux_loss{};
  SequenceBalanceLoss sequence_loss{};
};

}  // namespace moe

#endif  // MOE_LOSS_LOSS_WEIGHTS_HPP

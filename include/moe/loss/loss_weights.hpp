// How much each auxiliary loss adds to the training objective.
#ifndef MOE_LOSS_LOSS_WEIGHTS_HPP
#define MOE_LOSS_LOSS_WEIGHTS_HPP

#include <moe/loss/load_balancing_loss.hpp>

namespace moe {

/// Weights of the auxiliary losses backward adds to dL/dlogits (0 = not trained).
/// aux and z apply to every router with logits; importance and load are read by routers that
/// define them (noisy top-k).
template <class S>
struct LossWeights {
  S aux = S(0);
  S z = S(0);
  S importance = S(0);
  S load = S(0);
  LoadBalancingLoss aux_loss{};
};

}  // namespace moe

#endif  // MOE_LOSS_LOSS_WEIGHTS_HPP

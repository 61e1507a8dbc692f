// The shipped auxiliary losses by name: a shorthand for the loss list of backward.
#ifndef MOE_LOSS_LOSS_WEIGHTS_HPP
#define MOE_LOSS_LOSS_WEIGHTS_HPP

#include <moe/loss/bias_balancing.hpp>
#include <moe/loss/importance_loss.hpp>
#include <moe/loss/load_balancing_loss.hpp>
#include <moe/loss/loss_list.hpp>
#include <moe/loss/z_loss.hpp>

namespace moe {

/// Weights of the shipped auxiliary losses (0 = not trained). MoELayer::backward turns them
/// into the loss list of list() (a loss with weight 0 is skipped, as before):
/// aux (LoadBalancingLoss aux_loss), z (RouterZLoss) and sequence (SequenceBalanceLoss
/// sequence_loss, per sequence of ForwardContext::sequence_length tokens) on the logits,
/// importance (ImportanceLoss) on the gates of any sparse router, and load (LoadLoss) on
/// noisy top-k's internals (a router that does not accept it throws when load != 0).
/// Other losses: pass moe::losses(weighted(MyLoss{}, w), ...) to backward instead.
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

  /// The routing losses as a list, in the order backward has always applied them.
  [[nodiscard]] auto routing_losses() const {
    return losses(weighted(aux_loss, aux), weighted(RouterZLoss{}, z), weighted(ImportanceLoss{}, importance),
                  weighted(sequence_loss, sequence));
  }
  /// All five, for a router that accepts LoadLoss (noisy top-k).
  [[nodiscard]] auto list() const {
    return losses(weighted(aux_loss, aux), weighted(RouterZLoss{}, z), weighted(ImportanceLoss{}, importance),
                  weighted(sequence_loss, sequence), weighted(LoadLoss{}, load));
  }
};

}  // namespace moe

#endif  // MOE_LOSS_LOSS_WEIGHTS_HPP

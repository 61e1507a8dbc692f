// The backward pass of the dense (Soft MoE) path.
#ifndef MOE_LAYER_DENSE_BACKWARD_HPP
#define MOE_LAYER_DENSE_BACKWARD_HPP

#include <moe/core/types.hpp>
#include <moe/core/workspace.hpp>
#include <moe/loss/loss_weights.hpp>

namespace moe::detail {

template <class Layer>
inline constexpr bool dense_backward_available = false;

/// Backward of the dense path: not written yet; calling it stops compilation.
template <class Arch, class Layer, class Grads>
void dense_backward(const Layer&, const ConstMatrixRef<typename Layer::scalar_type>&,
                    MatrixRef<typename Layer::scalar_type>, Workspace<typename Layer::scalar_type>&, Grads&,
                    const LossWeights<typename Layer::scalar_type>&) {
  static_assert(dense_backward_available<Layer>,
                "MoELayer::backward(): the dense (Soft MoE) path has no backward yet (docs/soft_moe.md)");
}

}  // namespace moe::detail

#endif  // MOE_LAYER_DENSE_BACKWARD_HPP

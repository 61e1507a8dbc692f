// The backward pass of the dense (Soft MoE) path: the stages of MoELayer::forward's dense
// branch in reverse, on the buffers that forward left in the Workspace.
#ifndef MOE_LAYER_DENSE_BACKWARD_HPP
#define MOE_LAYER_DENSE_BACKWARD_HPP

#include <moe/contracts/executor.hpp>
#include <moe/contracts/slot_layout.hpp>
#include <moe/contracts/training.hpp>
#include <moe/core/error.hpp>
#include <moe/core/types.hpp>
#include <moe/gather/gather_slots.hpp>
#include <moe/layer/workspace.hpp>

namespace moe::detail {

/// Backward of the dense path for L = sum(y * dy). ws holds the last training forward (x in
/// x_saved, logits and dispatch D in routing, combine weights C in combine.hidden, the slot
/// plan, x_perm / hidden / y_perm); dy is [T, d_out]; dx receives dL/dx [T, d] (the path
/// through the slots and the path through the logits); gradients accumulate into grads.
///
/// No auxiliary loss applies: the aux, z and importance losses are defined on token-choice
/// routing, which a dense router does not have (MoELayer::backward refuses a non-zero one).
///
/// Buffers: dy_perm, dx_perm, dhidden as in the sparse path; dlogits [T, E*p] for dL/dlogits;
/// dscores [T, E*p] for dL/dD. After the first call with a shape, nothing is allocated: the
/// router's E*p vectors live in its thread's scratch (tests/alloc).
template <class Arch, class Layer, class Grads>
void dense_backward(const Layer& layer, const ConstMatrixRef<typename Layer::scalar_type>& dy,
                    MatrixRef<typename Layer::scalar_type> dx, Workspace<typename Layer::scalar_type>& ws,
                    Grads& grads) {
  using S = typename Layer::scalar_type;
  const auto& plan = ws.plan;
  const auto& routing = ws.routing;
  const Index N = plan.rows();
  const Index T = ws.x_saved.rows();
  const Index slots = routing.logits.cols();
  const SlotLayout layout = slot_layout(plan, slots);
  ensure_shape(ws.dy_perm, N, layer.output_dim());
  ensure_shape(ws.dx_perm, N, layer.input_dim());
  ensure_shape(ws.dhidden, N, layer.experts().hidden_cols());
  ensure_shape(ws.dlogits, T, slots);
  ensure_shape(ws.dscores, T, slots);
  CombineContext<S> cc{routing, ws.last_context, ws.combine};

  // 5 combine: dL/d(slot outputs) and the combine softmax's share of dL/dlogits.
  layer.combiner().template backward<Arch>(
      CombinerBackward<S>{.x = ws.x_saved, .plan = plan, .y_perm = ws.y_perm, .dy = dy, .dy_perm = ws.dy_perm,
                          .dlogits = ws.dlogits, .dx = dx},
      grads.combiner, cc);
  // 4 experts, slab by slab (every slab holds B*p slots), through the layer's executor.
  layer.executor().template backward<Arch>(layer.experts(), ws.expert_step_backward(), grads.experts);
  // 3 gather: slots = D_b^T X_b gives dx = D_b dslots_b and dL/dD = X_b dslots_b^T.
  gather_slots_backward<Arch>(ws.x_saved, routing, layout, ws.dx_perm, dx, ws.dscores);
  // 1 route: the dispatch softmax and the logits; adds the logits' path to dx.
  layer.router().template backward<Arch>(
      RouterBackward<S>{.x = ws.x_saved, .routing = routing, .dscores = ws.dscores, .dlogits = ws.dlogits,
                        .dx = dx, .context = BackwardContext{ws.last_context}},
      grads.router, no_losses);
}

}  // namespace moe::detail

#endif  // MOE_LAYER_DENSE_BACKWARD_HPP

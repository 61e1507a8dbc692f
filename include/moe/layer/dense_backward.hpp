// The backward pass of the dense (Soft MoE) path: the stages of MoELayer::forward's dense
// branch in reverse, on the buffers that forward left in the Workspace.
#ifndef MOE_LAYER_DENSE_BACKWARD_HPP
#define MOE_LAYER_DENSE_BACKWARD_HPP

#include <moe/core/error.hpp>
#include <moe/core/types.hpp>
#include <moe/core/workspace.hpp>
#include <moe/loss/loss_weights.hpp>
#include <moe/router/soft_router.hpp>

namespace moe::detail {

template <class RouterType, class S>
concept DenseRouterWithBackward = requires(const RouterType& r, const ConstMatrixRef<S>& x,
                                           const RoutingResult<S>& rr, Index b, MatrixRef<S> m, RouterType& g) {
  r.backward(x, rr, b, m, m, m, g);
};

template <class CombinerType, class S>
concept DenseCombinerWithBackward = requires(const CombinerType& c, const DispatchPlan<S>& plan,
                                             const ConstMatrixRef<S>& y, MatrixRef<S> m, const Workspace<S>& ws) {
  c.backward(plan, y, y, m, m, ws);
};

/// Backward of the dense path for L = sum(y * dy). ws holds the last training forward (x in
/// x_saved, logits and dispatch D in routing, combine weights C in combine_hidden, the slot
/// plan, x_perm / hidden / y_perm); dy is [T, d_out]; dx receives dL/dx [T, d] (the path
/// through the slots and the path through the logits); gradients accumulate into grads.
///
/// `weights` is ignored: the aux and z losses are defined on token-choice routing
/// probabilities, which a dense router does not have, so they add nothing here (and a caller
/// asking for them gets dx = 0 and no gradient when dy = 0).
///
/// Buffers: dy_perm, dx_perm, dhidden as in the sparse path; dlogits [T, E*p] for dL/dlogits;
/// combine_dout [T, E*p] for dL/dD (SoftCombiner keeps no shared expert, so the combiner's
/// backward scratch is free). After the first call with a shape, nothing is allocated: the
/// router's E*p vectors live in its thread's scratch (tests/alloc).
template <class Arch, class Layer, class Grads>
void dense_backward(const Layer& layer, const ConstMatrixRef<typename Layer::scalar_type>& dy,
                    MatrixRef<typename Layer::scalar_type> dx, Workspace<typename Layer::scalar_type>& ws,
                    Grads& grads, const LossWeights<typename Layer::scalar_type>& weights) {
  using S = typename Layer::scalar_type;
  static_assert(DenseRouterWithBackward<typename Layer::router_type, S>,
                "MoELayer::backward(): a dense RouterType must provide backward(x, routing, num_sequences, "
                "dscores, dlogits, dx, grad) (docs/soft_moe.md)");
  static_assert(DenseCombinerWithBackward<typename Layer::combiner_type, S>,
                "MoELayer::backward(): a dense CombinerType must provide backward(plan, y_perm, dy, dy_perm, "
                "dlogits, ws) (docs/soft_moe.md)");
  (void)weights;
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
  ensure_shape(ws.combine_dout, T, slots);

  // 5 combine: dL/d(slot outputs) and the combine softmax's share of dL/dlogits.
  layer.combiner().template backward<Arch>(plan, ws.y_perm, dy, ws.dy_perm, ws.dlogits, ws);
  // 4 experts, slab by slab (every slab holds B*p slots).
  for (Index e = 0; e < plan.num_experts; ++e) {
    const Index n = plan.count(e);
    if (n == 0) continue;
    const Index b = plan.begin(e);
    layer.experts().template backward<Arch>(e, ws.x_perm.middleRows(b, n), ws.hidden.middleRows(b, n),
                                            ws.dy_perm.middleRows(b, n), ws.dx_perm.middleRows(b, n),
                                            ws.dhidden.middleRows(b, n), grads.experts);
  }
  // 3 gather: slots = D_b^T X_b gives dx = D_b dslots_b and dL/dD = X_b dslots_b^T.
  gather_slots_backward<Arch>(ws.x_saved, routing, layout, ws.dx_perm, dx, ws.combine_dout);
  // 1 route: the dispatch softmax and the logits; adds the logits' path to dx.
  layer.router().template backward<Arch>(ws.x_saved, routing, layout.num_sequences, ws.combine_dout, ws.dlogits,
                                         dx, grads.router);
}

}  // namespace moe::detail

#endif  // MOE_LAYER_DENSE_BACKWARD_HPP

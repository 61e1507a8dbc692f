// The backward pass of a sparse MoELayer: the six stages in reverse, reusing the forward's plan.
#ifndef MOE_LAYER_BACKWARD_HPP
#define MOE_LAYER_BACKWARD_HPP

#include <moe/combine/token_major_sum.hpp>
#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/core/parameters.hpp>
#include <moe/core/traits.hpp>
#include <moe/core/types.hpp>
#include <moe/core/workspace.hpp>
#include <moe/kernels/gemm.hpp>
#include <moe/kernels/weighted_scatter_add.hpp>
#include <moe/loss/loss_weights.hpp>
#include <moe/loss/z_loss.hpp>

#include <optional>
#include <string>
#include <utility>

namespace moe {

/// Gradients of a layer's parameters: zeroed copies of its three policies, so every gradient
/// has the name and shape of its parameter (the checkpoint's names).
template <class ExpertType, class RouterType, class CombinerType>
struct Gradients {
  ExpertType experts;
  RouterType router;
  CombinerType combiner;

  /// Calls f(name, block) for every gradient tensor: router, experts, combiner.
  template <class F>
  void for_each_parameter(F&& f) {
    router.for_each_parameter(f);
    experts.for_each_parameter(f);
    combiner.for_each_parameter(f);
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    router.for_each_parameter(f);
    experts.for_each_parameter(f);
    combiner.for_each_parameter(f);
  }

  void set_zero() {
    for_each_parameter([](const std::string&, auto&& g) { g.setZero(); });
  }

  /// The gradient named `name` (a checkpoint name without the layer prefix), as a matrix.
  template <class S = typename ExpertType::scalar_type>
  [[nodiscard]] std::optional<RowMatrix<S>> find(const std::string& name) const {
    std::optional<RowMatrix<S>> out;
    for_each_parameter([&](const std::string& n, const auto& g) {
      if (n == name) out = RowMatrix<S>(g);
    });
    return out;
  }
};

namespace detail {

template <class RouterType, class S>
concept RouterWithLossBackward = requires(const RouterType& r, const ConstMatrixRef<S>& x, const RoutingResult<S>& rr,
                                          const S* dg, MatrixRef<S> m, RouterType& g, const LossWeights<S>& w) {
  r.backward(x, rr, dg, m, m, g, w);
};

template <class RouterType, class S>
concept RouterWithContextBackward = requires(const RouterType& r, const ConstMatrixRef<S>& x,
                                             const RoutingResult<S>& rr, const S* dg, MatrixRef<S> m, RouterType& g,
                                             const LossWeights<S>& w, const ForwardContext& ctx) {
  r.backward(x, rr, dg, m, m, g, w, ctx);
};

template <class RouterType, class S>
concept RouterWithBackward = requires(const RouterType& r, const ConstMatrixRef<S>& x, const RoutingResult<S>& rr,
                                      const S* dg, MatrixRef<S> m, RouterType& g) {
  r.backward(x, rr, dg, m, m, g);
};

/// Backward of the sparse path. ws holds the last training forward; dy is [T, d_out]; dx
/// receives dL/dx [T, d]; gradients accumulate into grads.
template <class Arch, class Layer, class Grads>
void sparse_backward(const Layer& layer, const ConstMatrixRef<typename Layer::scalar_type>& dy,
                     MatrixRef<typename Layer::scalar_type> dx, Workspace<typename Layer::scalar_type>& ws,
                     Grads& grads, const LossWeights<typename Layer::scalar_type>& weights) {
  using S = typename Layer::scalar_type;
  using RouterType = typename Layer::router_type;
  static_assert(RouterWithBackward<RouterType, S> || RouterWithLossBackward<RouterType, S>,
                "MoELayer::backward(): RouterType must provide backward(x, routing, dgate, dlogits, dx, grad) "
                "(docs/policies.md#routers)");
  const auto& plan = ws.plan;
  const auto& routing = ws.routing;
  const Index N = plan.rows();
  const Index T = ws.x_saved.rows();
  ensure_shape(ws.dy_perm, N, layer.output_dim());
  ensure_shape(ws.dx_perm, N, layer.input_dim());
  ensure_shape(ws.dhidden, N, layer.experts().hidden_cols());
  ws.dgate_slot.resize(static_cast<std::size_t>(N));

  // 5 combine: dY_perm, dL/dgate per slot; dx starts with what the combiner's own path gives.
  layer.combiner().template backward<Arch>(ws.x_saved, plan, ws.y_perm, dy, ws.dy_perm, ws.dgate_slot.data(), dx,
                                           grads.combiner, ws);
  // 4 experts: one task per expert, since its weight gradient sums over all its rows (a fixed
  // order, whatever the thread count); experts write disjoint slices of the gradients.
  kernels::prepare_threads<S>(ws.pool);
  parallel_for(ws.pool, plan.num_experts, [&](Index e) {
    const Index n = plan.count(e);
    if (n == 0) return;
    const Index b = plan.begin(e);
    layer.experts().template backward<Arch>(e, ws.x_perm.middleRows(b, n), ws.hidden.middleRows(b, n),
                                            ws.dy_perm.middleRows(b, n), ws.dx_perm.middleRows(b, n),
                                            ws.dhidden.middleRows(b, n), grads.experts);
  });
  // 3 gather: its transpose adds each token's dX_perm rows into dx, in slot order.
  ws.ones.assign(static_cast<std::size_t>(N), S(1));
  token_major_sum<Arch>(plan, ws.dx_perm, ws.ones.data(), dx, /*overwrite=*/false, ws.pool);
  // 2 plan: dL/dgate back to routing order; a dropped assignment contributed nothing.
  ws.dgate.assign(static_cast<std::size_t>(routing.size()), S(0));
  for (Index p = 0; p < N; ++p)
    ws.dgate[static_cast<std::size_t>(plan.assignment[static_cast<std::size_t>(p)])] =
        ws.dgate_slot[static_cast<std::size_t>(p)];
  // 6 losses on the logits, then 1 the router.
  ensure_shape(ws.dlogits, T, routing.logits.cols());
  ws.dlogits.setZero();
  if (weights.aux != S(0)) weights.aux_loss.template backward<S, Arch>(routing, weights.aux, ws.dlogits);
  if (weights.z != S(0)) RouterZLoss{}.template backward<S, Arch>(routing, weights.z, ws.dlogits);
  if (weights.sequence != S(0))
    weights.sequence_loss.backward(routing, ws.last_context.sequence_length, weights.sequence, ws.dlogits);
  // Routers that draw noise or jitter get the forward's context, to regenerate the same draw.
  if constexpr (RouterWithContextBackward<RouterType, S>)
    layer.router().backward(ws.x_saved, routing, ws.dgate.data(), ws.dlogits, dx, grads.router, weights,
                            ws.last_context);
  else if constexpr (RouterWithLossBackward<RouterType, S>)
    layer.router().backward(ws.x_saved, routing, ws.dgate.data(), ws.dlogits, dx, grads.router, weights);
  else
    layer.router().template backward<Arch>(ws.x_saved, routing, ws.dgate.data(), ws.dlogits, dx, grads.router);
}

}  // namespace detail

}  // namespace moe

#endif  // MOE_LAYER_BACKWARD_HPP

// The backward pass of a sparse MoELayer: the six stages in reverse, reusing the forward's plan.
#ifndef MOE_LAYER_BACKWARD_HPP
#define MOE_LAYER_BACKWARD_HPP

#include <moe/combine/token_major_sum.hpp>
#include <moe/contracts/concepts.hpp>
#include <moe/contracts/executor.hpp>
#include <moe/contracts/training.hpp>
#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/parameters.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/core/traits.hpp>
#include <moe/core/types.hpp>
#include <moe/kernels/gemm.hpp>
#include <moe/layer/workspace.hpp>
#include <moe/loss/loss_list.hpp>

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

  /// A copy of the gradient named `name` (a checkpoint name without the layer prefix) as a
  /// matrix, or std::nullopt when no parameter has that name.
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

/// Adds every routing loss of `losses` with a non-zero weight into dlogits / dgate, in list
/// order; losses the router consumes itself (router_traits<R>::accepts_loss) are left to it.
template <class Arch, class RouterType, class S, class Losses>
void apply_routing_losses(const Losses& losses, const LossInput<S>& in, const LossGradient<S>& out) {
  losses.for_each([&](const auto& term) {
    using Term = std::remove_cvref_t<decltype(term)>;
    using Loss = typename Term::loss_type;
    if constexpr (!router_traits<RouterType>::template accepts_loss<Loss>) {
      if (term.weight != S(0)) term.loss.template backward<Arch>(in, term.weight, out);
    }
  });
}

/// Backward of the sparse path. ws holds the last training forward; dy is [T, d_out]; dx
/// receives dL/dx [T, d]; gradients accumulate into grads; losses is a LossList.
template <class Arch, class Layer, class Grads, class Losses>
void sparse_backward(const Layer& layer, const ConstMatrixRef<typename Layer::scalar_type>& dy,
                     MatrixRef<typename Layer::scalar_type> dx, Workspace<typename Layer::scalar_type>& ws,
                     Grads& grads, const Losses& losses) {
  using S = typename Layer::scalar_type;
  const auto& plan = ws.plan;
  const auto& routing = ws.routing;
  const Index N = plan.rows();
  const Index T = ws.x_saved.rows();
  const BackwardContext context{ws.last_context};
  ensure_shape(ws.dy_perm, N, layer.output_dim());
  ensure_shape(ws.dx_perm, N, layer.input_dim());
  ensure_shape(ws.dhidden, N, layer.experts().hidden_cols());
  ws.dgate_slot.resize(static_cast<std::size_t>(N));
  CombineContext<S> cc{routing, ws.last_context, ws.combine};

  // 5 combine: dY_perm, dL/dgate per slot; dx starts at 0 plus the combiner's own path.
  dx.setZero();
  layer.combiner().template backward<Arch>(
      CombinerBackward<S>{.x = ws.x_saved, .plan = plan, .y_perm = ws.y_perm, .dy = dy, .dy_perm = ws.dy_perm,
                          .dgate_slot = ws.dgate_slot.data(), .dx = dx},
      grads.combiner, cc);
  // 4 experts, through the layer's executor (experts that read other tokens' inputs add
  // their gradient into dx here).
  layer.executor().template backward<Arch>(layer.experts(), ws.expert_step_backward(&dx), grads.experts);
  // 3 gather: its transpose adds each token's dX_perm rows into dx, in slot order.
  ws.ones.assign(static_cast<std::size_t>(N), S(1));
  token_major_sum<Arch>(plan, ws.dx_perm, ws.ones.data(), dx, /*overwrite=*/false, ws.pool);
  // 2 plan: dL/dgate back to routing order; a dropped assignment contributed nothing.
  ws.dgate.assign(static_cast<std::size_t>(routing.size()), S(0));
  for (Index p = 0; p < N; ++p)
    ws.dgate[static_cast<std::size_t>(plan.assignment[static_cast<std::size_t>(p)])] =
        ws.dgate_slot[static_cast<std::size_t>(p)];
  // 6 losses on the logits and gates, then 1 the router (with the losses it consumes itself).
  ensure_shape(ws.dlogits, T, routing.logits.cols());
  ws.dlogits.setZero();
  apply_routing_losses<Arch, typename Layer::router_type>(losses, LossInput<S>{routing, context},
                                                          LossGradient<S>{ws.dlogits, ws.dgate.data()});
  layer.router().template backward<Arch>(
      RouterBackward<S>{.x = ws.x_saved, .routing = routing, .dgate = ws.dgate.data(), .dlogits = ws.dlogits,
                        .dx = dx, .context = context},
      grads.router, losses);
}

}  // namespace detail

}  // namespace moe

#endif  // MOE_LAYER_BACKWARD_HPP

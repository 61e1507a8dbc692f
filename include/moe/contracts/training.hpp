// The training protocol: what every policy's backward receives (docs/policies.md#training).
//
// One signature per policy kind, each taking one of the structs below:
//
//   expert bank  backward<Arch>(e, x, hidden, dy, dx, dhidden, grad)     (+ ExpertContext, see expert.hpp)
//   router       backward<Arch>(const RouterBackward<S>&, Router& grad, const Losses& losses)
//   combiner     backward<Arch>(const CombinerBackward<S>&, Combiner& grad, const CombineContext<S>&)
//   loss         backward<Arch>(const LossInput<S>&, S weight, const LossGradient<S>&)
//
// Each struct carries what the forward recorded, including its ForwardContext, so a policy
// that draws noise, reads token ids or a sequence length regenerates exactly what it drew.
#ifndef MOE_CONTRACTS_TRAINING_HPP
#define MOE_CONTRACTS_TRAINING_HPP

#include <moe/contracts/dispatch_plan.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/core/context.hpp>
#include <moe/core/types.hpp>

namespace moe {

namespace detail {
/// A 0 x 0 matrix for the members of a backward struct that one kind of path does not use
/// (dscores on the sparse path, dlogits in a sparse combiner's backward). Nothing writes it.
template <class S>
RowMatrix<S>& empty_matrix() {
  thread_local RowMatrix<S> m;
  return m;
}
}  // namespace detail

/// What the forward recorded, for every backward: its context (mode, seed and step, token
/// ids, sequence length, pool, product kernel). A backward called by hand outside a layer
/// passes the ForwardContext its forward ran with.
struct BackwardContext {
  ForwardContext forward{};
  [[nodiscard]] ThreadPool* pool() const noexcept { return forward.pool; }
};

/// A router's backward, sparse or dense.
///
/// Sparse routers read dgate: dL/dgate per routing assignment: the combiner's (0 for one
/// that capacity dropped) plus the gate losses' (ImportanceLoss counts choices before
/// capacity, so it reaches dropped assignments too). Dense routers (Soft MoE) read dscores: dL/d(dispatch weights) [T, E*p].
/// dlogits [T, logits columns] comes in holding the routing losses' gradients and leaves
/// holding the total dL/dlogits; the router adds dL/dx into dx [T, d] and accumulates its
/// parameters' gradients into the `grad` argument of backward.
template <class S>
struct RouterBackward {
  ConstMatrixRef<S> x;               ///< the forward's input [T, d]
  const RoutingResult<S>& routing;   ///< the forward's routing
  const S* dgate = nullptr;          ///< sparse: [routing.size()], gate losses included
  ConstMatrixRef<S> dscores = detail::empty_matrix<S>();  ///< dense: [T, E*p]
  MatrixRef<S> dlogits;              ///< in: losses' dL/dlogits; out: total
  MatrixRef<S> dx;                   ///< += dL/dx
  BackwardContext context{};
};

/// A combiner's backward. Sparse combiners write dgate_slot (dL/dgate per plan slot);
/// dense ones (SoftCombiner) write dlogits, their softmax's share of dL/dlogits. Both write
/// dy_perm (dL/d expert outputs, overwritten) and may add a path of their own into dx (a
/// shared expert's); the layer zeroes dx before the combiner's backward.
template <class S>
struct CombinerBackward {
  ConstMatrixRef<S> x;              ///< the forward's input [T, d]
  const DispatchPlan<S>& plan;
  ConstMatrixRef<S> y_perm;         ///< the expert outputs of the forward [N, d_out]
  ConstMatrixRef<S> dy;             ///< dL/dy [T, d_out]
  MatrixRef<S> dy_perm;             ///< out: dL/dy_perm [N, d_out]
  S* dgate_slot = nullptr;          ///< sparse out: [N]
  MatrixRef<S> dlogits = detail::empty_matrix<S>();  ///< dense out: [T, E*p]
  MatrixRef<S> dx;                  ///< += the combiner's own path
};

/// A loss's view of the forward: the routing and what the forward's context says (the
/// sequence length for per-sequence losses).
template <class S>
struct LossInput {
  const RoutingResult<S>& routing;
  BackwardContext context{};
};

/// Where a loss adds its gradient: dlogits [T, logits columns] for a loss on the logits or
/// probabilities, dgate [routing.size()] for a loss on the gates (importance).
template <class S>
struct LossGradient {
  MatrixRef<S> dlogits;
  S* dgate = nullptr;
};

}  // namespace moe

#endif  // MOE_CONTRACTS_TRAINING_HPP

// Caller-owned buffers for forward (and, later, backward).
#ifndef MOE_LAYER_WORKSPACE_HPP
#define MOE_LAYER_WORKSPACE_HPP

#include <moe/contracts/combine.hpp>
#include <moe/contracts/dispatch_plan.hpp>
#include <moe/contracts/executor.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/contracts/statistics.hpp>
#include <moe/core/context.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/core/types.hpp>

#include <vector>

namespace moe {

/// Every buffer a layer needs, owned by the caller: a bundle of the stages' buffers (the
/// contracts between stages, in include/moe/contracts/, and each stage's scratch).
///
/// A layer is const during forward and holds no per-call state, so one layer can serve many
/// threads, each with its own Workspace. After the first call with a given shape, forward
/// reuses these buffers. Statistics of the last call live here for the same reason.
template <class S>
struct Workspace {
  RoutingResult<S> routing;
  DispatchPlan<S> plan;
  RowMatrix<S> x_perm;  ///< gathered expert-contiguous inputs [N, d]
  RowMatrix<S> hidden;  ///< per-slot expert intermediates [N, expert hidden_cols()]
  RowMatrix<S> y_perm;  ///< expert outputs [N, d_out]
  /// The combiner's own buffers between its forward and backward (a shared expert's
  /// activations, Soft MoE's combine weights).
  CombineScratch<S> combine;
  LayerStatistics stats;
  /// What the executor loaded in its last call, forward or backward (an on-demand executor,
  /// docs/store.md); zeros for LocalExecutor. Forward resets it.
  ExpertLoadStatistics expert_loads;
  /// Whether a forward ran on this workspace, and in which mode (backward needs training).
  bool has_forward = false;
  Mode last_mode = Mode::inference;
  /// The thread pool of the current call (ForwardContext::pool), for the stages to share.
  ThreadPool* pool = nullptr;
  /// The context of the last forward: backward regenerates noise and jitter from its seed
  /// and step, and reads its sequence length (token_ids, task_ids and pool must outlive backward).
  ForwardContext last_context{};

  // Training: forward in Mode::training keeps a copy of x; backward's buffers follow.
  RowMatrix<S> x_saved;        ///< x of the last training forward [T, d]
  RowMatrix<S> dy_perm;        ///< dL/dY_perm [N, d_out]
  RowMatrix<S> dx_perm;        ///< dL/dX_perm [N, d]
  RowMatrix<S> dhidden;        ///< experts' backward scratch [N, hidden_cols]
  std::vector<S> dgate_slot;   ///< dL/dgate per slot [N]
  std::vector<S> dgate;        ///< dL/dgate per routing assignment (0 when dropped)
  std::vector<S> ones;         ///< unit weights for the transposed gather
  RowMatrix<S> dlogits;        ///< dL/dlogits [T, E]
  RowMatrix<S> dscores;        ///< dense path: dL/d(dispatch weights) [T, E*p]

  /// The combiner's view of this workspace (routing, last forward's context, scratch): what
  /// the layer passes to combine() and the combiner's backward.
  [[nodiscard]] CombineContext<S> combine_context() noexcept { return {routing, last_context, combine}; }

  /// Step 4's view of this workspace, forward (x is the layer's input) and backward (after a
  /// training forward; dy_perm, dx_perm and dhidden sized): what the layer hands its executor.
  [[nodiscard]] ExpertStep<S> expert_step(const ConstMatrixRef<S>& x) noexcept {
    return {plan, x_perm, hidden, y_perm, x, last_context, &expert_loads};
  }
  /// input_grad is the layer's dL/dx, for experts that read other tokens' inputs.
  [[nodiscard]] ExpertStepBackward<S> expert_step_backward(MatrixRef<S>* input_grad = nullptr) noexcept {
    return {plan, x_perm, hidden, dy_perm, dx_perm, dhidden, x_saved, last_context, input_grad, &expert_loads};
  }
};

}  // namespace moe

#endif  // MOE_LAYER_WORKSPACE_HPP

// Caller-owned buffers for forward (and, later, backward).
#ifndef MOE_CORE_WORKSPACE_HPP
#define MOE_CORE_WORKSPACE_HPP

#include <moe/core/context.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/core/types.hpp>
#include <moe/dispatch/dispatch_plan.hpp>
#include <moe/router/routing_result.hpp>

#include <vector>

namespace moe {

/// What one forward call saw: per-expert load after capacity, and drops.
struct LayerStatistics {
  Index tokens = 0;
  Index assignments = 0;
  Index dropped = 0;
  std::vector<Index> expert_load;  ///< kept assignments per expert
};

/// Every buffer a layer needs, owned by the caller.
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
  /// Scratch the combiner may use (e.g. a shared expert's activations and output).
  RowMatrix<S> combine_hidden;
  RowMatrix<S> combine_out;
  Vector<S> combine_gate;
  LayerStatistics stats;
  /// Which mode the last forward ran in (backward needs training).
  Mode last_mode = Mode::inference;
  /// The thread pool of the current call (ForwardContext::pool), for the stages to share.
  ThreadPool* pool = nullptr;
  /// The context of the last forward: backward regenerates noise and jitter from its seed
  /// and step, and reads its sequence length (token_ids and pool must outlive backward).
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
  RowMatrix<S> combine_dout;   ///< combiner scratch for backward (e.g. a shared expert's dL/dout)
  RowMatrix<S> combine_dx;
  RowMatrix<S> combine_dhidden;
};

}  // namespace moe

#endif  // MOE_CORE_WORKSPACE_HPP

// Step 4's seam: what an executor receives. MoELayer hands the plan and the gathered rows to
// its Executor policy (docs/executors.md); the default runs every expert here, on the pool.
#ifndef MOE_CONTRACTS_EXECUTOR_HPP
#define MOE_CONTRACTS_EXECUTOR_HPP

#include <moe/contracts/dispatch_plan.hpp>
#include <moe/contracts/statistics.hpp>
#include <moe/core/context.hpp>
#include <moe/core/types.hpp>

namespace moe {

/// Forward of step 4: y_perm[slab e] = expert e(x_perm[slab e]) for every expert e of the
/// plan; hidden[slab e] keeps what the expert's backward needs.
template <class S>
struct ExpertStep {
  const DispatchPlan<S>& plan;
  ConstMatrixRef<S> x_perm;   ///< [N, d] gathered, expert-major
  MatrixRef<S> hidden;        ///< [N, hidden_cols]
  MatrixRef<S> y_perm;        ///< [N, d_out]
  ConstMatrixRef<S> input;    ///< the layer's x [T, d] (for experts with context)
  const ForwardContext& context;
  /// Where an executor that loads experts records this call's loads (Workspace::expert_loads);
  /// nullptr when the caller keeps none.
  ExpertLoadStatistics* loads = nullptr;
};

/// Backward of step 4: dx_perm[slab e] = dL/dx of expert e's rows, gradients of expert e's
/// weights accumulated into the bank's gradient.
template <class S>
struct ExpertStepBackward {
  const DispatchPlan<S>& plan;
  ConstMatrixRef<S> x_perm;
  ConstMatrixRef<S> hidden;
  ConstMatrixRef<S> dy_perm;  ///< [N, d_out]
  MatrixRef<S> dx_perm;       ///< out [N, d]
  MatrixRef<S> dhidden;       ///< scratch [N, hidden_cols]
  ConstMatrixRef<S> input;
  const ForwardContext& context;
  /// The layer's dL/dx [T, d] (the combiner's part already in), for banks whose experts read
  /// other tokens' inputs (expert_traits<E>::reads_other_tokens); nullptr where none can.
  MatrixRef<S>* input_grad = nullptr;
  /// As ExpertStep::loads, for the backward call.
  ExpertLoadStatistics* loads = nullptr;
};

}  // namespace moe

#endif  // MOE_CONTRACTS_EXECUTOR_HPP

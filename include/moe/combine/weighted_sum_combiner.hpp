// Step 5: y[token] = sum over its kept assignments of gate * expert output.
#ifndef MOE_COMBINE_WEIGHTED_SUM_COMBINER_HPP
#define MOE_COMBINE_WEIGHTED_SUM_COMBINER_HPP

#include <moe/combine/token_major_sum.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/core/types.hpp>
#include <moe/contracts/combine.hpp>
#include <moe/contracts/dispatch_plan.hpp>
#include <moe/contracts/training.hpp>
#include <moe/kernels/weighted_gather.hpp>
#include <moe/kernels/weighted_scatter_add.hpp>

#include <algorithm>
#include <xsimd/xsimd.hpp>

namespace moe {

/// The gate-weighted scatter-add. Rows are added in plan order (expert-major), so a token's
/// contributions are summed in ascending expert order, as transformers' expert loop does.
/// A dropped assignment adds nothing: the caller's residual carries x.
template <class S>
struct WeightedSumCombiner {
  using scalar_type = S;

  template <class Arch = xsimd::default_arch>
  void combine(const ConstMatrixRef<S>& /*x*/, const DispatchPlan<S>& plan, const ConstMatrixRef<S>& y_perm,
               MatrixRef<S> y, const CombineContext<S>& cc) const {
    // Per token from the plan's token-major map: the same additions in the same order as a
    // scatter-add over the slots, but each token's row is owned by one task.
    detail::token_major_sum<Arch>(plan, y_perm, plan.gate.data(), y, /*overwrite=*/true, cc.pool());
  }

  /// Backward: dy_perm[p] = gate_p * dy[token_p] (a weighted gather, the transpose of the
  /// scatter-add), dgate_slot[p] = <dy[token_p], y_perm[p]>; nothing is added to dx (this
  /// combiner does not read x).
  template <class Arch = xsimd::default_arch>
  void backward(const CombinerBackward<S>& in, WeightedSumCombiner& /*grad*/, const CombineContext<S>& cc) const {
    const DispatchPlan<S>& plan = in.plan;
    const auto& dy = in.dy;
    const auto& y_perm = in.y_perm;
    MatrixRef<S> dy_perm = in.dy_perm;
    S* dgate_slot = in.dgate_slot;
    const Index N = plan.rows();
    const Index tasks = (N + detail::tokens_per_task - 1) / detail::tokens_per_task;
    detail::parallel_for(cc.pool(), tasks, [&](Index task) {
      const Index p0 = task * detail::tokens_per_task;
      const Index n = std::min(N - p0, detail::tokens_per_task);
      kernels::WeightedGather<Arch>{}(dy.data(), dy.outerStride(), plan.token.data() + p0, plan.gate.data() + p0, n,
                                      dy.cols(), dy_perm.row(p0).data(), dy_perm.outerStride());
      for (Index p = p0; p < p0 + n; ++p)
        dgate_slot[p] = dy.row(plan.token[static_cast<std::size_t>(p)]).dot(y_perm.row(p));
    });
  }

  /// No trainable parameters.
  template <class F>
  void for_each_parameter(F&&) const {}
};

}  // namespace moe

#endif  // MOE_COMBINE_WEIGHTED_SUM_COMBINER_HPP

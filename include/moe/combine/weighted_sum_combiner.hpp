// Step 5: y[token] = sum over its kept assignments of gate * expert output.
#ifndef MOE_COMBINE_WEIGHTED_SUM_COMBINER_HPP
#define MOE_COMBINE_WEIGHTED_SUM_COMBINER_HPP

#include <moe/core/types.hpp>
#include <moe/core/workspace.hpp>
#include <moe/dispatch/dispatch_plan.hpp>
#include <moe/kernels/weighted_gather.hpp>
#include <moe/kernels/weighted_scatter_add.hpp>

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
               MatrixRef<S> y, Workspace<S>& /*ws*/) const {
    y.setZero();
    kernels::WeightedScatterAdd<Arch>{}(y_perm.data(), y_perm.outerStride(), plan.token.data(), plan.gate.data(),
                                        plan.rows(), y.cols(), y.data(), y.outerStride());
  }

  /// Backward: dy_perm[p] = gate_p * dy[token_p] (a weighted gather, the transpose of the
  /// scatter-add), dgate_slot[p] = <dy[token_p], y_perm[p]>, and dx = 0 (this combiner does
  /// not read x).
  template <class Arch = xsimd::default_arch>
  void backward(const ConstMatrixRef<S>& /*x*/, const DispatchPlan<S>& plan, const ConstMatrixRef<S>& y_perm,
                const ConstMatrixRef<S>& dy, MatrixRef<S> dy_perm, S* dgate_slot, MatrixRef<S> dx,
                WeightedSumCombiner& /*grad*/, Workspace<S>& /*ws*/) const {
    kernels::WeightedGather<Arch>{}(dy.data(), dy.outerStride(), plan.token.data(), plan.gate.data(), plan.rows(),
                                    dy.cols(), dy_perm.data(), dy_perm.outerStride());
    for (Index p = 0; p < plan.rows(); ++p)
      dgate_slot[p] = dy.row(plan.token[static_cast<std::size_t>(p)]).dot(y_perm.row(p));
    dx.setZero();
  }

  /// No trainable parameters.
  template <class F>
  void for_each_parameter(F&&) const {}
};

}  // namespace moe

#endif  // MOE_COMBINE_WEIGHTED_SUM_COMBINER_HPP

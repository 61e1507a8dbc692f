// Step 5: y[token] = sum over its kept assignments of gate * expert output.
#ifndef MOE_COMBINE_WEIGHTED_SUM_COMBINER_HPP
#define MOE_COMBINE_WEIGHTED_SUM_COMBINER_HPP

#include <moe/core/types.hpp>
#include <moe/core/workspace.hpp>
#include <moe/dispatch/dispatch_plan.hpp>
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
};

}  // namespace moe

#endif  // MOE_COMBINE_WEIGHTED_SUM_COMBINER_HPP

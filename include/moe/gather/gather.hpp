// Step 3: copy each assignment's token row into its expert-contiguous slot.
#ifndef MOE_GATHER_GATHER_HPP
#define MOE_GATHER_GATHER_HPP

#include <moe/core/types.hpp>
#include <moe/dispatch/dispatch_plan.hpp>
#include <moe/kernels/gather_rows.hpp>

#include <type_traits>
#include <xsimd/xsimd.hpp>

namespace moe {

/// x_perm row p = x row plan.token[p]; x_perm must be [plan.rows(), x.cols()].
template <class Arch = xsimd::default_arch, class S>
void gather_tokens(const ConstMatrixRef<std::type_identity_t<S>>& x, const DispatchPlan<S>& plan,
                   MatrixRef<std::type_identity_t<S>> x_perm) {
  kernels::GatherRows<Arch>{}(x.data(), x.outerStride(), plan.token.data(), plan.rows(), x.cols(),
                              x_perm.data(), x_perm.outerStride());
}

}  // namespace moe

#endif  // MOE_GATHER_GATHER_HPP

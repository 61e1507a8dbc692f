// Step 3: copy each assignment's token row into its expert-contiguous slot.
#ifndef MOE_GATHER_GATHER_HPP
#define MOE_GATHER_GATHER_HPP

#include <moe/core/thread_pool.hpp>
#include <moe/core/types.hpp>
#include <moe/dispatch/dispatch_plan.hpp>
#include <moe/kernels/gather_rows.hpp>

#include <algorithm>
#include <type_traits>
#include <xsimd/xsimd.hpp>

namespace moe {

/// x_perm row p = x row plan.token[p]; x_perm must be [plan.rows(), x.cols()]. Rows are
/// copied independently, so blocks of them go to the pool's threads.
template <class Arch = xsimd::default_arch, class S>
void gather_tokens(const ConstMatrixRef<std::type_identity_t<S>>& x, const DispatchPlan<S>& plan,
                   MatrixRef<std::type_identity_t<S>> x_perm, ThreadPool* pool = nullptr) {
  constexpr Index rows_per_task = 256;
  const Index N = plan.rows();
  detail::parallel_for(pool, (N + rows_per_task - 1) / rows_per_task, [&](Index task) {
    const Index p0 = task * rows_per_task;
    kernels::GatherRows<Arch>{}(x.data(), x.outerStride(), plan.token.data() + p0, std::min(rows_per_task, N - p0),
                                x.cols(), x_perm.row(p0).data(), x_perm.outerStride());
  });
}

}  // namespace moe

#endif  // MOE_GATHER_GATHER_HPP

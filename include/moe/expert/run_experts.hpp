// Step 4: each expert runs dense GEMMs on its own slab of X_perm.
#ifndef MOE_EXPERT_RUN_EXPERTS_HPP
#define MOE_EXPERT_RUN_EXPERTS_HPP

#include <moe/core/context.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/core/types.hpp>
#include <moe/dispatch/dispatch_plan.hpp>
#include <moe/kernels/gemm.hpp>

#include <algorithm>
#include <type_traits>
#include <xsimd/xsimd.hpp>

namespace moe {

namespace detail {
/// experts.forward(e, x, hidden, y, kernel) for banks that take a GemmKernel (every shipped
/// one); a user's bank without that parameter runs its own products.
template <class Arch, class ExpertType, class S>
void forward_expert(const ExpertType& experts, Index e, const ConstMatrixRef<S>& x, MatrixRef<S> hidden,
                    MatrixRef<S> y, GemmKernel kernel) {
  if constexpr (requires { experts.template forward<Arch>(e, x, hidden, y, kernel); }) {
    experts.template forward<Arch>(e, x, hidden, y, kernel);
  } else {
    experts.template forward<Arch>(e, x, hidden, y);
  }
}
}  // namespace detail

/// Rows per expert task. The partition depends on the plan only, never on the thread count,
/// so every row is computed by the same GEMM call shape whatever the pool: results are
/// bit-identical for any number of threads. 512 rows keep the weight repacking per task below
/// a few percent of the GEMM.
inline constexpr Index expert_rows_per_task = 512;

/// For every non-empty expert e: y_perm[slab e] = expert e (x_perm[slab e]), in tasks of at
/// most expert_rows_per_task rows. Empty experts are skipped; hidden[slab e] keeps the
/// expert's intermediates for backward. kernel picks the product kernel (ForwardContext::gemm).
template <class Arch = xsimd::default_arch, class ExpertType, class S>
void run_experts(const ExpertType& experts, const DispatchPlan<S>& plan,
                 const ConstMatrixRef<std::type_identity_t<S>>& x_perm, MatrixRef<std::type_identity_t<S>> hidden,
                 MatrixRef<std::type_identity_t<S>> y_perm, ThreadPool* pool = nullptr,
                 GemmKernel kernel = GemmKernel::fast) {
  // Task t covers rows [begin, begin + rows) of one expert; tasks are listed expert by expert.
  Index tasks = 0;
  for (Index e = 0; e < plan.num_experts; ++e) tasks += (plan.count(e) + expert_rows_per_task - 1) / expert_rows_per_task;
  const auto locate = [&](Index task, Index& expert, Index& begin, Index& rows) {
    for (Index e = 0; e < plan.num_experts; ++e) {
      const Index n = plan.count(e);
      const Index blocks = (n + expert_rows_per_task - 1) / expert_rows_per_task;
      if (task < blocks) {
        expert = e;
        begin = plan.begin(e) + task * expert_rows_per_task;
        rows = std::min(expert_rows_per_task, n - task * expert_rows_per_task);
        return;
      }
      task -= blocks;
    }
  };
  kernels::prepare_threads<S>(pool);
  detail::parallel_for(pool, tasks, [&](Index task) {
    Index e = 0, b = 0, n = 0;
    locate(task, e, b, n);
    detail::forward_expert<Arch, ExpertType, S>(experts, e, x_perm.middleRows(b, n), hidden.middleRows(b, n),
                                                y_perm.middleRows(b, n), kernel);
  });
}

}  // namespace moe

#endif  // MOE_EXPERT_RUN_EXPERTS_HPP

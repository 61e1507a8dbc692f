// Sum of weighted slot rows per token, in parallel over tokens and in a fixed order.
#ifndef MOE_COMBINE_TOKEN_MAJOR_SUM_HPP
#define MOE_COMBINE_TOKEN_MAJOR_SUM_HPP

#include <moe/core/thread_pool.hpp>
#include <moe/core/types.hpp>
#include <moe/dispatch/dispatch_plan.hpp>
#include <moe/kernels/weighted_scatter_add.hpp>

#include <algorithm>
#include <type_traits>
#include <xsimd/xsimd.hpp>

namespace moe::detail {

/// Tokens per task: enough rows to amortise a task, small enough to balance two threads.
inline constexpr Index tokens_per_task = 64;

/// dst[t] (+)= sum over token t's slots p, in ascending p, of weights[p] * src[p]. With
/// overwrite, dst[t] starts from zero. Each token's sum is done by one task in slot order, so
/// the result is the same bits as the serial scatter-add over p, for any number of threads.
template <class Arch, class S>
void token_major_sum(const DispatchPlan<S>& plan, const ConstMatrixRef<std::type_identity_t<S>>& src,
                     const S* weights, MatrixRef<std::type_identity_t<S>> dst, bool overwrite, ThreadPool* pool) {
  const Index T = plan.num_tokens;
  const Index d = dst.cols();
  const Index tasks = (T + tokens_per_task - 1) / tokens_per_task;
  const kernels::WeightedScatterAdd<Arch> add{};
  const Index zero = 0;
  parallel_for(pool, tasks, [&](Index task) {
    const Index t0 = task * tokens_per_task;
    const Index t1 = std::min(T, t0 + tokens_per_task);
    for (Index t = t0; t < t1; ++t) {
      S* out = dst.row(t).data();
      if (overwrite) std::fill(out, out + d, S(0));
      const auto b = plan.token_offsets[static_cast<std::size_t>(t)];
      const auto e = plan.token_offsets[static_cast<std::size_t>(t) + 1];
      for (Index i = b; i < e; ++i) {
        const Index p = plan.token_slots[static_cast<std::size_t>(i)];
        add(src.row(p).data(), src.outerStride(), &zero, weights + p, 1, d, out, dst.outerStride());
      }
    }
  });
}

}  // namespace moe::detail

#endif  // MOE_COMBINE_TOKEN_MAJOR_SUM_HPP

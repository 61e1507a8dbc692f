// Step 4 on this process: each expert runs dense GEMMs on its own slab of X_perm, in tasks on
// the caller's thread pool. The default Executor of MoELayer (docs/executors.md).
#ifndef MOE_EXPERT_LOCAL_EXECUTOR_HPP
#define MOE_EXPERT_LOCAL_EXECUTOR_HPP

#include <moe/contracts/concepts.hpp>
#include <moe/contracts/dispatch_plan.hpp>
#include <moe/contracts/executor.hpp>
#include <moe/contracts/expert.hpp>
#include <moe/core/context.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/core/traits.hpp>
#include <moe/core/types.hpp>
#include <moe/kernels/gemm.hpp>
#include <moe/kernels/packed_gemm.hpp>
#include <moe/kernels/quant_gemm.hpp>
#include <moe/kernels/weight_types.hpp>

#include <algorithm>
#include <span>
#include <stdexcept>
#include <type_traits>
#include <xsimd/xsimd.hpp>

namespace moe {

namespace detail {
/// The slab's ExpertContext: its rows' tokens on the sparse path (plan.token), none on the
/// dense path (a dense plan has no token map: its rows are slots).
template <class S>
ExpertContext<S> slab_context(const DispatchPlan<S>& plan, Index begin, Index rows, const ConstMatrixRef<S>& input,
                              const ForwardContext& ctx, MatrixRef<S>* input_grad = nullptr) {
  std::span<const Index> tokens{};
  if (!plan.token.empty()) tokens = std::span<const Index>(plan.token).subspan(static_cast<std::size_t>(begin),
                                                                               static_cast<std::size_t>(rows));
  return ExpertContext<S>{ctx, input, tokens, input_grad};
}

/// experts.forward(e, x, hidden, y, ...) in the form the bank provides: with its slab's
/// ExpertContext (expert_traits<E>::needs_context), with the GemmKernel of the call (every
/// shipped bank), or the minimal form (a user's bank that runs its own products).
template <class Arch, class ExpertType, class S>
void forward_expert(const ExpertType& experts, Index e, const ConstMatrixRef<S>& x, MatrixRef<S> hidden,
                    MatrixRef<S> y, GemmKernel kernel, const ExpertContext<S>* ctx = nullptr) {
  if constexpr (expert_traits<ExpertType>::needs_context) {
    experts.template forward<Arch>(e, x, hidden, y, *ctx);
  } else if constexpr (requires { experts.template forward<Arch>(e, x, hidden, y, kernel); }) {
    experts.template forward<Arch>(e, x, hidden, y, kernel);
  } else {
    experts.template forward<Arch>(e, x, hidden, y);
  }
}

/// experts.backward(e, x, hidden, dy, dx, dhidden, grad[, ctx]).
template <class Arch, class ExpertType, class S>
void backward_expert(const ExpertType& experts, Index e, const ConstMatrixRef<S>& x, const ConstMatrixRef<S>& hidden,
                     const ConstMatrixRef<S>& dy, MatrixRef<S> dx, MatrixRef<S> dhidden, ExpertType& grad,
                     const ExpertContext<S>* ctx = nullptr) {
  if constexpr (expert_traits<ExpertType>::needs_context)
    experts.template backward<Arch>(e, x, hidden, dy, dx, dhidden, grad, *ctx);
  else
    experts.template backward<Arch>(e, x, hidden, dy, dx, dhidden, grad);
}
}  // namespace detail

/// Rows per expert task. The partition depends on the plan only, never on the thread count,
/// so every row is computed by the same GEMM call shape whatever the pool: results are
/// bit-identical for any number of threads. 512 rows keep the weight repacking per task below
/// a few percent of the GEMM.
inline constexpr Index expert_rows_per_task = 512;

/// The default executor: every expert of the bank is local and runs on the forward's pool.
///
/// forward: for every non-empty expert e, y_perm[slab e] = expert e (x_perm[slab e]) in
/// tasks of at most expert_rows_per_task rows; hidden[slab e] keeps the intermediates.
/// backward: one task per expert (its weight gradient sums over all its rows, in a fixed
/// order whatever the thread count); experts write disjoint slices of the gradients.
///
/// A bank with expert_traits<E>::whole_slabs (a recurrence) gets each expert's slab in one
/// forward call; one with reads_other_tokens (a convolution over the sequence) runs its
/// experts' backward one after another in expert order, since each adds into the layer's dx.
///
/// Before a pool runs products, every one of its threads gets the product kernels' buffers
/// for the bank's activation type and, when its weights are stored as another element type
/// gemm widens (expert_traits<E>::weight_type, e.g. bf16), for that one too: which thread
/// takes which task then never decides whether a call allocates.
struct LocalExecutor {
  template <class ExpertType, class S>
  static void prepare(ThreadPool* pool) {
    using W = typename expert_traits<ExpertType>::weight_type;
    if constexpr (!std::is_same_v<W, S> && kernels::WeightFor<W, S>)
      kernels::prepare_threads<S, W>(pool);
    else
      kernels::prepare_threads<S>(pool);
    kernels::prepare_packed_threads<S>(pool);
    if constexpr (requires { typename ExpertType::block_type; })
      kernels::prepare_quant_threads<typename ExpertType::block_type>(pool);
  }

  template <class Arch = xsimd::default_arch, class ExpertType, class S>
  void forward(const ExpertType& experts, const ExpertStep<S>& step) const {
    const DispatchPlan<S>& plan = step.plan;
    // Task t covers rows [begin, begin + rows) of one expert; tasks are listed expert by expert.
    Index tasks = 0;
    // A whole-slab bank takes each expert's rows in one block.
    const auto block_rows = [&](Index n) {
      return expert_traits<ExpertType>::whole_slabs ? std::max<Index>(n, 1) : expert_rows_per_task;
    };
    for (Index e = 0; e < plan.num_experts; ++e) tasks += (plan.count(e) + block_rows(plan.count(e)) - 1) / block_rows(plan.count(e));
    const auto locate = [&](Index task, Index& expert, Index& begin, Index& rows) {
      for (Index e = 0; e < plan.num_experts; ++e) {
        const Index n = plan.count(e);
        const Index per = block_rows(n);
        const Index blocks = (n + per - 1) / per;
        if (task < blocks) {
          expert = e;
          begin = plan.begin(e) + task * per;
          rows = std::min(per, n - task * per);
          return;
        }
        task -= blocks;
      }
    };
    ThreadPool* pool = step.context.pool;
    MatrixRef<S> hidden = step.hidden;  // the views are const in a const step; their matrices are not
    MatrixRef<S> y_perm = step.y_perm;
    prepare<ExpertType, S>(pool);
    detail::parallel_for(pool, tasks, [&](Index task) {
      Index e = 0, b = 0, n = 0;
      locate(task, e, b, n);
      if constexpr (expert_traits<ExpertType>::needs_context) {
        const ExpertContext<S> ctx = detail::slab_context(plan, b, n, step.input, step.context);
        detail::forward_expert<Arch, ExpertType, S>(experts, e, step.x_perm.middleRows(b, n),
                                                    hidden.middleRows(b, n), y_perm.middleRows(b, n),
                                                    step.context.gemm, &ctx);
      } else {
        detail::forward_expert<Arch, ExpertType, S>(experts, e, step.x_perm.middleRows(b, n),
                                                    hidden.middleRows(b, n), y_perm.middleRows(b, n),
                                                    step.context.gemm);
      }
    });
  }

  template <class Arch = xsimd::default_arch, class ExpertType, class S>
  void backward(const ExpertType& experts, const ExpertStepBackward<S>& step, ExpertType& grad) const {
    const DispatchPlan<S>& plan = step.plan;
    ThreadPool* pool = step.context.pool;
    MatrixRef<S> dx_perm = step.dx_perm;
    MatrixRef<S> dhidden = step.dhidden;
    prepare<ExpertType, S>(pool);
    constexpr bool serial = expert_traits<ExpertType>::reads_other_tokens;
    if constexpr (serial) {
      if (step.input_grad == nullptr)
        throw std::invalid_argument(
            "LocalExecutor::backward(): the step's input_grad expected the layer's dx (the experts read other "
            "tokens' inputs), got nullptr");
    }
    detail::parallel_for(serial ? nullptr : pool, plan.num_experts, [&](Index e) {
      const Index n = plan.count(e);
      if (n == 0) return;
      const Index b = plan.begin(e);
      if constexpr (expert_traits<ExpertType>::needs_context) {
        const ExpertContext<S> ctx =
            detail::slab_context(plan, b, n, step.input, step.context, serial ? step.input_grad : nullptr);
        detail::backward_expert<Arch, ExpertType, S>(experts, e, step.x_perm.middleRows(b, n),
                                                     step.hidden.middleRows(b, n), step.dy_perm.middleRows(b, n),
                                                     dx_perm.middleRows(b, n), dhidden.middleRows(b, n),
                                                     grad, &ctx);
      } else {
        detail::backward_expert<Arch, ExpertType, S>(experts, e, step.x_perm.middleRows(b, n),
                                                     step.hidden.middleRows(b, n), step.dy_perm.middleRows(b, n),
                                                     dx_perm.middleRows(b, n), dhidden.middleRows(b, n),
                                                     grad);
      }
    });
  }
};

}  // namespace moe

#endif  // MOE_EXPERT_LOCAL_EXECUTOR_HPP

// Step 4: each expert runs dense GEMMs on its own slab of X_perm.
#ifndef MOE_EXPERT_RUN_EXPERTS_HPP
#define MOE_EXPERT_RUN_EXPERTS_HPP

#include <moe/core/types.hpp>
#include <moe/dispatch/dispatch_plan.hpp>

#include <type_traits>
#include <xsimd/xsimd.hpp>

namespace moe {

/// For every non-empty expert e: y_perm[slab e] = expert e (x_perm[slab e]). Empty experts are
/// skipped; hidden[slab e] keeps the expert's intermediates for backward.
template <class Arch = xsimd::default_arch, class ExpertType, class S>
void run_experts(const ExpertType& experts, const DispatchPlan<S>& plan,
                 const ConstMatrixRef<std::type_identity_t<S>>& x_perm, MatrixRef<std::type_identity_t<S>> hidden,
                 MatrixRef<std::type_identity_t<S>> y_perm) {
  for (Index e = 0; e < plan.num_experts; ++e) {
    const Index n = plan.count(e);
    if (n == 0) continue;
    const Index b = plan.begin(e);
    experts.template forward<Arch>(e, x_perm.middleRows(b, n), hidden.middleRows(b, n), y_perm.middleRows(b, n));
  }
}

}  // namespace moe

#endif  // MOE_EXPERT_RUN_EXPERTS_HPP

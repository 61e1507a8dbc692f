// Step 3 of the dense path (Soft MoE): slots as softmax mixtures of a sequence's tokens.
#ifndef MOE_GATHER_GATHER_SLOTS_HPP
#define MOE_GATHER_GATHER_SLOTS_HPP

#include <moe/contracts/routing_result.hpp>
#include <moe/contracts/slot_layout.hpp>
#include <moe/core/types.hpp>
#include <moe/kernels/gemm.hpp>

#include <type_traits>
#include <xsimd/xsimd.hpp>

namespace moe {

/// Step 3 of the dense path: the slot inputs of sequence b are D_b^T X_b (D = routing.scores),
/// each slot a convex combination of its sequence's tokens. x_perm must be [layout.rows(), d].
template <class Arch = xsimd::default_arch, class S>
void gather_slots(const ConstMatrixRef<std::type_identity_t<S>>& x, const RoutingResult<S>& routing,
                  const SlotLayout& layout, MatrixRef<std::type_identity_t<S>> x_perm) {
  const Index n = layout.sequence_length;
  const Index p = layout.slots_per_expert;
  for (Index b = 0; b < layout.num_sequences; ++b)
    for (Index e = 0; e < layout.num_experts; ++e)
      kernels::gemm<Arch>(x_perm.middleRows(layout.row(b, e * p), p), routing.scores.block(b * n, e * p, n, p), Op::transpose,
                          x.middleRows(b * n, n), Op::none, S(1), S(0));
}

/// Backward of step 3 (gather_slots): with dslots = dL/dX_perm in layout order, writes
/// dx = D_b dslots_b per sequence (the direct path of x through the slots; dx is overwritten)
/// and dscores = dL/dD = X_b dslots_b^T [T, E*p].
template <class Arch = xsimd::default_arch, class S>
void gather_slots_backward(const ConstMatrixRef<std::type_identity_t<S>>& x, const RoutingResult<S>& routing,
                           const SlotLayout& layout, const ConstMatrixRef<std::type_identity_t<S>>& dslots,
                           MatrixRef<std::type_identity_t<S>> dx, MatrixRef<std::type_identity_t<S>> dscores) {
  const Index n = layout.sequence_length;
  const Index p = layout.slots_per_expert;
  dx.setZero();
  for (Index b = 0; b < layout.num_sequences; ++b)
    for (Index e = 0; e < layout.num_experts; ++e) {
      const auto ds = dslots.middleRows(layout.row(b, e * p), p);
      kernels::gemm<Arch>(dx.middleRows(b * n, n), routing.scores.block(b * n, e * p, n, p), Op::none, ds, Op::none, S(1), S(1));
      kernels::gemm<Arch>(dscores.block(b * n, e * p, n, p), x.middleRows(b * n, n), Op::none, ds, Op::transpose, S(1), S(0));
    }
}

}  // namespace moe

#endif  // MOE_GATHER_GATHER_SLOTS_HPP

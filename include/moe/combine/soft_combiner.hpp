// Step 5 of the dense path (Soft MoE): every token mixes the outputs of every slot of its
// sequence.
#ifndef MOE_COMBINE_SOFT_COMBINER_HPP
#define MOE_COMBINE_SOFT_COMBINER_HPP

#include <moe/core/error.hpp>
#include <moe/core/types.hpp>
#include <moe/contracts/combine.hpp>
#include <moe/contracts/dispatch_plan.hpp>
#include <moe/contracts/slot_layout.hpp>
#include <moe/contracts/training.hpp>
#include <moe/kernels/gemm.hpp>
#include <moe/kernels/softmax.hpp>

#include <xsimd/xsimd.hpp>

namespace moe {

/// Y_b = C_b * (slot outputs of sequence b), C = softmax of each row of the router's logits
/// over the E*p slots (Puigcerver et al. 2023). The combine weights C [T, E*p] are left in
/// CombineScratch::hidden (combine_weights(ws)) for the losses, the backward pass and the tests.
///
/// It reads the dense plan of build_slot_plan (expert-major slot rows) and the logits of the
/// routing in its CombineContext; MoELayer pairs it with a dense router (router_traits<R>::is_dense).
template <class S>
struct SoftCombiner {
  using scalar_type = S;
  static constexpr bool is_dense = true;

  template <class Arch = xsimd::default_arch>
  void combine(const ConstMatrixRef<S>& x, const DispatchPlan<S>& plan, const ConstMatrixRef<S>& y_perm,
               MatrixRef<S> y, const CombineContext<S>& cc) const {
    CombineScratch<S>& ws = cc.scratch;
    constexpr const char* where = "SoftCombiner::combine()";
    const Index T = x.rows();
    const RowMatrix<S>& logits = cc.routing.logits;
    // Runs every forward: messages are built only on failure, so a passing check allocates nothing.
    if (logits.rows() != T || plan.num_tokens != T)
      detail::throw_invalid(where, "routing logits and plan rows (tokens)", T,
                            detail::concat(logits.rows(), " and ", plan.num_tokens));
    const SlotLayout layout = slot_layout(plan, logits.cols());
    detail::require_shape(y_perm, layout.rows(), y.cols(), where, "y_perm");
    const Index slots = logits.cols();
    detail::ensure_shape(ws.hidden, T, slots);
    y.setZero();
    if (T == 0) return;
    ws.hidden = logits;
    kernels::SoftmaxRows<Arch>{}(ws.hidden.data(), T, slots, slots);
    // One GEMM per (sequence, expert): the expert's p slot outputs of that sequence, summed in
    // ascending expert order.
    const Index n = layout.sequence_length;
    const Index p = layout.slots_per_expert;
    for (Index b = 0; b < layout.num_sequences; ++b)
      for (Index e = 0; e < layout.num_experts; ++e)
        kernels::gemm<Arch>(y.middleRows(b * n, n), ws.hidden.block(b * n, e * p, n, p), Op::none,
                            y_perm.middleRows(layout.row(b, e * p), p), Op::none, S(1), S(1));
  }

  /// Backward of combine() for L with dy = dL/dy [T, d_out], after the forward that left C in
  /// ws: writes dy_perm = dL/d(slot outputs) (C_b^T dY_b per sequence) and dlogits =
  /// dL/dlogits through the combine softmax, C[t, i] (dC[t, i] - sum_j C[t, j] dC[t, j]) with
  /// dC_b = dY_b (slot outputs)^T; both are overwritten.
  template <class Arch = xsimd::default_arch>
  void backward(const CombinerBackward<S>& in, SoftCombiner& /*grad*/, const CombineContext<S>& cc) const {
    constexpr const char* where = "SoftCombiner::backward()";
    const DispatchPlan<S>& plan = in.plan;
    const auto& y_perm = in.y_perm;
    const auto& dy = in.dy;
    MatrixRef<S> dy_perm = in.dy_perm;
    MatrixRef<S> dlogits = in.dlogits;
    const RowMatrix<S>& c = cc.scratch.hidden;
    const Index T = dy.rows();
    const Index slots = c.cols();
    detail::require_shape(c, T, slots, where, "the combine weights in ws (from the last combine())");
    const SlotLayout layout = slot_layout(plan, slots);
    detail::require(plan.num_tokens == T, where, "dy rows (tokens of the plan)", plan.num_tokens, T);
    detail::require_shape(y_perm, layout.rows(), dy.cols(), where, "y_perm");
    detail::require_shape(dy_perm, layout.rows(), dy.cols(), where, "dy_perm");
    detail::require_shape(dlogits, T, slots, where, "dlogits");
    const Index n = layout.sequence_length;
    const Index p = layout.slots_per_expert;
    for (Index b = 0; b < layout.num_sequences; ++b)
      for (Index e = 0; e < layout.num_experts; ++e) {
        const Index row = layout.row(b, e * p);
        const auto dyb = dy.middleRows(b * n, n);
        kernels::gemm<Arch>(dlogits.block(b * n, e * p, n, p), dyb, Op::none, y_perm.middleRows(row, p), Op::transpose, S(1), S(0));
        kernels::gemm<Arch>(dy_perm.middleRows(row, p), c.block(b * n, e * p, n, p), Op::transpose, dyb, Op::none, S(1), S(0));
      }
    // The softmax runs along each row, so the Jacobian product works in place, row by row.
    for (Index t = 0; t < T; ++t) {
      auto g = dlogits.row(t);
      const S s = c.row(t).dot(g);
      g.array() = c.row(t).array() * (g.array() - s);
    }
  }

  /// No trainable tensors (the combine weights come from the router's logits).
  template <class F>
  void for_each_parameter(F&&) const {}

  /// The combine weights C [T, E*p] of the last combine() into ws.
  [[nodiscard]] static const RowMatrix<S>& combine_weights(const CombineScratch<S>& scratch) noexcept {
    return scratch.hidden;
  }
  /// The same from a layer's Workspace (its `combine` scratch).
  template <class W>
    requires requires(const W& w) { w.combine.hidden; }
  [[nodiscard]] static const RowMatrix<S>& combine_weights(const W& ws) noexcept {
    return ws.combine.hidden;
  }
};

}  // namespace moe

#endif  // MOE_COMBINE_SOFT_COMBINER_HPP

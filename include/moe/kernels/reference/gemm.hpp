// Scalar twin of kernels::gemm: the definition its tests compare against.
#ifndef MOE_KERNELS_REFERENCE_GEMM_HPP
#define MOE_KERNELS_REFERENCE_GEMM_HPP

#include <type_traits>

#include "moe/core/types.hpp"
#include "moe/kernels/op.hpp"
#include "moe/kernels/weight_types.hpp"

namespace moe::kernels::reference {

/// C = alpha op(A) op(widen(B)) + beta C for a weight operand B of element type W (W = S: no
/// widening; otherwise weight_traits<W>::widen, one element at a time). Per element of C:
/// s = 0; for i = 0, 1, ..., k-1 in that order: p = a * b rounded, then s = s + p; then
/// c = alpha s (beta = 0: C is not read) or beta c + alpha s, each product rounded before the
/// add (separate statements, so no compiler contracts them into an FMA). Shapes are the
/// caller's to get right (kernels::gemm checks them). W is given explicitly when it is not S:
/// reference::gemm<float, bf16>(c, a, op_a, b, op_b, alpha, beta).
template <Scalar S, class W = S>
void gemm(MatrixRef<std::type_identity_t<S>> c, const ConstMatrixRef<std::type_identity_t<S>>& a, Op op_a,
          const ConstMatrixRef<std::type_identity_t<W>>& b, Op op_b, S alpha, S beta) {
  const Index m = c.rows();
  const Index n = c.cols();
  const Index k = op_a == Op::none ? a.cols() : a.rows();
  for (Index r = 0; r < m; ++r) {
    for (Index j = 0; j < n; ++j) {
      S s = 0;
      for (Index i = 0; i < k; ++i) {
        const S av = op_a == Op::none ? a(r, i) : a(i, r);
        const S bv = widen(op_b == Op::none ? b(i, j) : b(j, i));
        const S p = av * bv;
        s = s + p;
      }
      const S scaled = alpha * s;
      if (beta == S(0)) {
        c(r, j) = scaled;
      } else {
        const S old = beta * c(r, j);
        c(r, j) = old + scaled;
      }
    }
  }
}

}  // namespace moe::kernels::reference

#endif  // MOE_KERNELS_REFERENCE_GEMM_HPP

// Scalar twin of kernels::packed_gemm: the definition its tests compare against, bit for bit.
#ifndef MOE_KERNELS_REFERENCE_PACKED_GEMM_HPP
#define MOE_KERNELS_REFERENCE_PACKED_GEMM_HPP

#include <cmath>
#include <type_traits>

#include "moe/core/types.hpp"
#include "moe/kernels/weight_types.hpp"

namespace moe::kernels::reference {

/// C [m, n] = A [m, k] B^T, B [n, k] in its checkpoint layout (unpacked), as packed_gemm
/// computes it. Float or double weights (W = S): per element, s = 0; for p = 0, 1, ..., k-1:
/// s = fma(a[p], b[p], s) when fused, else p = a[p] b[p] rounded, then s = s + p.
/// bf16 weights (S = float): each activation rounded to bf16 first; the depth in pairs
/// (2q, 2q + 1), a missing last odd element counting as 0; per pair the odd element first:
/// s = round(s + a[2q+1] b[2q+1]), then s = round(s + a[2q] b[2q]) (a product of two bf16 is
/// exact in float, so fused and unfused agree). This is VDPBF16PS's order; the instruction
/// also flushes subnormal inputs and results to zero, which the twin does not model (the
/// tests draw normal values; docs/kernels.md).
template <Scalar S, class W = S>
void packed_gemm(MatrixRef<std::type_identity_t<S>> c, const ConstMatrixRef<std::type_identity_t<S>>& a,
                 const ConstMatrixRef<std::type_identity_t<W>>& b, bool fused) {
  const Index m = a.rows();
  const Index n = b.rows();
  const Index k = a.cols();
  for (Index r = 0; r < m; ++r) {
    for (Index j = 0; j < n; ++j) {
      S s = 0;
      if constexpr (std::is_same_v<W, bf16>) {
        static_assert(std::is_same_v<S, float>, "bf16 weights multiply float activations");
        const auto term = [&](Index p) {
          if (p >= k) return 0.0f;
          const float x = static_cast<float>(bf16(a(r, p)));
          const float w = static_cast<float>(b(j, p));
          return x * w;  // exact: two 8-bit significands
        };
        for (Index p = 0; p < k; p += 2) {
          s = s + term(p + 1);
          s = s + term(p);
        }
      } else {
        for (Index p = 0; p < k; ++p) {
          if (fused) {
            s = std::fma(a(r, p), b(j, p), s);
          } else {
            const S prod = a(r, p) * b(j, p);
            s = s + prod;
          }
        }
      }
      c(r, j) = s;
    }
  }
}

}  // namespace moe::kernels::reference

#endif  // MOE_KERNELS_REFERENCE_PACKED_GEMM_HPP

// Guards around xsimd 8.1's transcendentals, shared by the softmax and activation kernels.
#ifndef MOE_KERNELS_SIMD_MATH_HPP
#define MOE_KERNELS_SIMD_MATH_HPP

#include <xsimd/xsimd.hpp>

#include "moe/kernels/arch.hpp"

MOE_KERNELS_BEGIN_SIMD_CODE

namespace moe::kernels::detail {

// xsimd 8.1's double exp (and erf and tanh, which call it) converts its reduced exponent to
// int64 with a plain C++ cast on architectures without a fast conversion (sse2 to avx2): an
// infinite or NaN argument is then undefined behaviour (UBSan reports it). So arguments are
// clamped into the range where the result is already saturated, with comparisons that also
// send NaN to a finite bound; callers put NaN back where the formula would produce it.

// exp(x) for x <= 0, -inf or NaN: exp is exactly 0 below -1000 in float and double; NaN in,
// NaN out (as std::exp).
template <class S, class A>
xsimd::batch<S, A> exp_nonpositive(const xsimd::batch<S, A>& x) {
  using Batch = xsimd::batch<S, A>;
  const Batch lo(S(-1000));
  const Batch e = xsimd::exp(xsimd::select(x >= lo, x, lo));
  return xsimd::select(xsimd::isnan(x), x, e);  // not x != x: ordered on avx/avx512 in 8.1
}

// x clamped to [-bound, bound]; NaN becomes -bound (the caller's formula restores NaN).
template <class S, class A>
xsimd::batch<S, A> clamp_symmetric(const xsimd::batch<S, A>& x, S bound) {
  using Batch = xsimd::batch<S, A>;
  const Batch hi(bound);
  const Batch lo(-bound);
  return xsimd::select(x >= lo, xsimd::select(x <= hi, x, hi), lo);
}

}  // namespace moe::kernels::detail

MOE_KERNELS_END_SIMD_CODE

#endif  // MOE_KERNELS_SIMD_MATH_HPP

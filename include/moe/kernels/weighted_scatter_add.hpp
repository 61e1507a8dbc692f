// Gate-weighted scatter-add of dense rows back into selected rows: the combine step.
#ifndef MOE_KERNELS_WEIGHTED_SCATTER_ADD_HPP
#define MOE_KERNELS_WEIGHTED_SCATTER_ADD_HPP

#include <xsimd/xsimd.hpp>

#include "moe/core/types.hpp"
#include "moe/kernels/arch.hpp"

MOE_KERNELS_BEGIN_SIMD_CODE

namespace moe::kernels {

/// dst row rows[i] += weights[i] * src row i, for i = 0, 1, ..., n-1 in that order.
/// SIMD runs across columns only, so every element sees the same sequence of
/// (multiply, round, add, round) as in reference::WeightedScatterAdd: results are
/// bit-identical to the twin and independent of the vector width. Repeated rows are allowed.
template <class Arch>
struct WeightedScatterAdd {
  template <Scalar S>
  void operator()(const S* src, Index src_stride, const Index* rows, const S* weights, Index n,
                  Index d, S* dst, Index dst_stride) const;
};

template <class Arch>
template <Scalar S>
void WeightedScatterAdd<Arch>::operator()(const S* src, Index src_stride, const Index* rows,
                                          const S* weights, Index n, Index d, S* dst,
                                          Index dst_stride) const {
  using Batch = xsimd::batch<S, Arch>;
  constexpr Index w = detail::lanes<S, Arch>;
  for (Index i = 0; i < n; ++i) {
    const S* s = src + i * src_stride;
    S* o = dst + rows[i] * dst_stride;
    const S g = weights[i];
    const Batch gv(g);
    Index j = 0;
    for (; j + w <= d; j += w) {
      // Separate mul and add intrinsics: never fused, so rounding matches the scalar twin.
      const Batch prod = gv * Batch::load_unaligned(s + j);
      (Batch::load_unaligned(o + j) + prod).store_unaligned(o + j);
    }
    for (; j < d; ++j) {
      const S prod = g * s[j];
      o[j] = o[j] + prod;
    }
  }
}

template <class Arch = xsimd::default_arch, Scalar S>
void weighted_scatter_add(const S* src, Index src_stride, const Index* rows, const S* weights,
                          Index n, Index d, S* dst, Index dst_stride) {
  WeightedScatterAdd<Arch>{}(src, src_stride, rows, weights, n, d, dst, dst_stride);
}

}  // namespace moe::kernels

MOE_KERNELS_END_SIMD_CODE

#endif  // MOE_KERNELS_WEIGHTED_SCATTER_ADD_HPP

// Gather selected rows, each scaled by its own weight: the backward of the weighted
// scatter-add, and the building block of a dense combine.
#ifndef MOE_KERNELS_WEIGHTED_GATHER_HPP
#define MOE_KERNELS_WEIGHTED_GATHER_HPP

#include <xsimd/xsimd.hpp>

#include "moe/core/types.hpp"
#include "moe/kernels/arch.hpp"

MOE_KERNELS_BEGIN_SIMD_CODE

namespace moe::kernels {

/// dst row i = weights[i] * src row rows[i], for i in [0, n). One rounding per element:
/// bit-identical to reference::WeightedGather.
template <class Arch>
struct WeightedGather {
  template <Scalar S>
  void operator()(const S* src, Index src_stride, const Index* rows, const S* weights, Index n,
                  Index d, S* dst, Index dst_stride) const;
};

template <class Arch>
template <Scalar S>
void WeightedGather<Arch>::operator()(const S* src, Index src_stride, const Index* rows,
                                      const S* weights, Index n, Index d, S* dst,
                                      Index dst_stride) const {
  using Batch = xsimd::batch<S, Arch>;
  constexpr Index w = detail::lanes<S, Arch>;
  for (Index i = 0; i < n; ++i) {
    const S* s = src + rows[i] * src_stride;
    S* o = dst + i * dst_stride;
    const S g = weights[i];
    const Batch gv(g);
    Index j = 0;
    for (; j + w <= d; j += w) (gv * Batch::load_unaligned(s + j)).store_unaligned(o + j);
    for (; j < d; ++j) o[j] = g * s[j];
  }
}

template <class Arch = xsimd::default_arch, Scalar S>
void weighted_gather(const S* src, Index src_stride, const Index* rows, const S* weights, Index n,
                     Index d, S* dst, Index dst_stride) {
  WeightedGather<Arch>{}(src, src_stride, rows, weights, n, d, dst, dst_stride);
}

}  // namespace moe::kernels

MOE_KERNELS_END_SIMD_CODE

#endif  // MOE_KERNELS_WEIGHTED_GATHER_HPP

// Copy selected rows of a row-major matrix into a dense block.
#ifndef MOE_KERNELS_GATHER_ROWS_HPP
#define MOE_KERNELS_GATHER_ROWS_HPP

#include <xsimd/xsimd.hpp>

#include "moe/core/types.hpp"
#include "moe/kernels/arch.hpp"

MOE_KERNELS_BEGIN_SIMD_CODE

namespace moe::kernels {

/// dst row i = src row rows[i], for i in [0, n); d columns. A pure copy: bit-identical to
/// reference::GatherRows on every architecture.
template <class Arch>
struct GatherRows {
  template <Scalar S>
  void operator()(const S* src, Index src_stride, const Index* rows, Index n, Index d, S* dst,
                  Index dst_stride) const;
};

template <class Arch>
template <Scalar S>
void GatherRows<Arch>::operator()(const S* src, Index src_stride, const Index* rows, Index n,
                                  Index d, S* dst, Index dst_stride) const {
  using Batch = xsimd::batch<S, Arch>;
  constexpr Index w = detail::lanes<S, Arch>;
  for (Index i = 0; i < n; ++i) {
    const S* s = src + rows[i] * src_stride;
    S* o = dst + i * dst_stride;
    Index j = 0;
    for (; j + w <= d; j += w) Batch::load_unaligned(s + j).store_unaligned(o + j);
    for (; j < d; ++j) o[j] = s[j];
  }
}

template <class Arch = xsimd::default_arch, Scalar S>
void gather_rows(const S* src, Index src_stride, const Index* rows, Index n, Index d, S* dst,
                 Index dst_stride) {
  GatherRows<Arch>{}(src, src_stride, rows, n, d, dst, dst_stride);
}

}  // namespace moe::kernels

MOE_KERNELS_END_SIMD_CODE

#endif  // MOE_KERNELS_GATHER_ROWS_HPP

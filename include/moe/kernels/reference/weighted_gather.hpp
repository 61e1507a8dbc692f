// Scalar twin of kernels::WeightedGather: the definition and the test oracle.
#ifndef MOE_KERNELS_REFERENCE_WEIGHTED_GATHER_HPP
#define MOE_KERNELS_REFERENCE_WEIGHTED_GATHER_HPP

#include "moe/core/types.hpp"

namespace moe::kernels::reference {

/// dst[i][j] = weights[i] * src[rows[i]][j] for i in [0, n), j in [0, d).
template <Scalar S>
void weighted_gather(const S* src, Index src_stride, const Index* rows, const S* weights, Index n,
                     Index d, S* dst, Index dst_stride) {
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < d; ++j)
      dst[i * dst_stride + j] = weights[i] * src[rows[i] * src_stride + j];
}

}  // namespace moe::kernels::reference

#endif  // MOE_KERNELS_REFERENCE_WEIGHTED_GATHER_HPP

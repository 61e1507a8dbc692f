// Scalar twin of kernels::GatherRows: the definition and the test oracle.
#ifndef MOE_KERNELS_REFERENCE_GATHER_ROWS_HPP
#define MOE_KERNELS_REFERENCE_GATHER_ROWS_HPP

#include "moe/core/types.hpp"

namespace moe::kernels::reference {

/// dst[i][j] = src[rows[i]][j] for i in [0, n), j in [0, d).
template <Scalar S>
void gather_rows(const S* src, Index src_stride, const Index* rows, Index n, Index d, S* dst,
                 Index dst_stride) {
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < d; ++j) dst[i * dst_stride + j] = src[rows[i] * src_stride + j];
}

}  // namespace moe::kernels::reference

#endif  // MOE_KERNELS_REFERENCE_GATHER_ROWS_HPP

// Scalar twin of kernels::WeightedScatterAdd: the definition and the test oracle.
#ifndef MOE_KERNELS_REFERENCE_WEIGHTED_SCATTER_ADD_HPP
#define MOE_KERNELS_REFERENCE_WEIGHTED_SCATTER_ADD_HPP

#include "moe/core/types.hpp"

namespace moe::kernels::reference {

/// For i = 0, 1, ..., n-1 in that order: dst[rows[i]][j] += weights[i] * src[i][j].
/// The product is rounded before the add (two statements, so no compiler contracts them into
/// an FMA even where contraction within an expression is on).
template <Scalar S>
void weighted_scatter_add(const S* src, Index src_stride, const Index* rows, const S* weights,
                          Index n, Index d, S* dst, Index dst_stride) {
  for (Index i = 0; i < n; ++i) {
    for (Index j = 0; j < d; ++j) {
      const S prod = weights[i] * src[i * src_stride + j];
      S& o = dst[rows[i] * dst_stride + j];
      o = o + prod;
    }
  }
}

}  // namespace moe::kernels::reference

#endif  // MOE_KERNELS_REFERENCE_WEIGHTED_SCATTER_ADD_HPP

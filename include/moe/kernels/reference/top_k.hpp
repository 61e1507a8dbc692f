// Scalar twin of kernels::top_k: a full stable sort, obviously right, not fast.
#ifndef MOE_KERNELS_REFERENCE_TOP_K_HPP
#define MOE_KERNELS_REFERENCE_TOP_K_HPP

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "moe/core/types.hpp"

namespace moe::kernels::reference {

/// Stable-sorts all indices by value, descending, NaN last, and keeps the first k. Stability
/// puts equal values in index order. Allocates n indices.
template <Scalar S>
void top_k(const S* row, Index n, Index k, Index* out_indices) {
  std::vector<Index> idx(static_cast<std::size_t>(n));
  std::iota(idx.begin(), idx.end(), Index{0});
  std::stable_sort(idx.begin(), idx.end(), [row](Index i, Index j) {
    const bool i_nan = std::isnan(row[i]);
    const bool j_nan = std::isnan(row[j]);
    if (i_nan || j_nan) return !i_nan && j_nan;
    return row[i] > row[j];
  });
  std::copy_n(idx.begin(), k, out_indices);
}

}  // namespace moe::kernels::reference

#endif  // MOE_KERNELS_REFERENCE_TOP_K_HPP

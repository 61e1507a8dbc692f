// Indices of the k largest values of one row: the selection step of every top-k router.
#ifndef MOE_KERNELS_TOP_K_HPP
#define MOE_KERNELS_TOP_K_HPP

#include <algorithm>
#include <cassert>
#include <cmath>

#include "moe/core/types.hpp"

namespace moe::kernels {

namespace detail {

// Strict total order "i ranks before j": larger value first, NaN after every number, and
// equal values (or two NaNs) by lower index. Total, so the result is unique.
template <class S>
struct RanksBefore {
  const S* row;
  bool operator()(Index i, Index j) const {
    const S a = row[i];
    const S b = row[j];
    const bool a_nan = std::isnan(a);
    const bool b_nan = std::isnan(b);
    if (a_nan != b_nan) return b_nan;
    if (!a_nan && a != b) return a > b;
    return i < j;
  }
};

}  // namespace detail

/// Writes to out_indices[0, k) the indices of the k largest values of row[0, n), in descending
/// value order. Equal values: the lower index comes first (and so wins the last place). NaN
/// ranks below every number, including -inf; NaNs among themselves by index. Requires
/// 1 <= k <= n (asserted in debug builds; callers validate). Scalar, allocation-free,
/// O(n log k): a heap of the k best so far lives in out_indices.
template <Scalar S>
void top_k(const S* row, Index n, Index k, Index* out_indices) {
  assert(k >= 1 && k <= n);
  const detail::RanksBefore<S> before{row};
  if (k == 1) {
    Index best = 0;
    for (Index i = 1; i < n; ++i)
      if (before(i, best)) best = i;
    out_indices[0] = best;
    return;
  }
  // With "ranks before" as the heap's less-than, the heap's front is the worst of the k kept.
  Index* first = out_indices;
  Index* last = out_indices + k;
  for (Index i = 0; i < k; ++i) out_indices[i] = i;
  std::make_heap(first, last, before);
  for (Index i = k; i < n; ++i) {
    if (before(i, *first)) {
      std::pop_heap(first, last, before);
      *(last - 1) = i;
      std::push_heap(first, last, before);
    }
  }
  std::sort_heap(first, last, before);
}

}  // namespace moe::kernels

#endif  // MOE_KERNELS_TOP_K_HPP

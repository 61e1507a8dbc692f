// Indices of the k largest values of one row: the selection step of every top-k router.
#ifndef MOE_KERNELS_TOP_K_HPP
#define MOE_KERNELS_TOP_K_HPP

#include <utility>
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

// Restores "no child ranks after its parent" below pos in heap[0, size).
template <class Before>
void sift_down_worst(Index* heap, Index size, Index pos, const Before& before) {
  const Index moving = heap[pos];
  for (;;) {
    Index child = 2 * pos + 1;
    if (child >= size) break;
    if (child + 1 < size && before(heap[child], heap[child + 1])) ++child;  // the worse child
    if (!before(moving, heap[child])) break;
    heap[pos] = heap[child];
    pos = child;
  }
  heap[pos] = moving;
}

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
  // A heap of the k best so far, worst at the root, kept in out_indices. Hand-written rather
  // than std::make_heap / sort_heap: GCC 12 reports a false -Warray-bounds inside
  // std::__adjust_heap when k is a known small constant.
  Index* heap = out_indices;
  for (Index i = 0; i < k; ++i) heap[i] = i;
  for (Index pos = k / 2; pos-- > 0;) detail::sift_down_worst(heap, k, pos, before);
  for (Index i = k; i < n; ++i) {
    if (before(i, heap[0])) {
      heap[0] = i;
      detail::sift_down_worst(heap, k, 0, before);
    }
  }
  // Heap sort: moving the worst to the back each time leaves the best first.
  for (Index end = k - 1; end > 0; --end) {
    std::swap(heap[0], heap[end]);
    detail::sift_down_worst(heap, end, 0, before);
  }
}

}  // namespace moe::kernels

#endif  // MOE_KERNELS_TOP_K_HPP

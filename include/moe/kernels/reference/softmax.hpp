// Scalar twins of kernels::SoftmaxRows and kernels::LogSumExpRows.
#ifndef MOE_KERNELS_REFERENCE_SOFTMAX_HPP
#define MOE_KERNELS_REFERENCE_SOFTMAX_HPP

#include <algorithm>
#include <cmath>
#include <limits>

#include "moe/core/types.hpp"

namespace moe::kernels::reference {

/// Per row, in place: m = max_j x_j; x_j = exp(x_j - m); s = sum_j x_j (left to right);
/// x_j = x_j / s.
template <Scalar S>
void softmax_rows(S* data, Index rows, Index cols, Index stride) {
  if (cols <= 0) return;
  for (Index r = 0; r < rows; ++r) {
    S* row = data + r * stride;
    S m = -std::numeric_limits<S>::infinity();
    for (Index j = 0; j < cols; ++j) m = std::max(m, row[j]);
    S sum = 0;
    for (Index j = 0; j < cols; ++j) {
      row[j] = std::exp(row[j] - m);
      sum += row[j];
    }
    for (Index j = 0; j < cols; ++j) row[j] = row[j] / sum;
  }
}

/// out[r] = m + log(sum_j exp(x_j - m)), m = max_j x_j; out[r] = m when m is not finite
/// (empty row: -inf; all -inf: -inf; any +inf: +inf; NaN max: NaN).
template <Scalar S>
void logsumexp_rows(const S* data, Index rows, Index cols, Index stride, S* out) {
  for (Index r = 0; r < rows; ++r) {
    const S* row = data + r * stride;
    S m = -std::numeric_limits<S>::infinity();
    for (Index j = 0; j < cols; ++j) m = std::max(m, row[j]);
    if (!std::isfinite(m)) {
      out[r] = m;
      continue;
    }
    S sum = 0;
    for (Index j = 0; j < cols; ++j) sum += std::exp(row[j] - m);
    out[r] = m + std::log(sum);
  }
}

}  // namespace moe::kernels::reference

#endif  // MOE_KERNELS_REFERENCE_SOFTMAX_HPP

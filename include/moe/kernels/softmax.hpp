// Row-wise softmax and log-sum-exp over a row-major matrix (router logits).
#ifndef MOE_KERNELS_SOFTMAX_HPP
#define MOE_KERNELS_SOFTMAX_HPP

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "moe/core/types.hpp"
#include "moe/kernels/arch.hpp"
#include "moe/kernels/simd_math.hpp"

MOE_KERNELS_BEGIN_SIMD_CODE

namespace moe::kernels {

namespace detail {

// xsimd 8.1 has hadd but no reduce_max. Max is exact, so lane order does not matter.
template <class S, class Arch>
S reduce_max(const xsimd::batch<S, Arch>& v) {
  std::array<S, xsimd::batch<S, Arch>::size> lanes_buf;
  v.store_unaligned(lanes_buf.data());
  S m = lanes_buf[0];
  for (const S x : lanes_buf) m = std::max(m, x);
  return m;
}

template <class S, class Arch>
S row_max(const S* row, Index cols) {
  using Batch = xsimd::batch<S, Arch>;
  constexpr Index w = lanes<S, Arch>;
  S m = -std::numeric_limits<S>::infinity();
  Index j = 0;
  if (cols >= w) {
    Batch mv = Batch::load_unaligned(row);
    for (j = w; j + w <= cols; j += w) mv = xsimd::max(mv, Batch::load_unaligned(row + j));
    m = reduce_max(mv);
  }
  for (; j < cols; ++j) m = std::max(m, row[j]);
  return m;
}

// Sum of exp(row[j] - m); writes the exponentials back when Store (softmax) is set.
template <bool Store, class S, class Arch, class Ptr>
S sum_exp_shifted(Ptr row, Index cols, S m) {
  using Batch = xsimd::batch<S, Arch>;
  constexpr Index w = lanes<S, Arch>;
  const Batch mv(m);
  Batch acc(S(0));
  Index j = 0;
  for (; j + w <= cols; j += w) {
    const Batch e = exp_nonpositive(Batch::load_unaligned(row + j) - mv);
    if constexpr (Store) e.store_unaligned(row + j);
    acc += e;
  }
  S sum = xsimd::hadd(acc);
  for (; j < cols; ++j) {
    const S e = std::exp(row[j] - m);
    if constexpr (Store) row[j] = e;
    sum += e;
  }
  return sum;
}

}  // namespace detail

/// In place, per row of `cols` values: x = exp(x - max) / sum_j exp(x_j - max).
/// Lanes accumulate the sum in a width-dependent order, so results match
/// reference::SoftmaxRows within a few ulp, not bit for bit. A NaN makes its row NaN; a row
/// whose max is +-inf gives NaN, as the formula does.
template <class Arch>
struct SoftmaxRows {
  template <Scalar S>
  void operator()(S* data, Index rows, Index cols, Index stride) const;
};

/// out[r] = max + log(sum_j exp(x_j - max)) per row. An empty row gives -inf; a row whose max
/// is +-inf gives that max (an all -inf row gives -inf); a NaN gives NaN.
template <class Arch>
struct LogSumExpRows {
  template <Scalar S>
  void operator()(const S* data, Index rows, Index cols, Index stride, S* out) const;
};

template <class Arch>
template <Scalar S>
void SoftmaxRows<Arch>::operator()(S* data, Index rows, Index cols, Index stride) const {
  using Batch = xsimd::batch<S, Arch>;
  constexpr Index w = detail::lanes<S, Arch>;
  if (cols <= 0) return;
  for (Index r = 0; r < rows; ++r) {
    S* row = data + r * stride;
    const S m = detail::row_max<S, Arch>(row, cols);
    const S sum = detail::sum_exp_shifted<true, S, Arch>(row, cols, m);
    // Divide rather than multiply by 1/sum: one rounding, like the twin.
    const Batch sv(sum);
    Index j = 0;
    for (; j + w <= cols; j += w) (Batch::load_unaligned(row + j) / sv).store_unaligned(row + j);
    for (; j < cols; ++j) row[j] = row[j] / sum;
  }
}

template <class Arch>
template <Scalar S>
void LogSumExpRows<Arch>::operator()(const S* data, Index rows, Index cols, Index stride,
                                     S* out) const {
  for (Index r = 0; r < rows; ++r) {
    const S* row = data + r * stride;
    const S m = detail::row_max<S, Arch>(row, cols);
    if (!std::isfinite(m)) {  // empty, all -inf, any +inf, or NaN max
      out[r] = m;
      continue;
    }
    out[r] = m + std::log(detail::sum_exp_shifted<false, S, Arch>(row, cols, m));
  }
}

template <class Arch = xsimd::default_arch, Scalar S>
void softmax_rows(S* data, Index rows, Index cols, Index stride) {
  SoftmaxRows<Arch>{}(data, rows, cols, stride);
}

template <class Arch = xsimd::default_arch, Scalar S>
void logsumexp_rows(const S* data, Index rows, Index cols, Index stride, S* out) {
  LogSumExpRows<Arch>{}(data, rows, cols, stride, out);
}

}  // namespace moe::kernels

MOE_KERNELS_END_SIMD_CODE

#endif  // MOE_KERNELS_SOFTMAX_HPP

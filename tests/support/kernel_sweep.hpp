// The kernel sweep harness shared by the kernel tests: every architecture the build supports,
// the size sweep around the vector width, aligned buffers and their random contents, and a
// readable first difference.
#ifndef MOE_TESTS_SUPPORT_KERNEL_SWEEP_HPP
#define MOE_TESTS_SUPPORT_KERNEL_SWEEP_HPP

#include <moe/core/types.hpp>

#include <algorithm>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>
#include <xsimd/xsimd.hpp>

namespace moe::test {

template <class S>
using AlignedVector = std::vector<S, xsimd::aligned_allocator<S, 64>>;

/// Calls f(Arch{}) for the default architecture, then sse2 and avx2 when the build has them.
template <class F>
void for_each_arch(F&& f) {
  f(xsimd::default_arch{});
#if XSIMD_WITH_SSE2
  if constexpr (!std::is_same_v<xsimd::default_arch, xsimd::sse2>) f(xsimd::sse2{});
#endif
#if XSIMD_WITH_AVX2
  if constexpr (!std::is_same_v<xsimd::default_arch, xsimd::avx2>) f(xsimd::avx2{});
#endif
}

/// {1, 3, W-1, W, W+1, 3W, 8W+2} for the vector width W, positive and without repeats.
template <class S, class Arch>
std::vector<Index> sweep_sizes() {
  const Index w = static_cast<Index>(xsimd::batch<S, Arch>::size);
  std::vector<Index> sizes{1, 3, w - 1, w, w + 1, 3 * w, 8 * w + 2};
  std::erase_if(sizes, [](Index v) { return v <= 0; });
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  return sizes;
}

/// Every element of c (an AlignedVector, a std::vector) a draw of U(lo, hi) from rng, in order.
template <class Container, class S>
void fill_uniform(Container& c, std::mt19937& rng, S lo, S hi) {
  std::uniform_real_distribution<S> value(lo, hi);
  for (S& v : c) v = value(rng);
}

/// n row indices drawn uniformly from [0, m) (repeats allowed), as a gather or scatter reads them.
inline std::vector<Index> random_rows(std::mt19937& rng, Index n, Index m) {
  std::vector<Index> rows(static_cast<std::size_t>(n));
  std::uniform_int_distribution<Index> pick(0, m - 1);
  for (Index& r : rows) r = pick(rng);
  return rows;
}

/// "" when a and b hold the same bits, else the first element that differs.
template <class S>
std::string first_difference(const S* a, const S* b, Index n) {
  for (Index i = 0; i < n; ++i) {
    if (std::memcmp(a + i, b + i, sizeof(S)) != 0) {
      std::ostringstream os;
      os.precision(17);
      os << "element " << i << ": kernel " << a[i] << ", reference " << b[i];
      return os.str();
    }
  }
  return {};
}

}  // namespace moe::test

#endif  // MOE_TESTS_SUPPORT_KERNEL_SWEEP_HPP

// Small helpers shared by the example programs: reproducible random weights.
#ifndef MOE_EXAMPLES_EXAMPLE_UTIL_HPP
#define MOE_EXAMPLES_EXAMPLE_UTIL_HPP

#include <moe/core/random.hpp>
#include <moe/core/types.hpp>

#include <cmath>
#include <cstdint>

namespace moe::examples {

/// Fills m with N(0, scale^2) from a counter-based generator: the same numbers on every
/// machine and thread count, so the examples' printed output can be checked in CI.
template <class Derived>
void fill_normal(Eigen::MatrixBase<Derived>& m, std::uint64_t seed, double scale) {
  const CounterRng rng(seed, 0);
  for (Index r = 0; r < m.rows(); ++r)
    for (Index c = 0; c < m.cols(); ++c)
      m(r, c) = static_cast<typename Derived::Scalar>(scale * rng.normal(static_cast<std::uint64_t>(r),
                                                                         static_cast<std::uint64_t>(c)));
}

template <class Derived>
void fill_normal(Eigen::MatrixBase<Derived>&& m, std::uint64_t seed, double scale) {
  fill_normal(m, seed, scale);
}

}  // namespace moe::examples

#endif  // MOE_EXAMPLES_EXAMPLE_UTIL_HPP

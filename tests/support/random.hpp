// Random test inputs and expert banks shared by the test programs.
#ifndef MOE_TESTS_SUPPORT_RANDOM_HPP
#define MOE_TESTS_SUPPORT_RANDOM_HPP

#include <moe/core/types.hpp>
#include <moe/expert/swiglu_experts.hpp>

#include <random>
#include <type_traits>

namespace moe::test {

/// Fills m (any Eigen matrix, block or map) with N(0, scale^2) draws of std::mt19937(seed),
/// row by row, each double draw rounded to m's scalar: the same seed gives the same values in
/// every test, in float and in double.
template <class M>
void fill(M&& m, unsigned seed, double scale = 1.0) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> n(0.0, scale);
  for (Index r = 0; r < m.rows(); ++r)
    for (Index c = 0; c < m.cols(); ++c) m(r, c) = static_cast<typename std::decay_t<M>::Scalar>(n(gen));
}

/// A [r, c] double matrix of N(0, scale^2) draws of std::mt19937(seed), row-major order (the
/// values fill() writes into a RowMatrix<double> of that shape).
inline RowMatrix<double> random_matrix(Index r, Index c, unsigned seed, double scale = 1.0) {
  RowMatrix<double> m(r, c);
  fill(m, seed, scale);
  return m;
}

/// A bank of E SwiGLU experts [d -> ff -> d] with N(0, 0.3^2) weights: gate_up from seed,
/// down from seed + 1.
template <class S>
moe::SwiGLUExperts<S> swiglu(Index E, Index d, Index ff, unsigned seed) {
  moe::SwiGLUExperts<S> experts(E, d, ff);
  fill(experts.gate_up(), seed, 0.3);
  fill(experts.down(), seed + 1, 0.3);
  return experts;
}

}  // namespace moe::test

#endif  // MOE_TESTS_SUPPORT_RANDOM_HPP

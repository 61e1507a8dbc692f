// Random test inputs and expert banks shared by the test programs.
#ifndef MOE_TESTS_SUPPORT_RANDOM_HPP
#define MOE_TESTS_SUPPORT_RANDOM_HPP

#include <moe/contracts/routing_result.hpp>
#include <moe/core/types.hpp>
#include <moe/expert/swiglu_experts.hpp>

#include <algorithm>
#include <cstddef>
#include <functional>
#include <random>
#include <type_traits>
#include <vector>

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

/// A [r, c] matrix of N(0, 1) draws continuing rng's stream, element by element in row-major
/// order (for a test that draws many matrices from one generator).
template <class S>
RowMatrix<S> random_matrix(Index r, Index c, std::mt19937& rng) {
  std::normal_distribution<double> n(0.0, 1.0);
  RowMatrix<S> m(r, c);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<S>(n(rng));
  return m;
}

/// A token-choice routing: T tokens, k distinct experts each (a shuffle of [0, E) per token),
/// best (largest gate) first. Gates are multiples of 1/8 in [1/8, 1], so equal gates are common.
template <class S = double>
RoutingResult<S> random_routing(std::mt19937& rng, Index T, Index E, Index k) {
  RoutingResult<S> r;
  r.reset(T, E, T * k, k);
  std::vector<Index> experts(static_cast<std::size_t>(E));
  std::uniform_int_distribution<int> eighth(1, 8);
  for (Index t = 0; t < T; ++t) {
    for (Index e = 0; e < E; ++e) experts[static_cast<std::size_t>(e)] = e;
    std::shuffle(experts.begin(), experts.end(), rng);
    std::vector<S> g(static_cast<std::size_t>(k));
    for (auto& v : g) v = static_cast<S>(eighth(rng)) / S(8);
    std::sort(g.begin(), g.end(), std::greater<>());
    for (Index j = 0; j < k; ++j) {
      const auto i = static_cast<std::size_t>(t * k + j);
      r.token[i] = t;
      r.expert[i] = experts[static_cast<std::size_t>(j)];
      r.gate[i] = g[static_cast<std::size_t>(j)];
    }
  }
  return r;
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

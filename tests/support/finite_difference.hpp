// Central finite differences in double, the oracle of every backward test.
#ifndef MOE_TESTS_SUPPORT_FINITE_DIFFERENCE_HPP
#define MOE_TESTS_SUPPORT_FINITE_DIFFERENCE_HPP

#include <moe/core/types.hpp>

#include <algorithm>
#include <cmath>
#include <functional>

namespace moe::test {

/// dL/dv for every element of v by (L(v + h) - L(v - h)) / 2h, restoring v afterwards.
template <class Block>
RowMatrix<double> numeric_gradient(Block&& v, const std::function<double()>& loss, double h = 1e-6) {
  RowMatrix<double> g(v.rows(), v.cols());
  for (Index r = 0; r < v.rows(); ++r)
    for (Index c = 0; c < v.cols(); ++c) {
      const double keep = v(r, c);
      v(r, c) = keep + h;
      const double up = loss();
      v(r, c) = keep - h;
      const double down = loss();
      v(r, c) = keep;
      g(r, c) = (up - down) / (2 * h);
    }
  return g;
}

/// max |a - b| / max(1e-8, max |b|).
template <class A, class B>
double relative_gap(const A& a, const B& b) {
  const double scale = std::max(1e-8, b.template cast<double>().cwiseAbs().maxCoeff());
  return (a.template cast<double>() - b.template cast<double>()).cwiseAbs().maxCoeff() / scale;
}

}  // namespace moe::test

#endif  // MOE_TESTS_SUPPORT_FINITE_DIFFERENCE_HPP

// Central finite differences in double, the oracle of every backward test.
#ifndef MOE_TESTS_SUPPORT_FINITE_DIFFERENCE_HPP
#define MOE_TESTS_SUPPORT_FINITE_DIFFERENCE_HPP

#include <moe/core/types.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>

namespace moe::test {

/// dL/dv for every element of v by (L(v + h) - L(v - h)) / 2h, restoring v afterwards. When v
/// is a block of a policy's weights, `changed` tells the policy after each write (an expert
/// bank packs its weights at the first forward after a change: docs/experts.md#packed-weights);
/// weights_changed(policy) below is the usual one.
template <class Block>
RowMatrix<double> numeric_gradient(Block&& v, const std::function<double()>& loss, double h = 1e-6,
                                   const std::function<void()>& changed = {}) {
  RowMatrix<double> g(v.rows(), v.cols());
  const auto write = [&](Index r, Index c, double value) {
    v(r, c) = value;
    if (changed) changed();
  };
  for (Index r = 0; r < v.rows(); ++r)
    for (Index c = 0; c < v.cols(); ++c) {
      const double keep = v(r, c);
      write(r, c, keep + h);
      const double up = loss();
      write(r, c, keep - h);
      const double down = loss();
      write(r, c, keep);
      g(r, c) = (up - down) / (2 * h);
    }
  return g;
}

/// A `changed` for numeric_gradient: tells every part of policy (a layer, a bank, a combiner)
/// that its weights changed, through its non-const for_each_parameter.
template <class Policy>
std::function<void()> weights_changed(Policy& policy) {
  return [&policy] { policy.for_each_parameter([](const std::string&, auto&&) {}); };
}

/// max |a - b| / max(1e-8, max |b|).
template <class A, class B>
double relative_gap(const A& a, const B& b) {
  const double scale = std::max(1e-8, b.template cast<double>().cwiseAbs().maxCoeff());
  return (a.template cast<double>() - b.template cast<double>()).cwiseAbs().maxCoeff() / scale;
}

}  // namespace moe::test

#endif  // MOE_TESTS_SUPPORT_FINITE_DIFFERENCE_HPP

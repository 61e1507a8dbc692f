// A dense scalar oracle: every expert applied to every token, weighted by a dense gate
// matrix, written with plain loops and std:: math from the definitions.
#ifndef MOE_TESTS_SUPPORT_REFERENCE_MOE_HPP
#define MOE_TESTS_SUPPORT_REFERENCE_MOE_HPP

#include <moe/core/types.hpp>

#include <algorithm>
#include <cmath>
#include <functional>

namespace moe::test {

inline double ref_silu(double v) { return v / (1.0 + std::exp(-v)); }
inline double ref_sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }
inline double ref_gelu_erf(double v) { return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))); }
inline double ref_gelu_tanh(double v) {
  return 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / 3.14159265358979323846) * (v + 0.044715 * v * v * v)));
}

/// y = W2 (act(W1 x) * (W3 x)) for one token; W1, W3 [ff, d], W2 [d, ff] (Hugging Face orientation).
template <class M1, class M2, class M3>
RowVector<double> ref_swiglu(const RowVector<double>& x, const M1& w1, const M3& w3, const M2& w2) {
  const Index ff = w1.rows(), d = w1.cols();
  RowVector<double> h(ff);
  for (Index i = 0; i < ff; ++i) {
    double g = 0, u = 0;
    for (Index j = 0; j < d; ++j) {
      g += double(w1(i, j)) * x[j];
      u += double(w3(i, j)) * x[j];
    }
    h[i] = ref_silu(g) * u;
  }
  RowVector<double> y(w2.rows());
  for (Index o = 0; o < w2.rows(); ++o) {
    double s = 0;
    for (Index i = 0; i < ff; ++i) s += double(w2(o, i)) * h[i];
    y[o] = s;
  }
  return y;
}

/// Dense mixture: y[t] = sum_e gates(t, e) * expert_e(x[t]).
inline RowMatrix<double> ref_mixture(const RowMatrix<double>& x, const RowMatrix<double>& gates,
                                     const std::function<RowVector<double>(Index, const RowVector<double>&)>& expert,
                                     Index d_out) {
  RowMatrix<double> y = RowMatrix<double>::Zero(x.rows(), d_out);
  for (Index t = 0; t < x.rows(); ++t)
    for (Index e = 0; e < gates.cols(); ++e)
      if (gates(t, e) != 0.0) y.row(t) += gates(t, e) * expert(e, x.row(t));
  return y;
}

}  // namespace moe::test

#endif  // MOE_TESTS_SUPPORT_REFERENCE_MOE_HPP

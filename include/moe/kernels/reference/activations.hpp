// Scalar twins of the activation kernels: the formulas as documented, evaluated with std::.
#ifndef MOE_KERNELS_REFERENCE_ACTIVATIONS_HPP
#define MOE_KERNELS_REFERENCE_ACTIVATIONS_HPP

#include <cmath>

#include "moe/core/types.hpp"

namespace moe::kernels::reference {

namespace detail {

template <Scalar S>
S sigmoid(S x) {
  const S e = std::exp(-std::abs(x));  // never overflows
  return (x >= S(0) ? S(1) : e) / (S(1) + e);
}

template <Scalar S>
S silu(S x) {
  return x * sigmoid(x);
}

}  // namespace detail

/// x = 1 / (1 + exp(-x)), as e = exp(-|x|), (x >= 0 ? 1 : e) / (1 + e).
template <Scalar S>
void sigmoid(S* x, Index n) {
  for (Index i = 0; i < n; ++i) x[i] = detail::sigmoid(x[i]);
}

/// x = x * sigmoid(x).
template <Scalar S>
void silu(S* x, Index n) {
  for (Index i = 0; i < n; ++i) x[i] = detail::silu(x[i]);
}

/// x = x < 0 ? 0 : x.
template <Scalar S>
void relu(S* x, Index n) {
  for (Index i = 0; i < n; ++i) x[i] = x[i] < S(0) ? S(0) : x[i];
}

/// x = 0.5 x (1 + erf(x / sqrt 2)), with x / sqrt 2 computed as x * (1 / sqrt 2).
template <Scalar S>
void gelu_erf(S* x, Index n) {
  const S inv_sqrt2 = S(0.707106781186547524400844362104849039L);
  for (Index i = 0; i < n; ++i) x[i] = S(0.5) * x[i] * (S(1) + std::erf(x[i] * inv_sqrt2));
}

/// x = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), x^3 as (x * x) * x.
template <Scalar S>
void gelu_tanh(S* x, Index n) {
  const S k = S(0.797884560802865355879892119868763737L);
  const S c = S(0.044715L);
  for (Index i = 0; i < n; ++i) {
    const S v = x[i];
    const S inner = k * (v + c * (v * v * v));
    x[i] = S(0.5) * v * (S(1) + std::tanh(inner));
  }
}

/// out[i] = silu(gate[i]) * up[i]; out may alias gate or up.
template <Scalar S>
void silu_mul(const S* gate, const S* up, S* out, Index n) {
  for (Index i = 0; i < n; ++i) out[i] = detail::silu(gate[i]) * up[i];
}

}  // namespace moe::kernels::reference

#endif  // MOE_KERNELS_REFERENCE_ACTIVATIONS_HPP

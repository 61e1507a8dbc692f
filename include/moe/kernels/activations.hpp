// Elementwise activations applied in place, and the fused SiLU-gated product of a GLU expert.
#ifndef MOE_KERNELS_ACTIVATIONS_HPP
#define MOE_KERNELS_ACTIVATIONS_HPP

#include <xsimd/xsimd.hpp>

#include <cmath>

#include "moe/core/types.hpp"
#include "moe/kernels/arch.hpp"
#include "moe/kernels/simd_math.hpp"

MOE_KERNELS_BEGIN_SIMD_CODE

namespace moe::kernels {

namespace detail {

// Each activation is written once for a batch and once for a scalar (the tail), with the
// same operations in the same order as its reference twin, so only the transcendental
// (xsimd versus std::) can make them differ.
struct SigmoidOp {
  // exp(-|x|) never overflows: 1/(1+e) for x >= 0, e/(1+e) below.
  template <class S>
  static S scalar(S x) {
    const S e = std::exp(-std::abs(x));
    return (x >= S(0) ? S(1) : e) / (S(1) + e);
  }
  template <class S, class A>
  static xsimd::batch<S, A> simd(const xsimd::batch<S, A>& x) {
    using Batch = xsimd::batch<S, A>;
    const Batch one(S(1));
    const Batch e = exp_nonpositive(-xsimd::abs(x));
    return xsimd::select(x >= Batch(S(0)), one, e) / (one + e);  // NaN: e is NaN
  }
};

struct SiluOp {
  template <class S>
  static S scalar(S x) {
    return x * SigmoidOp::scalar(x);
  }
  template <class S, class A>
  static xsimd::batch<S, A> simd(const xsimd::batch<S, A>& x) {
    return x * SigmoidOp::simd(x);
  }
};

struct ReluOp {
  // x < 0 ? 0 : x keeps NaN as NaN and -0 as -0; the SIMD select does the same, bit for bit.
  template <class S>
  static S scalar(S x) {
    return x < S(0) ? S(0) : x;
  }
  template <class S, class A>
  static xsimd::batch<S, A> simd(const xsimd::batch<S, A>& x) {
    using Batch = xsimd::batch<S, A>;
    const Batch zero(S(0));
    return xsimd::select(x < zero, zero, x);
  }
};

template <class S>
inline constexpr S inv_sqrt2 = S(0.707106781186547524400844362104849039L);
template <class S>
inline constexpr S sqrt_2_over_pi = S(0.797884560802865355879892119868763737L);
template <class S>
inline constexpr S gelu_tanh_cubic = S(0.044715L);

struct GeluErfOp {
  template <class S>
  static S scalar(S x) {
    return S(0.5) * x * (S(1) + std::erf(x * inv_sqrt2<S>));
  }
  template <class S, class A>
  static xsimd::batch<S, A> simd(const xsimd::batch<S, A>& x) {
    using Batch = xsimd::batch<S, A>;
    // erf is exactly +-1 beyond |z| = 10 in float and double; NaN x still gives NaN via * x.
    const Batch z = clamp_symmetric(x * Batch(inv_sqrt2<S>), S(10));
    return Batch(S(0.5)) * x * (Batch(S(1)) + xsimd::erf(z));
  }
};

struct GeluTanhOp {
  template <class S>
  static S scalar(S x) {
    const S inner = sqrt_2_over_pi<S> * (x + gelu_tanh_cubic<S> * (x * x * x));
    return S(0.5) * x * (S(1) + std::tanh(inner));
  }
  template <class S, class A>
  static xsimd::batch<S, A> simd(const xsimd::batch<S, A>& x) {
    using Batch = xsimd::batch<S, A>;
    const Batch inner =
        Batch(sqrt_2_over_pi<S>) * (x + Batch(gelu_tanh_cubic<S>) * (x * x * x));
    // tanh is exactly +-1 beyond |z| = 40 in float and double; NaN x still gives NaN via * x.
    return Batch(S(0.5)) * x * (Batch(S(1)) + xsimd::tanh(clamp_symmetric(inner, S(40))));
  }
};

template <class Op, class Arch, class S>
void apply_in_place(S* x, Index n) {
  using Batch = xsimd::batch<S, Arch>;
  constexpr Index w = lanes<S, Arch>;
  Index i = 0;
  for (; i + w <= n; i += w) Op::simd(Batch::load_unaligned(x + i)).store_unaligned(x + i);
  for (; i < n; ++i) x[i] = Op::scalar(x[i]);
}

}  // namespace detail

/// x = 1 / (1 + exp(-x)), evaluated as e = exp(-|x|), (x >= 0 ? 1 : e) / (1 + e) so that no
/// intermediate overflows: sigmoid(-1e4) = 0, sigmoid(1e4) = 1.
template <class Arch>
struct Sigmoid {
  template <Scalar S>
  void operator()(S* x, Index n) const;
};

/// x = x * sigmoid(x) (SiLU, swish).
template <class Arch>
struct Silu {
  template <Scalar S>
  void operator()(S* x, Index n) const;
};

/// x = x < 0 ? 0 : x. Exact: bit-identical to the twin; NaN stays NaN.
template <class Arch>
struct Relu {
  template <Scalar S>
  void operator()(S* x, Index n) const;
};

/// x = 0.5 x (1 + erf(x / sqrt 2)), the exact GELU.
template <class Arch>
struct GeluErf {
  template <Scalar S>
  void operator()(S* x, Index n) const;
};

/// x = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the tanh approximation of GELU.
template <class Arch>
struct GeluTanh {
  template <Scalar S>
  void operator()(S* x, Index n) const;
};

/// out[i] = silu(gate[i]) * up[i], the SwiGLU product. out may alias gate or up (each element
/// is read before it is written); other overlaps are not allowed.
template <class Arch>
struct SiluMul {
  template <Scalar S>
  void operator()(const S* gate, const S* up, S* out, Index n) const;
};

template <class Arch>
template <Scalar S>
void Sigmoid<Arch>::operator()(S* x, Index n) const {
  detail::apply_in_place<detail::SigmoidOp, Arch>(x, n);
}

template <class Arch>
template <Scalar S>
void Silu<Arch>::operator()(S* x, Index n) const {
  detail::apply_in_place<detail::SiluOp, Arch>(x, n);
}

template <class Arch>
template <Scalar S>
void Relu<Arch>::operator()(S* x, Index n) const {
  detail::apply_in_place<detail::ReluOp, Arch>(x, n);
}

template <class Arch>
template <Scalar S>
void GeluErf<Arch>::operator()(S* x, Index n) const {
  detail::apply_in_place<detail::GeluErfOp, Arch>(x, n);
}

template <class Arch>
template <Scalar S>
void GeluTanh<Arch>::operator()(S* x, Index n) const {
  detail::apply_in_place<detail::GeluTanhOp, Arch>(x, n);
}

template <class Arch>
template <Scalar S>
void SiluMul<Arch>::operator()(const S* gate, const S* up, S* out, Index n) const {
  using Batch = xsimd::batch<S, Arch>;
  constexpr Index w = detail::lanes<S, Arch>;
  Index i = 0;
  for (; i + w <= n; i += w) {
    const Batch g = Batch::load_unaligned(gate + i);
    const Batch u = Batch::load_unaligned(up + i);
    (detail::SiluOp::simd(g) * u).store_unaligned(out + i);
  }
  for (; i < n; ++i) out[i] = detail::SiluOp::scalar(gate[i]) * up[i];
}

template <class Arch = xsimd::default_arch, Scalar S>
void sigmoid(S* x, Index n) {
  Sigmoid<Arch>{}(x, n);
}
template <class Arch = xsimd::default_arch, Scalar S>
void silu(S* x, Index n) {
  Silu<Arch>{}(x, n);
}
template <class Arch = xsimd::default_arch, Scalar S>
void relu(S* x, Index n) {
  Relu<Arch>{}(x, n);
}
template <class Arch = xsimd::default_arch, Scalar S>
void gelu_erf(S* x, Index n) {
  GeluErf<Arch>{}(x, n);
}
template <class Arch = xsimd::default_arch, Scalar S>
void gelu_tanh(S* x, Index n) {
  GeluTanh<Arch>{}(x, n);
}
template <class Arch = xsimd::default_arch, Scalar S>
void silu_mul(const S* gate, const S* up, S* out, Index n) {
  SiluMul<Arch>{}(gate, up, out, n);
}

}  // namespace moe::kernels

MOE_KERNELS_END_SIMD_CODE

#endif  // MOE_KERNELS_ACTIVATIONS_HPP

// Weight element types: what a weight bank may store, and how it becomes the activation type.
//
// kernels::gemm multiplies activations of a Scalar S (float or double) by a weight operand of
// element type W. W = S is the plain case. Any other W names its compute type and how to widen
// a contiguous run of it in weight_traits<W>; gemm widens weight panels with it and then runs
// the same S kernel on them, so the product with W weights equals, bit for bit, the product
// with those weights widened to S first (docs/kernels.md, "Weight element types").
//
// moe::bf16 is the first such type: the top 16 bits of a float (1 sign, 8 exponent, 7 mantissa
// bits), rounded to nearest even from float and widened exactly. Block-quantized formats
// (several values sharing a scale) come later; weight_traits::block is their hook.
#ifndef MOE_KERNELS_WEIGHT_TYPES_HPP
#define MOE_KERNELS_WEIGHT_TYPES_HPP

#include <Eigen/Core>
#include <algorithm>
#include <bit>
#include <concepts>
#include <cstdint>
#include <type_traits>

#include "moe/core/types.hpp"

namespace moe {

/// bfloat16 as storage: 16 bits, no arithmetic. Converting from float rounds to nearest, ties
/// to even (overflow gives ±inf, NaN stays NaN with its sign and is made quiet); converting to
/// float is exact. Trivially copyable and default-constructible (like float, the default leaves
/// the bits unset), so vectors and Eigen matrices of it are plain arrays of uint16.
struct bf16 {
  std::uint16_t bits;

  bf16() = default;
  /// Rounds f to nearest, ties to even.
  constexpr explicit bf16(float f) noexcept : bits(round_bits(f)) {}

  /// The bf16 with these bits.
  static constexpr bf16 from_bits(std::uint16_t b) noexcept {
    bf16 r(0.0f);
    r.bits = b;
    return r;
  }

  /// Exact: the bits are the float's top half, the low half zero.
  constexpr explicit operator float() const noexcept {
    return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
  }

  /// The top 16 bits of f rounded to nearest even on the 16 dropped ones. Adding 0x7fff plus the
  /// kept part's lowest bit carries into the kept part exactly when the dropped part is above
  /// half, or exactly half with an odd kept part; a carry out of the mantissa steps the exponent,
  /// which is right (and gives inf past the largest finite bf16). NaN is kept apart because a
  /// NaN whose payload lies only in the dropped bits would otherwise truncate to inf.
  static constexpr std::uint16_t round_bits(float f) noexcept {
    const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
    return static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
};

static_assert(sizeof(bf16) == 2 && std::is_trivially_copyable_v<bf16> &&
              std::is_trivially_default_constructible_v<bf16>);

namespace kernels {

/// What gemm needs from a weight element type W. Specializations provide:
///  - compute_type: the Scalar a W widens to (the activation type it multiplies);
///  - block: how many consecutive elements of a row one W holds (1: one value per W; a block
///    format holds several with a shared scale; gemm supports 1 today);
///  - widen(src, dst, n): dst[0, n) = the values of the run of n elements starting at src,
///    as compute_type; the run is part of one row of the weight (contiguous in memory).
/// The primary template is undefined: a type is a weight element only if it says how to widen.
template <class W>
struct weight_traits;

/// A Scalar is its own weight element: widening is a copy.
template <Scalar S>
struct weight_traits<S> {
  using compute_type = S;
  static constexpr Index block = 1;
  static void widen(const S* src, S* dst, Index n) noexcept { std::copy(src, src + n, dst); }
};

/// bf16 widens to float exactly (a 16-bit shift, which compilers vectorize).
template <>
struct weight_traits<bf16> {
  using compute_type = float;
  static constexpr Index block = 1;
  static void widen(const bf16* src, float* dst, Index n) noexcept {
    for (Index i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
  }
};

/// W is a weight element that multiplies activations of S (W = S included).
template <class W, class S>
concept WeightFor = Scalar<S> && requires {
  typename weight_traits<W>::compute_type;
  { weight_traits<W>::block } -> std::convertible_to<Index>;
  { weight_traits<W>::widen(static_cast<const W*>(nullptr), static_cast<S*>(nullptr), Index{0}) };
} && std::same_as<typename weight_traits<W>::compute_type, S>;

/// One weight element widened to its compute type.
template <class W>
typename weight_traits<W>::compute_type widen(const W& w) noexcept {
  typename weight_traits<W>::compute_type out;
  weight_traits<W>::widen(&w, &out, 1);
  return out;
}

}  // namespace kernels
}  // namespace moe

namespace Eigen {
/// Lets RowMatrix<moe::bf16> and its views (ConstMatrixRef, blocks) hold bf16 weights. Storage
/// only: bf16 has no arithmetic, so an Eigen expression that computes with it does not compile;
/// `m.cast<float>()` widens and `f.cast<moe::bf16>()` rounds.
template <>
struct NumTraits<moe::bf16> : GenericNumTraits<moe::bf16> {
  enum {
    IsInteger = 0,
    IsSigned = 1,
    IsComplex = 0,
    RequireInitialization = 0,
    ReadCost = 1,
    AddCost = HugeCost,
    MulCost = HugeCost
  };
  using Real = moe::bf16;
  using NonInteger = moe::bf16;
  using Literal = moe::bf16;
  using Nested = moe::bf16;
};
}  // namespace Eigen

#endif  // MOE_KERNELS_WEIGHT_TYPES_HPP

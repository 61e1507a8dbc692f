// Block-quantized weight formats, byte-compatible with ggml's (GGUF tensor types Q8_0, Q4_0,
// Q4_K), and Q8_K, the 8-bit activation partner of the K formats.
//
// A block holds a run of consecutive elements of one row with shared scales: 32 for Q8_0 and
// Q4_0, a super-block of 256 for Q4_K and Q8_K. The structs below are the bytes of a GGUF
// tensor, block after block (little-endian; the host must be too), so a row of a tensor is an
// array of blocks. Dequantization is the format's definition, element by element, in float;
// the quantizers are ggml's reference quantizers, byte for byte. Nothing here knows of models
// or files.
// docs/quantization.md gives the formulas and the measured round-trip errors.
#ifndef MOE_KERNELS_QUANT_BLOCKS_HPP
#define MOE_KERNELS_QUANT_BLOCKS_HPP

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>

#include "moe/core/error.hpp"

namespace moe::kernels {

static_assert(std::endian::native == std::endian::little,
              "the quantized blocks are GGUF's little-endian bytes read in place: a little-endian host is required");

// ---------------------------------------------------------------------------------------------
// IEEE binary16 (the blocks' fp16 scales)

/// binary16 bits to float, exactly (every half is a float). Subnormal halves become normal
/// floats, the sign of zero is kept, inf stays inf, a NaN keeps its sign and payload.
[[nodiscard]] constexpr float fp16_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1Fu;
  std::uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));
  if (exponent != 0) return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  if (mantissa == 0) return std::bit_cast<float>(sign);
  // Subnormal, mantissa * 2^-24: normalise so the leading one becomes the implicit bit.
  std::uint32_t e = 113;  // biased float exponent of 2^-14, lowered once per shift
  while ((mantissa & 0x400u) == 0) {
    mantissa <<= 1;
    --e;
  }
  return std::bit_cast<float>(sign | (e << 23) | ((mantissa & 0x3FFu) << 13));
}

/// float to binary16 bits, rounded to nearest, ties to even (as IEEE 754 and the F16C
/// instruction ggml uses): results below 2^-14 become subnormal halves, |f| >= 65520 (the
/// midpoint past 65504, the largest half) becomes ±inf, and a NaN stays a NaN with its sign
/// and the top of its payload, made quiet.
[[nodiscard]] constexpr std::uint16_t float_to_fp16(float f) noexcept {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  const auto sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return static_cast<std::uint16_t>(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
  if (a >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // 65520 and up, inf
  if (a < 0x38800000u) {
    // Below 2^-14: a multiple of the subnormal unit 2^-24. The float is m * 2^(e - 150) with
    // m its 24-bit significand, so n = m * 2^(e - 126) units; shift right and round.
    const std::uint32_t e = a >> 23;
    const std::uint32_t shift = 126u - e;  // >= 14 here
    if (e == 0 || shift > 24) return sign;  // below 2^-25: rounds to zero
    const std::uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
    std::uint32_t n = m >> shift;
    const std::uint32_t rest = m & ((1u << shift) - 1u);
    const std::uint32_t half = 1u << (shift - 1u);
    if (rest > half || (rest == half && (n & 1u) != 0)) ++n;  // n = 0x400 is the smallest normal: right
    return static_cast<std::uint16_t>(sign | n);
  }
  // Normal: rebias 127 -> 15 and round the 13 dropped bits to nearest even; a carry out of the
  // mantissa steps the exponent, which is right, and cannot pass 65504 below the inf bound.
  const std::uint32_t r = a - 0x38000000u + 0x0FFFu + ((a >> 13) & 1u);
  return static_cast<std::uint16_t>(sign | (r >> 13));
}

// ---------------------------------------------------------------------------------------------
// Block layouts (ggml's block_q8_0, block_q4_0, block_q4_K, block_q8_K)

inline constexpr std::size_t qk8_0 = 32;  ///< elements per BlockQ8_0
inline constexpr std::size_t qk4_0 = 32;  ///< elements per BlockQ4_0
inline constexpr std::size_t qk_k = 256;  ///< elements per K super-block (BlockQ4_K, BlockQ8_K)

/// 32 elements: x[j] = d * qs[j]. 34 bytes.
struct BlockQ8_0 {
  std::uint16_t d;          ///< fp16 scale
  std::int8_t qs[qk8_0];    ///< quants
};

/// 32 elements: x[j] = d * ((qs[j] & 15) - 8) and x[j + 16] = d * ((qs[j] >> 4) - 8), j < 16.
/// 18 bytes.
struct BlockQ4_0 {
  std::uint16_t d;               ///< fp16 scale
  std::uint8_t qs[qk4_0 / 2];    ///< element j in the low nibble of qs[j], element j + 16 in its high nibble
};

/// 256 elements in 8 sub-blocks of 32; sub-block s has a 6-bit scale sc_s and a 6-bit min m_s
/// (q4_k_scale_min unpacks them), and x = d * sc_s * q - dmin * m_s with q a 4-bit quant.
/// Quants: each 64-element chunk c uses qs[32c, 32c + 32): its first 32 elements (sub-block
/// 2c) are the low nibbles, its next 32 (sub-block 2c + 1) the high nibbles. 144 bytes.
struct BlockQ4_K {
  std::uint16_t d;              ///< fp16 super-block scale of the sub-block scales
  std::uint16_t dmin;           ///< fp16 super-block scale of the sub-block mins
  std::uint8_t scales[12];      ///< 8 scales and 8 mins of 6 bits, packed (q4_k_scale_min)
  std::uint8_t qs[qk_k / 2];    ///< 4-bit quants
};

/// 256 elements: x[j] = d * qs[j], with d a float, and bsums[g] = sum of qs[16g, 16g + 16).
/// Not a weight format: the activation partner of the K formats in ggml's dot products.
/// 292 bytes.
struct BlockQ8_K {
  float d;                          ///< scale
  std::int8_t qs[qk_k];             ///< quants
  std::int16_t bsums[qk_k / 16];    ///< sums of the quants in groups of 16
};

static_assert(sizeof(BlockQ8_0) == 34 && alignof(BlockQ8_0) == 2 && std::is_standard_layout_v<BlockQ8_0> &&
              std::is_trivially_copyable_v<BlockQ8_0>);
static_assert(sizeof(BlockQ4_0) == 18 && alignof(BlockQ4_0) == 2 && std::is_standard_layout_v<BlockQ4_0> &&
              std::is_trivially_copyable_v<BlockQ4_0>);
static_assert(sizeof(BlockQ4_K) == 144 && alignof(BlockQ4_K) == 2 && std::is_standard_layout_v<BlockQ4_K> &&
              std::is_trivially_copyable_v<BlockQ4_K>);
static_assert(sizeof(BlockQ8_K) == 292 && std::is_standard_layout_v<BlockQ8_K> &&
              std::is_trivially_copyable_v<BlockQ8_K>);
static_assert(offsetof(BlockQ4_K, scales) == 4 && offsetof(BlockQ4_K, qs) == 16 && offsetof(BlockQ8_K, bsums) == 260);

/// Elements per block of each format, for templates over the block type.
template <class Block>
inline constexpr std::size_t block_elements = 0;
template <>
inline constexpr std::size_t block_elements<BlockQ8_0> = qk8_0;
template <>
inline constexpr std::size_t block_elements<BlockQ4_0> = qk4_0;
template <>
inline constexpr std::size_t block_elements<BlockQ4_K> = qk_k;
template <>
inline constexpr std::size_t block_elements<BlockQ8_K> = qk_k;

/// The 6-bit scale and min of sub-block j in [0, 8) of a Q4_K block (ggml's get_scale_min_k4).
/// Sub-blocks 0-3 keep theirs in the low 6 bits of scales[j] and scales[j + 4]; sub-blocks 4-7
/// keep their low 4 bits in the nibbles of scales[j + 4] (scale low, min high) and their top 2
/// bits in the top 2 bits of scales[j - 4] (scale) and scales[j] (min).
struct ScaleMin {
  std::uint8_t scale, min;
};
[[nodiscard]] constexpr ScaleMin q4_k_scale_min(const std::uint8_t* scales, std::size_t j) noexcept {
  if (j < 4)
    return {static_cast<std::uint8_t>(scales[j] & 63u), static_cast<std::uint8_t>(scales[j + 4] & 63u)};
  return {static_cast<std::uint8_t>((scales[j + 4] & 0x0Fu) | ((scales[j - 4] >> 6) << 4)),
          static_cast<std::uint8_t>((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4))};
}

/// Packs 8 scales and 8 mins, each in [0, 63], into the 12 bytes q4_k_scale_min reads.
constexpr void q4_k_pack_scale_min(const std::uint8_t* sc, const std::uint8_t* m, std::uint8_t* scales) noexcept {
  for (std::size_t j = 0; j < 12; ++j) scales[j] = 0;
  for (std::size_t j = 0; j < 8; ++j) {
    if (j < 4) {
      scales[j] = static_cast<std::uint8_t>(sc[j] & 63u);
      scales[j + 4] = static_cast<std::uint8_t>(m[j] & 63u);
    } else {
      scales[j + 4] = static_cast<std::uint8_t>((sc[j] & 0x0Fu) | ((m[j] & 0x0Fu) << 4));
      scales[j - 4] = static_cast<std::uint8_t>(scales[j - 4] | ((sc[j] >> 4) << 6));
      scales[j] = static_cast<std::uint8_t>(scales[j] | ((m[j] >> 4) << 6));
    }
  }
}

namespace detail {

inline void require_whole_blocks(std::string_view where, std::size_t n, std::size_t block) {
  if (n % block != 0)
    moe::detail::throw_invalid(where, "n (elements)", moe::detail::concat("a multiple of ", block, " (the block size)"),
                               n);
}

/// Quantizers refuse what no block can hold: NaN and inf, and blocks whose scale overflows fp16.
inline void require_finite(std::string_view where, const float* x, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i]))
      moe::detail::throw_invalid(where, "x", "finite values",
                                 moe::detail::concat(std::isnan(x[i]) ? "NaN" : (x[i] > 0 ? "inf" : "-inf"),
                                                     " at index ", i));
}

inline std::uint16_t checked_fp16(std::string_view where, float d, std::size_t block, std::string_view limit) {
  const std::uint16_t h = float_to_fp16(d);
  if ((h & 0x7C00u) == 0x7C00u)
    moe::detail::throw_invalid(where, "block scale", moe::detail::concat("one that fits fp16 (", limit, ")"),
                               moe::detail::concat(d, " in block ", block));
  return h;
}

/// Nearest integer, ties to even (ggml's nearest_int), for |v| well inside int range.
inline int nearest_int(float v) noexcept { return static_cast<int>(std::nearbyint(v)); }

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Dequantization: the formats' definitions

/// out[i] = the value of element i of the n / 32 blocks. Throws std::invalid_argument unless
/// n is a multiple of 32.
inline void dequantize_row_q8_0(const BlockQ8_0* blocks, float* out, std::size_t n) {
  detail::require_whole_blocks("kernels::dequantize_row_q8_0()", n, qk8_0);
  for (std::size_t b = 0; b < n / qk8_0; ++b) {
    const float d = fp16_to_float(blocks[b].d);
    for (std::size_t j = 0; j < qk8_0; ++j) out[b * qk8_0 + j] = d * static_cast<float>(blocks[b].qs[j]);
  }
}

/// As dequantize_row_q8_0 for Q4_0: d * (q - 8), low nibbles first.
inline void dequantize_row_q4_0(const BlockQ4_0* blocks, float* out, std::size_t n) {
  detail::require_whole_blocks("kernels::dequantize_row_q4_0()", n, qk4_0);
  for (std::size_t b = 0; b < n / qk4_0; ++b) {
    const float d = fp16_to_float(blocks[b].d);
    float* o = out + b * qk4_0;
    for (std::size_t j = 0; j < qk4_0 / 2; ++j) {
      o[j] = d * static_cast<float>(static_cast<int>(blocks[b].qs[j] & 0x0Fu) - 8);
      o[j + qk4_0 / 2] = d * static_cast<float>(static_cast<int>(blocks[b].qs[j] >> 4) - 8);
    }
  }
}

/// As dequantize_row_q8_0 for Q4_K (n a multiple of 256): (d * sc) * q - (dmin * m), the
/// products of the scales formed first, as ggml does.
inline void dequantize_row_q4_k(const BlockQ4_K* blocks, float* out, std::size_t n) {
  detail::require_whole_blocks("kernels::dequantize_row_q4_k()", n, qk_k);
  for (std::size_t b = 0; b < n / qk_k; ++b) {
    const BlockQ4_K& blk = blocks[b];
    const float d = fp16_to_float(blk.d);
    const float dmin = fp16_to_float(blk.dmin);
    float* o = out + b * qk_k;
    for (std::size_t c = 0; c < 4; ++c) {  // 64-element chunks
      const std::uint8_t* q = blk.qs + 32 * c;
      const ScaleMin lo = q4_k_scale_min(blk.scales, 2 * c);
      const ScaleMin hi = q4_k_scale_min(blk.scales, 2 * c + 1);
      const float d1 = d * static_cast<float>(lo.scale), m1 = dmin * static_cast<float>(lo.min);
      const float d2 = d * static_cast<float>(hi.scale), m2 = dmin * static_cast<float>(hi.min);
      for (std::size_t l = 0; l < 32; ++l) o[64 * c + l] = d1 * static_cast<float>(q[l] & 0x0Fu) - m1;
      for (std::size_t l = 0; l < 32; ++l) o[64 * c + 32 + l] = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

/// As dequantize_row_q8_0 for Q8_K: d * q.
inline void dequantize_row_q8_k(const BlockQ8_K* blocks, float* out, std::size_t n) {
  detail::require_whole_blocks("kernels::dequantize_row_q8_k()", n, qk_k);
  for (std::size_t b = 0; b < n / qk_k; ++b)
    for (std::size_t j = 0; j < qk_k; ++j) out[b * qk_k + j] = blocks[b].d * static_cast<float>(blocks[b].qs[j]);
}

// ---------------------------------------------------------------------------------------------
// Quantization

/// ggml's reference Q8_0 quantizer, byte for byte: per block d = amax / 127, stored as fp16
/// (nearest even), and q = round(x * (1 / d)) (halves away from zero) with the unrounded d, so
/// |x - q d| <= d / 2 before the scale's fp16 rounding. A block of zeros gets d = 0.
/// Throws std::invalid_argument for n not a multiple of 32, a NaN or inf, or a block whose
/// scale overflows fp16 (amax above about 127 * 65504).
inline void quantize_row_q8_0(const float* x, BlockQ8_0* blocks, std::size_t n) {
  constexpr std::string_view where = "kernels::quantize_row_q8_0()";
  detail::require_whole_blocks(where, n, qk8_0);
  detail::require_finite(where, x, n);
  for (std::size_t b = 0; b < n / qk8_0; ++b) {
    const float* v = x + b * qk8_0;
    float amax = 0.0f;
    for (std::size_t j = 0; j < qk8_0; ++j) amax = std::max(amax, std::fabs(v[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    blocks[b].d = detail::checked_fp16(where, d, b, "amax <= 127 * 65504");
    for (std::size_t j = 0; j < qk8_0; ++j) blocks[b].qs[j] = static_cast<std::int8_t>(std::round(v[j] * id));
  }
}

/// ggml's reference Q4_0 quantizer, byte for byte: per block, max = the value of largest
/// magnitude (the first, on a tie), d = max / -8 (stored as fp16), and
/// q = min(15, floor(x * (1 / d) + 8.5)). max itself maps to q = 0, the value -8 d; the
/// opposite extreme -max would need q = 16 and is clipped to 15, one step off. Every other
/// element is within d / 2 of q d before the scale's fp16 rounding.
/// Throws as quantize_row_q8_0 (the scale bound is |max| <= 8 * 65504).
inline void quantize_row_q4_0(const float* x, BlockQ4_0* blocks, std::size_t n) {
  constexpr std::string_view where = "kernels::quantize_row_q4_0()";
  detail::require_whole_blocks(where, n, qk4_0);
  detail::require_finite(where, x, n);
  for (std::size_t b = 0; b < n / qk4_0; ++b) {
    const float* v = x + b * qk4_0;
    float amax = 0.0f, max = 0.0f;
    for (std::size_t j = 0; j < qk4_0; ++j)
      if (amax < std::fabs(v[j])) {
        amax = std::fabs(v[j]);
        max = v[j];
      }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    blocks[b].d = detail::checked_fp16(where, d, b, "max |x| <= 8 * 65504");
    for (std::size_t j = 0; j < qk4_0 / 2; ++j) {
      // x * id is in [-8, 8], so the sum is in [0.5, 16.5] and the cast truncates to the floor.
      const int q0 = std::min(15, static_cast<int>(v[j] * id + 8.5f));
      const int q1 = std::min(15, static_cast<int>(v[j + qk4_0 / 2] * id + 8.5f));
      blocks[b].qs[j] = static_cast<std::uint8_t>(q0 | (q1 << 4));
    }
  }
}

namespace detail {

/// Nearest integer, ties to even, as ggml's nearest_int, for the quantizers' bounded ratios; a
/// value far outside int range (possible only for degenerate scales) is clamped first, which
/// changes nothing after the callers clamp to the quant range.
inline int nearest_level(float v) noexcept { return nearest_int(std::clamp(v, -1.0e6f, 1.0e6f)); }

/// ggml's make_qkx2_quants for Q4_K's sub-blocks of 32 (nmax = 15, rmin = -1, rdelta = 0.1,
/// 20 steps, squared error): the scale and min (returned in the_min as a non-negative offset)
/// of x ~ scale * L - the_min that minimise the weighted squared error over a few candidate
/// grids, each refit by weighted least squares; L gets the levels in [0, 15].
inline float q4_k_fit_sub_block(const float* x, const float* weights, std::uint8_t* L, float& the_min) noexcept {
  constexpr int n = 32, nmax = 15, nstep = 20;
  constexpr float rmin = -1.0f, rdelta = 0.1f;
  float min = x[0], max = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    the_min = -min;
    return 0.0f;
  }
  float iscale = static_cast<float>(nmax) / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = nearest_level(iscale * (x[i] - min));
    L[i] = static_cast<std::uint8_t>(std::max(0, std::min(nmax, l)));
    const float diff = scale * static_cast<float>(L[i]) + min - x[i];
    best_error += weights[i] * (diff * diff);
  }
  std::uint8_t aux[n];
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * static_cast<float>(is) + static_cast<float>(nmax)) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::max(0, std::min(nmax, nearest_level(iscale * (x[i] - min))));
      aux[i] = static_cast<std::uint8_t>(l);
      const float w = weights[i];
      const auto lf = static_cast<float>(l);
      sum_l += w * lf;
      sum_l2 += w * lf * lf;
      sum_xl += w * lf * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        const float diff = this_scale * static_cast<float>(aux[i]) + this_min - x[i];
        cur_error += weights[i] * (diff * diff);
      }
      if (cur_error < best_error) {
        for (int i = 0; i < n; ++i) L[i] = aux[i];
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  the_min = -min;
  return scale;
}

}  // namespace detail

/// ggml's reference Q4_K quantizer (quantize_row_q4_K_ref), step for step. Per sub-block of
/// 32, a scale and min fit by weighted least squares (weights sqrt(mean x^2) + |x|) over a few
/// candidate grids, which may clip the sub-block's extremes when that lowers the error; the
/// eight scales and mins are then quantized to 6 bits against d = max scale / 63 and dmin =
/// max min / 63 (stored as fp16, nearest even), and each element gets the level nearest
/// (x + dmin m_s) / (d sc_s), clamped to [0, 15] (a sub-block whose 6-bit scale is 0 keeps the
/// fit's levels). Each element is thus within half a step of its value, or it lies past the
/// end of its sub-block's grid and gets the nearest end. Throws as quantize_row_q8_0 (n a
/// multiple of 256; a block whose scales overflow fp16: the mins' below about -63 * 65504 =
/// -4.1e6, the scales' for sub-block ranges above about 945 * 65504 = 6.1e7).
inline void quantize_row_q4_k(const float* x, BlockQ4_K* blocks, std::size_t n) {
  constexpr std::string_view where = "kernels::quantize_row_q4_k()";
  constexpr std::string_view limit = "x in about [-4.1e6, 6.1e7]";
  detail::require_whole_blocks(where, n, qk_k);
  detail::require_finite(where, x, n);
  for (std::size_t b = 0; b < n / qk_k; ++b) {
    const float* v = x + b * qk_k;
    std::uint8_t L[qk_k];
    float weights[32], mins[8], scales[8];
    float max_scale = 0, max_min = 0;
    for (std::size_t j = 0; j < 8; ++j) {
      float sum_x2 = 0;
      for (std::size_t l = 0; l < 32; ++l) sum_x2 += v[32 * j + l] * v[32 * j + l];
      const float av_x = std::sqrt(sum_x2 / 32);
      for (std::size_t l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(v[32 * j + l]);
      scales[j] = detail::q4_k_fit_sub_block(v + 32 * j, weights, L + 32 * j, mins[j]);
      max_scale = std::max(max_scale, scales[j]);
      max_min = std::max(max_min, mins[j]);
    }
    const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    std::uint8_t sc[8], m[8];
    for (std::size_t j = 0; j < 8; ++j) {
      // As ggml: the level is converted to 8 bits before the clamp (a negative fit, which the
      // least squares can give in degenerate sub-blocks, wraps and is clamped to 63).
      sc[j] = std::min<std::uint8_t>(63, static_cast<std::uint8_t>(detail::nearest_level(inv_scale * scales[j])));
      m[j] = std::min<std::uint8_t>(63, static_cast<std::uint8_t>(detail::nearest_level(inv_min * mins[j])));
    }
    BlockQ4_K& out = blocks[b];
    q4_k_pack_scale_min(sc, m, out.scales);
    out.d = detail::checked_fp16(where, max_scale / 63.0f, b, limit);
    out.dmin = detail::checked_fp16(where, max_min / 63.0f, b, limit);
    for (std::size_t j = 0; j < 8; ++j) {
      const float d = fp16_to_float(out.d) * static_cast<float>(sc[j]);
      if (d == 0.0f) continue;
      const float dm = fp16_to_float(out.dmin) * static_cast<float>(m[j]);
      for (std::size_t l = 0; l < 32; ++l)
        L[32 * j + l] = static_cast<std::uint8_t>(std::clamp(detail::nearest_level((v[32 * j + l] + dm) / d), 0, 15));
    }
    for (std::size_t c = 0; c < 4; ++c)
      for (std::size_t l = 0; l < 32; ++l)
        out.qs[32 * c + l] = static_cast<std::uint8_t>(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
  }
}

/// ggml's reference Q8_K quantizer (activations for the K formats' dot products): per block,
/// max = the value of largest magnitude, d = max / -127 as a float, q = min(127, nearest(x * (-127
/// / max))) (ties to even), bsums the sums of 16; a block of zeros gets d = 0 and q = 0.
/// Throws std::invalid_argument for n not a multiple of 256 or a NaN or inf.
inline void quantize_row_q8_k(const float* x, BlockQ8_K* blocks, std::size_t n) {
  constexpr std::string_view where = "kernels::quantize_row_q8_k()";
  detail::require_whole_blocks(where, n, qk_k);
  detail::require_finite(where, x, n);
  for (std::size_t b = 0; b < n / qk_k; ++b) {
    const float* v = x + b * qk_k;
    BlockQ8_K& out = blocks[b];
    float amax = 0.0f, max = 0.0f;
    for (std::size_t j = 0; j < qk_k; ++j)
      if (std::fabs(v[j]) > amax) {
        amax = std::fabs(v[j]);
        max = v[j];
      }
    if (amax == 0.0f) {
      out.d = 0.0f;
      std::fill(std::begin(out.qs), std::end(out.qs), std::int8_t{0});
      std::fill(std::begin(out.bsums), std::end(out.bsums), std::int16_t{0});
      continue;
    }
    const float iscale = -127.0f / max;
    for (std::size_t j = 0; j < qk_k; ++j)
      out.qs[j] = static_cast<std::int8_t>(std::min(127, detail::nearest_int(iscale * v[j])));
    for (std::size_t g = 0; g < qk_k / 16; ++g) {
      int sum = 0;
      for (std::size_t l = 0; l < 16; ++l) sum += out.qs[16 * g + l];
      out.bsums[g] = static_cast<std::int16_t>(sum);
    }
    out.d = 1.0f / iscale;
  }
}

}  // namespace moe::kernels

#endif  // MOE_KERNELS_QUANT_BLOCKS_HPP

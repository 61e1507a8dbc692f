// Scalar twins of the quantized dot products: a weight row of blocks times an activation row
// quantized to the weight format's 8-bit partner (Q8_0 for Q8_0 and Q4_0, Q8_K for Q4_K).
// Integer products summed exactly in int32 within a block, the scales applied in float, blocks
// added in order. These are the definitions the SIMD dot products must match to float
// rounding (only the order of the float additions may differ), and their test oracle.
#ifndef MOE_KERNELS_REFERENCE_QUANT_BLOCKS_HPP
#define MOE_KERNELS_REFERENCE_QUANT_BLOCKS_HPP

#include <cstddef>
#include <cstdint>

#include "moe/kernels/quant_blocks.hpp"

namespace moe::kernels::reference {

/// sum over blocks b of (d_w * d_a) * float(sum_j w.qs[j] * a.qs[j]), the d's the blocks'
/// fp16 scales. n elements, a multiple of 32 (else std::invalid_argument).
inline float vec_dot_q8_0_q8_0(std::size_t n, const BlockQ8_0* w, const BlockQ8_0* a) {
  kernels::detail::require_whole_blocks("kernels::reference::vec_dot_q8_0_q8_0()", n, qk8_0);
  float sum = 0.0f;
  for (std::size_t b = 0; b < n / qk8_0; ++b) {
    std::int32_t dot = 0;
    for (std::size_t j = 0; j < qk8_0; ++j) dot += std::int32_t{w[b].qs[j]} * std::int32_t{a[b].qs[j]};
    sum += (fp16_to_float(w[b].d) * fp16_to_float(a[b].d)) * static_cast<float>(dot);
  }
  return sum;
}

/// As vec_dot_q8_0_q8_0 with Q4_0 weights: the integer dot product is over the weight quants
/// minus 8 (element j < 16 the low nibble of qs[j], element j + 16 its high nibble).
inline float vec_dot_q4_0_q8_0(std::size_t n, const BlockQ4_0* w, const BlockQ8_0* a) {
  kernels::detail::require_whole_blocks("kernels::reference::vec_dot_q4_0_q8_0()", n, qk4_0);
  float sum = 0.0f;
  for (std::size_t b = 0; b < n / qk4_0; ++b) {
    std::int32_t dot = 0;
    for (std::size_t j = 0; j < qk4_0 / 2; ++j) {
      dot += (static_cast<std::int32_t>(w[b].qs[j] & 0x0Fu) - 8) * std::int32_t{a[b].qs[j]};
      dot += (static_cast<std::int32_t>(w[b].qs[j] >> 4) - 8) * std::int32_t{a[b].qs[j + qk4_0 / 2]};
    }
    sum += (fp16_to_float(w[b].d) * fp16_to_float(a[b].d)) * static_cast<float>(dot);
  }
  return sum;
}

/// Q4_K weights times Q8_K activations, per super-block:
///   (d * a.d) * float(sum_s sc_s * sum_{l in s} q_l a_l) - (dmin * a.d) * float(sum_s m_s * bsum_s)
/// with bsum_s = a.bsums[2s] + a.bsums[2s + 1], the activation sums ggml keeps in the block (so
/// the mins cost one multiply per sub-block); the blocks' bsums must be their quants' sums, as
/// quantize_row_q8_k makes them. n a multiple of 256 (else std::invalid_argument).
inline float vec_dot_q4_k_q8_k(std::size_t n, const BlockQ4_K* w, const BlockQ8_K* a) {
  kernels::detail::require_whole_blocks("kernels::reference::vec_dot_q4_k_q8_k()", n, qk_k);
  float sum = 0.0f;
  for (std::size_t b = 0; b < n / qk_k; ++b) {
    std::int32_t scaled = 0, mins = 0;
    for (std::size_t s = 0; s < 8; ++s) {
      const ScaleMin sm = q4_k_scale_min(w[b].scales, s);
      const std::uint8_t* q = w[b].qs + 32 * (s / 2);
      const unsigned shift = (s % 2) * 4;
      std::int32_t dot = 0;
      for (std::size_t l = 0; l < 32; ++l)
        dot += static_cast<std::int32_t>((q[l] >> shift) & 0x0Fu) * std::int32_t{a[b].qs[32 * s + l]};
      scaled += std::int32_t{sm.scale} * dot;
      mins += std::int32_t{sm.min} * (std::int32_t{a[b].bsums[2 * s]} + std::int32_t{a[b].bsums[2 * s + 1]});
    }
    sum += (fp16_to_float(w[b].d) * a[b].d) * static_cast<float>(scaled) -
           (fp16_to_float(w[b].dmin) * a[b].d) * static_cast<float>(mins);
  }
  return sum;
}

}  // namespace moe::kernels::reference

#endif  // MOE_KERNELS_REFERENCE_QUANT_BLOCKS_HPP

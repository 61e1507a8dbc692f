// Scalar twin of kernels::quant_gemm: the definition its tests compare against, bit for bit.
#ifndef MOE_KERNELS_REFERENCE_QUANT_GEMM_HPP
#define MOE_KERNELS_REFERENCE_QUANT_GEMM_HPP

#include <cstddef>
#include <type_traits>
#include <vector>

#include "moe/core/types.hpp"
#include "moe/kernels/quant_blocks.hpp"
#include "moe/kernels/reference/quant_blocks.hpp"

namespace moe::kernels::reference {

/// C [m, n] = A [m, k] B^T with B [n, k] given as GGUF-layout blocks (row j is blocks
/// [j nb, (j + 1) nb), nb = k / QK rounded up, elements past k zeros): each row of A padded
/// with zeros to nb blocks and quantized to the weight format's partner
/// (quantize_row_q8_0 for Q8_0 and Q4_0 weights, quantize_row_q8_k for Q4_K), then
/// C(i, j) = vec_dot_<format>(k, row j of B, quantized row i of A).
template <class Block>
void quant_gemm(MatrixRef<float> c, const ConstMatrixRef<float>& a, const Block* b) {
  const auto k = static_cast<std::size_t>(a.cols());
  const std::size_t nb = (k + block_elements<Block> - 1) / block_elements<Block>;
  const std::size_t padded = nb * block_elements<Block>;
  std::vector<float> row(padded, 0.0f);
  for (Index i = 0; i < a.rows(); ++i) {
    for (std::size_t p = 0; p < k; ++p) row[p] = a(i, static_cast<Index>(p));
    if constexpr (std::is_same_v<Block, BlockQ4_K>) {
      std::vector<BlockQ8_K> act(nb);
      quantize_row_q8_k(row.data(), act.data(), padded);
      for (Index j = 0; j < c.cols(); ++j)
        c(i, j) = vec_dot_q4_k_q8_k(padded, b + static_cast<std::size_t>(j) * nb, act.data());
    } else {
      std::vector<BlockQ8_0> act(nb);
      quantize_row_q8_0(row.data(), act.data(), padded);
      for (Index j = 0; j < c.cols(); ++j) {
        if constexpr (std::is_same_v<Block, BlockQ8_0>) {
          c(i, j) = vec_dot_q8_0_q8_0(padded, b + static_cast<std::size_t>(j) * nb, act.data());
        } else {
          c(i, j) = vec_dot_q4_0_q8_0(padded, b + static_cast<std::size_t>(j) * nb, act.data());
        }
      }
    }
  }
}

}  // namespace moe::kernels::reference

#endif  // MOE_KERNELS_REFERENCE_QUANT_GEMM_HPP

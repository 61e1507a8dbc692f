// Transposition of a gemm operand: shared by kernels::gemm and its scalar twin.
#ifndef MOE_KERNELS_OP_HPP
#define MOE_KERNELS_OP_HPP

#include <cstdint>

namespace moe {

/// Transposition of a gemm operand.
enum class Op : std::uint8_t { none, transpose };

}  // namespace moe

#endif  // MOE_KERNELS_OP_HPP

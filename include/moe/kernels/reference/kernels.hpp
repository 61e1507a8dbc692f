// Every scalar reference twin: the definitions the SIMD kernels are tested against.
#ifndef MOE_KERNELS_REFERENCE_KERNELS_HPP
#define MOE_KERNELS_REFERENCE_KERNELS_HPP

#include "moe/kernels/reference/activations.hpp"
#include "moe/kernels/reference/gather_rows.hpp"
#include "moe/kernels/reference/gemm.hpp"
#include "moe/kernels/reference/packed_gemm.hpp"
#include "moe/kernels/reference/quant_blocks.hpp"
#include "moe/kernels/reference/quant_gemm.hpp"
#include "moe/kernels/reference/softmax.hpp"
#include "moe/kernels/reference/top_k.hpp"
#include "moe/kernels/reference/weighted_gather.hpp"
#include "moe/kernels/reference/weighted_scatter_add.hpp"

#endif  // MOE_KERNELS_REFERENCE_KERNELS_HPP

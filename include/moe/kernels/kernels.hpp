// Every model-free kernel: gather, scatter-add, weighted gather, softmax, activations, top-k, gemm,
// and the weight element types gemm takes.
#ifndef MOE_KERNELS_KERNELS_HPP
#define MOE_KERNELS_KERNELS_HPP

#include "moe/kernels/activations.hpp"
#include "moe/kernels/arch.hpp"
#include "moe/kernels/gather_rows.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/kernels/packed_gemm.hpp"
#include "moe/kernels/quant_blocks.hpp"
#include "moe/kernels/quant_gemm.hpp"
#include "moe/kernels/simd_math.hpp"
#include "moe/kernels/softmax.hpp"
#include "moe/kernels/top_k.hpp"
#include "moe/kernels/weighted_gather.hpp"
#include "moe/kernels/weighted_scatter_add.hpp"
#include "moe/kernels/weight_types.hpp"

#endif  // MOE_KERNELS_KERNELS_HPP

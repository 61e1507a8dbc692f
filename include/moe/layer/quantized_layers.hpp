// Layers of the named families with block-quantized experts, and quantize_layer(), which turns
// a float layer (from any loader, or trained) into one.
#ifndef MOE_LAYER_QUANTIZED_LAYERS_HPP
#define MOE_LAYER_QUANTIZED_LAYERS_HPP

#include <moe/combine/shared_expert_combiner.hpp>
#include <moe/combine/weighted_sum_combiner.hpp>
#include <moe/expert/quantized_experts.hpp>
#include <moe/layer/moe_layer.hpp>

#include <utility>

namespace moe {

/// Mixtral (and OLMoE: norm_topk_prob off in the router) with quantized SwiGLU experts.
template <kernels::QuantBlock Block>
using QuantizedMixtralMoE = MoELayer<QuantizedSwiGLUExperts<Block>, SoftmaxTopKRouter<float>, WeightedSumCombiner<float>>;
template <kernels::QuantBlock Block>
using QuantizedOlmoeMoE = QuantizedMixtralMoE<Block>;
/// Qwen2-MoE: the routed and the shared expert quantized; the shared expert's gate float.
template <kernels::QuantBlock Block>
using QuantizedQwen2MoE = MoELayer<QuantizedSwiGLUExperts<Block>, SoftmaxTopKRouter<float>,
                                   SharedExpertCombiner<QuantizedSwiGLUExperts<Block>, SharedGate::sigmoid>>;
/// DeepSeek-V3: routed and shared experts quantized.
template <kernels::QuantBlock Block>
using QuantizedDeepSeekV3MoE = MoELayer<QuantizedSwiGLUExperts<Block>, GroupLimitedRouter<float>,
                                        SharedExpertCombiner<QuantizedSwiGLUExperts<Block>, SharedGate::none>>;
/// GPT-OSS: quantized clamped-GLU experts, float biases.
template <kernels::QuantBlock Block>
using QuantizedGptOssMoE = MoELayer<QuantizedGptOssExperts<Block>, TopKSoftmaxRouter<float>, WeightedSumCombiner<float>>;
/// Switch Transformers: quantized ReLU FFN experts.
template <kernels::QuantBlock Block>
using QuantizedSwitchMoE = MoELayer<QuantizedFFNExperts<Block, Activation::relu>, SoftmaxTopKRouter<float>,
                                    WeightedSumCombiner<float>>;

/// The quantized bank of a float bank (ggml's reference quantizers, row by row).
template <kernels::QuantBlock Block>
QuantizedSwiGLUExperts<Block> quantize_experts(const SwiGLUExperts<float>& bank) {
  return QuantizedSwiGLUExperts<Block>::quantize(bank);
}
template <kernels::QuantBlock Block>
QuantizedGptOssExperts<Block> quantize_experts(const GptOssExperts<float>& bank) {
  return QuantizedGptOssExperts<Block>::quantize(bank);
}
template <kernels::QuantBlock Block, Activation Act>
QuantizedFFNExperts<Block, Act> quantize_experts(const FFNExperts<float, Act>& bank) {
  return QuantizedFFNExperts<Block, Act>::quantize(bank);
}

/// A float bank quantize_experts<Block> takes (SwiGLU, GPT-OSS and FFN experts).
template <class Bank, class Block>
concept QuantizableBank = kernels::QuantBlock<Block> && requires(const Bank& b) { quantize_experts<Block>(b); };

namespace detail {

/// Whether quantize_layer can take a combiner: one without experts, or shared experts it can quantize.
template <class Block, class Combiner>
inline constexpr bool combiner_quantizable = true;
template <class Block, class Shared, SharedGate Gate>
inline constexpr bool combiner_quantizable<Block, SharedExpertCombiner<Shared, Gate>> = QuantizableBank<Shared, Block>;

template <kernels::QuantBlock Block, class Combiner>
struct QuantizedCombiner {
  using type = Combiner;  // no experts inside: kept as is
  static Combiner convert(const Combiner& c) { return c; }
};
template <kernels::QuantBlock Block, class Shared, SharedGate Gate>
struct QuantizedCombiner<Block, SharedExpertCombiner<Shared, Gate>> {
  using shared_type = decltype(quantize_experts<Block>(std::declval<const Shared&>()));
  using type = SharedExpertCombiner<shared_type, Gate>;
  static type convert(const SharedExpertCombiner<Shared, Gate>& c) {
    type out(quantize_experts<Block>(c.shared_expert()));
    out.gate_weight() = c.gate_weight();
    return out;
  }
};

}  // namespace detail

/// A float layer with its experts (routed, and shared ones in the combiner) quantized to
/// Block; the router, combiner weights, capacity and executor copied. Every loader's layer
/// goes through this (the "quantize at load" path; docs/quantization.md#quantized-expert-banks).
/// Rows that are not whole blocks are padded with zeros (kernels::QuantMatrix).
template <kernels::QuantBlock Block, class E, class R, class C, class Arch, class X>
  requires QuantizableBank<E, Block> && detail::combiner_quantizable<Block, C>
auto quantize_layer(const MoELayer<E, R, C, Arch, X>& layer) {
  using QE = decltype(quantize_experts<Block>(layer.experts()));
  using QC = typename detail::QuantizedCombiner<Block, C>::type;
  return MoELayer<QE, R, QC, Arch, X>(quantize_experts<Block>(layer.experts()), layer.router(),
                                      detail::QuantizedCombiner<Block, C>::convert(layer.combiner()), layer.capacity(),
                                      layer.executor());
}

}  // namespace moe

#endif  // MOE_LAYER_QUANTIZED_LAYERS_HPP

// Build layers from one MoE layer of a Hugging Face checkpoint, under its own tensor names.
#ifndef MOE_IO_HF_LOADER_HPP
#define MOE_IO_HF_LOADER_HPP

#include <moe/core/error.hpp>
#include <moe/io/checkpoint.hpp>
#include <moe/io/error.hpp>
#include <moe/io/layer_tensors.hpp>
#include <moe/io/safetensors.hpp>
#include <moe/layer/moe_layer.hpp>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moe::io {

/// Router settings a checkpoint does not store (they live in the model's config.json).
/// Sizes (E, d_model, d_ff) are read from the tensors' shapes.
struct MixtralConfig {
  Index top_k = 2;  ///< num_experts_per_tok
};
struct Qwen2MoeConfig {
  Index top_k = 4;
  bool norm_topk_prob = false;
};
struct OlmoeConfig {
  Index top_k = 8;
  bool norm_topk_prob = false;
};
struct DeepSeekV3Config {
  Index top_k = 8;
  Index n_group = 8;
  Index topk_group = 4;
  double routed_scaling_factor = 2.5;
  bool norm_topk_prob = true;
};
struct GptOssConfig {
  Index top_k = 4;
  double alpha = 1.702;
  double limit = 7.0;
};

namespace detail {

/// Reads E SwiGLU experts named {prefix}{experts_prefix}{e}.{gate}|{up}|{down} into a bank;
/// d_ff and d_model come from expert `first`'s gate. With first > 0 the bank's expert e is
/// the checkpoint's expert first + e (an expert range, docs/expert_parallel.md#loading).
template <class S>
SwiGLUExperts<S> read_swiglu_bank(const LayerTensors& t, std::string_view experts_prefix, Index num_experts,
                                  std::string_view gate, std::string_view up, std::string_view down, Index first = 0) {
  const std::string pattern = std::string(experts_prefix) + "{e}.";
  const auto gshape = t.shape(expert_name(pattern, first) + std::string(gate), 2);
  const Index ff = gshape[0];
  const Index d = gshape[1];
  SwiGLUExperts<S> bank = read_experts<S>(
      t, num_experts,
      {{pattern + std::string(gate), {ff, d}}, {pattern + std::string(up), {ff, d}}, {pattern + std::string(down), {d, ff}}},
      [&] { return SwiGLUExperts<S>(num_experts, d, ff); },
      [](SwiGLUExperts<S>& b, Index e, std::size_t i) {
        return i == 0 ? b.gate_proj(e) : i == 1 ? b.up_proj(e) : b.down_proj(e);
      },
      first);
  bank.names() = {pattern + std::string(gate), pattern + std::string(up), pattern + std::string(down)};
  return bank;
}

/// The router projection [E, d]; E and d come from its shape.
template <class S>
RowMatrix<S> read_router_weight(const LayerTensors& t, std::string_view suffix) {
  const auto shape = t.shape(suffix, 2);
  RowMatrix<S> w(shape[0], shape[1]);
  t.template read_into<S>(suffix, shape, w);
  return w;
}

/// One SwiGLU expert named {prefix}gate_proj|up_proj|down_proj.weight (the shared expert).
template <class S>
SwiGLUExperts<S> read_shared_expert(const LayerTensors& t, std::string_view prefix, Index d_model) {
  const std::string p(prefix);
  const Index ff = t.shape(p + "gate_proj.weight", 2)[0];
  SwiGLUExperts<S> bank = read_experts<S>(
      t, 1,
      {{p + "gate_proj.weight", {ff, d_model}}, {p + "up_proj.weight", {ff, d_model}},
       {p + "down_proj.weight", {d_model, ff}}},
      [&] { return SwiGLUExperts<S>(1, d_model, ff); },
      [](SwiGLUExperts<S>& b, Index e, std::size_t i) {
        return i == 0 ? b.gate_proj(e) : i == 1 ? b.up_proj(e) : b.down_proj(e);
      });
  bank.names() = {p + "gate_proj.weight", p + "up_proj.weight", p + "down_proj.weight"};
  return bank;
}

}  // namespace detail

// Expert ranges --------------------------------------------------------------------------

/// Experts [first, first + count) of a layer; count -1: every expert from first on. What one
/// rank of an expert-parallel layer loads (docs/expert_parallel.md#loading).
struct ExpertRange {
  Index first = 0;
  Index count = -1;
};

/// A layer's policies, loaded apart: the experts of one range (the bank's expert i is the
/// checkpoint's expert first + i), the whole router and combiner (replicated). An
/// expert-parallel rank builds its layer from them (moe::parallel::ExpertSlice); with the
/// default range the three build the ordinary layer.
template <class Layer>
struct LayerParts {
  typename Layer::expert_type experts;
  typename Layer::router_type router;
  typename Layer::combiner_type combiner;
  Index num_experts = 0;  ///< the layer's E (the router's)
  Index first = 0;        ///< the first expert in `experts`
};

namespace detail {
/// The range's [first, first + count) checked against E; throws std::invalid_argument naming the loader.
inline std::pair<Index, Index> resolve_range(const ExpertRange& range, Index num_experts, const std::string& loader) {
  const Index count = range.count < 0 ? num_experts - range.first : range.count;
  ::moe::detail::require(range.first >= 0 && count >= 1 && range.first + count <= num_experts, loader + "()",
                         "expert range [first, first + count)",
                         ::moe::detail::concat("a non-empty range inside [0, ", num_experts, ")"),
                         ::moe::detail::concat("[", range.first, ", ", range.first + count, ")"));
  return {range.first, count};
}
}  // namespace detail

// The four SwiGLU families, each loaded by one function: whole (load_X, the layer) or an
// expert range (load_X_parts, the policies apart, for an expert-parallel rank). `range` null
// means every expert, unchecked: a whole load refuses a bad file exactly as before ranges.
namespace detail {

/// {first, count} of the range, or of all E experts without one.
inline std::pair<Index, Index> experts_to_read(const ExpertRange* range, Index num_experts, const std::string& loader) {
  return range != nullptr ? resolve_range(*range, num_experts, loader) : std::pair<Index, Index>{0, num_experts};
}

template <class S>
LayerParts<MixtralMoE<S>> mixtral_parts(const Checkpoint& file, std::string_view prefix, const MixtralConfig& config,
                                        const ExpertRange* range, const std::string& loader) {
  LayerTensors t(file, prefix, loader);
  RowMatrix<S> gate = read_router_weight<S>(t, "gate.weight");
  const Index E = gate.rows();
  const auto [first, count] = experts_to_read(range, E, loader);
  auto experts = read_swiglu_bank<S>(t, "experts.", count, "w1.weight", "w3.weight", "w2.weight", first);
  auto router = with_loader_name(loader, [&] {
    return SoftmaxTopKRouter<S>(std::move(gate), config.top_k, SoftmaxTopK<S>{true});
  });
  return {std::move(experts), std::move(router), WeightedSumCombiner<S>{}, E, first};
}

template <class S>
LayerParts<OlmoeMoE<S>> olmoe_parts(const Checkpoint& file, std::string_view prefix, const OlmoeConfig& config,
                                    const ExpertRange* range, const std::string& loader) {
  LayerTensors t(file, prefix, loader);
  RowMatrix<S> gate = read_router_weight<S>(t, "gate.weight");
  const Index E = gate.rows();
  const auto [first, count] = experts_to_read(range, E, loader);
  auto experts = read_swiglu_bank<S>(t, "experts.", count, "gate_proj.weight", "up_proj.weight", "down_proj.weight", first);
  auto router = with_loader_name(loader, [&] {
    return SoftmaxTopKRouter<S>(std::move(gate), config.top_k, SoftmaxTopK<S>{config.norm_topk_prob});
  });
  return {std::move(experts), std::move(router), WeightedSumCombiner<S>{}, E, first};
}

template <class S>
LayerParts<Qwen2MoE<S>> qwen2_moe_parts(const Checkpoint& file, std::string_view prefix, const Qwen2MoeConfig& config,
                                        const ExpertRange* range, const std::string& loader) {
  LayerTensors t(file, prefix, loader);
  RowMatrix<S> gate = read_router_weight<S>(t, "gate.weight");
  const Index E = gate.rows();
  const Index d = gate.cols();
  const auto [first, count] = experts_to_read(range, E, loader);
  auto experts = read_swiglu_bank<S>(t, "experts.", count, "gate_proj.weight", "up_proj.weight", "down_proj.weight", first);
  SharedExpertCombiner<SwiGLUExperts<S>, SharedGate::sigmoid> combiner(read_shared_expert<S>(t, "shared_expert.", d));
  t.template read_into<S>("shared_expert_gate.weight", {1, d}, combiner.gate_weight().transpose());
  auto router = with_loader_name(loader, [&] {
    return SoftmaxTopKRouter<S>(std::move(gate), config.top_k, SoftmaxTopK<S>{config.norm_topk_prob});
  });
  return {std::move(experts), std::move(router), std::move(combiner), E, first};
}

template <class S>
LayerParts<DeepSeekV3MoE<S>> deepseek_v3_parts(const Checkpoint& file, std::string_view prefix,
                                               const DeepSeekV3Config& config, const ExpertRange* range,
                                               const std::string& loader) {
  LayerTensors t(file, prefix, loader);
  RowMatrix<S> gate = read_router_weight<S>(t, "gate.weight");
  const Index E = gate.rows();
  const Index d = gate.cols();
  const auto [first, count] = experts_to_read(range, E, loader);
  SigmoidGroupLimited<S> gating;
  gating.n_group = config.n_group;
  gating.topk_group = config.topk_group;
  gating.routed_scaling_factor = static_cast<S>(config.routed_scaling_factor);
  gating.renormalize = config.norm_topk_prob;
  gating.correction_bias.resize(E);
  t.template read_into<S>("gate.e_score_correction_bias", {E}, gating.correction_bias);
  auto experts = read_swiglu_bank<S>(t, "experts.", count, "gate_proj.weight", "up_proj.weight", "down_proj.weight", first);
  SharedExpertCombiner<SwiGLUExperts<S>, SharedGate::none> combiner(read_shared_expert<S>(t, "shared_experts.", d));
  auto router = with_loader_name(loader, [&] {
    return GroupLimitedRouter<S>(std::move(gate), config.top_k, std::move(gating));
  });
  return {std::move(experts), std::move(router), std::move(combiner), E, first};
}

/// The layer from parts holding every expert.
template <class Layer>
Layer assemble(LayerParts<Layer>&& p, const std::string& loader) {
  return with_loader_name(loader, [&] {
    return Layer(std::move(p.experts), std::move(p.router), std::move(p.combiner));
  });
}

}  // namespace detail

/// Mixtral: {prefix}gate.weight [E, d]; {prefix}experts.{e}.w1|w3.weight [ff, d], w2.weight [d, ff].
/// prefix is e.g. "model.layers.3.block_sparse_moe.".
template <class S>
MixtralMoE<S> load_mixtral(const Checkpoint& file, std::string_view prefix, const MixtralConfig& config = {}) {
  return detail::assemble(detail::mixtral_parts<S>(file, prefix, config, nullptr, "moe::io::load_mixtral"),
                          "moe::io::load_mixtral");
}

/// OLMoE: {prefix}gate.weight, {prefix}experts.{e}.gate_proj|up_proj|down_proj.weight.
template <class S>
OlmoeMoE<S> load_olmoe(const Checkpoint& file, std::string_view prefix, const OlmoeConfig& config = {}) {
  return detail::assemble(detail::olmoe_parts<S>(file, prefix, config, nullptr, "moe::io::load_olmoe"),
                          "moe::io::load_olmoe");
}

/// Qwen2-MoE: as OLMoE, plus {prefix}shared_expert.{gate,up,down}_proj.weight and
/// {prefix}shared_expert_gate.weight [1, d].
template <class S>
Qwen2MoE<S> load_qwen2_moe(const Checkpoint& file, std::string_view prefix, const Qwen2MoeConfig& config = {}) {
  return detail::assemble(detail::qwen2_moe_parts<S>(file, prefix, config, nullptr, "moe::io::load_qwen2_moe"),
                          "moe::io::load_qwen2_moe");
}

/// DeepSeek-V3: {prefix}gate.weight [E, d], {prefix}gate.e_score_correction_bias [E],
/// {prefix}experts.{e}.*_proj.weight, {prefix}shared_experts.*_proj.weight (ungated).
template <class S>
DeepSeekV3MoE<S> load_deepseek_v3(const Checkpoint& file, std::string_view prefix,
                                  const DeepSeekV3Config& config = {}) {
  return detail::assemble(detail::deepseek_v3_parts<S>(file, prefix, config, nullptr, "moe::io::load_deepseek_v3"),
                          "moe::io::load_deepseek_v3");
}

namespace detail {
template <class S>
LayerParts<GptOssMoE<S>> gpt_oss_parts(const Checkpoint& file, std::string_view prefix, const GptOssConfig& config,
                                       const ExpertRange* range, const std::string& loader) {
  LayerTensors t(file, prefix, loader);
  RowMatrix<S> weight = read_router_weight<S>(t, "router.weight");
  const Index E = weight.rows();
  const Index d = weight.cols();
  Vector<S> bias(E);
  t.template read_into<S>("router.bias", {E}, bias);
  const auto gu = t.shape("experts.gate_up_proj", 3);
  if (gu[2] % 2 != 0)
    throw TensorMismatchError(file.file_name(t.name("experts.gate_up_proj")), t.name("experts.gate_up_proj"),
                              loader + "(): expected an even last dimension (2 * d_ff), got " + std::to_string(gu[2]));
  const Index ff = gu[2] / 2;
  // Shapes before the allocation, which they bound.
  t.check("experts.gate_up_proj", {E, d, 2 * ff});
  t.check("experts.gate_up_proj_bias", {E, 2 * ff});
  t.check("experts.down_proj", {E, ff, d});
  t.check("experts.down_proj_bias", {E, d});
  const auto [first, count] = experts_to_read(range, E, loader);
  // clang 14 does not let a lambda capture a structured binding (allowed since C++20): a copy.
  GptOssExperts<S> experts = with_loader_name(loader, [&, n = count] {
    return GptOssExperts<S>(n, d, ff, static_cast<S>(config.alpha), static_cast<S>(config.limit));
  });
  // The fused [E, ...] tensors: only the range's entries are converted.
  t.template read_leading_into<S>("experts.gate_up_proj", {E, d, 2 * ff}, first, count, experts.gate_up());
  t.template read_leading_into<S>("experts.gate_up_proj_bias", {E, 2 * ff}, first, count, experts.gate_up_bias());
  t.template read_leading_into<S>("experts.down_proj", {E, ff, d}, first, count, experts.down());
  t.template read_leading_into<S>("experts.down_proj_bias", {E, d}, first, count, experts.down_bias());
  auto router = with_loader_name(loader, [&] {
    TopKSoftmaxRouter<S> r(std::move(weight), config.top_k, {}, std::move(bias));
    r.names() = {"router.weight", "router.bias"};
    return r;
  });
  return {std::move(experts), std::move(router), WeightedSumCombiner<S>{}, E, first};
}
}  // namespace detail

/// GPT-OSS: {prefix}router.weight [E, d], router.bias [E]; experts.gate_up_proj [E, d, 2ff]
/// (gate and up interleaved), gate_up_proj_bias [E, 2ff], down_proj [E, ff, d], down_proj_bias [E, d].
template <class S>
GptOssMoE<S> load_gpt_oss(const Checkpoint& file, std::string_view prefix, const GptOssConfig& config = {}) {
  return detail::assemble(detail::gpt_oss_parts<S>(file, prefix, config, nullptr, "moe::io::load_gpt_oss"),
                          "moe::io::load_gpt_oss");
}

/// load_mixtral's policies with the experts of `range` only: no other expert's tensors are
/// read (a checkpoint may lack them).
template <class S>
LayerParts<MixtralMoE<S>> load_mixtral_parts(const Checkpoint& file, std::string_view prefix,
                                             const MixtralConfig& config = {}, const ExpertRange& range = {}) {
  return detail::mixtral_parts<S>(file, prefix, config, &range, "moe::io::load_mixtral_parts");
}

/// load_olmoe's policies with the experts of `range` only.
template <class S>
LayerParts<OlmoeMoE<S>> load_olmoe_parts(const Checkpoint& file, std::string_view prefix,
                                         const OlmoeConfig& config = {}, const ExpertRange& range = {}) {
  return detail::olmoe_parts<S>(file, prefix, config, &range, "moe::io::load_olmoe_parts");
}

/// load_qwen2_moe's policies with the experts of `range` only (the shared expert is replicated).
template <class S>
LayerParts<Qwen2MoE<S>> load_qwen2_moe_parts(const Checkpoint& file, std::string_view prefix,
                                             const Qwen2MoeConfig& config = {}, const ExpertRange& range = {}) {
  return detail::qwen2_moe_parts<S>(file, prefix, config, &range, "moe::io::load_qwen2_moe_parts");
}

/// load_deepseek_v3's policies with the experts of `range` only (shared experts replicated).
template <class S>
LayerParts<DeepSeekV3MoE<S>> load_deepseek_v3_parts(const Checkpoint& file, std::string_view prefix,
                                                    const DeepSeekV3Config& config = {}, const ExpertRange& range = {}) {
  return detail::deepseek_v3_parts<S>(file, prefix, config, &range, "moe::io::load_deepseek_v3_parts");
}

/// load_gpt_oss's policies with the experts of `range` only. GPT-OSS stores each projection of
/// all experts in one fused [E, ...] tensor: the range's entries along its leading dimension
/// are converted, the rest of the tensor is not.
template <class S>
LayerParts<GptOssMoE<S>> load_gpt_oss_parts(const Checkpoint& file, std::string_view prefix,
                                            const GptOssConfig& config = {}, const ExpertRange& range = {}) {
  return detail::gpt_oss_parts<S>(file, prefix, config, &range, "moe::io::load_gpt_oss_parts");
}

}  // namespace moe::io

#endif  // MOE_IO_HF_LOADER_HPP

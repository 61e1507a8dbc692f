// Build layers from one MoE layer of a Hugging Face checkpoint, under its own tensor names.
#ifndef MOE_IO_HF_LOADER_HPP
#define MOE_IO_HF_LOADER_HPP

#include <moe/core/error.hpp>
#include <moe/io/error.hpp>
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

inline std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

/// Reads tensors under one layer prefix, with errors that name the loader, the tensor, what
/// was expected and what the file holds.
class LayerTensors {
 public:
  LayerTensors(const SafetensorsFile& file, std::string_view prefix, std::string_view loader)
      : file_(file), prefix_(prefix), loader_(loader) {}

  [[nodiscard]] std::string name(std::string_view suffix) const { return prefix_ + std::string(suffix); }

  [[nodiscard]] const TensorInfo& info(std::string_view suffix) const {
    const std::string n = name(suffix);
    if (!file_.contains(n))
      throw MissingTensorError(file_.display_name(), n,
                               loader_ + "(): expected this tensor (prefix '" + prefix_ + "'), but the file has no such name");
    const TensorInfo& t = file_.info(n);
    if (t.dtype != DType::F32 && t.dtype != DType::F64 && t.dtype != DType::F16 && t.dtype != DType::BF16)
      throw TensorMismatchError(file_.display_name(), n,
                                loader_ + "(): expected a floating dtype (F32, F64, F16, BF16), got " +
                                    std::string(dtype_name(t.dtype)));
    return t;
  }

  /// The shape of a tensor that must have the given rank.
  [[nodiscard]] std::vector<std::int64_t> shape(std::string_view suffix, std::size_t rank) const {
    const TensorInfo& t = info(suffix);
    if (t.shape.size() != rank)
      throw TensorMismatchError(file_.display_name(), name(suffix),
                                loader_ + "(): expected a " + std::to_string(rank) + "-D tensor, got shape " +
                                    shape_string(t.shape));
    return t.shape;
  }

  /// Checks that the tensor exists with a floating dtype and the expected shape.
  void check(std::string_view suffix, const std::vector<std::int64_t>& expected) const {
    const TensorInfo& t = info(suffix);
    if (t.shape != expected)
      throw TensorMismatchError(file_.display_name(), name(suffix),
                                loader_ + "(): expected shape " + shape_string(expected) + ", got " +
                                    shape_string(t.shape));
  }

  template <class S>
  [[nodiscard]] std::vector<S> read(std::string_view suffix, const std::vector<std::int64_t>& expected) const {
    check(suffix, expected);
    return file_.read<S>(name(suffix));
  }

  /// Copies a tensor of the expected shape into dst (any Eigen block with as many elements,
  /// filled row-major).
  template <class S, class Dst>
  void read_into(std::string_view suffix, const std::vector<std::int64_t>& expected, Dst&& dst) const {
    const std::vector<S> v = read<S>(suffix, expected);
    Index i = 0;
    for (Index r = 0; r < dst.rows(); ++r)
      for (Index c = 0; c < dst.cols(); ++c) dst(r, c) = v[static_cast<std::size_t>(i++)];
  }

  [[nodiscard]] const std::string& loader() const noexcept { return loader_; }
  [[nodiscard]] const SafetensorsFile& file() const noexcept { return file_; }

 private:
  const SafetensorsFile& file_;
  std::string prefix_;
  std::string loader_;
};

/// Router settings are checked by the router's own constructor; its invalid_argument is
/// rethrown naming the loader.
template <class F>
auto with_loader_name(const std::string& loader, F&& build) {
  try {
    return build();
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(loader + "(): " + e.what());
  }
}

/// Reads E SwiGLU experts named {prefix}{e}.{gate}|{up}|{down} into a bank.
template <class S>
SwiGLUExperts<S> read_swiglu_bank(const LayerTensors& t, std::string_view experts_prefix, Index num_experts,
                                  std::string_view gate, std::string_view up, std::string_view down) {
  const auto first = std::string(experts_prefix) + "0." + std::string(gate);
  const auto gshape = t.shape(first, 2);
  const Index ff = gshape[0];
  const Index d = gshape[1];
  // Every tensor's name, dtype and shape first: a small malformed file must not make the
  // loader allocate the whole bank (E * 3 * ff * d) before it fails.
  for (Index e = 0; e < num_experts; ++e) {
    const std::string p = std::string(experts_prefix) + std::to_string(e) + ".";
    t.check(p + std::string(gate), {ff, d});
    t.check(p + std::string(up), {ff, d});
    t.check(p + std::string(down), {d, ff});
  }
  SwiGLUExperts<S> bank = with_loader_name(t.loader(), [&] { return SwiGLUExperts<S>(num_experts, d, ff); });
  const std::string pattern = std::string(experts_prefix) + "{e}.";
  bank.names() = {pattern + std::string(gate), pattern + std::string(up), pattern + std::string(down)};
  for (Index e = 0; e < num_experts; ++e) {
    const std::string p = std::string(experts_prefix) + std::to_string(e) + ".";
    t.template read_into<S>(p + std::string(gate), {ff, d}, bank.gate_proj(e));
    t.template read_into<S>(p + std::string(up), {ff, d}, bank.up_proj(e));
    t.template read_into<S>(p + std::string(down), {d, ff}, bank.down_proj(e));
  }
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

template <class S>
SwiGLUExperts<S> read_shared_expert(const LayerTensors& t, std::string_view prefix, Index d_model) {
  const auto gshape = t.shape(std::string(prefix) + "gate_proj.weight", 2);
  const Index ff = gshape[0];
  SwiGLUExperts<S> bank = with_loader_name(t.loader(), [&] { return SwiGLUExperts<S>(1, d_model, ff); });
  const std::string p(prefix);
  bank.names() = {p + "gate_proj.weight", p + "up_proj.weight", p + "down_proj.weight"};
  t.template read_into<S>(std::string(prefix) + "gate_proj.weight", {ff, d_model}, bank.gate_proj(0));
  t.template read_into<S>(std::string(prefix) + "up_proj.weight", {ff, d_model}, bank.up_proj(0));
  t.template read_into<S>(std::string(prefix) + "down_proj.weight", {d_model, ff}, bank.down_proj(0));
  return bank;
}

}  // namespace detail

/// Mixtral: {prefix}gate.weight [E, d]; {prefix}experts.{e}.w1|w3.weight [ff, d], w2.weight [d, ff].
/// prefix is e.g. "model.layers.3.block_sparse_moe.".
template <class S>
MixtralMoE<S> load_mixtral(const SafetensorsFile& file, std::string_view prefix, const MixtralConfig& config = {}) {
  const std::string loader = "moe::io::load_mixtral";
  detail::LayerTensors t(file, prefix, loader);
  RowMatrix<S> gate = detail::read_router_weight<S>(t, "gate.weight");
  const Index E = gate.rows();
  auto experts = detail::read_swiglu_bank<S>(t, "experts.", E, "w1.weight", "w3.weight", "w2.weight");
  return detail::with_loader_name(loader, [&] {
    return MixtralMoE<S>(std::move(experts), SoftmaxTopKRouter<S>(std::move(gate), config.top_k, SoftmaxTopK<S>{true}));
  });
}

/// OLMoE: {prefix}gate.weight, {prefix}experts.{e}.gate_proj|up_proj|down_proj.weight.
template <class S>
OlmoeMoE<S> load_olmoe(const SafetensorsFile& file, std::string_view prefix, const OlmoeConfig& config = {}) {
  const std::string loader = "moe::io::load_olmoe";
  detail::LayerTensors t(file, prefix, loader);
  RowMatrix<S> gate = detail::read_router_weight<S>(t, "gate.weight");
  const Index E = gate.rows();
  auto experts = detail::read_swiglu_bank<S>(t, "experts.", E, "gate_proj.weight", "up_proj.weight", "down_proj.weight");
  return detail::with_loader_name(loader, [&] {
    return OlmoeMoE<S>(std::move(experts),
                       SoftmaxTopKRouter<S>(std::move(gate), config.top_k, SoftmaxTopK<S>{config.norm_topk_prob}));
  });
}

/// Qwen2-MoE: as OLMoE, plus {prefix}shared_expert.{gate,up,down}_proj.weight and
/// {prefix}shared_expert_gate.weight [1, d].
template <class S>
Qwen2MoE<S> load_qwen2_moe(const SafetensorsFile& file, std::string_view prefix, const Qwen2MoeConfig& config = {}) {
  const std::string loader = "moe::io::load_qwen2_moe";
  detail::LayerTensors t(file, prefix, loader);
  RowMatrix<S> gate = detail::read_router_weight<S>(t, "gate.weight");
  const Index E = gate.rows();
  const Index d = gate.cols();
  auto experts = detail::read_swiglu_bank<S>(t, "experts.", E, "gate_proj.weight", "up_proj.weight", "down_proj.weight");
  SharedExpertCombiner<SwiGLUExperts<S>, SharedGate::sigmoid> combiner(detail::read_shared_expert<S>(t, "shared_expert.", d));
  t.template read_into<S>("shared_expert_gate.weight", {1, d}, combiner.gate_weight().transpose());
  return detail::with_loader_name(loader, [&] {
    return Qwen2MoE<S>(std::move(experts),
                       SoftmaxTopKRouter<S>(std::move(gate), config.top_k, SoftmaxTopK<S>{config.norm_topk_prob}),
                       std::move(combiner));
  });
}

/// DeepSeek-V3: {prefix}gate.weight [E, d], {prefix}gate.e_score_correction_bias [E],
/// {prefix}experts.{e}.*_proj.weight, {prefix}shared_experts.*_proj.weight (ungated).
template <class S>
DeepSeekV3MoE<S> load_deepseek_v3(const SafetensorsFile& file, std::string_view prefix,
                                  const DeepSeekV3Config& config = {}) {
  const std::string loader = "moe::io::load_deepseek_v3";
  detail::LayerTensors t(file, prefix, loader);
  RowMatrix<S> gate = detail::read_router_weight<S>(t, "gate.weight");
  const Index E = gate.rows();
  const Index d = gate.cols();
  SigmoidGroupLimited<S> gating;
  gating.n_group = config.n_group;
  gating.topk_group = config.topk_group;
  gating.routed_scaling_factor = static_cast<S>(config.routed_scaling_factor);
  gating.renormalize = config.norm_topk_prob;
  gating.correction_bias.resize(E);
  t.template read_into<S>("gate.e_score_correction_bias", {E}, gating.correction_bias);
  auto experts = detail::read_swiglu_bank<S>(t, "experts.", E, "gate_proj.weight", "up_proj.weight", "down_proj.weight");
  SharedExpertCombiner<SwiGLUExperts<S>, SharedGate::none> combiner(detail::read_shared_expert<S>(t, "shared_experts.", d));
  return detail::with_loader_name(loader, [&] {
    return DeepSeekV3MoE<S>(std::move(experts), GroupLimitedRouter<S>(std::move(gate), config.top_k, std::move(gating)),
                            std::move(combiner));
  });
}

/// GPT-OSS: {prefix}router.weight [E, d], router.bias [E]; experts.gate_up_proj [E, d, 2ff]
/// (gate and up interleaved), gate_up_proj_bias [E, 2ff], down_proj [E, ff, d], down_proj_bias [E, d].
template <class S>
GptOssMoE<S> load_gpt_oss(const SafetensorsFile& file, std::string_view prefix, const GptOssConfig& config = {}) {
  const std::string loader = "moe::io::load_gpt_oss";
  detail::LayerTensors t(file, prefix, loader);
  RowMatrix<S> weight = detail::read_router_weight<S>(t, "router.weight");
  const Index E = weight.rows();
  const Index d = weight.cols();
  Vector<S> bias(E);
  t.template read_into<S>("router.bias", {E}, bias);
  const auto gu = t.shape("experts.gate_up_proj", 3);
  if (gu[2] % 2 != 0)
    throw TensorMismatchError(file.display_name(), t.name("experts.gate_up_proj"),
                              loader + "(): expected an even last dimension (2 * d_ff), got " + std::to_string(gu[2]));
  const Index ff = gu[2] / 2;
  // Shapes before the allocation, which they bound.
  t.check("experts.gate_up_proj", {E, d, 2 * ff});
  t.check("experts.gate_up_proj_bias", {E, 2 * ff});
  t.check("experts.down_proj", {E, ff, d});
  t.check("experts.down_proj_bias", {E, d});
  GptOssExperts<S> experts = detail::with_loader_name(loader, [&] {
    return GptOssExperts<S>(E, d, ff, static_cast<S>(config.alpha), static_cast<S>(config.limit));
  });
  t.template read_into<S>("experts.gate_up_proj", {E, d, 2 * ff}, experts.gate_up());
  t.template read_into<S>("experts.gate_up_proj_bias", {E, 2 * ff}, experts.gate_up_bias());
  t.template read_into<S>("experts.down_proj", {E, ff, d}, experts.down());
  t.template read_into<S>("experts.down_proj_bias", {E, d}, experts.down_bias());
  return detail::with_loader_name(loader, [&] {
    TopKSoftmaxRouter<S> router(std::move(weight), config.top_k, {}, std::move(bias));
    router.names() = {"router.weight", "router.bias"};
    return GptOssMoE<S>(std::move(experts), std::move(router));
  });
}

}  // namespace moe::io

#endif  // MOE_IO_HF_LOADER_HPP

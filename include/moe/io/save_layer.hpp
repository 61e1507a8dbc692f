// Write a layer's tensors under the names its family's loader reads, so that save then load
// gives the same layer (docs/loaders.md#saving).
//
// Names come from the family, never from the layer's names() (for_each_parameter): a
// hand-built MixtralMoE carries the OLMoE-style default names "experts.{e}.gate_proj.weight",
// which load_mixtral does not read. Settings that are not tensors (top_k, norm_topk_prob,
// capacity, GPT-OSS alpha and limit, Soft MoE slots_per_expert ...) are not written: they go
// to the loader's config struct, as they would from the model's config.json.
#ifndef MOE_IO_SAVE_LAYER_HPP
#define MOE_IO_SAVE_LAYER_HPP

#include <moe/core/error.hpp>
#include <moe/io/checkpoint.hpp>
#include <moe/io/conv_loader.hpp>
#include <moe/io/hf_loader.hpp>
#include <moe/io/low_rank_loader.hpp>
#include <moe/io/routing_loaders.hpp>
#include <moe/io/safetensors.hpp>
#include <moe/io/soft_moe_loader.hpp>
#include <moe/io/switch_loader.hpp>
#include <moe/layer/moe_layer.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

namespace moe::io {

/// The checkpoint layouts save_layer can write, one per loader.
enum class Family : std::uint8_t {
  mixtral,              ///< load_mixtral
  olmoe,                ///< load_olmoe
  qwen2_moe,            ///< load_qwen2_moe
  deepseek_v3,          ///< load_deepseek_v3
  gpt_oss,              ///< load_gpt_oss
  switch_transformers,  ///< load_switch_transformers
  noisy_top_k,          ///< load_noisy_top_k
  expert_choice,        ///< load_expert_choice
  hash,                 ///< load_hash
  soft_moe,             ///< load_soft_moe
  modality_experts,     ///< load_modality_experts
  domain_aware,         ///< load_domain_aware
  task_aware,           ///< load_task_aware
  top_p,                ///< load_top_p
  threshold_skip,       ///< load_threshold_skip
  low_rank,             ///< load_low_rank
  hierarchical,         ///< load_hierarchical
  conv_expert,          ///< load_conv_experts
};

[[nodiscard]] constexpr std::string_view family_name(Family f) noexcept {
  switch (f) {
    case Family::mixtral: return "mixtral";
    case Family::olmoe: return "olmoe";
    case Family::qwen2_moe: return "qwen2_moe";
    case Family::deepseek_v3: return "deepseek_v3";
    case Family::gpt_oss: return "gpt_oss";
    case Family::switch_transformers: return "switch_transformers";
    case Family::noisy_top_k: return "noisy_top_k";
    case Family::expert_choice: return "expert_choice";
    case Family::hash: return "hash";
    case Family::soft_moe: return "soft_moe";
    case Family::modality_experts: return "modality_experts";
    case Family::domain_aware: return "domain_aware";
    case Family::task_aware: return "task_aware";
    case Family::top_p: return "top_p";
    case Family::threshold_skip: return "threshold_skip";
    case Family::low_rank: return "low_rank";
    case Family::hierarchical: return "hierarchical";
    case Family::conv_expert: return "conv_expert";
  }
  return "?";
}

namespace detail {

/// Adds any Eigen expression as a tensor of the given shape, copied row-major.
template <class S, class Block>
void put(SafetensorsWriter& w, std::string name, std::vector<std::int64_t> shape, const Block& block) {
  std::vector<S> v;
  v.reserve(static_cast<std::size_t>(block.size()));
  for (Index r = 0; r < block.rows(); ++r)
    for (Index c = 0; c < block.cols(); ++c) v.push_back(block(r, c));
  w.add<S>(std::move(name), std::move(shape), std::span<const S>(v));
}

/// Expert e of a SwiGLU bank under {prefix}{pattern with e}{gate|up|down}.
template <class S>
void put_swiglu(SafetensorsWriter& w, const SwiGLUExperts<S>& bank, const std::string& pattern,
                std::string_view gate, std::string_view up, std::string_view down) {
  const Index ff = bank.d_ff(), d = bank.input_dim();
  for (Index e = 0; e < bank.num_experts(); ++e) {
    const std::string p = expert_name(pattern, e);
    put<S>(w, p + std::string(gate), {ff, d}, bank.gate_proj(e));
    put<S>(w, p + std::string(up), {ff, d}, bank.up_proj(e));
    put<S>(w, p + std::string(down), {d, ff}, bank.down_proj(e));
  }
}

/// A FFN bank (ReLU or GELU) under {pattern with e}wi.weight and wo.weight; the loaders read no
/// biases, so a bank with biases is refused rather than silently saved without them.
template <class S, Activation Act>
void put_ffn(SafetensorsWriter& w, const FFNExperts<S, Act>& bank, const std::string& pattern, const std::string& where) {
  moe::detail::require(!bank.has_biases(), where, "experts", "without biases (the loader reads wi and wo only)",
                       "a bank with biases");
  const Index ff = bank.d_ff(), d = bank.input_dim();
  for (Index e = 0; e < bank.num_experts(); ++e) {
    const std::string p = expert_name(pattern, e);
    put<S>(w, p + "wi.weight", {ff, d}, bank.wi(e));
    put<S>(w, p + "wo.weight", {d, ff}, bank.wo(e));
  }
}

template <class Router>
void require_no_router_bias(const Router& router, const std::string& where) {
  moe::detail::require(router.bias().size() == 0, where, "router bias", "none (the loader reads no router bias)",
                       moe::detail::concat("a bias of length ", router.bias().size()));
}

template <class S>
void put_router(SafetensorsWriter& w, const RowMatrix<S>& weight, const std::string& name) {
  put<S>(w, name, {weight.rows(), weight.cols()}, weight);
}

template <class>
inline constexpr bool dependent_false = false;

}  // namespace detail

// Layer shapes, templated on the architecture like MoELayer (the aliases fix the default one).
template <class S, class A>
using MixtralLayer = MoELayer<SwiGLUExperts<S>, SoftmaxTopKRouter<S>, WeightedSumCombiner<S>, A>;
template <class S, class A>
using Qwen2Layer = MoELayer<SwiGLUExperts<S>, SoftmaxTopKRouter<S>, SharedExpertCombiner<SwiGLUExperts<S>, SharedGate::sigmoid>, A>;
template <class S, class A>
using DeepSeekV3Layer = MoELayer<SwiGLUExperts<S>, GroupLimitedRouter<S>, SharedExpertCombiner<SwiGLUExperts<S>, SharedGate::none>, A>;
template <class S, class A>
using GptOssLayer = MoELayer<GptOssExperts<S>, TopKSoftmaxRouter<S>, WeightedSumCombiner<S>, A>;
template <class S, class A>
using SwitchLayer = MoELayer<FFNExperts<S, Activation::relu>, SoftmaxTopKRouter<S>, WeightedSumCombiner<S>, A>;
template <class S, class A>
using NoisyTopKLayer = MoELayer<SwiGLUExperts<S>, NoisyTopKRouter<S>, WeightedSumCombiner<S>, A>;
template <class S, class A>
using ExpertChoiceLayer = MoELayer<SwiGLUExperts<S>, ExpertChoiceRouter<S>, WeightedSumCombiner<S>, A>;
template <class S, class A>
using HashLayer = MoELayer<SwiGLUExperts<S>, HashRouter<S>, WeightedSumCombiner<S>, A>;
template <class S, class A>
using SoftLayer = MoELayer<FFNExperts<S, Activation::gelu_erf>, SoftRouter<S>, SoftCombiner<S>, A>;
template <class S, class A>
using ModalityLayer = MoELayer<SwiGLUExperts<S>, ModalitySoftmaxTopKRouter<S>, WeightedSumCombiner<S>, A>;
template <class S, class A>
using DomainAwareLayer = MoELayer<SwiGLUExperts<S>, DomainAwareSoftmaxTopKRouter<S>, WeightedSumCombiner<S>, A>;
template <class S, class A>
using TaskAwareLayer = MoELayer<SwiGLUExperts<S>, TaskAwareSoftmaxTopKRouter<S>, WeightedSumCombiner<S>, A>;
template <class S, class A>
using TopPLayer = MoELayer<SwiGLUExperts<S>, TopPRouter<S>, WeightedSumCombiner<S>, A>;
template <class S, class A>
using ThresholdSkipLayer = MoELayer<SwiGLUExperts<S>, ThresholdSkipRouter<S>, WeightedSumCombiner<S>, A>;
template <class S, class A>
using HierarchicalLayer = MoELayer<SwiGLUExperts<S>, HierarchicalRouter<S>, WeightedSumCombiner<S>, A>;
template <class S, class A>
using ConvLayer = MoELayer<CausalConvExperts<SwiGLUExperts<S>>, SoftmaxTopKRouter<S>, WeightedSumCombiner<S>, A>;
template <class S, class A>
using LowRankLayer =
    MoELayer<LowRankExperts<S>, SoftmaxTopKRouter<S>, SharedExpertCombiner<LinearExperts<S>, SharedGate::none>, A>;

/// Mixtral: {prefix}gate.weight, {prefix}experts.{e}.w1|w3|w2.weight. load_mixtral always
/// renormalises the top-k weights, so a router with renormalize = false is refused (save it as
/// OLMoE, whose loader takes norm_topk_prob).
template <class S, class A>
void save_mixtral(SafetensorsWriter& w, const MixtralLayer<S, A>& layer, std::string_view prefix) {
  const std::string where = "moe::io::save_mixtral()";
  detail::require_no_router_bias(layer.router(), where);
  moe::detail::require(layer.router().gating().renormalize, where, "router renormalize",
                       "true (load_mixtral always renormalises; save as Family::olmoe to keep false)", "false");
  const std::string p(prefix);
  detail::put_router<S>(w, layer.router().weight(), p + "gate.weight");
  detail::put_swiglu<S>(w, layer.experts(), p + "experts.{e}.", "w1.weight", "w3.weight", "w2.weight");
}

/// OLMoE: {prefix}gate.weight, {prefix}experts.{e}.gate_proj|up_proj|down_proj.weight.
template <class S, class A>
void save_olmoe(SafetensorsWriter& w, const MixtralLayer<S, A>& layer, std::string_view prefix) {
  detail::require_no_router_bias(layer.router(), "moe::io::save_olmoe()");
  const std::string p(prefix);
  detail::put_router<S>(w, layer.router().weight(), p + "gate.weight");
  detail::put_swiglu<S>(w, layer.experts(), p + "experts.{e}.", "gate_proj.weight", "up_proj.weight",
                        "down_proj.weight");
}

/// Qwen2-MoE: as OLMoE, plus {prefix}shared_expert.{gate,up,down}_proj.weight and
/// {prefix}shared_expert_gate.weight [1, d].
template <class S, class A>
void save_qwen2_moe(SafetensorsWriter& w, const Qwen2Layer<S, A>& layer, std::string_view prefix) {
  detail::require_no_router_bias(layer.router(), "moe::io::save_qwen2_moe()");
  const std::string p(prefix);
  detail::put_router<S>(w, layer.router().weight(), p + "gate.weight");
  detail::put_swiglu<S>(w, layer.experts(), p + "experts.{e}.", "gate_proj.weight", "up_proj.weight",
                        "down_proj.weight");
  detail::put_swiglu<S>(w, layer.combiner().shared_expert(), p + "shared_expert.", "gate_proj.weight",
                        "up_proj.weight", "down_proj.weight");
  const auto& g = layer.combiner().gate_weight();
  detail::put<S>(w, p + "shared_expert_gate.weight", {1, g.size()}, g.transpose());
}

/// DeepSeek-V3: {prefix}gate.weight, {prefix}gate.e_score_correction_bias [E] (zeros when the
/// gating has none, which means zero), experts as OLMoE, {prefix}shared_experts.*_proj.weight.
template <class S, class A>
void save_deepseek_v3(SafetensorsWriter& w, const DeepSeekV3Layer<S, A>& layer, std::string_view prefix) {
  detail::require_no_router_bias(layer.router(), "moe::io::save_deepseek_v3()");
  const std::string p(prefix);
  const Index E = layer.num_experts();
  detail::put_router<S>(w, layer.router().weight(), p + "gate.weight");
  const Vector<S>& bias = layer.router().gating().correction_bias;
  if (bias.size() == 0)
    detail::put<S>(w, p + "gate.e_score_correction_bias", {E}, Vector<S>::Zero(E));
  else
    detail::put<S>(w, p + "gate.e_score_correction_bias", {bias.size()}, bias);
  detail::put_swiglu<S>(w, layer.experts(), p + "experts.{e}.", "gate_proj.weight", "up_proj.weight",
                        "down_proj.weight");
  detail::put_swiglu<S>(w, layer.combiner().shared_expert(), p + "shared_experts.", "gate_proj.weight",
                        "up_proj.weight", "down_proj.weight");
}

/// GPT-OSS: {prefix}router.weight, router.bias [E] (zeros when the router has none: the loader
/// requires it, and adding +0 changes no logit's order or value), experts.gate_up_proj
/// [E, d, 2ff], gate_up_proj_bias [E, 2ff], down_proj [E, ff, d], down_proj_bias [E, d].
template <class S, class A>
void save_gpt_oss(SafetensorsWriter& w, const GptOssLayer<S, A>& layer, std::string_view prefix) {
  const std::string p(prefix);
  const auto& router = layer.router();
  const auto& x = layer.experts();
  const Index E = x.num_experts(), d = x.input_dim(), ff = x.d_ff();
  detail::put_router<S>(w, router.weight(), p + "router.weight");
  if (router.bias().size() == 0)
    detail::put<S>(w, p + "router.bias", {E}, Vector<S>::Zero(E));
  else
    detail::put<S>(w, p + "router.bias", {E}, router.bias());
  detail::put<S>(w, p + "experts.gate_up_proj", {E, d, 2 * ff}, x.gate_up());
  detail::put<S>(w, p + "experts.gate_up_proj_bias", {E, 2 * ff}, x.gate_up_bias());
  detail::put<S>(w, p + "experts.down_proj", {E, ff, d}, x.down());
  detail::put<S>(w, p + "experts.down_proj_bias", {E, d}, x.down_bias());
}

/// Switch Transformers: {prefix}router.classifier.weight, {prefix}experts.expert_{e}.wi|wo.weight.
/// The loader builds top-1 routing without renormalisation and no biases, so anything else is
/// refused. The capacity is a setting: pass it back in SwitchConfig.
template <class S, class A>
void save_switch_transformers(SafetensorsWriter& w, const SwitchLayer<S, A>& layer, std::string_view prefix) {
  const std::string where = "moe::io::save_switch_transformers()";
  const auto& router = layer.router();
  detail::require_no_router_bias(router, where);
  moe::detail::require(router.k() == 1, where, "router k", "1 (Switch routes top-1)", router.k());
  moe::detail::require(!router.gating().renormalize, where, "router renormalize",
                       "false (Switch's gate is the top-1 probability)", "true");
  const std::string p(prefix);
  detail::put_router<S>(w, router.weight(), p + "router.classifier.weight");
  detail::put_ffn(w, layer.experts(), p + "experts.expert_{e}.", where);
}

/// Noisy top-k: {prefix}gate.weight, {prefix}noise.weight, experts.{e}.w1|w3|w2.weight.
template <class S, class A>
void save_noisy_top_k(SafetensorsWriter& w, const NoisyTopKLayer<S, A>& layer, std::string_view prefix = "moe.") {
  const std::string p(prefix);
  detail::put_router<S>(w, layer.router().weight(), p + "gate.weight");
  detail::put_router<S>(w, layer.router().noise_weight(), p + "noise.weight");
  detail::put_swiglu<S>(w, layer.experts(), p + "experts.{e}.", "w1.weight", "w3.weight", "w2.weight");
}

/// Expert choice: {prefix}gate.weight, experts.{e}.w1|w3|w2.weight.
template <class S, class A>
void save_expert_choice(SafetensorsWriter& w, const ExpertChoiceLayer<S, A>& layer, std::string_view prefix = "moe.") {
  const std::string p(prefix);
  detail::put_router<S>(w, layer.router().weight(), p + "gate.weight");
  detail::put_swiglu<S>(w, layer.experts(), p + "experts.{e}.", "w1.weight", "w3.weight", "w2.weight");
}

/// Hash routing: {prefix}hash_table [vocab] as I64, experts.{e}.w1|w3|w2.weight. A stateless
/// router has no table to save and is refused.
template <class S, class A>
void save_hash(SafetensorsWriter& w, const HashLayer<S, A>& layer, std::string_view prefix = "moe.") {
  const auto& router = layer.router();
  moe::detail::require(!router.is_stateless(), "moe::io::save_hash()", "router", "one with a table",
                       "a stateless router (HashRouter::stateless)");
  const std::string p(prefix);
  std::vector<std::int64_t> table(router.table().begin(), router.table().end());
  w.add<std::int64_t>(p + "hash_table", {static_cast<std::int64_t>(table.size())}, std::span<const std::int64_t>(table));
  detail::put_swiglu<S>(w, layer.experts(), p + "experts.{e}.", "w1.weight", "w3.weight", "w2.weight");
}

/// Soft MoE: {prefix}phi [d, E*p], experts.{e}.wi|wo.weight. slots_per_expert, normalize and
/// scale are settings: pass them back in SoftMoeConfig.
template <class S, class A>
void save_soft_moe(SafetensorsWriter& w, const SoftLayer<S, A>& layer, std::string_view prefix) {
  const std::string p(prefix);
  detail::put_router<S>(w, layer.router().phi(), p + "phi");
  detail::put_ffn(w, layer.experts(), p + "experts.{e}.", "moe::io::save_soft_moe()");
}

/// Modality experts: {prefix}gate.weight, {prefix}expert_modality [E] as I64 (-1 = cross-modal),
/// experts.{e}.w1|w3|w2.weight. top_k, renormalize and a num_modalities the table cannot show
/// are settings: pass them back in ModalityConfig. The loader reads no router bias, so a wrapped
/// router with one is refused rather than saved without it.
template <class S, class A>
void save_modality_experts(SafetensorsWriter& w, const ModalityLayer<S, A>& layer, std::string_view prefix = "moe.") {
  const auto& router = layer.router();
  detail::require_no_router_bias(router.router(), "moe::io::save_modality_experts()");
  const std::string p(prefix);
  detail::put_router<S>(w, router.weight(), p + "gate.weight");
  std::vector<std::int64_t> table(router.expert_modality().begin(), router.expert_modality().end());
  w.add<std::int64_t>(p + "expert_modality", {static_cast<std::int64_t>(table.size())},
                      std::span<const std::int64_t>(table));
  detail::put_swiglu<S>(w, layer.experts(), p + "experts.{e}.", "w1.weight", "w3.weight", "w2.weight");
}

/// Domain-aware routing: {prefix}gate.weight, {prefix}domain_classifier.weight [D, d],
/// {prefix}domain_affinity [D, E], experts.{e}.w1|w3|w2.weight. A wrapped router with a bias is
/// refused, as for modality experts.
template <class S, class A>
void save_domain_aware(SafetensorsWriter& w, const DomainAwareLayer<S, A>& layer, std::string_view prefix = "moe.") {
  const auto& router = layer.router();
  detail::require_no_router_bias(router.router(), "moe::io::save_domain_aware()");
  const std::string p(prefix);
  detail::put_router<S>(w, router.weight(), p + "gate.weight");
  detail::put_router<S>(w, router.classifier(), p + "domain_classifier.weight");
  detail::put_router<S>(w, router.affinity(), p + "domain_affinity");
  detail::put_swiglu<S>(w, layer.experts(), p + "experts.{e}.", "w1.weight", "w3.weight", "w2.weight");
}

/// Task-aware routing: {prefix}gate.weight, {prefix}task_gates.{j}.weight [E, d] per task,
/// {prefix}task_sensitivity [N], experts.{e}.w1|w3|w2.weight. A wrapped router with a bias is
/// refused, as for modality experts.
template <class S, class A>
void save_task_aware(SafetensorsWriter& w, const TaskAwareLayer<S, A>& layer, std::string_view prefix = "moe.") {
  const auto& router = layer.router();
  detail::require_no_router_bias(router.router(), "moe::io::save_task_aware()");
  const std::string p(prefix);
  detail::put_router<S>(w, router.weight(), p + "gate.weight");
  for (Index j = 0; j < router.num_tasks(); ++j)
    detail::put_router<S>(w, router.task_gate(j), p + "task_gates." + std::to_string(j) + ".weight");
  detail::put<S>(w, p + "task_sensitivity", {router.num_tasks()}, router.sensitivity());
  detail::put_swiglu<S>(w, layer.experts(), p + "experts.{e}.", "w1.weight", "w3.weight", "w2.weight");
}

/// Top-p and threshold-skip routing: {prefix}gate.weight, experts.{e}.w1|w3|w2.weight. The
/// settings (threshold and cap, beta and k) are not tensors: the loaders take them in their
/// config, as for noisy top-k's k. A router with a bias is refused (the loaders read none).
template <class S, class A>
void save_top_p(SafetensorsWriter& w, const TopPLayer<S, A>& layer, std::string_view prefix = "moe.") {
  detail::require_no_router_bias(layer.router(), "moe::io::save_top_p()");
  const std::string p(prefix);
  detail::put_router<S>(w, layer.router().weight(), p + "gate.weight");
  detail::put_swiglu<S>(w, layer.experts(), p + "experts.{e}.", "w1.weight", "w3.weight", "w2.weight");
}
template <class S, class A>
void save_threshold_skip(SafetensorsWriter& w, const ThresholdSkipLayer<S, A>& layer, std::string_view prefix = "moe.") {
  detail::require_no_router_bias(layer.router(), "moe::io::save_threshold_skip()");
  const std::string p(prefix);
  detail::put_router<S>(w, layer.router().weight(), p + "gate.weight");
  detail::put_swiglu<S>(w, layer.experts(), p + "experts.{e}.", "w1.weight", "w3.weight", "w2.weight");
}

/// Hierarchical routing: {prefix}gate.weight [a, d], {prefix}group_gates.{i}.weight [b, d],
/// experts.{e}.w1|w3|w2.weight. k1, k2 and renormalize go to HierarchicalConfig.
template <class S, class A>
void save_hierarchical(SafetensorsWriter& w, const HierarchicalLayer<S, A>& layer, std::string_view prefix = "moe.") {
  const auto& router = layer.router();
  const std::string p(prefix);
  detail::put_router<S>(w, router.primary(), p + "gate.weight");
  for (Index i = 0; i < router.num_groups(); ++i)
    detail::put<S>(w, p + "group_gates." + std::to_string(i) + ".weight", {router.experts_per_group(), router.input_dim()},
                   router.group_gate(i));
  detail::put_swiglu<S>(w, layer.experts(), p + "experts.{e}.", "w1.weight", "w3.weight", "w2.weight");
}

/// Low-rank experts: {prefix}gate.weight, {prefix}base.weight, experts.{e}.lora_A|lora_B.weight.
/// The scale (alpha / r), top_k and whether the base trains go to LowRankConfig; a frozen base
/// is written like a trained one. A router with a bias is refused (the loader reads none).
template <class S, class A>
void save_low_rank(SafetensorsWriter& w, const LowRankLayer<S, A>& layer, std::string_view prefix = "moe.") {
  detail::require_no_router_bias(layer.router(), "moe::io::save_low_rank()");
  const std::string p(prefix);
  detail::put_router<S>(w, layer.router().weight(), p + "gate.weight");
  const auto& base = layer.combiner().shared_expert();
  detail::put<S>(w, p + "base.weight", {base.output_dim(), base.input_dim()}, base.weight(0));
  const auto& bank = layer.experts();
  for (Index e = 0; e < bank.num_experts(); ++e) {
    const std::string q = p + "experts." + std::to_string(e) + ".";
    detail::put<S>(w, q + "lora_A.weight", {bank.rank(), bank.input_dim()}, bank.lora_a(e));
    detail::put<S>(w, q + "lora_B.weight", {bank.output_dim(), bank.rank()}, bank.lora_b(e));
  }
}

/// Convolutional experts: {prefix}gate.weight, experts.{e}.conv.weight [w, d] (row 0 the
/// current token) and experts.{e}.w1|w3|w2.weight. top_k and renormalize go to ConvConfig; the
/// kernel size is the conv weight's rows. A router with a bias is refused (the loader reads none).
template <class S, class A>
void save_conv_experts(SafetensorsWriter& w, const ConvLayer<S, A>& layer, std::string_view prefix = "moe.") {
  detail::require_no_router_bias(layer.router(), "moe::io::save_conv_experts()");
  const std::string p(prefix);
  detail::put_router<S>(w, layer.router().weight(), p + "gate.weight");
  const auto& bank = layer.experts();
  for (Index e = 0; e < bank.num_experts(); ++e)
    detail::put<S>(w, p + "experts." + std::to_string(e) + ".conv.weight", {bank.kernel_size(), bank.input_dim()},
                   bank.conv(e));
  detail::put_swiglu<S>(w, bank.inner(), p + "experts.{e}.", "w1.weight", "w3.weight", "w2.weight");
}

namespace detail {

[[noreturn]] inline void throw_family(Family got, std::string_view layer, std::string_view expected) {
  moe::detail::throw_invalid("moe::io::save_layer()", moe::detail::concat("family for a ", layer),
                             expected, family_name(got));
}

}  // namespace detail

/// Writes the layer under the names of `family`'s loader. The family must be one that reads
/// this layer type (std::invalid_argument otherwise): MixtralMoE and OlmoeMoE are one C++
/// type, so for it the family is the choice between the two layouts.
template <class S, class A>
void save_layer(SafetensorsWriter& w, const MixtralLayer<S, A>& layer, std::string_view prefix, Family family) {
  if (family == Family::mixtral) return save_mixtral(w, layer, prefix);
  if (family == Family::olmoe) return save_olmoe(w, layer, prefix);
  detail::throw_family(family, "MixtralMoE / OlmoeMoE", "mixtral or olmoe");
}
/// Without a family: refused at compile time, since the two layouts differ in every expert name.
template <class S, class A>
void save_layer(SafetensorsWriter&, const MixtralLayer<S, A>&, std::string_view) {
  static_assert(detail::dependent_false<S>,
                "save_layer: MixtralMoE and OlmoeMoE are one C++ type; pass io::Family::mixtral (w1/w3/w2) or "
                "io::Family::olmoe (gate_proj/up_proj/down_proj) (docs/loaders.md#saving)");
}

// Every other layer type has one family; passing it is allowed and checked.
#define MOE_IO_SAVE_LAYER_ONE_FAMILY(LayerAlias, FamilyValue, save_fn, layer_name)                        \
  template <class S, class A>                                                                              \
  void save_layer(SafetensorsWriter& w, const LayerAlias<S, A>& layer, std::string_view prefix,           \
                  Family family = (FamilyValue)) {                                                         \
    if (family != (FamilyValue)) detail::throw_family(family, layer_name, family_name(FamilyValue));        \
    save_fn(w, layer, prefix);                                                                             \
  }
MOE_IO_SAVE_LAYER_ONE_FAMILY(Qwen2Layer, Family::qwen2_moe, save_qwen2_moe, "Qwen2MoE")
MOE_IO_SAVE_LAYER_ONE_FAMILY(DeepSeekV3Layer, Family::deepseek_v3, save_deepseek_v3, "DeepSeekV3MoE")
MOE_IO_SAVE_LAYER_ONE_FAMILY(GptOssLayer, Family::gpt_oss, save_gpt_oss, "GptOssMoE")
MOE_IO_SAVE_LAYER_ONE_FAMILY(SwitchLayer, Family::switch_transformers, save_switch_transformers, "SwitchMoE")
MOE_IO_SAVE_LAYER_ONE_FAMILY(NoisyTopKLayer, Family::noisy_top_k, save_noisy_top_k, "NoisyTopKMoE")
MOE_IO_SAVE_LAYER_ONE_FAMILY(ExpertChoiceLayer, Family::expert_choice, save_expert_choice, "ExpertChoiceMoE")
MOE_IO_SAVE_LAYER_ONE_FAMILY(HashLayer, Family::hash, save_hash, "HashMoE")
MOE_IO_SAVE_LAYER_ONE_FAMILY(SoftLayer, Family::soft_moe, save_soft_moe, "SoftMoE")
MOE_IO_SAVE_LAYER_ONE_FAMILY(ModalityLayer, Family::modality_experts, save_modality_experts, "ModalityMoE")
MOE_IO_SAVE_LAYER_ONE_FAMILY(DomainAwareLayer, Family::domain_aware, save_domain_aware, "DomainAwareMoE")
MOE_IO_SAVE_LAYER_ONE_FAMILY(TaskAwareLayer, Family::task_aware, save_task_aware, "TaskAwareMoE")
MOE_IO_SAVE_LAYER_ONE_FAMILY(TopPLayer, Family::top_p, save_top_p, "TopPMoE")
MOE_IO_SAVE_LAYER_ONE_FAMILY(ThresholdSkipLayer, Family::threshold_skip, save_threshold_skip, "ThresholdSkipMoE")
MOE_IO_SAVE_LAYER_ONE_FAMILY(LowRankLayer, Family::low_rank, save_low_rank, "LowRankMoE")
MOE_IO_SAVE_LAYER_ONE_FAMILY(HierarchicalLayer, Family::hierarchical, save_hierarchical, "HierarchicalMoE")
MOE_IO_SAVE_LAYER_ONE_FAMILY(ConvLayer, Family::conv_expert, save_conv_experts, "ConvMoE")
#undef MOE_IO_SAVE_LAYER_ONE_FAMILY

namespace detail {

/// The expert a saved tensor belongs to, from its name under the prefix:
/// "experts.{e}.<...>" and Switch's "experts.expert_{e}.<...>" give e; anything else (the
/// router, shared parts, GPT-OSS's fused "experts.gate_up_proj") gives nullopt.
inline std::optional<std::uint64_t> expert_of(std::string_view rest) {
  constexpr std::string_view experts = "experts.";
  if (rest.substr(0, experts.size()) != experts) return std::nullopt;
  rest.remove_prefix(experts.size());
  const std::size_t dot = rest.find('.');
  if (dot == std::string_view::npos) return std::nullopt;
  std::string_view id = rest.substr(0, dot);
  if (id.substr(0, 7) == "expert_") id.remove_prefix(7);
  if (id.empty() || id.size() > 18) return std::nullopt;
  std::uint64_t e = 0;
  for (const char c : id) {
    if (c < '0' || c > '9') return std::nullopt;
    e = e * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return e;
}

/// "model-00002-of-00005.safetensors", Hugging Face's shard names.
inline std::string shard_file_name(std::size_t i, std::size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i, n);
  return buf;
}

/// Splits one layer's writer into shards (router and shared parts; GPT-OSS's fused experts;
/// one per expert), writes them, then the index. Returns the index's path.
inline std::filesystem::path write_layer_shards(const std::filesystem::path& folder, SafetensorsWriter& all,
                                                std::string_view prefix) {
  std::vector<std::string> rest_of_layer, fused;
  std::map<std::uint64_t, std::vector<std::string>> per_expert;
  for (std::string& name : all.names()) {
    const std::string_view rest = std::string_view(name).substr(name.rfind(prefix, 0) == 0 ? prefix.size() : 0);
    if (const auto e = expert_of(rest))
      per_expert[*e].push_back(std::move(name));
    else if (rest.substr(0, 8) == "experts.")
      fused.push_back(std::move(name));
    else
      rest_of_layer.push_back(std::move(name));
  }
  std::vector<std::vector<std::string>> groups;
  if (!rest_of_layer.empty()) groups.push_back(std::move(rest_of_layer));
  if (!fused.empty()) groups.push_back(std::move(fused));
  for (auto& [e, names] : per_expert) groups.push_back(std::move(names));

  std::error_code ec;
  std::filesystem::create_directories(folder, ec);
  if (ec) throw Error(folder.string(), "cannot create the folder: " + ec.message());
  const std::uint64_t total = all.data_size();
  nlohmann::json weight_map = nlohmann::json::object();  // keys sorted, as Hugging Face writes them
  for (std::size_t g = 0; g < groups.size(); ++g) {
    const std::string shard = shard_file_name(g + 1, groups.size());
    SafetensorsWriter w;
    for (const std::string& name : groups[g]) {
      all.move_tensor(name, w);
      weight_map[name] = shard;
    }
    w.save(folder / shard);
  }
  const nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", std::move(weight_map)}};
  std::filesystem::path path = folder / sharded_index_name;  // not const: returned by move
  const std::string text = index.dump(2) + "\n";
  write_file(path, text.data(), text.size());
  return path;
}

}  // namespace detail

/// Writes the layer as a Hugging Face sharded checkpoint in `folder` (created if needed): one
/// shard file per expert ("experts.{e}.*", Switch's "experts.expert_{e}.*"), one before them
/// for the router and the shared parts (and, for GPT-OSS, whose experts are fused into four
/// tensors, one for those), named model-00001-of-0000N.safetensors ..., then
/// model.safetensors.index.json with the weight_map and metadata.total_size. Tensors and names
/// are save_layer's, so `load_X<S>(Checkpoint::open(folder), prefix, config)` gives the layer
/// back bit for bit. Refusals are save_layer's, made before any file is written. Files of the
/// same names are overwritten; other files in the folder are left alone. Returns the index's path.
template <class Layer>
  requires requires(SafetensorsWriter& w, const Layer& layer) { save_layer(w, layer, std::string_view(), Family{}); }
std::filesystem::path save_layer_sharded(const std::filesystem::path& folder, const Layer& layer,
                                         std::string_view prefix, Family family) {
  SafetensorsWriter all;
  save_layer(all, layer, prefix, family);
  return detail::write_layer_shards(folder, all, prefix);
}
/// As above with the family implied by the layer type (MixtralMoE / OlmoeMoE need one).
template <class Layer>
  requires requires(SafetensorsWriter& w, const Layer& layer) { save_layer(w, layer, std::string_view()); }
std::filesystem::path save_layer_sharded(const std::filesystem::path& folder, const Layer& layer,
                                         std::string_view prefix) {
  SafetensorsWriter all;
  save_layer(all, layer, prefix);
  return detail::write_layer_shards(folder, all, prefix);
}

}  // namespace moe::io

#endif  // MOE_IO_SAVE_LAYER_HPP

// Build a low-rank (LoRA) expert layer from the own-reference ("moe.") layout of the golden
// case: {prefix}gate.weight [E, d], {prefix}base.weight [d_out, d] (the shared base W0), and
// {prefix}experts.{e}.lora_A.weight [r, d], lora_B.weight [d_out, r] per expert.
#ifndef MOE_IO_LOW_RANK_LOADER_HPP
#define MOE_IO_LOW_RANK_LOADER_HPP

#include <moe/io/checkpoint.hpp>
#include <moe/io/hf_loader.hpp>
#include <moe/io/layer_tensors.hpp>
#include <moe/io/safetensors.hpp>
#include <moe/layer/moe_layer.hpp>

#include <string>
#include <string_view>
#include <utility>

namespace moe::io {

/// Settings a "moe." file does not store as tensors.
struct LowRankConfig {
  Index top_k = 2;
  bool renormalize = true;
  /// LoRA's alpha: the adapters' output is scaled by alpha / r (r read from lora_A). 0 (the
  /// default) takes alpha = r, scale 1.
  double alpha = 0.0;
  /// Whether the base trains (it is listed as a parameter and gets a gradient); false freezes
  /// it, as LoRA fine-tuning does.
  bool train_base = false;
};

/// Low-rank experts over a shared base (../shared/golden-variety, low_rank). E is the gate's
/// rows; r and d_out come from expert 0's factors, and every expert must match them.
template <class S>
LowRankMoE<S> load_low_rank(const Checkpoint& file, std::string_view prefix = "moe.", const LowRankConfig& config = {}) {
  const std::string loader = "moe::io::load_low_rank";
  detail::LayerTensors t(file, prefix, loader);
  RowMatrix<S> gate = detail::read_router_weight<S>(t, "gate.weight");
  const Index E = gate.rows();
  const Index d = gate.cols();
  const Index r = t.shape("experts.0.lora_A.weight", 2)[0];
  const Index d_out = t.shape("base.weight", 2)[0];
  t.check("base.weight", {d_out, d});
  const double alpha = config.alpha == 0.0 ? static_cast<double>(r) : config.alpha;
  const std::string pattern = "experts.{e}.";
  LowRankExperts<S> adapters = detail::read_experts<S>(
      t, E, {{pattern + "lora_A.weight", {r, d}}, {pattern + "lora_B.weight", {d_out, r}}},
      [&] { return LowRankExperts<S>(E, d, r, static_cast<S>(alpha / static_cast<double>(r)), d_out); },
      [](LowRankExperts<S>& b, Index e, std::size_t i) { return i == 0 ? b.lora_a(e) : b.lora_b(e); });
  adapters.names() = {pattern + "lora_A.weight", pattern + "lora_B.weight"};
  LinearExperts<S> base(1, d, d_out);
  t.template read_into<S>("base.weight", {d_out, d}, base.weights());
  base.names().weight = "base.weight";
  base.set_trainable(config.train_base);
  return detail::with_loader_name(loader, [&] {
    return LowRankMoE<S>(std::move(adapters),
                         SoftmaxTopKRouter<S>(std::move(gate), config.top_k, SoftmaxTopK<S>{config.renormalize}),
                         SharedExpertCombiner<LinearExperts<S>, SharedGate::none>(std::move(base)));
  });
}

}  // namespace moe::io

#endif  // MOE_IO_LOW_RANK_LOADER_HPP

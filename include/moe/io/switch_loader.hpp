// Build a Switch Transformers layer from one sparse MLP of a Hugging Face checkpoint.
#ifndef MOE_IO_SWITCH_LOADER_HPP
#define MOE_IO_SWITCH_LOADER_HPP

#include <moe/dispatch/dispatch_plan.hpp>
#include <moe/io/checkpoint.hpp>
#include <moe/io/hf_loader.hpp>
#include <moe/io/layer_tensors.hpp>
#include <moe/io/safetensors.hpp>
#include <moe/layer/moe_layer.hpp>

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>

namespace moe::io {

/// What the checkpoint does not store. transformers' SwitchTransformersConfig keeps the
/// capacity as `expert_capacity` (an absolute count per expert): pass Capacity::fixed(n) for
/// it. The default is dropless. Router jitter is a training-time wrapper
/// (moe::Jittered, router/jitter.hpp), not part of the loaded layer.
struct SwitchConfig {
  Capacity capacity = Capacity::unlimited();
};

/// Switch Transformers: {prefix}router.classifier.weight [E, d];
/// {prefix}experts.expert_{e}.wi.weight [ff, d] and wo.weight [d, ff] (ReLU FFN, no biases).
/// Top-1 softmax routing, gate = the top-1 probability (not renormalised).
/// prefix is e.g. "encoder.block.1.layer.1.mlp." in a full checkpoint, "mlp." for one layer.
template <class S>
SwitchMoE<S> load_switch_transformers(const Checkpoint& file, std::string_view prefix,
                                      const SwitchConfig& config = {}) {
  const std::string loader = "moe::io::load_switch_transformers";
  detail::LayerTensors t(file, prefix, loader);
  RowMatrix<S> weight = detail::read_router_weight<S>(t, "router.classifier.weight");
  const Index E = weight.rows();
  const Index d = weight.cols();
  const Index ff = t.shape("experts.expert_0.wi.weight", 2)[0];
  using Bank = FFNExperts<S, Activation::relu>;
  auto experts = detail::read_experts<S>(
      t, E, {{"experts.expert_{e}.wi.weight", {ff, d}}, {"experts.expert_{e}.wo.weight", {d, ff}}},
      [&] { return Bank(E, d, ff); }, [](Bank& b, Index e, std::size_t i) { return i == 0 ? b.wi(e) : b.wo(e); });
  return detail::with_loader_name(loader, [&] {
    config.capacity.validate();
    SoftmaxTopKRouter<S> router(std::move(weight), 1, SoftmaxTopK<S>{false});
    router.names().weight = "router.classifier.weight";  // gradients under the checkpoint's name
    return SwitchMoE<S>(std::move(experts), std::move(router), WeightedSumCombiner<S>{}, config.capacity);
  });
}

}  // namespace moe::io

#endif  // MOE_IO_SWITCH_LOADER_HPP

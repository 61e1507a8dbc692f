// Build a Soft MoE layer (Puigcerver et al. 2023) from one layer's tensors.
#ifndef MOE_IO_SOFT_MOE_LOADER_HPP
#define MOE_IO_SOFT_MOE_LOADER_HPP

#include <moe/core/error.hpp>
#include <moe/io/checkpoint.hpp>
#include <moe/io/error.hpp>
#include <moe/io/hf_loader.hpp>
#include <moe/io/layer_tensors.hpp>
#include <moe/io/safetensors.hpp>
#include <moe/layer/moe_layer.hpp>

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>

namespace moe::io {

/// What the tensors do not say: how Phi's E*p columns split into experts, and the optional
/// l2 normalisation of the logits (off in the paper's reference algorithm and the golden case).
struct SoftMoeConfig {
  Index slots_per_expert = 1;
  bool normalize = false;
  double scale = 1.0;  ///< the learned scale of the normalised logits
};

/// Soft MoE: {prefix}phi [d, E*p]; {prefix}experts.{e}.wi.weight [ff, d] and wo.weight [d, ff]
/// (GELU (erf) FFN experts, no biases). E = columns of phi / slots_per_expert.
template <class S>
SoftMoE<S> load_soft_moe(const Checkpoint& file, std::string_view prefix, const SoftMoeConfig& config = {}) {
  const std::string loader = "moe::io::load_soft_moe";
  moe::detail::require(config.slots_per_expert >= 1, loader + "()", "slots_per_expert", ">= 1",
                       config.slots_per_expert);
  detail::LayerTensors t(file, prefix, loader);
  const auto pshape = t.shape("phi", 2);
  const Index d = pshape[0];
  const Index slots = pshape[1];
  if (slots % config.slots_per_expert != 0)
    throw TensorMismatchError(file.file_name(t.name("phi")), t.name("phi"),
                              loader + "(): expected " + std::to_string(slots) +
                                  " columns to be num_experts * slots_per_expert with slots_per_expert = " +
                                  std::to_string(config.slots_per_expert));
  const Index E = slots / config.slots_per_expert;
  RowMatrix<S> phi(d, slots);
  t.template read_into<S>("phi", pshape, phi);
  const Index ff = t.shape("experts.0.wi.weight", 2)[0];
  using Bank = FFNExperts<S, Activation::gelu_erf>;
  auto experts = detail::read_experts<S>(
      t, E, {{"experts.{e}.wi.weight", {ff, d}}, {"experts.{e}.wo.weight", {d, ff}}}, [&] { return Bank(E, d, ff); },
      [](Bank& b, Index e, std::size_t i) { return i == 0 ? b.wi(e) : b.wo(e); });
  experts.names().wi = "experts.{e}.wi.weight";  // gradients under the names read here
  experts.names().wo = "experts.{e}.wo.weight";
  return detail::with_loader_name(loader, [&] {
    SoftRouter<S> router(std::move(phi), config.slots_per_expert, config.normalize);
    router.scale() = static_cast<S>(config.scale);
    return SoftMoE<S>(std::move(experts), std::move(router));
  });
}

}  // namespace moe::io

#endif  // MOE_IO_SOFT_MOE_LOADER_HPP

// Build a convolutional-expert layer from the own-reference ("moe.") layout of the golden
// case: {prefix}gate.weight [E, d], and per expert {prefix}experts.{e}.conv.weight [w, d]
// (row 0 multiplies the current token) and the SwiGLU w1/w3/w2 weights.
#ifndef MOE_IO_CONV_LOADER_HPP
#define MOE_IO_CONV_LOADER_HPP

#include <moe/io/checkpoint.hpp>
#include <moe/io/hf_loader.hpp>
#include <moe/io/layer_tensors.hpp>
#include <moe/io/safetensors.hpp>
#include <moe/layer/moe_layer.hpp>

#include <string>
#include <string_view>
#include <utility>

namespace moe::io {

/// Settings a "moe." file does not store as tensors; the kernel size is the conv weight's rows.
struct ConvConfig {
  Index top_k = 2;
  bool renormalize = true;
};

/// Convolutional experts (../shared/golden-variety, conv_expert). E is the gate's rows; the
/// kernel size w comes from expert 0's kernel, and every expert's must be [w, d].
template <class S>
ConvMoE<S> load_conv_experts(const Checkpoint& file, std::string_view prefix = "moe.",
                             const ConvConfig& config = {}) {
  const std::string loader = "moe::io::load_conv_experts";
  detail::LayerTensors t(file, prefix, loader);
  RowMatrix<S> gate = detail::read_router_weight<S>(t, "gate.weight");
  const Index E = gate.rows();
  const Index d = gate.cols();
  const std::string pattern = "experts.{e}.conv.weight";
  const Index w = t.shape(detail::expert_name(pattern, 0), 2)[0];
  // Every kernel is checked before the SwiGLU bank is read and anything is allocated.
  for (Index e = 0; e < E; ++e) t.check(detail::expert_name(pattern, e), {w, d});
  auto swiglu = detail::read_swiglu_bank<S>(t, "experts.", E, "w1.weight", "w3.weight", "w2.weight");
  auto experts =
      detail::with_loader_name(loader, [&] { return CausalConvExperts<SwiGLUExperts<S>>(std::move(swiglu), w); });
  for (Index e = 0; e < E; ++e) t.template read_into<S>(detail::expert_name(pattern, e), {w, d}, experts.conv(e));
  experts.names().conv = pattern;
  return detail::with_loader_name(loader, [&] {
    return ConvMoE<S>(std::move(experts),
                      SoftmaxTopKRouter<S>(std::move(gate), config.top_k, SoftmaxTopK<S>{config.renormalize}));
  });
}

}  // namespace moe::io

#endif  // MOE_IO_CONV_LOADER_HPP

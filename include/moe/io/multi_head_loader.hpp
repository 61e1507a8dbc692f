// Build a multi-head MoE layer (MH-MoE) from the own-reference ("moe.") layout of the golden
// case: {prefix}head_proj.weight [d, d], {prefix}gate.weight [E, d/h], SwiGLU experts of width
// d/h {prefix}experts.{e}.w1|w3.weight [ff, d/h], w2.weight [d/h, ff], and
// {prefix}merge_proj.weight [d, d].
#ifndef MOE_IO_MULTI_HEAD_LOADER_HPP
#define MOE_IO_MULTI_HEAD_LOADER_HPP

#include <moe/core/error.hpp>
#include <moe/io/checkpoint.hpp>
#include <moe/io/error.hpp>
#include <moe/io/hf_loader.hpp>
#include <moe/io/layer_tensors.hpp>
#include <moe/io/safetensors.hpp>
#include <moe/layer/multi_head_layer.hpp>

#include <string>
#include <string_view>
#include <utility>

namespace moe::io {

/// Settings a "moe." file does not store as tensors.
struct MultiHeadConfig {
  /// h. 0 (the default) infers it from the shapes, h = d / (the gate's columns); given, the
  /// gate must have d / h columns.
  Index num_heads = 0;
  Index top_k = 2;
  bool renormalize = true;
};

/// Multi-head MoE (../shared/golden-variety, multi_head): x' = x Wh^T, each of a token's h
/// sub-tokens routed by softmax top-k over E SwiGLU experts of width d/h, y = merged Wm^T.
/// d is head_proj's rows, E the gate's rows, ff expert 0's w1 rows; every shape is checked
/// before anything is allocated.
template <class S>
MultiHeadMoE<S> load_multi_head(const Checkpoint& file, std::string_view prefix = "moe.",
                                const MultiHeadConfig& config = {}) {
  const std::string loader = "moe::io::load_multi_head";
  moe::detail::require(config.num_heads >= 0, loader + "()",
                       "MultiHeadConfig::num_heads (0 infers it from the gate's columns)", ">= 0", config.num_heads);
  detail::LayerTensors t(file, prefix, loader);
  const Index d = t.shape("head_proj.weight", 2)[0];
  t.check("head_proj.weight", {d, d});
  const auto gate_shape = t.shape("gate.weight", 2);
  const Index E = gate_shape[0];
  Index h = config.num_heads;
  if (h == 0) {
    const Index columns = gate_shape[1];
    if (columns < 1 || d % columns != 0)
      throw TensorMismatchError(file.file_name(t.name("gate.weight")), t.name("gate.weight"),
                                loader + "(): expected a number of columns that divides d_model = " +
                                    std::to_string(d) + " (head_proj.weight's rows; num_heads 0 infers h = d / "
                                    "columns), got " + std::to_string(columns));
    h = d / columns;
  } else if (d % h != 0) {
    throw TensorMismatchError(file.file_name(t.name("head_proj.weight")), t.name("head_proj.weight"),
                              loader + "(): expected d_model (its rows) divisible by num_heads = " + std::to_string(h) +
                                  ", got " + std::to_string(d));
  }
  const Index dh = d / h;
  t.check("gate.weight", {E, dh});
  t.check("merge_proj.weight", {d, d});
  const Index ff = t.shape("experts.0.w1.weight", 2)[0];
  t.check("experts.0.w1.weight", {ff, dh});
  RowMatrix<S> gate = detail::read_router_weight<S>(t, "gate.weight");
  auto experts = detail::read_swiglu_bank<S>(t, "experts.", E, "w1.weight", "w3.weight", "w2.weight");
  RowMatrix<S> head(d, d), merge(d, d);
  t.template read_into<S>("head_proj.weight", {d, d}, head);
  t.template read_into<S>("merge_proj.weight", {d, d}, merge);
  return detail::with_loader_name(loader, [&] {
    return MultiHeadMoE<S>(
        MixtralMoE<S>(std::move(experts),
                      SoftmaxTopKRouter<S>(std::move(gate), config.top_k, SoftmaxTopK<S>{config.renormalize})),
        h, std::move(head), std::move(merge));
  });
}

}  // namespace moe::io

#endif  // MOE_IO_MULTI_HEAD_LOADER_HPP

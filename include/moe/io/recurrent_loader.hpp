// Build a recurrent (GRU) expert layer from the own-reference ("moe.") layout of the golden
// case: {prefix}gate.weight [E, d], and per expert the torch.nn.GRU tensors
// {prefix}experts.{e}.weight_ih [3H, d], weight_hh [3H, H], bias_ih [3H], bias_hh [3H].
#ifndef MOE_IO_RECURRENT_LOADER_HPP
#define MOE_IO_RECURRENT_LOADER_HPP

#include <moe/io/checkpoint.hpp>
#include <moe/io/error.hpp>
#include <moe/io/hf_loader.hpp>
#include <moe/io/layer_tensors.hpp>
#include <moe/io/safetensors.hpp>
#include <moe/layer/recurrent_moe.hpp>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

namespace moe::io {

/// Settings a "moe." file does not store as tensors.
struct RecurrentConfig {
  /// Experts per sequence.
  Index top_k = 2;
  /// Whether the k gates are renormalised to sum to 1.
  bool renormalize = true;
};

/// GRU experts routed per sequence (../shared/golden-variety, recurrent_expert). E is the
/// gate's rows, d its columns; H is a third of expert 0's weight_ih rows, and every expert's
/// tensors must have exactly the shapes that E, d and H give.
template <class S>
RecurrentMoE<S> load_recurrent(const Checkpoint& file, std::string_view prefix = "moe.",
                               const RecurrentConfig& config = {}) {
  const std::string loader = "moe::io::load_recurrent";
  detail::LayerTensors t(file, prefix, loader);
  RowMatrix<S> gate = detail::read_router_weight<S>(t, "gate.weight");
  const Index E = gate.rows();
  const Index d = gate.cols();
  const std::string pattern = "experts.{e}.";
  const std::int64_t rows = t.shape("experts.0.weight_ih", 2)[0];
  if (rows < 3 || rows % 3 != 0)
    throw TensorMismatchError(file.file_name(t.name("experts.0.weight_ih")), t.name("experts.0.weight_ih"),
                              loader + "(): expected rows a positive multiple of 3 (3 * hidden_size: gates r, z, n), got " +
                                  std::to_string(rows));
  const Index H = rows / 3;
  GRUExperts<S> bank = detail::read_experts<S>(
      t, E,
      {{pattern + "weight_ih", {3 * H, d}},
       {pattern + "weight_hh", {3 * H, H}},
       {pattern + "bias_ih", {3 * H}},
       {pattern + "bias_hh", {3 * H}}},
      [&] { return GRUExperts<S>(E, d, H); },
      [](GRUExperts<S>& b, Index e, std::size_t i) {
        return i == 0 ? b.weight_ih(e) : i == 1 ? b.weight_hh(e) : i == 2 ? b.bias_ih(e) : b.bias_hh(e);
      });
  bank.names() = {pattern + "weight_ih", pattern + "weight_hh", pattern + "bias_ih", pattern + "bias_hh"};
  return detail::with_loader_name(loader, [&] {
    return RecurrentMoE<S>(
        std::move(bank),
        SequenceSoftmaxTopKRouter<S>(TopKRouter<SoftmaxTopK<S>>(std::move(gate), config.top_k,
                                                                SoftmaxTopK<S>{config.renormalize})));
  });
}

}  // namespace moe::io

#endif  // MOE_IO_RECURRENT_LOADER_HPP

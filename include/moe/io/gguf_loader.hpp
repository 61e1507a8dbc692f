// One MoE layer of a GGUF model (llama.cpp's tensor names and metadata) as a layer of this
// library, and a layer written back under those names (docs/gguf.md#loading-moe-layers).
//
// The file decides the layer's C++ type: F32, F16 or BF16 experts give the float family alias
// (MixtralMoE<float>, ...), Q8_0, Q4_0 or Q4_K experts the quantized one (QuantizedMixtralMoE<
// BlockQ8_0>, ...) with the blocks copied in as they are. So the entry point is a visitor,
// visit_gguf_layer(file, block, f), which builds whichever layer the file holds and calls
// f(layer); load_gguf_layer<Layer> builds one type asked for, and describe_gguf_layer checks
// everything but the weights' values and says what the file holds. Nothing is trusted: every
// metadata value is read with its type checked, every tensor's shape against the metadata and
// its type against what the layer can take, before anything is allocated.
#ifndef MOE_IO_GGUF_LOADER_HPP
#define MOE_IO_GGUF_LOADER_HPP

#include <moe/core/error.hpp>
#include <moe/core/types.hpp>
#include <moe/io/error.hpp>
#include <moe/io/gguf.hpp>
#include <moe/kernels/quant_blocks.hpp>
#include <moe/kernels/weight_types.hpp>
#include <moe/layer/moe_layer.hpp>
#include <moe/layer/quantized_layers.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace moe::io {

/// The MoE layer families a GGUF file can hold, each under its llama.cpp architecture name.
enum class GgufFamily : std::uint8_t {
  mixtral,      ///< "llama" with {arch}.expert_count > 0: MixtralMoE
  olmoe,        ///< "olmoe": OlmoeMoE (MixtralMoE's type)
  qwen2_moe,    ///< "qwen2moe": Qwen2MoE, sigmoid-gated shared expert
  deepseek_v3,  ///< "deepseek2" with sigmoid gating: DeepSeekV3MoE, shared experts
  gpt_oss,      ///< "gpt-oss": GptOssMoE
};

/// "mixtral", "olmoe", "qwen2_moe", "deepseek_v3", "gpt_oss" (io::Family's names).
[[nodiscard]] constexpr std::string_view gguf_family_name(GgufFamily f) noexcept {
  switch (f) {
    case GgufFamily::mixtral: return "mixtral";
    case GgufFamily::olmoe: return "olmoe";
    case GgufFamily::qwen2_moe: return "qwen2_moe";
    case GgufFamily::deepseek_v3: return "deepseek_v3";
    case GgufFamily::gpt_oss: return "gpt_oss";
  }
  return "?";
}

/// general.architecture of the family: "llama", "olmoe", "qwen2moe", "deepseek2", "gpt-oss".
[[nodiscard]] constexpr std::string_view gguf_architecture(GgufFamily f) noexcept {
  switch (f) {
    case GgufFamily::mixtral: return "llama";
    case GgufFamily::olmoe: return "olmoe";
    case GgufFamily::qwen2_moe: return "qwen2moe";
    case GgufFamily::deepseek_v3: return "deepseek2";
    case GgufFamily::gpt_oss: return "gpt-oss";
  }
  return "?";
}

/// Whether a ggml type can be a layer's expert weights: F32, F16, BF16 (a float layer) or
/// Q8_0, Q4_0, Q4_K (a quantized layer).
[[nodiscard]] constexpr bool gguf_expert_type_supported(GgmlType t) noexcept {
  return t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16 || t == GgmlType::Q8_0 ||
         t == GgmlType::Q4_0 || t == GgmlType::Q4_K;
}

/// Whether expert weights of this type give a quantized layer (Q8_0, Q4_0, Q4_K).
[[nodiscard]] constexpr bool gguf_type_quantized(GgmlType t) noexcept {
  return t == GgmlType::Q8_0 || t == GgmlType::Q4_0 || t == GgmlType::Q4_K;
}

/// The ggml type of a block format: BlockQ8_0 -> Q8_0, BlockQ4_0 -> Q4_0, BlockQ4_K -> Q4_K.
template <kernels::QuantBlock Block>
inline constexpr GgmlType ggml_type_of = std::is_same_v<Block, kernels::BlockQ8_0>   ? GgmlType::Q8_0
                                         : std::is_same_v<Block, kernels::BlockQ4_0> ? GgmlType::Q4_0
                                                                                     : GgmlType::Q4_K;

/// The documented bound (docs/quantization.md#quantized-expert-banks) on max |y - y64| /
/// max |y64| for a layer whose experts are of `type`, against the float64 layer of the same
/// weights (quantized blocks dequantized): what the 8-bit activations of the quantized
/// products cost, and for F32, F16 and BF16 float rounding alone. Not a bound against the
/// model's unquantized weights, which differ by the weights' own quantization error
/// (docs/quantization.md's round-trip table). 0 for a type no layer takes.
[[nodiscard]] constexpr double gguf_layer_error_bound(GgmlType type) noexcept {
  switch (type) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16: return 1e-5;
    case GgmlType::Q8_0:
    case GgmlType::Q4_0: return 0.03;
    case GgmlType::Q4_K: return 0.05;
    default: return 0.0;
  }
}

/// One tensor a layer reads.
struct GgufLayerTensor {
  std::string role;  ///< "router", "gate", "up", "gate_up", "down", "shared gate", ..., "router bias", ...
  std::string name;  ///< its name in the file
  GgmlType type = GgmlType::F32;
  std::vector<std::int64_t> ne;  ///< GGUF order (ne[0] the row length)
};

/// What block `layer` of a file holds, checked (describe_gguf_layer): the family, sizes, router
/// settings and every tensor the layer reads with its type and shape.
struct GgufLayerInfo {
  std::string file;  ///< the file's display name
  std::string architecture;
  GgufFamily family = GgufFamily::mixtral;
  Index layer = 0;
  Index num_experts = 0;
  Index top_k = 0;
  Index d_model = 0;
  Index d_ff = 0;
  Index shared_d_ff = 0;  ///< the shared expert's width (Qwen2-MoE, DeepSeek-V3); 0 without one
  /// ffn_{gate,up,down}_exps.weight (all experts in one tensor); false: the older layout of one
  /// tensor per expert, ffn_{gate,up,down}.{e}.weight.
  bool stacked = true;
  /// Gate and up in one tensor, ffn_gate_up_exps.weight [d, 2 ff, E] (expert e's gate rows, then
  /// its up rows), as newer llama.cpp files may hold them.
  bool fused_gate_up = false;
  /// The experts' weight type (routed and shared). With F32, F16 and BF16 mixed, the routed
  /// gate's.
  GgmlType expert_type = GgmlType::F32;
  bool renormalize = true;  ///< renormalise the top-k gates (expert_weights_norm)
  Index n_group = 1;        ///< DeepSeek-V3: expert groups (expert_group_count)
  Index topk_group = 1;     ///< DeepSeek-V3: groups kept per token (expert_group_used_count)
  double routed_scaling_factor = 1.0;  ///< DeepSeek-V3: expert_weights_scale
  bool correction_bias = false;        ///< DeepSeek-V3: exp_probs_b.bias present
  std::vector<GgufLayerTensor> tensors;  ///< in the order the layer reads them

  /// Whether the experts are block-quantized (the quantized family alias).
  [[nodiscard]] bool quantized() const noexcept { return gguf_type_quantized(expert_type); }
  /// The first tensor of this role, or nullptr.
  [[nodiscard]] const GgufLayerTensor* find(std::string_view role) const {
    for (const auto& t : tensors)
      if (t.role == role) return &t;
    return nullptr;
  }
  /// "blk.{layer}.{rest}".
  [[nodiscard]] std::string tensor_name(std::string_view rest) const {
    return "blk." + std::to_string(layer) + "." + std::string(rest);
  }
};

/// Reads and checks block `layer`'s metadata and tensor infos (not the weights' values):
/// general.architecture one of llama (with {arch}.expert_count > 0), olmoe, qwen2moe,
/// deepseek2 (sigmoid gating: DeepSeek-V3) and gpt-oss; {arch}.expert_count,
/// expert_used_count, embedding_length and the expert width (expert_feed_forward_length, or
/// feed_forward_length for llama and olmoe); every tensor present with the shape these give and
/// a type the layer can take, the experts' weights of one type (F32, F16 and BF16 may mix: each
/// reads exactly as float). Throws MissingMetadataError / MetadataError for a key absent or of
/// the wrong type or value, MissingTensorError for a tensor absent (with close names),
/// TensorMismatchError for a shape, a type or a mix of types, std::invalid_argument for layer < 0.
GgufLayerInfo describe_gguf_layer(const GgufFile& file, Index layer);

/// Builds block `layer`'s layer as the file holds it and returns f(layer), the layer an lvalue
/// of one of: MixtralMoE<float> (llama, olmoe), Qwen2MoE<float>, DeepSeekV3MoE<float>,
/// GptOssMoE<float> for F32, F16 and BF16 experts, and QuantizedMixtralMoE<Block>,
/// QuantizedQwen2MoE<Block>, QuantizedDeepSeekV3MoE<Block>, QuantizedGptOssMoE<Block> for
/// Block = BlockQ8_0, BlockQ4_0, BlockQ4_K (the file's blocks copied in as they are). f must
/// return the same type for all of them (a generic lambda: `[&](auto& layer) { ... }`); the
/// layer lives for the call. Throws as describe_gguf_layer.
template <class F>
decltype(auto) visit_gguf_layer(const GgufFile& file, Index layer, F&& f);

/// As visit_gguf_layer, but always a float layer of scalar S (MixtralMoE<S>, Qwen2MoE<S>, ...):
/// quantized weights dequantized by their formats' definitions. With S = double, the float64
/// twin of what visit_gguf_layer builds: the same weights, exact arithmetic's reference.
template <class S, class F>
decltype(auto) visit_gguf_layer_as(const GgufFile& file, Index layer, F&& f);

/// Block `layer` as a Layer the caller names: a float family alias (any type the file holds,
/// quantized ones dequantized) or a quantized one (the file's experts of exactly its Block
/// type: no requantization). Throws as describe_gguf_layer, and TensorMismatchError when the
/// file's family or expert type cannot give a Layer.
template <class Layer>
Layer load_gguf_layer(const GgufFile& file, Index layer);

/// How save_gguf_layer writes the experts. Routers, biases and gates are always F32.
struct GgufSaveOptions {
  /// The experts' type: for a float layer F32 (the default), F16, BF16, or Q8_0, Q4_0, Q4_K
  /// (quantized on the way, ggml's reference quantizers); for a quantized layer only its own
  /// block type (the default), written block for block.
  std::optional<GgmlType> expert_type;
};

namespace detail {

// ---------------------------------------------------------------------------------------------
// Reading

/// ne with trailing 1s dropped: ggml treats [d] and [d, 1] as one shape.
inline std::vector<std::int64_t> gguf_trim(std::vector<std::int64_t> ne) {
  while (ne.size() > 1 && ne.back() == 1) ne.pop_back();
  return ne;
}

inline std::string gguf_ne_list(const std::vector<std::int64_t>& ne) { return "ne " + format_shape(ne); }

/// A metadata integer that must lie in [lo, hi]; throws MetadataError naming the key otherwise.
inline Index gguf_int_in(const GgufFile& f, const std::string& key, Index lo, Index hi, const std::string& why = {}) {
  const std::int64_t v = f.get_int(key);
  if (v < lo || v > hi)
    throw MetadataError(f.display_name(), key,
                        "expected a value in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]" +
                            (why.empty() ? std::string() : " (" + why + ")") + ", got " + std::to_string(v));
  return static_cast<Index>(v);
}

/// An integer key that llama.cpp reads as one value or one per block (get_key_or_arr): the
/// value, or the array's element for `layer`.
inline std::int64_t gguf_int_or_array(const GgufFile& f, const std::string& key, Index layer) {
  const GgufValue& v = f.value(key);
  if (!v.is_array()) return v.as_int();
  if (static_cast<std::uint64_t>(layer) >= v.size())
    throw MetadataError(f.display_name(), key,
                        "expected an array with an element for block " + std::to_string(layer) + ", got " + v.describe());
  const auto at = [&]<class T>() { return static_cast<std::int64_t>(v.as_array<T>()[static_cast<std::size_t>(layer)]); };
  switch (v.element_type()) {
    case GgufType::U8: return at.template operator()<std::uint8_t>();
    case GgufType::I8: return at.template operator()<std::int8_t>();
    case GgufType::U16: return at.template operator()<std::uint16_t>();
    case GgufType::I16: return at.template operator()<std::int16_t>();
    case GgufType::U32: return at.template operator()<std::uint32_t>();
    case GgufType::I32: return at.template operator()<std::int32_t>();
    case GgufType::I64: return at.template operator()<std::int64_t>();
    case GgufType::U64: {
      const std::uint64_t u = v.as_array<std::uint64_t>()[static_cast<std::size_t>(layer)];
      if (u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        throw MetadataError(f.display_name(), key, "expected a value that fits an int64, got " + std::to_string(u));
      return static_cast<std::int64_t>(u);
    }
    default:
      throw MetadataError(f.display_name(), key, "expected an integer or an array of integers, got " + v.describe());
  }
}

/// Checks a tensor's shape (trailing 1s aside) and returns its info.
inline const GgufTensorInfo& gguf_shape(const GgufFile& f, const std::string& name, const std::vector<std::int64_t>& ne,
                                        const std::string& meaning) {
  const GgufTensorInfo& t = f.info(name);  // MissingTensorError with close names
  if (gguf_trim(t.ne) != gguf_trim(ne))
    throw TensorMismatchError(f.display_name(), name,
                              "expected " + gguf_ne_list(ne) + " (" + meaning + "), got " + gguf_ne_list(t.ne));
  return t;
}

/// Router weights, biases and gates: any type that reads as float.
inline void gguf_require_float_readable(const GgufFile& f, const GgufTensorInfo& t) {
  if (!ggml_type_info(static_cast<std::uint32_t>(t.type))->to_float)
    throw TensorMismatchError(f.display_name(), t.name,
                              "expected a type read as float (F32, F16, BF16, Q8_0, Q4_0, Q4_K), got " +
                                  ggml_type_text(t.type));
}

/// Expert weights: a supported type, and the first one's type (float types may mix).
inline void gguf_require_expert_type(const GgufFile& f, const GgufTensorInfo& t, const GgufTensorInfo& first) {
  if (!gguf_expert_type_supported(t.type))
    throw TensorMismatchError(f.display_name(), t.name,
                              "expected an expert weight type F32, F16, BF16 (a float layer) or Q8_0, Q4_0, Q4_K (a "
                              "quantized layer), got " +
                                  ggml_type_text(t.type));
  if (t.type != first.type && (gguf_type_quantized(t.type) || gguf_type_quantized(first.type)))
    throw TensorMismatchError(f.display_name(), t.name,
                              "expected " + std::string(ggml_type_name(first.type)) + " like '" + first.name +
                                  "' (a layer's expert weights share one type" +
                                  (gguf_type_quantized(first.type) ? std::string() : std::string(", or mix F32, F16, BF16")) +
                                  "), got " + ggml_type_text(t.type));
}

/// Bytes of one row of t.
inline std::size_t gguf_row_bytes(const GgufTensorInfo& t) {
  const GgmlTypeInfo* ti = ggml_type_info(static_cast<std::uint32_t>(t.type));
  return static_cast<std::size_t>(t.cols()) / ti->block * ti->bytes;
}

template <kernels::QuantBlock Block>
void gguf_dequantize_row(const std::byte* src, float* out, std::size_t n) {
  std::vector<Block> blocks(n / kernels::block_elements<Block>);
  std::memcpy(blocks.data(), src, blocks.size() * sizeof(Block));
  if constexpr (std::is_same_v<Block, kernels::BlockQ8_0>) kernels::dequantize_row_q8_0(blocks.data(), out, n);
  else if constexpr (std::is_same_v<Block, kernels::BlockQ4_0>) kernels::dequantize_row_q4_0(blocks.data(), out, n);
  else kernels::dequantize_row_q4_k(blocks.data(), out, n);
}

/// Row `row` of tensor t (whose bytes start at data) as ne[0] floats: F32, F16, BF16 exactly,
/// Q8_0, Q4_0, Q4_K dequantized by their definitions.
inline void gguf_row_to_float(const GgufTensorInfo& t, const std::byte* data, Index row, float* out) {
  const auto n = static_cast<std::size_t>(t.cols());
  const std::byte* src = data + static_cast<std::size_t>(row) * gguf_row_bytes(t);
  switch (t.type) {
    case GgmlType::F32: std::memcpy(out, src, n * sizeof(float)); return;
    case GgmlType::F16:
    case GgmlType::BF16:
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        out[i] = t.type == GgmlType::F16 ? kernels::fp16_to_float(h) : static_cast<float>(bf16::from_bits(h));
      }
      return;
    case GgmlType::Q8_0: gguf_dequantize_row<kernels::BlockQ8_0>(src, out, n); return;
    case GgmlType::Q4_0: gguf_dequantize_row<kernels::BlockQ4_0>(src, out, n); return;
    case GgmlType::Q4_K: gguf_dequantize_row<kernels::BlockQ4_K>(src, out, n); return;
    default: break;
  }
  throw std::logic_error("moe::io::detail::gguf_row_to_float(): tensor '" + t.name + "' of type " + ggml_type_text(t.type) +
                         " got past describe_gguf_layer's type checks");
}

/// A view of the rows of one tensor: its info and its bytes in the mapping (raw() checks the
/// file is still the one mapped; the rows are copied out at once).
struct GgufRows {
  const GgufTensorInfo* info = nullptr;
  const std::byte* data = nullptr;

  GgufRows(const GgufFile& f, const std::string& name) : info(&f.info(name)), data(f.raw(name).data()) {}

  /// Rows [first, first + dst.rows()) into dst [rows, ne[0]], converted to its scalar.
  template <class Dst>
  void to(Index first, Dst&& dst) const {
    std::vector<float> row(static_cast<std::size_t>(info->cols()));
    for (Index r = 0; r < dst.rows(); ++r) {
      gguf_row_to_float(*info, data, first + r, row.data());
      for (Index c = 0; c < dst.cols(); ++c)
        dst(r, c) = static_cast<typename std::decay_t<Dst>::Scalar>(row[static_cast<std::size_t>(c)]);
    }
  }
  /// Rows [first, first + count) as blocks, byte for byte.
  template <kernels::QuantBlock Block>
  [[nodiscard]] std::vector<Block> blocks(Index first, Index count) const {
    const std::size_t row_bytes = gguf_row_bytes(*info);
    std::vector<Block> out(static_cast<std::size_t>(count) * row_bytes / sizeof(Block));
    if (!out.empty())
      std::memcpy(out.data(), data + static_cast<std::size_t>(first) * row_bytes, out.size() * sizeof(Block));
    return out;
  }
};

/// Where expert e's projection `proj` ("gate", "up", "down") lives: tensor and first row.
struct GgufExpertRows {
  std::string name;
  Index first_row = 0;
};

inline GgufExpertRows gguf_expert_rows(const GgufLayerInfo& info, std::string_view proj, Index e, bool shared) {
  if (shared) return {info.tensor_name("ffn_" + std::string(proj) + "_shexp.weight"), 0};
  if (info.fused_gate_up && proj != "down")
    return {info.tensor_name("ffn_gate_up_exps.weight"), 2 * e * info.d_ff + (proj == "up" ? info.d_ff : 0)};
  const Index rows = proj == "down" ? info.d_model : info.d_ff;
  if (info.stacked) return {info.tensor_name("ffn_" + std::string(proj) + "_exps.weight"), e * rows};
  return {info.tensor_name("ffn_" + std::string(proj) + "." + std::to_string(e) + ".weight"), 0};
}

// The layer types' parts, told apart at compile time.
template <class>
struct GgufBank {
  static constexpr bool supported = false;
};
template <class S>
struct GgufBank<SwiGLUExperts<S>> {
  static constexpr bool supported = true, swiglu = true, quantized = false;
};
template <kernels::QuantBlock B>
struct GgufBank<QuantizedSwiGLUExperts<B>> {
  static constexpr bool supported = true, swiglu = true, quantized = true;
  using block = B;
};
template <class S>
struct GgufBank<GptOssExperts<S>> {
  static constexpr bool supported = true, swiglu = false, quantized = false;
};
template <kernels::QuantBlock B>
struct GgufBank<QuantizedGptOssExperts<B>> {
  static constexpr bool supported = true, swiglu = false, quantized = true;
  using block = B;
};

template <class>
inline constexpr bool gguf_false = false;

/// The families a layer of experts E, router R and combiner C can be: the router's gating and
/// the combiner decide.
template <class E, class R, class C>
constexpr bool gguf_layer_is(GgufFamily f) {
  using S = typename R::scalar_type;
  if constexpr (!GgufBank<E>::supported) {
    return false;
  } else if constexpr (GgufBank<E>::swiglu) {
    if constexpr (std::is_same_v<R, SoftmaxTopKRouter<S>> && std::is_same_v<C, WeightedSumCombiner<S>>)
      return f == GgufFamily::mixtral || f == GgufFamily::olmoe;
    else if constexpr (std::is_same_v<R, SoftmaxTopKRouter<S>> && std::is_same_v<C, SharedExpertCombiner<E, SharedGate::sigmoid>>)
      return f == GgufFamily::qwen2_moe;
    else if constexpr (std::is_same_v<R, GroupLimitedRouter<S>> && std::is_same_v<C, SharedExpertCombiner<E, SharedGate::none>>)
      return f == GgufFamily::deepseek_v3;
    else
      return false;
  } else {
    return f == GgufFamily::gpt_oss && std::is_same_v<R, TopKSoftmaxRouter<S>> && std::is_same_v<C, WeightedSumCombiner<S>>;
  }
}

/// "mixtral or olmoe", "qwen2_moe", ...: the families a layer type can be.
template <class E, class R, class C>
std::string gguf_families_of() {
  std::string out;
  for (const GgufFamily f : {GgufFamily::mixtral, GgufFamily::olmoe, GgufFamily::qwen2_moe, GgufFamily::deepseek_v3,
                             GgufFamily::gpt_oss})
    if (gguf_layer_is<E, R, C>(f)) out += (out.empty() ? "" : " or ") + std::string(gguf_family_name(f));
  return out;
}

template <class Layer>
inline constexpr bool gguf_layer_supported =
    gguf_layer_is<typename Layer::expert_type, typename Layer::router_type, typename Layer::combiner_type>(GgufFamily::mixtral) ||
    gguf_layer_is<typename Layer::expert_type, typename Layer::router_type, typename Layer::combiner_type>(GgufFamily::qwen2_moe) ||
    gguf_layer_is<typename Layer::expert_type, typename Layer::router_type, typename Layer::combiner_type>(GgufFamily::deepseek_v3) ||
    gguf_layer_is<typename Layer::expert_type, typename Layer::router_type, typename Layer::combiner_type>(GgufFamily::gpt_oss);

/// A SwiGLU bank of E experts (routed) or of the one shared expert.
template <class Bank>
Bank gguf_swiglu_bank(const GgufFile& f, const GgufLayerInfo& info, bool shared) {
  const Index E = shared ? 1 : info.num_experts;
  const Index d = info.d_model, ff = shared ? info.shared_d_ff : info.d_ff;
  Bank bank(E, d, ff);
  std::optional<GgufRows> gate, up, down;  // one view per tensor (stacked or shared)
  for (Index e = 0; e < E; ++e) {
    const GgufExpertRows g = gguf_expert_rows(info, "gate", e, shared), u = gguf_expert_rows(info, "up", e, shared),
                         dn = gguf_expert_rows(info, "down", e, shared);
    if (!gate || gate->info->name != g.name) gate.emplace(f, g.name);
    if (!up || up->info->name != u.name) up.emplace(f, u.name);
    if (!down || down->info->name != dn.name) down.emplace(f, dn.name);
    if constexpr (GgufBank<Bank>::quantized) {
      using B = typename GgufBank<Bank>::block;
      bank.gate_up(e).set_rows(0, ff, gate->template blocks<B>(g.first_row, ff).data());
      bank.gate_up(e).set_rows(ff, ff, up->template blocks<B>(u.first_row, ff).data());
      bank.down(e).set_rows(0, d, down->template blocks<B>(dn.first_row, d).data());
    } else {
      gate->to(g.first_row, bank.gate_proj(e));
      up->to(u.first_row, bank.up_proj(e));
      down->to(dn.first_row, bank.down_proj(e));
    }
  }
  return bank;
}

/// A GPT-OSS bank: gate and up are separate tensors in the file, interleaved in the bank (gate
/// unit j at 2j, up unit j at 2j + 1), and their biases likewise.
template <class Bank>
Bank gguf_gpt_oss_bank(const GgufFile& f, const GgufLayerInfo& info) {
  const Index E = info.num_experts, d = info.d_model, ff = info.d_ff;
  Bank bank(E, d, ff);
  const GgufRows gate(f, info.tensor_name("ffn_gate_exps.weight")), up(f, info.tensor_name("ffn_up_exps.weight")),
      down(f, info.tensor_name("ffn_down_exps.weight"));
  using S = typename Bank::scalar_type;
  for (Index e = 0; e < E; ++e) {
    if constexpr (GgufBank<Bank>::quantized) {
      using B = typename GgufBank<Bank>::block;
      const std::vector<B> g = gate.template blocks<B>(e * ff, ff), u = up.template blocks<B>(e * ff, ff);
      const auto per_row = static_cast<std::size_t>(bank.gate_up(e).blocks_per_row());
      for (Index j = 0; j < ff; ++j) {
        bank.gate_up(e).set_rows(2 * j, 1, g.data() + static_cast<std::size_t>(j) * per_row);
        bank.gate_up(e).set_rows(2 * j + 1, 1, u.data() + static_cast<std::size_t>(j) * per_row);
      }
      bank.down(e).set_rows(0, d, down.template blocks<B>(e * d, d).data());
    } else {
      RowMatrix<S> g(ff, d), u(ff, d), dn(d, ff);
      gate.to(e * ff, g);
      up.to(e * ff, u);
      down.to(e * d, dn);
      auto gu = bank.gate_up(e);  // [d, 2ff]
      for (Index j = 0; j < ff; ++j) {
        gu.col(2 * j) = g.row(j).transpose();
        gu.col(2 * j + 1) = u.row(j).transpose();
      }
      bank.down(e) = dn.transpose();
    }
  }
  using BS = std::decay_t<decltype(bank.gate_up_bias()(0, 0))>;
  RowMatrix<BS> gb(E, ff), ub(E, ff), db(E, d);
  GgufRows(f, info.tensor_name("ffn_gate_exps.bias")).to(0, gb);
  GgufRows(f, info.tensor_name("ffn_up_exps.bias")).to(0, ub);
  GgufRows(f, info.tensor_name("ffn_down_exps.bias")).to(0, db);
  for (Index j = 0; j < ff; ++j) {
    bank.gate_up_bias().col(2 * j) = gb.col(j);
    bank.gate_up_bias().col(2 * j + 1) = ub.col(j);
  }
  bank.down_bias() = db;
  return bank;
}

template <class S>
RowMatrix<S> gguf_router_weight(const GgufFile& f, const GgufLayerInfo& info) {
  RowMatrix<S> w(info.num_experts, info.d_model);
  GgufRows(f, info.tensor_name("ffn_gate_inp.weight")).to(0, w);
  return w;
}

template <class S>
Vector<S> gguf_vector(const GgufFile& f, const std::string& name, Index n) {
  RowMatrix<S> v(1, n);
  GgufRows(f, name).to(0, v);
  return v.row(0).transpose();
}

/// Builds the layer from checked info. Layer's family and expert kind must fit the file.
template <class Layer>
Layer gguf_build(const GgufFile& f, const GgufLayerInfo& info) {
  using E = typename Layer::expert_type;
  using R = typename Layer::router_type;
  using C = typename Layer::combiner_type;
  using RS = typename R::scalar_type;
  static_assert(gguf_layer_supported<Layer>,
                "load_gguf_layer: Layer must be a family alias (MixtralMoE<S>, Qwen2MoE<S>, DeepSeekV3MoE<S>, "
                "GptOssMoE<S>) or a quantized one (QuantizedMixtralMoE<Block>, ...) (docs/gguf.md#loading-moe-layers)");
  const std::string gate_name = info.stacked ? info.tensor_name("ffn_gate_exps.weight") : info.tensor_name("ffn_gate.0.weight");
  if (!gguf_layer_is<E, R, C>(info.family))
    throw TensorMismatchError(info.file, info.tensor_name("ffn_gate_inp.weight"),
                              "expected a " + gguf_families_of<E, R, C>() + " layer (the type asked for), got a " +
                                  std::string(gguf_family_name(info.family)) + " layer (general.architecture '" +
                                  info.architecture + "')");
  if constexpr (GgufBank<E>::quantized) {
    constexpr GgmlType want = ggml_type_of<typename GgufBank<E>::block>;
    if (info.expert_type != want)
      throw TensorMismatchError(info.file, gate_name,
                                "expected " + std::string(ggml_type_name(want)) +
                                    " experts (a quantized layer takes the file's blocks as they are: no requantization; "
                                    "a float layer takes any type), got " +
                                    ggml_type_text(info.expert_type));
  }
  const auto build = [&] {
    if constexpr (GgufBank<E>::swiglu) {
      E experts = gguf_swiglu_bank<E>(f, info, false);
      if constexpr (std::is_same_v<R, SoftmaxTopKRouter<RS>>) {
        R router(gguf_router_weight<RS>(f, info), info.top_k, SoftmaxTopK<RS>{info.renormalize});
        if constexpr (std::is_same_v<C, WeightedSumCombiner<RS>>) {
          return Layer(std::move(experts), std::move(router), C{});
        } else {
          C combiner(gguf_swiglu_bank<E>(f, info, true));
          combiner.gate_weight() = gguf_vector<RS>(f, info.tensor_name("ffn_gate_inp_shexp.weight"), info.d_model);
          return Layer(std::move(experts), std::move(router), std::move(combiner));
        }
      } else {
        SigmoidGroupLimited<RS> gating;
        gating.n_group = info.n_group;
        gating.topk_group = info.topk_group;
        gating.routed_scaling_factor = static_cast<RS>(info.routed_scaling_factor);
        gating.renormalize = info.renormalize;
        if (info.correction_bias)
          gating.correction_bias = gguf_vector<RS>(f, info.tensor_name("exp_probs_b.bias"), info.num_experts);
        R router(gguf_router_weight<RS>(f, info), info.top_k, std::move(gating));
        C combiner(gguf_swiglu_bank<E>(f, info, true));
        return Layer(std::move(experts), std::move(router), std::move(combiner));
      }
    } else {
      E experts = gguf_gpt_oss_bank<E>(f, info);
      R router(gguf_router_weight<RS>(f, info), info.top_k, TopKSoftmax<RS>{},
               gguf_vector<RS>(f, info.tensor_name("ffn_gate_inp.bias"), info.num_experts));
      return Layer(std::move(experts), std::move(router), C{});
    }
  };
  try {
    return build();
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string("moe::io::load_gguf_layer(): ") + e.what());
  }
}

/// Calls f with the layer of family alias FloatLayer<S> or QuantLayer<Block> the info calls for.
template <template <class> class FloatLayer, template <class> class QuantLayer, class S, bool AsFloat, class F>
decltype(auto) gguf_visit_family(const GgufFile& file, const GgufLayerInfo& info, F& f) {
  using Result = std::invoke_result_t<F&, FloatLayer<S>&>;
  const auto call = [&]<class Layer>() -> Result {
    static_assert(std::is_same_v<std::invoke_result_t<F&, Layer&>, Result>,
                  "visit_gguf_layer: f must return the same type for every layer type (docs/gguf.md#loading-moe-layers)");
    Layer layer = gguf_build<Layer>(file, info);
    return f(layer);
  };
  if constexpr (!AsFloat) {
    switch (info.expert_type) {
      case GgmlType::Q8_0: return call.template operator()<QuantLayer<kernels::BlockQ8_0>>();
      case GgmlType::Q4_0: return call.template operator()<QuantLayer<kernels::BlockQ4_0>>();
      case GgmlType::Q4_K: return call.template operator()<QuantLayer<kernels::BlockQ4_K>>();
      default: break;
    }
  }
  return call.template operator()<FloatLayer<S>>();
}

template <class S, bool AsFloat, class F>
decltype(auto) gguf_visit(const GgufFile& file, Index layer, F& f) {
  const GgufLayerInfo info = describe_gguf_layer(file, layer);
  switch (info.family) {
    case GgufFamily::qwen2_moe: return gguf_visit_family<Qwen2MoE, QuantizedQwen2MoE, S, AsFloat>(file, info, f);
    case GgufFamily::deepseek_v3:
      return gguf_visit_family<DeepSeekV3MoE, QuantizedDeepSeekV3MoE, S, AsFloat>(file, info, f);
    case GgufFamily::gpt_oss: return gguf_visit_family<GptOssMoE, QuantizedGptOssMoE, S, AsFloat>(file, info, f);
    default: return gguf_visit_family<MixtralMoE, QuantizedMixtralMoE, S, AsFloat>(file, info, f);
  }
}

// ---------------------------------------------------------------------------------------------
// Writing

/// A float bank's projection rows as floats in file order.
template <class M>
void gguf_append_rows(std::vector<float>& out, const M& m) {
  for (Index r = 0; r < m.rows(); ++r)
    for (Index c = 0; c < m.cols(); ++c) out.push_back(static_cast<float>(m(r, c)));
}

template <kernels::QuantBlock Block>
void gguf_append_blocks(std::vector<std::byte>& out, const kernels::QuantMatrix<Block>& m, Index first, Index count) {
  std::vector<Block> blocks(static_cast<std::size_t>(count * m.blocks_per_row()));
  m.get_rows(first, count, blocks.data());
  const std::size_t at = out.size();
  out.resize(at + blocks.size() * sizeof(Block));
  if (!blocks.empty()) std::memcpy(out.data() + at, blocks.data(), blocks.size() * sizeof(Block));
}

inline std::uint32_t gguf_u32(Index v, const char* what) {
  moe::detail::require(v >= 0 && v <= Index{std::numeric_limits<std::uint32_t>::max()}, "moe::io::save_gguf_layer()",
                       what, "a value that fits a u32 (as llama.cpp reads it)", v);
  return static_cast<std::uint32_t>(v);
}

/// A one-dimensional F32 tensor.
template <class V>
void gguf_put_vector(GgufWriter& w, const std::string& name, const V& v) {
  std::vector<float> values;
  values.reserve(static_cast<std::size_t>(v.size()));
  for (Index i = 0; i < v.size(); ++i) values.push_back(static_cast<float>(v(i)));
  w.add_tensor(name, GgmlType::F32, {static_cast<std::int64_t>(v.size())}, std::span<const float>(values));
}

/// Writes a SwiGLU bank (routed: stacked ffn_*_exps; shared: ffn_*_shexp).
template <class Bank>
void gguf_put_swiglu(GgufWriter& w, const Bank& bank, const std::string& blk, bool shared, GgmlType type) {
  const Index E = bank.num_experts(), d = bank.input_dim(), ff = bank.d_ff();
  const std::string suffix = shared ? "_shexp.weight" : "_exps.weight";
  std::vector<std::int64_t> gate_ne{d, ff}, down_ne{ff, d};
  if (!shared) gate_ne.push_back(E), down_ne.push_back(E);
  if constexpr (GgufBank<Bank>::quantized) {
    std::vector<std::byte> g, u, dn;
    for (Index e = 0; e < E; ++e) {
      gguf_append_blocks(g, bank.gate_up(e), 0, ff);
      gguf_append_blocks(u, bank.gate_up(e), ff, ff);
      gguf_append_blocks(dn, bank.down(e), 0, d);
    }
    w.add_tensor(blk + "ffn_gate" + suffix, type, gate_ne, std::move(g));
    w.add_tensor(blk + "ffn_up" + suffix, type, gate_ne, std::move(u));
    w.add_tensor(blk + "ffn_down" + suffix, type, down_ne, std::move(dn));
  } else {
    std::vector<float> g, u, dn;
    for (Index e = 0; e < E; ++e) {
      gguf_append_rows(g, bank.gate_proj(e));
      gguf_append_rows(u, bank.up_proj(e));
      gguf_append_rows(dn, bank.down_proj(e));
    }
    w.add_tensor(blk + "ffn_gate" + suffix, type, gate_ne, std::span<const float>(g));
    w.add_tensor(blk + "ffn_up" + suffix, type, gate_ne, std::span<const float>(u));
    w.add_tensor(blk + "ffn_down" + suffix, type, down_ne, std::span<const float>(dn));
  }
}

/// Writes a GPT-OSS bank: the interleaved gate and up rows (and biases) apart, as llama.cpp
/// stores them.
template <class Bank>
void gguf_put_gpt_oss(GgufWriter& w, const Bank& bank, const std::string& blk, GgmlType type) {
  const Index E = bank.num_experts(), d = bank.input_dim(), ff = bank.d_ff();
  if constexpr (GgufBank<Bank>::quantized) {
    std::vector<std::byte> g, u, dn;
    for (Index e = 0; e < E; ++e) {
      for (Index j = 0; j < ff; ++j) {
        gguf_append_blocks(g, bank.gate_up(e), 2 * j, 1);
        gguf_append_blocks(u, bank.gate_up(e), 2 * j + 1, 1);
      }
      gguf_append_blocks(dn, bank.down(e), 0, d);
    }
    w.add_tensor(blk + "ffn_gate_exps.weight", type, {d, ff, E}, std::move(g));
    w.add_tensor(blk + "ffn_up_exps.weight", type, {d, ff, E}, std::move(u));
    w.add_tensor(blk + "ffn_down_exps.weight", type, {ff, d, E}, std::move(dn));
  } else {
    std::vector<float> g, u, dn;
    for (Index e = 0; e < E; ++e) {
      const auto gu = bank.gate_up(e);  // [d, 2ff]
      for (Index j = 0; j < ff; ++j) gguf_append_rows(g, gu.col(2 * j).transpose());
      for (Index j = 0; j < ff; ++j) gguf_append_rows(u, gu.col(2 * j + 1).transpose());
      gguf_append_rows(dn, bank.down(e).transpose());
    }
    w.add_tensor(blk + "ffn_gate_exps.weight", type, {d, ff, E}, std::span<const float>(g));
    w.add_tensor(blk + "ffn_up_exps.weight", type, {d, ff, E}, std::span<const float>(u));
    w.add_tensor(blk + "ffn_down_exps.weight", type, {ff, d, E}, std::span<const float>(dn));
  }
  std::vector<float> gb, ub, db;
  for (Index e = 0; e < E; ++e) {
    for (Index j = 0; j < ff; ++j) gb.push_back(static_cast<float>(bank.gate_up_bias()(e, 2 * j)));
    for (Index j = 0; j < ff; ++j) ub.push_back(static_cast<float>(bank.gate_up_bias()(e, 2 * j + 1)));
  }
  gguf_append_rows(db, bank.down_bias());
  w.add_tensor(blk + "ffn_gate_exps.bias", GgmlType::F32, {ff, E}, std::span<const float>(gb));
  w.add_tensor(blk + "ffn_up_exps.bias", GgmlType::F32, {ff, E}, std::span<const float>(ub));
  w.add_tensor(blk + "ffn_down_exps.bias", GgmlType::F32, {d, E}, std::span<const float>(db));
}

/// Throws unless a quantized bank's rows are whole blocks (a GGUF row is blocks only).
template <class Bank>
void gguf_require_whole_blocks(const Bank& bank, const char* what) {
  if constexpr (GgufBank<Bank>::quantized) {
    using B = typename GgufBank<Bank>::block;
    constexpr Index n = static_cast<Index>(kernels::block_elements<B>);
    const auto check = [&](const char* dim, Index v) {
      moe::detail::require(v % n == 0, "moe::io::save_gguf_layer()", moe::detail::concat(what, " ", dim),
                           moe::detail::concat("a multiple of ", n, " (the block of ", ggml_type_name(ggml_type_of<B>),
                                               ": a GGUF row is whole blocks)"),
                           v);
    };
    check("d_model", bank.input_dim());
    check("d_ff", bank.d_ff());
  }
}

}  // namespace detail

// =============================================================================================
// Bodies

inline GgufLayerInfo describe_gguf_layer(const GgufFile& file, Index layer) {
  moe::detail::require(layer >= 0, "moe::io::describe_gguf_layer()", "layer (block index)", ">= 0", layer);
  const std::string fname = file.display_name();
  GgufLayerInfo info;
  info.file = fname;
  info.layer = layer;
  info.architecture = std::string(file.get<std::string_view>("general.architecture"));
  const std::string& arch = info.architecture;
  if (arch == "llama") info.family = GgufFamily::mixtral;
  else if (arch == "olmoe") info.family = GgufFamily::olmoe;
  else if (arch == "qwen2moe") info.family = GgufFamily::qwen2_moe;
  else if (arch == "deepseek2") info.family = GgufFamily::deepseek_v3;
  else if (arch == "gpt-oss") info.family = GgufFamily::gpt_oss;
  else
    throw MetadataError(fname, "general.architecture",
                        "expected an MoE architecture of 'llama' (Mixtral), 'olmoe', 'qwen2moe', 'deepseek2' "
                        "(DeepSeek-V3) or 'gpt-oss', got '" + detail::printable(arch) + "'");
  const std::string p = arch + ".";
  constexpr Index big = std::numeric_limits<Index>::max();

  // Sizes.
  if (info.family == GgufFamily::mixtral && file.has(p + "expert_count") && file.get_int(p + "expert_count") == 0)
    throw MetadataError(fname, p + "expert_count", "expected a value >= 1 (an MoE model), got 0 (a dense llama model)");
  info.num_experts = detail::gguf_int_in(file, p + "expert_count", 1, big);
  info.top_k = detail::gguf_int_in(file, p + "expert_used_count", 1, info.num_experts, "at most expert_count");
  info.d_model = detail::gguf_int_in(file, p + "embedding_length", 1, big);
  if (const GgufValue* blocks = file.find(p + "block_count"); blocks != nullptr && blocks->as_int() <= layer)
    throw MetadataError(fname, p + "block_count",
                        "expected more than " + std::to_string(layer) + " blocks (block " + std::to_string(layer) +
                            " asked for), got " + blocks->describe());
  const bool ff_fallback = info.family == GgufFamily::mixtral || info.family == GgufFamily::olmoe;
  std::string ff_key = p + "expert_feed_forward_length";
  if (ff_fallback && !file.has(ff_key) && file.has(p + "feed_forward_length")) ff_key = p + "feed_forward_length";
  if (!file.has(ff_key))
    throw MissingMetadataError(fname, ff_key,
                               "expected a key of this name" +
                                   (ff_fallback ? " or '" + p + "feed_forward_length'" : std::string()) +
                                   " (the experts' width), got none among the file's " +
                                   std::to_string(file.metadata().size()) + " keys");
  info.d_ff = detail::gguf_int_or_array(file, ff_key, layer);
  if (info.d_ff < 1) throw MetadataError(fname, ff_key, "expected a value >= 1, got " + std::to_string(info.d_ff));

  // Router settings: llama.cpp's for each architecture, expert_weights_norm where present.
  const auto bool_or = [&](const std::string& key, bool fallback) { return file.get_or<bool>(key, fallback); };
  info.renormalize = bool_or(p + "expert_weights_norm", info.family == GgufFamily::mixtral);
  std::string ff_sh_key;
  if (info.family == GgufFamily::qwen2_moe) {
    ff_sh_key = p + "expert_shared_feed_forward_length";
    if (!file.has(ff_sh_key) && file.has(p + "feed_forward_length")) ff_sh_key = p + "feed_forward_length";
    if (!file.has(ff_sh_key))
      throw MissingMetadataError(fname, p + "expert_shared_feed_forward_length",
                                 "expected a key of this name or '" + p +
                                     "feed_forward_length' (the shared expert's width), got neither among the file's " +
                                     std::to_string(file.metadata().size()) + " keys");
    info.shared_d_ff = detail::gguf_int_or_array(file, ff_sh_key, layer);
    if (info.shared_d_ff < 1)
      throw MetadataError(fname, ff_sh_key, "expected a value >= 1, got " + std::to_string(info.shared_d_ff));
  }
  if (info.family == GgufFamily::deepseek_v3) {
    const std::string lead = p + "leading_dense_block_count";
    if (const GgufValue* v = file.find(lead); v != nullptr && v->as_int() > layer)
      throw MetadataError(fname, lead,
                          "expected at most " + std::to_string(layer) + " (block " + std::to_string(layer) +
                              " asked for: the leading blocks are dense, without experts), got " + v->describe());
    const std::string gating = p + "expert_gating_func";
    const GgufValue* g = file.find(gating);
    if (g == nullptr)
      throw MissingMetadataError(fname, gating,
                                 "expected a key of this name, 2 (sigmoid: DeepSeek-V3), got none (llama.cpp then "
                                 "takes softmax, DeepSeek-V2's gating, which DeepSeekV3MoE does not implement)");
    if (g->as_int() != 2)
      throw MetadataError(fname, gating,
                          "expected 2 (sigmoid: DeepSeek-V3's gating, the one DeepSeekV3MoE implements), got " +
                              g->describe() + (g->as_int() == 1 ? " (softmax: DeepSeek-V2)" : ""));
    const Index shared = detail::gguf_int_in(file, p + "expert_shared_count", 1, big, "DeepSeekV3MoE has shared experts");
    if (info.d_ff > big / shared)
      throw MetadataError(fname, p + "expert_shared_count", "expected a count whose shared width fits an int64, got " +
                                                                std::to_string(shared));
    info.shared_d_ff = info.d_ff * shared;
    ff_sh_key = p + "expert_feed_forward_length x " + p + "expert_shared_count";
    if (const GgufValue* s = file.find(p + "expert_weights_scale")) {
      const double scale = s->as_double();
      info.routed_scaling_factor = scale == 0.0 ? 1.0 : scale;  // llama.cpp: 0 means no scaling
    }
    const GgufValue* groups = file.find(p + "expert_group_count");
    const Index n_group = groups == nullptr || groups->as_int() == 0 ? 1 : detail::gguf_int_in(file, p + "expert_group_count", 1, info.num_experts);
    if (info.num_experts % n_group != 0)
      throw MetadataError(fname, p + "expert_group_count",
                          "expected a divisor of expert_count = " + std::to_string(info.num_experts) + ", got " +
                              std::to_string(n_group));
    info.n_group = n_group;
    info.topk_group =
        n_group == 1 ? 1 : detail::gguf_int_in(file, p + "expert_group_used_count", 1, n_group, "at most expert_group_count");
    const Index reachable = info.topk_group * (info.num_experts / n_group);
    if (info.top_k > reachable)
      throw MetadataError(fname, p + "expert_used_count",
                          "expected at most expert_group_used_count x experts per group = " + std::to_string(reachable) +
                              ", got " + std::to_string(info.top_k));
  }

  // Tensors: names, shapes, types.
  const Index E = info.num_experts, d = info.d_model, ff = info.d_ff;
  const std::string sizes = "from " + p + "embedding_length, " + ff_key + ", " + p + "expert_count";
  const auto add = [&](std::string role, const GgufTensorInfo& t) {
    info.tensors.push_back({std::move(role), t.name, t.type, t.ne});
    return &t;
  };
  const auto floaty = [&](std::string role, const std::string& rest, const std::vector<std::int64_t>& ne,
                          const std::string& meaning) {
    const GgufTensorInfo& t = detail::gguf_shape(file, info.tensor_name(rest), ne, meaning);
    detail::gguf_require_float_readable(file, t);
    add(std::move(role), t);
  };
  floaty("router", "ffn_gate_inp.weight", {d, E}, "[d_model, num_experts] " + sizes);
  const GgufTensorInfo* first = nullptr;
  const auto expert = [&](std::string role, const std::string& rest, const std::vector<std::int64_t>& ne,
                          const std::string& meaning) {
    const GgufTensorInfo& t = detail::gguf_shape(file, info.tensor_name(rest), ne, meaning);
    if (first == nullptr) first = &t;
    detail::gguf_require_expert_type(file, t, *first);
    add(std::move(role), t);
  };
  const std::string in_out = "[d_model, d_ff, num_experts] " + sizes, out_in = "[d_ff, d_model, num_experts] " + sizes;
  // llama.cpp's order: a fused ffn_gate_up_exps first (not GPT-OSS's), then separate gate and up
  // tensors, and for older Mixtral files one tensor per expert.
  info.fused_gate_up = info.family != GgufFamily::gpt_oss && file.contains(info.tensor_name("ffn_gate_up_exps.weight"));
  info.stacked = info.fused_gate_up || file.contains(info.tensor_name("ffn_gate_exps.weight")) ||
                 !file.contains(info.tensor_name("ffn_gate.0.weight")) || info.family == GgufFamily::gpt_oss;
  if (info.fused_gate_up) {
    if (ff > big / 2) throw MetadataError(fname, ff_key, "expected a width whose double fits an int64, got " + std::to_string(ff));
    expert("gate_up", "ffn_gate_up_exps.weight", {d, 2 * ff, E}, "[d_model, 2 x d_ff, num_experts] " + sizes);
    expert("down", "ffn_down_exps.weight", {ff, d, E}, out_in);
  } else if (info.stacked) {
    expert("gate", "ffn_gate_exps.weight", {d, ff, E}, in_out);
    expert("up", "ffn_up_exps.weight", {d, ff, E}, in_out);
    expert("down", "ffn_down_exps.weight", {ff, d, E}, out_in);
  } else {
    for (Index e = 0; e < E; ++e) {
      const std::string x = "." + std::to_string(e) + ".weight";
      expert("gate", "ffn_gate" + x, {d, ff}, "[d_model, d_ff] " + sizes);
      expert("up", "ffn_up" + x, {d, ff}, "[d_model, d_ff] " + sizes);
      expert("down", "ffn_down" + x, {ff, d}, "[d_ff, d_model] " + sizes);
    }
  }
  info.expert_type = first->type;
  if (info.shared_d_ff > 0) {
    const Index fs = info.shared_d_ff;
    const std::string shared_sizes = "[d_model, shared d_ff] from " + p + "embedding_length, " + ff_sh_key;
    expert("shared gate", "ffn_gate_shexp.weight", {d, fs}, shared_sizes);
    expert("shared up", "ffn_up_shexp.weight", {d, fs}, shared_sizes);
    expert("shared down", "ffn_down_shexp.weight", {fs, d}, "[shared d_ff, d_model] from " + ff_sh_key + ", " + p + "embedding_length");
  }
  if (info.family == GgufFamily::qwen2_moe)
    floaty("shared expert gate", "ffn_gate_inp_shexp.weight", {d}, "[d_model] from " + p + "embedding_length");
  if (info.family == GgufFamily::deepseek_v3 && file.contains(info.tensor_name("exp_probs_b.bias"))) {
    floaty("correction bias", "exp_probs_b.bias", {E}, "[num_experts] from " + p + "expert_count");
    info.correction_bias = true;
  }
  if (info.family == GgufFamily::gpt_oss) {
    floaty("router bias", "ffn_gate_inp.bias", {E}, "[num_experts] from " + p + "expert_count");
    floaty("gate bias", "ffn_gate_exps.bias", {ff, E}, "[d_ff, num_experts] " + sizes);
    floaty("up bias", "ffn_up_exps.bias", {ff, E}, "[d_ff, num_experts] " + sizes);
    floaty("down bias", "ffn_down_exps.bias", {d, E}, "[d_model, num_experts] " + sizes);
  }
  return info;
}

template <class F>
decltype(auto) visit_gguf_layer(const GgufFile& file, Index layer, F&& f) {
  return detail::gguf_visit<float, false>(file, layer, f);
}

template <class S, class F>
decltype(auto) visit_gguf_layer_as(const GgufFile& file, Index layer, F&& f) {
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>, "visit_gguf_layer_as: S must be float or double");
  return detail::gguf_visit<S, true>(file, layer, f);
}

template <class Layer>
Layer load_gguf_layer(const GgufFile& file, Index layer) {
  return detail::gguf_build<Layer>(file, describe_gguf_layer(file, layer));
}

/// Writes `layer` as block `block` of a GGUF file under llama.cpp's names for `family`, with
/// the metadata describe_gguf_layer reads (general.architecture and the {arch}.* keys; they
/// describe the model, so layers saved into one writer must be of one model): the router
/// ffn_gate_inp.weight (F32), the experts stacked in ffn_{gate,up,down}_exps.weight (float
/// banks as options.expert_type, quantized ones block for block), the shared experts
/// (ffn_*_shexp, and Qwen2-MoE's ffn_gate_inp_shexp), DeepSeek-V3's exp_probs_b.bias (when the
/// gating has one) and GPT-OSS's biases. load_gguf_layer and visit_gguf_layer give the layer
/// back: a float32 layer with F32 experts and a quantized one bit for bit.
///
/// Refused (std::invalid_argument, before anything is added): a family the layer's type is
/// not, a block < 0, a router bias (but GPT-OSS's), a Mixtral router that does not renormalise
/// (llama.cpp always does: save it as olmoe), a DeepSeek-V3 shared width that is not a multiple
/// of d_ff (llama.cpp sizes the shared experts as expert_shared_count x d_ff), GPT-OSS alpha
/// and limit other than llama.cpp's 1.702 and 7, quantized rows that are not whole blocks,
/// options.expert_type other than the block type for a quantized layer or not one of F32, F16,
/// BF16, Q8_0, Q4_0, Q4_K for a float one, a size past a u32. The writer's own refusals (a
/// tensor name already added: the block saved twice; a value its quantizer refuses) come as
/// the tensors are added, so some of the layer's may be in the writer by then. The capacity
/// and executor are not written.
template <class E, class R, class C, class A, class X>
void save_gguf_layer(GgufWriter& w, const MoELayer<E, R, C, A, X>& layer, Index block, GgufFamily family,
                     const GgufSaveOptions& options = {}) {
  constexpr const char* where = "moe::io::save_gguf_layer()";
  static_assert(detail::gguf_layer_is<E, R, C>(GgufFamily::mixtral) || detail::gguf_layer_is<E, R, C>(GgufFamily::qwen2_moe) ||
                    detail::gguf_layer_is<E, R, C>(GgufFamily::deepseek_v3) || detail::gguf_layer_is<E, R, C>(GgufFamily::gpt_oss),
                "save_gguf_layer: the layer must be of a GGUF family (MixtralMoE, Qwen2MoE, DeepSeekV3MoE, GptOssMoE, "
                "float or quantized; docs/gguf.md#loading-moe-layers)");
  using RS = typename R::scalar_type;
  moe::detail::require(detail::gguf_layer_is<E, R, C>(family), where, "family", "one this layer type is",
                       gguf_family_name(family));
  moe::detail::require(block >= 0, where, "block", ">= 0", block);
  const E& experts = layer.experts();
  const auto& router = layer.router();
  const Index n_experts = layer.num_experts(), d = experts.input_dim(), ff = experts.d_ff();

  // The experts' type.
  GgmlType type = GgmlType::F32;
  if constexpr (detail::GgufBank<E>::quantized) {
    type = ggml_type_of<typename detail::GgufBank<E>::block>;
    if (options.expert_type && *options.expert_type != type)
      moe::detail::throw_invalid(where, "options.expert_type",
                                 moe::detail::concat(ggml_type_name(type), ", the layer's blocks (no requantization)"),
                                 ggml_type_name(*options.expert_type));
  } else {
    type = options.expert_type.value_or(GgmlType::F32);
    const GgmlTypeInfo* ti = ggml_type_info(static_cast<std::uint32_t>(type));
    moe::detail::require(ti != nullptr && ti->to_float, where, "options.expert_type", "F32, F16, BF16, Q8_0, Q4_0 or Q4_K",
                         ti != nullptr ? ti->name : std::string_view("an unknown type"));
  }
  detail::gguf_require_whole_blocks(experts, "experts");

  // What llama.cpp's graph for the family can express.
  if (family != GgufFamily::gpt_oss)
    moe::detail::require(router.bias().size() == 0, where, "router bias",
                         "none (llama.cpp's graph for this family has no router bias)",
                         moe::detail::concat("a bias of length ", router.bias().size()));
  if constexpr (std::is_same_v<R, SoftmaxTopKRouter<RS>>)
    moe::detail::require(family != GgufFamily::mixtral || router.gating().renormalize, where, "router renormalize",
                         "true (llama.cpp's llama graph always renormalises; save as GgufFamily::olmoe to keep false)",
                         "false");
  Index shared_count = 0;
  if constexpr (!std::is_same_v<C, WeightedSumCombiner<RS>>) {
    const auto& shared = layer.combiner().shared_expert();
    detail::gguf_require_whole_blocks(shared, "shared expert");
    moe::detail::require(shared.input_dim() == d, where, "shared expert d_model", d, shared.input_dim());
    if (family == GgufFamily::deepseek_v3) {
      moe::detail::require(shared.d_ff() % ff == 0, where, "shared expert d_ff",
                           moe::detail::concat("a multiple of d_ff = ", ff,
                                               " (llama.cpp sizes DeepSeek's shared experts as expert_shared_count x d_ff)"),
                           shared.d_ff());
      shared_count = shared.d_ff() / ff;
    }
  }
  if constexpr (!detail::GgufBank<E>::swiglu) {
    moe::detail::require(experts.alpha() == static_cast<decltype(experts.alpha())>(1.702) &&
                             experts.limit() == static_cast<decltype(experts.limit())>(7),
                         where, "GPT-OSS alpha and limit", "1.702 and 7 (llama.cpp's, which GGUF does not store)",
                         moe::detail::concat(experts.alpha(), " and ", experts.limit()));
  }

  // Sizes past a u32 (llama.cpp's type for them) before anything is set; the others are below these.
  detail::gguf_u32(n_experts, "num_experts");
  detail::gguf_u32(d, "d_model");
  detail::gguf_u32(ff, "d_ff");
  if constexpr (!std::is_same_v<C, WeightedSumCombiner<RS>>)
    detail::gguf_u32(layer.combiner().shared_expert().d_ff(), "shared expert d_ff");

  // Metadata.
  const std::string arch(gguf_architecture(family)), p = arch + ".", blk = "blk." + std::to_string(block) + ".";
  w.set("general.architecture", arch);
  w.set(p + "expert_count", detail::gguf_u32(n_experts, "num_experts"));
  w.set(p + "expert_used_count", detail::gguf_u32(router.k(), "top_k"));
  w.set(p + "embedding_length", detail::gguf_u32(d, "d_model"));
  w.set(p + "expert_feed_forward_length", detail::gguf_u32(ff, "d_ff"));
  if (family == GgufFamily::mixtral || family == GgufFamily::olmoe)
    w.set(p + "feed_forward_length", detail::gguf_u32(ff, "d_ff"));  // these graphs size the experts by it
  if (family == GgufFamily::olmoe || family == GgufFamily::qwen2_moe) {
    if constexpr (std::is_same_v<R, SoftmaxTopKRouter<RS>>) w.set(p + "expert_weights_norm", router.gating().renormalize);
  }
  if constexpr (!std::is_same_v<C, WeightedSumCombiner<RS>>) {
    if (family == GgufFamily::qwen2_moe)
      w.set(p + "expert_shared_feed_forward_length",
            detail::gguf_u32(layer.combiner().shared_expert().d_ff(), "shared expert d_ff"));
  }
  if constexpr (std::is_same_v<R, GroupLimitedRouter<RS>>) {
    const auto& g = router.gating();
    w.set(p + "expert_shared_count", detail::gguf_u32(shared_count, "expert_shared_count"));
    w.set(p + "expert_gating_func", std::uint32_t{2});  // sigmoid
    w.set(p + "expert_weights_norm", g.renormalize);
    w.set(p + "expert_weights_scale", static_cast<float>(g.routed_scaling_factor));
    w.set(p + "expert_group_count", detail::gguf_u32(g.n_group, "n_group"));
    w.set(p + "expert_group_used_count", detail::gguf_u32(g.topk_group, "topk_group"));
  }

  // Tensors.
  {
    std::vector<float> rw;
    detail::gguf_append_rows(rw, router.weight());
    w.add_tensor(blk + "ffn_gate_inp.weight", GgmlType::F32, {d, n_experts}, std::span<const float>(rw));
  }
  if constexpr (detail::GgufBank<E>::swiglu) {
    detail::gguf_put_swiglu(w, experts, blk, false, type);
  } else {
    detail::gguf_put_gpt_oss(w, experts, blk, type);
    if (router.bias().size() == 0)
      detail::gguf_put_vector(w, blk + "ffn_gate_inp.bias", Vector<RS>::Zero(n_experts));
    else
      detail::gguf_put_vector(w, blk + "ffn_gate_inp.bias", router.bias());
  }
  if constexpr (!std::is_same_v<C, WeightedSumCombiner<RS>>) {
    detail::gguf_put_swiglu(w, layer.combiner().shared_expert(), blk, true, type);
    if (family == GgufFamily::qwen2_moe) detail::gguf_put_vector(w, blk + "ffn_gate_inp_shexp.weight", layer.combiner().gate_weight());
  }
  if constexpr (std::is_same_v<R, GroupLimitedRouter<RS>>) {
    if (router.gating().correction_bias.size() != 0)
      detail::gguf_put_vector(w, blk + "exp_probs_b.bias", router.gating().correction_bias);
  }
}

/// As above, into a new file at `path` holding this layer alone (Error if it cannot be written).
template <class E, class R, class C, class A, class X>
void save_gguf_layer(const std::filesystem::path& path, const MoELayer<E, R, C, A, X>& layer, Index block,
                     GgufFamily family, const GgufSaveOptions& options = {}) {
  GgufWriter w;
  save_gguf_layer(w, layer, block, family, options);
  w.save(path);
}

}  // namespace moe::io

#endif  // MOE_IO_GGUF_LOADER_HPP

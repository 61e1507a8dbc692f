// Where an on-demand store (include/moe/store/) gets an expert's weights: one expert of a
// checkpoint, read from its tensors' byte ranges and materialised in the bank's compute layout.
#ifndef MOE_IO_EXPERT_SOURCE_HPP
#define MOE_IO_EXPERT_SOURCE_HPP

#include <moe/core/parameters.hpp>
#include <moe/core/types.hpp>
#include <moe/expert/packed_cache.hpp>
#include <moe/expert/quantized_experts.hpp>
#include <moe/expert/swiglu_experts.hpp>
#include <moe/kernels/packed_gemm.hpp>
#include <moe/io/error.hpp>
#include <moe/io/lazy_safetensors.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <string_view>
#include <utility>

namespace moe::io {

/// The three projection names of a SwiGLU expert under a layer prefix, "{e}" for the index.
struct SwiGLUExpertNames {
  std::string gate, up, down;

  /// Mixtral: experts.{e}.w1 (gate), w3 (up), w2 (down).
  static SwiGLUExpertNames mixtral() {
    return {"experts.{e}.w1.weight", "experts.{e}.w3.weight", "experts.{e}.w2.weight"};
  }
  /// OLMoE, Qwen2-MoE, DeepSeek-V3: experts.{e}.gate_proj / up_proj / down_proj.
  static SwiGLUExpertNames gate_up_down() {
    return {"experts.{e}.gate_proj.weight", "experts.{e}.up_proj.weight", "experts.{e}.down_proj.weight"};
  }
};

/// E SwiGLU experts of one layer of a LazyCheckpoint. `load(e, out)` reads expert e's three
/// tensors (only their byte ranges) into a one-expert SwiGLUExperts<S>, converted as the
/// in-memory loaders convert, so the expert computes the same bits as in a whole bank.
///
/// The source model of the store (docs/store.md): resident_type, num_experts(),
/// expert_bytes() (what a resident expert costs in memory), make_resident() and load().
/// Thread-safe: load may run on several threads at once.
template <class S>
class SwiGLUExpertSource {
 public:
  using scalar_type = S;
  using resident_type = SwiGLUExperts<S>;

  /// Reads the shapes of expert 0 and checks every expert's three tensors are listed with
  /// them (headers only; shards are opened as the names lead to them). num_experts comes from
  /// the router (its weight's rows).
  ///
  /// `compute` is the resident experts' ComputeType: ComputeType::bf16 (float only) makes them
  /// run bf16 products, and expert_bytes() counts their bf16 packed copy.
  SwiGLUExpertSource(LazyCheckpoint checkpoint, std::string prefix, Index num_experts,
                     SwiGLUExpertNames names = SwiGLUExpertNames::gate_up_down(), ComputeType compute = ComputeType::native)
      : checkpoint_(std::move(checkpoint)),
        prefix_(std::move(prefix)),
        names_(std::move(names)),
        num_experts_(num_experts),
        compute_(compute) {
    if (compute_ == ComputeType::bf16 && !std::is_same_v<S, float>)
      throw std::invalid_argument("SwiGLUExpertSource::SwiGLUExpertSource(): ComputeType::bf16 expected a float source, got double");
    if (num_experts_ < 1)
      throw std::invalid_argument("SwiGLUExpertSource::SwiGLUExpertSource(): num_experts expected >= 1, got " +
                                  std::to_string(num_experts_));
    const TensorInfo& g = checkpoint_.info(name(names_.gate, 0));
    if (g.shape.size() != 2)
      throw TensorMismatchError(checkpoint_.file(g.name).display_name(), g.name,
                                "expected shape [d_ff, d_model], got " + detail::format_shape(g.shape));
    d_ff_ = g.shape[0];
    d_model_ = g.shape[1];
    for (Index e = 0; e < num_experts_; ++e)
      for (std::size_t i = 0; i < 3; ++i) {
        const std::string n = name(pattern(i), e);
        const TensorInfo& t = checkpoint_.info(n);
        const auto want = shape(i);
        if (!std::equal(t.shape.begin(), t.shape.end(), want.begin(), want.end()))
          throw TensorMismatchError(checkpoint_.file(n).display_name(), n,
                                    "expected shape " + detail::format_shape(want) + ", got " +
                                        detail::format_shape(t.shape));
      }
  }

  [[nodiscard]] Index num_experts() const noexcept { return num_experts_; }
  [[nodiscard]] Index d_model() const noexcept { return d_model_; }
  [[nodiscard]] Index d_ff() const noexcept { return d_ff_; }
  /// Bytes of one materialised expert: its 3 d ff scalars in the checkpoint layout, and the
  /// packed copy its forward builds (docs/experts.md#packed-weights, panels padded).
  [[nodiscard]] std::size_t expert_bytes() const noexcept {
    const std::size_t packed =
        compute_ == ComputeType::bf16
            ? kernels::packed_bytes<float, bf16>(2 * d_ff_, d_model_) + kernels::packed_bytes<float, bf16>(d_model_, d_ff_)
            : kernels::packed_bytes<S, S>(2 * d_ff_, d_model_) + kernels::packed_bytes<S, S>(d_model_, d_ff_);
    return static_cast<std::size_t>(3 * d_model_ * d_ff_) * sizeof(S) + packed;
  }
  [[nodiscard]] ComputeType compute() const noexcept { return compute_; }
  /// The checkpoint name patterns, with the prefix ("{e}" for the expert).
  [[nodiscard]] typename SwiGLUExperts<S>::Names bank_names() const { return {prefix_ + names_.gate, prefix_ + names_.up, prefix_ + names_.down}; }

  /// A zeroed one-expert bank of the right shape.
  [[nodiscard]] resident_type make_resident() const {
    resident_type r(1, d_model_, d_ff_);
    if (compute_ != ComputeType::native) r.set_compute(compute_);
    return r;
  }

  /// Reads expert e into out (a make_resident() bank); returns the bytes read from the files.
  std::size_t load(Index e, resident_type& out) const {
    std::size_t bytes = 0;
    const std::array<std::int64_t, 2> gu{d_ff_, d_model_}, dn{d_model_, d_ff_};
    bytes += checkpoint_.template read_into<S>(name(names_.gate, e), gu, out.gate_proj(0).data());
    bytes += checkpoint_.template read_into<S>(name(names_.up, e), gu, out.up_proj(0).data());
    bytes += checkpoint_.template read_into<S>(name(names_.down, e), dn, out.down_proj(0).data());
    return bytes;
  }

  [[nodiscard]] const LazyCheckpoint& checkpoint() const noexcept { return checkpoint_; }

 private:
  [[nodiscard]] std::string name(const std::string& pat, Index e) const { return prefix_ + moe::detail::expand_name(pat, e); }
  [[nodiscard]] const std::string& pattern(std::size_t i) const { return i == 0 ? names_.gate : i == 1 ? names_.up : names_.down; }
  [[nodiscard]] std::array<std::int64_t, 2> shape(std::size_t i) const {
    return i == 2 ? std::array<std::int64_t, 2>{d_model_, d_ff_} : std::array<std::int64_t, 2>{d_ff_, d_model_};
  }

  LazyCheckpoint checkpoint_;
  std::string prefix_;
  SwiGLUExpertNames names_;
  Index num_experts_;
  Index d_model_ = 0, d_ff_ = 0;
  ComputeType compute_ = ComputeType::native;
};

/// E SwiGLU experts of one layer of a float (or bf16) LazyCheckpoint, quantized to Block as
/// they are loaded: each resident expert is a one-expert QuantizedSwiGLUExperts<Block>, its
/// blocks what quantize_layer would give it (so an on-demand layer computes the in-memory
/// quantized layer's bits). The source model of SwiGLUExpertSource; expert_bytes() is the
/// quantized expert's bytes. Thread-safe: each loading thread converts in its own buffer.
template <kernels::QuantBlock Block>
class QuantizedSwiGLUExpertSource {
 public:
  using scalar_type = float;
  using resident_type = QuantizedSwiGLUExperts<Block>;

  QuantizedSwiGLUExpertSource(LazyCheckpoint checkpoint, std::string prefix, Index num_experts,
                              SwiGLUExpertNames names = SwiGLUExpertNames::gate_up_down())
      : float_(std::move(checkpoint), std::move(prefix), num_experts, std::move(names)),
        expert_bytes_(resident_type(1, float_.d_model(), float_.d_ff()).weight_bytes()) {}

  [[nodiscard]] Index num_experts() const noexcept { return float_.num_experts(); }
  [[nodiscard]] Index d_model() const noexcept { return float_.d_model(); }
  [[nodiscard]] Index d_ff() const noexcept { return float_.d_ff(); }
  /// Bytes of one resident expert: its quantized projections (kernels::QuantMatrix::bytes()).
  [[nodiscard]] std::size_t expert_bytes() const noexcept { return expert_bytes_; }
  [[nodiscard]] typename SwiGLUExperts<float>::Names bank_names() const { return float_.bank_names(); }
  [[nodiscard]] resident_type make_resident() const { return resident_type(1, float_.d_model(), float_.d_ff()); }

  /// Reads expert e's float weights and quantizes them into out; returns the bytes read.
  std::size_t load(Index e, resident_type& out) const {
    thread_local std::unique_ptr<SwiGLUExperts<float>> buffer;
    if (!buffer || buffer->input_dim() != d_model() || buffer->d_ff() != d_ff())
      buffer = std::make_unique<SwiGLUExperts<float>>(1, d_model(), d_ff());
    const std::size_t bytes = float_.load(e, *buffer);
    const SwiGLUExperts<float>& w = *buffer;
    out.gate_up(0).quantize_rows(0, w.gate_proj(0));
    out.gate_up(0).quantize_rows(d_ff(), w.up_proj(0));
    out.down(0).quantize_rows(0, w.down_proj(0));
    return bytes;
  }

  [[nodiscard]] const LazyCheckpoint& checkpoint() const noexcept { return float_.checkpoint(); }

 private:
  SwiGLUExpertSource<float> float_;
  std::size_t expert_bytes_;
};

}  // namespace moe::io

#endif  // MOE_IO_EXPERT_SOURCE_HPP

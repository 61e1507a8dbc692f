// Expert banks whose weights are block-quantized (Q8_0, Q4_0, Q4_K): the SwiGLU, GPT-OSS and
// FFN experts of swiglu_experts.hpp, gpt_oss_experts.hpp and ffn_experts.hpp, for inference.
//
// Each projection of each expert is a kernels::QuantMatrix in the products' [out, in]
// orientation (GGUF's: a row is a run of blocks along the input), packed once when it is set,
// with no float copy; the forward runs kernels::quant_gemm (activations quantized to 8 bits per
// product, integer dot products, float scales) and the same elementwise steps as the float
// banks, in float. Biases, GPT-OSS's alpha and limit, and the router stay float.
// docs/quantization.md#quantized-expert-banks gives the errors against float.
#ifndef MOE_EXPERT_QUANTIZED_EXPERTS_HPP
#define MOE_EXPERT_QUANTIZED_EXPERTS_HPP

#include <moe/core/error.hpp>
#include <moe/core/types.hpp>
#include <moe/expert/ffn_experts.hpp>
#include <moe/expert/gpt_oss_experts.hpp>
#include <moe/expert/swiglu_experts.hpp>
#include <moe/kernels/activations.hpp>
#include <moe/kernels/quant_gemm.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <initializer_list>
#include <type_traits>
#include <vector>
#include <xsimd/xsimd.hpp>

namespace moe {

/// The weight element types a loader can give an expert bank (float, bf16 products of a float
/// bank, or one of the block-quantized formats).
enum class WeightType : std::uint8_t { f32, bf16, q8_0, q4_0, q4_k };

/// "f32", "bf16", "q8_0", "q4_0", "q4_k".
constexpr const char* weight_type_name(WeightType t) noexcept {
  switch (t) {
    case WeightType::f32:
      return "f32";
    case WeightType::bf16:
      return "bf16";
    case WeightType::q8_0:
      return "q8_0";
    case WeightType::q4_0:
      return "q4_0";
    case WeightType::q4_k:
      return "q4_k";
  }
  return "?";
}

/// The WeightType of a block format.
template <kernels::QuantBlock Block>
inline constexpr WeightType weight_type_of =
    std::is_same_v<Block, kernels::BlockQ8_0> ? WeightType::q8_0
                                              : (std::is_same_v<Block, kernels::BlockQ4_0> ? WeightType::q4_0 : WeightType::q4_k);

namespace detail {

template <class>
inline constexpr bool quantized_backward = false;

/// Checks a quantized bank's sizes (any d and ff: rows that are not whole blocks are padded
/// with zeros, kernels::QuantMatrix).
inline void require_quantizable(const char* where, Index num_experts, Index d_model, Index d_ff) {
  detail::require(num_experts >= 1, where, "num_experts", ">= 1", num_experts);
  detail::require(d_model >= 1, where, "d_model", ">= 1", d_model);
  detail::require(d_ff >= 1, where, "d_ff", ">= 1", d_ff);
}

/// Throws naming the bank, projection and expert when m is not rows x cols.
template <kernels::QuantBlock Block>
void require_quant_shape(const kernels::QuantMatrix<Block>& m, Index rows, Index cols, const char* bank,
                         const char* projection, Index e) {
  if (m.rows() != rows || m.cols() != cols)
    detail::throw_invalid(detail::concat(bank, "::check_shapes()"), detail::concat(projection, "(", e, ") shape"),
                          detail::concat("[", rows, ", ", cols, "]"), detail::concat("[", m.rows(), ", ", m.cols(), "]"));
}

/// The projections' common part: E experts, each with `per_expert` QuantMatrix.
template <kernels::QuantBlock Block>
struct QuantizedProjections {
  std::vector<kernels::QuantMatrix<Block>> mats;
  Index per_expert = 0;

  [[nodiscard]] kernels::QuantMatrix<Block>& at(Index e, Index i) {
    return mats[static_cast<std::size_t>(e * per_expert + i)];
  }
  [[nodiscard]] const kernels::QuantMatrix<Block>& at(Index e, Index i) const {
    return mats[static_cast<std::size_t>(e * per_expert + i)];
  }
  [[nodiscard]] std::size_t bytes() const noexcept {
    std::size_t b = 0;
    for (const auto& m : mats) b += m.bytes();
    return b;
  }
  [[nodiscard]] std::size_t expert_bytes(Index e) const noexcept {
    std::size_t b = 0;
    for (Index i = 0; i < per_expert; ++i) b += at(e, i).bytes();
    return b;
  }
  /// num_experts experts, each with zero projections of the given [rows, cols] shapes.
  void assign(Index num_experts, std::initializer_list<std::array<Index, 2>> shapes) {
    per_expert = static_cast<Index>(shapes.size());
    mats.clear();
    mats.reserve(static_cast<std::size_t>(num_experts * per_expert));
    for (Index e = 0; e < num_experts; ++e)
      for (const auto& [rows, cols] : shapes) mats.emplace_back(rows, cols);
  }
  /// e, or an exception naming bank::accessor() when it is not an expert (the message is
  /// built only on failure: forwards call this).
  [[nodiscard]] Index check(Index e, const char* bank, const char* accessor) const {
    const auto experts = per_expert == 0 ? Index{0} : static_cast<Index>(mats.size()) / per_expert;
    if (e < 0 || e >= experts)
      detail::throw_invalid(detail::concat(bank, "::", accessor, "()"), "expert index",
                            detail::concat("in [0, ", experts, ")"), e);
    return e;
  }
};

}  // namespace detail

/// E SwiGLU experts with block-quantized weights: y = (silu(x Wg^T) * (x Wu^T)) Wd^T, each
/// product by kernels::quant_gemm. gate_up(e) is [2ff, d] (expert e's gate rows, then its up
/// rows: GGUF's ffn_gate_exps and ffn_up_exps slices), down(e) is [d, ff] (ffn_down_exps).
/// hidden_cols() = 3 ff, laid out as SwiGLUExperts's. Inference only: backward does not
/// compile. d and ff need not be whole blocks (32; 256 for Q4_K): rows are padded with zeros.
template <kernels::QuantBlock Block>
class QuantizedSwiGLUExperts {
 public:
  using scalar_type = float;
  using block_type = Block;
  static constexpr bool inference_only = true;  ///< expert_traits: no training

  QuantizedSwiGLUExperts(Index num_experts, Index d_model, Index d_ff)
      : num_experts_(num_experts), d_model_(d_model), d_ff_(d_ff) {
    detail::require_quantizable("QuantizedSwiGLUExperts::QuantizedSwiGLUExperts()", num_experts, d_model, d_ff);
    w_.assign(num_experts, {{2 * d_ff, d_model}, {d_model, d_ff}});
  }

  /// Quantizes a float bank (ggml's reference quantizers, row by row).
  static QuantizedSwiGLUExperts quantize(const SwiGLUExperts<float>& bank) {
    QuantizedSwiGLUExperts q(bank.num_experts(), bank.input_dim(), bank.d_ff());
    for (Index e = 0; e < bank.num_experts(); ++e) {
      q.gate_up(e).quantize_rows(0, bank.gate_proj(e));
      q.gate_up(e).quantize_rows(bank.d_ff(), bank.up_proj(e));
      q.down(e).quantize_rows(0, bank.down_proj(e));
    }
    return q;
  }
  /// The float bank of the values the blocks stand for (the formats' definitions).
  [[nodiscard]] SwiGLUExperts<float> dequantize() const {
    SwiGLUExperts<float> bank(num_experts_, d_model_, d_ff_);
    for (Index e = 0; e < num_experts_; ++e) {
      const RowMatrix<float> gu = gate_up(e).dequantize();
      bank.gate_proj(e) = gu.topRows(d_ff_);
      bank.up_proj(e) = gu.bottomRows(d_ff_);
      bank.down_proj(e) = down(e).dequantize();
    }
    return bank;
  }

  [[nodiscard]] Index num_experts() const noexcept { return num_experts_; }
  [[nodiscard]] Index input_dim() const noexcept { return d_model_; }
  [[nodiscard]] Index output_dim() const noexcept { return d_model_; }
  [[nodiscard]] Index d_ff() const noexcept { return d_ff_; }
  [[nodiscard]] Index hidden_cols() const noexcept { return 3 * d_ff_; }

  /// Expert e's gate and up projections [2ff, d]: rows [0, ff) gate, [ff, 2ff) up.
  [[nodiscard]] kernels::QuantMatrix<Block>& gate_up(Index e) { return w_.at(check(e, __func__), 0); }
  [[nodiscard]] const kernels::QuantMatrix<Block>& gate_up(Index e) const { return w_.at(check(e, __func__), 0); }
  /// Expert e's down projection [d, ff].
  [[nodiscard]] kernels::QuantMatrix<Block>& down(Index e) { return w_.at(check(e, __func__), 1); }
  [[nodiscard]] const kernels::QuantMatrix<Block>& down(Index e) const { return w_.at(check(e, __func__), 1); }

  /// Bytes of the quantized weights (all experts; expert_bytes(e) for one).
  [[nodiscard]] std::size_t weight_bytes() const noexcept { return w_.bytes(); }
  [[nodiscard]] std::size_t expert_bytes(Index e) const { return w_.expert_bytes(check(e, __func__)); }

  /// Throws if a projection was replaced by one of another shape.
  void check_shapes() const {
    for (Index e = 0; e < num_experts_; ++e) {
      detail::require_quant_shape(w_.at(e, 0), 2 * d_ff_, d_model_, "QuantizedSwiGLUExperts", "gate_up", e);
      detail::require_quant_shape(w_.at(e, 1), d_model_, d_ff_, "QuantizedSwiGLUExperts", "down", e);
    }
  }

  /// Runs expert e on the rows of x [n, d] (SwiGLUExperts::forward's contract); `kernel` is
  /// ignored (the quantized products have one kernel per path).
  template <class Arch = xsimd::default_arch>
  void forward(Index e, const ConstMatrixRef<float>& x, MatrixRef<float> hidden, MatrixRef<float> y,
               GemmKernel /*kernel*/ = GemmKernel::fast) const {
    const Index ff = d_ff_;
    kernels::quant_gemm<Arch>(hidden.leftCols(2 * ff), x, w_.at(e, 0));
    const kernels::SiluMul<Arch> silu_mul{};
    for (Index r = 0; r < x.rows(); ++r) {
      float* row = hidden.row(r).data();
      silu_mul(row, row + ff, row + 2 * ff, ff);
    }
    kernels::quant_gemm<Arch>(y, hidden.middleCols(2 * ff, ff), w_.at(e, 1));
  }

  /// Quantized banks are for inference: instantiating backward (a layer's backward, a
  /// trainer) is a compile error.
  template <class Arch = xsimd::default_arch, class... Args>
  void backward(Args&&...) const {
    static_assert(detail::quantized_backward<Arch>,
                  "QuantizedSwiGLUExperts is for inference: backward needs float weights (train a SwiGLUExperts<float> "
                  "and quantize it, docs/quantization.md#quantized-expert-banks)");
  }

 private:
  Index check(Index e, const char* accessor) const { return w_.check(e, "QuantizedSwiGLUExperts", accessor); }

  Index num_experts_;
  Index d_model_;
  Index d_ff_;
  detail::QuantizedProjections<Block> w_;
};

/// E GPT-OSS experts with block-quantized weights and float biases (GptOssExperts's math):
/// h = x Wgu^T + b, gate = h[:, 0::2], up = h[:, 1::2], a = (clamp(up) + 1) * gate *
/// sigmoid(alpha * gate) with gate clamped above, y = a Wd^T + b_down. gate_up(e) is [2ff, d]
/// with gate and up rows interleaved (row 2j gate unit j, row 2j + 1 up unit j), the
/// transpose of GptOssExperts::gate_up(e); down(e) is [d, ff]. hidden_cols() = 3 ff.
template <kernels::QuantBlock Block>
class QuantizedGptOssExperts {
 public:
  using scalar_type = float;
  using block_type = Block;
  static constexpr bool inference_only = true;  ///< expert_traits: no training

  QuantizedGptOssExperts(Index num_experts, Index d_model, Index d_ff, float alpha = 1.702f, float limit = 7.0f)
      : num_experts_(num_experts), d_model_(d_model), d_ff_(d_ff), alpha_(alpha), limit_(limit) {
    detail::require_quantizable("QuantizedGptOssExperts::QuantizedGptOssExperts()", num_experts, d_model, d_ff);
    w_.assign(num_experts, {{2 * d_ff, d_model}, {d_model, d_ff}});
    gate_up_bias_.setZero(num_experts, 2 * d_ff);
    down_bias_.setZero(num_experts, d_model);
  }

  static QuantizedGptOssExperts quantize(const GptOssExperts<float>& bank) {
    QuantizedGptOssExperts q(bank.num_experts(), bank.input_dim(), bank.d_ff(), bank.alpha(), bank.limit());
    for (Index e = 0; e < bank.num_experts(); ++e) {
      const RowMatrix<float> gu = bank.gate_up(e).transpose();
      const RowMatrix<float> dn = bank.down(e).transpose();
      q.gate_up(e).quantize_rows(0, gu);
      q.down(e).quantize_rows(0, dn);
    }
    q.gate_up_bias_ = bank.gate_up_bias();
    q.down_bias_ = bank.down_bias();
    return q;
  }
  [[nodiscard]] GptOssExperts<float> dequantize() const {
    GptOssExperts<float> bank(num_experts_, d_model_, d_ff_, alpha_, limit_);
    for (Index e = 0; e < num_experts_; ++e) {
      bank.gate_up(e) = gate_up(e).dequantize().transpose();
      bank.down(e) = down(e).dequantize().transpose();
    }
    bank.gate_up_bias() = gate_up_bias_;
    bank.down_bias() = down_bias_;
    return bank;
  }

  [[nodiscard]] Index num_experts() const noexcept { return num_experts_; }
  [[nodiscard]] Index input_dim() const noexcept { return d_model_; }
  [[nodiscard]] Index output_dim() const noexcept { return d_model_; }
  [[nodiscard]] Index d_ff() const noexcept { return d_ff_; }
  [[nodiscard]] Index hidden_cols() const noexcept { return 3 * d_ff_; }
  [[nodiscard]] float alpha() const noexcept { return alpha_; }
  [[nodiscard]] float limit() const noexcept { return limit_; }

  [[nodiscard]] kernels::QuantMatrix<Block>& gate_up(Index e) { return w_.at(check(e, __func__), 0); }
  [[nodiscard]] const kernels::QuantMatrix<Block>& gate_up(Index e) const { return w_.at(check(e, __func__), 0); }
  [[nodiscard]] kernels::QuantMatrix<Block>& down(Index e) { return w_.at(check(e, __func__), 1); }
  [[nodiscard]] const kernels::QuantMatrix<Block>& down(Index e) const { return w_.at(check(e, __func__), 1); }
  /// [E, 2ff], interleaved like gate_up's rows.
  [[nodiscard]] RowMatrix<float>& gate_up_bias() noexcept { return gate_up_bias_; }
  [[nodiscard]] const RowMatrix<float>& gate_up_bias() const noexcept { return gate_up_bias_; }
  /// [E, d].
  [[nodiscard]] RowMatrix<float>& down_bias() noexcept { return down_bias_; }
  [[nodiscard]] const RowMatrix<float>& down_bias() const noexcept { return down_bias_; }

  [[nodiscard]] std::size_t weight_bytes() const noexcept {
    return w_.bytes() + static_cast<std::size_t>(gate_up_bias_.size() + down_bias_.size()) * sizeof(float);
  }
  [[nodiscard]] std::size_t expert_bytes(Index e) const {
    return w_.expert_bytes(check(e, __func__)) + static_cast<std::size_t>(3 * d_ff_ + d_model_) * sizeof(float);
  }

  void check_shapes() const {
    for (Index e = 0; e < num_experts_; ++e) {
      detail::require_quant_shape(w_.at(e, 0), 2 * d_ff_, d_model_, "QuantizedGptOssExperts", "gate_up", e);
      detail::require_quant_shape(w_.at(e, 1), d_model_, d_ff_, "QuantizedGptOssExperts", "down", e);
    }
    detail::require_shape(gate_up_bias_, num_experts_, 2 * d_ff_, "QuantizedGptOssExperts::check_shapes()",
                          "gate_up_bias()");
    detail::require_shape(down_bias_, num_experts_, d_model_, "QuantizedGptOssExperts::check_shapes()", "down_bias()");
  }

  template <class Arch = xsimd::default_arch>
  void forward(Index e, const ConstMatrixRef<float>& x, MatrixRef<float> hidden, MatrixRef<float> y,
               GemmKernel /*kernel*/ = GemmKernel::fast) const {
    const Index ff = d_ff_;
    auto h = hidden.leftCols(2 * ff);
    kernels::quant_gemm<Arch>(h, x, w_.at(e, 0));
    h.rowwise() += gate_up_bias_.row(e);
    for (Index r = 0; r < x.rows(); ++r) {
      const float* hr = hidden.row(r).data();
      float* a = hidden.row(r).data() + 2 * ff;
      for (Index j = 0; j < ff; ++j) {
        const float gate = std::min(hr[2 * j], limit_);
        const float up = std::clamp(hr[2 * j + 1], -limit_, limit_);
        const float glu = gate / (1.0f + std::exp(-alpha_ * gate));
        a[j] = (up + 1.0f) * glu;
      }
    }
    kernels::quant_gemm<Arch>(y, hidden.middleCols(2 * ff, ff), w_.at(e, 1));
    y.rowwise() += down_bias_.row(e);
  }

  template <class Arch = xsimd::default_arch, class... Args>
  void backward(Args&&...) const {
    static_assert(detail::quantized_backward<Arch>,
                  "QuantizedGptOssExperts is for inference: backward needs float weights (train a GptOssExperts<float> "
                  "and quantize it, docs/quantization.md#quantized-expert-banks)");
  }

 private:
  Index check(Index e, const char* accessor) const { return w_.check(e, "QuantizedGptOssExperts", accessor); }

  Index num_experts_;
  Index d_model_;
  Index d_ff_;
  float alpha_;
  float limit_;
  detail::QuantizedProjections<Block> w_;
  RowMatrix<float> gate_up_bias_;
  RowMatrix<float> down_bias_;
};

/// E two-layer FFN experts with block-quantized weights (FFNExperts's math): y = act(x Wi^T +
/// bi) Wo^T + bo, biases optional and float. wi(e) is [ff, d], wo(e) is [d, ff].
/// hidden_cols() = 2 ff.
template <kernels::QuantBlock Block, Activation Act>
class QuantizedFFNExperts {
 public:
  using scalar_type = float;
  using block_type = Block;
  static constexpr bool inference_only = true;  ///< expert_traits: no training
  static constexpr Activation activation = Act;

  QuantizedFFNExperts(Index num_experts, Index d_model, Index d_ff)
      : num_experts_(num_experts), d_model_(d_model), d_ff_(d_ff) {
    detail::require_quantizable("QuantizedFFNExperts::QuantizedFFNExperts()", num_experts, d_model, d_ff);
    w_.assign(num_experts, {{d_ff, d_model}, {d_model, d_ff}});
  }

  static QuantizedFFNExperts quantize(const FFNExperts<float, Act>& bank) {
    QuantizedFFNExperts q(bank.num_experts(), bank.input_dim(), bank.d_ff());
    for (Index e = 0; e < bank.num_experts(); ++e) {
      q.wi(e).quantize_rows(0, bank.wi(e));
      q.wo(e).quantize_rows(0, bank.wo(e));
    }
    if (bank.has_biases()) {
      q.enable_biases();
      q.bi_ = bank.bi();
      q.bo_ = bank.bo();
    }
    return q;
  }
  [[nodiscard]] FFNExperts<float, Act> dequantize() const {
    FFNExperts<float, Act> bank(num_experts_, d_model_, d_ff_);
    for (Index e = 0; e < num_experts_; ++e) {
      bank.wi(e) = wi(e).dequantize();
      bank.wo(e) = wo(e).dequantize();
    }
    if (has_biases()) {
      bank.enable_biases();
      bank.bi() = bi_;
      bank.bo() = bo_;
    }
    return bank;
  }

  [[nodiscard]] Index num_experts() const noexcept { return num_experts_; }
  [[nodiscard]] Index input_dim() const noexcept { return d_model_; }
  [[nodiscard]] Index output_dim() const noexcept { return d_model_; }
  [[nodiscard]] Index d_ff() const noexcept { return d_ff_; }
  [[nodiscard]] Index hidden_cols() const noexcept { return 2 * d_ff_; }
  [[nodiscard]] bool has_biases() const noexcept { return bi_.size() != 0; }
  /// Adds zero biases bi [E, ff] and bo [E, d].
  void enable_biases() {
    bi_.setZero(num_experts_, d_ff_);
    bo_.setZero(num_experts_, d_model_);
  }

  [[nodiscard]] kernels::QuantMatrix<Block>& wi(Index e) { return w_.at(check(e, __func__), 0); }
  [[nodiscard]] const kernels::QuantMatrix<Block>& wi(Index e) const { return w_.at(check(e, __func__), 0); }
  [[nodiscard]] kernels::QuantMatrix<Block>& wo(Index e) { return w_.at(check(e, __func__), 1); }
  [[nodiscard]] const kernels::QuantMatrix<Block>& wo(Index e) const { return w_.at(check(e, __func__), 1); }
  [[nodiscard]] RowMatrix<float>& bi() noexcept { return bi_; }
  [[nodiscard]] const RowMatrix<float>& bi() const noexcept { return bi_; }
  [[nodiscard]] RowMatrix<float>& bo() noexcept { return bo_; }
  [[nodiscard]] const RowMatrix<float>& bo() const noexcept { return bo_; }

  [[nodiscard]] std::size_t weight_bytes() const noexcept {
    return w_.bytes() + static_cast<std::size_t>(bi_.size() + bo_.size()) * sizeof(float);
  }
  [[nodiscard]] std::size_t expert_bytes(Index e) const {
    return w_.expert_bytes(check(e, __func__)) +
           (has_biases() ? static_cast<std::size_t>(d_ff_ + d_model_) * sizeof(float) : std::size_t{0});
  }

  void check_shapes() const {
    for (Index e = 0; e < num_experts_; ++e) {
      detail::require_quant_shape(w_.at(e, 0), d_ff_, d_model_, "QuantizedFFNExperts", "wi", e);
      detail::require_quant_shape(w_.at(e, 1), d_model_, d_ff_, "QuantizedFFNExperts", "wo", e);
    }
  }

  template <class Arch = xsimd::default_arch>
  void forward(Index e, const ConstMatrixRef<float>& x, MatrixRef<float> hidden, MatrixRef<float> y,
               GemmKernel /*kernel*/ = GemmKernel::fast) const {
    const Index ff = d_ff_;
    auto pre = hidden.leftCols(ff);
    auto act = hidden.middleCols(ff, ff);
    kernels::quant_gemm<Arch>(pre, x, w_.at(e, 0));
    if (has_biases()) pre.rowwise() += bi_.row(e);
    act = pre;
    for (Index r = 0; r < x.rows(); ++r) FFNExperts<float, Act>::template apply_activation<Arch>(act.row(r).data(), ff);
    kernels::quant_gemm<Arch>(y, act, w_.at(e, 1));
    if (has_biases()) y.rowwise() += bo_.row(e);
  }

  template <class Arch = xsimd::default_arch, class... Args>
  void backward(Args&&...) const {
    static_assert(detail::quantized_backward<Arch>,
                  "QuantizedFFNExperts is for inference: backward needs float weights (train an FFNExperts<float, Act> "
                  "and quantize it, docs/quantization.md#quantized-expert-banks)");
  }

 private:
  Index check(Index e, const char* accessor) const { return w_.check(e, "QuantizedFFNExperts", accessor); }

  Index num_experts_;
  Index d_model_;
  Index d_ff_;
  detail::QuantizedProjections<Block> w_;
  RowMatrix<float> bi_;
  RowMatrix<float> bo_;
};

}  // namespace moe

#endif  // MOE_EXPERT_QUANTIZED_EXPERTS_HPP

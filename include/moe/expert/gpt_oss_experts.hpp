// The GPT-OSS expert: a clamped, biased GLU with gate and up interleaved.
#ifndef MOE_EXPERT_GPT_OSS_EXPERTS_HPP
#define MOE_EXPERT_GPT_OSS_EXPERTS_HPP

#include <moe/core/error.hpp>
#include <moe/core/parameters.hpp>
#include <moe/core/types.hpp>
#include <moe/expert/packed_cache.hpp>
#include <moe/kernels/gemm.hpp>
#include <moe/kernels/packed_gemm.hpp>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <xsimd/xsimd.hpp>

namespace moe {

/// E GPT-OSS experts, stored as the checkpoint stores them ([in, out] orientation):
///
/// | member          | shape        | checkpoint name                     |
/// |-----------------|--------------|-------------------------------------|
/// | gate_up(e)      | [d, 2ff]     | mlp.experts.gate_up_proj [E, d, 2ff] |
/// | gate_up_bias()  | [E, 2ff]     | mlp.experts.gate_up_proj_bias        |
/// | down(e)         | [ff, d]      | mlp.experts.down_proj [E, ff, d]     |
/// | down_bias()     | [E, d]       | mlp.experts.down_proj_bias           |
///
/// h = x gate_up + b, gate = h[:, 0::2] clamped above at limit, up = h[:, 1::2] clamped to
/// [-limit, limit], a = (up + 1) * gate * sigmoid(alpha * gate), y = a down + b_down.
/// hidden_cols() = 3 ff: per row [h (interleaved, before clamping) | a].
template <class S>
class GptOssExperts {
 public:
  using scalar_type = S;

  /// Checkpoint names of the fused tensors (all experts in one tensor each).
  struct Names {
    std::string gate_up = "experts.gate_up_proj";
    std::string gate_up_bias = "experts.gate_up_proj_bias";
    std::string down = "experts.down_proj";
    std::string down_bias = "experts.down_proj_bias";
  };

  GptOssExperts(Index num_experts, Index d_model, Index d_ff, S alpha = S(1.702), S limit = S(7))
      : num_experts_(num_experts), d_model_(d_model), d_ff_(d_ff), alpha_(alpha), limit_(limit) {
    constexpr const char* where = "GptOssExperts::GptOssExperts()";
    detail::require(num_experts >= 1, where, "num_experts", ">= 1", num_experts);
    detail::require(d_model >= 1, where, "d_model", ">= 1", d_model);
    detail::require(d_ff >= 1, where, "d_ff", ">= 1", d_ff);
    gate_up_.setZero(num_experts * d_model, 2 * d_ff);
    gate_up_bias_.setZero(num_experts, 2 * d_ff);
    down_.setZero(num_experts * d_ff, d_model);
    down_bias_.setZero(num_experts, d_model);
  }

  [[nodiscard]] Index num_experts() const noexcept { return num_experts_; }
  [[nodiscard]] Index input_dim() const noexcept { return d_model_; }
  [[nodiscard]] Index output_dim() const noexcept { return d_model_; }
  [[nodiscard]] Index d_ff() const noexcept { return d_ff_; }
  [[nodiscard]] Index hidden_cols() const noexcept { return 3 * d_ff_; }
  [[nodiscard]] S alpha() const noexcept { return alpha_; }
  [[nodiscard]] S limit() const noexcept { return limit_; }

  [[nodiscard]] auto gate_up(Index e) {
    packed_.invalidate();
    return gate_up_.middleRows(check(e, __func__) * d_model_, d_model_);
  }
  [[nodiscard]] auto gate_up(Index e) const { return gate_up_.middleRows(check(e, __func__) * d_model_, d_model_); }
  [[nodiscard]] auto down(Index e) {
    packed_.invalidate();
    return down_.middleRows(check(e, __func__) * d_ff_, d_ff_);
  }
  [[nodiscard]] auto down(Index e) const { return down_.middleRows(check(e, __func__) * d_ff_, d_ff_); }
  /// All experts' blocks: [E * d, 2ff] and [E * ff, d], the checkpoint's memory layout.
  [[nodiscard]] Names& names() noexcept { return names_; }
  [[nodiscard]] const Names& names() const noexcept { return names_; }

  /// The fused checkpoint tensors, flattened to 2-D ([E*d, 2ff], [E, 2ff], [E*ff, d], [E, d]).
  template <class F>
  void for_each_parameter(F&& f) {
    packed_.invalidate();
    f(names_.gate_up, gate_up_);
    f(names_.gate_up_bias, gate_up_bias_);
    f(names_.down, down_);
    f(names_.down_bias, down_bias_);
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    f(names_.gate_up, gate_up_);
    f(names_.gate_up_bias, gate_up_bias_);
    f(names_.down, down_);
    f(names_.down_bias, down_bias_);
  }

  [[nodiscard]] RowMatrix<S>& gate_up() noexcept {
    packed_.invalidate();
    return gate_up_;
  }
  [[nodiscard]] const RowMatrix<S>& gate_up() const noexcept { return gate_up_; }
  [[nodiscard]] RowMatrix<S>& down() noexcept {
    packed_.invalidate();
    return down_;
  }
  [[nodiscard]] const RowMatrix<S>& down() const noexcept { return down_; }
  [[nodiscard]] RowMatrix<S>& gate_up_bias() noexcept { return gate_up_bias_; }
  [[nodiscard]] const RowMatrix<S>& gate_up_bias() const noexcept { return gate_up_bias_; }
  [[nodiscard]] RowMatrix<S>& down_bias() noexcept { return down_bias_; }
  [[nodiscard]] const RowMatrix<S>& down_bias() const noexcept { return down_bias_; }

  /// Throws if a weight block was resized through its accessor.
  void check_shapes() const {
    constexpr const char* where = "GptOssExperts::check_shapes()";
    detail::require_shape(gate_up_, num_experts_ * d_model_, 2 * d_ff_, where, "gate_up()");
    detail::require_shape(gate_up_bias_, num_experts_, 2 * d_ff_, where, "gate_up_bias()");
    detail::require_shape(down_, num_experts_ * d_ff_, d_model_, where, "down()");
    detail::require_shape(down_bias_, num_experts_, d_model_, where, "down_bias()");
  }

  /// The element type the forward's products read the weights in (SwiGLUExperts::compute).
  [[nodiscard]] ComputeType compute() const noexcept { return packed_.compute(); }
  void set_compute(ComputeType c) { packed_.set_compute(c); }
  /// The weights changed through a kept block or pointer (SwiGLUExperts::weights_changed).
  void weights_changed() noexcept { packed_.invalidate(); }
  [[nodiscard]] std::size_t packed_bytes() const noexcept { return packed_.bytes(); }

  template <class Arch = xsimd::default_arch>
  void forward(Index e, const ConstMatrixRef<S>& x, MatrixRef<S> hidden, MatrixRef<S> y,
               GemmKernel kernel = GemmKernel::fast) const {
    const Index n = x.rows();
    const Index ff = d_ff_;
    auto h = hidden.leftCols(2 * ff);
    // The packed copies hold the products' B^T: gate_up_e^T [2ff, d] and down_e^T [d, ff].
    const auto source = [this](Index i) {
      const Index x_e = i / 2;
      return (i % 2 == 0 ? gate_up_.middleRows(x_e * d_model_, d_model_) : down_.middleRows(x_e * d_ff_, d_ff_))
          .transpose();
    };
    const kernels::PackedMatrix<S>* packed = nullptr;
    const kernels::PackedMatrix<bf16>* packed16 = nullptr;
    if constexpr (std::is_same_v<S, float>) {
      if (packed_.compute() == ComputeType::bf16) packed16 = packed_.template get<bf16, Arch>(2 * num_experts_, source);
    }
    if (packed_.compute() == ComputeType::native) packed = packed_.template get<S, Arch>(2 * num_experts_, source);
    const auto run_bf16 = [&](MatrixRef<S> c, const ConstMatrixRef<S>& a, Index i) {
      if constexpr (std::is_same_v<S, float>) {
        if (packed16 != nullptr) {
          packed_.verify(packed16[i], i, source, "GptOssExperts::forward()");
          kernels::packed_gemm<Arch>(c, a, packed16[i]);
          return true;
        }
      }
      return false;
    };
    if (packed != nullptr) {
      packed_.verify(packed[2 * e], 2 * e, source, "GptOssExperts::forward()");
      packed_.verify(packed[2 * e + 1], 2 * e + 1, source, "GptOssExperts::forward()");
      kernels::packed_gemm<Arch>(h, x, packed[2 * e]);
    } else if (!run_bf16(h, x, 2 * e)) {
      kernels::gemm<Arch>(h, x, Op::none, gate_up_.middleRows(e * d_model_, d_model_), Op::none, S(1), S(0), kernel);
    }
    h.rowwise() += gate_up_bias_.row(e);
    for (Index r = 0; r < n; ++r) {
      const S* hr = hidden.row(r).data();
      S* a = hidden.row(r).data() + 2 * ff;
      for (Index j = 0; j < ff; ++j) {
        const S gate = std::min(hr[2 * j], limit_);
        const S up = std::clamp(hr[2 * j + 1], -limit_, limit_);
        const S glu = gate / (S(1) + std::exp(-alpha_ * gate));
        a[j] = (up + S(1)) * glu;
      }
    }
    if (packed != nullptr) {
      kernels::packed_gemm<Arch>(y, hidden.middleCols(2 * ff, ff), packed[2 * e + 1]);
    } else if (!run_bf16(y, hidden.middleCols(2 * ff, ff), 2 * e + 1)) {
      kernels::gemm<Arch>(y, hidden.middleCols(2 * ff, ff), Op::none, down_.middleRows(e * ff, ff), Op::none, S(1), S(0),
                          kernel);
    }
    y.rowwise() += down_bias_.row(e);
  }

  /// Backward of forward(e, ...). A clamp that was active passes no gradient (torch.clamp:
  /// the gradient flows where min <= v <= max).
  template <class Arch = xsimd::default_arch>
  void backward(Index e, const ConstMatrixRef<S>& x, const ConstMatrixRef<S>& hidden, const ConstMatrixRef<S>& dy,
                MatrixRef<S> dx, MatrixRef<S> scratch, GptOssExperts& grad) const {
    if (packed_.compute() != ComputeType::native)
      throw std::logic_error(
          "GptOssExperts::backward(): a bank whose products run in bf16 (ComputeType::bf16) is for inference; "
          "expected ComputeType::native for training");
    grad.packed_.invalidate();
    const Index n = x.rows();
    const Index ff = d_ff_;
    kernels::gemm<Arch>(grad.down_.middleRows(e * ff, ff), hidden.middleCols(2 * ff, ff), Op::transpose, dy, Op::none, S(1), S(1));
    detail::add_column_sums(grad.down_bias_.row(e), dy);
    auto da = scratch.middleCols(2 * ff, ff);
    kernels::gemm<Arch>(da, dy, Op::none, down_.middleRows(e * ff, ff), Op::transpose, S(1), S(0));
    for (Index r = 0; r < n; ++r) {
      const S* h = hidden.row(r).data();
      S* out = scratch.row(r).data();
      for (Index j = 0; j < ff; ++j) {
        const S g_raw = h[2 * j];
        const S u_raw = h[2 * j + 1];
        const S g = std::min(g_raw, limit_);
        const S u = std::clamp(u_raw, -limit_, limit_);
        const S sig = S(1) / (S(1) + std::exp(-alpha_ * g));
        const S glu = g * sig;
        const S a = out[2 * ff + j];
        const S dglu = a * (u + S(1));
        const S dg = dglu * (sig + alpha_ * g * sig * (S(1) - sig));
        out[2 * j] = g_raw <= limit_ ? dg : S(0);
        out[2 * j + 1] = (u_raw >= -limit_ && u_raw <= limit_) ? a * glu : S(0);
      }
    }
    const auto dh = scratch.leftCols(2 * ff);
    kernels::gemm<Arch>(grad.gate_up_.middleRows(e * d_model_, d_model_), x, Op::transpose, dh, Op::none, S(1), S(1));
    detail::add_column_sums(grad.gate_up_bias_.row(e), dh);
    kernels::gemm<Arch>(dx, dh, Op::none, gate_up_.middleRows(e * d_model_, d_model_), Op::transpose, S(1), S(0));
  }

 private:
  Index check(Index e, const char* accessor) const {
    detail::require(e >= 0 && e < num_experts_, detail::concat("GptOssExperts::", accessor, "()"), "expert index",
                    detail::concat("in [0, ", num_experts_, ")"), e);
    return e;
  }

  Index num_experts_;
  Index d_model_;
  Index d_ff_;
  S alpha_;
  S limit_;
  RowMatrix<S> gate_up_;
  RowMatrix<S> gate_up_bias_;
  RowMatrix<S> down_;
  RowMatrix<S> down_bias_;
  Names names_;
  PackedCache<S> packed_;
};

}  // namespace moe

#endif  // MOE_EXPERT_GPT_OSS_EXPERTS_HPP

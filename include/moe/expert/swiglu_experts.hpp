// A bank of SwiGLU experts: y = (silu(x Wg^T) * (x Wu^T)) Wd^T.
#ifndef MOE_EXPERT_SWIGLU_EXPERTS_HPP
#define MOE_EXPERT_SWIGLU_EXPERTS_HPP

#include <moe/core/error.hpp>
#include <moe/core/parameters.hpp>
#include <moe/core/types.hpp>
#include <moe/expert/packed_cache.hpp>
#include <moe/kernels/activations.hpp>
#include <moe/kernels/gemm.hpp>
#include <moe/kernels/packed_gemm.hpp>

#include <cmath>
#include <stdexcept>
#include <string>
#include <xsimd/xsimd.hpp>

namespace moe {

/// E SwiGLU experts (Mixtral w1/w3/w2, Qwen/OLMoE/DeepSeek gate_proj/up_proj/down_proj).
///
/// Weights live in two contiguous blocks, so an expert is a slice and a fused checkpoint
/// loads with one copy: gate_up() is [E * 2ff, d] (expert e's gate rows, then its up rows,
/// each in the Hugging Face [out, in] orientation), down() is [E * d, ff]. One GEMM then
/// produces gate and up side by side.
///
/// hidden_cols() = 3 ff: per row [gate pre-activation | up | silu(gate) * up], kept for backward.
///
/// The forward's products read packed copies of the weights (PackedCache, kernels::packed_gemm),
/// built at the first forward after the weights change: in S, or in bf16 after
/// set_compute(ComputeType::bf16) (docs/experts.md#packed-weights).
template <class S>
class SwiGLUExperts {
 public:
  using scalar_type = S;

  /// Checkpoint names of expert e's projections; "{e}" stands for the expert index.
  struct Names {
    std::string gate = "experts.{e}.gate_proj.weight";
    std::string up = "experts.{e}.up_proj.weight";
    std::string down = "experts.{e}.down_proj.weight";
  };

  SwiGLUExperts(Index num_experts, Index d_model, Index d_ff)
      : num_experts_(num_experts), d_model_(d_model), d_ff_(d_ff) {
    constexpr const char* where = "SwiGLUExperts::SwiGLUExperts()";
    detail::require(num_experts >= 1, where, "num_experts", ">= 1", num_experts);
    detail::require(d_model >= 1, where, "d_model", ">= 1", d_model);
    detail::require(d_ff >= 1, where, "d_ff", ">= 1", d_ff);
    gate_up_.setZero(num_experts * 2 * d_ff, d_model);
    down_.setZero(num_experts * d_model, d_ff);
  }

  [[nodiscard]] Index num_experts() const noexcept { return num_experts_; }
  [[nodiscard]] Index input_dim() const noexcept { return d_model_; }
  [[nodiscard]] Index output_dim() const noexcept { return d_model_; }
  [[nodiscard]] Index d_ff() const noexcept { return d_ff_; }
  [[nodiscard]] Index hidden_cols() const noexcept { return 3 * d_ff_; }

  /// Expert e's gate projection [ff, d] (w1 / gate_proj).
  [[nodiscard]] auto gate_proj(Index e) {
    packed_.invalidate();
    return gate_up_.middleRows(check(e, __func__) * 2 * d_ff_, d_ff_);
  }
  [[nodiscard]] auto gate_proj(Index e) const { return gate_up_.middleRows(check(e, __func__) * 2 * d_ff_, d_ff_); }
  /// Expert e's up projection [ff, d] (w3 / up_proj).
  [[nodiscard]] auto up_proj(Index e) {
    packed_.invalidate();
    return gate_up_.middleRows(check(e, __func__) * 2 * d_ff_ + d_ff_, d_ff_);
  }
  [[nodiscard]] auto up_proj(Index e) const { return gate_up_.middleRows(check(e, __func__) * 2 * d_ff_ + d_ff_, d_ff_); }
  /// Expert e's down projection [d, ff] (w2 / down_proj).
  [[nodiscard]] auto down_proj(Index e) {
    packed_.invalidate();
    return down_.middleRows(check(e, __func__) * d_model_, d_model_);
  }
  [[nodiscard]] auto down_proj(Index e) const { return down_.middleRows(check(e, __func__) * d_model_, d_model_); }

  [[nodiscard]] Names& names() noexcept { return names_; }
  [[nodiscard]] const Names& names() const noexcept { return names_; }

  /// Calls f(name, block) for every trainable tensor, in the checkpoint's orientation.
  template <class F>
  void for_each_parameter(F&& f) {
    packed_.invalidate();
    for (Index e = 0; e < num_experts_; ++e) {
      f(detail::expand_name(names_.gate, e), gate_proj(e));
      f(detail::expand_name(names_.up, e), up_proj(e));
      f(detail::expand_name(names_.down, e), down_proj(e));
    }
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    for (Index e = 0; e < num_experts_; ++e) {
      f(detail::expand_name(names_.gate, e), gate_proj(e));
      f(detail::expand_name(names_.up, e), up_proj(e));
      f(detail::expand_name(names_.down, e), down_proj(e));
    }
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

  /// Throws if a weight block was resized through its accessor (forward checks this, so no
  /// stage reads outside a block).
  void check_shapes() const {
    constexpr const char* where = "SwiGLUExperts::check_shapes()";
    detail::require_shape(gate_up_, num_experts_ * 2 * d_ff_, d_model_, where, "gate_up()");
    detail::require_shape(down_, num_experts_ * d_model_, d_ff_, where, "down()");
  }

  /// The element type the forward's products read the weights in (ComputeType::native by
  /// default); bf16 makes the bank inference-only (backward throws).
  [[nodiscard]] ComputeType compute() const noexcept { return packed_.compute(); }
  void set_compute(ComputeType c) { packed_.set_compute(c); }
  /// Tells the bank its weights changed through a block or pointer kept from before a forward
  /// (a non-const accessor tells it by itself): the next forward packs them again.
  void weights_changed() noexcept { packed_.invalidate(); }
  /// Bytes of the packed copies the last forward built (0 until a forward after a change).
  [[nodiscard]] std::size_t packed_bytes() const noexcept { return packed_.bytes(); }

  /// Runs expert e on the rows of x [n, d]; hidden is [n, hidden_cols()], y is [n, d]. The
  /// products read the packed weights (kernels::packed_gemm: batch-invariant whatever
  /// `kernel` says); only an architecture whose layout differs from the one packed runs
  /// kernels::gemm with `kernel` on the checkpoint layout.
  template <class Arch = xsimd::default_arch>
  void forward(Index e, const ConstMatrixRef<S>& x, MatrixRef<S> hidden, MatrixRef<S> y,
               GemmKernel kernel = GemmKernel::fast) const {
    const Index n = x.rows();
    const Index ff = d_ff_;
    const auto glu = [&] {
      const kernels::SiluMul<Arch> silu_mul{};
      for (Index r = 0; r < n; ++r) {
        S* row = hidden.row(r).data();
        silu_mul(row, row + ff, row + 2 * ff, ff);
      }
    };
    const auto run_packed = [&](const auto* packed) {
      packed_.verify(packed[2 * e], 2 * e, source(), "SwiGLUExperts::forward()");
      packed_.verify(packed[2 * e + 1], 2 * e + 1, source(), "SwiGLUExperts::forward()");
      kernels::packed_gemm<Arch>(hidden.leftCols(2 * ff), x, packed[2 * e]);
      glu();
      kernels::packed_gemm<Arch>(y, hidden.middleCols(2 * ff, ff), packed[2 * e + 1]);
    };
    if (packed_.compute() == ComputeType::bf16) {
      if constexpr (std::is_same_v<S, float>) {
        if (const auto* packed = packed_.template get<bf16, Arch>(2 * num_experts_, source())) {
          run_packed(packed);
          return;
        }
      }
    } else if (const auto* packed = packed_.template get<S, Arch>(2 * num_experts_, source())) {
      run_packed(packed);
      return;
    }
    kernels::gemm<Arch>(hidden.leftCols(2 * ff), x, Op::none, gate_up_.middleRows(e * 2 * ff, 2 * ff), Op::transpose, S(1), S(0),
                       kernel);
    glu();
    kernels::gemm<Arch>(y, hidden.middleCols(2 * ff, ff), Op::none, down_.middleRows(e * d_model_, d_model_), Op::transpose, S(1),
                       S(0), kernel);
  }

  /// Backward of forward(e, x, ...) given dy [n, d]: dx = dL/dx, and dL/dW accumulated into
  /// grad (a bank of the same shape). hidden is what forward wrote; scratch is [n, hidden_cols()].
  template <class Arch = xsimd::default_arch>
  void backward(Index e, const ConstMatrixRef<S>& x, const ConstMatrixRef<S>& hidden, const ConstMatrixRef<S>& dy,
                MatrixRef<S> dx, MatrixRef<S> scratch, SwiGLUExperts& grad) const {
    if (packed_.compute() != ComputeType::native)
      throw std::logic_error(
          "SwiGLUExperts::backward(): a bank whose products run in bf16 (ComputeType::bf16) is for inference; "
          "expected ComputeType::native for training");
    grad.packed_.invalidate();
    const Index n = x.rows();
    const Index ff = d_ff_;
    const auto down_e = down_.middleRows(e * d_model_, d_model_);
    kernels::gemm<Arch>(grad.down_.middleRows(e * d_model_, d_model_), dy, Op::transpose, hidden.middleCols(2 * ff, ff), Op::none,
                       S(1), S(1));
    auto da = scratch.middleCols(2 * ff, ff);
    kernels::gemm<Arch>(da, dy, Op::none, down_e, Op::none, S(1), S(0));
    for (Index r = 0; r < n; ++r) {
      const S* h = hidden.row(r).data();
      S* out = scratch.row(r).data();
      for (Index j = 0; j < ff; ++j) {
        const S g = h[j];
        const S sig = S(1) / (S(1) + std::exp(-g));
        const S a = out[2 * ff + j];
        out[j] = a * h[ff + j] * sig * (S(1) + g * (S(1) - sig));  // d silu(g) = s (1 + g (1 - s))
        out[ff + j] = a * g * sig;
      }
    }
    const auto dgu = scratch.leftCols(2 * ff);
    kernels::gemm<Arch>(grad.gate_up_.middleRows(e * 2 * ff, 2 * ff), dgu, Op::transpose, x, Op::none, S(1), S(1));
    kernels::gemm<Arch>(dx, dgu, Op::none, gate_up_.middleRows(e * 2 * ff, 2 * ff), Op::none, S(1), S(0));
  }

 private:
  /// Matrix i of the packed copies in the products' [n, k] orientation: 2e expert e's gate and
  /// up rows, 2e + 1 its down projection.
  auto source() const {
    return [this](Index i) {
      const Index e = i / 2;
      return i % 2 == 0 ? gate_up_.middleRows(e * 2 * d_ff_, 2 * d_ff_) : down_.middleRows(e * d_model_, d_model_);
    };
  }

  Index check(Index e, const char* accessor) const {
    detail::require(e >= 0 && e < num_experts_, detail::concat("SwiGLUExperts::", accessor, "()"), "expert index",
                    detail::concat("in [0, ", num_experts_, ")"), e);
    return e;
  }

  Index num_experts_;
  Index d_model_;
  Index d_ff_;
  RowMatrix<S> gate_up_;
  RowMatrix<S> down_;
  Names names_;
  PackedCache<S> packed_;
};

}  // namespace moe

#endif  // MOE_EXPERT_SWIGLU_EXPERTS_HPP

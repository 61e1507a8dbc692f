// Low-rank (LoRA) experts: expert e is scale * B_e A_e, a rank-r update, as in MoLoRA.
#ifndef MOE_EXPERT_LOW_RANK_EXPERTS_HPP
#define MOE_EXPERT_LOW_RANK_EXPERTS_HPP

#include <moe/core/error.hpp>
#include <moe/core/parameters.hpp>
#include <moe/core/types.hpp>
#include <moe/kernels/gemm.hpp>

#include <cmath>
#include <string>
#include <xsimd/xsimd.hpp>

namespace moe {

/// E low-rank experts of rank r over inputs of width d: expert e maps x [n, d] to
/// y = scale * (x A_e^T) B_e^T, with A_e [r, d] (lora_A) and B_e [d_out, r] (lora_B) in the
/// torch Linear orientation, and scale = alpha / r (PEFT's LoRA scaling). hidden_cols() = r:
/// the row's x A_e^T, kept for backward.
///
/// A bank of adapters routed like any experts (every router works with it). The frozen
/// base the adapters refine, y += x W0^T for every token without a gate, is a separate
/// always-on expert: LinearExperts<S> as the shared expert of SharedExpertCombiner
/// (LowRankMoE<S>, layer/moe_layer.hpp), trained or frozen (LinearExperts::set_trainable).
template <class S>
class LowRankExperts {
 public:
  using scalar_type = S;

  /// Checkpoint names of expert e's factors (PEFT's); "{e}" stands for the expert index.
  struct Names {
    std::string a = "experts.{e}.lora_A.weight";
    std::string b = "experts.{e}.lora_B.weight";
  };

  /// Zero factors; d_out = d_in unless given. scale multiplies every expert's output.
  LowRankExperts(Index num_experts, Index d_in, Index rank, S scale = S(1), Index d_out = 0)
      : num_experts_(num_experts), d_in_(d_in), d_out_(d_out == 0 ? d_in : d_out), rank_(rank), scale_(scale) {
    constexpr const char* where = "LowRankExperts::LowRankExperts()";
    detail::require(num_experts >= 1, where, "num_experts", ">= 1", num_experts);
    detail::require(d_in >= 1, where, "d_in", ">= 1", d_in);
    detail::require(d_out_ >= 1, where, "d_out", ">= 1 (0 for d_in)", d_out);
    detail::require(rank >= 1, where, "rank", ">= 1", rank);
    detail::require(std::isfinite(static_cast<double>(scale)), where, "scale", "finite", scale);
    a_.setZero(num_experts * rank, d_in);
    b_.setZero(num_experts * d_out_, rank);
  }

  [[nodiscard]] Index num_experts() const noexcept { return num_experts_; }
  [[nodiscard]] Index input_dim() const noexcept { return d_in_; }
  [[nodiscard]] Index output_dim() const noexcept { return d_out_; }
  [[nodiscard]] Index rank() const noexcept { return rank_; }
  [[nodiscard]] Index hidden_cols() const noexcept { return rank_; }
  /// The output scale, alpha / r in LoRA; not trained.
  [[nodiscard]] S scale() const noexcept { return scale_; }
  void set_scale(S scale) {
    detail::require(std::isfinite(static_cast<double>(scale)), "LowRankExperts::set_scale()", "scale", "finite", scale);
    scale_ = scale;
  }

  /// Expert e's A [r, d_in] (lora_A) and B [d_out, r] (lora_B).
  [[nodiscard]] auto lora_a(Index e) { return a_.middleRows(check(e, __func__) * rank_, rank_); }
  [[nodiscard]] auto lora_a(Index e) const { return a_.middleRows(check(e, __func__) * rank_, rank_); }
  [[nodiscard]] auto lora_b(Index e) { return b_.middleRows(check(e, __func__) * d_out_, d_out_); }
  [[nodiscard]] auto lora_b(Index e) const { return b_.middleRows(check(e, __func__) * d_out_, d_out_); }
  /// Every expert's A stacked [E * r, d_in], and B [E * d_out, r].
  [[nodiscard]] RowMatrix<S>& a() noexcept { return a_; }
  [[nodiscard]] const RowMatrix<S>& a() const noexcept { return a_; }
  [[nodiscard]] RowMatrix<S>& b() noexcept { return b_; }
  [[nodiscard]] const RowMatrix<S>& b() const noexcept { return b_; }

  [[nodiscard]] Names& names() noexcept { return names_; }
  [[nodiscard]] const Names& names() const noexcept { return names_; }

  template <class F>
  void for_each_parameter(F&& f) {
    for (Index e = 0; e < num_experts_; ++e) {
      f(detail::expand_name(names_.a, e), lora_a(e));
      f(detail::expand_name(names_.b, e), lora_b(e));
    }
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    for (Index e = 0; e < num_experts_; ++e) {
      f(detail::expand_name(names_.a, e), lora_a(e));
      f(detail::expand_name(names_.b, e), lora_b(e));
    }
  }

  /// Throws if a factor was resized through its accessor.
  void check_shapes() const {
    constexpr const char* where = "LowRankExperts::check_shapes()";
    detail::require_shape(a_, num_experts_ * rank_, d_in_, where, "a()");
    detail::require_shape(b_, num_experts_ * d_out_, rank_, where, "b()");
  }

  /// hidden = x A_e^T [n, r]; y = scale * hidden B_e^T [n, d_out].
  template <class Arch = xsimd::default_arch>
  void forward(Index e, const ConstMatrixRef<S>& x, MatrixRef<S> hidden, MatrixRef<S> y,
               GemmKernel kernel = GemmKernel::fast) const {
    kernels::gemm<Arch>(hidden, x, Op::none, a_.middleRows(e * rank_, rank_), Op::transpose, S(1), S(0), kernel);
    kernels::gemm<Arch>(y, hidden, Op::none, b_.middleRows(e * d_out_, d_out_), Op::transpose, scale_, S(0), kernel);
  }

  /// dB_e += scale dy^T hidden; dh = scale dy B_e; dA_e += dh^T x; dx = dh A_e. scratch is
  /// [n, r].
  template <class Arch = xsimd::default_arch>
  void backward(Index e, const ConstMatrixRef<S>& x, const ConstMatrixRef<S>& hidden, const ConstMatrixRef<S>& dy,
                MatrixRef<S> dx, MatrixRef<S> scratch, LowRankExperts& grad) const {
    const auto b_e = b_.middleRows(e * d_out_, d_out_);
    kernels::gemm<Arch>(grad.b_.middleRows(e * d_out_, d_out_), dy, Op::transpose, hidden, Op::none, scale_, S(1));
    kernels::gemm<Arch>(scratch, dy, Op::none, b_e, Op::none, scale_, S(0));
    kernels::gemm<Arch>(grad.a_.middleRows(e * rank_, rank_), scratch, Op::transpose, x, Op::none, S(1), S(1));
    kernels::gemm<Arch>(dx, scratch, Op::none, a_.middleRows(e * rank_, rank_), Op::none, S(1), S(0));
  }

 private:
  Index check(Index e, const char* accessor) const {
    detail::require(e >= 0 && e < num_experts_, detail::concat("LowRankExperts::", accessor, "()"), "expert index",
                    detail::concat("in [0, ", num_experts_, ")"), e);
    return e;
  }

  Index num_experts_;
  Index d_in_;
  Index d_out_;
  Index rank_;
  S scale_;
  RowMatrix<S> a_;
  RowMatrix<S> b_;
  Names names_;
};

}  // namespace moe

#endif  // MOE_EXPERT_LOW_RANK_EXPERTS_HPP

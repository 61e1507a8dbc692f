// E linear maps y = x W_e^T: the shared frozen-or-trained base of low-rank (LoRA) experts,
// or a bank of plain linear experts.
#ifndef MOE_EXPERT_LINEAR_EXPERTS_HPP
#define MOE_EXPERT_LINEAR_EXPERTS_HPP

#include <moe/core/error.hpp>
#include <moe/core/parameters.hpp>
#include <moe/core/types.hpp>
#include <moe/kernels/gemm.hpp>

#include <string>
#include <xsimd/xsimd.hpp>

namespace moe {

/// E linear experts without bias: expert e maps x [n, d_in] to y = x W_e^T [n, d_out], W_e
/// [d_out, d_in] in the torch Linear orientation (weight() stacks them, [E * d_out, d_in]).
/// hidden_cols() = 0: backward needs x only.
///
/// A frozen bank (set_trainable(false)) lists no parameter (for_each_parameter calls f for
/// nothing), so an optimiser never changes it and a gradient check finds nothing to check;
/// its backward still gives dx. As the one expert of a SharedExpertCombiner<LinearExperts<S>,
/// SharedGate::none> it is the base W0 x of low-rank experts (LowRankMoE, docs/experts.md).
template <class S>
class LinearExperts {
 public:
  using scalar_type = S;

  /// Checkpoint name of expert e's weight; "{e}" stands for the expert index.
  struct Names {
    std::string weight = "experts.{e}.weight";
  };

  LinearExperts(Index num_experts, Index d_in, Index d_out) : num_experts_(num_experts), d_in_(d_in), d_out_(d_out) {
    constexpr const char* where = "LinearExperts::LinearExperts()";
    detail::require(num_experts >= 1, where, "num_experts", ">= 1", num_experts);
    detail::require(d_in >= 1, where, "d_in", ">= 1", d_in);
    detail::require(d_out >= 1, where, "d_out", ">= 1", d_out);
    weight_.setZero(num_experts * d_out, d_in);
  }

  [[nodiscard]] Index num_experts() const noexcept { return num_experts_; }
  [[nodiscard]] Index input_dim() const noexcept { return d_in_; }
  [[nodiscard]] Index output_dim() const noexcept { return d_out_; }
  [[nodiscard]] Index hidden_cols() const noexcept { return 0; }

  /// Whether the weights train: false freezes them (no parameter listed, no gradient).
  [[nodiscard]] bool trainable() const noexcept { return trainable_; }
  void set_trainable(bool on) noexcept { trainable_ = on; }

  /// Expert e's weight [d_out, d_in].
  [[nodiscard]] auto weight(Index e) { return weight_.middleRows(check(e, __func__) * d_out_, d_out_); }
  [[nodiscard]] auto weight(Index e) const { return weight_.middleRows(check(e, __func__) * d_out_, d_out_); }
  /// Every expert's weight, stacked [E * d_out, d_in].
  [[nodiscard]] RowMatrix<S>& weights() noexcept { return weight_; }
  [[nodiscard]] const RowMatrix<S>& weights() const noexcept { return weight_; }

  [[nodiscard]] Names& names() noexcept { return names_; }
  [[nodiscard]] const Names& names() const noexcept { return names_; }

  /// Calls f(name, block) for every trainable tensor: each expert's weight, or nothing when frozen.
  template <class F>
  void for_each_parameter(F&& f) {
    if (!trainable_) return;
    for (Index e = 0; e < num_experts_; ++e) f(detail::expand_name(names_.weight, e), weight(e));
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    if (!trainable_) return;
    for (Index e = 0; e < num_experts_; ++e) f(detail::expand_name(names_.weight, e), weight(e));
  }

  /// Throws if the weight was resized through its accessor.
  void check_shapes() const {
    detail::require_shape(weight_, num_experts_ * d_out_, d_in_, "LinearExperts::check_shapes()", "weights()");
  }

  /// y = x W_e^T for the rows of x [n, d_in]; hidden has no columns.
  template <class Arch = xsimd::default_arch>
  void forward(Index e, const ConstMatrixRef<S>& x, MatrixRef<S> /*hidden*/, MatrixRef<S> y,
               GemmKernel kernel = GemmKernel::fast) const {
    kernels::gemm<Arch>(y, x, Op::none, weight_.middleRows(e * d_out_, d_out_), Op::transpose, S(1), S(0), kernel);
  }

  /// dx = dy W_e; dW_e += dy^T x into grad unless frozen.
  template <class Arch = xsimd::default_arch>
  void backward(Index e, const ConstMatrixRef<S>& x, const ConstMatrixRef<S>& /*hidden*/, const ConstMatrixRef<S>& dy,
                MatrixRef<S> dx, MatrixRef<S> /*scratch*/, LinearExperts& grad) const {
    const auto w = weight_.middleRows(e * d_out_, d_out_);
    if (trainable_)
      kernels::gemm<Arch>(grad.weight_.middleRows(e * d_out_, d_out_), dy, Op::transpose, x, Op::none, S(1), S(1));
    kernels::gemm<Arch>(dx, dy, Op::none, w, Op::none, S(1), S(0));
  }

 private:
  Index check(Index e, const char* accessor) const {
    detail::require(e >= 0 && e < num_experts_, detail::concat("LinearExperts::", accessor, "()"), "expert index",
                    detail::concat("in [0, ", num_experts_, ")"), e);
    return e;
  }

  Index num_experts_;
  Index d_in_;
  Index d_out_;
  bool trainable_ = true;
  RowMatrix<S> weight_;
  Names names_;
};

}  // namespace moe

#endif  // MOE_EXPERT_LINEAR_EXPERTS_HPP

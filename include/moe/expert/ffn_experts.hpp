// A bank of plain two-layer FFN experts: y = act(x Wi^T + bi) Wo^T + bo.
#ifndef MOE_EXPERT_FFN_EXPERTS_HPP
#define MOE_EXPERT_FFN_EXPERTS_HPP

#include <moe/core/error.hpp>
#include <moe/core/parameters.hpp>
#include <moe/core/types.hpp>
#include <moe/kernels/activations.hpp>
#include <moe/expert/packed_cache.hpp>
#include <moe/kernels/gemm.hpp>
#include <moe/kernels/packed_gemm.hpp>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <xsimd/xsimd.hpp>

namespace moe {

enum class Activation : std::uint8_t {
  relu,       ///< max(x, 0): Switch Transformers
  gelu_erf,   ///< 0.5 x (1 + erf(x / sqrt 2))
  gelu_tanh,  ///< 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
  silu,       ///< x sigmoid(x)
};

/// E two-layer FFN experts with a fixed activation (Switch Transformers wi/wo, GELU experts
/// of Soft MoE). Biases are optional (Switch has none): call enable_biases() to add them.
///
/// Weights: wi() is [E * ff, d], wo() is [E * d, ff], Hugging Face [out, in] orientation.
/// hidden_cols() = 2 ff: per row [pre-activation | activation].
template <class S, Activation Act>
class FFNExperts {
 public:
  using scalar_type = S;
  static constexpr Activation activation = Act;

  /// Checkpoint names; "{e}" stands for the expert index. Defaults: Switch Transformers.
  struct Names {
    std::string wi = "experts.expert_{e}.wi.weight";
    std::string wo = "experts.expert_{e}.wo.weight";
    std::string bi = "experts.expert_{e}.wi.bias";
    std::string bo = "experts.expert_{e}.wo.bias";
  };

  FFNExperts(Index num_experts, Index d_model, Index d_ff)
      : num_experts_(num_experts), d_model_(d_model), d_ff_(d_ff) {
    constexpr const char* where = "FFNExperts::FFNExperts()";
    detail::require(num_experts >= 1, where, "num_experts", ">= 1", num_experts);
    detail::require(d_model >= 1, where, "d_model", ">= 1", d_model);
    detail::require(d_ff >= 1, where, "d_ff", ">= 1", d_ff);
    wi_.setZero(num_experts * d_ff, d_model);
    wo_.setZero(num_experts * d_model, d_ff);
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

  [[nodiscard]] auto wi(Index e) {
    packed_.invalidate();
    return wi_.middleRows(check(e, __func__) * d_ff_, d_ff_);
  }
  [[nodiscard]] auto wi(Index e) const { return wi_.middleRows(check(e, __func__) * d_ff_, d_ff_); }
  [[nodiscard]] auto wo(Index e) {
    packed_.invalidate();
    return wo_.middleRows(check(e, __func__) * d_model_, d_model_);
  }
  [[nodiscard]] auto wo(Index e) const { return wo_.middleRows(check(e, __func__) * d_model_, d_model_); }
  [[nodiscard]] Names& names() noexcept { return names_; }
  [[nodiscard]] const Names& names() const noexcept { return names_; }

  template <class F>
  void for_each_parameter(F&& f) {
    packed_.invalidate();
    visit(*this, f);
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    visit(*this, f);
  }

  [[nodiscard]] RowMatrix<S>& wi() noexcept {
    packed_.invalidate();
    return wi_;
  }
  [[nodiscard]] const RowMatrix<S>& wi() const noexcept { return wi_; }
  [[nodiscard]] RowMatrix<S>& wo() noexcept {
    packed_.invalidate();
    return wo_;
  }
  [[nodiscard]] const RowMatrix<S>& wo() const noexcept { return wo_; }
  /// [E, ff] and [E, d]; empty unless enable_biases() was called.
  [[nodiscard]] RowMatrix<S>& bi() noexcept { return bi_; }
  [[nodiscard]] const RowMatrix<S>& bi() const noexcept { return bi_; }
  [[nodiscard]] RowMatrix<S>& bo() noexcept { return bo_; }
  [[nodiscard]] const RowMatrix<S>& bo() const noexcept { return bo_; }

  /// Throws if a weight block was resized through its accessor.
  void check_shapes() const {
    constexpr const char* where = "FFNExperts::check_shapes()";
    detail::require_shape(wi_, num_experts_ * d_ff_, d_model_, where, "wi()");
    detail::require_shape(wo_, num_experts_ * d_model_, d_ff_, where, "wo()");
    if (bi_.size() != 0 || bo_.size() != 0) {
      detail::require_shape(bi_, num_experts_, d_ff_, where, "bi()");
      detail::require_shape(bo_, num_experts_, d_model_, where, "bo()");
    }
  }

  /// The element type the forward's products read the weights in (SwiGLUExperts::compute).
  [[nodiscard]] ComputeType compute() const noexcept { return packed_.compute(); }
  void set_compute(ComputeType c) { packed_.set_compute(c); }
  /// The weights changed through a kept block or pointer (SwiGLUExperts::weights_changed).
  void weights_changed() noexcept { packed_.invalidate(); }
  [[nodiscard]] std::size_t packed_bytes() const noexcept { return packed_.bytes(); }

  /// The products read packed weights (kernels::packed_gemm), as in SwiGLUExperts::forward.
  template <class Arch = xsimd::default_arch>
  void forward(Index e, const ConstMatrixRef<S>& x, MatrixRef<S> hidden, MatrixRef<S> y,
               GemmKernel kernel = GemmKernel::fast) const {
    const Index n = x.rows();
    const Index ff = d_ff_;
    auto pre = hidden.leftCols(ff);
    auto act = hidden.middleCols(ff, ff);
    const auto source = [this](Index i) {
      const Index x_e = i / 2;
      return i % 2 == 0 ? wi_.middleRows(x_e * d_ff_, d_ff_) : wo_.middleRows(x_e * d_model_, d_model_);
    };
    const auto first_product = [&](const auto* packed) {
      if (packed != nullptr) {
        packed_.verify(packed[2 * e], 2 * e, source, "FFNExperts::forward()");
        packed_.verify(packed[2 * e + 1], 2 * e + 1, source, "FFNExperts::forward()");
        kernels::packed_gemm<Arch>(pre, x, packed[2 * e]);
      } else {
        kernels::gemm<Arch>(pre, x, Op::none, wi_.middleRows(e * ff, ff), Op::transpose, S(1), S(0), kernel);
      }
      if (has_biases()) pre.rowwise() += bi_.row(e);
      act = pre;
      for (Index r = 0; r < n; ++r) apply_activation<Arch>(act.row(r).data(), ff);
      if (packed != nullptr) {
        kernels::packed_gemm<Arch>(y, act, packed[2 * e + 1]);
      } else {
        kernels::gemm<Arch>(y, act, Op::none, wo_.middleRows(e * d_model_, d_model_), Op::transpose, S(1), S(0),
                            kernel);
      }
      if (has_biases()) y.rowwise() += bo_.row(e);
    };
    if constexpr (std::is_same_v<S, float>) {
      if (packed_.compute() == ComputeType::bf16) {
        const auto* packed = packed_.template get<bf16, Arch>(2 * num_experts_, source);
        if (packed != nullptr) {
          first_product(packed);
          return;
        }
        first_product(static_cast<const kernels::PackedMatrix<S>*>(nullptr));
        return;
      }
    }
    first_product(packed_.template get<S, Arch>(2 * num_experts_, source));
  }

  /// Backward of forward(e, ...): dx, and dL/dW accumulated into grad (same shapes).
  template <class Arch = xsimd::default_arch>
  void backward(Index e, const ConstMatrixRef<S>& x, const ConstMatrixRef<S>& hidden, const ConstMatrixRef<S>& dy,
                MatrixRef<S> dx, MatrixRef<S> scratch, FFNExperts& grad) const {
    if (packed_.compute() != ComputeType::native)
      throw std::logic_error(
          "FFNExperts::backward(): a bank whose products run in bf16 (ComputeType::bf16) is for inference; "
          "expected ComputeType::native for training");
    grad.packed_.invalidate();
    const Index n = x.rows();
    const Index ff = d_ff_;
    kernels::gemm<Arch>(grad.wo_.middleRows(e * d_model_, d_model_), dy, Op::transpose, hidden.middleCols(ff, ff), Op::none, S(1),
                       S(1));
    if (has_biases()) detail::add_column_sums(grad.bo_.row(e), dy);
    auto dpre = scratch.leftCols(ff);
    kernels::gemm<Arch>(dpre, dy, Op::none, wo_.middleRows(e * d_model_, d_model_), Op::none, S(1), S(0));
    for (Index r = 0; r < n; ++r)
      for (Index j = 0; j < ff; ++j) dpre(r, j) *= derivative(hidden(r, j));
    kernels::gemm<Arch>(grad.wi_.middleRows(e * ff, ff), dpre, Op::transpose, x, Op::none, S(1), S(1));
    if (has_biases()) detail::add_column_sums(grad.bi_.row(e), dpre);
    kernels::gemm<Arch>(dx, dpre, Op::none, wi_.middleRows(e * ff, ff), Op::none, S(1), S(0));
  }

  /// The activation in place on v[0, n) (the quantized bank applies it too).
  template <class Arch>
  static void apply_activation(S* v, Index n) {
    if constexpr (Act == Activation::relu) kernels::Relu<Arch>{}(v, n);
    else if constexpr (Act == Activation::gelu_erf) kernels::GeluErf<Arch>{}(v, n);
    else if constexpr (Act == Activation::gelu_tanh) kernels::GeluTanh<Arch>{}(v, n);
    else kernels::Silu<Arch>{}(v, n);
  }

 private:
  /// d act / d pre at pre-activation v.
  static S derivative(S v) {
    if constexpr (Act == Activation::relu) {
      return v > S(0) ? S(1) : S(0);
    } else if constexpr (Act == Activation::gelu_erf) {
      constexpr S inv_sqrt2 = S(0.70710678118654752440L);
      constexpr S inv_sqrt_2pi = S(0.39894228040143267794L);
      return S(0.5) * (S(1) + std::erf(v * inv_sqrt2)) + v * inv_sqrt_2pi * std::exp(S(-0.5) * v * v);
    } else if constexpr (Act == Activation::gelu_tanh) {
      constexpr S c = S(0.79788456080286535588L);
      constexpr S a = S(0.044715L);
      const S th = std::tanh(c * (v + a * v * v * v));
      return S(0.5) * (S(1) + th) + S(0.5) * v * (S(1) - th * th) * c * (S(1) + S(3) * a * v * v);
    } else {
      const S sig = S(1) / (S(1) + std::exp(-v));
      return sig * (S(1) + v * (S(1) - sig));
    }
  }

  template <class Self, class F>
  static void visit(Self& self, F& f) {
    for (Index e = 0; e < self.num_experts_; ++e) {
      f(detail::expand_name(self.names_.wi, e), self.wi_.middleRows(e * self.d_ff_, self.d_ff_));
      f(detail::expand_name(self.names_.wo, e), self.wo_.middleRows(e * self.d_model_, self.d_model_));
      if (self.has_biases()) {
        f(detail::expand_name(self.names_.bi, e), self.bi_.row(e));
        f(detail::expand_name(self.names_.bo, e), self.bo_.row(e));
      }
    }
  }

  Index check(Index e, const char* accessor) const {
    detail::require(e >= 0 && e < num_experts_, detail::concat("FFNExperts::", accessor, "()"), "expert index",
                    detail::concat("in [0, ", num_experts_, ")"), e);
    return e;
  }

  Index num_experts_;
  Index d_model_;
  Index d_ff_;
  RowMatrix<S> wi_;
  RowMatrix<S> wo_;
  RowMatrix<S> bi_;
  RowMatrix<S> bo_;
  Names names_;
  PackedCache<S> packed_;
};

}  // namespace moe

#endif  // MOE_EXPERT_FFN_EXPERTS_HPP

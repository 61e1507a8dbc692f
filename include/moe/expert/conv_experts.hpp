// Convolutional experts: a depthwise causal convolution over the token's own sequence, then an
// inner bank (SwiGLU in the golden case). The first bank that reads other tokens' inputs
// (expert_traits<E>::reads_other_tokens): its backward adds their gradient into the layer's dx.
#ifndef MOE_EXPERT_CONV_EXPERTS_HPP
#define MOE_EXPERT_CONV_EXPERTS_HPP

#include <moe/contracts/expert.hpp>
#include <moe/core/error.hpp>
#include <moe/core/parameters.hpp>
#include <moe/core/traits.hpp>
#include <moe/core/types.hpp>
#include <moe/expert/local_executor.hpp>

#include <algorithm>
#include <string>
#include <utility>
#include <xsimd/xsimd.hpp>

namespace moe {

/// E experts, each u_t = sum_{tau=0}^{w-1} c_e[tau] * x_{t-tau} (elementwise over the d
/// features, no bias), then inner_e(u_t).
///
/// - c_e = conv(e) is [w, d]: row 0 multiplies the current token, row tau the token tau
///   positions back. This is a PyTorch depthwise conv1d kernel reversed in time:
///   c_e[tau] = conv1d.weight[:, 0, w - 1 - tau].
/// - x_{t-tau} is 0 before the start of the token's own sequence
///   (ForwardContext::sequence_length; 0 means the batch is one sequence): the convolution
///   never reads another sequence of the batch.
/// - The router sees x_t, not u_t; the convolution reads the neighbours' raw inputs whatever
///   their own routing, so a token's gradient gets terms from the experts of later tokens.
///
/// Token positions come from the ExpertContext: the bank runs on the sparse path only (a
/// dense router's slots have no position; forward throws there). hidden_cols() = d +
/// inner.hidden_cols(): per row u_t, then the inner bank's intermediates.
template <class Inner>
class CausalConvExperts {
  static_assert(!expert_traits<Inner>::needs_context,
                "CausalConvExperts: the inner bank must not need an ExpertContext itself (docs/experts.md)");

 public:
  using scalar_type = typename Inner::scalar_type;
  using inner_type = Inner;
  static constexpr bool needs_context = true;
  static constexpr bool reads_other_tokens = true;

  /// Checkpoint name of expert e's kernel; "{e}" stands for the expert index.
  struct Names {
    std::string conv = "experts.{e}.conv.weight";
  };

  /// inner maps d -> d_out with input_dim() = d; the kernels start at zero.
  CausalConvExperts(Inner inner, Index kernel_size) : inner_(std::move(inner)), width_(kernel_size) {
    constexpr const char* where = "CausalConvExperts::CausalConvExperts()";
    detail::require(kernel_size >= 1, where, "kernel_size", ">= 1", kernel_size);
    conv_.setZero(inner_.num_experts() * width_, inner_.input_dim());
  }

  [[nodiscard]] Index num_experts() const noexcept { return inner_.num_experts(); }
  [[nodiscard]] Index input_dim() const noexcept { return inner_.input_dim(); }
  [[nodiscard]] Index output_dim() const noexcept { return inner_.output_dim(); }
  [[nodiscard]] Index hidden_cols() const noexcept { return inner_.input_dim() + inner_.hidden_cols(); }
  [[nodiscard]] Index kernel_size() const noexcept { return width_; }
  [[nodiscard]] Inner& inner() noexcept { return inner_; }
  [[nodiscard]] const Inner& inner() const noexcept { return inner_; }
  [[nodiscard]] Names& names() noexcept { return names_; }
  [[nodiscard]] const Names& names() const noexcept { return names_; }

  /// Expert e's kernel [w, d]; row tau multiplies the token tau positions back.
  [[nodiscard]] auto conv(Index e) { return conv_.middleRows(check(e, __func__) * width_, width_); }
  [[nodiscard]] auto conv(Index e) const { return conv_.middleRows(check(e, __func__) * width_, width_); }
  /// Every kernel, expert after expert: [E * w, d].
  [[nodiscard]] RowMatrix<scalar_type>& kernels() noexcept { return conv_; }
  [[nodiscard]] const RowMatrix<scalar_type>& kernels() const noexcept { return conv_; }

  /// Expert e's kernel, then the inner bank's tensors of every expert.
  template <class F>
  void for_each_parameter(F&& f) {
    for (Index e = 0; e < num_experts(); ++e) f(detail::expand_name(names_.conv, e), conv(e));
    inner_.for_each_parameter(f);
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    for (Index e = 0; e < num_experts(); ++e) f(detail::expand_name(names_.conv, e), conv(e));
    inner_.for_each_parameter(f);
  }

  void check_shapes() const {
    constexpr const char* where = "CausalConvExperts::check_shapes()";
    detail::require_shape(conv_, num_experts() * width_, input_dim(), where, "kernels()");
    if constexpr (requires { inner_.check_shapes(); }) inner_.check_shapes();
  }

  /// Runs expert e on its slab: u = the convolution of each row's token (read from
  /// ctx.input), then the inner expert on u. x is the slab (row i = ctx.input row
  /// ctx.tokens[i]); hidden is [n, hidden_cols()], y [n, d_out].
  template <class Arch = xsimd::default_arch>
  void forward(Index e, const ConstMatrixRef<scalar_type>& x, MatrixRef<scalar_type> hidden,
               MatrixRef<scalar_type> y, const ExpertContext<scalar_type>& ctx) const {
    require_tokens(ctx, x.rows(), "CausalConvExperts::forward()");
    const Index d = input_dim();
    auto u = hidden.leftCols(d);
    const auto c = conv_.middleRows(e * width_, width_);
    for (Index i = 0; i < x.rows(); ++i) {
      const Index t = ctx.tokens[static_cast<std::size_t>(i)];
      const Index reach = std::min(width_ - 1, ctx.position(i));
      u.row(i) = c.row(0).cwiseProduct(x.row(i));
      for (Index tau = 1; tau <= reach; ++tau) u.row(i) += c.row(tau).cwiseProduct(ctx.input.row(t - tau));
    }
    detail::forward_expert<Arch, Inner, scalar_type>(inner_, e, u, hidden.rightCols(inner_.hidden_cols()), y,
                                                     ctx.forward.gemm);
  }

  /// dL/du from the inner bank (kept in dhidden's first d columns); then dx of the slab's own
  /// rows = c_e[0] * du, the earlier tokens' share c_e[tau] * du added into *ctx.input_grad,
  /// and dc_e[tau] += du * x_{t-tau}, rows in slab order.
  template <class Arch = xsimd::default_arch>
  void backward(Index e, const ConstMatrixRef<scalar_type>& x, const ConstMatrixRef<scalar_type>& hidden,
                const ConstMatrixRef<scalar_type>& dy, MatrixRef<scalar_type> dx, MatrixRef<scalar_type> dhidden,
                CausalConvExperts& grad, const ExpertContext<scalar_type>& ctx) const {
    constexpr const char* where = "CausalConvExperts::backward()";
    require_tokens(ctx, x.rows(), where);
    if (ctx.input_grad == nullptr)
      detail::throw_invalid(where, "ExpertContext::input_grad",
                            "the layer's dx (the convolution reads earlier tokens' inputs)", "nullptr");
    const Index d = input_dim();
    const Index h = inner_.hidden_cols();
    auto du = dhidden.leftCols(d);
    inner_.template backward<Arch>(e, hidden.leftCols(d), hidden.rightCols(h), dy, du, dhidden.rightCols(h),
                                   grad.inner_);
    const auto c = conv_.middleRows(e * width_, width_);
    auto dc = grad.conv_.middleRows(e * width_, width_);
    MatrixRef<scalar_type>& gx = *ctx.input_grad;
    for (Index i = 0; i < x.rows(); ++i) {
      const Index t = ctx.tokens[static_cast<std::size_t>(i)];
      const Index reach = std::min(width_ - 1, ctx.position(i));
      dx.row(i) = c.row(0).cwiseProduct(du.row(i));
      dc.row(0) += du.row(i).cwiseProduct(x.row(i));
      for (Index tau = 1; tau <= reach; ++tau) {
        gx.row(t - tau) += c.row(tau).cwiseProduct(du.row(i));
        dc.row(tau) += du.row(i).cwiseProduct(ctx.input.row(t - tau));
      }
    }
  }

 private:
  void require_tokens(const ExpertContext<scalar_type>& ctx, Index rows, const char* where) const {
    if (ctx.tokens.empty() && rows > 0)
      detail::throw_invalid(where, "ExpertContext::tokens",
                            "the token of each slab row (the sparse path: a convolution needs positions)",
                            "none (a dense router's slots have no position)");
    detail::require(static_cast<Index>(ctx.tokens.size()) == rows, where, "ExpertContext::tokens length", rows,
                    ctx.tokens.size());
    detail::require(ctx.input.cols() == input_dim(), where, "ExpertContext::input columns", input_dim(),
                    ctx.input.cols());
  }

  Index check(Index e, const char* accessor) const {
    detail::require(e >= 0 && e < num_experts(), detail::concat("CausalConvExperts::", accessor, "()"),
                    "expert index", detail::concat("in [0, ", num_experts(), ")"), e);
    return e;
  }

  Inner inner_;
  Index width_;
  RowMatrix<scalar_type> conv_;
  Names names_;
};

}  // namespace moe

#endif  // MOE_EXPERT_CONV_EXPERTS_HPP

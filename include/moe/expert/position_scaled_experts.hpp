// An expert bank that reads its slab's context: a wrapped bank whose output for a token is
// scaled by the token's position in its sequence. The smallest expert that needs the
// ExpertContext (expert_traits<E>::needs_context); convolutional and recurrent experts use
// the same seam to read a token's neighbours.
#ifndef MOE_EXPERT_POSITION_SCALED_EXPERTS_HPP
#define MOE_EXPERT_POSITION_SCALED_EXPERTS_HPP

#include <moe/contracts/expert.hpp>
#include <moe/core/error.hpp>
#include <moe/core/scratch.hpp>
#include <moe/core/types.hpp>
#include <moe/expert/local_executor.hpp>

#include <cmath>
#include <utility>
#include <xsimd/xsimd.hpp>

namespace moe {

/// y(token t) = inner_e(x_t) / (1 + decay * position(t)), position(t) = t mod
/// ForwardContext::sequence_length (t itself when the batch is one sequence). A per-position
/// damping, e.g. for experts that should fade along a sequence. On the dense path (Soft MoE)
/// rows are slots, which have no position: the scale is 1. Parameters and names are the
/// inner bank's; decay is a constant.
template <class Inner>
class PositionScaledExperts {
 public:
  using scalar_type = typename Inner::scalar_type;
  using inner_type = Inner;
  static constexpr bool needs_context = true;

  /// decay >= 0 and finite.
  PositionScaledExperts(Inner inner, double decay) : inner_(std::move(inner)), decay_(decay) {
    detail::require(std::isfinite(decay) && decay >= 0.0, "PositionScaledExperts::PositionScaledExperts()", "decay",
                    "finite and >= 0", decay);
  }

  [[nodiscard]] Index num_experts() const noexcept { return inner_.num_experts(); }
  [[nodiscard]] Index input_dim() const noexcept { return inner_.input_dim(); }
  [[nodiscard]] Index output_dim() const noexcept { return inner_.output_dim(); }
  [[nodiscard]] Index hidden_cols() const noexcept { return inner_.hidden_cols(); }
  [[nodiscard]] double decay() const noexcept { return decay_; }
  [[nodiscard]] Inner& inner() noexcept { return inner_; }
  [[nodiscard]] const Inner& inner() const noexcept { return inner_; }

  /// The scale of slab row i.
  [[nodiscard]] scalar_type scale(const ExpertContext<scalar_type>& ctx, Index i) const noexcept {
    if (ctx.tokens.empty()) return scalar_type(1);
    return scalar_type(1) / (scalar_type(1) + static_cast<scalar_type>(decay_) * static_cast<scalar_type>(ctx.position(i)));
  }

  template <class Arch = xsimd::default_arch>
  void forward(Index e, const ConstMatrixRef<scalar_type>& x, MatrixRef<scalar_type> hidden, MatrixRef<scalar_type> y,
               const ExpertContext<scalar_type>& ctx) const {
    detail::forward_expert<Arch, Inner, scalar_type>(inner_, e, x, hidden, y, ctx.forward.gemm);
    for (Index i = 0; i < y.rows(); ++i) y.row(i) *= scale(ctx, i);
  }

  /// dL/d inner output = scale * dy; the inner bank's backward does the rest.
  template <class Arch = xsimd::default_arch>
  void backward(Index e, const ConstMatrixRef<scalar_type>& x, const ConstMatrixRef<scalar_type>& hidden,
                const ConstMatrixRef<scalar_type>& dy, MatrixRef<scalar_type> dx, MatrixRef<scalar_type> dhidden,
                PositionScaledExperts& grad, const ExpertContext<scalar_type>& ctx) const {
    struct Tag;
    detail::ScratchLease<scalar_type, Tag> lease;
    auto dys = lease.matrix(dy.rows(), dy.cols());  // the thread's scratch, grown once
    for (Index i = 0; i < dy.rows(); ++i) dys.row(i) = dy.row(i) * scale(ctx, i);
    inner_.template backward<Arch>(e, x, hidden, dys, dx, dhidden, grad.inner_);
  }

  template <class F>
  void for_each_parameter(F&& f) {
    inner_.for_each_parameter(f);
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    inner_.for_each_parameter(f);
  }

 private:
  Inner inner_;
  double decay_;
};

}  // namespace moe

#endif  // MOE_EXPERT_POSITION_SCALED_EXPERTS_HPP

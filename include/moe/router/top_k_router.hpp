// Token-choice top-k routing: a linear projection to logits, then a gating rule.
#ifndef MOE_ROUTER_TOP_K_ROUTER_HPP
#define MOE_ROUTER_TOP_K_ROUTER_HPP

#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/types.hpp>
#include <moe/kernels/gemm.hpp>
#include <moe/router/gating.hpp>
#include <moe/contracts/concepts.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/contracts/training.hpp>
#include <moe/core/traits.hpp>

#include <string>
#include <utility>
#include <xsimd/xsimd.hpp>

namespace moe {

/// logits = x W^T (+ b), then GatingType picks k experts per token and their weights.
///
/// | member      | shape  | checkpoint name (Mixtral / Qwen / GPT-OSS)          |
/// |-------------|--------|------------------------------------------------------|
/// | weight()    | [E, d] | block_sparse_moe.gate.weight / mlp.gate.weight / mlp.router.weight |
/// | bias()      | [E]    | mlp.router.bias (GPT-OSS only; empty otherwise)     |
template <class GatingType>
class TopKRouter {
 public:
  using scalar_type = typename GatingType::scalar_type;
  using gating_type = GatingType;
  /// Whether a token's gates depend on each other beyond gate * dgate (router_traits).
  static constexpr bool couples_gates = router_traits<GatingType>::couples_gates;
  static constexpr bool token_choice = true;

  /// Checkpoint names of the router's trainable tensors.
  struct Names {
    std::string weight = "gate.weight";
    std::string bias = "gate.bias";
  };

  /// Zero weights for E experts over inputs of width d; k experts per token.
  TopKRouter(Index num_experts, Index input_dim, Index k, GatingType gating = {}, bool with_bias = false)
      : TopKRouter(RowMatrix<scalar_type>::Zero(num_experts, input_dim), k, std::move(gating),
                   with_bias ? Vector<scalar_type>::Zero(num_experts) : Vector<scalar_type>()) {}

  /// Takes the weight [E, d] and an optional logit bias [E] (empty for none).
  TopKRouter(RowMatrix<scalar_type> weight, Index k, GatingType gating = {}, Vector<scalar_type> bias = {})
      : weight_(std::move(weight)), bias_(std::move(bias)), k_(k), gating_(std::move(gating)) {
    constexpr const char* where = "TopKRouter::TopKRouter()";
    detail::require(weight_.rows() >= 1, where, "num_experts", ">= 1", weight_.rows());
    detail::require(weight_.cols() >= 1, where, "input_dim", ">= 1", weight_.cols());
    detail::require(k_ >= 1 && k_ <= weight_.rows(), where, "k",
                    detail::concat("in [1, num_experts = ", weight_.rows(), "]"), k_);
    detail::require(bias_.size() == 0 || bias_.size() == weight_.rows(), where, "bias length",
                    detail::concat("0 or num_experts = ", weight_.rows()), bias_.size());
    gating_.validate(weight_.rows(), k_);
  }

  [[nodiscard]] Index num_experts() const noexcept { return weight_.rows(); }
  [[nodiscard]] Index input_dim() const noexcept { return weight_.cols(); }
  [[nodiscard]] Index k() const noexcept { return k_; }

  [[nodiscard]] RowMatrix<scalar_type>& weight() noexcept { return weight_; }
  [[nodiscard]] const RowMatrix<scalar_type>& weight() const noexcept { return weight_; }
  [[nodiscard]] Vector<scalar_type>& bias() noexcept { return bias_; }
  [[nodiscard]] const Vector<scalar_type>& bias() const noexcept { return bias_; }
  [[nodiscard]] Names& names() noexcept { return names_; }
  [[nodiscard]] const Names& names() const noexcept { return names_; }

  template <class F>
  void for_each_parameter(F&& f) {
    f(names_.weight, weight_);
    if (bias_.size() != 0) f(names_.bias, bias_);
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    f(names_.weight, weight_);
    if (bias_.size() != 0) f(names_.bias, bias_);
  }

  [[nodiscard]] GatingType& gating() noexcept { return gating_; }
  [[nodiscard]] const GatingType& gating() const noexcept { return gating_; }

  /// Throws if the weight or bias was resized through its accessor so that it no longer
  /// matches E and d, or the gating's settings no longer fit.
  void check_shapes() const {
    constexpr const char* where = "TopKRouter::check_shapes()";
    // Runs every forward: messages are built only on failure, so a passing check allocates nothing.
    if (k_ < 1 || k_ > weight_.rows())
      detail::throw_invalid(where, "k", detail::concat("in [1, num_experts = ", weight_.rows(), "]"), k_);
    if (bias_.size() != 0 && bias_.size() != weight_.rows())
      detail::throw_invalid(where, "bias length", detail::concat("0 or num_experts = ", weight_.rows()), bias_.size());
    gating_.validate(weight_.rows(), k_);
  }

  template <class Arch = xsimd::default_arch>
  void route(const ConstMatrixRef<scalar_type>& x, RoutingResult<scalar_type>& out,
             const ForwardContext& ctx = {}) const {
    project<Arch>(x, out, ctx);
    gating_.template select<Arch>(out, k_);
  }

  /// Recomputes the gates of token t's pairs [begin, end) of `out` by the gating rule, for
  /// the experts they now hold (overflow rerouting, routing replay), where the rule can.
  template <class Arch = xsimd::default_arch>
    requires detail::HasRegate<GatingType, Arch>
  void regate(RoutingResult<scalar_type>& out, Index t, Index begin, Index end) const {
    gating_.template regate<Arch>(out, t, begin, end);
  }

  /// route()'s first step: sizes `out` for x's T tokens and writes out.logits = x W^T (+ b),
  /// selecting nothing. A router that changes the logits before the gating rule (a mask, an
  /// added term: ModalityRouter, DomainAwareRouter) calls it, then gating().select<Arch>(out, k()).
  template <class Arch = xsimd::default_arch>
  void project(const ConstMatrixRef<scalar_type>& x, RoutingResult<scalar_type>& out,
               const ForwardContext& ctx = {}) const {
    detail::require(x.cols() == input_dim(), "TopKRouter::route()", "x columns (input_dim)", input_dim(),
                    x.cols());
    const Index T = x.rows();
    out.reset(T, num_experts(), T * k_, k_);
    detail::ensure_shape(out.logits, T, num_experts());
    kernels::gemm<Arch>(out.logits, x, Op::none, weight_, Op::transpose, scalar_type(1), scalar_type(0), ctx.gemm);
    if (bias_.size() != 0) out.logits.rowwise() += bias_.transpose();
  }

  /// Backward of route() (the router protocol, docs/routers.md#training): in.dgate holds
  /// dL/dgate per assignment (0 for dropped ones); in.dlogits [T, E] comes in holding the
  /// losses' gradients and leaves holding the total dL/dlogits. Accumulates dL/dW (and dL/db)
  /// into grad and adds dL/dx to in.dx. Consumes no loss itself.
  template <class Arch = xsimd::default_arch>
  void backward(const RouterBackward<scalar_type>& in, TopKRouter& grad, const auto& /*losses*/) const {
    const auto& x = in.x;
    MatrixRef<scalar_type> dlogits = in.dlogits;
    MatrixRef<scalar_type> dx = in.dx;
    gating_.backward(in.routing, k_, in.dgate, dlogits);
    kernels::gemm<Arch>(grad.weight_, dlogits, Op::transpose, x, Op::none, scalar_type(1), scalar_type(1));
    if (bias_.size() != 0) grad.bias_ += dlogits.colwise().sum().transpose();
    kernels::gemm<Arch>(dx, dlogits, Op::none, weight_, Op::none, scalar_type(1), scalar_type(1));
  }

 private:
  RowMatrix<scalar_type> weight_;
  Vector<scalar_type> bias_;
  Index k_;
  GatingType gating_;
  Names names_;
};

/// Mixtral, Qwen2-MoE, OLMoE: softmax, top-k, optional renormalisation.
template <class S>
using SoftmaxTopKRouter = TopKRouter<SoftmaxTopK<S>>;
/// GPT-OSS: top-k of biased logits, softmax over the k.
template <class S>
using TopKSoftmaxRouter = TopKRouter<TopKSoftmax<S>>;
/// DeepSeek-V3: sigmoid, correction bias, group-limited selection, scaling.
template <class S>
using GroupLimitedRouter = TopKRouter<SigmoidGroupLimited<S>>;
/// Top-p (Huang et al. 2024): the fewest experts whose probabilities reach a threshold, at most
/// k, raw probabilities as gates; 1..k experts per token.
template <class S>
using TopPRouter = TopKRouter<TopP<S>>;
/// Dynamic skipping (NAEE, Lu et al. 2024): top-k, then drop the experts below beta times the
/// first's probability, renormalised; 1..k experts per token.
template <class S>
using ThresholdSkipRouter = TopKRouter<ThresholdSkip<S>>;

}  // namespace moe

#endif  // MOE_ROUTER_TOP_K_ROUTER_HPP

// Noisily gated top-k routing (Shazeer et al. 2017), as tensor2tensor's noisy_top_k_gating.
#ifndef MOE_ROUTER_NOISY_TOP_K_ROUTER_HPP
#define MOE_ROUTER_NOISY_TOP_K_ROUTER_HPP

#include <moe/combine/weighted_sum_combiner.hpp>
#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/random.hpp>
#include <moe/core/types.hpp>
#include <moe/expert/swiglu_experts.hpp>
#include <moe/kernels/softmax.hpp>
#include <moe/kernels/top_k.hpp>
#include <moe/layer/moe_layer.hpp>
#include <moe/router/routing_result.hpp>

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>
#include <xsimd/xsimd.hpp>

namespace moe {

/// The three [T, E] matrices of one noisy gating call. The load loss needs the clean logits
/// and the noise scale besides the noisy logits the selection used, and RoutingResult has
/// room for only the latter, so the router hands these out separately (gating_terms()).
template <class S>
struct NoisyGatingTerms {
  RowMatrix<S> clean;   ///< x Wg^T
  RowMatrix<S> stddev;  ///< softplus(x Wn^T) + noise_epsilon; all 0 when no noise was added
  RowMatrix<S> noisy;   ///< clean + eps * stddev (= clean when no noise was added)
};

/// clean = x Wg^T, stddev = softplus(x Wn^T) + noise_epsilon, noisy = clean + eps * stddev,
/// gates = softmax over the k largest noisy logits (0 elsewhere).
///
/// eps is standard normal: CounterRng(ctx.seed, ctx.step).normal(token, expert), where token
/// is the row index in this call, or the matrix given to set_noise(). Noise is added only in
/// training (ctx.mode == Mode::training); in inference the clean logits are selected on.
///
/// RoutingResult: k triples per token, token-major, best first; logits = scores = the logits
/// the selection was made on (noisy in training, clean in inference).
///
/// | member         | shape  | golden name        |
/// |----------------|--------|--------------------|
/// | weight()       | [E, d] | moe.gate.weight    |
/// | noise_weight() | [E, d] | moe.noise.weight   |
template <class S>
class NoisyTopKRouter {
 public:
  using scalar_type = S;
  static constexpr bool token_choice = true;
  static constexpr bool needs_rng = true;

  /// tensor2tensor's noise_epsilon: the smallest noise scale, so every logit stays noisy.
  static constexpr S default_noise_epsilon = S(1e-2);

  /// Zero gate and noise weights for E experts over inputs of width d.
  NoisyTopKRouter(Index num_experts, Index input_dim, Index k)
      : NoisyTopKRouter(RowMatrix<S>::Zero(num_experts, input_dim), RowMatrix<S>::Zero(num_experts, input_dim), k) {}

  /// Takes the gate weight Wg [E, d] and the noise weight Wn [E, d].
  NoisyTopKRouter(RowMatrix<S> weight, RowMatrix<S> noise_weight, Index k, S noise_epsilon = default_noise_epsilon)
      : weight_(std::move(weight)), noise_weight_(std::move(noise_weight)), k_(k), noise_epsilon_(noise_epsilon) {
    constexpr const char* where = "NoisyTopKRouter::NoisyTopKRouter()";
    detail::require(weight_.rows() >= 1, where, "num_experts", ">= 1", weight_.rows());
    detail::require(weight_.cols() >= 1, where, "input_dim", ">= 1", weight_.cols());
    detail::require_shape(noise_weight_, weight_.rows(), weight_.cols(), where, "noise_weight (as weight)");
    detail::require(k_ >= 1 && k_ <= weight_.rows(), where, "k",
                    detail::concat("in [1, num_experts = ", weight_.rows(), "]"), k_);
    detail::require(noise_epsilon_ >= S(0), where, "noise_epsilon", ">= 0", noise_epsilon_);
  }

  [[nodiscard]] Index num_experts() const noexcept { return weight_.rows(); }
  [[nodiscard]] Index input_dim() const noexcept { return weight_.cols(); }
  [[nodiscard]] Index k() const noexcept { return k_; }
  [[nodiscard]] S noise_epsilon() const noexcept { return noise_epsilon_; }

  [[nodiscard]] RowMatrix<S>& weight() noexcept { return weight_; }
  [[nodiscard]] const RowMatrix<S>& weight() const noexcept { return weight_; }
  [[nodiscard]] RowMatrix<S>& noise_weight() noexcept { return noise_weight_; }
  [[nodiscard]] const RowMatrix<S>& noise_weight() const noexcept { return noise_weight_; }

  /// Uses this standard-normal sample [T, E] instead of the counter-based one in training
  /// calls, until clear_noise(). Lets a caller replay a reference's noise exactly; T must
  /// then equal the rows of every x routed.
  void set_noise(RowMatrix<S> eps) {
    detail::require(eps.cols() == num_experts(), "NoisyTopKRouter::set_noise()", "noise columns (num_experts)",
                    num_experts(), eps.cols());
    noise_ = std::move(eps);
  }
  void clear_noise() noexcept { noise_.reset(); }
  [[nodiscard]] const std::optional<RowMatrix<S>>& noise() const noexcept { return noise_; }

  /// Computes the clean logits, the noise scale and the noisy logits of x, as route() does.
  /// Deterministic for a given (x, ctx, set_noise()), so the losses may recompute them.
  void gating_terms(const ConstMatrixRef<S>& x, const ForwardContext& ctx, NoisyGatingTerms<S>& terms) const {
    check_input(x, ctx, "NoisyTopKRouter::gating_terms()");
    const Index T = x.rows();
    const Index E = num_experts();
    detail::ensure_shape(terms.clean, T, E);
    detail::ensure_shape(terms.stddev, T, E);
    detail::ensure_shape(terms.noisy, T, E);
    terms.clean.noalias() = x * weight_.transpose();
    if (ctx.mode != Mode::training) {
      terms.stddev.setZero();
      terms.noisy = terms.clean;
      return;
    }
    terms.stddev.noalias() = x * noise_weight_.transpose();
    const CounterRng rng(ctx.seed, ctx.step);
    for (Index t = 0; t < T; ++t)
      for (Index e = 0; e < E; ++e) {
        terms.stddev(t, e) = noise_scale(terms.stddev(t, e));
        terms.noisy(t, e) = terms.clean(t, e) + epsilon(rng, t, e) * terms.stddev(t, e);
      }
  }

  template <class Arch = xsimd::default_arch>
  void route(const ConstMatrixRef<S>& x, RoutingResult<S>& out, const ForwardContext& ctx = {}) const {
    check_input(x, ctx, "NoisyTopKRouter::route()");
    const Index T = x.rows();
    const Index E = num_experts();
    out.reset(T, E, T * k_, k_);
    detail::ensure_shape(out.logits, T, E);
    out.logits.noalias() = x * weight_.transpose();
    if (ctx.mode == Mode::training) {
      // The noise scale goes through `scores` as scratch: it becomes the noisy logits below.
      detail::ensure_shape(out.scores, T, E);
      out.scores.noalias() = x * noise_weight_.transpose();
      const CounterRng rng(ctx.seed, ctx.step);
      for (Index t = 0; t < T; ++t)
        for (Index e = 0; e < E; ++e) out.logits(t, e) += epsilon(rng, t, e) * noise_scale(out.scores(t, e));
    }
    out.scores = out.logits;
    for (Index t = 0; t < T; ++t) {
      const S* row = out.logits.data() + t * E;
      Index* idx = out.expert.data() + t * k_;
      kernels::top_k(row, E, k_, idx);
      S* g = out.gate.data() + t * k_;
      for (Index j = 0; j < k_; ++j) {
        out.token[static_cast<std::size_t>(t * k_ + j)] = t;
        g[j] = row[idx[j]];
      }
      kernels::SoftmaxRows<Arch>{}(g, 1, k_, k_);
    }
  }

  /// log(1 + exp(z)) without overflow: max(z, 0) + log1p(exp(-|z|)).
  [[nodiscard]] static S softplus(S z) noexcept { return std::max(z, S(0)) + std::log1p(std::exp(-std::abs(z))); }

 private:
  // The same expressions in route() and gating_terms(), so both give bit-identical logits.
  [[nodiscard]] S noise_scale(S raw) const noexcept { return softplus(raw) + noise_epsilon_; }
  [[nodiscard]] S epsilon(const CounterRng& rng, Index t, Index e) const noexcept {
    return noise_ ? (*noise_)(t, e)
                  : static_cast<S>(rng.normal(static_cast<std::uint64_t>(t), static_cast<std::uint64_t>(e)));
  }

  void check_input(const ConstMatrixRef<S>& x, const ForwardContext& ctx, const char* where) const {
    detail::require(x.cols() == input_dim(), where, "x columns (input_dim)", input_dim(), x.cols());
    if (noise_ && ctx.mode == Mode::training)
      detail::require(noise_->rows() == x.rows(), where, "rows of the noise given to set_noise() (one per row of x)",
                      x.rows(), noise_->rows());
  }

  RowMatrix<S> weight_;
  RowMatrix<S> noise_weight_;
  Index k_;
  S noise_epsilon_;
  std::optional<RowMatrix<S>> noise_;
};

/// Shazeer et al. 2017 with SwiGLU experts (the golden "moe." layout).
template <class S>
using NoisyTopKMoE = MoELayer<SwiGLUExperts<S>, NoisyTopKRouter<S>, WeightedSumCombiner<S>>;

}  // namespace moe

#endif  // MOE_ROUTER_NOISY_TOP_K_ROUTER_HPP

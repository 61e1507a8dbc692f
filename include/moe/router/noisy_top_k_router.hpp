// Noisily gated top-k routing (Shazeer et al. 2017), as tensor2tensor's noisy_top_k_gating.
#ifndef MOE_ROUTER_NOISY_TOP_K_ROUTER_HPP
#define MOE_ROUTER_NOISY_TOP_K_ROUTER_HPP

#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/random.hpp>
#include <moe/core/scratch.hpp>
#include <moe/core/types.hpp>
#include <moe/kernels/gemm.hpp>
#include <moe/kernels/softmax.hpp>
#include <moe/kernels/top_k.hpp>
#include <moe/loss/importance_loss.hpp>
#include <moe/contracts/training.hpp>
#include <moe/contracts/routing_result.hpp>

#include <algorithm>
#include <cmath>
#include <optional>
#include <type_traits>
#include <string>
#include <utility>
#include <vector>
#include <xsimd/xsimd.hpp>

namespace moe {

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
///
/// Backward (docs/gradients.md): the k-softmax to the noisy logits, then noisy = clean +
/// eps * stddev to Wg (through clean) and Wn (through stddev = softplus(x Wn^T) + epsilon,
/// with eps the forward's sample), plus the load loss when the loss list holds one (the
/// importance loss, on the gates, reaches it through dgate like any gate gradient). eps is the
/// forward's: the sample given to set_noise(), or regenerated from the ForwardContext in the
/// BackwardContext as route() drew it; a forward in Mode::inference added no noise, and gets
/// no noise gradient.
template <class S>
class NoisyTopKRouter {
 public:
  using scalar_type = S;
  static constexpr bool token_choice = true;
  static constexpr bool needs_rng = true;

  /// Checkpoint names of the trainable tensors, without the layer prefix.
  struct Names {
    std::string weight = "gate.weight";
    std::string noise_weight = "noise.weight";
  };

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
  [[nodiscard]] Names& names() noexcept { return names_; }
  [[nodiscard]] const Names& names() const noexcept { return names_; }

  template <class F>
  void for_each_parameter(F&& f) {
    f(names_.weight, weight_);
    f(names_.noise_weight, noise_weight_);
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    f(names_.weight, weight_);
    f(names_.noise_weight, noise_weight_);
  }

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
  template <class Arch = xsimd::default_arch>
  void gating_terms(const ConstMatrixRef<S>& x, const ForwardContext& ctx, NoisyGatingTerms<S>& terms) const {
    check_input(x, ctx, "NoisyTopKRouter::gating_terms()");
    const Index T = x.rows();
    const Index E = num_experts();
    detail::ensure_shape(terms.clean, T, E);
    detail::ensure_shape(terms.stddev, T, E);
    detail::ensure_shape(terms.noisy, T, E);
    kernels::gemm<Arch>(terms.clean, x, Op::none, weight_, Op::transpose, S(1), S(0), ctx.gemm);
    if (ctx.mode != Mode::training) {
      terms.stddev.setZero();
      terms.noisy = terms.clean;
      return;
    }
    kernels::gemm<Arch>(terms.stddev, x, Op::none, noise_weight_, Op::transpose, S(1), S(0), ctx.gemm);
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
    kernels::gemm<Arch>(out.logits, x, Op::none, weight_, Op::transpose, S(1), S(0), ctx.gemm);
    if (ctx.mode == Mode::training) {
      // The noise scale goes through `scores` as scratch: it becomes the noisy logits below.
      detail::ensure_shape(out.scores, T, E);
      kernels::gemm<Arch>(out.scores, x, Op::none, noise_weight_, Op::transpose, S(1), S(0), ctx.gemm);
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

  /// The router's backward consumes LoadLoss itself (it reads the clean logits and the noise
  /// scale, which RoutingResult does not hold); every other loss is the layer's business.
  template <class L>
  static constexpr bool accepts_loss = std::is_same_v<L, LoadLoss>;

  /// Backward of route() (docs/routers.md#training): in.dgate holds dL/dgate per assignment
  /// (0 for dropped ones, the gate losses such as ImportanceLoss already added); in.dlogits
  /// [T, E] comes in holding dL/d(noisy logits) from the losses on routing.logits and leaves
  /// holding the total. eps is regenerated exactly as route() drew it from
  /// in.context.forward (or taken from set_noise()); its mode says whether noise was added.
  /// Every weighted(LoadLoss{}, w) of `losses` adds tensor2tensor's load loss. Accumulates
  /// dL/dWg and dL/dWn into grad and adds dL/dx to in.dx.
  template <class Arch = xsimd::default_arch>
  void backward(const RouterBackward<S>& in, NoisyTopKRouter& grad, const auto& losses) const {
    S load_weight = S(0);
    losses.for_each([&](const auto& term) {
      if constexpr (std::is_same_v<typename std::remove_cvref_t<decltype(term)>::loss_type, LoadLoss>)
        load_weight += term.weight;
    });
    backward_impl<Arch>(in.x, in.routing, in.dgate, in.dlogits, in.dx, grad, load_weight, in.context.forward);
  }

  /// log(1 + exp(z)) without overflow: max(z, 0) + log1p(exp(-|z|)).
  [[nodiscard]] static S softplus(S z) noexcept { return std::max(z, S(0)) + std::log1p(std::exp(-std::abs(z))); }

 private:
  struct ScratchTag {};
  /// backward()'s temporaries, kept per thread (detail::ScratchLease).
  struct BackwardScratch {
    NoisyGatingTerms<S> terms;
    RowMatrix<S> raw, eps, dclean, dstddev, draw;
  };

  // The same expressions in route() and gating_terms(), so both give bit-identical logits.
  [[nodiscard]] S noise_scale(S raw) const noexcept { return softplus(raw) + noise_epsilon_; }
  [[nodiscard]] S epsilon(const CounterRng& rng, Index t, Index e) const noexcept {
    return noise_ ? (*noise_)(t, e)
                  : static_cast<S>(rng.normal(static_cast<std::uint64_t>(t), static_cast<std::uint64_t>(e)));
  }

  template <class Arch>
  void backward_impl(const ConstMatrixRef<S>& x, const RoutingResult<S>& routing, const S* dgate,
                     MatrixRef<S> dlogits, MatrixRef<S> dx, NoisyTopKRouter& grad, S load_weight,
                     const ForwardContext& ctx) const {
    constexpr const char* where = "NoisyTopKRouter::backward()";
    const Index T = x.rows();
    const Index E = num_experts();
    detail::require(x.cols() == input_dim(), where, "x columns (input_dim)", input_dim(), x.cols());
    // Messages are built only on failure: a passing check allocates nothing.
    if (routing.num_tokens != T || routing.num_experts != E || routing.size() != T * k_)
      detail::throw_invalid(where, "a routing of x by this router (T * k assignments)", detail::concat(T, " * ", k_),
                            detail::concat(routing.num_tokens, " tokens, ", routing.size(), " assignments"));
    detail::require_shape(routing.logits, T, E, where, "routing logits");
    detail::require_shape(dlogits, T, E, where, "dlogits");
    detail::require_shape(dx, T, input_dim(), where, "dx");
    check_input(x, ctx, where);

    // The forward's terms: clean, stddev (0 without noise), and eps.
    // The same kernel as the forward, so the recomputed logits match it bit for bit.
    const GemmKernel kernel = ctx.gemm;
    // Every temporary lives in the thread's scratch: same shapes as the last call, no allocation.
    detail::ScratchLease<BackwardScratch, ScratchTag> scratch_lease;
    BackwardScratch& scratch = scratch_lease.one();
    NoisyGatingTerms<S>& terms = scratch.terms;
    terms.clean.resize(T, E);
    kernels::gemm<Arch>(terms.clean, x, Op::none, weight_, Op::transpose, S(1), S(0), kernel);
    RowMatrix<S>& raw = scratch.raw;
    raw.resize(T, E);
    kernels::gemm<Arch>(raw, x, Op::none, noise_weight_, Op::transpose, S(1), S(0), kernel);
    RowMatrix<S>& eps = scratch.eps;
    eps.resize(T, E);
    const bool noisy = ctx.mode == Mode::training;
    if (noisy) {
      const CounterRng rng(ctx.seed, ctx.step);
      for (Index t = 0; t < T; ++t)
        for (Index e = 0; e < E; ++e) eps(t, e) = epsilon(rng, t, e);
    }
    terms.stddev.resize(T, E);
    for (Index t = 0; t < T; ++t)
      for (Index e = 0; e < E; ++e) terms.stddev(t, e) = noisy ? noise_scale(raw(t, e)) : S(0);

    // Gates: a softmax over the k selected noisy logits (dgate holds the gate losses already).
    const S* dg = dgate;
    for (Index t = 0; t < T; ++t) {
      const Index* idx = routing.expert.data() + t * k_;
      const S* g = routing.gate.data() + t * k_;
      const S* d = dg + t * k_;
      S dot = 0;
      for (Index j = 0; j < k_; ++j) dot += g[j] * d[j];
      for (Index j = 0; j < k_; ++j) dlogits(t, idx[j]) += g[j] * (d[j] - dot);
    }

    // The load loss reads clean and stddev directly, and the noisy logits through its threshold.
    RowMatrix<S>& dclean = scratch.dclean;
    dclean.setZero(T, E);
    RowMatrix<S>& dstddev = scratch.dstddev;
    dstddev.setZero(T, E);
    if (load_weight != S(0) && noisy) {
      terms.noisy = routing.logits;
      LoadLoss{}.backward(terms, k_, load_weight, dclean, dstddev, dlogits);
    }

    // noisy = clean + eps * stddev, stddev = softplus(raw) + epsilon, softplus' = sigmoid.
    dclean += dlogits;
    RowMatrix<S>& draw = scratch.draw;
    draw.resize(T, E);
    for (Index t = 0; t < T; ++t)
      for (Index e = 0; e < E; ++e) {
        const S ds = dstddev(t, e) + (noisy ? dlogits(t, e) * eps(t, e) : S(0));
        draw(t, e) = ds / (S(1) + std::exp(-raw(t, e)));
      }
    kernels::gemm<Arch>(grad.weight_, dclean, Op::transpose, x, Op::none, S(1), S(1));
    kernels::gemm<Arch>(grad.noise_weight_, draw, Op::transpose, x, Op::none, S(1), S(1));
    kernels::gemm<Arch>(dx, dclean, Op::none, weight_, Op::none, S(1), S(1));
    kernels::gemm<Arch>(dx, draw, Op::none, noise_weight_, Op::none, S(1), S(1));
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
  Names names_;
};


}  // namespace moe

#endif  // MOE_ROUTER_NOISY_TOP_K_ROUTER_HPP

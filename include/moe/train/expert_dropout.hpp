// Expert dropout: whole experts switched off for one training step.
#ifndef MOE_TRAIN_EXPERT_DROPOUT_HPP
#define MOE_TRAIN_EXPERT_DROPOUT_HPP

#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/random.hpp>
#include <moe/core/scratch.hpp>
#include <moe/core/traits.hpp>
#include <moe/core/types.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/contracts/training.hpp>
#include <moe/router/router_wrapper.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>
#include <xsimd/xsimd.hpp>

namespace moe {

/// Wraps a sparse router so that, in training, each expert is dropped for the whole step with
/// probability rate: every assignment to a dropped expert gets gate 0, so the expert adds
/// nothing to any token's output and its weights get no gradient. In inference, or with
/// rate = 0, it is the wrapped router unchanged.
///
/// Expert e is dropped at (seed, step) when CounterRng(seed, step).uniform(stream_token, e)
/// < rate: the same experts for every token of the step, reproducible, and independent of the
/// streams that noisy top-k (lanes below 2E) and Jittered (lanes from 2^40) draw for tokens.
///
/// Why gates are zeroed rather than the dropped experts' logits masked before selection (which
/// would send tokens to their next-best experts): masking needs the router's inside, between
/// its projection and its selection, and every router has a different one (top-k gatings,
/// expert choice, noisy top-k, hash); zeroing the gates of the finished routing works on any
/// router through its public route(). The price: a token whose every choice was dropped gets
/// output 0 from the layer for that step (as a capacity drop; the residual stream carries it),
/// and the dropped experts still run (their gate-0 rows are computed and discarded).
/// The router's probabilities and the choices the aux loss counts are untouched: balancing sees
/// what the router wanted.
///
/// Backward: the combiner's dL/dgate of a dropped assignment is zeroed (its gate is the
/// constant 0), then the wrapped router's backward runs on the routing as recorded. That is
/// the exact gradient of the dropped forward for every gating rule that reads a gate only
/// through gate * dgate or reads the scores instead (SoftmaxTopK, SigmoidGroupLimited); for
/// a gating whose softmax over the k selected logits couples the gates (router_traits::
/// couples_gates, TopKSoftmax), the dropped gates are first restored from the logits. An
/// assignment whose gate is 0 without dropout gets no gradient through any of these rules, so
/// zeroing by "gate == 0" is exact.
///
/// Allocation: backward copies dgate (and, for TopKSoftmax, the routing) into the calling
/// thread's scratch (detail::ScratchLease, grown once), so a steady-state step allocates nothing.
template <class RouterType>
class ExpertDropout : public RouterWrapper<RouterType> {
  using RouterWrapper<RouterType>::router_;

 public:
  using typename RouterWrapper<RouterType>::scalar_type;
  using RouterWrapper<RouterType>::num_experts;
  static constexpr bool needs_rng = true;
  static_assert(!router_traits<RouterType>::is_dense,
                "ExpertDropout: RouterType must be sparse; a dense router (Soft MoE) has no assignments to drop "
                "(docs/training.md#expert-dropout)");
  /// The counter's token coordinate for the per-step draws: no row index reaches it.
  static constexpr std::uint64_t stream_token = std::numeric_limits<std::uint64_t>::max();

  /// rate in [0, 1): the probability that an expert is dropped for a step.
  ExpertDropout(RouterType router, double rate) : RouterWrapper<RouterType>(std::move(router)), rate_(rate) {
    detail::require(std::isfinite(rate) && rate >= 0.0 && rate < 1.0, "ExpertDropout::ExpertDropout()", "rate",
                    "in [0, 1)", rate);
  }

  [[nodiscard]] double rate() const noexcept { return rate_; }

  /// Whether expert e is dropped in the training step (seed, step).
  [[nodiscard]] bool dropped(std::uint64_t seed, std::uint64_t step, Index e) const noexcept {
    return dropped(CounterRng(seed, step), e);
  }
  [[nodiscard]] bool dropped(const CounterRng& rng, Index e) const noexcept {
    return rate_ > 0.0 && rng.uniform(stream_token, static_cast<std::uint64_t>(e)) < rate_;
  }
  /// The dropped experts of step (seed, step), ascending.
  [[nodiscard]] std::vector<Index> dropped_experts(std::uint64_t seed, std::uint64_t step) const {
    std::vector<Index> out;
    const CounterRng rng(seed, step);
    for (Index e = 0; e < num_experts(); ++e)
      if (dropped(rng, e)) out.push_back(e);
    return out;
  }

  template <class Arch = xsimd::default_arch>
  void route(const ConstMatrixRef<scalar_type>& x, RoutingResult<scalar_type>& out, const ForwardContext& ctx = {}) const {
    router_.template route<Arch>(x, out, ctx);
    if (ctx.mode != Mode::training || rate_ == 0.0) return;
    const CounterRng rng(ctx.seed, ctx.step);
    for (std::size_t i = 0; i < out.gate.size(); ++i)
      if (dropped(rng, out.expert[i])) out.gate[i] = scalar_type(0);
  }

  /// Backward of route() (docs/routers.md#training): see the class comment.
  template <class Arch = xsimd::default_arch>
  void backward(const RouterBackward<scalar_type>& in, ExpertDropout& grad, const auto& losses) const {
    detail::ScratchLease<scalar_type, ScratchTag> dg_lease;
    const scalar_type* dg = masked_dgate(in.routing, in.dgate, dg_lease);
    const auto inner = [&](const RoutingResult<scalar_type>& routing) {
      router_.template backward<Arch>(RouterBackward<scalar_type>{.x = in.x,
                                                                  .routing = routing,
                                                                  .dgate = dg,
                                                                  .dscores = in.dscores,
                                                                  .dlogits = in.dlogits,
                                                                  .dx = in.dx,
                                                                  .context = in.context},
                                      grad.router_, losses);
    };
    if constexpr (router_traits<RouterType>::couples_gates) {
      detail::ScratchLease<RoutingResult<scalar_type>, ScratchTag> restored_lease;
      RoutingResult<scalar_type>& restored = *restored_lease.data(1);
      restore_gates(in.routing, restored);
      inner(restored);
    } else {
      inner(in.routing);
    }
  }

 private:
  struct ScratchTag;

  /// dgate with the dropped assignments' entries zeroed, in the lease's buffer.
  static const scalar_type* masked_dgate(const RoutingResult<scalar_type>& routing, const scalar_type* dgate,
                                         detail::ScratchLease<scalar_type, ScratchTag>& lease) {
    const auto n = static_cast<std::size_t>(routing.size());
    scalar_type* dg = lease.data(n);
    for (std::size_t i = 0; i < n; ++i) dg[i] = routing.gate[i] == scalar_type(0) ? scalar_type(0) : dgate[i];
    return dg;
  }

  /// TopKSoftmax: gates are the softmax over each token's k selected logits (scores = logits).
  /// Copies routing into r (reusing r's buffers: no allocation once r has held this shape).
  static void restore_gates(const RoutingResult<scalar_type>& routing, RoutingResult<scalar_type>& r) {
    r = routing;
    const Index k = r.k;
    for (Index t = 0; t < r.num_tokens; ++t) {
      scalar_type* g = r.gate.data() + t * k;
      const Index* idx = r.expert.data() + t * k;
      bool any_zero = false;
      for (Index j = 0; j < k; ++j) any_zero = any_zero || g[j] == scalar_type(0);
      if (!any_zero) continue;
      scalar_type mx = r.scores(t, idx[0]);
      for (Index j = 1; j < k; ++j) mx = std::max(mx, r.scores(t, idx[j]));
      scalar_type sum = 0;
      for (Index j = 0; j < k; ++j) sum += std::exp(r.scores(t, idx[j]) - mx);
      for (Index j = 0; j < k; ++j)
        if (g[j] == scalar_type(0)) g[j] = std::exp(r.scores(t, idx[j]) - mx) / sum;
    }
  }

  double rate_;
};

}  // namespace moe

#endif  // MOE_TRAIN_EXPERT_DROPOUT_HPP

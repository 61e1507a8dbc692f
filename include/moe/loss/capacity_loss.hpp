// A capacity loss: the router probability mass that a factor capacity would drop.
#ifndef MOE_LOSS_CAPACITY_LOSS_HPP
#define MOE_LOSS_CAPACITY_LOSS_HPP

#include <moe/core/error.hpp>
#include <moe/core/scratch.hpp>
#include <moe/core/types.hpp>
#include <moe/contracts/dispatch_plan.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/contracts/training.hpp>

#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>
#include <xsimd/xsimd.hpp>

namespace moe {

/// The expected router probability per token that capacity drops (docs/losses.md#capacity-loss):
///
///   L = (1/T) * sum_e r_e * M_e,   r_e = max(0, n_e - C) / n_e,   M_e = sum_{i : e_i = e} p[t_i, e]
///
/// n_e = assignments routed to e (the router's choices before capacity, as LoadBalancingLoss
/// counts them), C = Capacity::from_factor(factor, minimum).slots(n, E) for the batch's n
/// assignments (ceil(factor * T * k / E) for top-k: the layer's capacity for the same
/// factor), p = routing.scores = softmax(routing.logits). r_e is the fraction of e's
/// assignments that capacity drops, whatever the priority, so r_e * M_e is the probability
/// mass e drops when each of its assignments is as likely to be dropped as the others.
///
/// L = 0 exactly when no expert is over capacity; L < 1 (a token's selected probabilities sum
/// to at most 1). r_e counts discrete choices and is a constant: the gradient flows through p
/// only, as the Switch aux loss's does through P, and pushes the probability of an
/// overflowing expert down for the tokens routed to it.
///
/// Defined for the softmax gating rules, whose scores are softmax(logits) over all experts
/// (SoftmaxTopK, TopP, ThresholdSkip, and the routers built on them: jittered, sequence,
/// task-aware, expert-choice), or over the open experts of a -inf mask (ModalityRouter: the
/// masked have p = 0 and no gradient). Any other routing throws std::invalid_argument naming
/// the token and expert: TopKSoftmax and noisy top-k keep the logits in scores, DeepSeek-V3
/// sigmoid scores, hierarchical a softmax per group. Hash routing passes as a softmax over one
/// open expert (p = 1): L is its drop rate, with no gradient. A factor that is not finite and
/// positive, or a negative minimum, throws too.
struct CapacityLoss {
  /// The capacity factor, as Capacity::from_factor's: C = max(minimum, ceil(factor * n / E)).
  double factor = 1.0;
  Index minimum = 0;

  /// C for n assignments over E experts: the layer's own computation (Capacity::slots).
  [[nodiscard]] Index capacity(Index num_assignments, Index num_experts) const {
    check_factor("CapacityLoss::capacity()");
    return Capacity::from_factor(factor, minimum).slots(num_assignments, num_experts);
  }

  template <class S, class Arch = xsimd::default_arch>
  [[nodiscard]] S operator()(const RoutingResult<S>& routing) const {
    const Index T = routing.num_tokens;
    const Index E = routing.num_experts;
    check(routing, "CapacityLoss::operator()()");
    if (T == 0 || E == 0) return S(0);
    struct Tag {};
    detail::ScratchLease<S, Tag> rate_lease;
    S* rate = rate_lease.data(static_cast<std::size_t>(E));
    if (!drop_rates(routing, rate)) return S(0);
    S sum = 0;
    for (std::size_t i = 0; i < routing.expert.size(); ++i)
      sum += rate[routing.expert[i]] * routing.scores(routing.token[i], routing.expert[i]);
    return sum / static_cast<S>(T);
  }

  /// Adds weight * dL/dlogits to dlogits [T, E]. With g[t, e] = r_e / T for each assignment
  /// of t to e (0 elsewhere), through the softmax:
  ///   dL/dz[t, j] = p[t, j] * (g[t, j] - sum_e g[t, e] p[t, e]).
  template <class S, class Arch = xsimd::default_arch>
  void backward(const RoutingResult<S>& routing, std::type_identity_t<S> weight,
                MatrixRef<std::type_identity_t<S>> dlogits) const {
    constexpr const char* where = "CapacityLoss::backward()";
    const Index T = routing.num_tokens;
    const Index E = routing.num_experts;
    check(routing, where);
    detail::require_shape(dlogits, T, E, where, "dlogits");
    if (T == 0 || E == 0 || weight == S(0)) return;
    // Per expert and per token, kept by the thread: no allocation in a steady-state backward.
    struct Tag {};
    detail::ScratchLease<S, Tag> rate_lease, dot_lease;
    S* rate = rate_lease.data(static_cast<std::size_t>(E));
    if (!drop_rates(routing, rate)) return;
    S* dot = dot_lease.filled(static_cast<std::size_t>(T), S(0));  // weight * sum_e g[t, e] p[t, e]
    const S scale = weight / static_cast<S>(T);
    const auto& p = routing.scores;
    for (std::size_t i = 0; i < routing.expert.size(); ++i) {
      const Index t = routing.token[i];
      const Index e = routing.expert[i];
      if (rate[e] == S(0)) continue;
      const S a = scale * rate[e] * p(t, e);
      dlogits(t, e) += a;
      dot[t] += a;
    }
    for (Index t = 0; t < T; ++t)
      if (dot[t] != S(0))
        for (Index e = 0; e < E; ++e) dlogits(t, e) -= dot[t] * p(t, e);
  }

  /// The loss protocol (docs/losses.md): value and backward on a LossInput.
  template <class S>
  [[nodiscard]] S value(const LossInput<S>& in) const {
    return (*this)(in.routing);
  }
  template <class Arch = xsimd::default_arch, class S>
  void backward(const LossInput<S>& in, std::type_identity_t<S> weight, const LossGradient<S>& out) const {
    backward<S, Arch>(in.routing, weight, out.dlogits);
  }

 private:
  void check_factor(const char* where) const {
    // Runs in every call: the message is built only on failure.
    if (!(std::isfinite(factor) && factor > 0)) detail::throw_invalid(where, "factor", "finite and > 0", factor);
    if (minimum < 0) detail::throw_invalid(where, "minimum", ">= 0", minimum);
  }

  /// The factor, the shapes, and scores = softmax(logits) row by row over the experts whose
  /// score is not 0: all of them for a plain softmax rule; the open ones under a -inf mask
  /// (ModalityRouter keeps the logits before the mask), where the masked have p = 0 and no
  /// gradient. Compared to a few hundred ulps (the router may have run another Arch). A NaN is
  /// not refused: it propagates, as it would through the other losses.
  template <class S>
  void check(const RoutingResult<S>& routing, const char* where) const {
    check_factor(where);
    const Index T = routing.num_tokens;
    const Index E = routing.num_experts;
    detail::require_shape(routing.logits, T, E, where, "routing logits");
    detail::require_shape(routing.scores, T, E, where,
                          "routing scores (softmax(logits) of a softmax gating rule: SoftmaxTopK, TopP, ThresholdSkip)");
    const S tol = S(512) * std::numeric_limits<S>::epsilon();
    for (Index t = 0; t < T; ++t) {
      const S* z = routing.logits.data() + t * E;
      const S* p = routing.scores.data() + t * E;
      S max = -std::numeric_limits<S>::infinity();
      for (Index e = 0; e < E; ++e)
        if (p[e] != S(0) && z[e] > max) max = z[e];
      S sum = 0;
      for (Index e = 0; e < E; ++e)
        if (p[e] != S(0)) sum += std::exp(z[e] - max);
      for (Index e = 0; e < E; ++e) {
        if (p[e] == S(0)) continue;
        const S expected = std::exp(z[e] - max) / sum;
        if (std::abs(p[e] - expected) > tol) refuse(where, t, e, p[e], expected);
      }
      if (E > 0 && sum == S(0)) refuse(where, t, 0, p[0], S(1) / static_cast<S>(E));  // a row of zeros
    }
  }

  template <class S>
  [[noreturn]] static void refuse(const char* where, Index t, Index e, S score, S expected) {
    detail::throw_invalid(where, "routing scores",
                          "softmax(logits) over all experts (or the open ones of a -inf mask), as a softmax gating "
                          "rule writes them (SoftmaxTopK, TopP, ThresholdSkip; not TopKSoftmax, noisy top-k, sigmoid "
                          "or hierarchical routing)",
                          detail::concat("score ", score, " against softmax ", expected, " at token ", t, ", expert ", e));
  }

  /// rate[e] = max(0, n_e - C) / n_e for every expert; false when no expert is over capacity.
  template <class S>
  bool drop_rates(const RoutingResult<S>& routing, S* rate) const {
    const Index E = routing.num_experts;
    const Index C = Capacity::from_factor(factor, minimum).slots(routing.size(), E);
    struct Tag {};
    detail::ScratchLease<Index, Tag> count_lease;
    Index* count = count_lease.filled(static_cast<std::size_t>(E), 0);
    for (const Index e : routing.expert) ++count[e];
    bool any = false;
    for (Index e = 0; e < E; ++e) {
      const Index over = count[e] - C;
      rate[e] = over > 0 ? static_cast<S>(over) / static_cast<S>(count[e]) : S(0);
      any = any || over > 0;
    }
    return any;
  }
};

}  // namespace moe

#endif  // MOE_LOSS_CAPACITY_LOSS_HPP

// The dynamic loss of top-p routing: the entropy of each token's routing distribution.
#ifndef MOE_LOSS_ROUTING_ENTROPY_LOSS_HPP
#define MOE_LOSS_ROUTING_ENTROPY_LOSS_HPP

#include <moe/core/scratch.hpp>
#include <moe/core/types.hpp>
#include <moe/kernels/softmax.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/contracts/training.hpp>

#include <cmath>
#include <type_traits>
#include <xsimd/xsimd.hpp>

namespace moe {

/// The mean over tokens of H_t = -sum_e p_te log p_te, with p = softmax(logits_t) over all E
/// experts: the dynamic loss Huang et al. (2024) train top-p routing with. Minimising it
/// sharpens each token's distribution, so a top-p router (TopP) needs fewer experts to reach
/// its threshold; a weight on it trades experts per token against quality. Any router with
/// logits can take it (0 <= H_t <= log E). Experts whose probability is exactly 0 (a -inf
/// logit, as ModalityRouter's mask) add nothing.
struct RoutingEntropyLoss {
  template <class S, class Arch = xsimd::default_arch>
  [[nodiscard]] S operator()(const RoutingResult<S>& routing) const {
    const Index T = routing.num_tokens;
    const Index E = routing.num_experts;
    if (T == 0) return S(0);
    struct Tag {};
    detail::ScratchLease<S, Tag> lse_lease;
    S* lse = lse_lease.data(static_cast<std::size_t>(T));
    kernels::LogSumExpRows<Arch>{}(routing.logits.data(), T, E, E, lse);
    S total = 0;
    for (Index t = 0; t < T; ++t) total += entropy(routing, t, lse[t]);
    return total / static_cast<S>(T);
  }

  /// Adds weight * dL/dlogits to dlogits [T, E]: dH_t/dz_tj = -p_tj (log p_tj + H_t).
  template <class S, class Arch = xsimd::default_arch>
  void backward(const RoutingResult<S>& routing, std::type_identity_t<S> weight,
                MatrixRef<std::type_identity_t<S>> dlogits) const {
    const Index T = routing.num_tokens;
    const Index E = routing.num_experts;
    if (T == 0 || weight == S(0)) return;
    // T values kept by the thread: no allocation in a steady-state backward.
    struct Tag {};
    detail::ScratchLease<S, Tag> lse_lease;
    S* lse = lse_lease.data(static_cast<std::size_t>(T));
    kernels::LogSumExpRows<Arch>{}(routing.logits.data(), T, E, E, lse);
    const S scale = weight / static_cast<S>(T);
    for (Index t = 0; t < T; ++t) {
      const S h = entropy(routing, t, lse[t]);
      for (Index e = 0; e < E; ++e) {
        const S log_p = routing.logits(t, e) - lse[t];
        const S p = std::exp(log_p);
        if (p != S(0)) dlogits(t, e) -= scale * p * (log_p + h);
      }
    }
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
  /// H_t from the logits and their log-sum-exp.
  template <class S>
  static S entropy(const RoutingResult<S>& routing, Index t, S lse) {
    S h = 0;
    for (Index e = 0; e < routing.num_experts; ++e) {
      const S log_p = routing.logits(t, e) - lse;
      const S p = std::exp(log_p);
      if (p != S(0)) h -= p * log_p;
    }
    return h;
  }
};

}  // namespace moe

#endif  // MOE_LOSS_ROUTING_ENTROPY_LOSS_HPP

// The router z-loss of ST-MoE: it keeps router logits small.
#ifndef MOE_LOSS_Z_LOSS_HPP
#define MOE_LOSS_Z_LOSS_HPP

#include <moe/core/scratch.hpp>
#include <moe/core/types.hpp>
#include <moe/kernels/softmax.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/contracts/training.hpp>

#include <cmath>
#include <type_traits>
#include <xsimd/xsimd.hpp>

namespace moe {

/// mean over tokens of logsumexp(logits_t)^2.
struct RouterZLoss {
  template <class S, class Arch = xsimd::default_arch>
  [[nodiscard]] S operator()(const RoutingResult<S>& routing) const {
    const Index T = routing.num_tokens;
    if (T == 0) return S(0);
    Vector<S> lse(T);
    kernels::LogSumExpRows<Arch>{}(routing.logits.data(), T, routing.num_experts, routing.num_experts, lse.data());
    return lse.squaredNorm() / static_cast<S>(T);
  }

  /// Adds weight * dL/dlogits = weight * 2/T * lse_t * softmax(logits_t) to dlogits [T, E].
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
    for (Index t = 0; t < T; ++t) {
      const S c = weight * S(2) / static_cast<S>(T) * lse[t];
      for (Index e = 0; e < E; ++e) dlogits(t, e) += c * std::exp(routing.logits(t, e) - lse[t]);
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
};

}  // namespace moe

#endif  // MOE_LOSS_Z_LOSS_HPP

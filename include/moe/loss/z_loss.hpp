// The router z-loss of ST-MoE: it keeps router logits small.
#ifndef MOE_LOSS_Z_LOSS_HPP
#define MOE_LOSS_Z_LOSS_HPP

#include <moe/core/types.hpp>
#include <moe/kernels/softmax.hpp>
#include <moe/router/routing_result.hpp>

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
};

}  // namespace moe

#endif  // MOE_LOSS_Z_LOSS_HPP

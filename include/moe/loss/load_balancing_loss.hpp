// The auxiliary load-balancing loss of Switch / Mixtral (transformers' load_balancing_loss_func).
#ifndef MOE_LOSS_LOAD_BALANCING_LOSS_HPP
#define MOE_LOSS_LOAD_BALANCING_LOSS_HPP

#include <moe/core/scratch.hpp>
#include <moe/core/types.hpp>
#include <moe/kernels/softmax.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/contracts/training.hpp>

#include <cstdint>
#include <vector>
#include <type_traits>
#include <xsimd/xsimd.hpp>

namespace moe {

/// E * sum_e f_e * P_e, with f_e = (assignments routed to e) / T, counted from the router's
/// choices before capacity, and P_e = mean over tokens of softmax(logits)_e.
///
/// Normalization::transformers equals k at perfect balance (transformers, one layer);
/// Normalization::unit divides by k so that it equals 1 at balance (Switch, Megatron); for an
/// adaptive rule (TopP, ThresholdSkip: 1..k experts per token) by the batch's mean number of
/// experts per token, n / T.
struct LoadBalancingLoss {
  enum class Normalization : std::uint8_t { transformers, unit };
  Normalization normalization = Normalization::transformers;

  template <class S, class Arch = xsimd::default_arch>
  [[nodiscard]] S operator()(const RoutingResult<S>& routing) const {
    const Index T = routing.num_tokens;
    const Index E = routing.num_experts;
    if (T == 0) return S(0);
    RowMatrix<S> probs = routing.logits;
    kernels::SoftmaxRows<Arch>{}(probs.data(), T, E, E);
    const Vector<S> p_mean = probs.colwise().mean().transpose();
    std::vector<Index> counts = routing.expert_counts();
    S sum = 0;
    for (Index e = 0; e < E; ++e)
      sum += static_cast<S>(counts[static_cast<std::size_t>(e)]) / static_cast<S>(T) * p_mean[e];
    S loss = static_cast<S>(E) * sum;
    if (normalization == Normalization::unit) loss /= mean_assignments<S>(routing);
    return loss;
  }

  /// Adds weight * dL/dlogits to dlogits [T, E]. f counts discrete choices and is a constant;
  /// the gradient flows through P only.
  template <class S, class Arch = xsimd::default_arch>
  void backward(const RoutingResult<S>& routing, std::type_identity_t<S> weight,
                MatrixRef<std::type_identity_t<S>> dlogits) const {
    const Index T = routing.num_tokens;
    const Index E = routing.num_experts;
    if (T == 0 || weight == S(0)) return;
    // Temporaries kept by the thread (detail::ScratchLease): no allocation in a steady-state
    // backward.
    struct Tag {};
    detail::ScratchLease<RowMatrix<S>, Tag> probs_lease;
    detail::ScratchLease<Vector<S>, Tag> v_lease;
    detail::ScratchLease<Index, Tag> counts_lease;
    RowMatrix<S>& probs = probs_lease.one();
    probs = routing.logits;
    kernels::SoftmaxRows<Arch>{}(probs.data(), T, E, E);
    Index* counts = counts_lease.filled(static_cast<std::size_t>(E), 0);
    for (const Index e : routing.expert) ++counts[e];
    S scale = weight * static_cast<S>(E) / (static_cast<S>(T) * static_cast<S>(T));
    if (normalization == Normalization::unit) scale /= mean_assignments<S>(routing);
    Vector<S>& v = v_lease.one();  // dL/dp_te, the same for every token
    v.resize(E);
    for (Index e = 0; e < E; ++e) v[e] = scale * static_cast<S>(counts[e]);
    for (Index t = 0; t < T; ++t) {
      const S c = probs.row(t).dot(v.transpose());
      for (Index e = 0; e < E; ++e) dlogits(t, e) += probs(t, e) * (v[e] - c);
    }
  }

  /// Assignments per token, n / T: k for a fixed-k router (exactly: both are integers).
  template <class S>
  static S mean_assignments(const RoutingResult<S>& routing) {
    return static_cast<S>(routing.size()) / static_cast<S>(routing.num_tokens);
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

#endif  // MOE_LOSS_LOAD_BALANCING_LOSS_HPP

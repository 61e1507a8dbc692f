// The balancing losses of Shazeer et al. 2017: cv^2 of per-expert importance and of load,
// as tensor2tensor's noisy_top_k_gating computes them.
#ifndef MOE_LOSS_IMPORTANCE_LOSS_HPP
#define MOE_LOSS_IMPORTANCE_LOSS_HPP

#include <moe/core/error.hpp>
#include <moe/core/types.hpp>
#include <moe/kernels/top_k.hpp>
#include <moe/router/noisy_top_k_router.hpp>
#include <moe/router/routing_result.hpp>

#include <cmath>
#include <numbers>
#include <vector>

namespace moe {

/// Squared coefficient of variation: population variance / (mean^2 + 1e-10). 0 for a
/// constant vector; the 1e-10 keeps an all-zero vector at 0 instead of NaN.
template <class S>
[[nodiscard]] S cv_squared(const Vector<S>& v) {
  if (v.size() == 0) return S(0);
  const S mean = v.mean();
  const S variance = (v.array() - mean).square().sum() / static_cast<S>(v.size());
  return variance / (mean * mean + S(1e-10));
}

/// Importance [E]: the sum over tokens of the gate each token gives each expert. Works for
/// any RoutingResult (sums the triples' gates per expert).
template <class S>
[[nodiscard]] Vector<S> importance(const RoutingResult<S>& routing) {
  Vector<S> imp = Vector<S>::Zero(routing.num_experts);
  for (std::size_t i = 0; i < routing.token.size(); ++i) imp[routing.expert[i]] += routing.gate[i];
  return imp;
}

/// P(t, e) [T, E] of tensor2tensor's _prob_in_top_k: the probability, over a fresh draw of
/// token t's noise on expert e alone (the other noisy logits held fixed), that e is among
/// the k largest noisy logits:
///   P = Phi((clean - threshold) / stddev),
/// threshold = the (k+1)-th largest noisy logit of the token when e is in its top k, the
/// k-th largest when it is not (e's own value is then excluded from the comparison).
///
/// Membership of the top k is the router's selection (ties to the lower index), which agrees
/// with tensor2tensor's "noisy > (k+1)-th value" except at exact ties. Where no noise was
/// added (stddev 0, inference) P is that membership, 1 or 0. With k = E every expert is
/// always chosen, so P = 1 (tensor2tensor then counts gates > 0, which is the same).
template <class S>
[[nodiscard]] RowMatrix<S> prob_in_top_k(const NoisyGatingTerms<S>& terms, Index k) {
  const Index T = terms.noisy.rows();
  const Index E = terms.noisy.cols();
  constexpr const char* where = "moe::prob_in_top_k()";
  detail::require(k >= 1 && k <= E, where, "k", detail::concat("in [1, num_experts = ", E, "]"), k);
  detail::require_shape(terms.clean, T, E, where, "clean (as noisy)");
  detail::require_shape(terms.stddev, T, E, where, "stddev (as noisy)");
  RowMatrix<S> p(T, E);
  if (k == E) {
    p.setOnes();
    return p;
  }
  std::vector<Index> top(static_cast<std::size_t>(k + 1));
  std::vector<char> in(static_cast<std::size_t>(E));
  for (Index t = 0; t < T; ++t) {
    const S* noisy = terms.noisy.data() + t * E;
    kernels::top_k(noisy, E, k + 1, top.data());
    std::fill(in.begin(), in.end(), char(0));
    for (Index j = 0; j < k; ++j) in[static_cast<std::size_t>(top[static_cast<std::size_t>(j)])] = 1;
    const S threshold_if_in = noisy[top[static_cast<std::size_t>(k)]];
    const S threshold_if_out = noisy[top[static_cast<std::size_t>(k - 1)]];
    for (Index e = 0; e < E; ++e) {
      const bool is_in = in[static_cast<std::size_t>(e)] != 0;
      const S sd = terms.stddev(t, e);
      if (sd == S(0)) {
        p(t, e) = is_in ? S(1) : S(0);
        continue;
      }
      const S diff = terms.clean(t, e) - (is_in ? threshold_if_in : threshold_if_out);
      // tensor2tensor's _normal_distribution_cdf, with its 1e-20 guard.
      p(t, e) = S(0.5) * (S(1) + std::erf(diff / (std::numbers::sqrt2_v<S> * sd + S(1e-20))));
    }
  }
  return p;
}

/// Load [E]: the sum over tokens of prob_in_top_k, a smooth estimate of how many tokens
/// each expert receives.
template <class S>
[[nodiscard]] Vector<S> noisy_load(const NoisyGatingTerms<S>& terms, Index k) {
  return prob_in_top_k(terms, k).colwise().sum().transpose();
}

/// cv^2(importance(routing)): equal total gate per expert scores 0.
struct ImportanceLoss {
  template <class S>
  [[nodiscard]] S operator()(const RoutingResult<S>& routing) const {
    return cv_squared(importance(routing));
  }
};

/// cv^2(noisy_load(terms, k)): equal expected load per expert scores 0. The terms come from
/// NoisyTopKRouter::gating_terms() with the x and context of the forward call.
struct LoadLoss {
  template <class S>
  [[nodiscard]] S operator()(const NoisyGatingTerms<S>& terms, Index k) const {
    return cv_squared(noisy_load(terms, k));
  }
};

}  // namespace moe

#endif  // MOE_LOSS_IMPORTANCE_LOSS_HPP

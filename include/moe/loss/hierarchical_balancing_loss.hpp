// The load-balancing loss of each level of hierarchical routing (Shazeer et al. 2017 balance
// the primary router and each secondary router on the batch that reaches it).
#ifndef MOE_LOSS_HIERARCHICAL_BALANCING_LOSS_HPP
#define MOE_LOSS_HIERARCHICAL_BALANCING_LOSS_HPP

#include <moe/contracts/routing_result.hpp>
#include <moe/core/error.hpp>
#include <moe/core/scratch.hpp>
#include <moe/core/types.hpp>

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <xsimd/xsimd.hpp>

namespace moe {

/// primary_weight * L_groups + group_weight * L_experts, for a groups of b experts, k1 groups
/// and k2 experts in each kept group per token (HierarchicalRouter):
///
///     L_groups  = a * sum_i f_i P_i          f_i = (tokens that kept group i) / T,
///                                            P_i = mean over the T tokens of p_ti (the primary
///                                            softmax over groups)
///     L_experts = mean over the groups i that some token kept of
///                 b * sum_j f_ij Q_ij        f_ij = (of group i's N_i tokens, those that kept
///                                            expert j) / N_i, Q_ij = mean over them of q_tij
///                                            (group i's softmax)
///
/// Each level is transformers' load_balancing_loss_func on that level's router and on the
/// tokens that reach it: L_groups equals k1 and L_experts k2 when every choice is spread
/// evenly. The counts f are discrete choices (constants); the gradient flows through P and Q.
/// Choices are the router's, before any capacity.
///
/// The primary probabilities are not in the RoutingResult, so the router computes them: the
/// router's backward consumes this loss (router_traits<HierarchicalRouter>::accepts_loss), and
/// value(router, x, routing) asks the router for them.
struct HierarchicalBalancingLoss {
  double primary_weight = 1.0;
  double group_weight = 1.0;

  /// The loss of the routing `routing` that router made of x (the forward's).
  template <class Arch = xsimd::default_arch, class Router, class S>
  [[nodiscard]] S value(const Router& router, const ConstMatrixRef<S>& x, const RoutingResult<S>& routing) const {
    return static_cast<S>(primary_weight) * primary_value<Arch>(router, x, routing) +
           static_cast<S>(group_weight) * group_value(routing, router.num_groups(), router.top_k_groups(),
                                                      router.top_k_per_group());
  }

  /// L_groups alone.
  template <class Arch = xsimd::default_arch, class Router, class S>
  [[nodiscard]] S primary_value(const Router& router, const ConstMatrixRef<S>& x, const RoutingResult<S>& routing) const {
    const Index T = routing.num_tokens, a = router.num_groups();
    if (T == 0) return S(0);
    RowMatrix<S> p(T, a);
    router.template primary_probabilities<Arch>(x, p);
    S sum = 0;
    for (Index i = 0; i < a; ++i) sum += group_count(routing, a, router.top_k_groups(), router.top_k_per_group(), i) /
                                         static_cast<S>(T) * p.col(i).mean();
    return static_cast<S>(a) * sum;
  }

  /// L_experts alone, from routing.scores (each group's softmax) and the kept pairs.
  template <class S>
  [[nodiscard]] S group_value(const RoutingResult<S>& routing, Index a, Index k1, Index k2) const {
    const Index T = routing.num_tokens, E = routing.num_experts, b = E / a, k = k1 * k2;
    check(routing, a, k1, k2, "HierarchicalBalancingLoss::group_value()");
    if (T == 0) return S(0);
    S total = 0;
    Index reached = 0;
    for (Index i = 0; i < a; ++i) {
      Index n = 0;
      RowMatrix<S> f = RowMatrix<S>::Zero(1, b), q = RowMatrix<S>::Zero(1, b);
      for (Index t = 0; t < T; ++t)
        for (Index g = 0; g < k1; ++g) {
          const std::size_t base = static_cast<std::size_t>(t * k + g * k2);
          if (routing.expert[base] / b != i) continue;
          ++n;
          for (Index j = 0; j < k2; ++j) f(0, routing.expert[base + static_cast<std::size_t>(j)] - i * b) += S(1);
          q += routing.scores.row(t).segment(i * b, b);
        }
      if (n == 0) continue;
      ++reached;
      total += static_cast<S>(b) * (f.cwiseProduct(q)).sum() / (static_cast<S>(n) * static_cast<S>(n));
    }
    return reached == 0 ? S(0) : total / static_cast<S>(reached);
  }

  /// Adds weight * dL/dz into dz [T, a] (the primary logits, p their softmax, row-major) and
  /// weight * dL/dlogits into dlogits [T, a*b] (each group's logits), for the router's backward.
  template <class S>
  void backward(const S* p, const RoutingResult<S>& routing, Index a, Index k1, Index k2, std::type_identity_t<S> weight,
                S* dz, MatrixRef<std::type_identity_t<S>> dlogits) const {
    const Index T = routing.num_tokens, E = routing.num_experts, b = E / a, k = k1 * k2;
    check(routing, a, k1, k2, "HierarchicalBalancingLoss::backward()");
    detail::require_shape(dlogits, T, E, "HierarchicalBalancingLoss::backward()", "dlogits");
    if (T == 0 || weight == S(0)) return;
    struct Tag {};
    detail::ScratchLease<S, Tag> fg_lease, fe_lease, v_lease;
    detail::ScratchLease<Index, Tag> n_lease;
    S* const fg = fg_lease.filled(static_cast<std::size_t>(a), S(0));  // tokens per group
    S* const fe = fe_lease.filled(static_cast<std::size_t>(E), S(0));  // tokens per expert
    Index* const n = n_lease.filled(static_cast<std::size_t>(a), 0);
    for (Index t = 0; t < T; ++t)
      for (Index g = 0; g < k1; ++g) {
        const std::size_t base = static_cast<std::size_t>(t * k + g * k2);
        const Index i = routing.expert[base] / b;
        fg[i] += S(1);
        ++n[i];
        for (Index j = 0; j < k2; ++j) fe[routing.expert[base + static_cast<std::size_t>(j)]] += S(1);
      }
    Index reached = 0;
    for (Index i = 0; i < a; ++i) reached += n[i] > 0 ? 1 : 0;
    // Primary: dL/dp_ti = w1 a f_i / T = w1 a fg_i / T^2, the same for every token.
    const S s1 = weight * static_cast<S>(primary_weight) * static_cast<S>(a) / (static_cast<S>(T) * static_cast<S>(T));
    S* const v = v_lease.data(static_cast<std::size_t>(std::max(a, b)));
    for (Index i = 0; i < a; ++i) v[i] = s1 * fg[i];
    for (Index t = 0; t < T; ++t) {
      const S* pt = p + t * a;
      S c = 0;
      for (Index i = 0; i < a; ++i) c += pt[i] * v[i];
      for (Index i = 0; i < a; ++i) dz[t * a + i] += pt[i] * (v[i] - c);
    }
    if (reached == 0 || group_weight == 0.0) return;
    // Group i: dL/dq_tij = w2 b f_ij / (N_i reached) = w2 b fe_ij / (N_i^2 reached), for the
    // tokens that kept group i; through group i's softmax.
    const S s2 = weight * static_cast<S>(group_weight) * static_cast<S>(b) / static_cast<S>(reached);
    for (Index t = 0; t < T; ++t)
      for (Index g = 0; g < k1; ++g) {
        const Index i = routing.expert[static_cast<std::size_t>(t * k + g * k2)] / b;
        const S scale = s2 / (static_cast<S>(n[i]) * static_cast<S>(n[i]));
        const S* q = routing.scores.data() + t * E + i * b;
        S c = 0;
        for (Index j = 0; j < b; ++j) c += q[j] * scale * fe[i * b + j];
        for (Index j = 0; j < b; ++j) dlogits(t, i * b + j) += q[j] * (scale * fe[i * b + j] - c);
      }
  }

 private:
  template <class S>
  static S group_count(const RoutingResult<S>& routing, Index a, Index k1, Index k2, Index i) {
    const Index b = routing.num_experts / a, k = k1 * k2;
    S count = 0;
    for (Index t = 0; t < routing.num_tokens; ++t)
      for (Index g = 0; g < k1; ++g)
        if (routing.expert[static_cast<std::size_t>(t * k + g * k2)] / b == i) count += S(1);
    return count;
  }

  template <class S>
  static void check(const RoutingResult<S>& routing, Index a, Index k1, Index k2, const char* where) {
    detail::require(a >= 1 && routing.num_experts % a == 0, where, "num_groups",
                    detail::concat("a divisor of the routing's num_experts = ", routing.num_experts), a);
    detail::require(routing.size() == routing.num_tokens * k1 * k2, where,
                    "routing pairs (num_tokens * top_k_groups * top_k_per_group)", routing.num_tokens * k1 * k2,
                    routing.size());
    detail::require_shape(routing.scores, routing.num_tokens, routing.num_experts, where, "routing.scores");
  }
};

}  // namespace moe

#endif  // MOE_LOSS_HIERARCHICAL_BALANCING_LOSS_HPP

// The balancing losses of Shazeer et al. 2017: cv^2 of per-expert importance and of load,
// as tensor2tensor's noisy_top_k_gating computes them.
#ifndef MOE_LOSS_IMPORTANCE_LOSS_HPP
#define MOE_LOSS_IMPORTANCE_LOSS_HPP

#include <moe/core/error.hpp>
#include <moe/core/scratch.hpp>
#include <moe/core/types.hpp>
#include <moe/kernels/top_k.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/contracts/training.hpp>
#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <type_traits>
#include <vector>

namespace moe {

/// The three [T, E] matrices of one noisy gating call. The load loss needs the clean logits
/// and the noise scale besides the noisy logits the selection used, and RoutingResult has
/// room for only the latter, so NoisyTopKRouter hands these out separately (gating_terms()).
/// Defined here, not in the router's header, because the router's backward calls the losses'
/// backward below.
template <class S>
struct NoisyGatingTerms {
  RowMatrix<S> clean;   ///< x Wg^T
  RowMatrix<S> stddev;  ///< softplus(x Wn^T) + noise_epsilon; all 0 when no noise was added
  RowMatrix<S> noisy;   ///< clean + eps * stddev (= clean when no noise was added)
};

/// Squared coefficient of variation: population variance / (mean^2 + 1e-10). 0 for a
/// constant vector; the 1e-10 keeps an all-zero vector at 0 instead of NaN.
template <class S>
[[nodiscard]] S cv_squared(const Vector<S>& v) {
  if (v.size() == 0) return S(0);
  const S mean = v.mean();
  const S variance = (v.array() - mean).square().sum() / static_cast<S>(v.size());
  return variance / (mean * mean + S(1e-10));
}

/// d cv_squared(v) / dv. With m the mean, var the population variance and D = m^2 + 1e-10:
///   d/dv_e = 2 (v_e - m) / (n D) - var * 2 m / (n D^2)
/// (the mean's own derivative drops out of var's, since sum_e (v_e - m) = 0).
/// Writes it into out (resized to v's length; no allocation when it already has it).
template <class S>
void cv_squared_gradient(const Vector<S>& v, Vector<S>& out) {
  const Index n = v.size();
  if (n == 0) {
    out.resize(0);
    return;
  }
  const S mean = v.mean();
  const S variance = (v.array() - mean).square().sum() / static_cast<S>(n);
  const S denom = mean * mean + S(1e-10);
  const S shift = variance * S(2) * mean / (static_cast<S>(n) * denom * denom);
  out = ((v.array() - mean) * (S(2) / (static_cast<S>(n) * denom)) - shift).matrix();
}
template <class S>
[[nodiscard]] Vector<S> cv_squared_gradient(const Vector<S>& v) {
  Vector<S> g;
  cv_squared_gradient(v, g);
  return g;
}

/// Importance [E]: the sum over tokens of the gate each token gives each expert. Works for
/// any RoutingResult (sums the triples' gates per expert).
template <class S>
void importance(const RoutingResult<S>& routing, Vector<S>& imp) {
  imp.setZero(routing.num_experts);
  for (std::size_t i = 0; i < routing.token.size(); ++i) imp[routing.expert[i]] += routing.gate[i];
}
template <class S>
[[nodiscard]] Vector<S> importance(const RoutingResult<S>& routing) {
  Vector<S> imp;
  importance(routing, imp);
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
///
/// This form writes P into p (resized to [T, E]; no allocation when it has that shape already,
/// its other scratch lives in the thread's detail::ScratchLease).
template <class S>
void prob_in_top_k(const NoisyGatingTerms<S>& terms, Index k, RowMatrix<S>& p) {
  const Index T = terms.noisy.rows();
  const Index E = terms.noisy.cols();
  constexpr const char* where = "moe::prob_in_top_k()";
  // Messages are built only on failure (this runs in every backward with a load loss).
  if (k < 1 || k > E) detail::throw_invalid(where, "k", detail::concat("in [1, num_experts = ", E, "]"), k);
  detail::require_shape(terms.clean, T, E, where, "clean (as noisy)");
  detail::require_shape(terms.stddev, T, E, where, "stddev (as noisy)");
  p.resize(T, E);
  if (k == E) {
    p.setOnes();
    return;
  }
  struct Tag {};
  detail::ScratchLease<Index, Tag> top_lease;
  detail::ScratchLease<char, Tag> in_lease;
  Index* top = top_lease.data(static_cast<std::size_t>(k + 1));
  char* in = in_lease.data(static_cast<std::size_t>(E));
  for (Index t = 0; t < T; ++t) {
    const S* noisy = terms.noisy.data() + t * E;
    kernels::top_k(noisy, E, k + 1, top);
    std::fill(in, in + E, char(0));
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
}
template <class S>
[[nodiscard]] RowMatrix<S> prob_in_top_k(const NoisyGatingTerms<S>& terms, Index k) {
  RowMatrix<S> p;
  prob_in_top_k(terms, k, p);
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

  /// Adds weight * dL/dgate to dgate [routing.size()], one entry per assignment: every gate
  /// of expert e gets weight * d cv^2 / d importance_e. The router's backward carries it on
  /// to the logits like any other gate gradient.
  template <class S>
  void backward(const RoutingResult<S>& routing, std::type_identity_t<S> weight, S* dgate) const {
    if (weight == S(0) || routing.size() == 0) return;
    // Two [E] vectors kept by the thread: no allocation in a steady-state backward.
    struct Tag {};
    detail::ScratchLease<Vector<S>, Tag> imp_lease, g_lease;
    Vector<S>& imp = imp_lease.one();
    Vector<S>& g = g_lease.one();
    importance(routing, imp);
    cv_squared_gradient(imp, g);
    for (std::size_t i = 0; i < routing.expert.size(); ++i) dgate[i] += weight * g[routing.expert[i]];
  }

  /// The loss protocol (docs/losses.md): a loss on the gates, so it adds to out.dgate, and
  /// the router's backward carries it to the logits with the combiner's dL/dgate.
  template <class S>
  [[nodiscard]] S value(const LossInput<S>& in) const {
    return (*this)(in.routing);
  }
  template <class Arch = xsimd::default_arch, class S>
  void backward(const LossInput<S>& in, std::type_identity_t<S> weight, const LossGradient<S>& out) const {
    backward(in.routing, weight, out.dgate);
  }
};

/// cv^2(noisy_load(terms, k)): equal expected load per expert scores 0. The terms come from
/// NoisyTopKRouter::gating_terms() with the x and context of the forward call.
struct LoadLoss {
  template <class S>
  [[nodiscard]] S operator()(const NoisyGatingTerms<S>& terms, Index k) const {
    return cv_squared(noisy_load(terms, k));
  }

  /// Adds weight * dL/d(clean, stddev, noisy) into the three [T, E] matrices, following
  /// tensor2tensor's graph: P(t, e) = Phi(z), z = (clean(t, e) - threshold) / (sqrt2 stddev
  /// + 1e-20), and the threshold is a value of the noisy logits (tf.nn.top_k passes its
  /// gradient to the logit it picked), so the noisy logit at the threshold's position gets
  /// -dL/d(clean - threshold). Which position is the threshold is a discrete choice, fixed.
  /// No gradient where stddev is 0 (no noise: P is a 0/1 membership) or when k = E (P = 1).
  template <class S>
  void backward(const NoisyGatingTerms<S>& terms, Index k, std::type_identity_t<S> weight,
                MatrixRef<std::type_identity_t<S>> dclean, MatrixRef<std::type_identity_t<S>> dstddev,
                MatrixRef<std::type_identity_t<S>> dnoisy) const {
    const Index T = terms.noisy.rows();
    const Index E = terms.noisy.cols();
    constexpr const char* where = "LoadLoss::backward()";
    detail::require_shape(dclean, T, E, where, "dclean (as noisy)");
    detail::require_shape(dstddev, T, E, where, "dstddev (as noisy)");
    detail::require_shape(dnoisy, T, E, where, "dnoisy (as noisy)");
    if (weight == S(0) || T == 0) return;
    // Temporaries kept by the thread: no allocation in a steady-state backward.
    struct Tag {};
    detail::ScratchLease<RowMatrix<S>, Tag> p_lease;
    detail::ScratchLease<Vector<S>, Tag> load_lease, dload_lease;
    detail::ScratchLease<Index, Tag> top_lease;
    detail::ScratchLease<char, Tag> in_lease;
    RowMatrix<S>& p = p_lease.one();
    prob_in_top_k(terms, k, p);  // checks k and the shapes
    if (k == E) return;
    Vector<S>& load = load_lease.one();
    load = p.colwise().sum().transpose();
    Vector<S>& dload = dload_lease.one();
    cv_squared_gradient(load, dload);
    dload *= weight;
    Index* top = top_lease.data(static_cast<std::size_t>(k + 1));
    char* in = in_lease.data(static_cast<std::size_t>(E));
    const S inv_sqrt_pi = std::numbers::inv_sqrtpi_v<S>;
    for (Index t = 0; t < T; ++t) {
      const S* noisy = terms.noisy.data() + t * E;
      kernels::top_k(noisy, E, k + 1, top);
      std::fill(in, in + E, char(0));
      for (Index j = 0; j < k; ++j) in[static_cast<std::size_t>(top[static_cast<std::size_t>(j)])] = 1;
      const Index at_if_in = top[static_cast<std::size_t>(k)];
      const Index at_if_out = top[static_cast<std::size_t>(k - 1)];
      for (Index e = 0; e < E; ++e) {
        const S sd = terms.stddev(t, e);
        if (sd == S(0)) continue;
        const Index at = in[static_cast<std::size_t>(e)] != 0 ? at_if_in : at_if_out;
        const S denom = std::numbers::sqrt2_v<S> * sd + S(1e-20);
        const S z = (terms.clean(t, e) - noisy[at]) / denom;
        // dL/dz = dL/dP * Phi'(z); c = dL/d(clean - threshold).
        const S c = dload[e] * inv_sqrt_pi * std::exp(-z * z) / denom;
        dclean(t, e) += c;
        dnoisy(t, at) -= c;
        dstddev(t, e) -= c * z * std::numbers::sqrt2_v<S>;
      }
    }
  }
};

}  // namespace moe

#endif  // MOE_LOSS_IMPORTANCE_LOSS_HPP

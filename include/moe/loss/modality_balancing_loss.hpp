// The load-balancing loss per modality, for routers with modality-specific experts
// (ModalityRouter): transformers' load_balancing_loss_func run on each modality's tokens and
// over the experts open to it, then averaged over the modalities present.
#ifndef MOE_LOSS_MODALITY_BALANCING_LOSS_HPP
#define MOE_LOSS_MODALITY_BALANCING_LOSS_HPP

#include <moe/core/error.hpp>
#include <moe/core/scratch.hpp>
#include <moe/core/types.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/contracts/training.hpp>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <limits>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>
#include <xsimd/xsimd.hpp>

namespace moe {

/// For each modality m with N_m > 0 tokens in the batch, over its open experts A_m (those
/// whose expert_modality entry is m or -1, E_m = |A_m|):
///
///   aux_m = E_m * sum_{e in A_m} f_e * P_e,
///   f_e = (top-k assignments of m's tokens to e) / N_m   (counted before capacity; a constant),
///   P_e = mean over m's tokens of p_e, p = softmax of the logits over A_m (0 outside).
///
/// The loss is the mean of aux_m over the modalities present; each counts once whatever its
/// number of tokens. It reads the unmasked logits of the routing (ModalityRouter keeps them)
/// and the modality of each token from the forward's ForwardContext::modality_ids. Equals k at
/// perfect balance within every modality. The table must be the router's
/// (ModalityRouter::expert_modality()).
struct ModalityLoadBalancingLoss {
  std::vector<Index> expert_modality;
  Index num_modalities = 0;

  ModalityLoadBalancingLoss(std::vector<Index> expert_modality_, Index num_modalities_)
      : expert_modality(std::move(expert_modality_)), num_modalities(num_modalities_) {
    constexpr const char* where = "ModalityLoadBalancingLoss::ModalityLoadBalancingLoss()";
    detail::require(num_modalities >= 1, where, "num_modalities", ">= 1", num_modalities);
    for (std::size_t e = 0; e < expert_modality.size(); ++e)
      detail::require(expert_modality[e] >= -1 && expert_modality[e] < num_modalities, where,
                      detail::concat("expert_modality[", e, "]"),
                      detail::concat("-1 (cross-modal) or a modality in [0, ", num_modalities, ")"), expert_modality[e]);
    const auto E = static_cast<Index>(expert_modality.size());
    for (Index m = 0; m < num_modalities; ++m)
      detail::require(open_experts(m, E) >= 1, where,
                      detail::concat("experts open to modality ", m, " (its own and the cross-modal ones)"), ">= 1",
                      open_experts(m, E));
  }

  /// The table of a modality router (ModalityRouter: expert_modality(), num_modalities()), so
  /// the loss cannot be given another table than the router's.
  template <class Router>
    requires requires(const Router& r) {
      { r.expert_modality() } -> std::convertible_to<std::vector<Index>>;
      { r.num_modalities() } -> std::convertible_to<Index>;
    }
  explicit ModalityLoadBalancingLoss(const Router& router)
      : ModalityLoadBalancingLoss(router.expert_modality(), router.num_modalities()) {}

  [[nodiscard]] bool allows(Index m, Index e) const noexcept {
    const Index owner = expert_modality[static_cast<std::size_t>(e)];
    return owner == -1 || owner == m;
  }

  /// aux_m for every modality [M]; 0 for a modality with no token in the batch.
  template <class S>
  [[nodiscard]] std::vector<S> per_modality(const LossInput<S>& in) const {
    std::vector<Index> tokens;
    return aux_terms(in.routing, checked_ids(in, "ModalityLoadBalancingLoss::per_modality()"), tokens);
  }

  /// The loss protocol (docs/losses.md): the mean of aux_m over the modalities present.
  template <class S>
  [[nodiscard]] S value(const LossInput<S>& in) const {
    if (in.routing.num_tokens == 0) return S(0);
    std::vector<Index> tokens;
    const std::vector<S> aux = aux_terms(in.routing, checked_ids(in, "ModalityLoadBalancingLoss::value()"), tokens);
    S sum = 0;
    Index n = 0;
    for (Index m = 0; m < num_modalities; ++m)
      if (tokens[static_cast<std::size_t>(m)] > 0) {
        sum += aux[static_cast<std::size_t>(m)];
        ++n;
      }
    return sum / static_cast<S>(n);
  }

  /// Adds weight * dL/dlogits into out.dlogits [T, E]. f is a count (no gradient); through P,
  /// token t of modality m gets dL/dp_te = E_m f_e / (N_m * present) for e in A_m, and the
  /// softmax over A_m carries it to the open logits (the others get 0).
  template <class Arch = xsimd::default_arch, class S>
  void backward(const LossInput<S>& in, std::type_identity_t<S> weight, const LossGradient<S>& out) const {
    const RoutingResult<S>& r = in.routing;
    const Index T = r.num_tokens;
    const Index E = r.num_experts;
    const Index M = num_modalities;
    if (T == 0 || weight == S(0)) return;
    const auto ids = checked_ids(in, "ModalityLoadBalancingLoss::backward()");
    detail::require_shape(out.dlogits, T, E, "ModalityLoadBalancingLoss::backward()", "dlogits");
    // Temporaries kept by the thread: no allocation in a steady-state backward.
    struct Tag {};
    detail::ScratchLease<Index, Tag> tokens_lease, counts_lease;
    detail::ScratchLease<S, Tag> v_lease, p_lease;
    Index* tokens = tokens_lease.filled(static_cast<std::size_t>(M), 0);
    Index* counts = counts_lease.filled(static_cast<std::size_t>(M * E), 0);
    tally(r, ids, tokens, counts);
    Index present = 0;
    for (Index m = 0; m < M; ++m) present += tokens[m] > 0 ? 1 : 0;
    // v[m, e] = dL/dp_te for a token t of modality m.
    S* v = v_lease.filled(static_cast<std::size_t>(M * E), S(0));
    for (Index m = 0; m < M; ++m) {
      const Index n = tokens[m];
      if (n == 0) continue;
      const S scale = weight * static_cast<S>(open_experts(m, E)) /
                      (static_cast<S>(present) * static_cast<S>(n) * static_cast<S>(n));
      for (Index e = 0; e < E; ++e)
        if (allows(m, e)) v[m * E + e] = scale * static_cast<S>(counts[m * E + e]);
    }
    S* p = p_lease.data(static_cast<std::size_t>(E));
    MatrixRef<S> dlogits = out.dlogits;  // a copy of the Ref, writable (out is const)
    for (Index t = 0; t < T; ++t) {
      const auto m = static_cast<Index>(ids[static_cast<std::size_t>(t)]);
      masked_softmax(r.logits.data() + t * E, E, m, p);
      const S* vm = v + m * E;
      S c = 0;
      for (Index e = 0; e < E; ++e) c += p[e] * vm[e];
      for (Index e = 0; e < E; ++e)
        if (allows(m, e)) dlogits(t, e) += p[e] * (vm[e] - c);
    }
  }

 private:
  template <class S>
  std::span<const std::int64_t> checked_ids(const LossInput<S>& in, const char* where) const {
    const RoutingResult<S>& r = in.routing;
    const std::span<const std::int64_t> ids = in.context.forward.modality_ids;
    if (static_cast<Index>(expert_modality.size()) != r.num_experts)
      detail::throw_invalid(where, "expert_modality length (the routing's experts)", r.num_experts,
                            expert_modality.size());
    if (static_cast<Index>(ids.size()) != r.num_tokens)
      detail::throw_invalid(where, "ForwardContext::modality_ids length (one per token of the routing)", r.num_tokens,
                            ids.size());
    for (std::size_t t = 0; t < ids.size(); ++t)
      if (ids[t] < 0 || ids[t] >= num_modalities)
        detail::throw_invalid(where, detail::concat("modality_ids[", t, "]"),
                              detail::concat("in [0, num_modalities = ", num_modalities, ")"), ids[t]);
    return ids;
  }

  // aux_m for every modality [M] (0 where absent), and the tokens of each modality.
  template <class S>
  std::vector<S> aux_terms(const RoutingResult<S>& r, std::span<const std::int64_t> ids,
                           std::vector<Index>& tokens) const {
    const Index T = r.num_tokens;
    const Index E = r.num_experts;
    const Index M = num_modalities;
    tokens.assign(static_cast<std::size_t>(M), 0);
    std::vector<Index> counts(static_cast<std::size_t>(M * E), 0);
    tally(r, ids, tokens.data(), counts.data());
    std::vector<S> p_sum(static_cast<std::size_t>(M * E), S(0));
    std::vector<S> p(static_cast<std::size_t>(E));
    for (Index t = 0; t < T; ++t) {
      const auto m = static_cast<Index>(ids[static_cast<std::size_t>(t)]);
      masked_softmax(r.logits.data() + t * E, E, m, p.data());
      for (Index e = 0; e < E; ++e) p_sum[static_cast<std::size_t>(m * E + e)] += p[static_cast<std::size_t>(e)];
    }
    std::vector<S> aux(static_cast<std::size_t>(M), S(0));
    for (Index m = 0; m < M; ++m) {
      const Index n = tokens[static_cast<std::size_t>(m)];
      if (n == 0) continue;
      S sum = 0;
      for (Index e = 0; e < E; ++e)
        if (allows(m, e))
          sum += static_cast<S>(counts[static_cast<std::size_t>(m * E + e)]) / static_cast<S>(n) *
                 (p_sum[static_cast<std::size_t>(m * E + e)] / static_cast<S>(n));
      aux[static_cast<std::size_t>(m)] = static_cast<S>(open_experts(m, E)) * sum;
    }
    return aux;
  }

  [[nodiscard]] Index open_experts(Index m, Index E) const noexcept {
    Index n = 0;
    for (Index e = 0; e < E; ++e) n += allows(m, e) ? 1 : 0;
    return n;
  }

  // Tokens per modality and assignments per (modality, expert), from the routing's triples.
  template <class S>
  void tally(const RoutingResult<S>& r, std::span<const std::int64_t> ids, Index* tokens, Index* counts) const {
    const Index E = r.num_experts;
    for (const std::int64_t m : ids) ++tokens[m];
    for (std::size_t i = 0; i < r.token.size(); ++i) {
      const auto m = static_cast<Index>(ids[static_cast<std::size_t>(r.token[i])]);
      ++counts[m * E + r.expert[i]];
    }
  }

  // p = softmax of the E logits over the experts open to m, 0 elsewhere.
  template <class S>
  void masked_softmax(const S* logits, Index E, Index m, S* p) const {
    S max = -std::numeric_limits<S>::infinity();
    for (Index e = 0; e < E; ++e)
      if (allows(m, e)) max = std::max(max, logits[e]);
    S sum = 0;
    for (Index e = 0; e < E; ++e) {
      p[e] = allows(m, e) ? std::exp(logits[e] - max) : S(0);
      sum += p[e];
    }
    for (Index e = 0; e < E; ++e) p[e] /= sum;
  }
};

}  // namespace moe

#endif  // MOE_LOSS_MODALITY_BALANCING_LOSS_HPP

// Modality-specific experts with shared cross-modal experts (MoMa, Lin et al. 2024; VLMo,
// Bao et al. 2021): a token routes only among its modality's experts and the shared ones.
#ifndef MOE_ROUTER_MODALITY_ROUTER_HPP
#define MOE_ROUTER_MODALITY_ROUTER_HPP

#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/scratch.hpp>
#include <moe/core/types.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/contracts/training.hpp>
#include <moe/router/gating.hpp>
#include <moe/router/router_wrapper.hpp>
#include <moe/router/top_k_router.hpp>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>
#include <xsimd/xsimd.hpp>

namespace moe {

/// The expert_modality entry of a cross-modal expert, open to tokens of every modality.
inline constexpr Index cross_modal = -1;

/// Tokens and top-k assignments per modality of one routed batch (ModalityRouter::load).
struct ModalityLoad {
  Index num_modalities = 0;
  Index num_experts = 0;
  /// Tokens of each modality [M].
  std::vector<Index> tokens;
  /// Assignments of modality m's tokens to expert e, at m * E + e [M * E].
  std::vector<Index> counts;

  [[nodiscard]] Index count(Index m, Index e) const { return counts[static_cast<std::size_t>(m * num_experts + e)]; }
};

/// A TopKRouter whose logits are masked per token before its gating rule: expert e is open
/// to a token of modality m when expert_modality[e] is m or -1 (cross-modal, open to every
/// token). The mask is -inf on the logits of the other experts, so with softmax gating their
/// probability is 0 and the gates equal those of a softmax over the open logits alone.
///
/// | member             | shape  | golden name          |
/// |--------------------|--------|----------------------|
/// | weight()           | [E, d] | moe.gate.weight      |
/// | expert_modality()  | [E]    | moe.expert_modality (a table, not trained) |
///
/// Each token's modality comes from ForwardContext::modality_ids (one per row of x, in
/// [0, M)). RoutingResult: logits are x W^T before the mask (finite, for the losses that
/// read them); scores are the gating rule's, after the mask (0 or -inf outside the open set);
/// T * k triples as TopKRouter's. Every modality must have at least k open experts
/// (checked at construction). A gating rule that can pick a masked expert (group-limited
/// selection, when a kept group has fewer than k open experts) is refused at route() with
/// the token and expert named, never routed silently.
///
/// Backward is the wrapped router's: the mask is a constant, and the masked entries have
/// probability 0, so they get no gradient through the softmax.
template <class GatingType>
class ModalityRouter : public RouterWrapper<TopKRouter<GatingType>> {
  using Base = RouterWrapper<TopKRouter<GatingType>>;
  using Base::router_;

 public:
  using typename Base::scalar_type;
  using S = scalar_type;
  using gating_type = GatingType;
  /// Marks a cross-modal expert in the table (moe::cross_modal).
  static constexpr Index shared = cross_modal;

  /// Wraps router; expert_modality has one entry per expert, each in [-1, num_modalities).
  ModalityRouter(TopKRouter<GatingType> router, std::vector<Index> expert_modality, Index num_modalities)
      : Base(std::move(router)), table_(std::move(expert_modality)), num_modalities_(num_modalities) {
    validate("ModalityRouter::ModalityRouter()");
  }

  /// Zero weights [E, d], k experts per token.
  ModalityRouter(Index num_experts, Index input_dim, Index k, std::vector<Index> expert_modality,
                 Index num_modalities, GatingType gating = {})
      : ModalityRouter(TopKRouter<GatingType>(num_experts, input_dim, k, std::move(gating)), std::move(expert_modality),
                       num_modalities) {}

  [[nodiscard]] Index k() const noexcept { return router_.k(); }
  [[nodiscard]] Index num_modalities() const noexcept { return num_modalities_; }
  [[nodiscard]] const std::vector<Index>& expert_modality() const noexcept { return table_; }
  [[nodiscard]] RowMatrix<S>& weight() noexcept { return router_.weight(); }
  [[nodiscard]] const RowMatrix<S>& weight() const noexcept { return router_.weight(); }
  [[nodiscard]] GatingType& gating() noexcept { return router_.gating(); }
  [[nodiscard]] const GatingType& gating() const noexcept { return router_.gating(); }

  /// Whether expert e is open to tokens of modality m.
  [[nodiscard]] bool allows(Index m, Index e) const noexcept {
    const Index owner = table_[static_cast<std::size_t>(e)];
    return owner == shared || owner == m;
  }
  /// |A_m|: the experts open to modality m (its own and the cross-modal ones).
  [[nodiscard]] Index open_experts(Index m) const noexcept {
    Index n = 0;
    for (Index e = 0; e < this->num_experts(); ++e) n += allows(m, e) ? 1 : 0;
    return n;
  }

  /// The wrapped router's check (weight and gating against E, d, k), and the table against
  /// E and k, in case the weight was resized through its accessor.
  void check_shapes() const {
    router_.check_shapes();
    validate("ModalityRouter::check_shapes()");
  }

  template <class Arch = xsimd::default_arch>
  void route(const ConstMatrixRef<S>& x, RoutingResult<S>& out, const ForwardContext& ctx = {}) const {
    constexpr const char* where = "ModalityRouter::route()";
    check_ids(ctx.modality_ids, x.rows(), where);
    router_.template project<Arch>(x, out, ctx);
    const Index T = x.rows();
    const Index E = this->num_experts();
    // The unmasked logits go back into out.logits after selection (the losses read them).
    struct Tag {};
    detail::ScratchLease<S, Tag> saved_lease;
    S* saved = saved_lease.data(static_cast<std::size_t>(T * E));
    std::copy(out.logits.data(), out.logits.data() + T * E, saved);
    constexpr S minus_inf = -std::numeric_limits<S>::infinity();
    for (Index t = 0; t < T; ++t) {
      const auto m = static_cast<Index>(ctx.modality_ids[static_cast<std::size_t>(t)]);
      for (Index e = 0; e < E; ++e)
        if (!allows(m, e)) out.logits(t, e) = minus_inf;
    }
    router_.gating().template select<Arch>(out, router_.k());
    if constexpr (std::is_same_v<GatingType, SoftmaxTopK<S>>) reselect_underflowed(out, ctx.modality_ids);
    std::copy(saved, saved + T * E, out.logits.data());
    for (std::size_t i = 0; i < out.token.size(); ++i) {
      const Index t = out.token[i];
      const auto m = static_cast<Index>(ctx.modality_ids[static_cast<std::size_t>(t)]);
      if (!allows(m, out.expert[i]))
        detail::throw_invalid(where, detail::concat("the expert the gating rule chose for token ", t, " (modality ", m, ")"),
                              detail::concat("one open to modality ", m, " or cross-modal"),
                              detail::concat("expert ", out.expert[i], " of modality ",
                                             table_[static_cast<std::size_t>(out.expert[i])],
                                             " (this gating rule can select past the mask; use softmax or top-k "
                                             "softmax gating)"));
    }
  }

  /// Backward of route(): the wrapped router's (the mask is constant; masked probabilities are
  /// 0). Consumes no loss itself.
  template <class Arch = xsimd::default_arch>
  void backward(const RouterBackward<S>& in, ModalityRouter& grad, const auto& losses) const {
    router_.template backward<Arch>(in, grad.router_, losses);
  }

  /// Tokens and assignments per modality of a routing this router made from modality_ids.
  [[nodiscard]] ModalityLoad load(const RoutingResult<S>& routing, std::span<const std::int64_t> modality_ids) const {
    if (routing.num_experts != this->num_experts())
      detail::throw_invalid("ModalityRouter::load()", "the routing's num_experts (this router's)", this->num_experts(),
                            routing.num_experts);
    check_ids(modality_ids, routing.num_tokens, "ModalityRouter::load()");
    ModalityLoad out;
    out.num_modalities = num_modalities_;
    out.num_experts = this->num_experts();
    out.tokens.assign(static_cast<std::size_t>(num_modalities_), 0);
    out.counts.assign(static_cast<std::size_t>(num_modalities_ * out.num_experts), 0);
    for (const std::int64_t m : modality_ids) ++out.tokens[static_cast<std::size_t>(m)];
    for (std::size_t i = 0; i < routing.token.size(); ++i) {
      const auto m = static_cast<Index>(modality_ids[static_cast<std::size_t>(routing.token[i])]);
      ++out.counts[static_cast<std::size_t>(m * out.num_experts + routing.expert[i])];
    }
    return out;
  }

 private:
  // Runs every forward (check_shapes): messages are built only on failure, so a passing check
  // allocates nothing.
  void validate(const char* where) const {
    const Index E = this->num_experts();
    if (num_modalities_ < 1) detail::throw_invalid(where, "num_modalities", ">= 1", num_modalities_);
    if (static_cast<Index>(table_.size()) != E)
      detail::throw_invalid(where, "expert_modality length (one entry per expert)", E, table_.size());
    for (std::size_t e = 0; e < table_.size(); ++e)
      if (table_[e] < shared || table_[e] >= num_modalities_)
        detail::throw_invalid(where, detail::concat("expert_modality[", e, "]"),
                              detail::concat("-1 (cross-modal) or a modality in [0, ", num_modalities_, ")"), table_[e]);
    for (Index m = 0; m < num_modalities_; ++m)
      if (open_experts(m) < router_.k())
        detail::throw_invalid(where, detail::concat("experts open to modality ", m, " (its own and the cross-modal ones)"),
                              detail::concat(">= k = ", router_.k()), open_experts(m));
  }

  // Softmax gating: an open expert's probability can underflow to exactly 0 (a logit some 745
  // below the token's best in double, some 104 in float), and then ties with the masked
  // experts' 0; kernels::top_k breaks ties by the lower index, which may be a masked expert's.
  // A token that got one has every probability-0 slot at the end (the order is descending, and
  // the slots before hold open experts of p > 0); those slots are refilled with the open
  // experts of probability 0 in index order: the choice of a top-k over the open experts alone.
  // Every refilled slot keeps its gate (0, renormalised or not). At least k experts are open,
  // so there are enough.
  void reselect_underflowed(RoutingResult<S>& out, std::span<const std::int64_t> ids) const {
    const Index k = router_.k();
    const Index E = this->num_experts();
    for (Index t = 0; t < out.num_tokens; ++t) {
      const auto m = static_cast<Index>(ids[static_cast<std::size_t>(t)]);
      Index* chosen = out.expert.data() + t * k;
      bool masked = false;
      for (Index j = 0; j < k; ++j) masked = masked || !allows(m, chosen[j]);
      if (!masked) continue;
      Index j = k;
      while (j > 0 && out.scores(t, chosen[j - 1]) == S(0)) --j;
      for (Index e = 0; e < E && j < k; ++e)
        if (allows(m, e) && out.scores(t, e) == S(0)) chosen[j++] = e;
    }
  }

  void check_ids(std::span<const std::int64_t> ids, Index T, const char* where) const {
    detail::require(static_cast<Index>(ids.size()) == T, where, "modality_ids length (one per token)", T, ids.size());
    for (std::size_t t = 0; t < ids.size(); ++t)
      if (ids[t] < 0 || ids[t] >= num_modalities_)
        detail::throw_invalid(where, detail::concat("modality_ids[", t, "]"),
                              detail::concat("in [0, num_modalities = ", num_modalities_, ")"), ids[t]);
  }

  std::vector<Index> table_;
  Index num_modalities_;
};

/// Softmax over the open experts, top-k, optional renormalisation: the golden case
/// modality_experts.
template <class S>
using ModalitySoftmaxTopKRouter = ModalityRouter<SoftmaxTopK<S>>;

}  // namespace moe

#endif  // MOE_ROUTER_MODALITY_ROUTER_HPP

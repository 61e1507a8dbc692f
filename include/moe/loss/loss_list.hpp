// Auxiliary losses as an open set: a list of (loss, weight) pairs that MoELayer::backward
// walks, so a new loss is one header and no edit to the layer (docs/losses.md).
#ifndef MOE_LOSS_LOSS_LIST_HPP
#define MOE_LOSS_LOSS_LIST_HPP

#include <moe/contracts/concepts.hpp>
#include <moe/contracts/training.hpp>
#include <moe/core/types.hpp>

#include <tuple>
#include <type_traits>
#include <utility>
#include <xsimd/xsimd.hpp>

namespace moe {

/// A loss on the routing: value(LossInput) and backward<Arch>(LossInput, weight,
/// LossGradient), adding weight * dL/dlogits (or dL/dgate) into the LossGradient.
template <class L, class S>
concept RoutingLoss = requires(const L& loss, const LossInput<S>& in, S weight, const LossGradient<S>& out) {
  { loss.value(in) } -> std::convertible_to<S>;
  loss.template backward<xsimd::default_arch>(in, weight, out);
};

/// One term of the objective: weight * loss.
template <class Loss, class S>
struct WeightedLoss {
  using loss_type = Loss;
  using scalar_type = S;
  Loss loss{};
  S weight = S(0);
};

/// weight * loss, for moe::losses(...).
template <class Loss, class S>
[[nodiscard]] constexpr WeightedLoss<Loss, S> weighted(Loss loss, S weight) {
  return {std::move(loss), weight};
}

/// The auxiliary losses backward adds to the objective, in order.
template <class... Terms>
struct LossList {
  std::tuple<Terms...> terms;

  /// Calls f(term) for every term, in order.
  template <class F>
  void for_each(F&& f) const {
    std::apply([&](const auto&... t) { (f(t), ...); }, terms);
  }
  static constexpr std::size_t size() noexcept { return sizeof...(Terms); }
};

/// losses(weighted(LoadBalancingLoss{}, 0.01f), weighted(RouterZLoss{}, 0.001f), ...).
template <class... Terms>
[[nodiscard]] constexpr LossList<Terms...> losses(Terms... terms) {
  return {std::tuple<Terms...>(std::move(terms)...)};
}

namespace detail {
template <class T>
inline constexpr bool is_weighted_loss = false;
template <class Loss, class S>
inline constexpr bool is_weighted_loss<WeightedLoss<Loss, S>> = true;

template <class T>
inline constexpr bool is_loss_list = false;
template <class... Terms>
inline constexpr bool is_loss_list<LossList<Terms...>> = true;
template <>
inline constexpr bool is_loss_list<NoLosses> = true;
}  // namespace detail

}  // namespace moe

#endif  // MOE_LOSS_LOSS_LIST_HPP

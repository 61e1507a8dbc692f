// The forwarding base of router wrappers (Jittered, ExpertDropout): sizes, parameters and
// traits of the wrapped router, so a wrapper writes only what it changes.
#ifndef MOE_ROUTER_ROUTER_WRAPPER_HPP
#define MOE_ROUTER_ROUTER_WRAPPER_HPP

#include <moe/core/traits.hpp>
#include <moe/core/types.hpp>

#include <utility>

namespace moe {

/// Holds the wrapped router and forwards what a wrapper does not change: num_experts(),
/// input_dim(), router(), for_each_parameter() (a wrapper's gradients are those of the router
/// it wraps, under its names) and the router traits (is_dense, needs_token_ids, token_choice,
/// couples_gates, accepts_loss). A wrapper derives from it and writes route and backward.
template <class RouterType>
class RouterWrapper {
 public:
  using router_type = RouterType;
  using scalar_type = typename RouterType::scalar_type;
  static constexpr bool is_dense = router_traits<RouterType>::is_dense;
  static constexpr bool needs_token_ids = router_traits<RouterType>::needs_token_ids;
  static constexpr bool token_choice = router_traits<RouterType>::token_choice;
  static constexpr bool couples_gates = router_traits<RouterType>::couples_gates;
  template <class L>
  static constexpr bool accepts_loss = router_traits<RouterType>::template accepts_loss<L>;

  explicit RouterWrapper(RouterType router) : router_(std::move(router)) {}

  [[nodiscard]] Index num_experts() const noexcept { return router_.num_experts(); }
  [[nodiscard]] Index input_dim() const noexcept { return router_.input_dim(); }
  [[nodiscard]] RouterType& router() noexcept { return router_; }
  [[nodiscard]] const RouterType& router() const noexcept { return router_; }

  template <class F>
  void for_each_parameter(F&& f) {
    router_.for_each_parameter(f);
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    router_.for_each_parameter(f);
  }

 protected:
  RouterType router_;
};

}  // namespace moe

#endif  // MOE_ROUTER_ROUTER_WRAPPER_HPP

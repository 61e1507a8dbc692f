// Capabilities of policies, read with defaults.
//
// A policy states a capability by a nested constant (`static constexpr bool is_dense = true;`);
// the traits below read it and fall back to the default when the member is absent, so a
// minimal custom policy declares nothing it does not use.
#ifndef MOE_CORE_TRAITS_HPP
#define MOE_CORE_TRAITS_HPP

namespace moe {

template <class RouterType>
struct router_traits {
  /// Dense routers (Soft MoE) produce dispatch/combine matrices instead of triples.
  static constexpr bool is_dense = [] {
    if constexpr (requires { RouterType::is_dense; }) return bool(RouterType::is_dense);
    else return false;
  }();
  /// Hash routing reads ForwardContext::token_ids.
  static constexpr bool needs_token_ids = [] {
    if constexpr (requires { RouterType::needs_token_ids; }) return bool(RouterType::needs_token_ids);
    else return false;
  }();
  /// Noisy and jittered routers read ForwardContext::seed and step.
  static constexpr bool needs_rng = [] {
    if constexpr (requires { RouterType::needs_rng; }) return bool(RouterType::needs_rng);
    else return false;
  }();
  /// Token-choice routers write exactly k assignments per token, token-major.
  static constexpr bool token_choice = [] {
    if constexpr (requires { RouterType::token_choice; }) return bool(RouterType::token_choice);
    else return true;
  }();
};

}  // namespace moe

#endif  // MOE_CORE_TRAITS_HPP

// Capabilities of policies, read with defaults.
//
// A policy states a capability by a nested constant (`static constexpr bool is_dense = true;`)
// or type (`using weight_type = bf16;`); the traits below read it and fall back to the default
// when the member is absent, so a minimal custom policy declares nothing it does not use.
#ifndef MOE_CORE_TRAITS_HPP
#define MOE_CORE_TRAITS_HPP

#include <type_traits>

namespace moe {

namespace detail {
template <class T>
struct weight_type_of {
  using type = typename T::scalar_type;
};
template <class T>
  requires requires { typename T::weight_type; }
struct weight_type_of<T> {
  using type = typename T::weight_type;
};
}  // namespace detail

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
  /// A router whose gates of one token depend on each other beyond gate * dgate (a softmax
  /// over the k selected logits, TopKSoftmax): a wrapper that zeroes gates (ExpertDropout)
  /// must restore them before the router's backward.
  static constexpr bool couples_gates = [] {
    if constexpr (requires { RouterType::couples_gates; }) return bool(RouterType::couples_gates);
    else return false;
  }();
  /// Whether the router's backward consumes the loss type L itself (a loss on the router's
  /// internals, like LoadLoss on noisy top-k's clean logits and noise scale), declared by a
  /// member `template <class L> static constexpr bool accepts_loss`.
  template <class L>
  static constexpr bool accepts_loss = [] {
    if constexpr (requires { RouterType::template accepts_loss<L>; }) return bool(RouterType::template accepts_loss<L>);
    else return false;
  }();
};

template <class ExpertType>
struct expert_traits {
  /// Banks that read their slab's ExpertContext (token indices, positions, the whole input)
  /// take it as the last argument of forward and backward.
  static constexpr bool needs_context = [] {
    if constexpr (requires { ExpertType::needs_context; }) return bool(ExpertType::needs_context);
    else return false;
  }();
  /// Banks for inference only (block-quantized weights): a layer's training members refuse
  /// them with one static_assert that says so.
  static constexpr bool inference_only = [] {
    if constexpr (requires { ExpertType::inference_only; }) return bool(ExpertType::inference_only);
    else return false;
  }();
  /// Banks whose forward must see each expert's whole slab in one call (a recurrence over
  /// the rows of a sequence): the executor does not cut a slab into row blocks for them.
  static constexpr bool whole_slabs = [] {
    if constexpr (requires { ExpertType::whole_slabs; }) return bool(ExpertType::whole_slabs);
    else return false;
  }();
  /// Banks whose output for a row reads other tokens' inputs (ExpertContext::input, e.g. a
  /// convolution over the sequence): their backward adds those tokens' gradient into
  /// ExpertContext::input_grad, so the executor runs their experts' backward one after
  /// another, in expert order (a fixed sum whatever the pool). Implies needs_context.
  static constexpr bool reads_other_tokens = [] {
    if constexpr (requires { ExpertType::reads_other_tokens; }) return bool(ExpertType::reads_other_tokens);
    else return false;
  }();
  static_assert(!reads_other_tokens || needs_context,
                "expert_traits: a bank with reads_other_tokens must also set needs_context (docs/experts.md#traits)");
  /// The element type the weights are stored in (bf16, a block-quantized format, ...); the
  /// activations are always scalar_type. Defaults to scalar_type.
  using weight_type = typename detail::weight_type_of<ExpertType>::type;
};

}  // namespace moe

#endif  // MOE_CORE_TRAITS_HPP

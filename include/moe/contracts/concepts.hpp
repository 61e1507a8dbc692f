// What a policy must provide (docs/policies.md). MoELayer checks each member with its own
// static_assert (readable errors that name the member and its doc page); these concepts are
// what those static_asserts test, and constrain free functions.
//
// Inference members are checked where the layer type is instantiated; training members only
// where training is first used (make_gradients, backward), so inference-only policies stay
// legal.
#ifndef MOE_CONTRACTS_CONCEPTS_HPP
#define MOE_CONTRACTS_CONCEPTS_HPP

#include <moe/contracts/combine.hpp>
#include <moe/contracts/dispatch_plan.hpp>
#include <moe/contracts/expert.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/contracts/training.hpp>
#include <moe/core/context.hpp>
#include <moe/core/traits.hpp>
#include <moe/core/types.hpp>

#include <concepts>
#include <cstddef>
#include <string>
#include <xsimd/xsimd.hpp>

namespace moe {

/// The empty loss list, for a router backward called with no auxiliary loss.
struct NoLosses {
  template <class F>
  void for_each(F&&) const {}
  static constexpr std::size_t size() noexcept { return 0; }
};
inline constexpr NoLosses no_losses{};

namespace detail {
template <class T>
concept HasScalarType = requires { typename T::scalar_type; } && Scalar<typename T::scalar_type>;

template <class T>
concept HasExpertSizes = requires(const T& e) {
  { e.num_experts() } -> std::convertible_to<Index>;
  { e.input_dim() } -> std::convertible_to<Index>;
  { e.output_dim() } -> std::convertible_to<Index>;
  { e.hidden_cols() } -> std::convertible_to<Index>;
};

/// forward<Arch>(e, x, hidden, y) (the minimal form), or with a GemmKernel last (every shipped
/// bank), or with an ExpertContext last for banks whose traits ask for context.
template <class T, class Arch = xsimd::default_arch>
concept HasExpertForward = HasScalarType<T> && requires(const T& e, Index i,
                                                        const ConstMatrixRef<typename T::scalar_type>& x,
                                                        MatrixRef<typename T::scalar_type> m,
                                                        const ExpertContext<typename T::scalar_type>& ctx,
                                                        GemmKernel kernel) {
  requires(expert_traits<T>::needs_context
               ? requires { e.template forward<Arch>(i, x, m, m, ctx); }
               : (requires { e.template forward<Arch>(i, x, m, m); } ||
                  requires { e.template forward<Arch>(i, x, m, m, kernel); }));
};

/// backward<Arch>(e, x, hidden, dy, dx, dhidden, grad), with an ExpertContext last for banks
/// whose traits ask for context.
template <class T, class Arch = xsimd::default_arch>
concept HasExpertBackward = HasScalarType<T> && requires(const T& e, Index i,
                                                         const ConstMatrixRef<typename T::scalar_type>& x,
                                                         MatrixRef<typename T::scalar_type> m, T& grad,
                                                         const ExpertContext<typename T::scalar_type>& ctx) {
  requires(expert_traits<T>::needs_context ? requires { e.template backward<Arch>(i, x, x, x, m, m, grad, ctx); }
                                           : requires { e.template backward<Arch>(i, x, x, x, m, m, grad); });
};

/// for_each_parameter(f) with f(const std::string& name, block): what gradients, optimisers
/// and save_layer walk.
template <class T>
concept HasParameters = requires(T& p, const T& cp) {
  p.for_each_parameter([](const std::string&, auto&&) {});
  cp.for_each_parameter([](const std::string&, const auto&) {});
};

template <class T>
concept HasRouterSizes = requires(const T& r) {
  { r.num_experts() } -> std::convertible_to<Index>;
  { r.input_dim() } -> std::convertible_to<Index>;
};

template <class T, class Arch = xsimd::default_arch>
concept HasRoute = HasScalarType<T> && requires(const T& r, const ConstMatrixRef<typename T::scalar_type>& x,
                                                RoutingResult<typename T::scalar_type>& out,
                                                const ForwardContext& ctx) {
  r.template route<Arch>(x, out, ctx);
};

/// A router (or gating rule) that can recompute a token's gates by its rule for the experts
/// its pairs now hold: what overflow rerouting and routing replay need (docs/capacity.md#rerouting).
template <class T, class Arch = xsimd::default_arch>
concept HasRegate = HasScalarType<T> && requires(const T& r, RoutingResult<typename T::scalar_type>& out, Index i) {
  r.template regate<Arch>(out, i, i, i);
};

/// An executor that may build step 2's plan itself (the expert-parallel executor under a
/// capacity counted over all ranks): `plan` returns false to leave planning to the layer.
template <class X, class S>
concept PlanningExecutor = requires(const X& x, const RoutingResult<S>& routing, DispatchPlan<S>& plan,
                                    const Capacity& capacity) {
  { x.plan(routing, plan, capacity) } -> std::same_as<bool>;
};

template <class T, class Arch = xsimd::default_arch>
concept HasRouterBackward = HasScalarType<T> && requires(const T& r, const RouterBackward<typename T::scalar_type>& in,
                                                         T& grad) {
  r.template backward<Arch>(in, grad, no_losses);
};

template <class T, class Arch = xsimd::default_arch>
concept HasCombine = HasScalarType<T> && requires(const T& c, const ConstMatrixRef<typename T::scalar_type>& x,
                                                  const DispatchPlan<typename T::scalar_type>& plan,
                                                  MatrixRef<typename T::scalar_type> y,
                                                  const CombineContext<typename T::scalar_type>& cc) {
  c.template combine<Arch>(x, plan, x, y, cc);
};

template <class T, class Arch = xsimd::default_arch>
concept HasCombinerBackward = HasScalarType<T> && requires(const T& c,
                                                           const CombinerBackward<typename T::scalar_type>& in,
                                                           T& grad, const CombineContext<typename T::scalar_type>& cc) {
  c.template backward<Arch>(in, grad, cc);
};
}  // namespace detail

/// A bank of experts: see docs/experts.md.
template <class T, class Arch = xsimd::default_arch>
concept ExpertBank = detail::HasScalarType<T> && detail::HasExpertSizes<T> && detail::HasExpertForward<T, Arch>;

/// An expert bank that trains: backward and for_each_parameter (docs/experts.md#training).
template <class T, class Arch = xsimd::default_arch>
concept TrainableExpertBank = ExpertBank<T, Arch> && detail::HasExpertBackward<T, Arch> && detail::HasParameters<T>;

/// A routing policy: see docs/routers.md.
template <class T, class Arch = xsimd::default_arch>
concept Router = detail::HasScalarType<T> && detail::HasRouterSizes<T> && detail::HasRoute<T, Arch>;

/// A router that trains (docs/routers.md#training).
template <class T, class Arch = xsimd::default_arch>
concept TrainableRouter = Router<T, Arch> && detail::HasRouterBackward<T, Arch> && detail::HasParameters<T>;

/// A combining policy: see docs/combiners.md.
template <class T, class Arch = xsimd::default_arch>
concept Combiner = detail::HasScalarType<T> && detail::HasCombine<T, Arch>;

/// A combiner that trains (docs/combiners.md#training).
template <class T, class Arch = xsimd::default_arch>
concept TrainableCombiner = Combiner<T, Arch> && detail::HasCombinerBackward<T, Arch> && detail::HasParameters<T>;

}  // namespace moe

#endif  // MOE_CONTRACTS_CONCEPTS_HPP

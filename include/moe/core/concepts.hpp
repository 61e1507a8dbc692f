// What a policy must provide. MoELayer checks each member with its own static_assert
// (readable errors that name the member); these concepts constrain free functions.
#ifndef MOE_CORE_CONCEPTS_HPP
#define MOE_CORE_CONCEPTS_HPP

#include <moe/core/context.hpp>
#include <moe/core/types.hpp>
#include <moe/core/workspace.hpp>
#include <moe/dispatch/dispatch_plan.hpp>
#include <moe/router/routing_result.hpp>

#include <concepts>
#include <xsimd/xsimd.hpp>

namespace moe {

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

template <class T, class Arch = xsimd::default_arch>
concept HasExpertForward = HasScalarType<T> && requires(const T& e, Index i,
                                                        const ConstMatrixRef<typename T::scalar_type>& x,
                                                        MatrixRef<typename T::scalar_type> m) {
  e.template forward<Arch>(i, x, m, m);
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

template <class T, class Arch = xsimd::default_arch>
concept HasCombine = HasScalarType<T> && requires(const T& c, const ConstMatrixRef<typename T::scalar_type>& x,
                                                  const DispatchPlan<typename T::scalar_type>& plan,
                                                  MatrixRef<typename T::scalar_type> y,
                                                  Workspace<typename T::scalar_type>& ws) {
  c.template combine<Arch>(x, plan, x, y, ws);
};
}  // namespace detail

/// A bank of experts: see docs/policies.md#experts.
template <class T, class Arch = xsimd::default_arch>
concept ExpertBank = detail::HasScalarType<T> && detail::HasExpertSizes<T> && detail::HasExpertForward<T, Arch>;

/// A routing policy: see docs/policies.md#routers.
template <class T, class Arch = xsimd::default_arch>
concept Router = detail::HasScalarType<T> && detail::HasRouterSizes<T> && detail::HasRoute<T, Arch>;

/// A combining policy: see docs/policies.md#combiners.
template <class T, class Arch = xsimd::default_arch>
concept Combiner = detail::HasScalarType<T> && detail::HasCombine<T, Arch>;

}  // namespace moe

#endif  // MOE_CORE_CONCEPTS_HPP

// Router input jitter (Switch Transformers): multiplicative noise on what the router sees.
#ifndef MOE_ROUTER_JITTER_HPP
#define MOE_ROUTER_JITTER_HPP

#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/random.hpp>
#include <moe/core/traits.hpp>
#include <moe/core/types.hpp>
#include <moe/router/routing_result.hpp>

#include <cmath>
#include <cstdint>
#include <utility>
#include <xsimd/xsimd.hpp>

namespace moe {

/// Wraps a router so that, in training, it routes on x * U(1 - eps, 1 + eps) elementwise
/// (Switch Transformers' router jitter); in inference, or with eps = 0, it is the wrapped
/// router unchanged. Only the routing decision sees the noise: the layer gathers the experts'
/// input from the caller's x, so experts always see the clean tokens.
///
/// The factor of token t (row of x) and column c is
///   CounterRng(ctx.seed, ctx.step).uniform(t, lane_offset + c, 1 - eps, 1 + eps),
/// a pure function of (seed, step, t, c): reproducible and independent of threads. The lanes
/// start at lane_offset so that a wrapped router drawing its own noise from the same
/// (seed, step) (noisy top-k uses lanes below 2E) gets an independent stream.
///
/// Allocation: a training call copies x into a local [T, d] matrix (one allocation per call),
/// since the router is const and may serve several threads at once.
template <class RouterType>
class Jittered {
 public:
  using router_type = RouterType;
  using scalar_type = typename RouterType::scalar_type;
  static constexpr bool needs_rng = true;
  static constexpr bool is_dense = router_traits<RouterType>::is_dense;
  static constexpr bool needs_token_ids = router_traits<RouterType>::needs_token_ids;
  static constexpr bool token_choice = router_traits<RouterType>::token_choice;
  static constexpr std::uint64_t lane_offset = std::uint64_t{1} << 40;

  /// eps in [0, 1): the half-width of the multiplicative noise (Switch uses 1e-2).
  Jittered(RouterType router, double eps) : router_(std::move(router)), eps_(eps) {
    detail::require(std::isfinite(eps) && eps >= 0.0 && eps < 1.0, "Jittered::Jittered()", "eps", "in [0, 1)", eps);
  }

  [[nodiscard]] Index num_experts() const noexcept { return router_.num_experts(); }
  [[nodiscard]] Index input_dim() const noexcept { return router_.input_dim(); }
  [[nodiscard]] double eps() const noexcept { return eps_; }

  [[nodiscard]] RouterType& router() noexcept { return router_; }
  [[nodiscard]] const RouterType& router() const noexcept { return router_; }

  /// The factor that multiplies x(t, c) in training mode.
  [[nodiscard]] scalar_type factor(const CounterRng& rng, Index t, Index c) const noexcept {
    return static_cast<scalar_type>(
        rng.uniform(static_cast<std::uint64_t>(t), lane_offset + static_cast<std::uint64_t>(c), 1.0 - eps_, 1.0 + eps_));
  }

  template <class Arch = xsimd::default_arch>
  void route(const ConstMatrixRef<scalar_type>& x, RoutingResult<scalar_type>& out, const ForwardContext& ctx = {}) const {
    if (ctx.mode != Mode::training || eps_ == 0.0) {
      router_.template route<Arch>(x, out, ctx);
      return;
    }
    const CounterRng rng(ctx.seed, ctx.step);
    RowMatrix<scalar_type> jittered(x.rows(), x.cols());
    for (Index t = 0; t < x.rows(); ++t)
      for (Index c = 0; c < x.cols(); ++c) jittered(t, c) = x(t, c) * factor(rng, t, c);
    router_.template route<Arch>(jittered, out, ctx);
  }

 private:
  RouterType router_;
  double eps_;
};

}  // namespace moe

#endif  // MOE_ROUTER_JITTER_HPP

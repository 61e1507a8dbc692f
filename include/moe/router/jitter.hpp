// Router input jitter (Switch Transformers): multiplicative noise on what the router sees.
#ifndef MOE_ROUTER_JITTER_HPP
#define MOE_ROUTER_JITTER_HPP

#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/random.hpp>
#include <moe/core/scratch.hpp>
#include <moe/core/traits.hpp>
#include <moe/core/types.hpp>
#include <moe/contracts/concepts.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/contracts/training.hpp>
#include <moe/router/router_wrapper.hpp>

#include <cmath>
#include <cstdint>
#include <optional>
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
/// Allocation: a training call writes x * u into the calling thread's scratch
/// (detail::ScratchLease, grown once), since the router is const and may serve several threads
/// at once; after the first call with a shape, route and backward allocate nothing.
///
/// Backward: the wrapped router saw x' = x * u, so its backward runs on x' and its dL/dx'
/// reaches x as dL/dx' * u (elementwise); the experts' path gives x its gradient separately.
/// u must be the forward's: backward regenerates it from the ForwardContext in its
/// BackwardContext (the layer passes the forward's), or uses the factors given to
/// set_factors(); see docs/gradients.md.
template <class RouterType>
class Jittered : public RouterWrapper<RouterType> {
  using RouterWrapper<RouterType>::router_;

 public:
  using typename RouterWrapper<RouterType>::scalar_type;
  static constexpr bool needs_rng = true;
  static constexpr std::uint64_t lane_offset = std::uint64_t{1} << 40;

  /// eps in [0, 1): the half-width of the multiplicative noise (Switch uses 1e-2).
  Jittered(RouterType router, double eps) : RouterWrapper<RouterType>(std::move(router)), eps_(eps) {
    detail::require(std::isfinite(eps) && eps >= 0.0 && eps < 1.0, "Jittered::Jittered()", "eps", "in [0, 1)", eps);
  }

  [[nodiscard]] double eps() const noexcept { return eps_; }
  using RouterWrapper<RouterType>::input_dim;

  /// Uses these factors [T, d] instead of the counter-based ones in training calls (whatever
  /// eps), until clear_factors(): replays a given jitter. T must equal the rows of every x routed.
  void set_factors(RowMatrix<scalar_type> u) {
    detail::require(u.cols() == input_dim(), "Jittered::set_factors()", "factor columns (input_dim)", input_dim(),
                    u.cols());
    factors_ = std::move(u);
  }
  void clear_factors() noexcept { factors_.reset(); }
  [[nodiscard]] const std::optional<RowMatrix<scalar_type>>& factors() const noexcept { return factors_; }

  /// The factor that multiplies x(t, c) in training mode.
  [[nodiscard]] scalar_type factor(const CounterRng& rng, Index t, Index c) const noexcept {
    return static_cast<scalar_type>(
        rng.uniform(static_cast<std::uint64_t>(t), lane_offset + static_cast<std::uint64_t>(c), 1.0 - eps_, 1.0 + eps_));
  }

  template <class Arch = xsimd::default_arch>
  void route(const ConstMatrixRef<scalar_type>& x, RoutingResult<scalar_type>& out, const ForwardContext& ctx = {}) const {
    if (ctx.mode != Mode::training || (eps_ == 0.0 && !factors_)) {
      router_.template route<Arch>(x, out, ctx);
      return;
    }
    detail::ScratchLease<scalar_type, ScratchTag> u_lease, jittered_lease;
    auto u = u_lease.matrix(x.rows(), x.cols());
    factors_of(x, ctx, "Jittered::route()", u);
    auto jittered = jittered_lease.matrix(x.rows(), x.cols());
    jittered = x.cwiseProduct(u);
    router_.template route<Arch>(jittered, out, ctx);
  }

  /// The wrapped router's regate (overflow rerouting, routing replay): gates depend on the
  /// scores only, which the jitter has already shaped.
  template <class Arch = xsimd::default_arch>
    requires detail::HasRegate<RouterType, Arch>
  void regate(RoutingResult<scalar_type>& out, Index t, Index begin, Index end) const {
    router_.template regate<Arch>(out, t, begin, end);
  }

  /// Backward of route() (docs/routers.md#training), with the forward's context in
  /// in.context: the factors are regenerated from its (seed, step) (or taken from
  /// set_factors()); none outside training, as in route().
  template <class Arch = xsimd::default_arch>
  void backward(const RouterBackward<scalar_type>& in, Jittered& grad, const auto& losses) const {
    const ForwardContext& ctx = in.context.forward;
    if (ctx.mode != Mode::training || (eps_ == 0.0 && !factors_)) {
      router_.template backward<Arch>(in, grad.router_, losses);
      return;
    }
    const auto& x = in.x;
    detail::ScratchLease<scalar_type, ScratchTag> u_lease;
    auto u = u_lease.matrix(x.rows(), x.cols());
    factors_of(x, ctx, "Jittered::backward()", u);
    jittered_backward<Arch>(in, u, grad, losses);
  }

 private:
  using S = scalar_type;
  struct ScratchTag;

  // Writes the training factors of x into u [T, d]: the supplied ones, or generated from
  // (seed, step).
  void factors_of(const ConstMatrixRef<S>& x, const ForwardContext& ctx, const char* where,
                  Eigen::Map<RowMatrix<S>> u) const {
    if (factors_) {
      detail::require(factors_->rows() == x.rows(), where,
                      "rows of the factors given to set_factors() (one per row of x)", x.rows(), factors_->rows());
      detail::require(factors_->cols() == x.cols(), where, "columns of x (as the factors given to set_factors())",
                      factors_->cols(), x.cols());
      u = *factors_;
      return;
    }
    const CounterRng rng(ctx.seed, ctx.step);
    for (Index t = 0; t < x.rows(); ++t)
      for (Index c = 0; c < x.cols(); ++c) u(t, c) = factor(rng, t, c);
  }

  // x' = x * u went into the router: its backward on x', then dL/dx = dL/dx' * u.
  template <class Arch>
  void jittered_backward(const RouterBackward<S>& in, const ConstMatrixRef<S>& u, Jittered& grad,
                         const auto& losses) const {
    constexpr const char* where = "Jittered::backward()";
    const auto& x = in.x;
    detail::require_shape(u, x.rows(), x.cols(), where, "jitter factors (as x)");
    detail::require_shape(in.dx, x.rows(), x.cols(), where, "dx (as x)");
    detail::ScratchLease<S, ScratchTag> jittered_lease, djittered_lease;
    auto jittered = jittered_lease.matrix(x.rows(), x.cols());
    jittered = x.cwiseProduct(u);
    auto djittered = djittered_lease.zeros(x.rows(), x.cols());
    router_.template backward<Arch>(RouterBackward<S>{.x = jittered,
                                                      .routing = in.routing,
                                                      .dgate = in.dgate,
                                                      .dscores = in.dscores,
                                                      .dlogits = in.dlogits,
                                                      .dx = djittered,
                                                      .context = in.context},
                                    grad.router_, losses);
    MatrixRef<S> dx = in.dx;
    dx += djittered.cwiseProduct(u);
  }

  double eps_;
  std::optional<RowMatrix<S>> factors_;
};

}  // namespace moe

#endif  // MOE_ROUTER_JITTER_HPP

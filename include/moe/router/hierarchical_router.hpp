// Hierarchical routing (Shazeer et al. 2017, hierarchical MoE): a primary router picks groups,
// a secondary router per group picks experts inside it; the gate is the product.
#ifndef MOE_ROUTER_HIERARCHICAL_ROUTER_HPP
#define MOE_ROUTER_HIERARCHICAL_ROUTER_HPP

#include <moe/contracts/routing_result.hpp>
#include <moe/contracts/training.hpp>
#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/parameters.hpp>
#include <moe/core/scratch.hpp>
#include <moe/core/types.hpp>
#include <moe/kernels/gemm.hpp>
#include <moe/kernels/softmax.hpp>
#include <moe/kernels/top_k.hpp>
#include <moe/loss/hierarchical_balancing_loss.hpp>

#include <cstddef>
#include <string>
#include <type_traits>
#include <utility>
#include <xsimd/xsimd.hpp>

namespace moe {

/// a groups of b experts each, expert (i, j) = index i * b + j:
///
///     Gp = softmax(x Wp^T) over the a groups, top k1, renormalised     (primary, Wp [a, d])
///     Gi = softmax(x Wi^T) over group i's b experts, top k2, renormalised (group i, Wi [b, d])
///     gate(i, j) = Gp_i * Gi_j for the kept pairs
///
/// k = k1 * k2 pairs per token, token-major: the kept groups best first, inside each its kept
/// experts best first. Ties go to the lower index at both levels. `renormalize = false` keeps
/// the raw probabilities at both levels.
///
/// RoutingResult: `logits` [T, a*b] are every group's secondary logits (column i*b + j is
/// (x Wi^T)_j, for every group, kept or not), `scores` their softmax within each group; the
/// primary logits are not stored (primary_logits(x) gives them, and backward recomputes them
/// from x), so the router stays const and shareable between threads. A loss on
/// routing.logits (LoadBalancingLoss, RouterZLoss) sees the secondary logits as one row of a*b
/// experts; HierarchicalBalancingLoss balances each level on its own (the router's backward
/// consumes it, since it reads the primary probabilities).
///
/// | member         | shape   | golden name                 |
/// |----------------|---------|-----------------------------|
/// | primary()      | [a, d]  | moe.gate.weight             |
/// | group_gate(i)  | [b, d]  | moe.group_gates.{i}.weight  |
template <class S>
class HierarchicalRouter {
 public:
  using scalar_type = S;
  static constexpr bool token_choice = true;

  /// Checkpoint names; "{e}" in `group` stands for the group index.
  struct Names {
    std::string primary = "gate.weight";
    std::string group = "group_gates.{e}.weight";
  };

  /// primary [a, d]; groups [a * b, d], group i's router in rows [i b, i b + b).
  HierarchicalRouter(RowMatrix<S> primary, RowMatrix<S> groups, Index top_k_groups, Index top_k_per_group,
                     bool renormalize = true)
      : primary_(std::move(primary)), groups_(std::move(groups)), k1_(top_k_groups), k2_(top_k_per_group),
        renormalize_(renormalize) {
    check_shapes_impl("HierarchicalRouter::HierarchicalRouter()");
  }

  /// Zero weights: a groups of b experts over inputs of width d.
  HierarchicalRouter(Index num_groups, Index experts_per_group, Index input_dim, Index top_k_groups,
                     Index top_k_per_group, bool renormalize = true)
      : HierarchicalRouter(RowMatrix<S>::Zero(positive(num_groups, "num_groups"), positive(input_dim, "input_dim")),
                           RowMatrix<S>::Zero(num_groups * positive(experts_per_group, "experts_per_group"), input_dim),
                           top_k_groups, top_k_per_group, renormalize) {}

  [[nodiscard]] Index num_groups() const noexcept { return primary_.rows(); }
  [[nodiscard]] Index experts_per_group() const noexcept { return primary_.rows() == 0 ? 0 : groups_.rows() / primary_.rows(); }
  [[nodiscard]] Index num_experts() const noexcept { return groups_.rows(); }
  [[nodiscard]] Index input_dim() const noexcept { return primary_.cols(); }
  [[nodiscard]] Index top_k_groups() const noexcept { return k1_; }
  [[nodiscard]] Index top_k_per_group() const noexcept { return k2_; }
  [[nodiscard]] Index k() const noexcept { return k1_ * k2_; }
  [[nodiscard]] bool renormalize() const noexcept { return renormalize_; }

  [[nodiscard]] RowMatrix<S>& primary() noexcept { return primary_; }
  [[nodiscard]] const RowMatrix<S>& primary() const noexcept { return primary_; }
  /// Every group's router stacked [a * b, d].
  [[nodiscard]] RowMatrix<S>& groups() noexcept { return groups_; }
  [[nodiscard]] const RowMatrix<S>& groups() const noexcept { return groups_; }
  [[nodiscard]] auto group_gate(Index i) { return groups_.middleRows(check_group(i) * experts_per_group(), experts_per_group()); }
  [[nodiscard]] auto group_gate(Index i) const {
    return groups_.middleRows(check_group(i) * experts_per_group(), experts_per_group());
  }
  [[nodiscard]] Names& names() noexcept { return names_; }
  [[nodiscard]] const Names& names() const noexcept { return names_; }

  template <class F>
  void for_each_parameter(F&& f) {
    f(names_.primary, primary_);
    for (Index i = 0; i < num_groups(); ++i) f(detail::expand_name(names_.group, i), group_gate(i));
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    f(names_.primary, primary_);
    for (Index i = 0; i < num_groups(); ++i) f(detail::expand_name(names_.group, i), group_gate(i));
  }

  /// Throws if a weight was resized through its accessor so that the sizes no longer agree, or
  /// a k no longer fits (runs on every forward: messages are built only on failure).
  void check_shapes() const { check_shapes_impl("HierarchicalRouter::check_shapes()"); }

  /// z = x Wp^T [T, a], the primary logits.
  template <class Arch = xsimd::default_arch>
  void primary_logits(const ConstMatrixRef<S>& x, MatrixRef<S> z, const ForwardContext& ctx = {}) const {
    kernels::gemm<Arch>(z, x, Op::none, primary_, Op::transpose, S(1), S(0), ctx.gemm);
  }

  /// p = softmax(x Wp^T) [T, a], the primary probabilities (HierarchicalBalancingLoss reads them).
  template <class Arch = xsimd::default_arch>
  void primary_probabilities(const ConstMatrixRef<S>& x, MatrixRef<S> p, const ForwardContext& ctx = {}) const {
    detail::require_shape(p, x.rows(), num_groups(), "HierarchicalRouter::primary_probabilities()", "p");
    primary_logits<Arch>(x, p, ctx);
    for (Index t = 0; t < x.rows(); ++t) kernels::SoftmaxRows<Arch>{}(p.row(t).data(), 1, num_groups(), num_groups());
  }

  /// The router's backward consumes HierarchicalBalancingLoss (it needs the primary
  /// probabilities, which the RoutingResult does not hold).
  template <class L>
  static constexpr bool accepts_loss = std::is_same_v<L, HierarchicalBalancingLoss>;

  template <class Arch = xsimd::default_arch>
  void route(const ConstMatrixRef<S>& x, RoutingResult<S>& out, const ForwardContext& ctx = {}) const {
    detail::require(x.cols() == input_dim(), "HierarchicalRouter::route()", "x columns (input_dim)", input_dim(), x.cols());
    const Index T = x.rows(), E = num_experts(), a = num_groups(), b = experts_per_group(), k = this->k();
    out.reset(T, E, T * k, k);
    detail::ensure_shape(out.logits, T, E);
    kernels::gemm<Arch>(out.logits, x, Op::none, groups_, Op::transpose, S(1), S(0), ctx.gemm);
    out.scores = out.logits;
    for (Index i = 0; i < a; ++i) kernels::SoftmaxRows<Arch>{}(out.scores.data() + i * b, T, b, E);

    struct Tag;
    detail::ScratchLease<S, Tag> p_lease;
    detail::ScratchLease<Index, Tag> idx_lease;
    S* const p = p_lease.data(static_cast<std::size_t>(T * a));
    Index* const idx = idx_lease.data(static_cast<std::size_t>(k1_ + k2_));
    primary_probs<Arch>(x, p, ctx);
    for (Index t = 0; t < T; ++t) {
      const S* pt = p + t * a;
      Index* groups = idx;
      Index* experts = idx + k1_;
      kernels::top_k(pt, a, k1_, groups);
      S sum_p = 0;
      for (Index g = 0; g < k1_; ++g) sum_p += pt[groups[g]];
      std::size_t n = static_cast<std::size_t>(t * k);
      for (Index g = 0; g < k1_; ++g) {
        const Index i = groups[g];
        const S gp = renormalize_ ? pt[i] / sum_p : pt[i];
        const S* q = out.scores.data() + t * E + i * b;
        kernels::top_k(q, b, k2_, experts);
        S sum_q = 0;
        for (Index j = 0; j < k2_; ++j) sum_q += q[experts[j]];
        for (Index j = 0; j < k2_; ++j, ++n) {
          out.token[n] = t;
          out.expert[n] = i * b + experts[j];
          out.gate[n] = gp * (renormalize_ ? q[experts[j]] / sum_q : q[experts[j]]);
        }
      }
    }
  }

  /// Backward of route(): in.dgate per pair; in.dlogits [T, a*b] comes in holding the losses'
  /// gradients on the secondary logits and leaves holding the total. The gate's gradient splits
  /// into the primary and the group factor; each goes through its renormalisation (when on) and
  /// softmax. Every weighted(HierarchicalBalancingLoss, w) of `losses` adds its gradient on the
  /// primary and the group logits. dWi += (group i's columns of dlogits)^T x, dWp += dz^T x,
  /// dx += both products.
  template <class Arch = xsimd::default_arch>
  void backward(const RouterBackward<S>& in, HierarchicalRouter& grad, const auto& losses) const {
    const RoutingResult<S>& r = in.routing;
    const Index T = r.num_tokens, E = num_experts(), a = num_groups(), b = experts_per_group(), k = this->k();
    MatrixRef<S> dlogits = in.dlogits;
    struct Tag;
    detail::ScratchLease<S, Tag> p_lease, dz_lease;
    S* const p = p_lease.data(static_cast<std::size_t>(T * a));
    S* const dz = dz_lease.filled(static_cast<std::size_t>(T * a), S(0));
    primary_probs<Arch>(in.x, p, in.context.forward);
    for (Index t = 0; t < T; ++t) {
      const S* pt = p + t * a;
      const S* q_row = r.scores.data() + t * E;
      S* dzt = dz + t * a;
      // Kept groups in order, from the pairs: group g's pairs are [t k + g k2, t k + g k2 + k2).
      S sum_p = 0;
      for (Index g = 0; g < k1_; ++g) sum_p += pt[r.expert[static_cast<std::size_t>(t * k + g * k2_)] / b];
      S dot_p = 0;  // sum_g dGp_g Gp_g, for the primary renormalisation
      // First pass: dGp per kept group; the group factor's backward into dlogits.
      for (Index g = 0; g < k1_; ++g) {
        const std::size_t base = static_cast<std::size_t>(t * k + g * k2_);
        const Index i = r.expert[base] / b;
        const S gp = renormalize_ ? pt[i] / sum_p : pt[i];
        const S* q = q_row + i * b;
        S sum_q = 0;
        for (Index j = 0; j < k2_; ++j) sum_q += q[r.expert[base + static_cast<std::size_t>(j)] - i * b];
        S dgp = 0, dot_q = 0;
        for (Index j = 0; j < k2_; ++j) {
          const std::size_t n = base + static_cast<std::size_t>(j);
          const S qj = q[r.expert[n] - i * b];
          const S gi = renormalize_ ? qj / sum_q : qj;
          dgp += in.dgate[n] * gi;
          dot_q += in.dgate[n] * gp * gi;  // dGi_j * Gi_j
        }
        // dq_j for the kept experts of group i, then through the softmax within the group.
        S c = 0;
        for (Index j = 0; j < k2_; ++j) {
          const std::size_t n = base + static_cast<std::size_t>(j);
          const S dgi = in.dgate[n] * gp;
          const S dq = renormalize_ ? (dgi - dot_q) / sum_q : dgi;
          c += q[r.expert[n] - i * b] * dq;
        }
        for (Index e = 0; e < b; ++e) dlogits(t, i * b + e) -= q[e] * c;
        for (Index j = 0; j < k2_; ++j) {
          const std::size_t n = base + static_cast<std::size_t>(j);
          const Index e = r.expert[n] - i * b;
          const S dgi = in.dgate[n] * gp;
          const S dq = renormalize_ ? (dgi - dot_q) / sum_q : dgi;
          dlogits(t, i * b + e) += q[e] * dq;
        }
        dzt[i] = dgp;  // dGp_i for now
        dot_p += dgp * gp;
      }
      // The primary factor: dp_i for the kept groups, then through the softmax over groups.
      S c = 0;
      for (Index g = 0; g < k1_; ++g) {
        const Index i = r.expert[static_cast<std::size_t>(t * k + g * k2_)] / b;
        const S dp = renormalize_ ? (dzt[i] - dot_p) / sum_p : dzt[i];
        dzt[i] = dp;
        c += pt[i] * dp;
      }
      // dz = p * (dp - c), with dp 0 outside the kept groups (written there as 0 already).
      for (Index i = 0; i < a; ++i) dzt[i] = pt[i] * (dzt[i] - c);
    }
    losses.for_each([&](const auto& term) {
      if constexpr (std::is_same_v<typename std::remove_cvref_t<decltype(term)>::loss_type, HierarchicalBalancingLoss>)
        term.loss.backward(p, r, a, k1_, k2_, term.weight, dz, dlogits);
    });
    const Eigen::Map<const RowMatrix<S>> dz_m(dz, T, a);
    kernels::gemm<Arch>(grad.groups_, dlogits, Op::transpose, in.x, Op::none, S(1), S(1));
    kernels::gemm<Arch>(grad.primary_, dz_m, Op::transpose, in.x, Op::none, S(1), S(1));
    kernels::gemm<Arch>(in.dx, dlogits, Op::none, groups_, Op::none, S(1), S(1));
    kernels::gemm<Arch>(in.dx, dz_m, Op::none, primary_, Op::none, S(1), S(1));
  }

 private:
  static Index positive(Index v, const char* what) {
    detail::require(v >= 1, "HierarchicalRouter::HierarchicalRouter()", what, ">= 1", v);
    return v;
  }

  Index check_group(Index i) const {
    detail::require(i >= 0 && i < num_groups(), "HierarchicalRouter::group_gate()", "group index",
                    detail::concat("in [0, ", num_groups(), ")"), i);
    return i;
  }

  void check_shapes_impl(const char* where) const {
    const Index a = primary_.rows(), d = primary_.cols();
    if (a < 1) detail::throw_invalid(where, "num_groups (primary rows)", ">= 1", a);
    if (d < 1) detail::throw_invalid(where, "input_dim (primary columns)", ">= 1", d);
    if (groups_.cols() != d)
      detail::throw_invalid(where, "group routers' columns", detail::concat("input_dim = ", d), groups_.cols());
    if (groups_.rows() < a || groups_.rows() % a != 0)
      detail::throw_invalid(where, "group routers' rows",
                            detail::concat("a positive multiple of num_groups = ", a, " (a * experts_per_group)"),
                            groups_.rows());
    if (k1_ < 1 || k1_ > a)
      detail::throw_invalid(where, "top_k_groups", detail::concat("in [1, num_groups = ", a, "]"), k1_);
    const Index b = groups_.rows() / a;
    if (k2_ < 1 || k2_ > b)
      detail::throw_invalid(where, "top_k_per_group", detail::concat("in [1, experts_per_group = ", b, "]"), k2_);
  }

  /// p = softmax(x Wp^T) [T, a] into p.
  template <class Arch>
  void primary_probs(const ConstMatrixRef<S>& x, S* p, const ForwardContext& ctx) const {
    const Index T = x.rows(), a = num_groups();
    Eigen::Map<RowMatrix<S>> pm(p, T, a);
    kernels::gemm<Arch>(pm, x, Op::none, primary_, Op::transpose, S(1), S(0), ctx.gemm);
    for (Index t = 0; t < T; ++t) kernels::SoftmaxRows<Arch>{}(p + t * a, 1, a, a);
  }

  RowMatrix<S> primary_;
  RowMatrix<S> groups_;
  Index k1_;
  Index k2_;
  bool renormalize_;
  Names names_;
};

}  // namespace moe

#endif  // MOE_ROUTER_HIERARCHICAL_ROUTER_HPP

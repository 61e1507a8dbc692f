// Expert-choice routing (Zhou et al. 2022): experts pick tokens instead of tokens picking
// experts, so every expert is exactly full and no capacity is needed.
#ifndef MOE_ROUTER_EXPERT_CHOICE_ROUTER_HPP
#define MOE_ROUTER_EXPERT_CHOICE_ROUTER_HPP

#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/scratch.hpp>
#include <moe/core/types.hpp>
#include <moe/kernels/gemm.hpp>
#include <moe/kernels/softmax.hpp>
#include <moe/kernels/top_k.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/contracts/training.hpp>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <xsimd/xsimd.hpp>

namespace moe {

/// S = softmax(x Wg^T) over experts; expert e takes the c = floor(T * capacity_factor / E)
/// tokens with the largest S[:, e] (equal scores: lower token index first), each with gate
/// S[t, e]. A token no expert took gets 0 from the layer (the caller's residual carries x);
/// a token may be taken by several experts, or by all.
///
/// RoutingResult: E * c triples, expert-major (expert e's are rows [e c, e c + c), best
/// first); k = 0, since the count per token varies; logits = x Wg^T, scores = S.
/// c is capped at T, so capacity_factor >= E lets every expert take every token.
///
/// | member   | shape  | golden name     |
/// |----------|--------|-----------------|
/// | weight() | [E, d] | moe.gate.weight |
///
/// Backward: a chosen (t, e)'s gate is S[t, e], so dL/dgate reaches row t's logits through
/// the softmax over experts (every logit of the row, not only the chosen ones), then Wg and x.
template <class S>
class ExpertChoiceRouter {
 public:
  using scalar_type = S;
  static constexpr bool token_choice = false;

  /// Checkpoint names of the trainable tensors, without the layer prefix.
  struct Names {
    std::string weight = "gate.weight";
  };

  /// Zero weights for E experts over inputs of width d.
  ExpertChoiceRouter(Index num_experts, Index input_dim, double capacity_factor)
      : ExpertChoiceRouter(RowMatrix<S>::Zero(num_experts, input_dim), capacity_factor) {}

  /// Takes the gate weight Wg [E, d].
  ExpertChoiceRouter(RowMatrix<S> weight, double capacity_factor)
      : weight_(std::move(weight)), capacity_factor_(capacity_factor) {
    constexpr const char* where = "ExpertChoiceRouter::ExpertChoiceRouter()";
    detail::require(weight_.rows() >= 1, where, "num_experts", ">= 1", weight_.rows());
    detail::require(weight_.cols() >= 1, where, "input_dim", ">= 1", weight_.cols());
    detail::require(std::isfinite(capacity_factor_) && capacity_factor_ > 0, where, "capacity_factor",
                    "finite and > 0", capacity_factor_);
  }

  [[nodiscard]] Index num_experts() const noexcept { return weight_.rows(); }
  [[nodiscard]] Index input_dim() const noexcept { return weight_.cols(); }
  [[nodiscard]] double capacity_factor() const noexcept { return capacity_factor_; }

  [[nodiscard]] RowMatrix<S>& weight() noexcept { return weight_; }
  [[nodiscard]] const RowMatrix<S>& weight() const noexcept { return weight_; }
  [[nodiscard]] Names& names() noexcept { return names_; }
  [[nodiscard]] const Names& names() const noexcept { return names_; }

  template <class F>
  void for_each_parameter(F&& f) {
    f(names_.weight, weight_);
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    f(names_.weight, weight_);
  }

  /// Tokens each expert takes from a batch of T: min(T, floor(T * capacity_factor / E)).
  [[nodiscard]] Index tokens_per_expert(Index num_tokens) const noexcept {
    // A tiny epsilon keeps a quotient that is exact on paper from flooring one lower after
    // rounding: in double, 100 * 0.29 / 29 = 0.9999999999999999.
    const double c = std::floor(static_cast<double>(num_tokens) * capacity_factor_ /
                                    static_cast<double>(num_experts()) +
                                1e-9);
    return std::min(num_tokens, static_cast<Index>(c));
  }

  template <class Arch = xsimd::default_arch>
  void route(const ConstMatrixRef<S>& x, RoutingResult<S>& out, const ForwardContext& ctx = {}) const {
    detail::require(x.cols() == input_dim(), "ExpertChoiceRouter::route()", "x columns (input_dim)", input_dim(),
                    x.cols());
    const Index T = x.rows();
    const Index E = num_experts();
    const Index c = tokens_per_expert(T);
    out.reset(T, E, E * c, 0);
    detail::ensure_shape(out.logits, T, E);
    kernels::gemm<Arch>(out.logits, x, Op::none, weight_, Op::transpose, S(1), S(0), ctx.gemm);
    out.scores = out.logits;
    kernels::SoftmaxRows<Arch>{}(out.scores.data(), T, E, E);
    if (c == 0) return;
    for (Index e = 0; e < E; ++e) {
      Index* chosen = out.token.data() + e * c;
      select_column(out.scores, e, c, chosen);
      for (Index j = 0; j < c; ++j) {
        const auto i = static_cast<std::size_t>(e * c + j);
        out.expert[i] = e;
        out.gate[i] = out.scores(chosen[j], e);
      }
    }
  }

  /// Backward of route() (docs/routers.md#training): in.dgate holds dL/dgate per assignment
  /// (0 for dropped ones); in.dlogits [T, E] comes in holding the losses' gradients and
  /// leaves holding the total dL/dlogits. Accumulates dL/dWg into grad and adds dL/dx to in.dx.
  template <class Arch = xsimd::default_arch>
  void backward(const RouterBackward<S>& in, ExpertChoiceRouter& grad, const auto& /*losses*/) const {
    constexpr const char* where = "ExpertChoiceRouter::backward()";
    const auto& x = in.x;
    const RoutingResult<S>& routing = in.routing;
    const S* dgate = in.dgate;
    MatrixRef<S> dlogits = in.dlogits;
    MatrixRef<S> dx = in.dx;
    const Index T = x.rows();
    const Index E = num_experts();
    detail::require(x.cols() == input_dim(), where, "x columns (input_dim)", input_dim(), x.cols());
    if (routing.num_tokens != T || routing.num_experts != E)  // message built only on failure: no allocation
      detail::throw_invalid(where, "a routing of x by this router", detail::concat(T, " tokens, ", E, " experts"),
                            detail::concat(routing.num_tokens, " tokens, ", routing.num_experts, " experts"));
    detail::require_shape(routing.scores, T, E, where, "routing scores");
    detail::require_shape(dlogits, T, E, where, "dlogits");
    detail::require_shape(dx, T, input_dim(), where, "dx");
    // dL/dS: an expert takes a token at most once, so each (t, e) has at most one gate.
    struct ScratchTag;
    detail::ScratchLease<S, ScratchTag> dscores_lease;
    auto dscores = dscores_lease.zeros(T, E);  // the thread's scratch, grown once
    for (std::size_t i = 0; i < routing.token.size(); ++i) dscores(routing.token[i], routing.expert[i]) += dgate[i];
    for (Index t = 0; t < T; ++t) {
      const S c = routing.scores.row(t).dot(dscores.row(t));
      for (Index e = 0; e < E; ++e) dlogits(t, e) += routing.scores(t, e) * (dscores(t, e) - c);
    }
    kernels::gemm<Arch>(grad.weight_, dlogits, Op::transpose, x, Op::none, S(1), S(1));
    kernels::gemm<Arch>(dx, dlogits, Op::none, weight_, Op::none, S(1), S(1));
  }

 private:
  // Column e's order: larger score first, NaN after every number, equal scores by lower
  // token index (as kernels::top_k for rows).
  struct ColumnRanksBefore {
    const RowMatrix<S>& scores;
    Index e;
    bool operator()(Index i, Index j) const {
      const S a = scores(i, e);
      const S b = scores(j, e);
      const bool a_nan = std::isnan(a);
      const bool b_nan = std::isnan(b);
      if (a_nan != b_nan) return b_nan;
      if (!a_nan && a != b) return a > b;
      return i < j;
    }
  };

  // The c best tokens of column e into out[0, c), best first: a heap of the c best so far,
  // worst at the root, in out itself, so selection allocates nothing (O(T log c)).
  static void select_column(const RowMatrix<S>& scores, Index e, Index c, Index* out) {
    const ColumnRanksBefore before{scores, e};
    const Index T = scores.rows();
    for (Index i = 0; i < c; ++i) out[i] = i;
    for (Index pos = c / 2; pos-- > 0;) kernels::detail::sift_down_worst(out, c, pos, before);
    for (Index t = c; t < T; ++t) {
      if (before(t, out[0])) {
        out[0] = t;
        kernels::detail::sift_down_worst(out, c, 0, before);
      }
    }
    for (Index end = c - 1; end > 0; --end) {
      std::swap(out[0], out[end]);
      kernels::detail::sift_down_worst(out, end, 0, before);
    }
  }

  RowMatrix<S> weight_;
  double capacity_factor_;
  Names names_;
};


}  // namespace moe

#endif  // MOE_ROUTER_EXPERT_CHOICE_ROUTER_HPP

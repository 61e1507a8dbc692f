// Per-sequence routing: one routing decision per sequence, from the mean of its tokens, shared
// by every token of the sequence. Recurrent experts (GRUExperts) need it: each of their slabs
// then holds whole sequences.
#ifndef MOE_ROUTER_SEQUENCE_ROUTER_HPP
#define MOE_ROUTER_SEQUENCE_ROUTER_HPP

#include <moe/contracts/routing_result.hpp>
#include <moe/contracts/slot_layout.hpp>
#include <moe/contracts/training.hpp>
#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/scratch.hpp>
#include <moe/core/types.hpp>
#include <moe/kernels/gemm.hpp>
#include <moe/router/gating.hpp>
#include <moe/router/router_wrapper.hpp>
#include <moe/router/top_k_router.hpp>

#include <cstddef>
#include <utility>
#include <xsimd/xsimd.hpp>

namespace moe {

/// x holds B sequences of L consecutive tokens (ForwardContext::sequence_length = L; 0 means
/// the whole batch is one sequence, and L must divide T). Sequence b is routed once, by the
/// wrapped TopKRouter on its mean m_b = (1/L) sum of its rows: logits_b = m_b W^T (+ b), then
/// the gating rule (softmax, top-k, renormalise for SequenceSoftmaxTopKRouter). Every token of
/// b gets b's experts and gates, so the plan puts whole sequences, in order, in each expert's
/// slab, and the weighted sum gives y_t = sum over b's experts of gate_(b,e) expert_e(...)_t.
///
/// | member     | shape  | golden name     |
/// |------------|--------|-----------------|
/// | weight()   | [E, d] | moe.gate.weight |
///
/// RoutingResult: T tokens, each with its sequence's pairs (k per token for a fixed-k rule,
/// token-major, best first); `logits` and `scores` [T, E] hold, in each token's row, its
/// sequence's, so the losses on logits and gates (LoadBalancingLoss, RouterZLoss) count every
/// token. route_sequences() gives the decision per sequence ([B, E] logits, B units).
/// Nothing of the forward is kept: backward recomputes the means from x.
template <class GatingType>
class SequenceRouter : public RouterWrapper<TopKRouter<GatingType>> {
  using Base = RouterWrapper<TopKRouter<GatingType>>;
  using Base::router_;

 public:
  using typename Base::scalar_type;
  using S = scalar_type;
  using gating_type = GatingType;

  /// Routes the sequence means with router (its weight [E, d], optional bias, k and rule).
  explicit SequenceRouter(TopKRouter<GatingType> router) : Base(std::move(router)) {}
  /// Zero weights: E experts over inputs of width d, k experts per sequence.
  SequenceRouter(Index num_experts, Index input_dim, Index k, GatingType gating = {})
      : Base(TopKRouter<GatingType>(num_experts, input_dim, k, std::move(gating))) {}

  [[nodiscard]] Index k() const noexcept { return router_.k(); }
  [[nodiscard]] RowMatrix<S>& weight() noexcept { return router_.weight(); }
  [[nodiscard]] const RowMatrix<S>& weight() const noexcept { return router_.weight(); }
  [[nodiscard]] GatingType& gating() noexcept { return router_.gating(); }
  [[nodiscard]] const GatingType& gating() const noexcept { return router_.gating(); }

  void check_shapes() const { router_.check_shapes(); }

  /// The decision per sequence: out holds B units (sequence b is "token" b), their pairs,
  /// logits [B, E] = M W^T (+ b) over the means M [B, d], and the scores.
  template <class Arch = xsimd::default_arch>
  void route_sequences(const ConstMatrixRef<S>& x, RoutingResult<S>& out, const ForwardContext& ctx = {}) const {
    constexpr const char* where = "SequenceRouter::route_sequences()";
    detail::require(x.cols() == this->input_dim(), where, "x columns (input_dim)", this->input_dim(), x.cols());
    const Index B = detail::num_sequences(x.rows(), ctx.sequence_length, where);
    struct Tag;
    detail::ScratchLease<S, Tag> means_lease;
    auto m = means_lease.matrix(B, this->input_dim());
    means(x, B, m);
    router_.template project<Arch>(m, out, ctx);
    router_.gating().template select<Arch>(out, router_.k());
  }

  template <class Arch = xsimd::default_arch>
  void route(const ConstMatrixRef<S>& x, RoutingResult<S>& out, const ForwardContext& ctx = {}) const {
    constexpr const char* where = "SequenceRouter::route()";
    detail::require(x.cols() == this->input_dim(), where, "x columns (input_dim)", this->input_dim(), x.cols());
    const Index T = x.rows();
    const Index E = this->num_experts();
    const Index B = detail::num_sequences(T, ctx.sequence_length, where);
    const Index L = B == 0 ? 0 : T / B;
    struct Tag;
    detail::ScratchLease<RoutingResult<S>, Tag> seq_lease;
    RoutingResult<S>& seq = seq_lease.one();
    route_sequences<Arch>(x, seq, ctx);
    out.reset(T, E, seq.size() * L, seq.k);
    detail::ensure_shape(out.logits, T, E);
    detail::ensure_shape(out.scores, T, E);
    std::size_t n = 0;
    detail::for_each_token_run(seq, [&](Index b, Index begin, Index end) {
      for (Index s = 0; s < L; ++s) {
        const Index t = b * L + s;
        out.logits.row(t) = seq.logits.row(b);
        out.scores.row(t) = seq.scores.row(b);
        for (Index i = begin; i < end; ++i, ++n) {
          out.token[n] = t;
          out.expert[n] = seq.expert[static_cast<std::size_t>(i)];
          out.gate[n] = seq.gate[static_cast<std::size_t>(i)];
        }
      }
    });
  }

  /// Backward of route() (docs/routers.md#training). Every token's row is its sequence's
  /// routing, so the gating rule's backward on each token (in.dgate) plus the losses' rows of
  /// in.dlogits gives each token's dL/dlogits (left in in.dlogits); their sum over sequence b is
  /// D_b = dL/dlogits_b. Then dL/dW += D^T M, dL/db += colsum(D), and every token t of b gets
  /// dL/dx_t += (D_b W) / L. Consumes no loss itself.
  template <class Arch = xsimd::default_arch>
  void backward(const RouterBackward<S>& in, SequenceRouter& grad, const auto& /*losses*/) const {
    constexpr const char* where = "SequenceRouter::backward()";
    const ConstMatrixRef<S>& x = in.x;
    const Index T = x.rows();
    const Index E = this->num_experts();
    const Index d = this->input_dim();
    const Index B = detail::num_sequences(T, in.context.forward.sequence_length, where);
    if (B == 0) return;
    const Index L = T / B;
    MatrixRef<S> dlogits = in.dlogits;
    router_.gating().backward(in.routing, router_.k(), in.dgate, dlogits);
    struct Tag;
    detail::ScratchLease<S, Tag> means_lease, dseq_lease, dm_lease;
    auto m = means_lease.matrix(B, d);
    means(x, B, m);
    auto dseq = dseq_lease.zeros(B, E);
    for (Index b = 0; b < B; ++b)
      for (Index s = 0; s < L; ++s) dseq.row(b) += dlogits.row(b * L + s);
    kernels::gemm<Arch>(grad.router_.weight(), dseq, Op::transpose, m, Op::none, S(1), S(1));
    if (router_.bias().size() != 0)
      for (Index b = 0; b < B; ++b) grad.router_.bias() += dseq.row(b).transpose();
    auto dm = dm_lease.matrix(B, d);
    kernels::gemm<Arch>(dm, dseq, Op::none, router_.weight(), Op::none, S(1) / static_cast<S>(L), S(0));
    MatrixRef<S> dx = in.dx;
    for (Index b = 0; b < B; ++b)
      for (Index s = 0; s < L; ++s) dx.row(b * L + s) += dm.row(b);
  }

 private:
  /// m [B, d]: the mean of each sequence's rows, summed in row order.
  static void means(const ConstMatrixRef<S>& x, Index B, Eigen::Map<RowMatrix<S>>& m) {
    if (B == 0) return;
    const Index L = x.rows() / B;
    for (Index b = 0; b < B; ++b) {
      m.row(b) = x.row(b * L);
      for (Index s = 1; s < L; ++s) m.row(b) += x.row(b * L + s);
      m.row(b) /= static_cast<S>(L);
    }
  }
};

/// Softmax over the sequence mean's logits, top-k, optionally renormalised: the golden case
/// recurrent_expert.
template <class S>
using SequenceSoftmaxTopKRouter = SequenceRouter<SoftmaxTopK<S>>;

}  // namespace moe

#endif  // MOE_ROUTER_SEQUENCE_ROUTER_HPP

// Soft MoE routing (Puigcerver et al. 2023): every token reaches every slot with a weight.
//
// The dense path of MoELayer runs the same six stages as the sparse one, with dense data:
//   1 route    SoftRouter::route      x -> logits [T, E*p], dispatch weights D [T, E*p]
//   2 plan     build_slot_plan        E slabs of B*p slot rows (dispatch/slot_plan.hpp)
//   3 gather   gather_slots           slot inputs = D_b^T X_b per sequence b (gather/gather_slots.hpp)
//   4 experts  the layer's Executor   unchanged: expert e runs on its slab
//   5 combine  SoftCombiner           Y_b = softmax_rows(logits_b) * slot outputs
//   6 stats    record_statistics      every expert takes B*p rows
// The slot layout they share is a contract between stages (contracts/slot_layout.hpp).
#ifndef MOE_ROUTER_SOFT_ROUTER_HPP
#define MOE_ROUTER_SOFT_ROUTER_HPP

#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/scratch.hpp>
#include <moe/core/types.hpp>
#include <moe/contracts/slot_layout.hpp>
#include <moe/kernels/gemm.hpp>
#include <moe/kernels/softmax.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/contracts/training.hpp>

#include <cmath>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <xsimd/xsimd.hpp>

namespace moe {

/// The Soft MoE router: logits = X Phi per token [T, E*p], dispatch weights D = softmax of
/// each column over the tokens of its sequence. The combine weights (softmax of each row over
/// the E*p slots) are the combiner's business: SoftCombiner computes them from `logits`.
///
/// With normalisation on (the paper's section 2.3, off by default), the logits are
/// scale * l2n(X) l2n(Phi), rows of X and columns of Phi normalised as
/// v / sqrt(|v|^2 + epsilon) (vmoe's soft router), scale a learned scalar; only the logits
/// see the normalised X, the slots mix the raw tokens.
///
/// | member  | shape      | name in the golden files |
/// |---------|------------|--------------------------|
/// | phi()   | [d, E*p]   | moe.phi                  |
/// | scale() | scalar     | scale (normalisation only; no golden case has one) |
///
/// Output: RoutingResult with num_experts = E, no triples (size() == 0, k = 0), logits and
/// scores [T, E*p], scores = D.
template <class S>
class SoftRouter {
 public:
  using scalar_type = S;
  static constexpr bool is_dense = true;
  static constexpr bool token_choice = false;

  /// Zero Phi for E experts of p slots each, over inputs of width d.
  SoftRouter(Index num_experts, Index input_dim, Index slots_per_expert, bool normalize = false)
      : SoftRouter(checked_zero_phi(num_experts, input_dim, slots_per_expert), slots_per_expert, normalize) {}

  /// Takes Phi [d, E*p]; E = columns / p.
  SoftRouter(RowMatrix<S> phi, Index slots_per_expert, bool normalize = false)
      : phi_(std::move(phi)), slots_per_expert_(slots_per_expert), normalize_(normalize) {
    constexpr const char* where = "SoftRouter::SoftRouter()";
    detail::require(slots_per_expert_ >= 1, where, "slots_per_expert", ">= 1", slots_per_expert_);
    detail::require(phi_.rows() >= 1, where, "phi rows (input_dim)", ">= 1", phi_.rows());
    detail::require(phi_.cols() >= 1 && phi_.cols() % slots_per_expert_ == 0, where,
                    "phi columns (num_experts * slots_per_expert)",
                    detail::concat("a positive multiple of slots_per_expert = ", slots_per_expert_), phi_.cols());
  }

  [[nodiscard]] Index num_experts() const noexcept { return phi_.cols() / slots_per_expert_; }
  [[nodiscard]] Index input_dim() const noexcept { return phi_.rows(); }
  [[nodiscard]] Index slots_per_expert() const noexcept { return slots_per_expert_; }
  [[nodiscard]] Index num_slots() const noexcept { return phi_.cols(); }

  [[nodiscard]] RowMatrix<S>& phi() noexcept { return phi_; }
  [[nodiscard]] const RowMatrix<S>& phi() const noexcept { return phi_; }
  [[nodiscard]] bool normalize() const noexcept { return normalize_; }
  void set_normalize(bool on) noexcept { normalize_ = on; }
  [[nodiscard]] S& scale() noexcept { return scale_; }
  [[nodiscard]] const S& scale() const noexcept { return scale_; }
  [[nodiscard]] S& epsilon() noexcept { return epsilon_; }
  [[nodiscard]] const S& epsilon() const noexcept { return epsilon_; }

  /// Calls f(name, block) for every trainable tensor: "phi" [d, E*p], and "scale" [1, 1] when
  /// normalisation is on (a gradient accumulator made by zeros_like has the same list).
  template <class F>
  void for_each_parameter(F&& f) {
    f(std::string("phi"), phi_);
    if (normalize_) f(std::string("scale"), Eigen::Map<Eigen::Matrix<S, 1, 1>>(&scale_));
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    f(std::string("phi"), phi_);
    if (normalize_) f(std::string("scale"), Eigen::Map<const Eigen::Matrix<S, 1, 1>>(&scale_));
  }

  /// Reads ctx.sequence_length (0: the batch is one sequence), which must divide T.
  template <class Arch = xsimd::default_arch>
  void route(const ConstMatrixRef<S>& x, RoutingResult<S>& out, const ForwardContext& ctx = {}) const {
    constexpr const char* where = "SoftRouter::route()";
    detail::require(x.cols() == input_dim(), where, "x columns (input_dim)", input_dim(), x.cols());
    const Index T = x.rows();
    const Index B = detail::num_sequences(T, ctx.sequence_length, where);
    const Index n = B == 0 ? 0 : T / B;
    const Index slots = num_slots();
    out.reset(T, num_experts(), 0, 0);
    detail::ensure_shape(out.logits, T, slots);
    detail::ensure_shape(out.scores, T, slots);
    if (T == 0) return;
    kernels::gemm<Arch>(out.logits, x, Op::none, phi_, Op::none, S(1), S(0), ctx.gemm);
    // E*p values of scratch, kept by the thread (no allocation once grown).
    detail::ScratchLease<RowVector<S>, ScratchTag> col_lease;
    RowVector<S>& col = col_lease.one();
    col.resize(slots);
    if (normalize_) {
      for (Index t = 0; t < T; ++t) out.logits.row(t) /= std::sqrt(row_squared_norm(x, t) + epsilon_);
      col = ((phi_.colwise().squaredNorm().array() + epsilon_).rsqrt() * scale_).matrix();
      out.logits.array().rowwise() *= col.array();
    }
    out.scores = out.logits;
    // Softmax down each column, within each sequence: subtract the column max so exp <= 1.
    for (Index b = 0; b < B; ++b) {
      auto d = out.scores.middleRows(b * n, n);
      col = d.colwise().maxCoeff();
      d.array().rowwise() -= col.array();
      // exp row by row from each row's start: the split between SIMD lanes and the scalar tail
      // then depends on E*p only, so a sequence gets the same bits wherever it sits in the
      // batch (Eigen's exp over the block peels to its first aligned address, which moves with
      // the sequence's row: found by the expert-parallel tests, a rank's batch against the
      // concatenation).
      for (Index t = 0; t < n; ++t) (void)kernels::detail::sum_exp_shifted<true, S, Arch>(d.row(t).data(), slots, S(0));
      col.setZero();
      detail::add_column_sums(col, d);
      d.array().rowwise() /= col.array();
    }
  }

  /// Backward of route() (the dense router protocol, docs/routers.md#training) on x [T, d]
  /// split into sequences of in.context.forward.sequence_length tokens (0: one sequence).
  ///
  /// in.dscores = dL/dD [T, E*p] (gather_slots_backward); in.dlogits holds dL/dlogits from the
  /// other stages (the combine softmax) and receives the total, the gradient of the logits as
  /// route() returns them. Adds dL/dx to in.dx and dL/dphi (and, with normalisation,
  /// dL/dscale) to grad. No auxiliary loss applies to a dense router.
  template <class Arch = xsimd::default_arch>
  void backward(const RouterBackward<S>& in, SoftRouter& grad, const auto& /*losses*/) const {
    constexpr const char* where = "SoftRouter::backward()";
    const auto& x = in.x;
    const RoutingResult<S>& routing = in.routing;
    const auto& dscores = in.dscores;
    MatrixRef<S> dlogits = in.dlogits;
    MatrixRef<S> dx = in.dx;
    const Index T = x.rows();
    const Index slots = num_slots();
    detail::require(x.cols() == input_dim(), where, "x columns (input_dim)", input_dim(), x.cols());
    const Index num_sequences = detail::num_sequences(T, in.context.forward.sequence_length, where);
    detail::require_shape(routing.scores, T, slots, where, "routing.scores");
    detail::require_shape(dscores, T, slots, where, "dscores");
    detail::require_shape(dlogits, T, slots, where, "dlogits");
    detail::require_shape(dx, T, input_dim(), where, "dx");
    detail::require_shape(grad.phi_, input_dim(), slots, where, "grad.phi()");
    if (T == 0) return;
    const Index n = T / num_sequences;
    // E*p values of scratch, kept by the thread (as route()'s).
    detail::ScratchLease<RowVector<S>, ScratchTag> col_lease, dc_lease;
    RowVector<S>& col = col_lease.one();
    col.resize(slots);
    // The dispatch softmax runs down each column of a sequence:
    // dL/dlogit[t, i] = D[t, i] (dD[t, i] - sum_t' D[t', i] dD[t', i]).
    for (Index b = 0; b < num_sequences; ++b) {
      const auto d = routing.scores.middleRows(b * n, n);
      auto dd = dscores.middleRows(b * n, n);
      col.setZero();
      for (Index t = 0; t < n; ++t) col += d.row(t).cwiseProduct(dd.row(t));
      dlogits.middleRows(b * n, n).array() += d.array() * (dd.array().rowwise() - col.array());
    }
    if (!normalize_) {
      kernels::gemm<Arch>(dx, dlogits, Op::none, phi_, Op::transpose, S(1), S(1));
      kernels::gemm<Arch>(grad.phi_, x, Op::transpose, dlogits, Op::none, S(1), S(1));
      return;
    }
    // logits[t, i] = scale a_t c_i R[t, i], R = X Phi, a_t = (|x_t|^2 + eps)^-1/2,
    // c_i = (|phi_i|^2 + eps)^-1/2, and da/dx_t = -a_t^3 x_t (likewise c). rr, the thread's
    // scratch, holds R, then row by row dL/dR = scale a_t c_i dL/dlogit[t, i].
    detail::ScratchLease<RowMatrix<S>, ScratchTag> rr_lease;
    RowMatrix<S>& rr = rr_lease.one();
    rr.resize(T, slots);
    col = (phi_.colwise().squaredNorm().array() + epsilon_).rsqrt().matrix();
    RowVector<S>& dc = dc_lease.one();  // sum_t a_t G[t, i] R[t, i]
    dc.setZero(slots);
    S dscale = S(0);
    kernels::gemm<Arch>(rr, x, Op::none, phi_, Op::none, S(1), S(0));
    for (Index t = 0; t < T; ++t) {
      const S a = S(1) / std::sqrt(row_squared_norm(x, t) + epsilon_);
      auto r = rr.row(t);
      const auto g = dlogits.row(t);
      const S grc = (g.array() * r.array() * col.array()).sum();  // sum_i G R c
      dscale += a * grc;
      dc.array() += a * g.array() * r.array();
      dx.row(t) -= (scale_ * grc * a * a * a) * x.row(t);
      r = ((scale_ * a) * g.array() * col.array()).matrix();
    }
    kernels::gemm<Arch>(dx, rr, Op::none, phi_, Op::transpose, S(1), S(1));
    kernels::gemm<Arch>(grad.phi_, x, Op::transpose, rr, Op::none, S(1), S(1));
    // d c_i / d phi_i = -c_i^3 phi_i.
    col = (scale_ * dc.array() * col.array().cube()).matrix();
    grad.phi_.array() -= phi_.array().rowwise() * col.array();
    grad.scale_ += dscale;
  }

 private:
  /// ||x_t||^2 summed in column order, so a token's value does not depend on its row's address
  /// (Eigen's squaredNorm() on a row peels to the first aligned element).
  template <class M>
  static S row_squared_norm(const M& x, Index t) {
    S sum = 0;
    for (Index j = 0; j < x.cols(); ++j) sum += x(t, j) * x(t, j);
    return sum;
  }

  struct ScratchTag {};

  static RowMatrix<S> checked_zero_phi(Index num_experts, Index input_dim, Index slots_per_expert) {
    constexpr const char* where = "SoftRouter::SoftRouter()";
    detail::require(num_experts >= 1, where, "num_experts", ">= 1", num_experts);
    detail::require(input_dim >= 1, where, "input_dim", ">= 1", input_dim);
    detail::require(slots_per_expert >= 1, where, "slots_per_expert", ">= 1", slots_per_expert);
    return RowMatrix<S>::Zero(input_dim, num_experts * slots_per_expert);
  }

  RowMatrix<S> phi_;
  Index slots_per_expert_;
  bool normalize_;
  S scale_ = S(1);
  S epsilon_ = S(1e-6);
};

}  // namespace moe

#endif  // MOE_ROUTER_SOFT_ROUTER_HPP

// Recurrent experts: each expert is a GRU (torch.nn.GRU's equations) run over whole sequences.
// The first bank that needs its whole slab in one call (expert_traits<E>::whole_slabs): a row's
// output depends on every earlier row of its sequence.
#ifndef MOE_EXPERT_GRU_EXPERTS_HPP
#define MOE_EXPERT_GRU_EXPERTS_HPP

#include <moe/contracts/expert.hpp>
#include <moe/core/error.hpp>
#include <moe/core/parameters.hpp>
#include <moe/core/scratch.hpp>
#include <moe/core/types.hpp>
#include <moe/kernels/gemm.hpp>

#include <cmath>
#include <cstddef>
#include <string>
#include <xsimd/xsimd.hpp>

namespace moe {

/// E GRU experts over inputs of width d with hidden size H. Expert e maps a sequence
/// x_0 .. x_{S-1} to h_0 .. h_{S-1}, starting from h_{-1} = 0, as torch.nn.GRU:
///
///     r = sigmoid(W_ir x_t + b_ir + W_hr h + b_hr)
///     z = sigmoid(W_iz x_t + b_iz + W_hz h + b_hz)
///     n = tanh(W_in x_t + b_in + r * (W_hn h + b_hn))
///     h_t = (1 - z) * n + z * h_{t-1}
///
/// | member          | shape     | checkpoint name (torch.nn.GRU)  |
/// |-----------------|-----------|---------------------------------|
/// | weight_ih(e)    | [3H, d]   | experts.{e}.weight_ih           |
/// | weight_hh(e)    | [3H, H]   | experts.{e}.weight_hh           |
/// | bias_ih(e)      | [1, 3H]   | experts.{e}.bias_ih ([3H])      |
/// | bias_hh(e)      | [1, 3H]   | experts.{e}.bias_hh ([3H])      |
///
/// Rows (columns of a bias) 0..H-1 hold r, H..2H-1 z, 2H..3H-1 n.
///
/// The slab must hold whole sequences, each contiguous and in order: the rows' tokens come
/// from the ExpertContext (ctx.position(i), ctx.sequence(i); ForwardContext::sequence_length, 0
/// for one sequence). A router that routes sequences, not tokens (SequenceRouter), gives that;
/// a token router or a capacity that drops tokens does not, and forward and backward throw
/// std::invalid_argument naming the row. The dense path (Soft MoE slots) has no positions and
/// throws too. output_dim() = H; hidden_cols() = 5H: per row r, z, n, W_hn h_{t-1} + b_hn and
/// h_{t-1}, what backpropagation through time reads.
template <class S>
class GRUExperts {
 public:
  using scalar_type = S;
  static constexpr bool needs_context = true;
  static constexpr bool whole_slabs = true;

  /// Checkpoint names of expert e's tensors; "{e}" stands for the expert index.
  struct Names {
    std::string weight_ih = "experts.{e}.weight_ih";
    std::string weight_hh = "experts.{e}.weight_hh";
    std::string bias_ih = "experts.{e}.bias_ih";
    std::string bias_hh = "experts.{e}.bias_hh";
  };

  /// Zero weights and biases: E experts, inputs of width d, hidden size H.
  GRUExperts(Index num_experts, Index input_dim, Index hidden_size)
      : num_experts_(num_experts), d_(input_dim), h_(hidden_size) {
    constexpr const char* where = "GRUExperts::GRUExperts()";
    detail::require(num_experts >= 1, where, "num_experts", ">= 1", num_experts);
    detail::require(input_dim >= 1, where, "input_dim", ">= 1", input_dim);
    detail::require(hidden_size >= 1, where, "hidden_size", ">= 1", hidden_size);
    w_ih_.setZero(num_experts * 3 * h_, d_);
    w_hh_.setZero(num_experts * 3 * h_, h_);
    b_ih_.setZero(num_experts, 3 * h_);
    b_hh_.setZero(num_experts, 3 * h_);
  }

  [[nodiscard]] Index num_experts() const noexcept { return num_experts_; }
  [[nodiscard]] Index input_dim() const noexcept { return d_; }
  [[nodiscard]] Index output_dim() const noexcept { return h_; }
  [[nodiscard]] Index hidden_size() const noexcept { return h_; }
  [[nodiscard]] Index hidden_cols() const noexcept { return 5 * h_; }

  /// Expert e's input weights [3H, d] (r, z, n rows).
  [[nodiscard]] auto weight_ih(Index e) { return w_ih_.middleRows(check(e, __func__) * 3 * h_, 3 * h_); }
  [[nodiscard]] auto weight_ih(Index e) const { return w_ih_.middleRows(check(e, __func__) * 3 * h_, 3 * h_); }
  /// Expert e's recurrent weights [3H, H].
  [[nodiscard]] auto weight_hh(Index e) { return w_hh_.middleRows(check(e, __func__) * 3 * h_, 3 * h_); }
  [[nodiscard]] auto weight_hh(Index e) const { return w_hh_.middleRows(check(e, __func__) * 3 * h_, 3 * h_); }
  /// Expert e's input bias [1, 3H].
  [[nodiscard]] auto bias_ih(Index e) { return b_ih_.middleRows(check(e, __func__), 1); }
  [[nodiscard]] auto bias_ih(Index e) const { return b_ih_.middleRows(check(e, __func__), 1); }
  /// Expert e's recurrent bias [1, 3H].
  [[nodiscard]] auto bias_hh(Index e) { return b_hh_.middleRows(check(e, __func__), 1); }
  [[nodiscard]] auto bias_hh(Index e) const { return b_hh_.middleRows(check(e, __func__), 1); }

  /// Every expert's tensors stacked: weights_ih() [E * 3H, d], weights_hh() [E * 3H, H],
  /// biases_ih() and biases_hh() [E, 3H].
  [[nodiscard]] RowMatrix<S>& weights_ih() noexcept { return w_ih_; }
  [[nodiscard]] const RowMatrix<S>& weights_ih() const noexcept { return w_ih_; }
  [[nodiscard]] RowMatrix<S>& weights_hh() noexcept { return w_hh_; }
  [[nodiscard]] const RowMatrix<S>& weights_hh() const noexcept { return w_hh_; }
  [[nodiscard]] RowMatrix<S>& biases_ih() noexcept { return b_ih_; }
  [[nodiscard]] const RowMatrix<S>& biases_ih() const noexcept { return b_ih_; }
  [[nodiscard]] RowMatrix<S>& biases_hh() noexcept { return b_hh_; }
  [[nodiscard]] const RowMatrix<S>& biases_hh() const noexcept { return b_hh_; }

  [[nodiscard]] Names& names() noexcept { return names_; }
  [[nodiscard]] const Names& names() const noexcept { return names_; }

  /// Expert by expert: weight_ih, weight_hh, bias_ih, bias_hh (torch.nn.GRU's order).
  template <class F>
  void for_each_parameter(F&& f) {
    for (Index e = 0; e < num_experts_; ++e) {
      f(detail::expand_name(names_.weight_ih, e), weight_ih(e));
      f(detail::expand_name(names_.weight_hh, e), weight_hh(e));
      f(detail::expand_name(names_.bias_ih, e), bias_ih(e));
      f(detail::expand_name(names_.bias_hh, e), bias_hh(e));
    }
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    for (Index e = 0; e < num_experts_; ++e) {
      f(detail::expand_name(names_.weight_ih, e), weight_ih(e));
      f(detail::expand_name(names_.weight_hh, e), weight_hh(e));
      f(detail::expand_name(names_.bias_ih, e), bias_ih(e));
      f(detail::expand_name(names_.bias_hh, e), bias_hh(e));
    }
  }

  /// Throws if a tensor was resized through its accessor. Runs every forward.
  void check_shapes() const {
    constexpr const char* where = "GRUExperts::check_shapes()";
    detail::require_shape(w_ih_, num_experts_ * 3 * h_, d_, where, "weights_ih()");
    detail::require_shape(w_hh_, num_experts_ * 3 * h_, h_, where, "weights_hh()");
    detail::require_shape(b_ih_, num_experts_, 3 * h_, where, "biases_ih()");
    detail::require_shape(b_hh_, num_experts_, 3 * h_, where, "biases_hh()");
  }

  /// Runs expert e's GRU over every sequence of its slab: x [n, d] (row i is token
  /// ctx.tokens[i]), y [n, H] the hidden state after each row, hidden [n, 5H].
  template <class Arch = xsimd::default_arch>
  void forward(Index e, const ConstMatrixRef<S>& x, MatrixRef<S> hidden, MatrixRef<S> y,
               const ExpertContext<S>& ctx) const {
    check_sequences(ctx, x.rows(), "GRUExperts::forward()");
    const Index H = h_;
    const auto w_ih = w_ih_.middleRows(e * 3 * H, 3 * H);
    const auto w_hh = w_hh_.middleRows(e * 3 * H, 3 * H);
    const auto b_ih = b_ih_.row(e);
    const auto b_hh = b_hh_.row(e);
    // The input projections of every row in one product, into r|z|n's columns; each row's
    // gates then overwrite them.
    auto gates = hidden.leftCols(3 * H);
    kernels::gemm<Arch>(gates, x, Op::none, w_ih, Op::transpose, S(1), S(0), ctx.forward.gemm);
    struct Tag;
    detail::ScratchLease<S, Tag> gh_lease;
    auto gh = gh_lease.matrix(1, 3 * H);  // W_hh h_{t-1} + b_hh of one step
    for (Index i = 0; i < x.rows(); ++i) {
      auto row = hidden.row(i);
      auto h_prev = hidden.block(i, 4 * H, 1, H);
      if (ctx.position(i) == 0) {
        h_prev.setZero();
        gh = b_hh;
      } else {
        h_prev = y.row(i - 1);
        kernels::gemm<Arch>(gh, h_prev, Op::none, w_hh, Op::transpose, S(1), S(0), ctx.forward.gemm);
        gh += b_hh;
      }
      for (Index j = 0; j < H; ++j) {
        const S r = sigmoid(row(j) + b_ih(j) + gh(0, j));
        const S z = sigmoid(row(H + j) + b_ih(H + j) + gh(0, H + j));
        const S hn = gh(0, 2 * H + j);
        const S n = std::tanh(row(2 * H + j) + b_ih(2 * H + j) + r * hn);
        row(j) = r;
        row(H + j) = z;
        row(2 * H + j) = n;
        row(3 * H + j) = hn;
        y(i, j) = (S(1) - z) * n + z * h_prev(0, j);
      }
    }
  }

  /// Backpropagation through time, each sequence from its last row back: dx overwritten
  /// [n, d]; expert e's gradients added into grad, each a fixed-order sum over the slab's rows.
  /// dhidden [n, 5H] keeps dL/d(input pre-activations) (3H) and dL/d(W_hn h + b_hn) (H).
  template <class Arch = xsimd::default_arch>
  void backward(Index e, const ConstMatrixRef<S>& x, const ConstMatrixRef<S>& hidden, const ConstMatrixRef<S>& dy,
                MatrixRef<S> dx, MatrixRef<S> dhidden, GRUExperts& grad, const ExpertContext<S>& ctx) const {
    check_sequences(ctx, x.rows(), "GRUExperts::backward()");
    const Index H = h_;
    const Index n_rows = x.rows();
    const auto w_ih = w_ih_.middleRows(e * 3 * H, 3 * H);
    const auto w_hh = w_hh_.middleRows(e * 3 * H, 3 * H);
    struct Tag;
    detail::ScratchLease<S, Tag> dgh_lease, dh_lease;
    auto dgh = dgh_lease.matrix(1, 3 * H);  // dL/d(W_hh h_{t-1} + b_hh) of one step
    auto dh = dh_lease.matrix(1, H);        // dL/dh_t carried back from step t + 1
    auto dgi = dhidden.leftCols(3 * H);     // dL/d(W_ih x_t + b_ih), every row
    auto dhn = dhidden.middleCols(3 * H, H);
    for (Index i = n_rows - 1; i >= 0; --i) {
      // The last row of a sequence gets nothing from a later step (check_sequences: runs are whole).
      if (i == n_rows - 1 || ctx.position(i + 1) == 0) dh.setZero();
      dh += dy.row(i);
      const auto row = hidden.row(i);
      for (Index j = 0; j < H; ++j) {
        const S r = row(j), z = row(H + j), n = row(2 * H + j), hn = row(3 * H + j), hp = row(4 * H + j);
        const S g = dh(0, j);
        const S dan = g * (S(1) - z) * (S(1) - n * n);
        const S dar = dan * hn * r * (S(1) - r);
        const S daz = g * (hp - n) * z * (S(1) - z);
        dgi(i, j) = dar;
        dgi(i, H + j) = daz;
        dgi(i, 2 * H + j) = dan;
        dhn(i, j) = dan * r;
        dgh(0, j) = dar;
        dgh(0, H + j) = daz;
        dgh(0, 2 * H + j) = dan * r;
        dh(0, j) = g * z;
      }
      if (ctx.position(i) > 0) kernels::gemm<Arch>(dh, dgh, Op::none, w_hh, Op::none, S(1), S(1));
    }
    const auto h_prev = hidden.middleCols(4 * H, H);
    auto gw_ih = grad.w_ih_.middleRows(e * 3 * H, 3 * H);
    auto gw_hh = grad.w_hh_.middleRows(e * 3 * H, 3 * H);
    kernels::gemm<Arch>(gw_ih, dgi, Op::transpose, x, Op::none, S(1), S(1));
    kernels::gemm<Arch>(gw_hh.topRows(2 * H), dgi.leftCols(2 * H), Op::transpose, h_prev, Op::none, S(1), S(1));
    kernels::gemm<Arch>(gw_hh.bottomRows(H), dhn, Op::transpose, h_prev, Op::none, S(1), S(1));
    auto gb_ih = grad.b_ih_.row(e);
    auto gb_hh = grad.b_hh_.row(e);
    for (Index i = 0; i < n_rows; ++i) {
      gb_ih += dgi.row(i);
      gb_hh.leftCols(2 * H) += dgi.row(i).leftCols(2 * H);
      gb_hh.rightCols(H) += dhn.row(i);
    }
    kernels::gemm<Arch>(dx, dgi, Op::none, w_ih, Op::none, S(1), S(0));
  }

 private:
  static S sigmoid(S a) noexcept { return S(1) / (S(1) + std::exp(-a)); }

  /// The slab must be whole sequences, each contiguous and in order. Runs every forward and
  /// backward: messages are built only on failure.
  void check_sequences(const ExpertContext<S>& ctx, Index rows, const char* where) const {
    if (rows == 0) return;
    if (ctx.tokens.empty())
      detail::throw_invalid(where, "ExpertContext::tokens",
                            "the token of each slab row (the sparse path: a recurrence needs positions)",
                            "none (a dense router's slots have no position)");
    detail::require(static_cast<Index>(ctx.tokens.size()) == rows, where, "ExpertContext::tokens length", rows,
                    ctx.tokens.size());
    detail::require(ctx.input.cols() == d_, where, "ExpertContext::input columns (input_dim)", d_, ctx.input.cols());
    const Index length = ctx.sequence_length();
    for (Index i = 0; i < rows; ++i) {
      const Index p = ctx.position(i);
      const bool next = i > 0 && ctx.sequence(i) == ctx.sequence(i - 1) && p == ctx.position(i - 1) + 1;
      if (p != 0 && !next)
        detail::throw_invalid(
            where, detail::concat("slab row ", i, " (token ", ctx.tokens[static_cast<std::size_t>(i)], ")"),
            i == 0 ? std::string("the first token of a sequence (position 0)")
                   : detail::concat("position 0 or the next token of sequence ", ctx.sequence(i - 1), " (position ",
                                    ctx.position(i - 1) + 1, ")"),
            detail::concat("position ", p, " of sequence ", ctx.sequence(i),
                           " (a recurrent expert needs whole sequences: route them with SequenceRouter, "
                           "without capacity)"));
      const bool last = i == rows - 1 || ctx.position(i + 1) == 0;
      if (last && p != length - 1)
        detail::throw_invalid(where, detail::concat("tokens of sequence ", ctx.sequence(i), " in the slab"),
                              detail::concat("all ", length),
                              detail::concat(p + 1, " (a recurrent expert needs whole sequences: route them with "
                                                    "SequenceRouter, without capacity)"));
    }
  }

  Index check(Index e, const char* accessor) const {
    detail::require(e >= 0 && e < num_experts_, detail::concat("GRUExperts::", accessor, "()"), "expert index",
                    detail::concat("in [0, ", num_experts_, ")"), e);
    return e;
  }

  Index num_experts_;
  Index d_;
  Index h_;
  RowMatrix<S> w_ih_;
  RowMatrix<S> w_hh_;
  RowMatrix<S> b_ih_;
  RowMatrix<S> b_hh_;
  Names names_;
};

}  // namespace moe

#endif  // MOE_EXPERT_GRU_EXPERTS_HPP

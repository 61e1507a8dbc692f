// Multi-head MoE (MH-MoE, Wu et al. 2024): each token is projected, split into h sub-tokens
// that a sparse MoELayer of width d/h routes and runs one by one, and the sub-token outputs are
// merged back and projected again.
#ifndef MOE_LAYER_MULTI_HEAD_LAYER_HPP
#define MOE_LAYER_MULTI_HEAD_LAYER_HPP

#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/core/traits.hpp>
#include <moe/core/types.hpp>
#include <moe/kernels/gemm.hpp>
#include <moe/kernels/packed_gemm.hpp>
#include <moe/kernels/op.hpp>
#include <moe/layer/moe_layer.hpp>
#include <moe/layer/workspace.hpp>
#include <moe/loss/loss_list.hpp>
#include <moe/loss/loss_weights.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace moe {

/// Caller-owned buffers of a MultiHeadLayer: the inner layer's Workspace (routing and
/// statistics of the T*h sub-tokens: ws.inner.routing, ws.inner.stats) and the layer's own
/// [T, d] buffers. Resized only when a shape changes.
template <class S>
struct MultiHeadWorkspace {
  /// The inner layer's workspace; its rows are sub-tokens, row t*h + j = head j of token t.
  Workspace<S> inner;
  RowMatrix<S> x_proj;   ///< x' = x Wh^T [T, d], read by the inner layer as [T*h, d/h]
  RowMatrix<S> merged;   ///< the inner layer's output [T*h, d/h], stored as [T, d]
  RowMatrix<S> x_saved;  ///< x of the last training forward [T, d]
  RowMatrix<S> dmerged;  ///< dL/dmerged [T, d]
  RowMatrix<S> dx_proj;  ///< dL/dx' [T, d]
  /// ForwardContext's per-token ids, each repeated h times (one per sub-token); the inner
  /// layer's context points into them, so they live as long as the workspace.
  std::vector<std::int64_t> token_ids, modality_ids, domain_ids, task_ids;
  bool has_forward = false;
  Mode last_mode = Mode::inference;
  /// The pool of the last forward; backward reuses it, as MoELayer's does.
  ThreadPool* pool = nullptr;
};

/// Gradients of a MultiHeadLayer: the inner layer's gradients and the two projections', named
/// and ordered as MultiHeadLayer::for_each_parameter.
template <class InnerGradients, class S>
struct MultiHeadGradients {
  InnerGradients inner;
  RowMatrix<S> head_proj;   ///< dL/dWh [d, d]
  RowMatrix<S> merge_proj;  ///< dL/dWm [d, d]

  /// Calls f(name, block) for every gradient: head_proj.weight, the inner layer's, merge_proj.weight.
  template <class F>
  void for_each_parameter(F&& f) {
    f(std::string("head_proj.weight"), head_proj);
    inner.for_each_parameter(f);
    f(std::string("merge_proj.weight"), merge_proj);
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    f(std::string("head_proj.weight"), head_proj);
    inner.for_each_parameter(f);
    f(std::string("merge_proj.weight"), merge_proj);
  }

  void set_zero() {
    for_each_parameter([](const std::string&, auto&& g) { g.setZero(); });
  }

  /// A copy of the gradient named `name` (without the layer prefix), or std::nullopt.
  [[nodiscard]] std::optional<RowMatrix<S>> find(const std::string& name) const {
    std::optional<RowMatrix<S>> out;
    for_each_parameter([&](const std::string& n, const auto& g) {
      if (n == name) out = RowMatrix<S>(g);
    });
    return out;
  }
};

/// Multi-head MoE around a sparse MoELayer `Inner` of width d/h (input_dim() = output_dim()):
///
///   x' = x Wh^T                       Wh = head_proj [d, d]
///   sub-token (t, j) = x'_t[j d/h, (j+1) d/h), row t*h + j of x' viewed as [T*h, d/h]
///   z = Inner(sub-tokens)             each sub-token routed on its own
///   merged_t = [z_(t,0) | ... | z_(t,h-1)],  y = merged Wm^T   Wm = merge_proj [d, d]
///
/// A row-major [T, d] matrix is the [T*h, d/h] one, so the split and the merge are views.
/// The inner layer sees a ForwardContext whose per-token ids are repeated per sub-token and
/// whose sequence_length is multiplied by h. Like MoELayer it is immutable during forward;
/// every buffer lives in the caller's MultiHeadWorkspace. Inner is an MoELayer (its workspace
/// is a Workspace<S>).
template <class Inner>
  requires std::is_same_v<typename Inner::workspace_type, Workspace<typename Inner::scalar_type>>
class MultiHeadLayer {
 public:
  using inner_type = Inner;
  using scalar_type = typename Inner::scalar_type;
  using arch_type = typename Inner::arch_type;
  using workspace_type = MultiHeadWorkspace<scalar_type>;
  using gradients_type = MultiHeadGradients<typename Inner::gradients_type, scalar_type>;

  /// Wraps `inner` (width d/h) with h = num_heads heads and the projections head_proj and
  /// merge_proj, both [d, d] with d = h * inner.input_dim() (the [out, in] orientation).
  MultiHeadLayer(Inner inner, Index num_heads, RowMatrix<scalar_type> head_proj, RowMatrix<scalar_type> merge_proj)
      : inner_(std::move(inner)), num_heads_(num_heads), head_proj_(std::move(head_proj)),
        merge_proj_(std::move(merge_proj)) {
    check_shapes("MultiHeadLayer::MultiHeadLayer()");
  }

  /// The same with both projections the identity (sub-token routing of x itself).
  MultiHeadLayer(Inner inner, Index num_heads)
      : inner_(std::move(inner)), num_heads_(checked_heads(num_heads)),
        head_proj_(RowMatrix<scalar_type>::Identity(input_dim(), input_dim())),
        merge_proj_(RowMatrix<scalar_type>::Identity(input_dim(), input_dim())) {
    check_shapes("MultiHeadLayer::MultiHeadLayer()");
  }

  [[nodiscard]] Index num_heads() const noexcept { return num_heads_; }
  /// d/h: the width of a sub-token (the inner layer's input_dim()).
  [[nodiscard]] Index head_dim() const noexcept { return inner_.input_dim(); }
  [[nodiscard]] Index input_dim() const noexcept { return num_heads_ * inner_.input_dim(); }
  [[nodiscard]] Index output_dim() const noexcept { return input_dim(); }
  [[nodiscard]] Index num_experts() const noexcept { return inner_.num_experts(); }

  [[nodiscard]] Inner& inner() noexcept { return inner_; }
  [[nodiscard]] const Inner& inner() const noexcept { return inner_; }
  /// Wh [d, d] (`head_proj.weight`): x' = x Wh^T.
  [[nodiscard]] RowMatrix<scalar_type>& head_proj() noexcept { return head_proj_; }
  [[nodiscard]] const RowMatrix<scalar_type>& head_proj() const noexcept { return head_proj_; }
  /// Wm [d, d] (`merge_proj.weight`): y = merged Wm^T.
  [[nodiscard]] RowMatrix<scalar_type>& merge_proj() noexcept { return merge_proj_; }
  [[nodiscard]] const RowMatrix<scalar_type>& merge_proj() const noexcept { return merge_proj_; }

  /// y = MH-MoE(x). x is [T, d], y must be [T, d]; T = 0 is allowed. The per-token ids of ctx
  /// that are given must have T entries.
  void forward(const ConstMatrixRef<scalar_type>& x, MatrixRef<scalar_type> y, workspace_type& ws,
               const ForwardContext& ctx = {}) const {
    constexpr const char* where = "MultiHeadLayer::forward()";
    check_shapes(where);
    const Index T = x.rows(), d = input_dim(), h = num_heads_, dh = head_dim();
    detail::require(x.cols() == d, where, "x columns (input_dim)", d, x.cols());
    detail::require_shape(y, T, d, where, "y");
    if constexpr (router_traits<typename Inner::router_type>::needs_token_ids)
      detail::require(static_cast<Index>(ctx.token_ids.size()) == T, where, "token_ids length (one per row of x)", T,
                      ctx.token_ids.size());
    detail::require_finite_input(x, ctx, where);  // in x's terms, not the sub-tokens'
    ws.has_forward = false;  // until this call completes
    ws.pool = ctx.pool;
    ForwardContext inner_ctx = ctx;
    if (inner_ctx.sequence_length != 0) inner_ctx.sequence_length *= h;
    inner_ctx.token_ids = expand_ids(ctx.token_ids, T, ws.token_ids, where, "token_ids length (one per row of x)");
    inner_ctx.modality_ids =
        expand_ids(ctx.modality_ids, T, ws.modality_ids, where, "modality_ids length (one per row of x)");
    inner_ctx.domain_ids = expand_ids(ctx.domain_ids, T, ws.domain_ids, where, "domain_ids length (one per row of x)");
    inner_ctx.task_ids = expand_ids(ctx.task_ids, T, ws.task_ids, where, "task_ids length (one per row of x)");

    detail::ensure_shape(ws.x_proj, T, d);
    detail::ensure_shape(ws.merged, T, d);
    if (ctx.pool != nullptr) {
      kernels::prepare_threads<scalar_type>(ctx.pool);
      kernels::prepare_packed_threads<scalar_type>(ctx.pool);
    }
    row_products(ws.x_proj, x, head_proj_, Op::transpose, ctx.pool, ctx.gemm);  // x' = x Wh^T
    const Eigen::Map<const RowMatrix<scalar_type>> sub(ws.x_proj.data(), T * h, dh);
    Eigen::Map<RowMatrix<scalar_type>> z(ws.merged.data(), T * h, dh);
    inner_.forward(sub, z, ws.inner, inner_ctx);
    row_products(y, ws.merged, merge_proj_, Op::transpose, ctx.pool, ctx.gemm);  // y = merged Wm^T
    if (ctx.mode == Mode::training) ws.x_saved = x;
    ws.last_mode = ctx.mode;
    ws.has_forward = true;
  }

  /// Convenience overload that returns y.
  [[nodiscard]] RowMatrix<scalar_type> forward(const ConstMatrixRef<scalar_type>& x, workspace_type& ws,
                                               const ForwardContext& ctx = {}) const {
    RowMatrix<scalar_type> y(x.rows(), output_dim());
    forward(x, y, ws, ctx);
    return y;
  }

  /// A gradient accumulator for this layer, all zeros.
  [[nodiscard]] gradients_type make_gradients() const {
    return {inner_.make_gradients(), RowMatrix<scalar_type>::Zero(head_proj_.rows(), head_proj_.cols()),
            RowMatrix<scalar_type>::Zero(merge_proj_.rows(), merge_proj_.cols())};
  }

  /// Calls f(name, block) for every trainable tensor: head_proj.weight, the inner layer's
  /// (router, experts, combiner), merge_proj.weight; names without the layer prefix.
  template <class F>
  void for_each_parameter(F&& f) {
    f(std::string("head_proj.weight"), head_proj_);
    inner_.for_each_parameter(f);
    f(std::string("merge_proj.weight"), merge_proj_);
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    f(std::string("head_proj.weight"), head_proj_);
    inner_.for_each_parameter(f);
    f(std::string("merge_proj.weight"), merge_proj_);
  }

  /// Backward of the last forward, which must have run with ctx.mode = Mode::training on ws.
  /// dy = dL/dy [T, d]; writes dx = dL/dx [T, d] and adds dL/dparameter into grads. `losses`
  /// (a LossList) goes to the inner layer: auxiliary losses see the sub-tokens' routing.
  template <class Losses>
    requires detail::is_loss_list<Losses>
  void backward(const ConstMatrixRef<scalar_type>& dy, MatrixRef<scalar_type> dx, workspace_type& ws,
                gradients_type& grads, const Losses& losses) const {
    backward_through(dy, dx, ws, grads, [&](const auto& dz, auto& dsub) {
      inner_.backward(dz, dsub, ws.inner, grads.inner, losses);
    });
  }

  /// The same with the shipped losses by weight (LossWeights), passed to the inner layer.
  void backward(const ConstMatrixRef<scalar_type>& dy, MatrixRef<scalar_type> dx, workspace_type& ws,
                gradients_type& grads, const LossWeights<scalar_type>& weights = {}) const {
    backward_through(dy, dx, ws, grads, [&](const auto& dz, auto& dsub) {
      inner_.backward(dz, dsub, ws.inner, grads.inner, weights);
    });
  }

  /// Convenience overloads that return dx.
  [[nodiscard]] RowMatrix<scalar_type> backward(const ConstMatrixRef<scalar_type>& dy, workspace_type& ws,
                                                gradients_type& grads,
                                                const LossWeights<scalar_type>& weights = {}) const {
    RowMatrix<scalar_type> dx(ws.x_saved.rows(), input_dim());
    backward(dy, dx, ws, grads, weights);
    return dx;
  }
  template <class Losses>
    requires detail::is_loss_list<Losses>
  [[nodiscard]] RowMatrix<scalar_type> backward(const ConstMatrixRef<scalar_type>& dy, workspace_type& ws,
                                                gradients_type& grads, const Losses& losses) const {
    RowMatrix<scalar_type> dx(ws.x_saved.rows(), input_dim());
    backward(dy, dx, ws, grads, losses);
    return dx;
  }

  /// Checks the projections against the inner layer (they are reachable through mutable
  /// accessors); forward calls it.
  void check_shapes(const char* where = "MultiHeadLayer::check_shapes()") const {
    detail::require(num_heads_ >= 1, where, "num_heads", ">= 1", num_heads_);
    detail::require(inner_.output_dim() == inner_.input_dim(), where,
                    "inner layer output_dim (= its input_dim, the head dimension d/h)", inner_.input_dim(),
                    inner_.output_dim());
    const Index d = input_dim();
    detail::require_shape(head_proj_, d, d, where, "head_proj (num_heads * inner input_dim square)");
    detail::require_shape(merge_proj_, d, d, where, "merge_proj (num_heads * inner input_dim square)");
  }

 private:
  /// Token products are cut into blocks of this many rows, the same for any pool size.
  static constexpr Index block_rows = 256;
  /// Weight gradients are cut into blocks of this many output rows.
  static constexpr Index weight_block_rows = 64;

  static Index checked_heads(Index h) {
    detail::require(h >= 1, "MultiHeadLayer::MultiHeadLayer()", "num_heads", ">= 1", h);
    return h;
  }

  /// c = a op(w), rows of a in fixed blocks (on the pool when there is one).
  static void row_products(MatrixRef<scalar_type> c, const ConstMatrixRef<scalar_type>& a,
                           const RowMatrix<scalar_type>& w, Op op_w, ThreadPool* pool, GemmKernel kernel) {
    const Index T = a.rows();
    const Index blocks = (T + block_rows - 1) / block_rows;
    detail::parallel_for(pool, blocks, [&](Index b) {
      const Index r0 = b * block_rows, n = std::min(block_rows, T - r0);
      auto cb = c.middleRows(r0, n);
      kernels::gemm<arch_type>(cb, a.middleRows(r0, n), Op::none, w, op_w, scalar_type(1), scalar_type(0), kernel);
    });
  }

  /// g += a^T b (a, b [T, d]; g [d, d]), rows of g in fixed blocks; each element sums over
  /// the T rows in one product, so the bits do not depend on the pool.
  static void weight_gradient(RowMatrix<scalar_type>& g, const ConstMatrixRef<scalar_type>& a,
                              const ConstMatrixRef<scalar_type>& b, ThreadPool* pool) {
    const Index rows = g.rows();
    const Index blocks = (rows + weight_block_rows - 1) / weight_block_rows;
    detail::parallel_for(pool, blocks, [&](Index i) {
      const Index r0 = i * weight_block_rows, n = std::min(weight_block_rows, rows - r0);
      auto gb = g.middleRows(r0, n);
      kernels::gemm<arch_type>(gb, a.middleCols(r0, n), Op::transpose, b, Op::none, scalar_type(1), scalar_type(1));
    });
  }

  /// ids repeated h times each into `out` (keeping its capacity); an empty span stays empty.
  std::span<const std::int64_t> expand_ids(std::span<const std::int64_t> ids, Index T, std::vector<std::int64_t>& out,
                                           const char* where, const char* what) const {
    if (ids.empty()) {
      out.clear();
      return {};
    }
    detail::require(static_cast<Index>(ids.size()) == T, where, what, T, ids.size());
    const auto h = static_cast<std::size_t>(num_heads_);
    out.resize(ids.size() * h);
    for (std::size_t t = 0; t < ids.size(); ++t)
      for (std::size_t j = 0; j < h; ++j) out[t * h + j] = ids[t];
    return {out.data(), out.size()};
  }

  void check_backward_call(const ConstMatrixRef<scalar_type>& dy, const MatrixRef<scalar_type>& dx,
                           const workspace_type& ws) const {
    constexpr const char* where = "MultiHeadLayer::backward()";
    if (!ws.has_forward)
      detail::throw_invalid(where, "the workspace", "one on which forward ran in Mode::training",
                            "one on which no forward has completed (run forward with ctx.mode = Mode::training first)");
    detail::require(ws.last_mode == Mode::training, where, "the workspace's last forward", "one in Mode::training",
                    "one in Mode::inference");
    check_shapes(where);
    const Index T = ws.x_saved.rows(), d = input_dim();
    detail::require(ws.x_saved.cols() == d, where, "the last forward's x columns (input_dim)", d, ws.x_saved.cols());
    detail::require_shape(dy, T, d, where, "dy");
    detail::require_shape(dx, T, d, where, "dx");
  }

  /// dmerged = dy Wm, dWm += dy^T merged; the inner backward (dz -> dsub); dWh += dx'^T x,
  /// dx = dx' Wh.
  template <class InnerBackward>
  void backward_through(const ConstMatrixRef<scalar_type>& dy, MatrixRef<scalar_type> dx, workspace_type& ws,
                        gradients_type& grads, InnerBackward&& inner_backward) const {
    check_backward_call(dy, dx, ws);
    const Index T = ws.x_saved.rows(), d = input_dim(), h = num_heads_, dh = head_dim();
    detail::require_shape(grads.head_proj, d, d, "MultiHeadLayer::backward()", "grads.head_proj");
    detail::require_shape(grads.merge_proj, d, d, "MultiHeadLayer::backward()", "grads.merge_proj");
    ThreadPool* pool = ws.pool;
    if (pool != nullptr) {
      kernels::prepare_threads<scalar_type>(pool);
      kernels::prepare_packed_threads<scalar_type>(pool);
    }
    detail::ensure_shape(ws.dmerged, T, d);
    detail::ensure_shape(ws.dx_proj, T, d);
    row_products(ws.dmerged, dy, merge_proj_, Op::none, pool, GemmKernel::fast);  // dmerged = dy Wm
    weight_gradient(grads.merge_proj, dy, ws.merged, pool);                        // dWm += dy^T merged
    const Eigen::Map<const RowMatrix<scalar_type>> dz(ws.dmerged.data(), T * h, dh);
    Eigen::Map<RowMatrix<scalar_type>> dsub(ws.dx_proj.data(), T * h, dh);
    inner_backward(dz, dsub);
    weight_gradient(grads.head_proj, ws.dx_proj, ws.x_saved, pool);             // dWh += dx'^T x
    row_products(dx, ws.dx_proj, head_proj_, Op::none, pool, GemmKernel::fast);  // dx = dx' Wh
  }

  Inner inner_;
  Index num_heads_;
  RowMatrix<scalar_type> head_proj_;
  RowMatrix<scalar_type> merge_proj_;
};

/// MH-MoE with Mixtral's inner layer: softmax top-k renormalised per sub-token, SwiGLU experts
/// of width d/h (the golden "moe." layout of ../shared/golden-variety, multi_head).
template <class S>
using MultiHeadMoE = MultiHeadLayer<MoELayer<SwiGLUExperts<S>, SoftmaxTopKRouter<S>, WeightedSumCombiner<S>>>;

}  // namespace moe

#endif  // MOE_LAYER_MULTI_HEAD_LAYER_HPP

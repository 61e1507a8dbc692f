// Task-aware routing (an adaptive task router): a base router and one router per task, mixed
// per token by a learned sigmoid sensitivity of the token's task.
#ifndef MOE_ROUTER_TASK_AWARE_ROUTER_HPP
#define MOE_ROUTER_TASK_AWARE_ROUTER_HPP

#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/parameters.hpp>
#include <moe/core/scratch.hpp>
#include <moe/core/types.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/contracts/training.hpp>
#include <moe/kernels/gemm.hpp>
#include <moe/router/gating.hpp>
#include <moe/router/router_wrapper.hpp>
#include <moe/router/top_k_router.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>
#include <xsimd/xsimd.hpp>

namespace moe {

/// Token t of task j = ForwardContext::task_ids[t] gets s_j = sigmoid(a_j) and the logits
/// (1 - s_j) x Wb^T + s_j x Wj^T, then the wrapped TopKRouter's gating rule. Wb is the base
/// router's weight (with its bias, if any, inside the base term), Wj task j's router, a the
/// per-task sensitivity; all are trained. A task's router sees only its own tokens (they are
/// grouped by task, one product per task), so it gets gradient only from them.
///
/// | member            | shape  | golden name                     |
/// |-------------------|--------|---------------------------------|
/// | weight()          | [E, d] | moe.gate.weight                 |
/// | task_gate(j)      | [E, d] | moe.task_gates.{j}.weight       |
/// | sensitivity()     | [N]    | moe.task_sensitivity (the a_j, before the sigmoid) |
///
/// Task ids are read on every route() and backward(): one per row of x, each in [0, N)
/// (std::invalid_argument otherwise, naming the token). RoutingResult: logits are the mixed
/// logits; the rest as TopKRouter's. Nothing of the forward is kept: backward regroups the
/// tokens from the same ids, so the router stays const and shareable between threads.
template <class GatingType>
class TaskAwareRouter : public RouterWrapper<TopKRouter<GatingType>> {
  using Base = RouterWrapper<TopKRouter<GatingType>>;
  using Base::router_;

 public:
  using typename Base::scalar_type;
  using S = scalar_type;
  using gating_type = GatingType;

  /// "{e}" in task_gate stands for the task index.
  struct Names {
    std::string task_gate = "task_gates.{e}.weight";
    std::string sensitivity = "task_sensitivity";
  };

  /// Wraps router ([E, d], the base) with one router [E, d] per task and the sensitivities [N].
  TaskAwareRouter(TopKRouter<GatingType> router, std::vector<RowMatrix<S>> task_gates, Vector<S> sensitivity)
      : Base(std::move(router)), task_gates_(std::move(task_gates)), sensitivity_(std::move(sensitivity)) {
    check_shapes_impl("TaskAwareRouter::TaskAwareRouter()");
  }

  /// Zero weights: E experts over inputs of width d, N tasks, k experts per token; every
  /// sensitivity 0, so s = 1/2 for every task.
  TaskAwareRouter(Index num_experts, Index input_dim, Index num_tasks, Index k, GatingType gating = {})
      : TaskAwareRouter(TopKRouter<GatingType>(num_experts, input_dim, k, std::move(gating)),
                        std::vector<RowMatrix<S>>(static_cast<std::size_t>(checked_num_tasks(num_tasks)),
                                                  RowMatrix<S>::Zero(num_experts, input_dim)),
                        Vector<S>::Zero(checked_num_tasks(num_tasks))) {}

  [[nodiscard]] Index k() const noexcept { return router_.k(); }
  [[nodiscard]] Index num_tasks() const noexcept { return static_cast<Index>(task_gates_.size()); }
  [[nodiscard]] RowMatrix<S>& weight() noexcept { return router_.weight(); }
  [[nodiscard]] const RowMatrix<S>& weight() const noexcept { return router_.weight(); }
  /// Task j's router [E, d] (j in [0, N), unchecked).
  [[nodiscard]] RowMatrix<S>& task_gate(Index j) noexcept { return task_gates_[static_cast<std::size_t>(j)]; }
  [[nodiscard]] const RowMatrix<S>& task_gate(Index j) const noexcept {
    return task_gates_[static_cast<std::size_t>(j)];
  }
  [[nodiscard]] std::vector<RowMatrix<S>>& task_gates() noexcept { return task_gates_; }
  [[nodiscard]] const std::vector<RowMatrix<S>>& task_gates() const noexcept { return task_gates_; }
  /// The sensitivities a [N] before the sigmoid.
  [[nodiscard]] Vector<S>& sensitivity() noexcept { return sensitivity_; }
  [[nodiscard]] const Vector<S>& sensitivity() const noexcept { return sensitivity_; }
  /// s_j = sigmoid(a_j): task j's router's share of its tokens' logits.
  [[nodiscard]] S task_mix(Index j) const noexcept {
    return S(1) / (S(1) + std::exp(-sensitivity_[j]));
  }
  [[nodiscard]] GatingType& gating() noexcept { return router_.gating(); }
  [[nodiscard]] const GatingType& gating() const noexcept { return router_.gating(); }
  [[nodiscard]] Names& names() noexcept { return names_; }
  [[nodiscard]] const Names& names() const noexcept { return names_; }

  template <class F>
  void for_each_parameter(F&& f) {
    router_.for_each_parameter(f);
    for (Index j = 0; j < num_tasks(); ++j) f(detail::expand_name(names_.task_gate, j), task_gate(j));
    f(names_.sensitivity, sensitivity_);
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    router_.for_each_parameter(f);
    for (Index j = 0; j < num_tasks(); ++j) f(detail::expand_name(names_.task_gate, j), task_gate(j));
    f(names_.sensitivity, sensitivity_);
  }

  /// The wrapped router's check, and every task router and the sensitivities against E, d and
  /// N (N >= 1, as at construction, in case a tensor was resized through its accessor).
  void check_shapes() const {
    router_.check_shapes();
    check_shapes_impl("TaskAwareRouter::check_shapes()");
  }

  template <class Arch = xsimd::default_arch>
  void route(const ConstMatrixRef<S>& x, RoutingResult<S>& out, const ForwardContext& ctx = {}) const {
    check_ids(ctx.task_ids, x.rows(), "TaskAwareRouter::route()");
    router_.template project<Arch>(x, out, ctx);  // the base term, x Wb^T (+ b)
    const Index T = x.rows();
    const Index E = this->num_experts();
    struct Tag {};
    detail::ScratchLease<Index, Tag> order_lease, start_lease;
    detail::ScratchLease<S, Tag> xg_lease, zg_lease;
    const Index* order = nullptr;
    const Index* start = group(ctx.task_ids, order_lease, start_lease, order);
    auto xg = xg_lease.matrix(T, this->input_dim());
    auto zg = zg_lease.matrix(T, E);
    for (Index i = 0; i < T; ++i) xg.row(i) = x.row(order[i]);
    for (Index j = 0; j < num_tasks(); ++j) {
      const Index begin = start[j], n = start[j + 1] - begin;
      if (n == 0) continue;
      kernels::gemm<Arch>(zg.middleRows(begin, n), xg.middleRows(begin, n), Op::none, task_gate(j), Op::transpose,
                          S(1), S(0), ctx.gemm);
      const S s = task_mix(j);
      for (Index i = begin; i < begin + n; ++i)
        out.logits.row(order[i]) = (S(1) - s) * out.logits.row(order[i]) + s * zg.row(i);
    }
    router_.gating().template select<Arch>(out, router_.k());
  }

  /// Backward of route() (docs/routers.md#training). The gating rule turns in.dgate and the
  /// losses' dL/dlogits into the total dL/dlogits D (left in in.dlogits); then per task j, over
  /// its tokens X_j and their rows D_j, with s = s_j and G_j = D_j^T X_j:
  ///   dL/dWj += s G_j,  dL/dWb += (1 - s) G_j,  dL/db += (1 - s) colsum(D_j),
  ///   dL/da_j += s (1 - s) (<G_j, Wj - Wb> - colsum(D_j) . b),
  ///   dL/dX_j += D_j ((1 - s) Wb + s Wj).
  /// Consumes no loss itself.
  template <class Arch = xsimd::default_arch>
  void backward(const RouterBackward<S>& in, TaskAwareRouter& grad, const auto& /*losses*/) const {
    const ConstMatrixRef<S>& x = in.x;
    const Index T = x.rows();
    const Index E = this->num_experts();
    const Index d = this->input_dim();
    const std::span<const std::int64_t> ids = in.context.forward.task_ids;
    check_ids(ids, T, "TaskAwareRouter::backward()");
    MatrixRef<S> dlogits = in.dlogits;
    router_.gating().backward(in.routing, router_.k(), in.dgate, dlogits);
    const RowMatrix<S>& wb = router_.weight();
    const Vector<S>& bias = router_.bias();
    const bool has_bias = bias.size() != 0;
    RowMatrix<S>& dwb = grad.router_.weight();
    Vector<S>& dbias = grad.router_.bias();
    struct Tag {};
    detail::ScratchLease<Index, Tag> order_lease, start_lease;
    detail::ScratchLease<S, Tag> xg_lease, dg_lease, dxg_lease, g_lease;
    const Index* order = nullptr;
    const Index* start = group(ids, order_lease, start_lease, order);
    auto xg = xg_lease.matrix(T, d);
    auto dg = dg_lease.matrix(T, E);
    auto dxg = dxg_lease.matrix(T, d);
    auto g = g_lease.matrix(E, d);
    for (Index i = 0; i < T; ++i) {
      xg.row(i) = x.row(order[i]);
      dg.row(i) = dlogits.row(order[i]);
    }
    for (Index j = 0; j < num_tasks(); ++j) {
      const Index begin = start[j], n = start[j + 1] - begin;
      if (n == 0) continue;
      const auto xj = xg.middleRows(begin, n);
      const auto dj = dg.middleRows(begin, n);
      const RowMatrix<S>& wj = task_gate(j);
      const S s = task_mix(j);
      kernels::gemm<Arch>(g, dj, Op::transpose, xj, Op::none, S(1), S(0));
      S dmix = (g.array() * (wj.array() - wb.array())).sum();
      if (has_bias)
        for (Index e = 0; e < E; ++e) {
          S col = 0;
          for (Index i = 0; i < n; ++i) col += dj(i, e);
          dmix -= col * bias[e];
          dbias[e] += (S(1) - s) * col;
        }
      grad.sensitivity_[j] += s * (S(1) - s) * dmix;
      grad.task_gates_[static_cast<std::size_t>(j)] += s * g;
      dwb += (S(1) - s) * g;
      auto dxj = dxg.middleRows(begin, n);
      kernels::gemm<Arch>(dxj, dj, Op::none, wb, Op::none, S(1) - s, S(0));
      kernels::gemm<Arch>(dxj, dj, Op::none, wj, Op::none, s, S(1));
    }
    MatrixRef<S> dx = in.dx;
    for (Index i = 0; i < T; ++i) dx.row(order[i]) += dxg.row(i);
  }

 private:
  static Index checked_num_tasks(Index n) {
    if (n < 1) detail::throw_invalid("TaskAwareRouter::TaskAwareRouter()", "num_tasks", ">= 1", n);
    return n;
  }

  // Groups the tokens by task (a stable counting sort): order[start[j] .. start[j+1]) are task
  // j's tokens in their order. Returns start [N + 1]; the ids were checked.
  template <class Lease>
  const Index* group(std::span<const std::int64_t> ids, Lease& order_lease, Lease& start_lease,
                     const Index*& order_out) const {
    const Index N = num_tasks();
    const Index T = static_cast<Index>(ids.size());
    Index* start = start_lease.filled(static_cast<std::size_t>(2 * N + 1), Index{0});
    Index* next = start + N + 1;
    for (const std::int64_t id : ids) ++start[id + 1];
    for (Index j = 0; j < N; ++j) start[j + 1] += start[j];
    for (Index j = 0; j < N; ++j) next[j] = start[j];
    Index* order = order_lease.data(static_cast<std::size_t>(T));
    for (Index t = 0; t < T; ++t) order[next[ids[static_cast<std::size_t>(t)]]++] = t;
    order_out = order;
    return start;
  }

  void check_ids(std::span<const std::int64_t> ids, Index T, const char* where) const {
    if (static_cast<Index>(ids.size()) != T)
      detail::throw_invalid(where, "task_ids length (one per token; ForwardContext::task_ids)", T, ids.size());
    for (std::size_t t = 0; t < ids.size(); ++t)
      if (ids[t] < 0 || ids[t] >= num_tasks())
        detail::throw_invalid(where, detail::concat("task_ids[", t, "]"),
                              detail::concat("in [0, num_tasks = ", num_tasks(), ")"), ids[t]);
  }

  // Runs every forward (check_shapes): messages are built only on failure.
  void check_shapes_impl(const char* where) const {
    const Index E = this->num_experts();
    const Index d = this->input_dim();
    if (task_gates_.empty()) detail::throw_invalid(where, "num_tasks (task routers)", ">= 1", 0);
    for (Index j = 0; j < num_tasks(); ++j) {
      const RowMatrix<S>& w = task_gate(j);
      if (w.rows() != E || w.cols() != d)
        detail::throw_invalid(where, detail::concat("task router ", j, " shape"),
                              detail::concat("[num_experts = ", E, ", input_dim = ", d, "]"),
                              detail::concat("[", w.rows(), ", ", w.cols(), "]"));
    }
    if (sensitivity_.size() != num_tasks())
      detail::throw_invalid(where, "task_sensitivity length (one per task)", num_tasks(), sensitivity_.size());
  }

  std::vector<RowMatrix<S>> task_gates_;
  Vector<S> sensitivity_;
  Names names_;
};

/// Softmax, top-k, optional renormalisation over the task-mixed logits: the golden case
/// task_aware.
template <class S>
using TaskAwareSoftmaxTopKRouter = TaskAwareRouter<SoftmaxTopK<S>>;

}  // namespace moe

#endif  // MOE_ROUTER_TASK_AWARE_ROUTER_HPP

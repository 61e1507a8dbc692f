// The layer: six stages, each a call into the folder named after it.
#ifndef MOE_LAYER_MOE_LAYER_HPP
#define MOE_LAYER_MOE_LAYER_HPP

#include <moe/combine/shared_expert_combiner.hpp>
#include <moe/combine/soft_combiner.hpp>
#include <moe/combine/weighted_sum_combiner.hpp>
#include <moe/contracts/combine.hpp>
#include <moe/contracts/concepts.hpp>
#include <moe/contracts/executor.hpp>
#include <moe/contracts/slot_layout.hpp>
#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/traits.hpp>
#include <moe/core/types.hpp>
#include <moe/dispatch/dispatch_plan.hpp>
#include <moe/dispatch/reroute.hpp>
#include <moe/dispatch/slot_plan.hpp>
#include <moe/dispatch/statistics.hpp>
#include <moe/dispatch/routing_tape.hpp>
#include <moe/dispatch/telemetry.hpp>
#include <moe/expert/conv_experts.hpp>
#include <moe/expert/ffn_experts.hpp>
#include <moe/expert/gpt_oss_experts.hpp>
#include <moe/expert/linear_experts.hpp>
#include <moe/expert/local_executor.hpp>
#include <moe/expert/low_rank_experts.hpp>
#include <moe/expert/swiglu_experts.hpp>
#include <moe/gather/gather.hpp>
#include <moe/gather/gather_slots.hpp>
#include <moe/layer/backward.hpp>
#include <moe/layer/dense_backward.hpp>
#include <moe/layer/workspace.hpp>
#include <moe/loss/loss_list.hpp>
#include <moe/loss/loss_weights.hpp>
#include <moe/router/domain_aware_router.hpp>
#include <moe/router/expert_choice_router.hpp>
#include <moe/router/hash_router.hpp>
#include <moe/router/hierarchical_router.hpp>
#include <moe/router/modality_router.hpp>
#include <moe/router/noisy_top_k_router.hpp>
#include <moe/router/soft_router.hpp>
#include <moe/router/task_aware_router.hpp>
#include <moe/router/top_k_router.hpp>

#include <cmath>
#include <type_traits>
#include <utility>
#include <xsimd/xsimd.hpp>

namespace moe {

namespace detail {
/// A combiner states that it reads dense dispatch/combine weights (SoftCombiner) by
/// `static constexpr bool is_dense = true;`, as a router does.
template <class CombinerType>
inline constexpr bool combiner_is_dense = [] {
  if constexpr (requires { CombinerType::is_dense; }) return bool(CombinerType::is_dense);
  else return false;
}();

/// Under NonFinitePolicy::error, throws naming the first NaN or infinity of x (row-major) as
/// `where`'s error; one vectorised pass in the common case, the position searched for only on
/// failure. Shared by the layers that take x from the caller (MoELayer, MultiHeadLayer).
template <class S>
void require_finite_input(const ConstMatrixRef<S>& x, const ForwardContext& ctx, const char* where) {
  if (ctx.non_finite != NonFinitePolicy::error || x.allFinite()) return;
  for (Index r = 0; r < x.rows(); ++r)
    for (Index c = 0; c < x.cols(); ++c)
      if (const S v = x(r, c); !std::isfinite(v))
        throw_invalid(where, "x", "finite values (ForwardContext::non_finite = error)",
                      concat(std::isnan(v) ? "NaN" : (v > 0 ? "inf" : "-inf"), " at row ", r, ", column ", c));
}
}  // namespace detail

/// A sparse Mixture-of-Experts layer, x [T, d] -> y [T, d_out], assembled at compile time
/// from three policies (docs/policies.md):
///
/// - ExpertType: a bank of E experts that runs one expert on a slab of rows;
/// - RouterType: x -> RoutingResult (token, expert, gate) triples, or, for a dense router
///   (router_traits<R>::is_dense, Soft MoE), dispatch weights over slots;
/// - CombinerType: expert outputs -> y (weighted sum, plus shared experts if any; the
///   combine weights of the slots for a dense router);
/// - Arch: the xsimd architecture the kernels are instantiated for;
/// - Executor: who runs step 4, the experts (docs/executors.md): LocalExecutor runs every
///   expert here on the call's pool; an expert-parallel or on-demand executor plugs in here
///   without a change to forward or backward.
///
/// The layer is immutable during forward and keeps no per-call state: every buffer and the
/// statistics of a call live in the caller's Workspace, so one layer may serve many threads.
template <class ExpertType, class RouterType, class CombinerType, class Arch = xsimd::default_arch,
          class Executor = LocalExecutor>
class MoELayer {
  static_assert(detail::HasScalarType<ExpertType>,
                "MoELayer: ExpertType must declare `using scalar_type = float or double;` (docs/experts.md)");
  static_assert(detail::HasExpertSizes<ExpertType>,
                "MoELayer: ExpertType must provide num_experts(), input_dim(), output_dim() and hidden_cols() "
                "(docs/experts.md)");
  static_assert(detail::HasExpertForward<ExpertType, Arch>,
                "MoELayer: ExpertType must provide template <class Arch> void forward(Index e, const "
                "ConstMatrixRef<S>& x, MatrixRef<S> hidden, MatrixRef<S> y) const (docs/experts.md)");
  static_assert(detail::HasScalarType<RouterType>,
                "MoELayer: RouterType must declare `using scalar_type = float or double;` (docs/routers.md)");
  static_assert(detail::HasRouterSizes<RouterType>,
                "MoELayer: RouterType must provide num_experts() and input_dim() (docs/routers.md)");
  static_assert(detail::HasRoute<RouterType, Arch>,
                "MoELayer: RouterType must provide template <class Arch> void route(const ConstMatrixRef<S>& x, "
                "RoutingResult<S>& out, const ForwardContext& ctx) const (docs/routers.md)");
  static_assert(detail::HasScalarType<CombinerType>,
                "MoELayer: CombinerType must declare `using scalar_type = float or double;` (docs/combiners.md)");
  static_assert(detail::HasCombine<CombinerType, Arch>,
                "MoELayer: CombinerType must provide template <class Arch> void combine(const ConstMatrixRef<S>& x, "
                "const DispatchPlan<S>& plan, const ConstMatrixRef<S>& y_perm, MatrixRef<S> y, "
                "const CombineContext<S>& cc) const (docs/combiners.md)");
  static_assert(std::is_same_v<typename ExpertType::scalar_type, typename RouterType::scalar_type> &&
                    std::is_same_v<typename ExpertType::scalar_type, typename CombinerType::scalar_type>,
                "MoELayer: ExpertType, RouterType and CombinerType must have the same scalar_type "
                "(docs/policies.md)");
  static_assert(requires(const Executor& ex, const ExpertType& experts,
                         const ExpertStep<typename ExpertType::scalar_type>& step) {
    ex.template forward<Arch>(experts, step);
  }, "MoELayer: Executor must provide template <class Arch> void forward(const ExpertType& experts, "
     "const ExpertStep<S>& step) const (docs/executors.md)");
  static_assert(router_traits<RouterType>::is_dense == detail::combiner_is_dense<CombinerType>,
                "MoELayer: a dense RouterType (is_dense = true, Soft MoE) needs a dense CombinerType such as "
                "SoftCombiner, and a sparse router a sparse combiner (docs/soft_moe.md)");

 public:
  using scalar_type = typename ExpertType::scalar_type;
  using expert_type = ExpertType;
  using router_type = RouterType;
  using combiner_type = CombinerType;
  using arch_type = Arch;
  using executor_type = Executor;
  using workspace_type = Workspace<scalar_type>;
  /// Zeroed copies of the three policies: one gradient per parameter, same names and shapes.
  using gradients_type = Gradients<ExpertType, RouterType, CombinerType>;

  /// Takes built policies. `capacity` limits the rows each expert takes (dropless by default);
  /// `executor` runs step 4 (LocalExecutor: every expert here, on the call's pool).
  MoELayer(ExpertType experts, RouterType router, CombinerType combiner, Capacity capacity = {},
           Executor executor = {})
      : experts_(std::move(experts)),
        router_(std::move(router)),
        combiner_(std::move(combiner)),
        capacity_(capacity),
        executor_(std::move(executor)) {
    constexpr const char* where = "MoELayer::MoELayer()";
    detail::require(router_.num_experts() == experts_.num_experts(), where, "router num_experts (= experts)",
                    experts_.num_experts(), router_.num_experts());
    detail::require(router_.input_dim() == experts_.input_dim(), where, "router input_dim (= experts input_dim)",
                    experts_.input_dim(), router_.input_dim());
  }

  MoELayer(ExpertType experts, RouterType router)
    requires std::is_default_constructible_v<CombinerType>
      : MoELayer(std::move(experts), std::move(router), CombinerType{}) {}

  [[nodiscard]] Index num_experts() const noexcept { return experts_.num_experts(); }
  [[nodiscard]] Index input_dim() const noexcept { return experts_.input_dim(); }
  [[nodiscard]] Index output_dim() const noexcept { return experts_.output_dim(); }
  [[nodiscard]] const Capacity& capacity() const noexcept { return capacity_; }
  void set_capacity(Capacity c) noexcept { capacity_ = c; }

  [[nodiscard]] ExpertType& experts() noexcept { return experts_; }
  [[nodiscard]] const ExpertType& experts() const noexcept { return experts_; }
  [[nodiscard]] RouterType& router() noexcept { return router_; }
  [[nodiscard]] const RouterType& router() const noexcept { return router_; }
  [[nodiscard]] CombinerType& combiner() noexcept { return combiner_; }
  [[nodiscard]] const CombinerType& combiner() const noexcept { return combiner_; }
  [[nodiscard]] Executor& executor() noexcept { return executor_; }
  [[nodiscard]] const Executor& executor() const noexcept { return executor_; }

  /// y = MoE(x). x is [T, input_dim()], y must be [T, output_dim()]. T = 0 is allowed.
  ///
  /// A dense router (Soft MoE) takes the dense path, chosen at compile time: the same six
  /// stages on slots instead of triples (docs/soft_moe.md). It reads
  /// ctx.sequence_length, which must be 0 (one sequence) or divide T; sparse routers ignore
  /// it, and the dense path ignores capacity (every expert takes exactly its B*p slots).
  void forward(const ConstMatrixRef<scalar_type>& x, MatrixRef<scalar_type> y, workspace_type& ws,
               const ForwardContext& ctx = {}) const {
    validate(x, y, ctx);
    ws.pool = ctx.pool;
    ws.last_context = ctx;
    ws.has_forward = false;  // until this call completes
    ws.expert_loads = {};
    CombineContext<scalar_type> cc{ws.routing, ws.last_context, ws.combine};
    if constexpr (router_traits<RouterType>::is_dense) {
      if (ctx.routing_tape != nullptr)
        detail::throw_invalid("MoELayer::forward()", "ForwardContext::routing_tape",
                              "nullptr for a dense router (Soft MoE has no (token, expert) decisions to record)",
                              "a tape");
      router_.template route<Arch>(x, ws.routing, ctx);                         // 1 route: logits, dispatch D
      const SlotLayout layout = make_slot_layout(ws.routing, ctx.sequence_length);
      build_slot_plan(layout, x.rows(), ws.plan);                               // 2 plan: E slabs of B*p slots
      prepare(ws, x.cols());
      gather_slots<Arch>(x, ws.routing, layout, ws.x_perm);                     // 3 gather: D_b^T X_b
      executor_.template forward<Arch>(experts_, ws.expert_step(x));          // 4 experts
      combiner_.template combine<Arch>(x, ws.plan, ws.y_perm, y, cc);           // 5 combine: C_b * slots
      record_statistics(ws.plan, ws.plan.rows(), ws.stats);                     // 6 statistics: slots per expert
      if (ctx.telemetry != nullptr) ctx.telemetry->record(ctx.layer_index, ws.routing, ws.plan, ws.stats, true);
    } else {
      if (ctx.routing_tape != nullptr && ctx.routing_tape->replaying()) {
        replay_step(x, ws, ctx);                                                // 1-2 from the tape
      } else {
        router_.template route<Arch>(x, ws.routing, ctx);                       // 1 route
        plan_step(ws);                                                          // 2 plan
        if (ctx.routing_tape != nullptr) ctx.routing_tape->record(ctx.layer_index, ws.routing, ws.plan);
      }
      prepare(ws, x.cols());
      gather_tokens<Arch>(x, ws.plan, ws.x_perm, ctx.pool);                     // 3 gather
      executor_.template forward<Arch>(experts_, ws.expert_step(x));          // 4 experts
      combiner_.template combine<Arch>(x, ws.plan, ws.y_perm, y, cc);           // 5 combine
      record_statistics(ws.plan, ws.routing.size(), ws.stats);                  // 6 statistics for the losses
      if (ctx.telemetry != nullptr) ctx.telemetry->record(ctx.layer_index, ws.routing, ws.plan, ws.stats);
    }
    if (ctx.mode == Mode::training) ws.x_saved = x;  // the router's backward needs all of x
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
    check_training_members();
    return {zeros_like(experts_), zeros_like(router_), zeros_like(combiner_)};
  }

  /// Calls f(name, block) for every trainable tensor (router, experts, combiner), named as in
  /// the checkpoint the layer was loaded from (without the layer prefix).
  template <class F>
  void for_each_parameter(F&& f) {
    router_.for_each_parameter(f);
    experts_.for_each_parameter(f);
    combiner_.for_each_parameter(f);
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    router_.for_each_parameter(f);
    experts_.for_each_parameter(f);
    combiner_.for_each_parameter(f);
  }

  /// Backward of the last forward, which must have run with ctx.mode = Mode::training on ws.
  /// dy = dL/dy [T, output_dim()]; writes dx = dL/dx [T, input_dim()] and adds dL/dparameter
  /// into grads. `losses` adds auxiliary losses to the objective: a LossList
  /// (moe::losses(moe::weighted(LoadBalancingLoss{}, 0.01f), ...), docs/losses.md).
  template <class Losses>
    requires detail::is_loss_list<Losses>
  void backward(const ConstMatrixRef<scalar_type>& dy, MatrixRef<scalar_type> dx, workspace_type& ws,
                gradients_type& grads, const Losses& losses) const {
    check_training_members();
    check_losses<Losses>();
    check_backward_call(dy, dx, ws);
    if constexpr (router_traits<RouterType>::is_dense) {
      static_assert(Losses::size() == 0,
                    "MoELayer::backward(): a dense router (Soft MoE) has no token-choice routing, so no auxiliary "
                    "loss applies; pass no losses (docs/losses.md)");
      detail::dense_backward<Arch>(*this, dy, dx, ws, grads);
    } else {
      detail::sparse_backward<Arch>(*this, dy, dx, ws, grads, losses);
    }
  }

  /// The same with the shipped losses by weight (LossWeights: aux, z, importance, load,
  /// sequence; 0 = not trained). A dense router (Soft MoE) ignores them: those losses are
  /// defined on token-choice routing. A router that does not accept LoadLoss (any but noisy
  /// top-k) throws when weights.load != 0.
  void backward(const ConstMatrixRef<scalar_type>& dy, MatrixRef<scalar_type> dx, workspace_type& ws,
                gradients_type& grads, const LossWeights<scalar_type>& weights = {}) const {
    if constexpr (router_traits<RouterType>::is_dense) {
      backward(dy, dx, ws, grads, no_losses);
    } else if constexpr (router_traits<RouterType>::template accepts_loss<LoadLoss>) {
      backward(dy, dx, ws, grads, weights.list());
    } else {
      detail::require(weights.load == scalar_type(0), "MoELayer::backward()",
                      "LossWeights::load (LoadLoss reads noisy top-k's gating terms; this router has none)",
                      0, weights.load);
      backward(dy, dx, ws, grads, weights.routing_losses());
    }
  }

  /// Convenience overload that returns dx.
  [[nodiscard]] RowMatrix<scalar_type> backward(const ConstMatrixRef<scalar_type>& dy, workspace_type& ws,
                                                gradients_type& grads, const LossWeights<scalar_type>& weights = {}) const {
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

 private:
  /// The training protocol, checked where training is first used (make_gradients, backward),
  /// so a layer of inference-only policies compiles until then.
  static constexpr void check_training_members() {
    constexpr bool inference_only = expert_traits<ExpertType>::inference_only;
    static_assert(!inference_only,
                  "MoELayer training: ExpertType is an inference-only bank (block-quantized weights have no "
                  "gradients): train the float bank and quantize it (docs/quantization.md#quantized-expert-banks)");
    static_assert(inference_only || detail::HasExpertBackward<ExpertType, Arch>,
                  "MoELayer training: ExpertType must provide template <class Arch> void backward(Index e, "
                  "const ConstMatrixRef<S>& x, const ConstMatrixRef<S>& hidden, const ConstMatrixRef<S>& dy, "
                  "MatrixRef<S> dx, MatrixRef<S> dhidden, ExpertType& grad) const (docs/experts.md#training)");
    static_assert(inference_only || detail::HasParameters<ExpertType>,
                  "MoELayer training: ExpertType must provide for_each_parameter(f), f(name, block) for every "
                  "trainable tensor (docs/experts.md#training)");
    static_assert(detail::HasRouterBackward<RouterType, Arch>,
                  "MoELayer training: RouterType must provide template <class Arch> void backward(const "
                  "RouterBackward<S>& in, RouterType& grad, const auto& losses) const (docs/routers.md#training)");
    static_assert(detail::HasParameters<RouterType>,
                  "MoELayer training: RouterType must provide for_each_parameter(f), f(name, block) for every "
                  "trainable tensor (docs/routers.md#training)");
    static_assert(detail::HasCombinerBackward<CombinerType, Arch>,
                  "MoELayer training: CombinerType must provide template <class Arch> void backward(const "
                  "CombinerBackward<S>& in, CombinerType& grad, const CombineContext<S>& cc) const "
                  "(docs/combiners.md#training)");
    static_assert(detail::HasParameters<CombinerType>,
                  "MoELayer training: CombinerType must provide for_each_parameter(f), f(name, block) for every "
                  "trainable tensor, or none (docs/combiners.md#training)");
    static_assert(requires(const Executor& ex, const ExpertType& experts,
                           const ExpertStepBackward<scalar_type>& step, ExpertType& grad) {
      ex.template backward<Arch>(experts, step, grad);
    }, "MoELayer training: Executor must provide template <class Arch> void backward(const ExpertType& experts, "
       "const ExpertStepBackward<S>& step, ExpertType& grad) const (docs/executors.md)");
  }

  /// Every loss of the list must be a routing loss (value and backward on LossInput) or one
  /// the router consumes itself.
  template <class Losses>
  static constexpr void check_losses() {
    if constexpr (!std::is_same_v<Losses, NoLosses>) {
      []<class... Terms>(std::type_identity<LossList<Terms...>>) {
        static_assert((detail::is_weighted_loss<Terms> && ...),
                      "MoELayer::backward(): every term of the loss list must be moe::weighted(loss, weight) "
                      "(docs/losses.md)");
        static_assert(((RoutingLoss<typename Terms::loss_type, scalar_type> ||
                        router_traits<RouterType>::template accepts_loss<typename Terms::loss_type>) && ...),
                      "MoELayer::backward(): a loss must provide value(const LossInput<S>&) and template <class "
                      "Arch> void backward(const LossInput<S>&, S weight, const LossGradient<S>&) const, or be one "
                      "the router accepts (router_traits<R>::accepts_loss) (docs/losses.md)");
      }(std::type_identity<Losses>{});
    }
  }

  void check_backward_call(const ConstMatrixRef<scalar_type>& dy, const MatrixRef<scalar_type>& dx,
                           const workspace_type& ws) const {
    constexpr const char* where = "MoELayer::backward()";
    if (!ws.has_forward)
      detail::throw_invalid(where, "the workspace", "one on which forward ran in Mode::training",
                            "one on which no forward has completed (run forward with ctx.mode = Mode::training first)");
    detail::require(ws.last_mode == Mode::training, where, "the workspace's last forward", "one in Mode::training",
                    "one in Mode::inference");
    const Index T = ws.x_saved.rows();
    detail::require_shape(dy, T, output_dim(), where, "dy");
    detail::require_shape(dx, T, input_dim(), where, "dx");
  }

  void validate(const ConstMatrixRef<scalar_type>& x, const MatrixRef<scalar_type>& y,
                const ForwardContext& ctx) const {
    constexpr const char* where = "MoELayer::forward()";
    // Weights are reachable through mutable accessors; a resized block must fail here, not
    // be read out of bounds by a stage.
    if constexpr (requires { experts_.check_shapes(); }) experts_.check_shapes();
    if constexpr (requires { router_.check_shapes(); }) router_.check_shapes();
    detail::require(router_.num_experts() == experts_.num_experts(), where, "router num_experts (= experts)",
                    experts_.num_experts(), router_.num_experts());
    detail::require(router_.input_dim() == experts_.input_dim(), where, "router input_dim (= experts input_dim)",
                    experts_.input_dim(), router_.input_dim());
    detail::require(x.cols() == input_dim(), where, "x columns (input_dim)", input_dim(), x.cols());
    detail::require_shape(y, x.rows(), output_dim(), where, "y");
    if constexpr (router_traits<RouterType>::needs_token_ids)
      detail::require(static_cast<Index>(ctx.token_ids.size()) == x.rows(), where,
                      "token_ids length (one per row of x)", x.rows(), ctx.token_ids.size());
    if constexpr (router_traits<RouterType>::is_dense) (void)detail::num_sequences(x.rows(), ctx.sequence_length, where);
    detail::require_finite_input(x, ctx, where);
  }

  /// Step 2 of the sparse path: capacity, with overflow rerouting when capacity_.reroute > 0.
  void plan_step(workspace_type& ws) const {
    // An executor that plans over several processes (MpiExpertExecutor under a global
    // capacity) builds the plan itself; any other says no and the layer plans here.
    if constexpr (detail::PlanningExecutor<Executor, scalar_type>)
      if (executor_.plan(ws.routing, ws.plan, capacity_)) return;
    if (capacity_.reroute == 0) {
      build_plan(ws.routing, ws.plan, capacity_);
    } else if constexpr (detail::HasRegate<RouterType, Arch>) {
      build_plan_rerouted(ws.routing, ws.plan, capacity_, [this](RoutingResult<scalar_type>& r, Index t, Index b, Index e) {
        router_.template regate<Arch>(r, t, b, e);
      });
    } else {
      detail::throw_invalid("MoELayer::forward()", "Capacity::reroute",
                            "0 for this router (rerouting needs one that can regate: TopKRouter with SoftmaxTopK, "
                            "TopKSoftmax, TopP or ThresholdSkip, or Jittered of one; docs/capacity.md#rerouting)",
                            capacity_.reroute);
    }
  }

  /// Steps 1 and 2 from the context's routing tape (docs/replay.md).
  void replay_step(const ConstMatrixRef<scalar_type>& x, workspace_type& ws, const ForwardContext& ctx) const {
    constexpr const char* where = "MoELayer::forward()";
    RoutingTape& tape = *ctx.routing_tape;
    if (tape.mode() == TapeMode::replay) {
      detail::require(ctx.mode == Mode::inference, where, "ForwardContext::mode under TapeMode::replay",
                      "Mode::inference (replayed gates are constants; TapeMode::replay_experts trains through a replay)",
                      "Mode::training");
      const RoutingRecord& record = tape.next(ctx.layer_index, x.rows(), num_experts(), where);
      replay_routing(record, ws.routing, /*copy_gates=*/true);
      // The router did not run: no logits or scores this call.
      ws.routing.logits.resize(0, num_experts());
      ws.routing.scores.resize(0, num_experts());
      replay_plan(record, ws.routing, ws.plan);
      return;
    }
    if constexpr (detail::HasRegate<RouterType, Arch>) {
      router_.template route<Arch>(x, ws.routing, ctx);  // logits and scores for the losses and backward
      const Index routed_k = ws.routing.k;
      const RoutingRecord& record = tape.next(ctx.layer_index, x.rows(), num_experts(), where);
      detail::require(record.k == routed_k, where, "routing tape record k (the router's k; 0 when it varies)",
                      routed_k, record.k);
      replay_routing(record, ws.routing, /*copy_gates=*/false);
      detail::for_each_token_run(ws.routing, [&](Index t, Index begin, Index end) {
        router_.template regate<Arch>(ws.routing, t, begin, end);
      });
      replay_plan(record, ws.routing, ws.plan);
    } else {
      detail::throw_invalid(where, "TapeMode::replay_experts", "a router that can regate (TopKRouter with SoftmaxTopK, "
                            "TopKSoftmax, TopP or ThresholdSkip, or Jittered of one; docs/replay.md)", "another router");
    }
  }

  void prepare(workspace_type& ws, Index d) const {
    const Index n = ws.plan.rows();
    detail::ensure_shape(ws.x_perm, n, d);
    detail::ensure_shape(ws.hidden, n, experts_.hidden_cols());
    detail::ensure_shape(ws.y_perm, n, output_dim());
  }

  ExpertType experts_;
  RouterType router_;
  CombinerType combiner_;
  Capacity capacity_;
  Executor executor_;
};

// Named configurations --------------------------------------------------------------------

/// Mixtral: softmax, top-2, renormalised; SwiGLU experts (w1, w3, w2).
template <class S>
using MixtralMoE = MoELayer<SwiGLUExperts<S>, SoftmaxTopKRouter<S>, WeightedSumCombiner<S>>;
/// OLMoE: as Mixtral, with norm_topk_prob = false in the router.
template <class S>
using OlmoeMoE = MixtralMoE<S>;
/// Qwen2-MoE: softmax top-k, plus a sigmoid-gated shared SwiGLU expert.
template <class S>
using Qwen2MoE = MoELayer<SwiGLUExperts<S>, SoftmaxTopKRouter<S>,
                          SharedExpertCombiner<SwiGLUExperts<S>, SharedGate::sigmoid>>;
/// DeepSeek-V3: sigmoid, group-limited routing with a correction bias, plus ungated shared experts.
template <class S>
using DeepSeekV3MoE = MoELayer<SwiGLUExperts<S>, GroupLimitedRouter<S>,
                               SharedExpertCombiner<SwiGLUExperts<S>, SharedGate::none>>;
/// GPT-OSS: top-k of biased logits then softmax; clamped GLU experts with biases.
template <class S>
using GptOssMoE = MoELayer<GptOssExperts<S>, TopKSoftmaxRouter<S>, WeightedSumCombiner<S>>;
/// Switch Transformers: top-1 softmax (not renormalised), ReLU FFN experts, optional capacity.
template <class S>
using SwitchMoE = MoELayer<FFNExperts<S, Activation::relu>, SoftmaxTopKRouter<S>, WeightedSumCombiner<S>>;
/// Soft MoE (Puigcerver et al. 2023): every slot a softmax mixture of its sequence's tokens,
/// every token a softmax mixture of the slots; GELU (erf) FFN experts. The dense path.
template <class S>
using SoftMoE = MoELayer<FFNExperts<S, Activation::gelu_erf>, SoftRouter<S>, SoftCombiner<S>>;
/// Shazeer et al. 2017 with SwiGLU experts (the golden "moe." layout).
template <class S>
using NoisyTopKMoE = MoELayer<SwiGLUExperts<S>, NoisyTopKRouter<S>, WeightedSumCombiner<S>>;
/// Zhou et al. 2022 with SwiGLU experts (the golden "moe." layout).
template <class S>
using ExpertChoiceMoE = MoELayer<SwiGLUExperts<S>, ExpertChoiceRouter<S>, WeightedSumCombiner<S>>;
/// Roller et al. 2021 with SwiGLU experts (the golden "moe." layout).
template <class S>
using HashMoE = MoELayer<SwiGLUExperts<S>, HashRouter<S>, WeightedSumCombiner<S>>;
/// Modality experts with cross-modal shared ones (MoMa, VLMo) with SwiGLU experts (the golden
/// "moe." layout of ../shared/golden-variety): softmax top-k over the token's open experts.
template <class S>
using ModalityMoE = MoELayer<SwiGLUExperts<S>, ModalitySoftmaxTopKRouter<S>, WeightedSumCombiner<S>>;
/// Domain-aware routing (DEMix-style) with SwiGLU experts: logits + q A, softmax top-k.
template <class S>
using DomainAwareMoE = MoELayer<SwiGLUExperts<S>, DomainAwareSoftmaxTopKRouter<S>, WeightedSumCombiner<S>>;
/// Top-p routing (Huang et al. 2024) with SwiGLU experts: 1..k experts per token, raw gates.
template <class S>
using TopPMoE = MoELayer<SwiGLUExperts<S>, TopPRouter<S>, WeightedSumCombiner<S>>;
/// Dynamic expert skipping (NAEE, Lu et al. 2024) with SwiGLU experts: top-k, experts below
/// beta times the first dropped, renormalised.
template <class S>
using ThresholdSkipMoE = MoELayer<SwiGLUExperts<S>, ThresholdSkipRouter<S>, WeightedSumCombiner<S>>;
/// Hierarchical routing (Shazeer et al. 2017) with SwiGLU experts: groups, then experts in them.
template <class S>
using HierarchicalMoE = MoELayer<SwiGLUExperts<S>, HierarchicalRouter<S>, WeightedSumCombiner<S>>;
/// Low-rank (LoRA) experts over a shared base (MoLoRA): y = x W0^T (LinearExperts, the shared
/// expert, frozen with set_trainable(false)) + sum gate * scale * (x A_e^T) B_e^T, softmax top-k.
template <class S>
using LowRankMoE = MoELayer<LowRankExperts<S>, SoftmaxTopKRouter<S>, SharedExpertCombiner<LinearExperts<S>, SharedGate::none>>;
/// Task-aware routing with SwiGLU experts: (1 - s) x Wb^T + s x Wt^T per token's task, softmax
/// top-k (ForwardContext::task_ids).
template <class S>
using TaskAwareMoE = MoELayer<SwiGLUExperts<S>, TaskAwareSoftmaxTopKRouter<S>, WeightedSumCombiner<S>>;

/// Convolutional experts with SwiGLU after the convolution, softmax top-k routing on the
/// token's own input: a depthwise causal convolution over the token's sequence
/// (ForwardContext::sequence_length), then SwiGLU.
template <class S>
using ConvMoE = MoELayer<CausalConvExperts<SwiGLUExperts<S>>, SoftmaxTopKRouter<S>, WeightedSumCombiner<S>>;

}  // namespace moe

#endif  // MOE_LAYER_MOE_LAYER_HPP

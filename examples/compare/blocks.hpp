// moe-compare's routing policies as trainable blocks: one MoE layer with its gradients,
// optimiser and workspace behind one small interface, so the training loop, the throughput
// table and the tests treat every router alike (docs/compare.md).
//
// It lives beside the program, not under include/moe/: a comparison harness, not library API.
#ifndef MOE_EXAMPLES_COMPARE_BLOCKS_HPP
#define MOE_EXAMPLES_COMPARE_BLOCKS_HPP

#include <moe/layer/quantized_layers.hpp>
#include <moe/moe.hpp>
#include <moe/train/train.hpp>

#include "../example_util.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace moe::examples::compare {

using S = float;

/// The shape every block is built at; the same for every policy of one comparison.
struct BlockConfig {
  Index d = 128;          ///< input and output width of the block
  Index d_ff = 128;       ///< hidden width of one expert
  Index experts = 8;      ///< E
  Index top_k = 2;        ///< k (the cap of top-p and threshold skipping)
  Index vocab = 1;        ///< range of the token ids (hash routing)
  Index sequence_length = 64;  ///< rows per sequence (Soft MoE, conv and recurrent experts)
  double aux = 1e-2;      ///< load-balancing loss weight, where the policy trains one
  double z = 1e-3;        ///< router z-loss weight, where the router has logits
  double lr = 3e-3;       ///< Adam
  std::uint64_t seed = 1; ///< initial weights
  /// The experts' weights in inference forwards (evaluation, --throughput); training stays
  /// float. bf16 runs the float bank's bf16 products; q8_0, q4_0, q4_k a quantized copy.
  WeightType weight_type = WeightType::f32;
};

/// What the last forward did, read from the workspace.
struct Routed {
  std::vector<Index> load;  ///< kept assignments per expert
  Index rows = 0;           ///< expert rows computed (slots of the plan)
  Index units = 0;          ///< routed units: tokens, or sub-tokens (multi-head)
  double dropped = 0;       ///< fraction of the units that no expert processed
  std::optional<double> experts_per_token;  ///< none for Soft MoE (every slot mixes every token)
  std::optional<double> aux;                ///< load-balancing loss, 1 at perfect balance
  std::optional<double> z;                  ///< router z-loss
  /// Per unit, the kept expert with the largest gate (-1: none); empty for Soft MoE.
  std::vector<Index> top1;
};

/// One MoE layer with what training it needs. forward and backward run on the block's own
/// workspace; backward zeroes the gradients first and adds the policy's auxiliary losses.
class Block {
 public:
  virtual ~Block() = default;
  Block() = default;
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;

  virtual void forward(const RowMatrix<S>& x, RowMatrix<S>& y, const ForwardContext& ctx) = 0;
  virtual void backward(const RowMatrix<S>& dy, RowMatrix<S>& dx) = 0;
  /// Sum of squares of every gradient (for global-norm clipping with the rest of the model).
  [[nodiscard]] virtual double grad_squared_norm() const = 0;
  virtual void scale_grads(double factor) = 0;
  /// One optimiser step (and the policy's own update, e.g. DeepSeek-V3's bias balancing).
  virtual void step() = 0;
  [[nodiscard]] virtual Routed routed() const = 0;
  /// Expert FLOPs (multiply-adds x 2) of one expert row: what a routed unit costs per expert.
  [[nodiscard]] virtual double flops_per_row() const = 0;
  /// FLOPs every token pays besides its expert rows (a shared expert); 0 for most policies.
  [[nodiscard]] virtual double shared_flops_per_token() const { return 0.0; }
  [[nodiscard]] virtual Index num_experts() const = 0;
  /// Routed units per token (h for multi-head, else 1).
  [[nodiscard]] virtual Index units_per_token() const { return 1; }
  /// The experts' weights in inference forwards (BlockConfig::weight_type); false, and float
  /// weights kept, where the policy's experts have no such form (conv, recurrent, low-rank,
  /// multi-head).
  virtual bool set_inference_weights(WeightType t) { return t == WeightType::f32; }
};

namespace detail {

/// The per-unit best kept expert, from the plan's token-major transpose.
template <class S2>
std::vector<Index> top1_of(const DispatchPlan<S2>& plan, Index units) {
  std::vector<Index> best(static_cast<std::size_t>(units), -1);
  if (plan.token_offsets.size() != static_cast<std::size_t>(units) + 1) return best;
  for (Index t = 0; t < units; ++t) {
    S2 g = S2(0);
    for (Index i = plan.token_offsets[static_cast<std::size_t>(t)]; i < plan.token_offsets[static_cast<std::size_t>(t) + 1];
         ++i) {
      const Index slot = plan.token_slots[static_cast<std::size_t>(i)];
      const S2 gi = plan.gate[static_cast<std::size_t>(slot)];
      if (best[static_cast<std::size_t>(t)] < 0 || gi > g) {
        g = gi;
        const auto it = std::upper_bound(plan.offsets.begin(), plan.offsets.end(), slot);
        best[static_cast<std::size_t>(t)] = static_cast<Index>(it - plan.offsets.begin()) - 1;
      }
    }
  }
  return best;
}

/// A layer's quantized copy, where quantize_layer takes it (else nothing).
template <class Layer, class Block, bool Quantizable>
struct QuantizedCopy {
  using type = std::monostate;
};
template <class Layer, class Block>
struct QuantizedCopy<Layer, Block, true> {
  using type = std::optional<decltype(quantize_layer<Block>(std::declval<const Layer&>()))>;
};

template <class L>
struct is_multi_head : std::false_type {
  using inner = L;
};
template <class I>
struct is_multi_head<MultiHeadLayer<I>> : std::true_type {
  using inner = I;
};

}  // namespace detail

/// A Block over any layer with MoELayer's training interface (MoELayer, MultiHeadLayer).
template <class Layer>
class LayerBlock final : public Block {
 public:
  using Workspace_ = typename Layer::workspace_type;

  LayerBlock(Layer layer, LossWeights<S> weights, double lr, double flops_per_row, bool frozen_router = false,
             double shared_flops_per_token = 0.0)
      : layer_(std::move(layer)), grads_(layer_.make_gradients()), opt_(lr), weights_(weights),
        flops_per_row_(flops_per_row), shared_flops_(shared_flops_per_token), frozen_(frozen_router) {}

  void forward(const RowMatrix<S>& x, RowMatrix<S>& y, const ForwardContext& ctx) override {
    y.resize(x.rows(), layer_.output_dim());
    // Training and evaluation alternate batch shapes: each keeps its own workspace, so neither
    // resizes the other's buffers (as a server and a trainer would hold one each).
    last_ = ctx.mode == Mode::training ? &train_ws_ : &infer_ws_;
    const bool typed = ctx.mode != Mode::training && weight_type_ != WeightType::f32;
    if constexpr (has_compute) {
      // Only on a change: set_compute drops the packed weights.
      const ComputeType want = typed && weight_type_ == WeightType::bf16 ? ComputeType::bf16 : ComputeType::native;
      if (inner().experts().compute() != want) inner().experts().set_compute(want);
    }
    if (typed && weight_type_ != WeightType::bf16) {
      forward_quantized(x, y, ctx);
    } else {
      layer_.forward(x, y, *last_, ctx);
    }
    tokens_ = x.rows();
    sequence_length_ = ctx.sequence_length == 0 ? x.rows() : ctx.sequence_length;
  }

  void backward(const RowMatrix<S>& dy, RowMatrix<S>& dx) override {
    grads_.set_zero();
    dx.resize(dy.rows(), layer_.input_dim());
    layer_.backward(dy, dx, train_ws_, grads_, weights_);
    if (frozen_) router_grads().for_each_parameter([](const std::string&, auto&& g) { g.setZero(); });
  }

  [[nodiscard]] double grad_squared_norm() const override {
    double s = 0;
    grads_.for_each_parameter([&](const std::string&, const auto& g) { s += g.template cast<double>().squaredNorm(); });
    return s;
  }

  void scale_grads(double factor) override {
    grads_.for_each_parameter([&](const std::string&, auto&& g) { g *= static_cast<S>(factor); });
  }

  void step() override {
    stale_ = true;  // the quantized copy follows the weights at the next inference forward
    opt_.step(layer_, grads_);
    using R = typename inner_layer::router_type;
    if constexpr (std::is_same_v<R, GroupLimitedRouter<S>>) {
      // DeepSeek-V3's auxiliary-loss-free balancing: the selection bias follows the load.
      BiasBalancing{}(inner().router().gating().correction_bias, stats_ws().stats);
    }
  }

  [[nodiscard]] Routed routed() const override {
    const Workspace<S>& ws = stats_ws();
    Routed r;
    r.load = ws.stats.expert_load;
    r.rows = static_cast<Index>(ws.plan.token.size());
    r.units = ws.routing.num_tokens;
    using R = typename inner_layer::router_type;
    if constexpr (router_traits<R>::is_dense) {
      // Every sequence fills every slot: E x slots rows per sequence, the same for each expert.
      const Index sequences = sequence_length_ > 0 ? tokens_ / sequence_length_ : 0;
      const Index slots = inner().router().slots_per_expert();
      r.units = tokens_;
      r.rows = sequences * inner().router().num_slots();
      r.load.assign(static_cast<std::size_t>(inner().num_experts()), sequences * slots);
      r.dropped = 0.0;
    } else {
      r.experts_per_token = ws.stats.mean_experts_per_token();
      r.top1 = detail::top1_of(ws.plan, r.units);
      r.dropped = r.units == 0 ? 0.0
                                : double(std::count(r.top1.begin(), r.top1.end(), Index(-1))) / double(r.units);
      if (ws.routing.logits.rows() == r.units && ws.routing.logits.cols() > 1) {
        r.aux = double(LoadBalancingLoss{LoadBalancingLoss::Normalization::unit}(ws.routing));
        r.z = double(RouterZLoss{}(ws.routing));
      }
    }
    return r;
  }

  [[nodiscard]] double flops_per_row() const override { return flops_per_row_; }
  [[nodiscard]] double shared_flops_per_token() const override { return shared_flops_; }
  [[nodiscard]] Index num_experts() const override { return inner().num_experts(); }
  [[nodiscard]] Index units_per_token() const override {
    if constexpr (requires { layer_.num_heads(); }) return layer_.num_heads();
    else return 1;
  }

  [[nodiscard]] Layer& layer() noexcept { return layer_; }

  bool set_inference_weights(WeightType t) override {
    const bool ok = t == WeightType::f32 || (t == WeightType::bf16 ? has_compute : quantizable);
    weight_type_ = ok ? t : WeightType::f32;
    stale_ = true;
    return ok;
  }

 private:
  static constexpr bool is_multi_head = detail::is_multi_head<Layer>::value;
  using inner_layer = typename detail::is_multi_head<Layer>::inner;
  static constexpr bool has_compute =
      !is_multi_head && requires(inner_layer& l) { l.experts().set_compute(ComputeType::bf16); };
  static constexpr bool quantizable =
      !is_multi_head && requires(const Layer& l) { quantize_layer<kernels::BlockQ8_0>(l); };

  /// The inference forward with quantized experts: a copy of the layer, quantized again after
  /// each optimiser step (only when an inference forward asks for it).
  void forward_quantized(const RowMatrix<S>& x, RowMatrix<S>& y, const ForwardContext& ctx) {
    if constexpr (quantizable) {
      const auto run = [&](auto& copy, auto block) {
        using Block = decltype(block);
        if (stale_ || !copy) copy.emplace(quantize_layer<Block>(layer_));
        stale_ = false;
        copy->forward(x, y, *last_, ctx);
      };
      if (weight_type_ == WeightType::q8_0) run(q8_0_, kernels::BlockQ8_0{});
      if (weight_type_ == WeightType::q4_0) run(q4_0_, kernels::BlockQ4_0{});
      if (weight_type_ == WeightType::q4_k) run(q4_k_, kernels::BlockQ4_K{});
    }
  }
  template <class Block>
  using QuantizedCopy = typename detail::QuantizedCopy<Layer, Block, quantizable>::type;

  [[nodiscard]] auto& inner() {
    if constexpr (is_multi_head) return layer_.inner();
    else return layer_;
  }
  [[nodiscard]] const auto& inner() const {
    if constexpr (is_multi_head) return layer_.inner();
    else return layer_;
  }
  [[nodiscard]] const Workspace<S>& stats_ws() const {
    if constexpr (is_multi_head) return last_->inner;
    else return *last_;
  }
  [[nodiscard]] auto& router_grads() {
    if constexpr (is_multi_head) return grads_.inner.router;
    else return grads_.router;
  }

  Layer layer_;
  typename Layer::gradients_type grads_;
  Adam<S> opt_;
  Workspace_ train_ws_, infer_ws_;
  Workspace_* last_ = &train_ws_;  ///< the workspace of the last forward
  LossWeights<S> weights_;
  double flops_per_row_;
  double shared_flops_;
  bool frozen_;
  Index tokens_ = 0, sequence_length_ = 0;
  WeightType weight_type_ = WeightType::f32;
  bool stale_ = true;
  QuantizedCopy<kernels::BlockQ8_0> q8_0_{};
  QuantizedCopy<kernels::BlockQ4_0> q4_0_{};
  QuantizedCopy<kernels::BlockQ4_K> q4_k_{};
};

/// FLOPs of one SwiGLU row d -> ff -> d: three products.
inline double swiglu_flops(Index d, Index ff) { return 6.0 * double(d) * double(ff); }

inline SwiGLUExperts<S> make_experts(const BlockConfig& c, Index d, Index ff, Index E) {
  SwiGLUExperts<S> e(E, d, ff);
  fill_normal(e.gate_up(), c.seed * 1000 + 1, 1.0 / std::sqrt(double(d)));
  fill_normal(e.down(), c.seed * 1000 + 2, 1.0 / std::sqrt(double(ff)));
  return e;
}
inline SwiGLUExperts<S> make_experts(const BlockConfig& c) { return make_experts(c, c.d, c.d_ff, c.experts); }

/// The router projection every policy with one starts from: N(0, 0.1^2 / d), small, so the
/// initial routing is near uniform and every router starts from the same point.
inline RowMatrix<S> make_router_weight(const BlockConfig& c, Index d, Index E) {
  RowMatrix<S> g(E, d);
  fill_normal(g, c.seed * 1000 + 3, 0.1 / std::sqrt(double(d)));
  return g;
}
inline RowMatrix<S> make_router_weight(const BlockConfig& c) { return make_router_weight(c, c.d, c.experts); }

/// Ids of the synthetic labels: M modalities, N tasks, D domains (docs/compare.md).
inline constexpr Index num_modalities = 3;
inline constexpr Index num_tasks = 4;
inline constexpr Index num_domains = 4;

/// One entry of the registry: a name, the rule in words, and how to build its block.
struct Policy {
  std::string name;
  std::string rule;
  std::function<std::unique_ptr<Block>(const BlockConfig&)> make;
  bool baseline = false;  ///< the dense model and the frozen random router
};

}  // namespace moe::examples::compare

#endif  // MOE_EXAMPLES_COMPARE_BLOCKS_HPP

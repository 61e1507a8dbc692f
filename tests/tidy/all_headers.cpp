// The translation unit scripts/tidy.sh gives clang-tidy: every public header, and the
// layer aliases instantiated forward and backward (templates are only analysed where they
// are instantiated), so the checks in .clang-tidy see the code paths users run. It is
// compiled only by clang-tidy (target moe_tidy_all_headers is EXCLUDE_FROM_ALL); the
// loaders and the optimisers are instantiated by examples/load_hf_layer.cpp and
// examples/train_mixture.cpp, which scripts/tidy.sh checks beside this file. scripts/tidy.sh
// fails if a header under include/moe/ is reached by none of its translation units. This unit
// instantiates the float layers, its copy the double ones.

#include <moe/combine/shared_expert_combiner.hpp>
#include <moe/combine/soft_combiner.hpp>
#include <moe/combine/token_major_sum.hpp>
#include <moe/combine/weighted_sum_combiner.hpp>
#include <moe/contracts/combine.hpp>
#include <moe/contracts/concepts.hpp>
#include <moe/contracts/dispatch_plan.hpp>
#include <moe/contracts/executor.hpp>
#include <moe/contracts/expert.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/contracts/slot_layout.hpp>
#include <moe/contracts/statistics.hpp>
#include <moe/contracts/training.hpp>
#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/parameters.hpp>
#include <moe/core/random.hpp>
#include <moe/core/scratch.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/core/traits.hpp>
#include <moe/core/types.hpp>
#include <moe/deploy/prune.hpp>
#include <moe/dispatch/dispatch_plan.hpp>
#include <moe/dispatch/reroute.hpp>
#include <moe/dispatch/routing_tape.hpp>
#include <moe/dispatch/slot_plan.hpp>
#include <moe/dispatch/statistics.hpp>
#include <moe/expert/conv_experts.hpp>
#include <moe/expert/ffn_experts.hpp>
#include <moe/expert/gpt_oss_experts.hpp>
#include <moe/expert/gru_experts.hpp>
#include <moe/expert/linear_experts.hpp>
#include <moe/expert/local_executor.hpp>
#include <moe/expert/low_rank_experts.hpp>
#include <moe/expert/position_scaled_experts.hpp>
#include <moe/expert/quantized_experts.hpp>
#include <moe/expert/swiglu_experts.hpp>
#include <moe/gather/gather.hpp>
#include <moe/gather/gather_slots.hpp>
#include <moe/io/checkpoint.hpp>
#include <moe/io/conv_loader.hpp>
#include <moe/io/dtype.hpp>
#include <moe/io/error.hpp>
#include <moe/io/expert_source.hpp>
#include <moe/io/file_identity.hpp>
#include <moe/io/gguf.hpp>
#include <moe/io/gguf_loader.hpp>
#include <moe/io/hf_loader.hpp>
#include <moe/io/layer_tensors.hpp>
#include <moe/io/lazy_safetensors.hpp>
#include <moe/io/low_rank_loader.hpp>
#include <moe/io/multi_head_loader.hpp>
#include <moe/io/recurrent_loader.hpp>
#include <moe/io/routing_loaders.hpp>
#include <moe/io/routing_tape_io.hpp>
#include <moe/io/safetensors.hpp>
#include <moe/io/safetensors_impl.hpp>
#include <moe/io/save_layer.hpp>
#include <moe/io/soft_moe_loader.hpp>
#include <moe/io/switch_loader.hpp>
#include <moe/kernels/activations.hpp>
#include <moe/kernels/arch.hpp>
#include <moe/kernels/gather_rows.hpp>
#include <moe/kernels/gemm.hpp>
#include <moe/kernels/kernels.hpp>
#include <moe/kernels/op.hpp>
#include <moe/kernels/quant_blocks.hpp>
#include <moe/kernels/quant_gemm.hpp>
#include <moe/kernels/reference/activations.hpp>
#include <moe/kernels/reference/gather_rows.hpp>
#include <moe/kernels/reference/gemm.hpp>
#include <moe/kernels/reference/kernels.hpp>
#include <moe/kernels/reference/quant_blocks.hpp>
#include <moe/kernels/reference/quant_gemm.hpp>
#include <moe/kernels/reference/softmax.hpp>
#include <moe/kernels/reference/top_k.hpp>
#include <moe/kernels/reference/weighted_gather.hpp>
#include <moe/kernels/reference/weighted_scatter_add.hpp>
#include <moe/kernels/simd_math.hpp>
#include <moe/kernels/softmax.hpp>
#include <moe/kernels/top_k.hpp>
#include <moe/kernels/weight_types.hpp>
#include <moe/kernels/weighted_gather.hpp>
#include <moe/kernels/weighted_scatter_add.hpp>
#include <moe/layer/backward.hpp>
#include <moe/layer/layer_stack.hpp>
#include <moe/layer/dense_backward.hpp>
#include <moe/layer/moe_layer.hpp>
#include <moe/layer/quantized_layers.hpp>
#include <moe/layer/multi_head_layer.hpp>
#include <moe/layer/recurrent_moe.hpp>
#include <moe/layer/workspace.hpp>
#include <moe/loss/bias_balancing.hpp>
#include <moe/loss/domain_loss.hpp>
#include <moe/loss/hierarchical_balancing_loss.hpp>
#include <moe/loss/importance_loss.hpp>
#include <moe/loss/load_balancing_loss.hpp>
#include <moe/loss/loss_list.hpp>
#include <moe/loss/loss_weights.hpp>
#include <moe/loss/modality_balancing_loss.hpp>
#include <moe/loss/routing_entropy_loss.hpp>
#include <moe/loss/z_loss.hpp>
#include <moe/moe.hpp>
#include <moe/router/domain_aware_router.hpp>
#include <moe/router/expert_choice_router.hpp>
#include <moe/router/gating.hpp>
#include <moe/router/hash_router.hpp>
#include <moe/router/hierarchical_router.hpp>
#include <moe/router/jitter.hpp>
#include <moe/router/modality_router.hpp>
#include <moe/router/noisy_top_k_router.hpp>
#include <moe/router/router_wrapper.hpp>
#include <moe/router/sequence_router.hpp>
#include <moe/router/soft_router.hpp>
#include <moe/router/task_aware_router.hpp>
#include <moe/router/top_k_router.hpp>
#include <moe/store/expert_cache.hpp>
#include <moe/store/expert_store.hpp>
#include <moe/store/on_demand_executor.hpp>
#include <moe/store/on_demand_swiglu.hpp>
#include <moe/store/prefetcher.hpp>
#include <moe/train/expert_dropout.hpp>
#include <moe/train/gradient_utils.hpp>
#include <moe/train/optimizer.hpp>
#include <moe/train/train.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace moe::tidy {

/// One training forward and backward, and one inference forward with a two-thread pool.
template <class Layer>
typename Layer::scalar_type exercise(const Layer& layer, Index tokens, Index sequence_length = 0) {
  using S = typename Layer::scalar_type;
  const RowMatrix<S> x = RowMatrix<S>::Random(tokens, layer.input_dim());
  std::vector<std::int64_t> ids(static_cast<std::size_t>(tokens));
  for (std::size_t t = 0; t < ids.size(); ++t) ids[t] = static_cast<std::int64_t>(t % 7);
  typename Layer::workspace_type ws;
  ThreadPool pool(2);
  ForwardContext ctx;
  ctx.mode = Mode::training;
  ctx.token_ids = ids;
  std::vector<std::int64_t> two(static_cast<std::size_t>(tokens));  // modality, domain and task ids
  for (std::size_t t = 0; t < two.size(); ++t) two[t] = static_cast<std::int64_t>(t % 2);
  ctx.modality_ids = two;
  ctx.domain_ids = two;
  ctx.task_ids = two;
  ctx.sequence_length = sequence_length;
  ctx.pool = &pool;
  const RowMatrix<S> y = layer.forward(x, ws, ctx);
  auto grads = layer.make_gradients();
  const RowMatrix<S> dx = layer.backward(y, ws, grads, LossWeights<S>{.aux = S(0.01), .z = S(0.001)});
  ctx.mode = Mode::inference;
  const RowMatrix<S> y2 = layer.forward(x, ws, ctx);
  const auto& routing = [&]() -> const RoutingResult<S>& {
    if constexpr (requires { ws.inner; }) return ws.inner.routing;  // a multi-head layer's sub-tokens
    else return ws.routing;
  }();
  return y.sum() + dx.sum() + y2.sum() + LoadBalancingLoss{}(routing) + RouterZLoss{}(routing);
}

/// The per-modality balancing loss, the domain loss and the routing entropy through a layer's backward.
template <class S>
S routing_losses() {
  const Index E = 4, d = 8, ff = 6, T = 12;
  const ModalitySoftmaxTopKRouter<S> modality(E, d, 1, {0, 1, -1, -1}, 2);
  const MoELayer<SwiGLUExperts<S>, ModalitySoftmaxTopKRouter<S>, WeightedSumCombiner<S>> a(SwiGLUExperts<S>(E, d, ff),
                                                                                         modality);
  const MoELayer<SwiGLUExperts<S>, DomainAwareSoftmaxTopKRouter<S>, WeightedSumCombiner<S>> b(
      SwiGLUExperts<S>(E, d, ff), DomainAwareSoftmaxTopKRouter<S>(E, d, 2, 2));
  const RowMatrix<S> x = RowMatrix<S>::Random(T, d);
  std::vector<std::int64_t> ids(static_cast<std::size_t>(T));
  for (std::size_t t = 0; t < ids.size(); ++t) ids[t] = static_cast<std::int64_t>(t % 2);
  ForwardContext ctx;
  ctx.mode = Mode::training;
  ctx.modality_ids = ids;
  ctx.domain_ids = ids;
  Workspace<S> ws;
  const ModalityLoadBalancingLoss balance(modality.expert_modality(), modality.num_modalities());
  RowMatrix<S> y = a.forward(x, ws, ctx);
  auto ga = a.make_gradients();
  S sum = a.backward(y, ws, ga, losses(weighted(balance, S(0.01)))).sum();
  sum += balance.value(LossInput<S>{ws.routing, BackwardContext{ctx}});
  y = b.forward(x, ws, ctx);
  auto gb = b.make_gradients();
  sum += b.backward(y, ws, gb, losses(weighted(DomainLoss{}, S(0.1)))).sum();
  sum += DomainLoss{}(ConstMatrixRef<S>(b.router().domain_probs(x)), ids);
  // The routing-entropy loss through an adaptive (top-p) layer's backward.
  const TopPMoE<S> c(SwiGLUExperts<S>(E, d, ff), TopPRouter<S>(E, d, 3, TopP<S>{S(0.6)}));
  y = c.forward(x, ws, ctx);
  auto gc = c.make_gradients();
  sum += c.backward(y, ws, gc, losses(weighted(RoutingEntropyLoss{}, S(0.01)))).sum();
  sum += RoutingEntropyLoss{}.value(LossInput<S>{ws.routing, BackwardContext{ctx}});
  // Each level's balance through a hierarchical layer's backward (the router consumes it).
  const HierarchicalMoE<S> h(SwiGLUExperts<S>(E, d, ff), HierarchicalRouter<S>(2, 2, d, 1, 1));
  y = h.forward(x, ws, ctx);
  auto gh = h.make_gradients();
  sum += h.backward(y, ws, gh, losses(weighted(HierarchicalBalancingLoss{}, S(0.01)))).sum();
  sum += HierarchicalBalancingLoss{}.value(h.router(), ConstMatrixRef<S>(x), ws.routing);
  return sum + static_cast<S>(ws.stats.mean_experts_per_token());
}

/// Overflow rerouting forward and backward, a routing tape recorded, replayed and written as
/// bytes, and expert pruning (calibrate, both selections, prune).
template <class S>
S deployment_tools() {
  const Index E = 4, d = 8, ff = 6, T = 16;
  const MixtralMoE<S> layer(SwiGLUExperts<S>(E, d, ff), SoftmaxTopKRouter<S>(RowMatrix<S>::Random(E, d), 2), {},
                            Capacity::from_factor(1.0).rerouted(E - 1));
  const RowMatrix<S> x = RowMatrix<S>::Random(T, d);
  Workspace<S> ws;
  RoutingTape tape;
  ForwardContext ctx;
  ctx.mode = Mode::training;
  ctx.routing_tape = &tape;
  RowMatrix<S> y = layer.forward(x, ws, ctx);
  auto grads = layer.make_gradients();
  S sum = layer.backward(y, ws, grads, LossWeights<S>{.aux = S(0.01)}).sum();
  tape.set_mode(TapeMode::replay_experts);
  y = layer.forward(x, ws, ctx);
  sum += layer.backward(y, ws, grads, LossWeights<S>{}).sum();
  tape.set_mode(TapeMode::replay);
  ctx.mode = Mode::inference;
  sum += layer.forward(x, ws, ctx).sum();
  sum += static_cast<S>(io::routing_tape_writer(tape).to_bytes().size());
  sum += static_cast<S>(io::read_routing_tape(io::SafetensorsFile::from_bytes(io::routing_tape_writer(tape).to_bytes())).size());
  ExpertUsage usage;
  sum += calibrate(layer, x, usage, ws).sum();
  const std::vector<Index> kept = select_by_usage(usage, 2, PruneCriterion::saliency);
  sum += prune_experts(layer, kept).forward(x, ws).sum();
  sum += static_cast<S>(select_by_reconstruction(layer, x, 2, 6).loss);
  return sum + static_cast<S>(parameter_count(layer));
}

/// Experts on disk: a sharded save, an on-demand layer over it (LRU and frequency-weighted
/// LRU), forward and backward. Analysed, never run: the path is a placeholder.
template <class S, class Policy>
S on_demand(const MixtralMoE<S>& memory, const std::string& folder) {
  (void)io::save_layer_sharded(folder, memory, "mlp.", io::Family::mixtral);
  auto source = std::make_shared<const io::SwiGLUExpertSource<S>>(io::LazyCheckpoint::open(folder), "mlp.",
                                                                  memory.num_experts(), io::SwiGLUExpertNames::mixtral());
  store::OnDemandSwiGLU<S> bank(source->num_experts(), source->d_model(), source->d_ff(), source->bank_names());
  using Executor = store::OnDemandExecutor<io::SwiGLUExpertSource<S>, Policy>;
  const MoELayer<store::OnDemandSwiGLU<S>, SoftmaxTopKRouter<S>, WeightedSumCombiner<S>, xsimd::default_arch, Executor>
      layer(std::move(bank), memory.router(), {}, {}, Executor(source, 2 * source->expert_bytes()));
  const RowMatrix<S> x = RowMatrix<S>::Random(8, memory.input_dim());
  Workspace<S> ws;
  ForwardContext ctx;
  ctx.mode = Mode::training;
  const RowMatrix<S> y = layer.forward(x, ws, ctx);
  auto grads = layer.make_gradients();
  const RowMatrix<S> dx = layer.backward(y, ws, grads, LossWeights<S>{});
  return y.sum() + dx.sum() + static_cast<S>(ws.expert_loads.bytes_read + layer.executor().cache().totals().hits);
}

/// Two on-demand layers sharing one budget, with the prefetch thread fed by the next layer's
/// router, in a LayerStack. Analysed, never run.
template <class S, class Policy>
S on_demand_stack(const MixtralMoE<S>& memory, const std::string& file) {
  using Source = io::SwiGLUExpertSource<S>;
  std::vector<std::shared_ptr<const Source>> sources;
  sources.reserve(2);
  for (int l = 0; l < 2; ++l)
    sources.push_back(std::make_shared<const Source>(io::LazyCheckpoint::open(file), "mlp.", memory.num_experts(),
                                                     io::SwiGLUExpertNames::mixtral()));
  const store::ExpertStore<Source, Policy> store(sources, 4 * sources[0]->expert_bytes(), {},
                                                 store::PrefetchOptions{true, true});
  using Layer = MoELayer<store::OnDemandSwiGLU<S>, SoftmaxTopKRouter<S>, WeightedSumCombiner<S>, xsimd::default_arch,
                         store::OnDemandExecutor<Source, Policy>>;
  std::vector<Layer> layers;
  layers.reserve(2);
  for (Index l = 0; l < 2; ++l)
    layers.emplace_back(store::OnDemandSwiGLU<S>(memory.num_experts(), memory.input_dim(), sources[0]->d_ff(),
                                                 sources[0]->bank_names()),
                        memory.router(), WeightedSumCombiner<S>{}, Capacity{}, store.executor(l));
  const LayerStack<Layer> stack(std::move(layers));
  std::vector<Workspace<S>> ws;
  const RowMatrix<S> x = RowMatrix<S>::Random(4, memory.input_dim());
  const RowMatrix<S> y = stack.forward(x, ws, {}, [&](Index l, const ConstMatrixRef<S>& h) {
    if (l + 1 < stack.num_layers()) store.prefetch(l + 1, store::predict_experts(stack.layer(l + 1).router(), h));
  });
  store.wait_prefetch_idle();
  return y.sum() + static_cast<S>(store.cache().prefetch_totals().used);
}

/// GGUF and the block formats: a file written with every quantized type, read back and
/// dequantized; the integer dot products' reference twins. Analysed, never run.
inline double gguf_and_blocks(const std::string& path) {
  std::vector<float> v(256, 0.5F);
  io::GgufWriter w;
  w.set("general.name", std::string("tidy"));
  w.add_tensor("q8", io::GgmlType::Q8_0, {256}, std::span<const float>(v));
  w.add_tensor("q4", io::GgmlType::Q4_0, {256}, std::span<const float>(v));
  w.add_tensor("q4k", io::GgmlType::Q4_K, {256}, std::span<const float>(v));
  w.save(path);
  const io::GgufFile f = io::GgufFile::open(path);
  double sum = f.to_matrix("q4k").sum() + static_cast<double>(f.to_float("q4")[0]) + static_cast<double>(f.raw("q8").size());
  std::vector<kernels::BlockQ8_0> a(8), b(8);
  kernels::quantize_row_q8_0(v.data(), a.data(), 256);
  kernels::quantize_row_q8_0(v.data(), b.data(), 256);
  sum += static_cast<double>(kernels::reference::vec_dot_q8_0_q8_0(256, a.data(), b.data()));
  return sum + static_cast<double>(f.get_or<std::uint32_t>("general.alignment", 32));
}

/// A GGUF layer: a quantized Mixtral layer saved under llama.cpp's names and loaded back.
/// Analysed, never run.
inline double gguf_layer(const std::string& path) {
  const MixtralMoE<float> layer(SwiGLUExperts<float>(2, 32, 32), SoftmaxTopKRouter<float>(2, 32, 1));
  io::save_gguf_layer(path, quantize_layer<kernels::BlockQ8_0>(layer), 0, io::GgufFamily::mixtral);
  const io::GgufFile f = io::GgufFile::open(path);
  const auto loaded = io::load_gguf_layer<QuantizedMixtralMoE<kernels::BlockQ8_0>>(f, 0);
  return static_cast<double>(io::describe_gguf_layer(f, 0).tensors.size()) + static_cast<double>(loaded.num_experts());
}

/// The quantized products on every path this build has, their twin, the three quantized banks'
/// forwards, a quantized layer and the quantized on-demand source. Analysed, never run.
template <class Block>
inline double quantized(const std::string& dir) {
  const RowMatrix<float> w = RowMatrix<float>::Ones(20, 64), a = RowMatrix<float>::Ones(3, 64);
  const auto q = kernels::QuantMatrix<Block>::quantize(w);
  RowMatrix<float> c(3, 20), want(3, 20);
  for (const auto p : {kernels::QuantPath::scalar, kernels::QuantPath::avx2, kernels::QuantPath::avxvnni,
                       kernels::QuantPath::avx512vnni})
    if (kernels::quant_path_available(p)) kernels::quant_gemm_on(p, c, a, q);
  kernels::quant_gemm(c, a, q);
  const auto blocks = q.to_blocks();
  kernels::reference::quant_gemm<Block>(want, a, blocks.data());
  double sum = static_cast<double>(c.sum() + want.sum() + q.dequantize().sum());
  RowMatrix<float> x = RowMatrix<float>::Ones(2, 32), h(2, 96), y(2, 32);
  const auto swiglu = QuantizedSwiGLUExperts<Block>::quantize(SwiGLUExperts<float>(2, 32, 32));
  swiglu.forward(1, x, h, y);
  sum += static_cast<double>(y.sum() + swiglu.dequantize().gate_up().sum());
  const auto gpt = QuantizedGptOssExperts<Block>::quantize(GptOssExperts<float>(2, 32, 32));
  gpt.forward(0, x, h, y);
  sum += static_cast<double>(y.sum());
  const auto ffn = QuantizedFFNExperts<Block, Activation::silu>::quantize(FFNExperts<float, Activation::silu>(2, 32, 32));
  RowMatrix<float> h2(2, 64);
  ffn.forward(0, x, h2, y);
  sum += static_cast<double>(y.sum());
  const auto layer = quantize_layer<Block>(Qwen2MoE<float>(SwiGLUExperts<float>(2, 32, 32), SoftmaxTopKRouter<float>(2, 32, 1),
                                                           SharedExpertCombiner<SwiGLUExperts<float>, SharedGate::sigmoid>(
                                                               SwiGLUExperts<float>(1, 32, 32))));
  Workspace<float> ws;
  sum += static_cast<double>(layer.forward(x, ws).sum());
  kernels::prepare_quant_threads<Block>(nullptr);
  const io::QuantizedSwiGLUExpertSource<Block> source(io::LazyCheckpoint::open(dir), "", 2);
  auto resident = source.make_resident();
  sum += static_cast<double>(source.load(1, resident)) + static_cast<double>(source.expert_bytes());
  return sum;
}

template <class S>
double all_layers() {
  const Index E = 4, d = 8, ff = 6;
  double sum = 0;
  sum += static_cast<double>(exercise(MixtralMoE<S>(SwiGLUExperts<S>(E, d, ff), SoftmaxTopKRouter<S>(E, d, 2)), 16));
  sum += static_cast<double>(exercise(
      Qwen2MoE<S>(SwiGLUExperts<S>(E, d, ff), SoftmaxTopKRouter<S>(E, d, 2),
                  SharedExpertCombiner<SwiGLUExperts<S>, SharedGate::sigmoid>(SwiGLUExperts<S>(1, d, ff))),
      16));
  SigmoidGroupLimited<S> gating;
  gating.n_group = 2;
  gating.topk_group = 1;
  gating.correction_bias = Vector<S>::Zero(E);
  sum += static_cast<double>(exercise(
      DeepSeekV3MoE<S>(SwiGLUExperts<S>(E, d, ff), GroupLimitedRouter<S>(RowMatrix<S>::Zero(E, d), 2, gating),
                       SharedExpertCombiner<SwiGLUExperts<S>, SharedGate::none>(SwiGLUExperts<S>(1, d, ff))),
      16));
  sum += static_cast<double>(exercise(GptOssMoE<S>(GptOssExperts<S>(E, d, ff), TopKSoftmaxRouter<S>(E, d, 2)), 16));
  sum += static_cast<double>(exercise(SwitchMoE<S>(FFNExperts<S, Activation::relu>(E, d, ff), SoftmaxTopKRouter<S>(E, d, 1),
                                                   {}, Capacity::from_factor(1.25)),
                                      16));
  sum += static_cast<double>(exercise(SoftMoE<S>(FFNExperts<S, Activation::gelu_erf>(E, d, ff), SoftRouter<S>(E, d, 2)), 16, 8));
  sum += static_cast<double>(exercise(NoisyTopKMoE<S>(SwiGLUExperts<S>(E, d, ff), NoisyTopKRouter<S>(E, d, 2)), 16));
  sum += static_cast<double>(exercise(ExpertChoiceMoE<S>(SwiGLUExperts<S>(E, d, ff), ExpertChoiceRouter<S>(E, d, 1.0)), 16));
  sum += static_cast<double>(exercise(HashMoE<S>(SwiGLUExperts<S>(E, d, ff), HashRouter<S>::balanced(7, E, d, 1)), 16));
  sum += static_cast<double>(exercise(MoELayer<SwiGLUExperts<S>, Jittered<SoftmaxTopKRouter<S>>, WeightedSumCombiner<S>>(
                                          SwiGLUExperts<S>(E, d, ff), Jittered(SoftmaxTopKRouter<S>(E, d, 2), 0.01)),
                                      16));
  sum += static_cast<double>(
      exercise(MoELayer<SwiGLUExperts<S>, ExpertDropout<TopKSoftmaxRouter<S>>, WeightedSumCombiner<S>>(
                   SwiGLUExperts<S>(E, d, ff), ExpertDropout(TopKSoftmaxRouter<S>(E, d, 2), 0.25)),
               16));
  sum += static_cast<double>(
      exercise(MoELayer<PositionScaledExperts<SwiGLUExperts<S>>, SoftmaxTopKRouter<S>, WeightedSumCombiner<S>>(
                   PositionScaledExperts(SwiGLUExperts<S>(E, d, ff), 0.5), SoftmaxTopKRouter<S>(E, d, 2)),
               16, 8));
  sum += static_cast<double>(
      exercise(MoELayer<SwiGLUExperts<S>, ModalitySoftmaxTopKRouter<S>, WeightedSumCombiner<S>>(
                   SwiGLUExperts<S>(E, d, ff), ModalitySoftmaxTopKRouter<S>(E, d, 1, {0, 1, -1, -1}, 2)),
               16));
  sum += static_cast<double>(
      exercise(MoELayer<SwiGLUExperts<S>, DomainAwareSoftmaxTopKRouter<S>, WeightedSumCombiner<S>>(
                   SwiGLUExperts<S>(E, d, ff), DomainAwareSoftmaxTopKRouter<S>(E, d, 2, 2)),
               16));
  sum += static_cast<double>(
      exercise(MoELayer<SwiGLUExperts<S>, TaskAwareSoftmaxTopKRouter<S>, WeightedSumCombiner<S>>(
                   SwiGLUExperts<S>(E, d, ff), TaskAwareSoftmaxTopKRouter<S>(E, d, 2, 2)),
               16));
  sum += static_cast<double>(exercise(TopPMoE<S>(SwiGLUExperts<S>(E, d, ff), TopPRouter<S>(E, d, 3, TopP<S>{S(0.7)})), 16));
  sum += static_cast<double>(
      exercise(ThresholdSkipMoE<S>(SwiGLUExperts<S>(E, d, ff), ThresholdSkipRouter<S>(E, d, 3, ThresholdSkip<S>{S(0.4)})), 16));
  sum += static_cast<double>(exercise(HierarchicalMoE<S>(SwiGLUExperts<S>(E, d, ff), HierarchicalRouter<S>(2, 2, d, 2, 1)), 16));
  {
    LinearExperts<S> base(1, d, d);
    base.set_trainable(false);
    sum += static_cast<double>(exercise(
        LowRankMoE<S>(LowRankExperts<S>(E, d, 2, S(2)), SoftmaxTopKRouter<S>(E, d, 2),
                      SharedExpertCombiner<LinearExperts<S>, SharedGate::none>(std::move(base))),
        16));
  }
  sum += static_cast<double>(
      exercise(ConvMoE<S>(CausalConvExperts<SwiGLUExperts<S>>(SwiGLUExperts<S>(E, d, ff), 3), SoftmaxTopKRouter<S>(E, d, 2)),
               16, 8));
  sum += static_cast<double>(
      exercise(MultiHeadMoE<S>(MixtralMoE<S>(SwiGLUExperts<S>(E, d / 2, ff), SoftmaxTopKRouter<S>(E, d / 2, 2)), 2), 16));
  sum += static_cast<double>(exercise(RecurrentMoE<S>(GRUExperts<S>(E, d, d), SequenceSoftmaxTopKRouter<S>(E, d, 2)), 16, 8));
  sum += static_cast<double>(routing_losses<S>());
  sum += static_cast<double>(deployment_tools<S>());
  sum += gguf_and_blocks("tidy.gguf");
  sum += gguf_layer("tidy_layer.gguf");
  sum += quantized<kernels::BlockQ8_0>("q_layer") + quantized<kernels::BlockQ4_0>("q_layer") +
         quantized<kernels::BlockQ4_K>("q_layer");
  {
    const MixtralMoE<S> memory(SwiGLUExperts<S>(E, d, ff), SoftmaxTopKRouter<S>(E, d, 2));
    sum += static_cast<double>(on_demand<S, store::LruPolicy>(memory, "on_demand_layer"));
    sum += static_cast<double>(on_demand<S, store::FrequencyLruPolicy>(memory, "on_demand_layer"));
    sum += static_cast<double>(on_demand_stack<S, store::LruPolicy>(memory, "on_demand_layer.safetensors"));
  }
  return sum;
}

// Each scalar type in its own unit, so scripts/tidy.sh analyses the two halves side by side:
// tests/CMakeLists.txt copies this file to <build>/tests/tidy/all_headers_double.cpp and
// compiles the copy with MOE_TIDY_DOUBLE.
#ifdef MOE_TIDY_DOUBLE
template double all_layers<double>();
#else
template double all_layers<float>();
#endif

}  // namespace moe::tidy

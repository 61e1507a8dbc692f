// moe-compare's registry: every routing policy it compares, as a factory of trainable
// blocks (blocks.hpp), the baselines last. docs/compare.md lists them with their settings.
#ifndef MOE_EXAMPLES_COMPARE_POLICIES_HPP
#define MOE_EXAMPLES_COMPARE_POLICIES_HPP

#include "blocks.hpp"

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace moe::examples::compare {

template <class Layer>
std::unique_ptr<Block> block(Layer layer, const BlockConfig& c, LossWeights<S> w, double flops, bool frozen = false,
                             double shared_flops = 0.0) {
  return std::make_unique<LayerBlock<Layer>>(std::move(layer), w, c.lr, flops, frozen, shared_flops);
}

inline LossWeights<S> aux_and_z(const BlockConfig& c) {
  return {.aux = static_cast<S>(c.aux), .z = static_cast<S>(c.z)};
}

/// Every policy moe-compare knows, the baselines last. Each gets the same experts (seeded by
/// BlockConfig::seed) and, where it has one, the same router projection.
inline std::vector<Policy> policies() {
  std::vector<Policy> list;
  const auto swiglu = [](const BlockConfig& c) { return swiglu_flops(c.d, c.d_ff); };
  const auto topk_softmax = [swiglu](bool renormalize) {
    return [=](const BlockConfig& c) {
      return block(MixtralMoE<S>(make_experts(c), SoftmaxTopKRouter<S>(make_router_weight(c), c.top_k,
                                                                       SoftmaxTopK<S>{renormalize})),
                   c, aux_and_z(c), swiglu(c));
    };
  };
  list.push_back({"softmax-topk", "softmax, top-k, renormalised (Mixtral)", topk_softmax(true)});
  list.push_back({"softmax-topk-raw", "softmax, top-k, not renormalised (OLMoE, Qwen)", topk_softmax(false)});
  list.push_back({"topk-softmax", "top-k of logits, softmax over k (GPT-OSS)", [=](const BlockConfig& c) {
                    return block(MoELayer<SwiGLUExperts<S>, TopKSoftmaxRouter<S>, WeightedSumCombiner<S>>(
                                     make_experts(c), TopKSoftmaxRouter<S>(make_router_weight(c), c.top_k)),
                                 c, aux_and_z(c), swiglu(c));
                  }});
  list.push_back({"sigmoid-group", "sigmoid, group-limited, bias balancing, no aux loss (DeepSeek-V3)",
                  [=](const BlockConfig& c) {
                    SigmoidGroupLimited<S> g;
                    g.n_group = c.experts % 4 == 0 ? 4 : 1;
                    g.topk_group = g.n_group == 4 ? 2 : 1;
                    g.routed_scaling_factor = 1;
                    g.correction_bias = Vector<S>::Zero(c.experts);
                    if (c.top_k > g.topk_group * (c.experts / g.n_group)) g.topk_group = g.n_group;
                    return block(MoELayer<SwiGLUExperts<S>, GroupLimitedRouter<S>, WeightedSumCombiner<S>>(
                                     make_experts(c), GroupLimitedRouter<S>(make_router_weight(c), c.top_k, g)),
                                 c, {.z = static_cast<S>(c.z)}, swiglu(c));
                  }});
  list.push_back({"switch-cap1.25", "top-1 softmax, capacity factor 1.25 (Switch)", [=](const BlockConfig& c) {
                    return block(MixtralMoE<S>(make_experts(c),
                                               SoftmaxTopKRouter<S>(make_router_weight(c), 1, SoftmaxTopK<S>{false}),
                                               WeightedSumCombiner<S>{}, Capacity::from_factor(1.25)),
                                 c, aux_and_z(c), swiglu(c));
                  }});
  list.push_back({"switch-cap1.25-bpr", "top-1 softmax, capacity 1.25, batch-prioritised (V-MoE)",
                  [=](const BlockConfig& c) {
                    return block(MixtralMoE<S>(make_experts(c),
                                               SoftmaxTopKRouter<S>(make_router_weight(c), 1, SoftmaxTopK<S>{false}),
                                               WeightedSumCombiner<S>{},
                                               Capacity::from_factor(1.25, 0, Priority::batch_prioritized)),
                                 c, aux_and_z(c), swiglu(c));
                  }});
  list.push_back({"switch-cap1.25-reroute", "top-1 softmax, capacity 1.25, overflow rerouted to the next expert with room",
                  [=](const BlockConfig& c) {
                    return block(MixtralMoE<S>(make_experts(c),
                                               SoftmaxTopKRouter<S>(make_router_weight(c), 1, SoftmaxTopK<S>{false}),
                                               WeightedSumCombiner<S>{}, Capacity::from_factor(1.25).rerouted(c.experts - 1)),
                                 c, aux_and_z(c), swiglu(c));
                  }});
  list.push_back({"noisy-topk", "noisy top-k: learned noise in training, none in inference (Shazeer 2017)", [=](const BlockConfig& c) {
                    RowMatrix<S> noise(c.experts, c.d);
                    fill_normal(noise, c.seed * 1000 + 4, 0.1 / std::sqrt(double(c.d)));
                    return block(NoisyTopKMoE<S>(make_experts(c), NoisyTopKRouter<S>(make_router_weight(c), noise, c.top_k)),
                                 c, aux_and_z(c), swiglu(c));
                  }});
  list.push_back({"expert-choice", "each expert takes its T*k/E best tokens, no aux loss (Zhou 2022)",
                  [=](const BlockConfig& c) {
                    return block(ExpertChoiceMoE<S>(make_experts(c),
                                                    ExpertChoiceRouter<S>(make_router_weight(c), double(c.top_k))),
                                 c, {.z = static_cast<S>(c.z)}, swiglu(c));
                  }});
  list.push_back({"hash", "expert = balanced random table[token id] (Roller 2021)", [=](const BlockConfig& c) {
                    return block(HashMoE<S>(make_experts(c), HashRouter<S>::balanced(c.vocab, c.experts, c.d, c.seed)),
                                 c, {}, swiglu(c));
                  }});
  list.push_back({"modality", "softmax top-k over the token's modality experts + shared ones (MoMa)",
                  [=](const BlockConfig& c) {
                    // A quarter of the experts (at least one) cross-modal, the rest dealt out to
                    // the modalities in turn; all cross-modal if a modality would see fewer than k.
                    const Index shared = std::max<Index>(1, c.experts / 4);
                    std::vector<Index> table(static_cast<std::size_t>(c.experts), -1);
                    for (Index e = 0; e < c.experts - shared; ++e) table[static_cast<std::size_t>(e)] = e % num_modalities;
                    if ((c.experts - shared) / num_modalities + shared < c.top_k) std::fill(table.begin(), table.end(), -1);
                    return block(ModalityMoE<S>(make_experts(c),
                                                ModalitySoftmaxTopKRouter<S>(
                                                    SoftmaxTopKRouter<S>(make_router_weight(c), c.top_k), table, num_modalities)),
                                 c, aux_and_z(c), swiglu(c));
                  }});
  list.push_back({"domain-aware", "logits + domain classifier probs x affinities (DEMix-style)", [=](const BlockConfig& c) {
                    RowMatrix<S> classifier(num_domains, c.d), affinity(num_domains, c.experts);
                    fill_normal(classifier, c.seed * 1000 + 7, 0.1 / std::sqrt(double(c.d)));
                    fill_normal(affinity, c.seed * 1000 + 8, 1.0);
                    return block(DomainAwareMoE<S>(make_experts(c), DomainAwareSoftmaxTopKRouter<S>(
                                                                          SoftmaxTopKRouter<S>(make_router_weight(c), c.top_k),
                                                                          std::move(classifier), std::move(affinity))),
                                 c, aux_and_z(c), swiglu(c));
                  }});
  list.push_back({"task-aware", "(1-s) x Wb + s x Wt per token's task, softmax top-k", [=](const BlockConfig& c) {
                    std::vector<RowMatrix<S>> task_gates;
                    for (Index j = 0; j < num_tasks; ++j) {
                      RowMatrix<S> g(c.experts, c.d);
                      fill_normal(g, c.seed * 1000 + 10 + std::uint64_t(j), 0.1 / std::sqrt(double(c.d)));
                      task_gates.push_back(std::move(g));
                    }
                    Vector<S> sensitivity(num_tasks);
                    fill_normal(sensitivity, c.seed * 1000 + 9, 1.0);
                    return block(TaskAwareMoE<S>(make_experts(c), TaskAwareSoftmaxTopKRouter<S>(
                                                                      SoftmaxTopKRouter<S>(make_router_weight(c), c.top_k),
                                                                      std::move(task_gates), std::move(sensitivity))),
                                 c, aux_and_z(c), swiglu(c));
                  }});
  list.push_back({"hierarchical", "top-k/2 of E/4 groups, then top-2 in each (Shazeer 2017)", [=](const BlockConfig& c) {
                    const Index b = c.experts % 4 == 0 ? 4 : c.experts, a = c.experts / b;
                    const Index k2 = std::min<Index>(c.top_k, std::min<Index>(2, b));
                    const Index k1 = std::max<Index>(1, std::min<Index>(a, c.top_k / k2));
                    RowMatrix<S> primary(a, c.d);
                    fill_normal(primary, c.seed * 1000 + 11, 0.1 / std::sqrt(double(c.d)));
                    return block(HierarchicalMoE<S>(make_experts(c), HierarchicalRouter<S>(std::move(primary),
                                                                                          make_router_weight(c), k1, k2)),
                                 c, aux_and_z(c), swiglu(c));
                  }});
  // Adaptive routing: k is the cap; a token takes 1..k experts.
  list.push_back({"top-p", "fewest experts reaching p >= 0.5, at most k, raw gates (Huang 2024)", [=](const BlockConfig& c) {
                    return block(TopPMoE<S>(make_experts(c), TopPRouter<S>(make_router_weight(c), c.top_k, TopP<S>{S(0.5)})),
                                 c, aux_and_z(c), swiglu(c));
                  }});
  list.push_back({"threshold-skip", "top-k, drop p < 0.5 p_first, renormalised (NAEE, Lu 2024)",
                  [=](const BlockConfig& c) {
                    return block(ThresholdSkipMoE<S>(make_experts(c), ThresholdSkipRouter<S>(make_router_weight(c), c.top_k,
                                                                                             ThresholdSkip<S>{S(0.5)})),
                                 c, aux_and_z(c), swiglu(c));
                  }});
  list.push_back({"multi-head", "4 heads: each d/4 sub-token routed alone, softmax top-k, experts d/4->ff->d/4 (MH-MoE)",
                  [=](const BlockConfig& c) {
                    // Experts d/h -> ff -> d/h: h sub-tokens cost what one token costs under top-k
                    // over full-width experts; the two d x d projections come on top.
                    const Index h = c.d % 4 == 0 ? 4 : 1, sub = c.d / h;
                    RowMatrix<S> head(c.d, c.d), merge(c.d, c.d);
                    fill_normal(head, c.seed * 1000 + 13, 1.0 / std::sqrt(double(c.d)));
                    fill_normal(merge, c.seed * 1000 + 14, 1.0 / std::sqrt(double(c.d)));
                    return block(MultiHeadMoE<S>(MixtralMoE<S>(make_experts(c, sub, c.d_ff, c.experts),
                                                               SoftmaxTopKRouter<S>(make_router_weight(c, sub, c.experts), c.top_k)),
                                                 h, std::move(head), std::move(merge)),
                                 c, aux_and_z(c), swiglu_flops(sub, c.d_ff));
                  }});
  list.push_back({"conv-experts", "softmax top-k; causal depthwise conv (4 taps) per expert, then SwiGLU",
                  [=](const BlockConfig& c) {
                    CausalConvExperts<SwiGLUExperts<S>> experts(make_experts(c), 4);
                    fill_normal(experts.kernels(), c.seed * 1000 + 12, 0.5);
                    return block(ConvMoE<S>(std::move(experts), SoftmaxTopKRouter<S>(make_router_weight(c), c.top_k)), c,
                                 aux_and_z(c), swiglu(c) + 2.0 * 4.0 * double(c.d));
                  }});
  list.push_back({"low-rank", "softmax top-k over rank-8 adapters beside a shared d x d linear map (MoLoRA-style)",
                  [=](const BlockConfig& c) {
                    // Trained from scratch here (the base too), not a frozen pretrained base: the
                    // block is linear, so it shows what routing adds to a shared linear map.
                    const Index r = std::min<Index>(8, c.d);
                    LinearExperts<S> base(1, c.d, c.d);
                    fill_normal(base.weights(), c.seed * 1000 + 17, 1.0 / std::sqrt(double(c.d)));
                    LowRankExperts<S> adapters(c.experts, c.d, r, S(2));
                    fill_normal(adapters.a(), c.seed * 1000 + 18, 1.0 / std::sqrt(double(c.d)));
                    fill_normal(adapters.b(), c.seed * 1000 + 19, 0.1 / std::sqrt(double(r)));
                    // An adapter row: x A^T (d -> r), then B (r -> d); the base: one d x d product.
                    return block(LowRankMoE<S>(std::move(adapters), SoftmaxTopKRouter<S>(make_router_weight(c), c.top_k),
                                               SharedExpertCombiner<LinearExperts<S>, SharedGate::none>(std::move(base))),
                                 c, aux_and_z(c), 4.0 * double(c.d) * double(r), false, 2.0 * double(c.d) * double(c.d));
                  }});
  list.push_back({"recurrent", "softmax top-k per sequence on its mean input; GRU experts (hidden d) over each sequence",
                  [=](const BlockConfig& c) {
                    GRUExperts<S> experts(c.experts, c.d, c.d);
                    fill_normal(experts.weights_ih(), c.seed * 1000 + 15, 1.0 / std::sqrt(double(c.d)));
                    fill_normal(experts.weights_hh(), c.seed * 1000 + 16, 1.0 / std::sqrt(double(c.d)));
                    // r, z, n: three [d, d] input and three [d, d] recurrent products per row.
                    return block(RecurrentMoE<S>(std::move(experts),
                                                 SequenceSoftmaxTopKRouter<S>(SoftmaxTopKRouter<S>(make_router_weight(c), c.top_k))),
                                 c, aux_and_z(c), 12.0 * double(c.d) * double(c.d));
                  }});
  list.push_back({"soft-moe", "every slot a softmax mix of its sequence (Puigcerver 2023)", [=](const BlockConfig& c) {
                    // Slots per expert so that the experts process as many rows as top-k does.
                    const Index slots = std::max<Index>(1, c.sequence_length * c.top_k / c.experts);
                    RowMatrix<S> phi(c.d, c.experts * slots);
                    fill_normal(phi, c.seed * 1000 + 6, 1.0 / std::sqrt(double(c.d)));
                    return block(MoELayer<SwiGLUExperts<S>, SoftRouter<S>, SoftCombiner<S>>(
                                     make_experts(c), SoftRouter<S>(std::move(phi), slots)),
                                 c, {}, swiglu(c));
                  }});
  // Baselines.
  list.push_back({"dense", "one SwiGLU FFN of width k x ff: the active expert FLOPs of top-k", [=](const BlockConfig& c) {
                    // One expert whose single-row softmax gives gate 1 on every token.
                    return block(MixtralMoE<S>(make_experts(c, c.d, c.top_k * c.d_ff, 1),
                                               SoftmaxTopKRouter<S>(make_router_weight(c, c.d, 1), 1)),
                                 c, {}, swiglu_flops(c.d, c.top_k * c.d_ff));
                  }, true});
  list.push_back({"frozen-random", "softmax-topk with its random router frozen at initialisation", [=](const BlockConfig& c) {
                    // The router's gradients are zeroed before each step: Adam then leaves it as it is.
                    RowMatrix<S> g(c.experts, c.d);
                    fill_normal(g, c.seed * 1000 + 3, 1.0 / std::sqrt(double(c.d)));
                    return block(MixtralMoE<S>(make_experts(c), SoftmaxTopKRouter<S>(std::move(g), c.top_k)), c, {},
                                 swiglu(c), /*frozen=*/true);
                  }, true});
  return list;
}

}  // namespace moe::examples::compare

#endif  // MOE_EXAMPLES_COMPARE_POLICIES_HPP

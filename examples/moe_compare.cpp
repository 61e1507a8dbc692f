// moe-compare: every router policy on one workload, one table.
//
//   moe-compare [--tokens T] [--d-model D] [--d-ff F] [--experts E] [--top-k K]
//               [--routers a,b,...] [--reps R] [--seed S] [--json [FILE]] [--list]
//
// The default workload is built in: T = 4096 tokens of width 256 drawn from 32 Gaussian
// clusters (so routing has structure to find), 16 SwiGLU experts of width 512, top-2.
// Every router gets the same experts, the same input and, where it has one, the same router
// projection, so differences in the table come from the routing rule alone.
#include <moe/moe.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "example_util.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using S = float;

struct Workload {
  Index tokens = 4096;
  Index d_model = 256;
  Index d_ff = 512;
  Index experts = 16;
  Index top_k = 2;
  int reps = 3;
  std::uint64_t seed = 1;
};

struct Row {
  std::string router;
  std::string rule;
  double tokens_per_s = 0;
  double load_cv = 0;        ///< population std / mean of the per-expert kept load
  double load_max_mean = 0;  ///< max / mean of the per-expert kept load
  double dropped = 0;        ///< fraction of tokens that no expert processed
  double rows_per_token = 0; ///< expert rows computed per token (compute, relative to dense)
  /// Experts a token ran through, mean over tokens (LayerStatistics); none for Soft MoE,
  /// whose every token mixes every slot.
  std::optional<double> experts_per_token;
  std::optional<double> aux_loss;
  std::optional<double> z_loss;
};

/// Inputs: tokens near one of 32 cluster centres.
RowMatrix<S> make_input(const Workload& w) {
  RowMatrix<S> centres(32, w.d_model), x(w.tokens, w.d_model);
  moe::examples::fill_normal(centres, w.seed + 100, 1.0);
  moe::examples::fill_normal(x, w.seed + 101, 0.3);
  for (Index t = 0; t < w.tokens; ++t) x.row(t) += centres.row((t * 7919) % 32);
  return x;
}

moe::SwiGLUExperts<S> make_experts(const Workload& w) {
  moe::SwiGLUExperts<S> e(w.experts, w.d_model, w.d_ff);
  moe::examples::fill_normal(e.gate_up(), w.seed + 1, 1.0 / std::sqrt(double(w.d_model)));
  moe::examples::fill_normal(e.down(), w.seed + 2, 1.0 / std::sqrt(double(w.d_ff)));
  return e;
}

RowMatrix<S> make_router_weight(const Workload& w) {
  RowMatrix<S> g(w.experts, w.d_model);
  moe::examples::fill_normal(g, w.seed + 3, 1.0 / std::sqrt(double(w.d_model)));
  return g;
}

/// Runs a layer reps times (after one warm-up call) and measures the table's columns.
template <class Layer>
Row measure(const std::string& name, const std::string& rule, const Layer& layer, const RowMatrix<S>& x,
            const Workload& w, const moe::ForwardContext& ctx, bool has_logits = true) {
  typename Layer::workspace_type layer_ws;
  RowMatrix<S> y(x.rows(), layer.output_dim());
  layer.forward(x, y, layer_ws, ctx);
  const auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < w.reps; ++r) layer.forward(x, y, layer_ws, ctx);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // A multi-head layer routes sub-tokens through its inner layer: the statistics are its.
  const moe::Workspace<S>& ws = [&]() -> const moe::Workspace<S>& {
    if constexpr (requires { layer_ws.inner; }) return layer_ws.inner;
    else return layer_ws;
  }();
  const Index units = ws.routing.num_tokens;  // tokens, or sub-tokens

  Row row;
  row.router = name;
  row.rule = rule;
  row.tokens_per_s = double(x.rows()) * w.reps / seconds;
  const auto& load = ws.stats.expert_load;
  double mean = 0, var = 0, max = 0;
  for (Index l : load) mean += double(l) / double(load.size());
  for (Index l : load) {
    var += (double(l) - mean) * (double(l) - mean) / double(load.size());
    max = std::max(max, double(l));
  }
  row.load_cv = mean > 0 ? std::sqrt(var) / mean : 0.0;
  row.load_max_mean = mean > 0 ? max / mean : 0.0;
  row.rows_per_token = double(ws.plan.rows()) / double(x.rows());
  if constexpr (requires { layer.inner(); }) {
    row.experts_per_token = ws.stats.mean_experts_per_token();  // per sub-token
    std::vector<bool> served(static_cast<size_t>(units), false);
    for (Index t : ws.plan.token) served[static_cast<size_t>(t)] = true;
    row.dropped = double(std::count(served.begin(), served.end(), false)) / double(units);
  } else if constexpr (moe::router_traits<typename Layer::router_type>::is_dense) {
    row.dropped = 0.0;  // every token receives a mixture of every slot
  } else {
    row.experts_per_token = ws.stats.mean_experts_per_token();
    std::vector<bool> served(static_cast<size_t>(units), false);
    for (Index t : ws.plan.token) served[static_cast<size_t>(t)] = true;
    row.dropped = double(std::count(served.begin(), served.end(), false)) / double(units);
  }
  if (has_logits) {
    row.aux_loss = double(moe::LoadBalancingLoss{moe::LoadBalancingLoss::Normalization::unit}(ws.routing));
    row.z_loss = double(moe::RouterZLoss{}(ws.routing));
  }
  return row;
}

struct RouterEntry {
  std::string name;
  std::string rule;
  std::function<Row(const Workload&, const RowMatrix<S>&, const std::string&, const std::string&)> run;
};

std::vector<RouterEntry> routers() {
  std::vector<RouterEntry> list;
  const auto topk_softmax = [](bool renormalize) {
    return [renormalize](const Workload& w, const RowMatrix<S>& x, const std::string& name, const std::string& rule) {
      const moe::MixtralMoE<S> layer(make_experts(w), moe::SoftmaxTopKRouter<S>(make_router_weight(w), w.top_k,
                                                                                moe::SoftmaxTopK<S>{renormalize}));
      return measure(name, rule, layer, x, w, {});
    };
  };
  list.push_back({"softmax-topk", "softmax, top-k, renormalised (Mixtral)", topk_softmax(true)});
  list.push_back({"softmax-topk-raw", "softmax, top-k, not renormalised (OLMoE, Qwen)", topk_softmax(false)});
  list.push_back({"topk-softmax", "top-k of logits, softmax over k (GPT-OSS)",
                  [](const Workload& w, const RowMatrix<S>& x, const std::string& name, const std::string& rule) {
                    const moe::MoELayer<moe::SwiGLUExperts<S>, moe::TopKSoftmaxRouter<S>, moe::WeightedSumCombiner<S>>
                        layer(make_experts(w), moe::TopKSoftmaxRouter<S>(make_router_weight(w), w.top_k));
                    return measure(name, rule, layer, x, w, {});
                  }});
  list.push_back({"sigmoid-group", "sigmoid, group-limited, bias (DeepSeek-V3)",
                  [](const Workload& w, const RowMatrix<S>& x, const std::string& name, const std::string& rule) {
                    moe::SigmoidGroupLimited<S> g;
                    g.n_group = w.experts % 4 == 0 ? 4 : 1;
                    g.topk_group = g.n_group == 4 ? 2 : 1;
                    g.routed_scaling_factor = 1;
                    g.correction_bias = moe::Vector<S>::Zero(w.experts);
                    if (w.top_k > g.topk_group * (w.experts / g.n_group)) g.topk_group = g.n_group;
                    const moe::MoELayer<moe::SwiGLUExperts<S>, moe::GroupLimitedRouter<S>, moe::WeightedSumCombiner<S>>
                        layer(make_experts(w), moe::GroupLimitedRouter<S>(make_router_weight(w), w.top_k, g));
                    return measure(name, rule, layer, x, w, {});
                  }});
  list.push_back({"switch-cap1.25", "top-1 softmax, capacity factor 1.25 (Switch)",
                  [](const Workload& w, const RowMatrix<S>& x, const std::string& name, const std::string& rule) {
                    const moe::MixtralMoE<S> layer(make_experts(w),
                                                   moe::SoftmaxTopKRouter<S>(make_router_weight(w), 1, moe::SoftmaxTopK<S>{false}),
                                                   moe::WeightedSumCombiner<S>{}, moe::Capacity::from_factor(1.25));
                    return measure(name, rule, layer, x, w, {});
                  }});
  list.push_back({"switch-cap1.25-bpr", "top-1 softmax, capacity 1.25, batch-prioritised (V-MoE)",
                  [](const Workload& w, const RowMatrix<S>& x, const std::string& name, const std::string& rule) {
                    const moe::MixtralMoE<S> layer(
                        make_experts(w), moe::SoftmaxTopKRouter<S>(make_router_weight(w), 1, moe::SoftmaxTopK<S>{false}),
                        moe::WeightedSumCombiner<S>{}, moe::Capacity::from_factor(1.25, 0, moe::Priority::batch_prioritized));
                    return measure(name, rule, layer, x, w, {});
                  }});
  list.push_back({"noisy-topk", "noisy top-k, training-mode noise (Shazeer 2017)",
                  [](const Workload& w, const RowMatrix<S>& x, const std::string& name, const std::string& rule) {
                    RowMatrix<S> noise(w.experts, w.d_model);
                    moe::examples::fill_normal(noise, w.seed + 4, 1.0 / std::sqrt(double(w.d_model)));
                    const moe::NoisyTopKMoE<S> layer(make_experts(w),
                                                     moe::NoisyTopKRouter<S>(make_router_weight(w), noise, w.top_k));
                    moe::ForwardContext ctx;
                    ctx.mode = moe::Mode::training;
                    ctx.seed = w.seed;
                    return measure(name, rule, layer, x, w, ctx);
                  }});
  list.push_back({"expert-choice", "each expert takes its T*k/E best tokens (Zhou 2022)",
                  [](const Workload& w, const RowMatrix<S>& x, const std::string& name, const std::string& rule) {
                    const moe::ExpertChoiceMoE<S> layer(
                        make_experts(w), moe::ExpertChoiceRouter<S>(make_router_weight(w), double(w.top_k)));
                    return measure(name, rule, layer, x, w, {});
                  }});
  list.push_back({"hash", "expert = balanced random table[token id] (Roller 2021)",
                  [](const Workload& w, const RowMatrix<S>& x, const std::string& name, const std::string& rule) {
                    const moe::Index vocab = 32000;
                    const moe::HashMoE<S> layer(make_experts(w),
                                                moe::HashRouter<S>::balanced(vocab, w.experts, w.d_model, w.seed));
                    std::vector<std::int64_t> ids(static_cast<size_t>(x.rows()));
                    const moe::CounterRng rng(w.seed + 5, 0);
                    for (size_t t = 0; t < ids.size(); ++t) ids[t] = std::int64_t(rng.bits(t, 0) % std::uint64_t(vocab));
                    moe::ForwardContext ctx;
                    ctx.token_ids = ids;
                    return measure(name, rule, layer, x, w, ctx, /*has_logits=*/false);
                  }});
  list.push_back({"modality", "softmax top-k over the token's modality experts + shared ones (MoMa)",
                  [](const Workload& w, const RowMatrix<S>& x, const std::string& name, const std::string& rule) {
                    // Synthetic ids: three modalities, a token's is its input cluster mod 3. A
                    // quarter of the experts (at least one) are cross-modal, the rest dealt out
                    // to the modalities in turn; all cross-modal if a modality would see < k.
                    constexpr moe::Index M = 3;
                    const moe::Index shared = std::max<moe::Index>(1, w.experts / 4);
                    std::vector<moe::Index> table(static_cast<size_t>(w.experts), -1);
                    for (moe::Index e = 0; e < w.experts - shared; ++e) table[static_cast<size_t>(e)] = e % M;
                    if ((w.experts - shared) / M + shared < w.top_k) std::fill(table.begin(), table.end(), -1);
                    const moe::MoELayer<moe::SwiGLUExperts<S>, moe::ModalitySoftmaxTopKRouter<S>,
                                        moe::WeightedSumCombiner<S>>
                        layer(make_experts(w), moe::ModalitySoftmaxTopKRouter<S>(
                                                   moe::SoftmaxTopKRouter<S>(make_router_weight(w), w.top_k), table, M));
                    std::vector<std::int64_t> ids(static_cast<size_t>(x.rows()));
                    for (size_t t = 0; t < ids.size(); ++t) ids[t] = std::int64_t((t * 7919) % 32 % M);
                    moe::ForwardContext ctx;
                    ctx.modality_ids = ids;
                    return measure(name, rule, layer, x, w, ctx);
                  }});
  list.push_back({"domain-aware", "logits + domain classifier probs x affinities (DEMix-style)",
                  [](const Workload& w, const RowMatrix<S>& x, const std::string& name, const std::string& rule) {
                    constexpr moe::Index D = 4;
                    RowMatrix<S> classifier(D, w.d_model), affinity(D, w.experts);
                    moe::examples::fill_normal(classifier, w.seed + 7, 1.0 / std::sqrt(double(w.d_model)));
                    moe::examples::fill_normal(affinity, w.seed + 8, 1.0);
                    const moe::MoELayer<moe::SwiGLUExperts<S>, moe::DomainAwareSoftmaxTopKRouter<S>,
                                        moe::WeightedSumCombiner<S>>
                        layer(make_experts(w),
                              moe::DomainAwareSoftmaxTopKRouter<S>(moe::SoftmaxTopKRouter<S>(make_router_weight(w), w.top_k),
                                                                   std::move(classifier), std::move(affinity)));
                    return measure(name, rule, layer, x, w, {});
                  }});
  list.push_back({"task-aware", "(1-s) x Wb + s x Wt per token's task, softmax top-k (synthetic task ids)",
                  [](const Workload& w, const RowMatrix<S>& x, const std::string& name, const std::string& rule) {
                    // Synthetic ids: four tasks, a token's is its input cluster mod 4; random task
                    // routers, sensitivities N(0, 1).
                    constexpr moe::Index N = 4;
                    std::vector<RowMatrix<S>> task_gates;
                    for (moe::Index j = 0; j < N; ++j) {
                      RowMatrix<S> g(w.experts, w.d_model);
                      moe::examples::fill_normal(g, w.seed + 10 + std::uint64_t(j), 1.0 / std::sqrt(double(w.d_model)));
                      task_gates.push_back(std::move(g));
                    }
                    moe::Vector<S> sensitivity(N);
                    moe::examples::fill_normal(sensitivity, w.seed + 9, 1.0);
                    const moe::TaskAwareMoE<S> layer(
                        make_experts(w), moe::TaskAwareSoftmaxTopKRouter<S>(
                                             moe::SoftmaxTopKRouter<S>(make_router_weight(w), w.top_k),
                                             std::move(task_gates), std::move(sensitivity)));
                    std::vector<std::int64_t> ids(static_cast<size_t>(x.rows()));
                    for (size_t t = 0; t < ids.size(); ++t) ids[t] = std::int64_t((t * 7919) % 32 % N);
                    moe::ForwardContext ctx;
                    ctx.task_ids = ids;
                    return measure(name, rule, layer, x, w, ctx);
                  }});
  list.push_back({"hierarchical", "top-k/2 of E/4 groups, then top-2 in each (Shazeer 2017)",
                  [](const Workload& w, const RowMatrix<S>& x, const std::string& name, const std::string& rule) {
                    // Groups of 4 experts (or 1 group); k1 groups x k2 experts = --top-k pairs.
                    const moe::Index b = w.experts % 4 == 0 ? 4 : w.experts, a = w.experts / b;
                    const moe::Index k2 = std::min<moe::Index>(w.top_k, std::min<moe::Index>(2, b));
                    const moe::Index k1 = std::max<moe::Index>(1, std::min<moe::Index>(a, w.top_k / k2));
                    RowMatrix<S> primary(a, w.d_model);
                    moe::examples::fill_normal(primary, w.seed + 11, 1.0 / std::sqrt(double(w.d_model)));
                    const moe::HierarchicalMoE<S> layer(
                        make_experts(w), moe::HierarchicalRouter<S>(std::move(primary), make_router_weight(w), k1, k2));
                    return measure(name, rule, layer, x, w, {});
                  }});
  // Adaptive routing: k (--top-k) is the cap; a token takes 1..k experts.
  list.push_back({"top-p", "fewest experts reaching p >= 0.5, at most k, raw gates (Huang 2024)",
                  [](const Workload& w, const RowMatrix<S>& x, const std::string& name, const std::string& rule) {
                    const moe::TopPMoE<S> layer(make_experts(w), moe::TopPRouter<S>(make_router_weight(w), w.top_k,
                                                                                  moe::TopP<S>{S(0.5)}));
                    return measure(name, rule, layer, x, w, {});
                  }});
  list.push_back({"threshold-skip", "top-k, drop p < 0.5 p_first, renormalised (NAEE, Lu 2024)",
                  [](const Workload& w, const RowMatrix<S>& x, const std::string& name, const std::string& rule) {
                    const moe::ThresholdSkipMoE<S> layer(
                        make_experts(w),
                        moe::ThresholdSkipRouter<S>(make_router_weight(w), w.top_k, moe::ThresholdSkip<S>{S(0.5)}));
                    return measure(name, rule, layer, x, w, {});
                  }});
  list.push_back({"multi-head", "4 heads: each d/4 sub-token (a row) routed alone, softmax top-k, experts d/4->ff->d/4 (MH-MoE)",
                  [](const Workload& w, const RowMatrix<S>& x, const std::string& name, const std::string& rule) {
                    // Experts d/h -> ff -> d/h: h sub-tokens cost what one token costs under
                    // top-k over full-width experts; the two d x d projections come on top.
                    const Index h = w.d_model % 4 == 0 ? 4 : 1;
                    Workload sub = w;
                    sub.d_model = w.d_model / h;
                    RowMatrix<S> head(w.d_model, w.d_model), merge(w.d_model, w.d_model);
                    moe::examples::fill_normal(head, w.seed + 13, 1.0 / std::sqrt(double(w.d_model)));
                    moe::examples::fill_normal(merge, w.seed + 14, 1.0 / std::sqrt(double(w.d_model)));
                    const moe::MultiHeadMoE<S> layer(
                        moe::MixtralMoE<S>(make_experts(sub), moe::SoftmaxTopKRouter<S>(make_router_weight(sub), w.top_k)), h,
                        std::move(head), std::move(merge));
                    return measure(name, rule, layer, x, w, {});
                  }});
  // Expert families (issue #15) under softmax top-k.
  list.push_back({"conv-experts", "softmax top-k; causal depthwise conv (4 taps) per expert, then SwiGLU",
                  [](const Workload& w, const RowMatrix<S>& x, const std::string& name, const std::string& rule) {
                    // Sequences of 256 tokens (or the whole batch), as soft-moe.
                    moe::CausalConvExperts<moe::SwiGLUExperts<S>> experts(make_experts(w), 4);
                    moe::examples::fill_normal(experts.kernels(), w.seed + 12, 0.5);
                    const moe::ConvMoE<S> layer(std::move(experts), moe::SoftmaxTopKRouter<S>(make_router_weight(w), w.top_k));
                    moe::ForwardContext ctx;
                    ctx.sequence_length = x.rows() % 256 == 0 ? 256 : x.rows();
                    return measure(name, rule, layer, x, w, ctx);
                  }});
  list.push_back({"recurrent", "softmax top-k per sequence on its mean input; GRU experts (hidden d) over each sequence",
                  [](const Workload& w, const RowMatrix<S>& x, const std::string& name, const std::string& rule) {
                    // Sequences of 256 tokens (or the whole batch); GRU weights N(0, 1/d).
                    moe::GRUExperts<S> experts(w.experts, w.d_model, w.d_model);
                    moe::examples::fill_normal(experts.weights_ih(), w.seed + 15, 1.0 / std::sqrt(double(w.d_model)));
                    moe::examples::fill_normal(experts.weights_hh(), w.seed + 16, 1.0 / std::sqrt(double(w.d_model)));
                    const moe::RecurrentMoE<S> layer(std::move(experts),
                                                     moe::SequenceSoftmaxTopKRouter<S>(moe::SoftmaxTopKRouter<S>(make_router_weight(w), w.top_k)));
                    moe::ForwardContext ctx;
                    ctx.sequence_length = x.rows() % 256 == 0 ? 256 : x.rows();
                    return measure(name, rule, layer, x, w, ctx);
                  }});
  list.push_back({"soft-moe", "every slot a softmax mix of its sequence (Puigcerver 2023)",
                  [](const Workload& w, const RowMatrix<S>& x, const std::string& name, const std::string& rule) {
                    // Sequences of 256 tokens (or the whole batch); slots per expert chosen so the
                    // experts process as many rows as top-k routing does.
                    const moe::Index seq = x.rows() % 256 == 0 ? 256 : x.rows();
                    const moe::Index slots = std::max<moe::Index>(1, seq * w.top_k / w.experts);
                    RowMatrix<S> phi(w.d_model, w.experts * slots);
                    moe::examples::fill_normal(phi, w.seed + 6, 1.0 / std::sqrt(double(w.d_model)));
                    const moe::MoELayer<moe::SwiGLUExperts<S>, moe::SoftRouter<S>, moe::SoftCombiner<S>> layer(
                        make_experts(w), moe::SoftRouter<S>(std::move(phi), slots));
                    moe::ForwardContext ctx;
                    ctx.sequence_length = seq;
                    return measure(name, rule, layer, x, w, ctx, /*has_logits=*/false);
                  }});
  return list;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

[[noreturn]] void usage(const char* argv0, int code) {
  std::fprintf(code ? stderr : stdout,
               "usage: %s [--tokens T] [--d-model D] [--d-ff F] [--experts E] [--top-k K] [--routers a,b,...]\n"
               "          [--reps R] [--seed S] [--json [FILE]] [--list]\n",
               argv0);
  std::exit(code);
}

std::string fmt_opt(const std::optional<double>& v) {
  if (!v) return "     n/a";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%8.4f", *v);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  Workload w;
  std::vector<std::string> selected;
  std::optional<std::string> json_path;
  bool want_json = false;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      const auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw std::invalid_argument("option " + a + " needs a value");
        return argv[++i];
      };
      if (a == "--tokens") w.tokens = std::stol(value());
      else if (a == "--d-model") w.d_model = std::stol(value());
      else if (a == "--d-ff") w.d_ff = std::stol(value());
      else if (a == "--experts") w.experts = std::stol(value());
      else if (a == "--top-k") w.top_k = std::stol(value());
      else if (a == "--reps") w.reps = std::stoi(value());
      else if (a == "--seed") w.seed = std::stoull(value());
      else if (a == "--routers") selected = split(value());
      else if (a == "--json") {
        want_json = true;
        if (i + 1 < argc && argv[i + 1][0] != '-') json_path = argv[++i];
      } else if (a == "--list") {
        for (const auto& r : routers()) std::printf("%-18s %s\n", r.name.c_str(), r.rule.c_str());
        return 0;
      } else if (a == "--help" || a == "-h") usage(argv[0], 0);
      else throw std::invalid_argument("unknown option " + a);
    }
    if (w.tokens < 1 || w.d_model < 1 || w.d_ff < 1 || w.experts < 1 || w.reps < 1)
      throw std::invalid_argument("--tokens, --d-model, --d-ff, --experts and --reps must be >= 1");
    if (w.top_k < 1 || w.top_k > w.experts)
      throw std::invalid_argument("--top-k must be in [1, --experts = " + std::to_string(w.experts) + "]");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe-compare: %s\n", e.what());
    usage(argv[0], 2);
  }

  auto all = routers();
  std::vector<RouterEntry> run;
  if (selected.empty()) run = all;
  for (const auto& name : selected) {
    auto it = std::find_if(all.begin(), all.end(), [&](const RouterEntry& r) { return r.name == name; });
    if (it == all.end()) {
      std::fprintf(stderr, "moe-compare: unknown router '%s' (--list shows them)\n", name.c_str());
      return 2;
    }
    run.push_back(*it);
  }

  std::fprintf(stderr, "moe-compare: %ld tokens, d_model %ld, d_ff %ld, %ld experts, top-%ld, %d reps, kernels %s\n",
               long(w.tokens), long(w.d_model), long(w.d_ff), long(w.experts), long(w.top_k), w.reps,
               moe::kernels::arch_name());
  const RowMatrix<S> x = make_input(w);
  std::vector<Row> rows;
  for (size_t i = 0; i < run.size(); ++i) {
    std::fprintf(stderr, "[%zu/%zu] %s ...\n", i + 1, run.size(), run[i].name.c_str());
    rows.push_back(run[i].run(w, x, run[i].name, run[i].rule));
  }

  if (want_json) {
    nlohmann::json j;
    j["workload"] = {{"tokens", w.tokens}, {"d_model", w.d_model}, {"d_ff", w.d_ff}, {"experts", w.experts},
                     {"top_k", w.top_k},   {"reps", w.reps},       {"seed", w.seed}, {"arch", moe::kernels::arch_name()}};
    for (const auto& r : rows) {
      nlohmann::json o = {{"router", r.router},       {"rule", r.rule},
                          {"tokens_per_s", r.tokens_per_s}, {"load_cv", r.load_cv},
                          {"load_max_over_mean", r.load_max_mean}, {"dropped_fraction", r.dropped},
                          {"expert_rows_per_token", r.rows_per_token}};
      o["experts_per_token"] = r.experts_per_token ? nlohmann::json(*r.experts_per_token) : nlohmann::json(nullptr);
      o["aux_loss"] = r.aux_loss ? nlohmann::json(*r.aux_loss) : nlohmann::json(nullptr);
      o["z_loss"] = r.z_loss ? nlohmann::json(*r.z_loss) : nlohmann::json(nullptr);
      j["results"].push_back(o);
    }
    if (json_path) {
      std::ofstream(*json_path) << j.dump(2) << "\n";
      std::fprintf(stderr, "moe-compare: wrote %s\n", json_path->c_str());
    } else {
      std::cout << j.dump(2) << "\n";
      return 0;
    }
  }

  std::printf("%-18s %10s %8s %8s %8s %9s %8s %8s %8s  %s\n", "router", "tokens/s", "rows/tok", "exp/tok", "load CV",
              "max/mean", "dropped", "aux", "z loss", "rule");
  for (const auto& r : rows)
    std::printf("%-18s %10.0f %8.2f %s %8.3f %9.2f %7.1f%% %s %s  %s\n", r.router.c_str(), r.tokens_per_s,
                r.rows_per_token, fmt_opt(r.experts_per_token).c_str(), r.load_cv, r.load_max_mean, 100.0 * r.dropped,
                fmt_opt(r.aux_loss).c_str(), fmt_opt(r.z_loss).c_str(), r.rule.c_str());
  std::printf(
      "rows/tok = expert rows computed per token (compute); exp/tok = experts a token ran through, mean (1..k under\n"
      "top-p and threshold-skip); load = rows per expert after capacity; dropped = tokens no expert processed;\n"
      "aux = load-balancing loss normalised to 1 at perfect balance; z = router z-loss\n");
  return 0;
}

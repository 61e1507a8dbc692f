// The mixture-of-local-experts task (Jacobs, Jordan, Nowlan & Hinton 1991) and the training
// loop that examples/train_mixture.cpp runs and tests/train/train_mixture_test.cpp checks.
//
// It lives beside the example, not under include/moe/: the task is a demonstration, not
// library API, and the test must exercise exactly the code the example prints from.
#ifndef MOE_EXAMPLES_TRAIN_MIXTURE_HPP
#define MOE_EXAMPLES_TRAIN_MIXTURE_HPP

#include <moe/moe.hpp>
#include <moe/train/train.hpp>

#include "example_util.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

namespace moe::examples::mixture {

struct Config {
  Index clusters = 4;         ///< K clusters, one target map each; the MoE has E = K experts
  Index d = 16;               ///< input and output width
  Index d_ff = 32;            ///< hidden width of every expert
  Index top_k = 1;            ///< experts per token; the dense model's width is top_k * d_ff
  Index train_tokens = 2048;  ///< one epoch
  Index eval_tokens = 1024;   ///< held out; every metric is measured on it
  Index batch = 128;
  Index steps = 800;          ///< optimiser steps of each model
  std::uint64_t seed = 1;
  double lr = 1e-2;           ///< Adam
  double aux = 1e-2;          ///< weight of the load-balancing loss where it is on
  double clip = 1.0;          ///< global gradient-norm clipping
  double collapse_logit = 8.0;  ///< the collapsed router's logit margin for expert 0 at the data mean
  double centre_scale = 1.0;    ///< std of the cluster centres around the shared offset
  double map_gain = 0.5;        ///< std of A_k's entries times sqrt(d)
  double map_offset = 0.5;      ///< std of b_k's entries
};

template <class S>
struct Task {
  RowMatrix<S> x_train, y_train, x_eval, y_eval;
  std::vector<Index> cluster_train, cluster_eval;
  RowVector<S> mean;        ///< mean input of the training set
  double target_variance;   ///< mean over columns of the eval targets' variance: MSE of predicting the mean
};

/// Inputs: x = mu + delta_k + eps, mu a shared offset (so the data mean is far from 0 and a
/// router row aligned with it can capture every token), delta_k ~ N(0, I) the cluster's centre,
/// eps ~ N(0, I). Targets: y = tanh(A_k (x - c_k) + b_k), A_k ~ N(0, I/d), b_k ~ N(0, 0.25 I):
/// a different nonlinear map in every cluster, each varying over the cluster's width.
template <class S>
Task<S> make_task(const Config& cfg) {
  const Index K = cfg.clusters, d = cfg.d;
  RowMatrix<double> mu(1, d), centres(K, d);
  fill_normal(mu, cfg.seed * 1000 + 1, 2.0);
  fill_normal(centres, cfg.seed * 1000 + 2, cfg.centre_scale);
  centres.rowwise() += mu.row(0);
  std::vector<RowMatrix<double>> A(static_cast<std::size_t>(K), RowMatrix<double>(d, d));
  RowMatrix<double> b(K, d);
  for (Index k = 0; k < K; ++k) fill_normal(A[static_cast<std::size_t>(k)], cfg.seed * 1000 + 10 + static_cast<std::uint64_t>(k), cfg.map_gain / std::sqrt(double(d)));
  fill_normal(b, cfg.seed * 1000 + 3, cfg.map_offset);

  auto sample = [&](Index n, std::uint64_t stream, RowMatrix<S>& x, RowMatrix<S>& y, std::vector<Index>& cl) {
    RowMatrix<double> noise(n, d);
    fill_normal(noise, stream, 1.0);
    const CounterRng pick(stream, 1);
    x.resize(n, d);
    y.resize(n, d);
    cl.resize(static_cast<std::size_t>(n));
    for (Index t = 0; t < n; ++t) {
      const auto k = static_cast<Index>(pick.bits(static_cast<std::uint64_t>(t), 0) % static_cast<std::uint64_t>(K));
      cl[static_cast<std::size_t>(t)] = k;
      const RowVector<double> xt = centres.row(k) + noise.row(t);
      const RowVector<double> pre =
          (noise.row(t) * A[static_cast<std::size_t>(k)].transpose()) + b.row(k);  // x - c_k = eps
      x.row(t) = xt.cast<S>();
      y.row(t) = pre.array().tanh().matrix().cast<S>();
    }
  };
  Task<S> task;
  sample(cfg.train_tokens, cfg.seed * 1000 + 100, task.x_train, task.y_train, task.cluster_train);
  sample(cfg.eval_tokens, cfg.seed * 1000 + 200, task.x_eval, task.y_eval, task.cluster_eval);
  task.mean = task.x_train.colwise().mean();
  const RowMatrix<double> ye = task.y_eval.template cast<double>();
  const RowVector<double> ym = ye.colwise().mean();
  task.target_variance = (ye.rowwise() - ym).array().square().mean();
  return task;
}

/// Top-1 softmax routing (Switch: the gate is the probability, not renormalised, so the
/// router learns from the task loss), FFN experts with GELU and biases.
template <class S>
using Layer = MoELayer<FFNExperts<S, Activation::gelu_tanh>, SoftmaxTopKRouter<S>, WeightedSumCombiner<S>>;

enum class RouterInit { random, collapsed };

/// E experts of width d_ff. E = 1 is the dense model: its one expert always has gate 1, so it
/// is a plain FFN with the active FLOPs of the top-1 MoE.
template <class S>
Layer<S> make_layer(const Config& cfg, const Task<S>& task, Index E, RouterInit init) {
  const Index k = E == 1 ? 1 : cfg.top_k;
  const Index width = E == 1 ? cfg.top_k * cfg.d_ff : cfg.d_ff;
  FFNExperts<S, Activation::gelu_tanh> experts(E, cfg.d, width);
  experts.enable_biases();
  // The same initial weights for expert e in every model (seeded by e).
  for (Index e = 0; e < E; ++e) {
    fill_normal(experts.wi(e), cfg.seed * 1000 + 500 + static_cast<std::uint64_t>(e), 1.0 / std::sqrt(double(cfg.d)));
    fill_normal(experts.wo(e), cfg.seed * 1000 + 600 + static_cast<std::uint64_t>(e), 1.0 / std::sqrt(double(width)));
  }
  SoftmaxTopKRouter<S> router(E, cfg.d, k, SoftmaxTopK<S>{.renormalize = k > 1});
  fill_normal(router.weight(), cfg.seed * 1000 + 700, 0.1 / std::sqrt(double(cfg.d)));
  if (init == RouterInit::collapsed) {
    // TopKRouter has no bias: row 0 along the data mean gives expert 0 a logit of about
    // collapse_logit on every token, far above the others.
    const RowVector<S> m = task.mean;
    router.weight().row(0) = m * static_cast<S>(cfg.collapse_logit / m.squaredNorm());
  }
  return {std::move(experts), std::move(router)};
}

/// One model with its training state: gradients, optimiser, workspace, loss weights.
template <class S>
struct Trainee {
  Layer<S> layer;
  typename Layer<S>::gradients_type grads;
  Adam<S> opt;
  Workspace<S> ws;
  LossWeights<S> weights;

  Trainee(Layer<S> l, double lr, double aux)
      : layer(std::move(l)), grads(layer.make_gradients()), opt(lr), weights{.aux = static_cast<S>(aux)} {}
};

/// Metrics on the eval set, in inference mode.
struct Metrics {
  double loss = 0;     ///< mean squared error per output entry
  double purity = 0;   ///< mean over clusters of the share of its tokens on its most frequent top-1 expert
  double load_cv = 0;  ///< population std / mean of the per-expert top-1 counts
  Index distinct = 0;  ///< distinct experts among the clusters' most frequent ones
  double entropy = 0;      ///< mean routing entropy of softmax(logits), nats (RoutingTelemetry)
  double top1_margin = 0;  ///< mean p(1) - p(2) of softmax(logits) (RoutingTelemetry; 0 for E = 1)
};

template <class S>
Metrics evaluate(const Config& cfg, const Task<S>& task, Trainee<S>& m) {
  RoutingTelemetry telemetry;  // the eval forward's routing record (docs/telemetry.md)
  ForwardContext ctx;
  ctx.telemetry = &telemetry;
  const RowMatrix<S> y = m.layer.forward(task.x_eval, m.ws, ctx);
  Metrics out;
  const TelemetryRecord& record = telemetry.records().front();
  out.entropy = record.entropy;
  out.top1_margin = std::isfinite(record.top1_margin) ? record.top1_margin : 0.0;
  out.loss = (y - task.y_eval).template cast<double>().array().square().mean();
  const Index E = m.layer.num_experts(), K = cfg.clusters;
  std::vector<Index> load(static_cast<std::size_t>(E), 0);
  std::vector<std::vector<Index>> by_cluster(static_cast<std::size_t>(K), std::vector<Index>(static_cast<std::size_t>(E), 0));
  const auto& r = m.ws.routing;
  for (Index t = 0; t < r.num_tokens; ++t) {
    const Index e = r.expert[static_cast<std::size_t>(t * r.k)];  // best first
    ++load[static_cast<std::size_t>(e)];
    ++by_cluster[static_cast<std::size_t>(task.cluster_eval[static_cast<std::size_t>(t)])][static_cast<std::size_t>(e)];
  }
  std::vector<bool> used(static_cast<std::size_t>(E), false);
  for (const auto& c : by_cluster) {
    Index total = 0;
    for (Index v : c) total += v;
    const auto best = std::max_element(c.begin(), c.end());
    used[static_cast<std::size_t>(best - c.begin())] = true;
    out.purity += total == 0 ? 1.0 : double(*best) / double(total);
  }
  out.purity /= double(K);
  out.distinct = static_cast<Index>(std::count(used.begin(), used.end(), true));
  const double mean = double(r.num_tokens) / double(E);
  double var = 0;
  for (Index l : load) var += (double(l) - mean) * (double(l) - mean);
  out.load_cv = mean == 0 ? 0.0 : std::sqrt(var / double(E)) / mean;
  return out;
}

/// One optimiser step on rows [begin, begin + batch) of the training set; returns the batch MSE.
template <class S>
double train_step(const Config& cfg, const Task<S>& task, Trainee<S>& m, Index step) {
  const Index n = cfg.batch, per_epoch = std::max<Index>(1, cfg.train_tokens / n);
  const Index begin = (step % per_epoch) * n;
  const auto x = task.x_train.middleRows(begin, n);
  const auto target = task.y_train.middleRows(begin, n);
  // Training mode records what backward needs; the seed and step would key any router noise.
  const ForwardContext ctx{.mode = Mode::training, .seed = cfg.seed, .step = static_cast<std::uint64_t>(step)};
  const RowMatrix<S> y = m.layer.forward(x, m.ws, ctx);
  const RowMatrix<S> diff = y - target;
  // L = mean((y - t)^2) over n * d entries, so dL/dy = 2 (y - t) / (n d).
  const RowMatrix<S> dy = diff * static_cast<S>(2.0 / double(n * cfg.d));
  zero_grad(m.grads);
  (void)m.layer.backward(dy, m.ws, m.grads, m.weights);  // adds weights.aux * d(aux)/d(theta)
  clip_grad_norm(m.grads, cfg.clip);
  m.opt.step(m.layer, m.grads);
  return diff.template cast<double>().array().square().mean();
}

/// Per-epoch metrics of the four models.
struct EpochRow {
  Index epoch = 0, step = 0;
  Metrics moe, dense, collapsed_aux, collapsed_no_aux;
};

/// Trains, from the same data and expert initialisation:
///   moe               E = K, random router, aux loss on;
///   dense             E = 1 (same active FLOPs);
///   collapsed_aux     E = K, collapsed router, aux loss on;
///   collapsed_no_aux  E = K, collapsed router, aux loss off.
/// Calls on_epoch after evaluating before the first step and after every epoch (and after
/// the last step if it ends an incomplete epoch).
template <class S>
std::vector<EpochRow> train(const Config& cfg, const Task<S>& task,
                            const std::function<void(const EpochRow&)>& on_epoch = {}) {
  const Index K = cfg.clusters;
  Trainee<S> moe(make_layer(cfg, task, K, RouterInit::random), cfg.lr, cfg.aux);
  Trainee<S> dense(make_layer(cfg, task, 1, RouterInit::random), cfg.lr, 0.0);
  Trainee<S> col_aux(make_layer(cfg, task, K, RouterInit::collapsed), cfg.lr, cfg.aux);
  Trainee<S> col_none(make_layer(cfg, task, K, RouterInit::collapsed), cfg.lr, 0.0);
  const Index per_epoch = std::max<Index>(1, cfg.train_tokens / cfg.batch);
  std::vector<EpochRow> rows;
  auto record = [&](Index step) {
    EpochRow row;
    row.step = step;
    row.epoch = (step + per_epoch - 1) / per_epoch;
    row.moe = evaluate(cfg, task, moe);
    row.dense = evaluate(cfg, task, dense);
    row.collapsed_aux = evaluate(cfg, task, col_aux);
    row.collapsed_no_aux = evaluate(cfg, task, col_none);
    rows.push_back(row);
    if (on_epoch) on_epoch(row);
  };
  record(0);
  for (Index step = 0; step < cfg.steps; ++step) {
    for (Trainee<S>* m : {&moe, &dense, &col_aux, &col_none}) (void)train_step(cfg, task, *m, step);
    if ((step + 1) % per_epoch == 0 || step + 1 == cfg.steps) record(step + 1);
  }
  return rows;
}

}  // namespace moe::examples::mixture

#endif  // MOE_EXAMPLES_TRAIN_MIXTURE_HPP

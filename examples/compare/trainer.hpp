// moe-compare's training comparison: every policy trains the same model from the same
// initialisation, data order and seed; the metrics of docs/compare.md come out per run.
#ifndef MOE_EXAMPLES_COMPARE_TRAINER_HPP
#define MOE_EXAMPLES_COMPARE_TRAINER_HPP

#include "model.hpp"

#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace moe::examples::compare {

struct TrainConfig {
  Index steps = 600;
  Index batch = 128;
  Index eval_every = 50;   ///< steps between held-out evaluations (curve points)
  Index eval_tokens = 4096;
  ModelConfig model;
  BlockConfig block;
};

/// One held-out evaluation.
struct CurvePoint {
  Index step = 0;
  double eval_loss = 0;
  double train_loss = 0;  ///< mean training loss over the steps since the previous point (NaN at step 0)
  double load_cv = 0;
  double load_max_mean = 0;
  double dropped = 0;
  std::optional<double> changed;  ///< fraction of held-out units whose top expert changed since the previous point
  std::vector<double> load_share;  ///< per expert, its share of the kept assignments (first block)
  /// From RoutingTelemetry on the first block: mean routing entropy of softmax(logits) (nats)
  /// and mean top-1 margin p(1) - p(2); empty where the router has no logits (Soft MoE).
  std::optional<double> entropy, top1_margin;
};

/// One policy, one seed.
struct RunResult {
  std::string policy;
  std::uint64_t seed = 0;
  double eval_loss = 0;
  std::optional<double> bits_per_char;
  double train_tokens_per_s = 0;
  double infer_tokens_per_s = 0;
  double expert_flops_per_token = 0;  ///< active expert FLOPs per token, measured on the held-out set
  std::optional<double> experts_per_token;
  double load_cv_train = 0, load_cv_end = 0;        ///< mean over training steps; on the held-out set at the end
  double max_mean_train = 0, max_mean_end = 0;
  double dropped_train = 0, dropped_end = 0;
  std::optional<double> stability;       ///< 1 - changed fraction between the last two points
  std::optional<double> specialisation;  ///< NMI(class; top expert) on the held-out set at the end
  std::optional<double> aux, z;          ///< on the held-out set at the end
  std::vector<CurvePoint> curve;
};

/// Coefficient of variation and max/mean of a load vector.
inline std::pair<double, double> load_balance(const std::vector<Index>& load) {
  if (load.empty()) return {0.0, 0.0};
  double mean = 0, var = 0, max = 0;
  for (Index l : load) mean += double(l) / double(load.size());
  for (Index l : load) {
    var += (double(l) - mean) * (double(l) - mean) / double(load.size());
    max = std::max(max, double(l));
  }
  return mean > 0 ? std::pair{std::sqrt(var) / mean, max / mean} : std::pair{0.0, 0.0};
}

/// Normalised mutual information between the class and the top expert of each unit that
/// reached an expert: I(C; E) / ((H(C) + H(E)) / 2), in [0, 1] (0 when both entropies are 0).
inline double normalised_mutual_information(const std::vector<Index>& cls, const std::vector<Index>& expert,
                                            Index classes, Index experts) {
  std::vector<double> joint(static_cast<std::size_t>(classes * experts), 0.0), pc(static_cast<std::size_t>(classes), 0.0),
      pe(static_cast<std::size_t>(experts), 0.0);
  double n = 0;
  for (std::size_t i = 0; i < cls.size(); ++i) {
    if (expert[i] < 0) continue;
    joint[static_cast<std::size_t>(cls[i] * experts + expert[i])] += 1;
    pc[static_cast<std::size_t>(cls[i])] += 1;
    pe[static_cast<std::size_t>(expert[i])] += 1;
    n += 1;
  }
  if (n == 0) return 0.0;
  const auto entropy = [n](const std::vector<double>& p) {
    double h = 0;
    for (double c : p)
      if (c > 0) h -= c / n * std::log(c / n);
    return h;
  };
  double mi = 0;
  for (Index c = 0; c < classes; ++c)
    for (Index e = 0; e < experts; ++e) {
      const double j = joint[static_cast<std::size_t>(c * experts + e)];
      if (j > 0) mi += j / n * std::log(j * n / (pc[static_cast<std::size_t>(c)] * pe[static_cast<std::size_t>(e)]));
    }
  const double h = (entropy(pc) + entropy(pe)) / 2;
  return h > 0 ? std::clamp(mi / h, 0.0, 1.0) : 0.0;
}

/// Progress: the policy, the seed, the curve point just measured.
using Progress = std::function<void(const std::string&, std::uint64_t, const CurvePoint&)>;

/// Trains `policy` on `task` from seed `seed`: the model's weights, the order of the training
/// batches and any router noise all follow it. Threads come from `pool` (results do not
/// depend on its size).
inline RunResult train_one(const Task& task, const Policy& policy, const TrainConfig& cfg, std::uint64_t seed,
                           ThreadPool* pool, const Progress& progress = {}) {
  using clock = std::chrono::steady_clock;
  BlockConfig bc = cfg.block;
  bc.seed = seed;
  bc.vocab = task.id_range();
  Model model(task, policy, bc, cfg.model);
  for (const auto& block : model.blocks()) (void)block->set_inference_weights(bc.weight_type);
  const Index E = model.blocks().front()->num_experts();

  // The held-out set: eval_tokens inputs spread evenly over the held-out part, in whole sequences.
  const Index eval_n = std::max<Index>(bc.sequence_length,
                                       std::min(cfg.eval_tokens, task.eval_count()) / bc.sequence_length * bc.sequence_length);
  std::vector<Index> eval_rows(static_cast<std::size_t>(eval_n));
  for (Index i = 0; i < eval_n; ++i)
    eval_rows[static_cast<std::size_t>(i)] = static_cast<Index>(double(i) * double(task.eval_count()) / double(eval_n));
  Batch eval_batch, batch;
  task.fill(eval_batch, eval_rows, /*eval=*/true);

  RunResult r;
  r.policy = policy.name;
  r.seed = seed;
  double infer_seconds = 0;
  Index infer_tokens = 0;
  std::vector<std::vector<Index>> previous_top1;
  double train_loss_sum = 0;
  Index train_loss_n = 0;

  const auto evaluate = [&](Index step) {
    ForwardContext ctx;
    ctx.pool = pool;
    ctx.seed = seed;
    ctx.sequence_length = bc.sequence_length;
    eval_batch.attach(ctx);
    RoutingTelemetry telemetry;  // the evaluation's routing, per block (ForwardContext::layer_index)
    ctx.telemetry = &telemetry;
    const auto start = clock::now();
    CurvePoint p;
    p.step = step;
    p.eval_loss = model.forward(eval_batch, ctx);
    if (step > 0) {  // the first evaluation warms the buffers up: not timed
      infer_seconds += std::chrono::duration<double>(clock::now() - start).count();
      infer_tokens += eval_n;
    }
    p.train_loss = train_loss_n ? train_loss_sum / double(train_loss_n) : std::numeric_limits<double>::quiet_NaN();
    train_loss_sum = 0;
    train_loss_n = 0;
    const auto& blocks = model.blocks();
    std::vector<std::vector<Index>> top1;
    double changed = 0, spec = 0, aux = 0, z = 0, flops = 0, ept = 0;
    bool has_top1 = true, has_aux = true, has_ept = true;
    for (std::size_t l = 0; l < blocks.size(); ++l) {
      const Routed routed = blocks[l]->routed();
      const auto [cv, mm] = load_balance(routed.load);
      p.load_cv += cv / double(blocks.size());
      p.load_max_mean += mm / double(blocks.size());
      p.dropped += routed.dropped / double(blocks.size());
      flops += double(routed.rows) * blocks[l]->flops_per_row() / double(eval_n) + blocks[l]->shared_flops_per_token();
      if (l == 0) {
        // Blocks without an MoELayer of their own record through the one they wrap (multi-head).
        for (const TelemetryRecord& rec : telemetry.records()) {
          if (rec.layer != 0) continue;
          Index total = 0;
          for (Index v : rec.load) total += v;
          for (Index v : rec.load) p.load_share.push_back(total ? double(v) / double(total) : 0.0);
          if (std::isfinite(rec.entropy)) p.entropy = rec.entropy;
          if (std::isfinite(rec.top1_margin)) p.top1_margin = rec.top1_margin;
        }
      }
      has_top1 = has_top1 && !routed.top1.empty();
      has_aux = has_aux && routed.aux.has_value();
      has_ept = has_ept && routed.experts_per_token.has_value();
      if (!routed.top1.empty()) {
        // Units of one token (multi-head sub-tokens) share its class.
        const Index h = blocks[l]->units_per_token();
        std::vector<Index> cls(routed.top1.size());
        for (std::size_t u = 0; u < cls.size(); ++u) cls[u] = eval_batch.label[u / static_cast<std::size_t>(h)];
        spec += normalised_mutual_information(cls, routed.top1, task.classes(), E) / double(blocks.size());
        if (!previous_top1.empty()) {
          const auto& prev = previous_top1[l];
          Index diff = 0;
          for (std::size_t u = 0; u < prev.size(); ++u) diff += prev[u] != routed.top1[u];
          changed += double(diff) / double(prev.size()) / double(blocks.size());
        }
      }
      if (routed.aux) aux += *routed.aux / double(blocks.size());
      if (routed.z) z += *routed.z / double(blocks.size());
      if (routed.experts_per_token) ept += *routed.experts_per_token / double(blocks.size());
      top1.push_back(routed.top1);
    }
    if (has_top1 && !previous_top1.empty()) p.changed = changed;
    previous_top1 = std::move(top1);
    r.eval_loss = p.eval_loss;
    r.load_cv_end = p.load_cv;
    r.max_mean_end = p.load_max_mean;
    r.dropped_end = p.dropped;
    r.expert_flops_per_token = flops;
    r.stability = p.changed ? std::optional<double>(1.0 - *p.changed) : std::nullopt;
    r.specialisation = has_top1 ? std::optional<double>(spec) : std::nullopt;
    r.aux = has_aux ? std::optional<double>(aux) : std::nullopt;
    r.z = has_aux ? std::optional<double>(z) : std::nullopt;
    r.experts_per_token = has_ept ? std::optional<double>(ept) : std::nullopt;
    r.curve.push_back(p);
    if (progress) progress(policy.name, seed, p);
  };

  evaluate(0);
  double train_seconds = 0;
  std::vector<Index> rows(static_cast<std::size_t>(cfg.batch));
  const CounterRng order(seed * 1000 + 60, 0);
  for (Index step = 0; step < cfg.steps; ++step) {
    for (std::size_t i = 0; i < rows.size(); ++i)
      rows[i] = static_cast<Index>(order.bits(static_cast<std::uint64_t>(step), i) %
                                   static_cast<std::uint64_t>(task.train_count()));
    task.fill(batch, rows, /*eval=*/false);
    ForwardContext ctx;
    ctx.mode = Mode::training;
    ctx.pool = pool;
    ctx.seed = seed;
    ctx.step = static_cast<std::uint64_t>(step);
    ctx.sequence_length = bc.sequence_length;
    batch.attach(ctx);
    const auto start = clock::now();
    train_loss_sum += model.forward(batch, ctx);
    ++train_loss_n;
    model.backward_and_step(batch);
    train_seconds += std::chrono::duration<double>(clock::now() - start).count();
    for (const auto& blk : model.blocks()) {
      const Routed routed = blk->routed();
      const auto [cv, mm] = load_balance(routed.load);
      const double L = double(model.blocks().size()) * double(cfg.steps);
      r.load_cv_train += cv / L;
      r.max_mean_train += mm / L;
      r.dropped_train += routed.dropped / L;
    }
    if ((step + 1) % cfg.eval_every == 0 || step + 1 == cfg.steps) evaluate(step + 1);
  }
  r.train_tokens_per_s = train_seconds > 0 ? double(cfg.steps * cfg.batch) / train_seconds : 0.0;
  r.infer_tokens_per_s = infer_seconds > 0 ? double(infer_tokens) / infer_seconds : 0.0;
  if (task.kind == TaskKind::text) r.bits_per_char = r.eval_loss / std::log(2.0);
  return r;
}

}  // namespace moe::examples::compare

#endif  // MOE_EXAMPLES_COMPARE_TRAINER_HPP

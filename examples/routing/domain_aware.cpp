// routing_domain_aware: domain-aware routing (domain-conditioned experts as in DEMix,
// Gururangan et al. 2021), trained end to end.
//
// The rule (moe::DomainAwareRouter, moe::DomainAwareSoftmaxTopKRouter):
//   q      = softmax(x C^T)        a domain classifier over D domains (C [D, d], no bias)
//   logits = x Wg^T + q A          A [D, E]: a learned affinity of each domain for each expert
//   p      = softmax(logits);  chosen = the top 2;  gates = p / (sum of the chosen p)
// C, A and Wg are trained through the routing by the task loss; moe::DomainLoss, the
// cross-entropy of q against the labels in ForwardContext::domain_ids, also supervises C
// (moe::losses(moe::weighted(moe::DomainLoss{}, w)); the router's backward consumes it). The
// labels are read by the loss only: at inference the router infers the domain from x.
//
// The task: D = 3 domains whose tokens come from different inputs, x ~ N(4 u_j, I) with u_j
// the j-th unit vector. Domain j's target is the mean of experts 2j and 2j + 1 of a teacher
// bank. The layer's experts start as the teacher's (pretrained domain experts, as in DEMix)
// and the router knows no domain (small random Wg and C, A = 0). Every parameter is trained
// with Adam on MSE + w * DomainLoss (the router at lr 1e-2, the pretrained experts at 1e-3):
// the classifier learns the domains and each domain's tokens move onto its own two experts.
// The same run with w = 0 shows what the loss is for: the routing still specialises (Wg sees
// x), but q no longer means the labelled domains.
//
//   ./routing_domain_aware
#include <moe/moe.hpp>
#include <moe/train/train.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <vector>

#include "../example_util.hpp"

namespace {

using S = double;  // double: the printed digits do not depend on the SIMD width
constexpr moe::Index D = 3, E = 6, d = 8, ff = 16, k = 2;
constexpr moe::Index steps = 500, batch = 48, eval_tokens = 300;
constexpr double router_lr = 1e-2, expert_lr = 1e-3, domain_weight = 0.1;
const std::array<const char*, D> domain_name = {"legal", "bio", "news"};

using Layer = moe::MoELayer<moe::SwiGLUExperts<S>, moe::DomainAwareSoftmaxTopKRouter<S>, moe::WeightedSumCombiner<S>>;

struct Batch {
  moe::RowMatrix<S> x, y;
  std::vector<std::int64_t> domain;
};

/// n tokens: domain j uniform (CounterRng(seed, 1)), x = 4 u_j + N(0, I), and the target
/// (teacher_2j(x) + teacher_2j+1(x)) / 2.
Batch make_batch(moe::Index n, std::uint64_t seed, const moe::SwiGLUExperts<S>& teacher) {
  Batch b;
  b.x.resize(n, d);
  b.y.resize(n, d);
  b.domain.resize(std::size_t(n));
  moe::examples::fill_normal(b.x, seed, 1.0);
  const moe::CounterRng pick(seed, 1);
  for (moe::Index t = 0; t < n; ++t) {
    const auto j = moe::Index(pick.bits(std::uint64_t(t), 0) % std::uint64_t(D));
    b.domain[std::size_t(t)] = j;
    b.x(t, j) += 4.0;
  }
  // Every teacher expert on the whole batch, then each token keeps its domain's pair.
  moe::RowMatrix<S> hidden(n, teacher.hidden_cols());
  std::vector<moe::RowMatrix<S>> out(std::size_t(E), moe::RowMatrix<S>(n, d));
  for (moe::Index e = 0; e < E; ++e) teacher.forward(e, b.x, hidden, out[std::size_t(e)]);
  for (moe::Index t = 0; t < n; ++t) {
    const auto j = std::size_t(b.domain[std::size_t(t)]);
    b.y.row(t) = 0.5 * (out[2 * j].row(t) + out[2 * j + 1].row(t));
  }
  return b;
}

struct Metrics {
  double mse = 0, domain_loss = 0, accuracy = 0;
  std::vector<moe::Index> usage;   ///< assignments of domain j's tokens to expert e, at j * E + e
  std::vector<moe::Index> tokens;  ///< tokens of each domain
  [[nodiscard]] double share(moe::Index j, moe::Index e) const {
    return double(usage[std::size_t(j * E + e)]) / double(k * tokens[std::size_t(j)]);
  }
  /// Share of domain j's assignments on its two most used experts.
  [[nodiscard]] double top2_share(moe::Index j) const {
    std::vector<moe::Index> row(usage.begin() + j * E, usage.begin() + (j + 1) * E);
    std::sort(row.begin(), row.end(), std::greater<>{});
    return double(row[0] + row[1]) / double(k * tokens[std::size_t(j)]);
  }
  /// Share on the teacher's pair for domain j, experts 2j and 2j + 1.
  [[nodiscard]] double pair_share(moe::Index j) const { return share(j, 2 * j) + share(j, 2 * j + 1); }
};

/// Inference on the held-out tokens; the context holds no labels (routing never reads them).
Metrics evaluate(const Layer& layer, const Batch& eval) {
  Metrics m;
  moe::Workspace<S> ws;
  const moe::RowMatrix<S> y = layer.forward(eval.x, ws);
  m.mse = (y - eval.y).array().square().mean();
  const moe::RowMatrix<S> q = layer.router().domain_probs(eval.x);
  m.domain_loss = moe::DomainLoss{}(moe::ConstMatrixRef<S>(q), eval.domain);
  moe::Index correct = 0;
  m.tokens.assign(std::size_t(D), 0);
  for (moe::Index t = 0; t < q.rows(); ++t) {
    moe::Index best = 0;
    for (moe::Index j = 1; j < D; ++j)
      if (q(t, j) > q(t, best)) best = j;
    correct += best == eval.domain[std::size_t(t)] ? 1 : 0;
    ++m.tokens[std::size_t(eval.domain[std::size_t(t)])];
  }
  m.accuracy = double(correct) / double(q.rows());
  m.usage.assign(std::size_t(D * E), 0);
  const moe::RoutingResult<S>& r = ws.routing;
  for (std::size_t i = 0; i < r.token.size(); ++i)
    ++m.usage[std::size_t(eval.domain[std::size_t(r.token[i])] * E + r.expert[i])];
  return m;
}

/// One Adam step per batch: L = mean((y - target)^2) + w * DomainLoss.
void train(Layer& layer, const std::vector<Batch>& batches, double w) {
  auto grads = layer.make_gradients();
  moe::Adam<S> router_opt(router_lr), expert_opt(expert_lr);
  moe::Workspace<S> ws;
  const auto losses = moe::losses(moe::weighted(moe::DomainLoss{}, S(w)));
  for (const Batch& b : batches) {
    moe::ForwardContext ctx;
    ctx.mode = moe::Mode::training;
    ctx.domain_ids = b.domain;  // the labels DomainLoss reads in backward
    const moe::RowMatrix<S> y = layer.forward(b.x, ws, ctx);
    // dL/dy = 2 (y - target) / (n d) for the mean over n * d entries.
    const moe::RowMatrix<S> dy = (y - b.y) * (2.0 / double(batch * d));
    moe::zero_grad(grads);
    (void)layer.backward(dy, ws, grads, losses);
    router_opt.step(layer.router(), grads.router);  // Wg, C, A
    expert_opt.step(layer.experts(), grads.experts);
  }
}

void print_usage(const Metrics& m) {
  std::printf("  domain |");
  for (moe::Index e = 0; e < E; ++e) std::printf("    e%ld", long(e));
  std::printf(" | top-2 share | its pair\n");
  for (moe::Index j = 0; j < D; ++j) {
    std::printf("  %-6s |", domain_name[std::size_t(j)]);
    for (moe::Index e = 0; e < E; ++e) std::printf(" %5.1f", 100.0 * m.share(j, e));
    std::printf(" |     %5.1f %% | %5.1f %% (e%ld e%ld)\n", 100.0 * m.top2_share(j), 100.0 * m.pair_share(j),
                long(2 * j), long(2 * j + 1));
  }
}

}  // namespace

int main() {
  moe::SwiGLUExperts<S> teacher(E, d, ff);
  moe::examples::fill_normal(teacher.gate_up(), 1, 1.0 / std::sqrt(double(d)));
  moe::examples::fill_normal(teacher.down(), 2, 1.0 / std::sqrt(double(ff)));
  moe::DomainAwareSoftmaxTopKRouter<S> router(E, d, D, k, moe::SoftmaxTopK<S>{.renormalize = true});
  moe::examples::fill_normal(router.weight(), 4, 0.3);
  moe::examples::fill_normal(router.classifier(), 5, 0.1);  // A stays 0
  const Layer initial(teacher, std::move(router), moe::WeightedSumCombiner<S>{});

  Layer trained = initial, unsupervised = initial;
  std::vector<Batch> batches;  // fresh tokens at every step, the same for both runs
  for (moe::Index step = 0; step < steps; ++step) batches.push_back(make_batch(batch, 1000 + std::uint64_t(step), teacher));
  train(trained, batches, domain_weight);
  train(unsupervised, batches, 0.0);
  const Batch eval = make_batch(eval_tokens, 99, teacher);
  const Metrics before = evaluate(initial, eval), after = evaluate(trained, eval),
                no_label = evaluate(unsupervised, eval);

  std::printf("domain-aware routing (DEMix-style): %ld domains, %ld experts, top-%ld renormalised, d %ld\n", long(D),
              long(E), long(k), long(d));
  std::printf("task: domain j's tokens x ~ N(4 u_j, I), target = mean of teacher experts 2j and 2j+1\n");
  std::printf("training: %ld Adam steps (router lr %g, experts lr %g) on batches of %ld fresh tokens,\n", long(steps),
              router_lr, expert_lr, long(batch));
  std::printf("          loss = MSE + w * DomainLoss with w = %g, and the same run with w = 0\n", domain_weight);
  std::printf("held out: %ld tokens (", long(eval_tokens));
  for (moe::Index j = 0; j < D; ++j)
    std::printf("%s%s %ld", j ? ", " : "", domain_name[std::size_t(j)], long(before.tokens[std::size_t(j)]));
  std::printf("), inference mode, no labels in the context\n\n");

  const auto on_pair = [](const Metrics& m) {  // over all the held-out assignments
    double s = 0;
    for (moe::Index j = 0; j < D; ++j) s += m.pair_share(j) * double(m.tokens[std::size_t(j)]);
    return s / double(eval_tokens);
  };
  std::printf("%-32s   before  after, w = %g  after, w = 0\n", "", domain_weight);
  std::printf("%-32s %8.4f %15.4f %13.4f\n", "task MSE", before.mse, after.mse, no_label.mse);
  std::printf("%-32s %8.4f %15.4f %13.4f   (ln 3 = %.4f: q uniform)\n", "domain loss (CE of q)", before.domain_loss,
              after.domain_loss, no_label.domain_loss, std::log(3.0));
  std::printf("%-32s %6.1f %% %13.1f %% %11.1f %%\n", "classifier accuracy (argmax q)", 100.0 * before.accuracy,
              100.0 * after.accuracy, 100.0 * no_label.accuracy);
  std::printf("%-32s %6.1f %% %13.1f %% %11.1f %%", "assignments on the domain's pair", 100.0 * on_pair(before),
              100.0 * on_pair(after), 100.0 * on_pair(no_label));
  std::printf("\n\nper-domain expert usage (%% of the domain's assignments), before training:\n");
  print_usage(before);
  std::printf("after training with w = %g:\n", domain_weight);
  print_usage(after);

  std::printf("\nlearned affinity A, w = %g (added to the logits as q A, beside x Wg^T):\n  domain |", domain_weight);
  for (moe::Index e = 0; e < E; ++e) std::printf("     e%ld", long(e));
  std::printf("\n");
  for (moe::Index j = 0; j < D; ++j) {
    std::printf("  %-6s |", domain_name[std::size_t(j)]);
    for (moe::Index e = 0; e < E; ++e) std::printf(" %6.2f", trained.router().affinity()(j, e));
    std::printf("\n");
  }
  return 0;
}

// routing_task_aware: task-aware routing (an adaptive task router): a base router shared by
// every task and one router per task, mixed per token by a learned sigmoid sensitivity.
//
// The rule (moe::TaskAwareRouter, moe::TaskAwareSoftmaxTopKRouter), for a token of task j
// (its id in ForwardContext::task_ids):
//   s      = sigmoid(a_j)                        a [N]: one trained sensitivity per task
//   logits = (1 - s) x Wb^T + s x Wj^T           Wb [E, d] the base router, Wj [E, d] task j's
//   p      = softmax(logits);  chosen = the top 2;  gates = p / (sum of the chosen p)
// Unlike the domain of domain-aware routing, the task is given, never inferred: the router
// reads the ids in every forward and backward.
//
// Part 1 shows the mixing on one token: the same x under three sensitivities.
// Part 2 trains it. N = 3 tasks share one input distribution (x ~ N(3 u_0, I), u_0 the first
// unit vector), so x alone cannot tell the tasks apart; task j's target is the mean of experts
// 2j and 2j + 1 of a teacher bank. The layer's experts start as the teacher's, the base router
// is small and random, every task router is zero and every a_j = 0 (s = 1/2). Adam trains
// everything (the router at lr 1e-2, the experts at 1e-3); the same run for a plain softmax
// top-2 router (no task ids) shows what the task routers are for. Each task's tokens move onto
// its own pair, and the sensitivities rise: the task routers earn a larger share of the logits.
//
//   ./routing_task_aware
#include <moe/moe.hpp>
#include <moe/train/train.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "../example_util.hpp"

namespace {

using S = double;  // double: the printed digits do not depend on the SIMD width
constexpr moe::Index N = 3, E = 6, d = 8, ff = 16, k = 2;
constexpr moe::Index steps = 400, batch = 48, eval_tokens = 300;
constexpr double router_lr = 1e-2, expert_lr = 1e-3;
const std::array<const char*, N> task_name = {"translate", "summarise", "classify"};

using TaskLayer = moe::MoELayer<moe::SwiGLUExperts<S>, moe::TaskAwareSoftmaxTopKRouter<S>, moe::WeightedSumCombiner<S>>;
using PlainLayer = moe::MoELayer<moe::SwiGLUExperts<S>, moe::SoftmaxTopKRouter<S>, moe::WeightedSumCombiner<S>>;

struct Batch {
  moe::RowMatrix<S> x, y;
  std::vector<std::int64_t> task;
};

/// n tokens: task j uniform (CounterRng(seed, 1)), x = 3 u_0 + N(0, I) whatever the task, and
/// the target (teacher_2j(x) + teacher_2j+1(x)) / 2.
Batch make_batch(moe::Index n, std::uint64_t seed, const moe::SwiGLUExperts<S>& teacher) {
  Batch b;
  b.x.resize(n, d);
  b.y.resize(n, d);
  b.task.resize(std::size_t(n));
  moe::examples::fill_normal(b.x, seed, 1.0);
  const moe::CounterRng pick(seed, 1);
  for (moe::Index t = 0; t < n; ++t) {
    b.task[std::size_t(t)] = moe::Index(pick.bits(std::uint64_t(t), 0) % std::uint64_t(N));
    b.x(t, 0) += 3.0;
  }
  moe::RowMatrix<S> hidden(n, teacher.hidden_cols());
  std::vector<moe::RowMatrix<S>> out(std::size_t(E), moe::RowMatrix<S>(n, d));
  for (moe::Index e = 0; e < E; ++e) teacher.forward(e, b.x, hidden, out[std::size_t(e)]);
  for (moe::Index t = 0; t < n; ++t) {
    const auto j = std::size_t(b.task[std::size_t(t)]);
    b.y.row(t) = 0.5 * (out[2 * j].row(t) + out[2 * j + 1].row(t));
  }
  return b;
}

moe::ForwardContext context_of(const Batch& b, moe::Mode mode) {
  moe::ForwardContext ctx;
  ctx.mode = mode;
  ctx.task_ids = b.task;  // read by the task-aware router; a plain router ignores it
  return ctx;
}

struct Metrics {
  double mse = 0;
  std::vector<moe::Index> usage;   ///< assignments of task j's tokens to expert e, at j * E + e
  std::vector<moe::Index> tokens;  ///< tokens of each task
  /// Share of task j's assignments on the teacher's pair for it, experts 2j and 2j + 1.
  [[nodiscard]] double pair_share(moe::Index j) const {
    return double(usage[std::size_t(j * E + 2 * j)] + usage[std::size_t(j * E + 2 * j + 1)]) /
           double(k * tokens[std::size_t(j)]);
  }
  [[nodiscard]] double pair_share() const {
    double s = 0;
    for (moe::Index j = 0; j < N; ++j) s += pair_share(j) * double(tokens[std::size_t(j)]);
    return s / double(eval_tokens);
  }
};

template <class Layer>
Metrics evaluate(const Layer& layer, const Batch& eval) {
  Metrics m;
  moe::Workspace<S> ws;
  const moe::RowMatrix<S> y = layer.forward(eval.x, ws, context_of(eval, moe::Mode::inference));
  m.mse = (y - eval.y).array().square().mean();
  m.tokens.assign(std::size_t(N), 0);
  for (const std::int64_t j : eval.task) ++m.tokens[std::size_t(j)];
  m.usage.assign(std::size_t(N * E), 0);
  const moe::RoutingResult<S>& r = ws.routing;
  for (std::size_t i = 0; i < r.token.size(); ++i)
    ++m.usage[std::size_t(eval.task[std::size_t(r.token[i])] * E + r.expert[i])];
  return m;
}

/// One Adam step per batch on L = mean((y - target)^2).
template <class Layer>
void train(Layer& layer, const std::vector<Batch>& batches) {
  auto grads = layer.make_gradients();
  moe::Adam<S> router_opt(router_lr), expert_opt(expert_lr);
  moe::Workspace<S> ws;
  for (const Batch& b : batches) {
    const moe::RowMatrix<S> y = layer.forward(b.x, ws, context_of(b, moe::Mode::training));
    const moe::RowMatrix<S> dy = (y - b.y) * (2.0 / double(batch * d));
    moe::zero_grad(grads);
    (void)layer.backward(dy, ws, grads, moe::no_losses);
    router_opt.step(layer.router(), grads.router);  // task-aware: Wb, every Wj and a
    expert_opt.step(layer.experts(), grads.experts);
  }
}

/// Part 1: one token, one task, three sensitivities.
void show_mixing(const moe::SwiGLUExperts<S>& experts) {
  moe::TaskAwareSoftmaxTopKRouter<S> router(E, d, 1, k);
  moe::examples::fill_normal(router.weight(), 21, 0.5);
  moe::examples::fill_normal(router.task_gate(0), 22, 0.5);
  const TaskLayer probe(experts, router, moe::WeightedSumCombiner<S>{});
  moe::RowMatrix<S> x(1, d);
  moe::examples::fill_normal(x, 23, 1.0);
  const moe::RowMatrix<S> base = x * router.weight().transpose(), own = x * router.task_gate(0).transpose();
  const auto row = [](const char* label, const auto& v) {
    std::printf("  %-22s", label);
    for (moe::Index e = 0; e < E; ++e) std::printf(" %6.2f", v(0, e));
    std::printf("\n");
  };
  std::printf("part 1: one token of task 0 (E %ld, d %ld, top-%ld renormalised)\n", long(E), long(d), long(k));
  std::printf("  %-22s", "");
  for (moe::Index e = 0; e < E; ++e) std::printf("     e%ld", long(e));
  std::printf("\n");
  row("base logits x Wb^T", base);
  row("task logits x W0^T", own);
  const std::vector<std::int64_t> ids = {0};
  for (const double a : {-3.0, 0.0, 3.0}) {
    TaskLayer layer = probe;
    layer.router().sensitivity()[0] = a;
    moe::Workspace<S> ws;
    moe::ForwardContext ctx;
    ctx.task_ids = ids;
    (void)layer.forward(x, ws, ctx);
    char label[32];
    std::snprintf(label, sizeof label, "a = %+.0f: s = %.3f", a, layer.router().task_mix(0));
    row(label, ws.routing.logits);
    std::printf("  %-22s  chosen e%ld (gate %.3f), e%ld (gate %.3f)\n", "", long(ws.routing.expert[0]),
                ws.routing.gate[0], long(ws.routing.expert[1]), ws.routing.gate[1]);
  }
}

}  // namespace

int main() {
  moe::SwiGLUExperts<S> teacher(E, d, ff);
  moe::examples::fill_normal(teacher.gate_up(), 1, 1.0 / std::sqrt(double(d)));
  moe::examples::fill_normal(teacher.down(), 2, 1.0 / std::sqrt(double(ff)));

  std::printf("task-aware routing: logits = (1 - s) x Wb^T + s x Wt^T, s = sigmoid(a_t), t the token's task\n\n");
  show_mixing(teacher);

  moe::TaskAwareSoftmaxTopKRouter<S> router(E, d, N, k);  // every Wj = 0, every a_j = 0
  moe::examples::fill_normal(router.weight(), 4, 0.3);
  moe::SoftmaxTopKRouter<S> plain_router(E, d, k);
  plain_router.weight() = router.weight();
  const TaskLayer initial(teacher, std::move(router), moe::WeightedSumCombiner<S>{});
  PlainLayer plain(teacher, std::move(plain_router), moe::WeightedSumCombiner<S>{});

  TaskLayer trained = initial;
  std::vector<Batch> batches;  // fresh tokens at every step, the same for both runs
  for (moe::Index step = 0; step < steps; ++step) batches.push_back(make_batch(batch, 1000 + std::uint64_t(step), teacher));
  train(trained, batches);
  train(plain, batches);
  const Batch eval = make_batch(eval_tokens, 99, teacher);
  const Metrics before = evaluate(initial, eval), after = evaluate(trained, eval), no_task = evaluate(plain, eval);

  std::printf("\npart 2: %ld tasks with one input distribution, x ~ N(3 u_0, I); task j's target = mean of\n",
              long(N));
  std::printf("teacher experts 2j and 2j+1; %ld Adam steps (router lr %g, experts lr %g), batches of %ld\n",
              long(steps), router_lr, expert_lr, long(batch));
  std::printf("held out: %ld tokens (", long(eval_tokens));
  for (moe::Index j = 0; j < N; ++j)
    std::printf("%s%s %ld", j ? ", " : "", task_name[std::size_t(j)], long(before.tokens[std::size_t(j)]));
  std::printf("), inference mode\n\n");
  std::printf("%-34s   before   after   plain\n", "");
  std::printf("%-34s %8.4f %7.4f %7.4f\n", "task MSE", before.mse, after.mse, no_task.mse);
  std::printf("%-34s %6.1f %% %5.1f %% %5.1f %%\n", "assignments on the task's pair", 100.0 * before.pair_share(),
              100.0 * after.pair_share(), 100.0 * no_task.pair_share());
  std::printf("(plain: a softmax top-2 router from the same Wb, no task ids, trained on the same batches)\n");

  std::printf("\nper task, after training:\n  %-9s |", "task");
  for (moe::Index e = 0; e < E; ++e) std::printf("    e%ld", long(e));
  std::printf(" | %-20s| %6s  %5s\n", "its pair", "a_j", "s_j");
  for (moe::Index j = 0; j < N; ++j) {
    std::printf("  %-9s |", task_name[std::size_t(j)]);
    for (moe::Index e = 0; e < E; ++e)
      std::printf(" %5.1f", 100.0 * double(after.usage[std::size_t(j * E + e)]) / double(k * after.tokens[std::size_t(j)]));
    std::printf(" | %5.1f %% (e%ld e%ld)     | %6.3f  %.3f\n", 100.0 * after.pair_share(j), long(2 * j),
                long(2 * j + 1), trained.router().sensitivity()[j], trained.router().task_mix(j));
  }
  std::printf("(usage in %% of the task's assignments; s_j = 0.500 before training)\n");
  return 0;
}

// TaskAwareRouter's backward, through a whole MoELayer (SwiGLU experts, weighted sum), against
// central finite differences in double: L = sum(y * G) (+ w * the router z-loss of the mixed
// logits, computed here by a scalar loop), for dx, Wb, every task router, the sensitivities and
// the experts, over several E, N (tasks), k and T, with and without a bias in the base router.
// Routing decisions are piecewise constant: the data are random, and every perturbed forward
// must route as the unperturbed one did. A task absent from the batch gets no gradient.
#include <moe/moe.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "support/finite_difference.hpp"
#include "support/gradient_check.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::test::random_matrix;

using TaskLayer = moe::MoELayer<moe::SwiGLUExperts<double>, moe::TaskAwareSoftmaxTopKRouter<double>,
                                moe::WeightedSumCombiner<double>>;

/// mean over tokens of logsumexp((1 - s) (x Wb^T + b) + s x Wt^T)^2, by loops.
double task_grad_z_loss(const RowMatrix<double>& x, const moe::TaskAwareSoftmaxTopKRouter<double>& r,
                        const std::vector<std::int64_t>& ids) {
  const Index E = r.num_experts();
  double total = 0;
  for (Index t = 0; t < x.rows(); ++t) {
    const Index task = ids[size_t(t)];
    const double s = 1.0 / (1.0 + std::exp(-r.sensitivity()[task]));
    std::vector<double> z(static_cast<size_t>(E));
    for (Index e = 0; e < E; ++e) {
      double base = r.router().bias().size() != 0 ? r.router().bias()[e] : 0.0, own = 0;
      for (Index i = 0; i < x.cols(); ++i) {
        base += x(t, i) * r.weight()(e, i);
        own += x(t, i) * r.task_gate(task)(e, i);
      }
      z[size_t(e)] = (1 - s) * base + s * own;
    }
    const double max = *std::max_element(z.begin(), z.end());
    double sum = 0;
    for (const double v : z) sum += std::exp(v - max);
    const double lse = max + std::log(sum);
    total += lse * lse;
  }
  return total / static_cast<double>(x.rows());
}

/// A layer of E SwiGLU experts over width 5 (ff 4), N tasks, top-k; router tensors N(0, 1),
/// sensitivities N(0, 1.5^2) (so s spans most of (0, 1)), experts N(0, 0.3^2); with a bias
/// N(0, 1) in the base router when asked.
TaskLayer task_grad_layer(Index E, Index N, Index k, unsigned seed, bool bias = false) {
  std::vector<RowMatrix<double>> wt;
  for (Index j = 0; j < N; ++j) wt.push_back(random_matrix(E, 5, seed + 10 + static_cast<unsigned>(j)));
  moe::Vector<double> b;
  if (bias) b = random_matrix(E, 1, seed + 4);
  moe::TaskAwareSoftmaxTopKRouter<double> router(
      moe::SoftmaxTopKRouter<double>(random_matrix(E, 5, seed), k, moe::SoftmaxTopK<double>{}, std::move(b)),
      std::move(wt), random_matrix(N, 1, seed + 1, 1.5));
  return TaskLayer(moe::test::swiglu<double>(E, 5, 4, seed + 3), std::move(router));
}

/// Checks dx and every parameter gradient for L = sum(y * G) + z_weight * z-loss (z_weight 0:
/// no loss in the list), task ids drawn uniformly in [0, N) unless given.
void task_gradcheck(TaskLayer& layer, Index T, double z_weight, unsigned seed, std::vector<std::int64_t> ids = {}) {
  const Index N = layer.router().num_tasks();
  RowMatrix<double> x = random_matrix(T, layer.input_dim(), seed);
  const RowMatrix<double> G = random_matrix(T, layer.output_dim(), seed + 1);
  if (ids.empty()) {
    std::mt19937 gen(seed + 2);
    std::uniform_int_distribution<std::int64_t> pick(0, N - 1);
    ids.resize(static_cast<size_t>(T));
    for (auto& id : ids) id = pick(gen);
  }
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  ctx.task_ids = ids;

  moe::Workspace<double> ws;
  RowMatrix<double> y(T, layer.output_dim());
  layer.forward(x, y, ws, ctx);
  const std::vector<Index> experts0 = ws.routing.expert;
  auto grads = layer.make_gradients();
  RowMatrix<double> dx(T, layer.input_dim());
  if (z_weight == 0)
    layer.backward(G, dx, ws, grads, moe::no_losses);
  else
    layer.backward(G, dx, ws, grads, moe::losses(moe::weighted(moe::RouterZLoss{}, z_weight)));

  moe::Workspace<double> ws2;
  const auto loss = [&] {
    layer.forward(x, y, ws2, ctx);
    REQUIRE(ws2.routing.expert == experts0);
    double l = (y.array() * G.array()).sum();
    if (z_weight != 0) l += z_weight * task_grad_z_loss(x, layer.router(), ids);
    return l;
  };
  CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(x, loss)) < 1e-6);
  moe::test::check_parameter_gradients(layer, grads, loss, 1e-6);
}

struct TaskGradConfig {
  Index E, N, k, T;
};
constexpr TaskGradConfig task_grad_configs[] = {{4, 2, 1, 9}, {6, 3, 2, 11}, {5, 4, 3, 8}, {8, 3, 2, 10}, {4, 1, 2, 7},
                                                {3, 5, 3, 12}};

}  // namespace

TEST_CASE("task-aware layer: dx, Wb, every task router, the sensitivities and the experts match finite differences",
          "[router][backward][task]") {
  unsigned seed = 100;
  for (const auto& c : task_grad_configs) {
    INFO("E " << c.E << ", N " << c.N << ", k " << c.k << ", T " << c.T);
    TaskLayer layer = task_grad_layer(c.E, c.N, c.k, seed);
    task_gradcheck(layer, c.T, 0.0, seed + 5);
    seed += 20;
  }
}

TEST_CASE("task-aware layer with a base-router bias and the z-loss of the mixed logits: gradients match finite "
          "differences",
          "[router][backward][task][loss]") {
  unsigned seed = 300;
  for (const auto& c : task_grad_configs)
    for (const bool bias : {false, true}) {
      INFO("E " << c.E << ", N " << c.N << ", k " << c.k << ", bias " << bias);
      TaskLayer layer = task_grad_layer(c.E, c.N, c.k, seed, bias);
      task_gradcheck(layer, c.T, 0.7, seed + 5);
      seed += 20;
    }
}

TEST_CASE("task-aware layer: a task absent from the batch gets no gradient, the others match finite differences",
          "[router][backward][task]") {
  TaskLayer layer = task_grad_layer(6, 4, 2, 500);
  // Tasks 0 and 2 only.
  const std::vector<std::int64_t> ids = {2, 0, 0, 2, 2, 0, 2, 0, 0};
  task_gradcheck(layer, 9, 0.0, 505, ids);
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  ctx.task_ids = ids;
  const RowMatrix<double> x = random_matrix(9, 5, 505), G = random_matrix(9, 5, 506);
  moe::Workspace<double> ws;
  RowMatrix<double> y(9, 5), dx(9, 5);
  layer.forward(x, y, ws, ctx);
  auto grads = layer.make_gradients();
  layer.backward(G, dx, ws, grads, moe::no_losses);
  CHECK(grads.router.task_gate(1).isZero(0.0));
  CHECK(grads.router.task_gate(3).isZero(0.0));
  CHECK(grads.router.sensitivity()[1] == 0.0);
  CHECK(grads.router.sensitivity()[3] == 0.0);
  CHECK(grads.router.task_gate(0).cwiseAbs().maxCoeff() > 0);
  CHECK(grads.router.task_gate(2).cwiseAbs().maxCoeff() > 0);
  CHECK(grads.router.sensitivity()[0] != 0.0);
  CHECK(grads.router.sensitivity()[2] != 0.0);
}

TEST_CASE("task-aware layer: a second backward accumulates the same gradients again", "[router][backward][task]") {
  TaskLayer layer = task_grad_layer(5, 3, 2, 600);
  const RowMatrix<double> x = random_matrix(7, 5, 601), G = random_matrix(7, 5, 602);
  const std::vector<std::int64_t> ids = {0, 2, 1, 1, 0, 2, 2};
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  ctx.task_ids = ids;
  moe::Workspace<double> ws;
  RowMatrix<double> y(7, 5), dx(7, 5), dx2(7, 5);
  layer.forward(x, y, ws, ctx);
  auto once = layer.make_gradients(), twice = layer.make_gradients();
  layer.backward(G, dx, ws, once, moe::no_losses);
  layer.backward(G, dx2, ws, twice, moe::no_losses);
  layer.backward(G, dx2, ws, twice, moe::no_losses);
  CHECK(dx == dx2);
  CHECK((twice.router.sensitivity() - 2 * once.router.sensitivity()).cwiseAbs().maxCoeff() < 1e-14);
  for (Index j = 0; j < 3; ++j)
    CHECK((twice.router.task_gate(j) - 2 * once.router.task_gate(j)).cwiseAbs().maxCoeff() < 1e-14);
  CHECK((twice.router.weight() - 2 * once.router.weight()).cwiseAbs().maxCoeff() < 1e-14);
}

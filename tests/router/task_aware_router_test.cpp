// TaskAwareRouter (issue #15) against a scalar reference written from the rule (golden-variety
// README, task_aware): s = sigmoid(a[t]) for the token's task t, logits = (1 - s) x Wb^T +
// s x Wt^T, then softmax, top-k, renormalise; its parameters' names, its shape errors and its
// refusal of missing or out-of-range task ids.
#include <moe/contracts/concepts.hpp>
#include <moe/router/task_aware_router.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "support/errors.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::test::random_matrix;

/// What the rule computes for every token, by loops.
struct TaskReference {
  RowMatrix<double> logits, gates;
};

TaskReference task_reference(const RowMatrix<double>& x, const RowMatrix<double>& wb,
                             const std::vector<RowMatrix<double>>& wt, const moe::Vector<double>& a,
                             const std::vector<std::int64_t>& ids, Index k, bool renorm,
                             const moe::Vector<double>& bias = {}) {
  const Index T = x.rows(), d = x.cols(), E = wb.rows();
  TaskReference out{RowMatrix<double>::Zero(T, E), RowMatrix<double>::Zero(T, E)};
  for (Index t = 0; t < T; ++t) {
    const auto task = static_cast<size_t>(ids[static_cast<size_t>(t)]);
    const double s = 1.0 / (1.0 + std::exp(-a[static_cast<Index>(task)]));
    std::vector<double> p(static_cast<size_t>(E));
    for (Index e = 0; e < E; ++e) {
      double base = bias.size() != 0 ? bias[e] : 0.0, own = 0;
      for (Index i = 0; i < d; ++i) {
        base += x(t, i) * wb(e, i);
        own += x(t, i) * wt[task](e, i);
      }
      out.logits(t, e) = (1 - s) * base + s * own;
    }
    double zmax = out.logits(t, 0);
    for (Index e = 1; e < E; ++e) zmax = std::max(zmax, out.logits(t, e));
    double psum = 0;
    for (Index e = 0; e < E; ++e) psum += (p[size_t(e)] = std::exp(out.logits(t, e) - zmax));
    for (Index e = 0; e < E; ++e) p[size_t(e)] /= psum;
    std::vector<Index> order(static_cast<size_t>(E));
    std::iota(order.begin(), order.end(), Index{0});
    std::stable_sort(order.begin(), order.end(), [&](Index u, Index v) { return p[size_t(u)] > p[size_t(v)]; });
    double kept = 0;
    for (Index j = 0; j < k; ++j) kept += p[size_t(order[size_t(j)])];
    for (Index j = 0; j < k; ++j) {
      const Index e = order[size_t(j)];
      out.gates(t, e) = renorm ? p[size_t(e)] / kept : p[size_t(e)];
    }
  }
  return out;
}

std::vector<RowMatrix<double>> task_gates_of(Index N, Index E, Index d, unsigned seed) {
  std::vector<RowMatrix<double>> w;
  for (Index j = 0; j < N; ++j) w.push_back(random_matrix(E, d, seed + static_cast<unsigned>(j)));
  return w;
}

/// Ids in [0, N), scattered (not sorted by task): (7 t + 3) mod N.
std::vector<std::int64_t> task_scattered_ids(Index T, Index N) {
  std::vector<std::int64_t> ids(static_cast<size_t>(T));
  for (Index t = 0; t < T; ++t) ids[size_t(t)] = (7 * t + 3) % N;
  return ids;
}

}  // namespace

TEST_CASE("task-aware router: logits (1 - s) x Wb^T + s x Wt^T per token's task, gates as the scalar reference",
          "[router][task]") {
  struct Config {
    Index E, N, k;
    bool renorm;
  };
  for (const Config c : {Config{4, 2, 1, true}, Config{6, 3, 2, true}, Config{6, 3, 2, false}, Config{8, 5, 3, true},
                         Config{5, 1, 2, true}, Config{7, 4, 7, true}}) {
    INFO("E " << c.E << ", N " << c.N << ", k " << c.k << ", renormalise " << c.renorm);
    const Index d = 6, T = 21;
    const RowMatrix<double> wb = random_matrix(c.E, d, 11), x = random_matrix(T, d, 14);
    const auto wt = task_gates_of(c.N, c.E, d, 20);
    const moe::Vector<double> a = random_matrix(c.N, 1, 13, 2.0);
    const moe::TaskAwareSoftmaxTopKRouter<double> router(
        moe::SoftmaxTopKRouter<double>(wb, c.k, moe::SoftmaxTopK<double>{c.renorm}), wt, a);
    CHECK(router.num_tasks() == c.N);
    CHECK(router.num_experts() == c.E);
    CHECK(router.input_dim() == d);
    CHECK(router.k() == c.k);
    for (Index j = 0; j < c.N; ++j) CHECK(router.task_mix(j) == Approx(1.0 / (1.0 + std::exp(-a[j]))).epsilon(1e-15));
    const std::vector<std::int64_t> ids = task_scattered_ids(T, c.N);
    moe::ForwardContext ctx;
    ctx.task_ids = ids;
    const auto ref = task_reference(x, wb, wt, a, ids, c.k, c.renorm);
    moe::RoutingResult<double> out;
    router.route(x, out, ctx);
    REQUIRE(out.size() == T * c.k);
    CHECK((out.logits - ref.logits).cwiseAbs().maxCoeff() < 1e-12);
    CHECK((out.dense_gates() - ref.gates).cwiseAbs().maxCoeff() < 1e-13);
    // The batch-invariant product kernel computes the same rule.
    ctx.gemm = moe::GemmKernel::batch_invariant;
    moe::RoutingResult<double> out2;
    router.route(x, out2, ctx);
    CHECK((out2.logits - ref.logits).cwiseAbs().maxCoeff() < 1e-12);
    CHECK((out2.dense_gates() - ref.gates).cwiseAbs().maxCoeff() < 1e-13);
    // The task term changes the logits (it is not a no-op at these draws).
    CHECK((ref.logits - x * wb.transpose()).cwiseAbs().maxCoeff() > 1e-2);
  }
}

TEST_CASE("task-aware router: a token's logits depend on its own task only, and tasks absent from the batch are fine",
          "[router][task]") {
  const Index E = 5, d = 4, N = 4, T = 9;
  const RowMatrix<double> wb = random_matrix(E, d, 31), x = random_matrix(T, d, 32);
  const auto wt = task_gates_of(N, E, d, 33);
  const moe::Vector<double> a = random_matrix(N, 1, 37);
  const moe::TaskAwareSoftmaxTopKRouter<double> router(moe::SoftmaxTopKRouter<double>(wb, 2), wt, a);
  // Every token of task 2 (tasks 0, 1, 3 absent), then all of task 0 but the first token.
  for (const std::vector<std::int64_t>& ids :
       {std::vector<std::int64_t>(T, 2), std::vector<std::int64_t>{1, 0, 0, 0, 0, 0, 0, 0, 0}}) {
    moe::ForwardContext ctx;
    ctx.task_ids = ids;
    const auto ref = task_reference(x, wb, wt, a, ids, 2, true);
    moe::RoutingResult<double> out;
    router.route(x, out, ctx);
    CHECK((out.logits - ref.logits).cwiseAbs().maxCoeff() < 1e-12);
    CHECK((out.dense_gates() - ref.gates).cwiseAbs().maxCoeff() < 1e-13);
  }
}

TEST_CASE("task-aware router: a large sensitivity gives the task's router, a very negative one the base router",
          "[router][task]") {
  const Index E = 6, d = 5, T = 8;
  const RowMatrix<double> wb = random_matrix(E, d, 41), x = random_matrix(T, d, 42);
  const auto wt = task_gates_of(2, E, d, 43);
  moe::Vector<double> a(2);
  a << 60.0, -60.0;  // s = 1 - 9e-27 and 9e-27: 1 - s and s round to 1 and 0 in double
  const moe::TaskAwareSoftmaxTopKRouter<double> router(moe::SoftmaxTopKRouter<double>(wb, 2), wt, a);
  std::vector<std::int64_t> ids(static_cast<size_t>(T));
  for (Index t = 0; t < T; ++t) ids[size_t(t)] = t % 2;
  moe::ForwardContext ctx;
  ctx.task_ids = ids;
  moe::RoutingResult<double> out;
  router.route(x, out, ctx);
  const RowMatrix<double> own = x * wt[0].transpose(), base = x * wb.transpose();
  for (Index t = 0; t < T; ++t) {
    const RowMatrix<double>& expected = t % 2 == 0 ? own : base;
    CHECK((out.logits.row(t) - expected.row(t)).cwiseAbs().maxCoeff() < 1e-12);
  }
}

TEST_CASE("task-aware router mixes the wrapped router's bias into the base term", "[router][task]") {
  const RowMatrix<double> wb = random_matrix(5, 4, 51), x = random_matrix(13, 4, 54);
  const auto wt = task_gates_of(3, 5, 4, 52);
  const moe::Vector<double> a = random_matrix(3, 1, 53), b = random_matrix(5, 1, 55);
  const moe::TaskAwareSoftmaxTopKRouter<double> router(moe::SoftmaxTopKRouter<double>(wb, 2, {}, b), wt, a);
  const std::vector<std::int64_t> ids = task_scattered_ids(13, 3);
  moe::ForwardContext ctx;
  ctx.task_ids = ids;
  const auto ref = task_reference(x, wb, wt, a, ids, 2, true, b);
  moe::RoutingResult<double> out;
  router.route(x, out, ctx);
  CHECK((out.logits - ref.logits).cwiseAbs().maxCoeff() < 1e-12);
  CHECK((out.dense_gates() - ref.gates).cwiseAbs().maxCoeff() < 1e-13);
}

TEST_CASE("task-aware router with zero weights: every s = 1/2, zero logits", "[router][task]") {
  const moe::TaskAwareSoftmaxTopKRouter<float> router(6, 5, 3, 2);
  CHECK(router.num_tasks() == 3);
  REQUIRE(router.task_gates().size() == 3);
  for (Index j = 0; j < 3; ++j) {
    CHECK(router.task_gate(j).rows() == 6);
    CHECK(router.task_gate(j).cols() == 5);
    CHECK(router.task_mix(j) == 0.5f);
  }
  CHECK(router.sensitivity().size() == 3);
  const RowMatrix<float> x = random_matrix(3, 5, 61).cast<float>();
  const std::vector<std::int64_t> ids = {2, 0, 1};
  moe::ForwardContext ctx;
  ctx.task_ids = ids;
  moe::RoutingResult<float> out;
  router.route(x, out, ctx);
  CHECK(out.logits.isZero(0.0f));
}

TEST_CASE("task-aware router names its parameters as the checkpoint", "[router][task]") {
  moe::TaskAwareSoftmaxTopKRouter<float> router(6, 5, 3, 2);
  std::vector<std::string> names;
  std::vector<std::pair<Index, Index>> shapes;
  router.for_each_parameter([&](const std::string& n, auto&& block) {
    names.push_back(n);
    shapes.emplace_back(block.rows(), block.cols());
  });
  const std::vector<std::string> expected{"gate.weight", "task_gates.0.weight", "task_gates.1.weight",
                                          "task_gates.2.weight", "task_sensitivity"};
  CHECK(names == expected);
  CHECK(shapes == std::vector<std::pair<Index, Index>>{{6, 5}, {6, 5}, {6, 5}, {6, 5}, {3, 1}});
  const auto& const_router = router;
  names.clear();
  const_router.for_each_parameter([&](const std::string& n, const auto&) { names.push_back(n); });
  CHECK(names == expected);
  // Writing through the mutable visit reaches the router's tensors.
  router.for_each_parameter([](const std::string&, auto&& block) { block.setConstant(2.0f); });
  CHECK(router.weight().isConstant(2.0f));
  for (Index j = 0; j < 3; ++j) CHECK(router.task_gate(j).isConstant(2.0f));
  CHECK(router.sensitivity().isConstant(2.0f));
  // Renamed (a checkpoint with other names).
  router.names().task_gate = "tasks.{e}.router";
  router.names().sensitivity = "mix";
  names.clear();
  router.for_each_parameter([&](const std::string& n, auto&&) { names.push_back(n); });
  CHECK(names == std::vector<std::string>{"gate.weight", "tasks.0.router", "tasks.1.router", "tasks.2.router", "mix"});
}

TEST_CASE("task-aware router refuses mismatched task routers and sensitivities", "[router][task][errors]") {
  const RowMatrix<double> wb = random_matrix(6, 5, 71);
  const auto make = [&](std::vector<RowMatrix<double>> wt, moe::Vector<double> a) {
    return moe::TaskAwareSoftmaxTopKRouter<double>(moe::SoftmaxTopKRouter<double>(wb, 2), std::move(wt), std::move(a));
  };
  const moe::Vector<double> a3 = random_matrix(3, 1, 72);
  SECTION("a task router of another shape") {
    auto wt = task_gates_of(3, 6, 5, 73);
    wt[1] = random_matrix(6, 4, 74);
    moe::test::require_invalid([&] { (void)make(wt, a3); },
                                 {"TaskAwareRouter::TaskAwareRouter()", "task router 1 shape",
                                  "expected [num_experts = 6, input_dim = 5], got [6, 4]"});
    wt[1] = random_matrix(5, 5, 74);
    moe::test::require_invalid([&] { (void)make(wt, a3); }, {"task router 1 shape", "got [5, 5]"});
  }
  SECTION("sensitivities of another length") {
    moe::test::require_invalid([&] { (void)make(task_gates_of(3, 6, 5, 73), random_matrix(2, 1, 75)); },
                                 {"TaskAwareRouter::TaskAwareRouter()",
                                  "task_sensitivity length (one per task) expected 3, got 2"});
  }
  SECTION("no task") {
    moe::test::require_invalid([&] { (void)make({}, moe::Vector<double>()); },
                                 {"TaskAwareRouter::TaskAwareRouter()", "num_tasks (task routers) expected >= 1, got 0"});
    moe::test::require_invalid([] { (void)moe::TaskAwareSoftmaxTopKRouter<double>(4, 3, 0, 2); },
                                 {"TaskAwareRouter::TaskAwareRouter()", "num_tasks expected >= 1, got 0"});
    moe::test::require_invalid([] { (void)moe::TaskAwareSoftmaxTopKRouter<double>(4, 3, -2, 2); },
                                 {"TaskAwareRouter::TaskAwareRouter()", "num_tasks expected >= 1, got -2"});
  }
  SECTION("check_shapes() after a tensor was resized through its accessor") {
    auto router = make(task_gates_of(3, 6, 5, 73), a3);
    CHECK_NOTHROW(router.check_shapes());
    router.task_gate(2) = random_matrix(6, 3, 76);
    moe::test::require_invalid([&] { router.check_shapes(); },
                                 {"TaskAwareRouter::check_shapes()", "task router 2 shape",
                                  "expected [num_experts = 6, input_dim = 5], got [6, 3]"});
    router.task_gate(2) = random_matrix(6, 5, 77);
    CHECK_NOTHROW(router.check_shapes());
    router.task_gates().push_back(random_matrix(6, 5, 78));
    moe::test::require_invalid([&] { router.check_shapes(); },
                                 {"TaskAwareRouter::check_shapes()", "task_sensitivity length (one per task) expected 4, got 3"});
    router.sensitivity() = random_matrix(4, 1, 79);
    CHECK_NOTHROW(router.check_shapes());
    router.weight() = random_matrix(7, 5, 80);
    moe::test::require_invalid([&] { router.check_shapes(); }, {"task router 0 shape", "num_experts = 7"});
    router.weight() = random_matrix(6, 5, 81);
    router.task_gates().clear();
    router.sensitivity().resize(0);
    moe::test::require_invalid([&] { router.check_shapes(); },
                                 {"TaskAwareRouter::check_shapes()", "num_tasks (task routers) expected >= 1, got 0"});
  }
  SECTION("x of the wrong width") {
    const auto router = make(task_gates_of(3, 6, 5, 73), a3);
    const RowMatrix<double> x = random_matrix(4, 3, 82);
    const std::vector<std::int64_t> ids = {0, 1, 2, 0};
    moe::ForwardContext ctx;
    ctx.task_ids = ids;
    moe::RoutingResult<double> out;
    moe::test::require_invalid([&] { router.route(x, out, ctx); }, {"x columns (input_dim)", "expected 5, got 3"});
  }
}

TEST_CASE("task-aware router refuses missing, short and out-of-range task ids", "[router][task][errors]") {
  const auto router = moe::TaskAwareSoftmaxTopKRouter<double>(
      moe::SoftmaxTopKRouter<double>(random_matrix(6, 5, 91), 2), task_gates_of(3, 6, 5, 92), random_matrix(3, 1, 93));
  const RowMatrix<double> x = random_matrix(4, 5, 94);
  moe::RoutingResult<double> out;
  moe::ForwardContext ctx;
  SECTION("none given") {
    moe::test::require_invalid([&] { router.route(x, out, ctx); },
                                 {"TaskAwareRouter::route()",
                                  "task_ids length (one per token; ForwardContext::task_ids) expected 4, got 0"});
  }
  SECTION("one per token, no fewer and no more") {
    const std::vector<std::int64_t> three = {0, 1, 2}, five = {0, 1, 2, 0, 1};
    ctx.task_ids = three;
    moe::test::require_invalid([&] { router.route(x, out, ctx); }, {"task_ids length", "expected 4, got 3"});
    ctx.task_ids = five;
    moe::test::require_invalid([&] { router.route(x, out, ctx); }, {"task_ids length", "expected 4, got 5"});
  }
  SECTION("out of range") {
    const std::vector<std::int64_t> high = {0, 1, 3, 0}, low = {0, -1, 2, 0};
    ctx.task_ids = high;
    moe::test::require_invalid([&] { router.route(x, out, ctx); },
                                 {"TaskAwareRouter::route()", "task_ids[2] expected in [0, num_tasks = 3), got 3"});
    ctx.task_ids = low;
    moe::test::require_invalid([&] { router.route(x, out, ctx); },
                                 {"task_ids[1] expected in [0, num_tasks = 3), got -1"});
  }
  SECTION("the backward reads them too") {
    const std::vector<std::int64_t> ids = {0, 1, 2, 0};
    ctx.task_ids = ids;
    router.route(x, out, ctx);
    RowMatrix<double> dlogits = RowMatrix<double>::Zero(4, 6), dx = RowMatrix<double>::Zero(4, 5);
    const std::vector<double> dgate(static_cast<size_t>(out.size()), 1.0);
    auto grad = router;
    moe::ForwardContext missing;
    const moe::RouterBackward<double> in{x, out, dgate.data(), moe::detail::empty_matrix<double>(), dlogits, dx,
                                         moe::BackwardContext{missing}};
    moe::test::require_invalid([&] { router.backward(in, grad, moe::no_losses); },
                                 {"TaskAwareRouter::backward()",
                                  "task_ids length (one per token; ForwardContext::task_ids) expected 4, got 0"});
  }
}

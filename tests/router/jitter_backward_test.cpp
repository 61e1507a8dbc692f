// Jittered<R> backward against finite differences with a fixed (seed, step): the wrapped
// router saw x * u, so dL/dx through the router is dL/d(x * u) * u.
#include <moe/core/parameters.hpp>
#include <moe/contracts/concepts.hpp>
#include <moe/router/jitter.hpp>
#include <moe/router/noisy_top_k_router.hpp>
#include <moe/router/top_k_router.hpp>

#include <catch2/catch.hpp>

#include <random>
#include <string>
#include <vector>

#include "support/finite_difference.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;

using moe::test::random_matrix;

enum class FactorSource { context, supplied };

template <class Inner>
void check_jitter_backward(moe::Jittered<Inner> router, FactorSource source, moe::Mode mode) {
  const Index T = 7, d = router.input_dim(), E = router.num_experts();
  RowMatrix<double> x = random_matrix(T, d, 31);
  moe::ForwardContext ctx;
  ctx.mode = mode;
  ctx.seed = 5;
  ctx.step = 11;
  if (source == FactorSource::supplied) {
    RowMatrix<double> u(T, d);
    const moe::CounterRng rng(99, 1);
    for (Index t = 0; t < T; ++t)
      for (Index c = 0; c < d; ++c) u(t, c) = router.factor(rng, t, c);
    router.set_factors(u);
  }
  moe::RoutingResult<double> base;
  router.route(x, base, ctx);
  const Index n = base.size();
  const RowMatrix<double> c = random_matrix(n, 1, 32);
  const RowMatrix<double> a = random_matrix(T, E, 33, 0.3);
  const auto loss = [&] {
    moe::RoutingResult<double> r;
    router.route(x, r, ctx);
    REQUIRE(r.expert == base.expert);
    double l = (a.array() * r.logits.array()).sum();
    for (Index i = 0; i < n; ++i) l += c(i, 0) * r.gate[static_cast<size_t>(i)];
    return l;
  };
  RowMatrix<double> dlogits = a, dx = RowMatrix<double>::Zero(T, d);
  auto grad = moe::zeros_like(router);
  // Both sources get the forward's context (the protocol): supplied factors are used in
  // training whatever the seed, generated ones come from (seed, step).
  router.backward(moe::RouterBackward<double>{.x = x, .routing = base, .dgate = c.data(), .dlogits = dlogits,
                                              .dx = dx, .context = {ctx}},
                  grad, moe::no_losses);
  CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(x, loss)) < 1e-7);
  CHECK(moe::test::relative_gap(grad.router().weight(), moe::test::numeric_gradient(router.router().weight(), loss)) <
        1e-7);
}

}  // namespace

TEST_CASE("jittered softmax top-k backward matches finite differences with a fixed (seed, step)",
          "[router][backward][jitter]") {
  for (const Index k : {Index{1}, Index{2}, Index{5}}) {
    INFO("k " << k);
    const moe::Jittered<moe::SoftmaxTopKRouter<double>> router(
        moe::SoftmaxTopKRouter<double>(random_matrix(5, 4, 30), k), 0.2);
    check_jitter_backward(router, FactorSource::context, moe::Mode::training);
    check_jitter_backward(router, FactorSource::supplied, moe::Mode::training);
    check_jitter_backward(router, FactorSource::context, moe::Mode::inference);
  }
}

TEST_CASE("jittered noisy top-k passes the context on, so both noises are the forward's",
          "[router][backward][jitter][noisy]") {
  const moe::Jittered<moe::NoisyTopKRouter<double>> router(
      moe::NoisyTopKRouter<double>(random_matrix(5, 4, 34), random_matrix(5, 4, 35, 0.5), 2), 0.2);
  check_jitter_backward(router, FactorSource::context, moe::Mode::training);
  check_jitter_backward(router, FactorSource::supplied, moe::Mode::training);
}

TEST_CASE("jittered backward checks dx against x, its names are the wrapped router's",
          "[router][backward][jitter][errors]") {
  const moe::Jittered<moe::SoftmaxTopKRouter<double>> router(
      moe::SoftmaxTopKRouter<double>(random_matrix(3, 4, 36), 1), 0.1);
  const RowMatrix<double> x = random_matrix(2, 4, 37);
  moe::RoutingResult<double> r;
  moe::ForwardContext training;
  training.mode = moe::Mode::training;
  router.route(x, r, training);
  RowMatrix<double> dlogits = RowMatrix<double>::Zero(2, 3), dx = RowMatrix<double>::Zero(2, 3);
  auto grad = moe::zeros_like(router);
  const std::vector<double> dg(2, 1.0);
  REQUIRE_THROWS_WITH(router.backward(moe::RouterBackward<double>{.x = x, .routing = r, .dgate = dg.data(),
                                                                  .dlogits = dlogits, .dx = dx, .context = {training}},
                                      grad, moe::no_losses),
                      "Jittered::backward(): dx (as x) expected shape [2, 4], got [2, 3]");
  auto with_factors = router;
  REQUIRE_THROWS_WITH(with_factors.set_factors(RowMatrix<double>::Ones(2, 3)),
                      "Jittered::set_factors(): factor columns (input_dim) expected 4, got 3");
  std::vector<std::string> names;
  router.for_each_parameter([&](const std::string& n, auto&&) { names.push_back(n); });
  CHECK(names == std::vector<std::string>{"gate.weight"});
}

// Noisy top-k backward against finite differences: L = sum c_tj gate_tj + sum A .* logits
// (an upstream loss on the noisy logits) + w_i importance_loss + w_l load_loss, through the
// gate and noise weights and x, for each way the forward's noise comes (set_noise() or drawn
// from the context's seed and step). As in the layer, the gate loss (importance) is added to
// dgate before the router's backward, which consumes the load loss itself.
#include <moe/core/parameters.hpp>
#include <moe/loss/importance_loss.hpp>
#include <moe/loss/loss_list.hpp>
#include <moe/router/noisy_top_k_router.hpp>

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

enum class NoiseSource { supplied, context, inference };

struct Weights {
  double importance = 0;
  double load = 0;
};

void check_noisy_backward(Index k, NoiseSource source, Weights w) {
  const Index T = 9, d = 5, E = 6;
  moe::NoisyTopKRouter<double> router(random_matrix(E, d, 1), random_matrix(E, d, 2, 0.7), k);
  RowMatrix<double> x = random_matrix(T, d, 3);
  const RowMatrix<double> c = random_matrix(T, k, 4);
  const RowMatrix<double> a = random_matrix(T, E, 5, 0.3);
  moe::ForwardContext ctx;
  ctx.mode = source == NoiseSource::inference ? moe::Mode::inference : moe::Mode::training;
  ctx.seed = 17;
  ctx.step = 4;
  if (source == NoiseSource::supplied) router.set_noise(random_matrix(T, E, 6));

  moe::RoutingResult<double> base;
  router.route(x, base, ctx);
  const auto loss = [&] {
    moe::RoutingResult<double> r;
    router.route(x, r, ctx);
    REQUIRE(r.expert == base.expert);
    double l = (a.array() * r.logits.array()).sum();
    for (Index i = 0; i < r.size(); ++i) l += c.data()[i] * r.gate[static_cast<size_t>(i)];
    moe::NoisyGatingTerms<double> terms;
    router.gating_terms(x, ctx, terms);
    l += w.importance * moe::ImportanceLoss{}(r) + w.load * moe::LoadLoss{}(terms, k);
    return l;
  };

  RowMatrix<double> dlogits = a, dx = RowMatrix<double>::Zero(T, d);
  auto grad = moe::zeros_like(router);
  std::vector<double> dgate(c.data(), c.data() + c.size());
  moe::ImportanceLoss{}.backward(base, w.importance, dgate.data());
  router.backward(moe::RouterBackward<double>{.x = x, .routing = base, .dgate = dgate.data(), .dlogits = dlogits,
                                              .dx = dx, .context = {ctx}},
                  grad, moe::losses(moe::weighted(moe::LoadLoss{}, w.load)));
  CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(x, loss)) < 1e-7);
  CHECK(moe::test::relative_gap(grad.weight(), moe::test::numeric_gradient(router.weight(), loss)) < 1e-7);
  const RowMatrix<double> dwn = moe::test::numeric_gradient(router.noise_weight(), loss);
  if (source == NoiseSource::inference) {
    CHECK(grad.noise_weight().isZero(0.0));
    CHECK(dwn.cwiseAbs().maxCoeff() < 1e-9);
  } else {
    CHECK(moe::test::relative_gap(grad.noise_weight(), dwn) < 1e-7);
  }
}

}  // namespace

TEST_CASE("noisy top-k backward matches finite differences, with the noise from each source",
          "[router][backward][noisy]") {
  for (const Index k : {Index{1}, Index{2}, Index{6}})
    for (const auto source : {NoiseSource::supplied, NoiseSource::context}) {
      INFO("k " << k << ", source " << int(source));
      check_noisy_backward(k, source, {});
    }
}

TEST_CASE("noisy top-k backward adds the importance and load losses (tensor2tensor's graph)",
          "[router][backward][noisy][loss]") {
  for (const Index k : {Index{1}, Index{2}, Index{6}})
    for (const auto source : {NoiseSource::supplied, NoiseSource::context}) {
      INFO("k " << k << ", source " << int(source));
      check_noisy_backward(k, source, {0.7, 0.0});
      check_noisy_backward(k, source, {0.0, 1.3});
      check_noisy_backward(k, source, {0.5, 0.9});
    }
}

TEST_CASE("noisy top-k backward after an inference call: clean logits, no noise gradient",
          "[router][backward][noisy]") {
  for (const Index k : {Index{1}, Index{3}}) check_noisy_backward(k, NoiseSource::inference, {0.4, 0.8});
}

TEST_CASE("noisy top-k names its two weights as in the checkpoint", "[router][backward][noisy]") {
  moe::NoisyTopKRouter<float> router(4, 3, 2);
  std::vector<std::string> names;
  router.for_each_parameter([&](const std::string& n, auto&& block) {
    names.push_back(n);
    CHECK(block.rows() == 4);
    CHECK(block.cols() == 3);
  });
  CHECK(names == std::vector<std::string>{"gate.weight", "noise.weight"});
}

TEST_CASE("noisy top-k backward checks its arguments", "[router][backward][noisy][errors]") {
  moe::NoisyTopKRouter<double> router(random_matrix(4, 3, 1), random_matrix(4, 3, 2), 2);
  const RowMatrix<double> x = random_matrix(5, 3, 3);
  moe::RoutingResult<double> r;
  router.route(x, r);
  RowMatrix<double> dlogits = RowMatrix<double>::Zero(5, 4), dx = RowMatrix<double>::Zero(5, 3);
  auto grad = moe::zeros_like(router);
  const std::vector<double> dg(10, 0.0);
  moe::ForwardContext training;
  training.mode = moe::Mode::training;
  const auto call = [&](moe::MatrixRef<double> dx_arg) {
    router.backward(moe::RouterBackward<double>{.x = x, .routing = r, .dgate = dg.data(), .dlogits = dlogits,
                                                .dx = dx_arg, .context = {training}},
                    grad, moe::no_losses);
  };
  router.set_noise(random_matrix(4, 4, 4));
  REQUIRE_THROWS_WITH(call(dx),
                      "NoisyTopKRouter::backward(): rows of the noise given to set_noise() (one per row of x) "
                      "expected 5, got 4");
  router.clear_noise();
  RowMatrix<double> small = RowMatrix<double>::Zero(5, 2);
  REQUIRE_THROWS_WITH(call(small),
                      "NoisyTopKRouter::backward(): dx expected shape [5, 3], got [5, 2]");
}

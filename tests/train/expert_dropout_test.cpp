// ExpertDropout: the dropped set is a function of (seed, step) with rate p, dropped experts get
// gate 0 and no gradient, inference and rate 0 are the wrapped router, and the layer's
// backward through it matches finite differences of the dropped forward.
#include <moe/moe.hpp>
#include <moe/train/train.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;

using moe::test::fill;

template <class Gating>
using Dropped = moe::ExpertDropout<moe::TopKRouter<Gating>>;
template <class Gating>
using Layer = moe::MoELayer<moe::SwiGLUExperts<double>, Dropped<Gating>, moe::WeightedSumCombiner<double>>;

template <class Gating>
Layer<Gating> make_layer(Index E, Index d, Index ff, Index k, double rate, Gating gating = {}) {
  moe::SwiGLUExperts<double> experts(E, d, ff);
  fill(experts.gate_up(), 1, 0.4);
  fill(experts.down(), 2, 0.4);
  moe::TopKRouter<Gating> router(E, d, k, gating);
  fill(router.weight(), 3);
  return {std::move(experts), Dropped<Gating>(std::move(router), rate)};
}

/// A step of (seed 5) with some experts dropped but not all.
template <class R>
std::uint64_t step_with_partial_drop(const R& r) {
  for (std::uint64_t step = 0;; ++step) {
    const auto n = r.dropped_experts(5, step).size();
    if (n > 0 && n < static_cast<std::size_t>(r.num_experts()) - 1) return step;
  }
}

}  // namespace

// Every trait of the wrapped router is kept; the draws need the (seed, step).
static_assert(moe::router_traits<Dropped<moe::SoftmaxTopK<float>>>::token_choice);
static_assert(!moe::router_traits<Dropped<moe::SoftmaxTopK<float>>>::is_dense);
static_assert(!moe::router_traits<Dropped<moe::SoftmaxTopK<float>>>::needs_token_ids);
static_assert(moe::router_traits<Dropped<moe::SoftmaxTopK<float>>>::needs_rng);
static_assert(!moe::router_traits<moe::ExpertDropout<moe::ExpertChoiceRouter<float>>>::token_choice);
static_assert(moe::router_traits<moe::ExpertDropout<moe::HashRouter<float>>>::needs_token_ids);

TEST_CASE("the dropped set is a pure function of (seed, step) with rate p", "[train][expert_dropout]") {
  const Dropped<moe::SoftmaxTopK<double>> r(moe::SoftmaxTopKRouter<double>(8, 4, 2), 0.25);
  REQUIRE(r.dropped_experts(3, 17) == r.dropped_experts(3, 17));
  // Over many steps: about p * E experts per step, every expert about p of the time, and the
  // set changes from step to step.
  const int steps = 4000;
  std::vector<int> per_expert(8, 0);
  double total = 0;
  int changed = 0;
  for (int s = 0; s < steps; ++s) {
    const auto set = r.dropped_experts(3, static_cast<std::uint64_t>(s));
    total += static_cast<double>(set.size());
    for (Index e : set) ++per_expert[static_cast<std::size_t>(e)];
    if (s > 0 && set != r.dropped_experts(3, static_cast<std::uint64_t>(s - 1))) ++changed;
    for (Index e = 0; e < 8; ++e)
      REQUIRE(r.dropped(3, static_cast<std::uint64_t>(s), e) == std::binary_search(set.begin(), set.end(), e));
  }
  // Mean of 8 * 4000 Bernoulli(0.25): standard error 0.0048 per expert-step; 6 sigma bounds.
  REQUIRE(std::abs(total / steps - 0.25 * 8) < 6 * std::sqrt(8 * 0.25 * 0.75 / steps));
  for (int c : per_expert) REQUIRE(std::abs(c / double(steps) - 0.25) < 6 * std::sqrt(0.25 * 0.75 / steps));
  REQUIRE(changed > steps / 2);
  // Another seed draws another sequence.
  int differ = 0;
  for (std::uint64_t s = 0; s < 100; ++s) differ += r.dropped_experts(3, s) != r.dropped_experts(4, s);
  REQUIRE(differ > 30);
  REQUIRE_THROWS_WITH((Dropped<moe::SoftmaxTopK<double>>(moe::SoftmaxTopKRouter<double>(8, 4, 2), 1.0)),
                      "ExpertDropout::ExpertDropout(): rate expected in [0, 1), got 1");
}

TEST_CASE("in training the dropped experts' assignments get gate 0, inference and rate 0 are untouched",
          "[train][expert_dropout]") {
  moe::SoftmaxTopKRouter<double> inner(6, 5, 2);
  fill(inner.weight(), 9);
  RowMatrix<double> x(40, 5);
  fill(x, 10);
  const moe::ForwardContext train{.mode = moe::Mode::training, .seed = 5, .step = 0};
  moe::RoutingResult<double> want;
  inner.route(x, want, train);

  const Dropped<moe::SoftmaxTopK<double>> dropout(inner, 0.3);
  for (std::uint64_t step = 0; step < 20; ++step) {
    moe::ForwardContext ctx = train;
    ctx.step = step;
    moe::RoutingResult<double> got;
    dropout.route(x, got, ctx);
    REQUIRE(got.expert == want.expert);
    REQUIRE(got.token == want.token);
    REQUIRE(got.logits == want.logits);
    REQUIRE(got.scores == want.scores);
    for (std::size_t i = 0; i < got.gate.size(); ++i)
      REQUIRE(got.gate[i] == (dropout.dropped(5, step, got.expert[i]) ? 0.0 : want.gate[i]));
    // Inference: no dropout, whatever the step.
    ctx.mode = moe::Mode::inference;
    dropout.route(x, got, ctx);
    REQUIRE(got.gate == want.gate);
  }
  const Dropped<moe::SoftmaxTopK<double>> none(inner, 0.0);
  moe::RoutingResult<double> got;
  none.route(x, got, train);
  REQUIRE(got.gate == want.gate);
  REQUIRE(none.dropped_experts(5, 0).empty());
}

TEST_CASE("dropped experts get zero gradient and the layer's gradients match finite differences",
          "[train][expert_dropout]") {
  auto check = [](auto layer) {
    const Index T = 24, d = 5;
    const std::uint64_t step = step_with_partial_drop(layer.router());
    const moe::ForwardContext ctx{.mode = moe::Mode::training, .seed = 5, .step = step};
    RowMatrix<double> x(T, d), G(T, d);
    fill(x, 20);
    fill(G, 21);
    moe::Workspace<double> ws;
    auto grads = layer.make_gradients();
    (void)layer.forward(x, ws, ctx);
    const RowMatrix<double> dx = layer.backward(G, ws, grads);

    const auto dropped = layer.router().dropped_experts(5, step);
    INFO("step " << step << ", " << dropped.size() << " dropped");
    const auto counts = ws.routing.expert_counts();
    for (Index e = 0; e < layer.num_experts(); ++e) {
      const bool is_dropped = std::binary_search(dropped.begin(), dropped.end(), e);
      const auto& ge = grads.experts;
      const double n = ge.gate_proj(e).norm() + ge.up_proj(e).norm() + ge.down_proj(e).norm();
      if (is_dropped) REQUIRE(n == 0.0);
      else if (counts[static_cast<std::size_t>(e)] > 0) REQUIRE(n > 0.0);
    }

    // L(theta) = sum(y * G) under the same dropped set, by central differences.
    auto loss = [&](const auto& l, const RowMatrix<double>& xx) {
      moe::Workspace<double> w;
      return (l.forward(xx, w, ctx).array() * G.array()).sum();
    };
    const double h = 1e-6;
    double worst = 0.0;
    auto compare = [&](double analytic, double numeric) {
      worst = std::max(worst, std::abs(analytic - numeric) / (1e-6 + std::abs(numeric)));
    };
    for (Index t = 0; t < T; t += 5)
      for (Index c = 0; c < d; ++c) {
        RowMatrix<double> xp = x, xm = x;
        xp(t, c) += h;
        xm(t, c) -= h;
        compare(dx(t, c), (loss(layer, xp) - loss(layer, xm)) / (2 * h));
      }
    auto& w = layer.router().router().weight();
    for (Index e = 0; e < w.rows(); ++e)
      for (Index c = 0; c < w.cols(); ++c) {
        const double w0 = w(e, c);
        w(e, c) = w0 + h;
        const double lp = loss(layer, x);
        w(e, c) = w0 - h;
        const double lm = loss(layer, x);
        w(e, c) = w0;
        compare(grads.router.router().weight()(e, c), (lp - lm) / (2 * h));
      }
    // Each write through the accessor: it tells the bank its weights changed (packed weights,
    // docs/experts.md#packed-weights).
    const auto down = [&](Index r, Index c) -> double& { return layer.experts().down()(r, c); };
    for (Index r = 0; r < layer.experts().down().rows(); r += 3)
      for (Index c = 0; c < layer.experts().down().cols(); c += 2) {
        const double v0 = down(r, c);
        down(r, c) = v0 + h;
        const double lp = loss(layer, x);
        down(r, c) = v0 - h;
        const double lm = loss(layer, x);
        down(r, c) = v0;
        compare(grads.experts.down()(r, c), (lp - lm) / (2 * h));
      }
    REQUIRE(worst < 1e-5);
  };
  SECTION("softmax top-2, renormalised (Mixtral)") { check(make_layer<moe::SoftmaxTopK<double>>(6, 5, 4, 2, 0.3)); }
  SECTION("softmax top-2, not renormalised (Qwen)") {
    check(make_layer<moe::SoftmaxTopK<double>>(6, 5, 4, 2, 0.3, moe::SoftmaxTopK<double>{.renormalize = false}));
  }
  SECTION("top-3 then softmax over the three (GPT-OSS): dropped gates restored for backward") {
    check(make_layer<moe::TopKSoftmax<double>>(6, 5, 4, 3, 0.3));
  }
}

TEST_CASE("expert dropout in inference mode leaves the layer's output unchanged", "[train][expert_dropout]") {
  auto layer = make_layer<moe::SoftmaxTopK<double>>(6, 5, 4, 2, 0.5);
  moe::MoELayer<moe::SwiGLUExperts<double>, moe::SoftmaxTopKRouter<double>, moe::WeightedSumCombiner<double>> plain(
      layer.experts(), layer.router().router());
  RowMatrix<double> x(16, 5);
  fill(x, 30);
  moe::Workspace<double> w1, w2;
  const moe::ForwardContext inference{.mode = moe::Mode::inference, .seed = 5, .step = 3};
  REQUIRE(layer.forward(x, w1, inference) == plain.forward(x, w2, inference));
}

// Router jitter (router/jitter.hpp). It lives with the dispatch tests because they share the
// Switch capacity work; it belongs in tests/router/ (see the report of issue #3).
//
// What is true and testable: inference routes exactly as the wrapped router; training routes
// on x * U(1 - eps, 1 + eps) with U a pure function of (seed, step, token, column); and the
// experts see the clean x, so the layer output is the jittered routing's gates applied to the
// experts' outputs on the unjittered tokens.
#include <moe/layer/moe_layer.hpp>
#include <moe/router/jitter.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <type_traits>
#include <vector>

#include "support/reference_moe.hpp"

#include "support/random.hpp"

namespace {

using moe::ForwardContext;
using moe::Index;
using moe::Jittered;
using moe::Mode;
using moe::RoutingResult;
using moe::RowMatrix;
using Router = moe::SoftmaxTopKRouter<double>;

Router make_router(std::mt19937& rng, Index E, Index d, Index k) {
  return Router(moe::test::random_matrix<double>(E, d, rng), k, moe::SoftmaxTopK<double>{false});
}

ForwardContext training(std::uint64_t seed, std::uint64_t step) {
  ForwardContext ctx;
  ctx.mode = Mode::training;
  ctx.seed = seed;
  ctx.step = step;
  return ctx;
}

/// The documented factor: CounterRng(seed, step).uniform(t, 2^40 + c) mapped onto [1-eps, 1+eps).
double ref_factor(std::uint64_t seed, std::uint64_t step, Index t, Index c, double eps) {
  const double u = moe::CounterRng(seed, step).uniform(static_cast<std::uint64_t>(t),
                                                       (std::uint64_t{1} << 40) + static_cast<std::uint64_t>(c));
  return 1.0 - eps + 2.0 * eps * u;
}

void require_same_routing(const RoutingResult<double>& a, const RoutingResult<double>& b) {
  REQUIRE(a.expert == b.expert);
  REQUIRE(a.token == b.token);
  REQUIRE(a.gate == b.gate);
  REQUIRE(a.logits == b.logits);
}

}  // namespace

TEST_CASE("Jittered forwards the wrapped router's interface and traits", "[router][jitter]") {
  std::mt19937 rng(1);
  const Jittered<Router> j(make_router(rng, 6, 5, 2), 0.1);
  CHECK(j.num_experts() == 6);
  CHECK(j.input_dim() == 5);
  CHECK(j.router().k() == 2);
  CHECK(j.eps() == 0.1);
  STATIC_REQUIRE(moe::router_traits<Jittered<Router>>::needs_rng);
  STATIC_REQUIRE(moe::router_traits<Jittered<Router>>::token_choice);
  STATIC_REQUIRE(!moe::router_traits<Jittered<Router>>::is_dense);
  STATIC_REQUIRE(std::is_same_v<Jittered<Router>::scalar_type, double>);
  REQUIRE_THROWS_WITH(Jittered<Router>(make_router(rng, 6, 5, 2), 1.0), "Jittered::Jittered(): eps expected in [0, 1), got 1");
  REQUIRE_THROWS_WITH(Jittered<Router>(make_router(rng, 6, 5, 2), -0.5), "Jittered::Jittered(): eps expected in [0, 1), got -0.5");
}

TEST_CASE("in inference mode, or with eps = 0, jitter routes exactly as the wrapped router", "[router][jitter]") {
  std::mt19937 rng(2);
  const Router plain = make_router(rng, 8, 16, 2);
  const RowMatrix<double> x = moe::test::random_matrix<double>(50, 16, rng);
  RoutingResult<double> want, got;
  plain.route(x, want);

  ForwardContext inference;
  inference.seed = 5;
  inference.step = 9;
  Jittered<Router>(plain, 0.5).route(x, got, inference);
  require_same_routing(got, want);

  Jittered<Router>(plain, 0.0).route(x, got, training(5, 9));
  require_same_routing(got, want);
}

TEST_CASE("in training, jitter routes on x times U(1 - eps, 1 + eps) keyed by (seed, step, token, column)",
          "[router][jitter]") {
  std::mt19937 rng(3);
  const Index T = 40, d = 12, E = 6;
  const double eps = 0.3;
  const Router plain = make_router(rng, E, d, 1);
  const Jittered<Router> jit(plain, eps);
  const RowMatrix<double> x = moe::test::random_matrix<double>(T, d, rng);

  RoutingResult<double> a, b, c, clean;
  jit.route(x, a, training(17, 4));

  // The logits are W (x * U), with U from the documented key, computed by hand.
  double max_err = 0;
  for (Index t = 0; t < T; ++t)
    for (Index e = 0; e < E; ++e) {
      double s = 0;
      for (Index k = 0; k < d; ++k) {
        const double u = ref_factor(17, 4, t, k, eps);
        REQUIRE(u >= 1.0 - eps);
        REQUIRE(u < 1.0 + eps);
        s += plain.weight()(e, k) * x(t, k) * u;
      }
      max_err = std::max(max_err, std::abs(s - a.logits(t, e)));
    }
  CHECK(max_err < 1e-12);

  // Same (seed, step): the same routing. Another step or seed: other logits, and at eps = 0.3
  // some token changes expert.
  jit.route(x, b, training(17, 4));
  require_same_routing(a, b);
  plain.route(x, clean);
  jit.route(x, c, training(17, 5));
  CHECK(c.logits != a.logits);
  CHECK(c.expert != a.expert);
  CHECK(a.expert != clean.expert);
  jit.route(x, c, training(18, 4));
  CHECK(c.logits != a.logits);
}

TEST_CASE("experts see the clean x: the layer output is the jittered gates applied to unjittered tokens",
          "[router][jitter][layer]") {
  std::mt19937 rng(4);
  const Index T = 30, d = 8, ff = 10, E = 4;
  const double eps = 0.4;
  moe::FFNExperts<double, moe::Activation::relu> experts(E, d, ff);
  experts.wi() = moe::test::random_matrix<double>(E * ff, d, rng);
  experts.wo() = moe::test::random_matrix<double>(E * d, ff, rng);
  const Router plain = make_router(rng, E, d, 1);
  const moe::MoELayer<moe::FFNExperts<double, moe::Activation::relu>, Jittered<Router>, moe::WeightedSumCombiner<double>>
      layer(experts, Jittered<Router>(plain, eps), {});
  const RowMatrix<double> x = moe::test::random_matrix<double>(T, d, rng);

  moe::Workspace<double> ws;
  const RowMatrix<double> y = layer.forward(x, ws, training(99, 1));

  // The jittered routing, by hand: top-1 of softmax(W (x * U)); the gate is that probability.
  RowMatrix<double> xj(T, d);
  for (Index t = 0; t < T; ++t)
    for (Index c = 0; c < d; ++c) xj(t, c) = x(t, c) * ref_factor(99, 1, t, c, eps);
  RowMatrix<double> gates = RowMatrix<double>::Zero(T, E);
  Index changed = 0;
  for (Index t = 0; t < T; ++t) {
    std::vector<double> z(static_cast<std::size_t>(E));
    Index best = 0, clean_best = 0;
    double clean_max = -1e300;
    for (Index e = 0; e < E; ++e) {
      double s = 0, sc = 0;
      for (Index c = 0; c < d; ++c) {
        s += plain.weight()(e, c) * xj(t, c);
        sc += plain.weight()(e, c) * x(t, c);
      }
      z[static_cast<std::size_t>(e)] = s;
      if (s > z[static_cast<std::size_t>(best)]) best = e;
      if (sc > clean_max) {
        clean_max = sc;
        clean_best = e;
      }
    }
    double m = z[static_cast<std::size_t>(best)], sum = 0;
    for (double v : z) sum += std::exp(v - m);
    gates(t, best) = 1.0 / sum;
    changed += best != clean_best;
  }
  CHECK(changed > 0);  // the jitter moved some token, so the routing used is the jittered one

  const auto ffn = [&](const RowMatrix<double>& in) {
    return moe::test::ref_mixture(
        in, gates,
        [&](Index e, const moe::RowVector<double>& v) {
          moe::RowVector<double> h(ff);
          for (Index i = 0; i < ff; ++i) {
            double s = 0;
            for (Index c = 0; c < d; ++c) s += experts.wi(e)(i, c) * v[c];
            h[i] = std::max(s, 0.0);
          }
          moe::RowVector<double> out(d);
          for (Index o = 0; o < d; ++o) {
            double s = 0;
            for (Index i = 0; i < ff; ++i) s += experts.wo(e)(o, i) * h[i];
            out[o] = s;
          }
          return out;
        },
        d);
  };
  const RowMatrix<double> want = ffn(x);
  CHECK((y - want).cwiseAbs().maxCoeff() < 1e-12 * (1.0 + want.cwiseAbs().maxCoeff()));
  // Had the experts seen the jittered tokens, the output would differ by far more.
  CHECK((y - ffn(xj)).cwiseAbs().maxCoeff() > 1e-3);

  // In inference mode the layer routes on the clean x (same as the unwrapped router's layer).
  const moe::MoELayer<moe::FFNExperts<double, moe::Activation::relu>, Router, moe::WeightedSumCombiner<double>>
      unwrapped(experts, plain, {});
  moe::Workspace<double> ws2;
  CHECK(layer.forward(x, ws) == unwrapped.forward(x, ws2));
}

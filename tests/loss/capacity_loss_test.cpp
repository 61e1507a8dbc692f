// CapacityLoss: a worked example by hand; the value against the formula written as loops
// (softmax, counts, C = ceil(factor * n / E), drop rates) on routers' routings; zero exactly
// when nothing is over capacity (and then no gradient); C equal to the layer's and L > 0
// exactly when the layer drops; its gradient against central finite differences in double,
// on the logits and through whole layers (dx and every parameter, with capacity drops); and
// the refusals: a bad factor or minimum, and routings whose scores are not softmax(logits).
#include <moe/loss/capacity_loss.hpp>
#include <moe/moe.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "support/errors.hpp"
#include "support/finite_difference.hpp"
#include "support/gradient_check.hpp"
#include "support/random.hpp"

namespace capacity_loss_test {

using moe::Index;
using moe::RowMatrix;
using moe::test::random_matrix;

/// softmax of each row by loops: exp(z - max) / sum.
RowMatrix<double> softmax_by_loops(const RowMatrix<double>& z) {
  RowMatrix<double> p(z.rows(), z.cols());
  for (Index t = 0; t < z.rows(); ++t) {
    const double max = z.row(t).maxCoeff();
    double sum = 0;
    for (Index e = 0; e < z.cols(); ++e) sum += std::exp(z(t, e) - max);
    for (Index e = 0; e < z.cols(); ++e) p(t, e) = std::exp(z(t, e) - max) / sum;
  }
  return p;
}

/// The formula of docs/losses.md#capacity-loss by loops: n_e from the triples, C =
/// ceil(factor * n / E) (at least minimum), r_e = max(0, n_e - C) / n_e, and
/// L = 1/T * sum over assignments i of r_{e_i} * p[t_i, e_i], p = softmax(logits).
double capacity_loss_by_loops(const moe::RoutingResult<double>& r, double factor, Index minimum = 0) {
  const Index T = r.num_tokens, E = r.num_experts;
  const auto n = static_cast<double>(r.token.size());
  const auto C = std::max(minimum, static_cast<Index>(std::ceil(factor * n / static_cast<double>(E))));
  std::vector<double> count(static_cast<size_t>(E), 0.0);
  for (const Index e : r.expert) count[static_cast<size_t>(e)] += 1;
  const RowMatrix<double> p = softmax_by_loops(r.logits);
  double sum = 0;
  for (size_t i = 0; i < r.token.size(); ++i) {
    const double c = count[static_cast<size_t>(r.expert[i])];
    const double rate = c > static_cast<double>(C) ? (c - static_cast<double>(C)) / c : 0.0;
    sum += rate * p(r.token[i], r.expert[i]);
  }
  return sum / static_cast<double>(T);
}

/// r with the logits of the experts closed to each token's modality set to -inf: expert e is
/// open to a token of modality m when table[e] is m (the ModalityRouter rule without -1).
moe::RoutingResult<double> masked(moe::RoutingResult<double> r, const std::vector<Index>& table,
                                  std::span<const std::int64_t> ids) {
  for (Index t = 0; t < r.num_tokens; ++t)
    for (Index e = 0; e < r.num_experts; ++e)
      if (table[size_t(e)] != ids[size_t(t)]) r.logits(t, e) = -std::numeric_limits<double>::infinity();
  return r;
}

/// The routing of T N(0, 1) tokens of width 5 by a softmax top-k router of E experts whose
/// weights are N(0, 1.5^2), by seed.
moe::RoutingResult<double> softmax_routing(Index T, Index E, Index k, unsigned seed, bool renormalize = true) {
  const moe::SoftmaxTopKRouter<double> router(random_matrix(E, 5, seed, 1.5), k, moe::SoftmaxTopK<double>{renormalize});
  moe::RoutingResult<double> r;
  router.route(random_matrix(T, 5, seed + 1), r);
  return r;
}

/// A [T, E] top-1 routing by hand of the given logits: each token to its largest logit.
moe::RoutingResult<double> top1_by_hand(const RowMatrix<double>& logits) {
  moe::RoutingResult<double> r;
  const Index T = logits.rows();
  r.reset(T, logits.cols(), T, 1);
  r.logits = logits;
  r.scores = softmax_by_loops(logits);
  for (Index t = 0; t < T; ++t) {
    Index best = 0;
    logits.row(t).maxCoeff(&best);
    r.token[size_t(t)] = t;
    r.expert[size_t(t)] = best;
    r.gate[size_t(t)] = r.scores(t, best);
  }
  return r;
}

template <class Router>
using Layer = moe::MoELayer<moe::SwiGLUExperts<double>, Router, moe::WeightedSumCombiner<double>>;

/// Checks dx and every parameter gradient of L = sum(y * G) + w * CapacityLoss{factor}, the
/// layer built with Capacity::from_factor(factor), against central finite differences; the
/// choices and the drop set must not move under the perturbation. A non-empty table masks the
/// reference's logits by ctx.modality_ids (a ModalityRouter's). Returns the drops.
template <class Router>
std::size_t capacity_gradcheck(Layer<Router>& layer, Index T, double factor, double w, unsigned seed,
                               moe::ForwardContext ctx = {}, const std::vector<Index>& table = {}) {
  RowMatrix<double> x = random_matrix(T, layer.input_dim(), seed);
  const RowMatrix<double> G = random_matrix(T, layer.output_dim(), seed + 1);
  const moe::CapacityLoss loss_term{factor};
  ctx.mode = moe::Mode::training;
  moe::Workspace<double> ws;
  RowMatrix<double> y(T, layer.output_dim()), dx(T, layer.input_dim());
  layer.forward(x, y, ws, ctx);
  const std::vector<Index> experts0 = ws.routing.expert, tokens0 = ws.routing.token, slots0 = ws.plan.slot_of;
  CHECK(ws.plan.capacity == loss_term.capacity(ws.routing.size(), ws.routing.num_experts));
  CHECK((loss_term(ws.routing) > 0) == !ws.plan.dropped.empty());
  auto grads = layer.make_gradients();
  layer.backward(G, dx, ws, grads, moe::losses(moe::weighted(loss_term, w)));

  moe::Workspace<double> ws2;
  const auto loss = [&] {
    layer.forward(x, y, ws2, ctx);
    REQUIRE(ws2.routing.expert == experts0);
    REQUIRE(ws2.routing.token == tokens0);
    REQUIRE(ws2.plan.slot_of == slots0);
    const double reference = table.empty() ? capacity_loss_by_loops(ws2.routing, factor)
                                           : capacity_loss_by_loops(masked(ws2.routing, table, ctx.modality_ids), factor);
    return (y.array() * G.array()).sum() + w * reference;
  };
  CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(x, loss)) < 1e-6);
  moe::test::check_parameter_gradients(layer, grads, loss, 1e-6);
  return ws.plan.dropped.size();
}

}  // namespace capacity_loss_test

using capacity_loss_test::capacity_gradcheck;
using capacity_loss_test::capacity_loss_by_loops;
using capacity_loss_test::Layer;
using capacity_loss_test::masked;
using capacity_loss_test::softmax_by_loops;
using capacity_loss_test::softmax_routing;
using capacity_loss_test::top1_by_hand;
using moe::Index;
using moe::RowMatrix;
using moe::test::random_matrix;

TEST_CASE("the capacity loss of a worked top-1 example, by hand", "[loss][capacity]") {
  // Two experts, logits (z, 0): p_0 = sigmoid(z). Tokens 0, 1, 3, 4 choose expert 0 with
  // p = 0.75, 0.9, 0.8, 0.9; tokens 2 and 5 expert 1 with p = 0.75, 0.8.
  RowMatrix<double> z = RowMatrix<double>::Zero(6, 2);
  const double z0[] = {std::log(3.0), std::log(9.0), -std::log(3.0), std::log(4.0), std::log(9.0), -std::log(4.0)};
  for (Index t = 0; t < 6; ++t) z(t, 0) = z0[t];
  const auto r = top1_by_hand(z);
  REQUIRE(r.expert == std::vector<Index>{0, 0, 1, 0, 0, 1});
  // factor 1: C = ceil(6 / 2) = 3; expert 0 has 4, drops 1 of 4: L = (1/6)(1/4)(0.75 + 0.9 + 0.8 + 0.9).
  CHECK(moe::CapacityLoss{1.0}.capacity(6, 2) == 3);
  CHECK(moe::CapacityLoss{1.0}(r) == Approx(3.35 / 24).epsilon(1e-14));
  // factor 0.5: C = ceil(1.5) = 2; expert 0 drops 2 of 4, expert 1 none: L = (1/6)(1/2)(3.35).
  CHECK(moe::CapacityLoss{0.5}.capacity(6, 2) == 2);
  CHECK(moe::CapacityLoss{0.5}(r) == Approx(3.35 / 12).epsilon(1e-14));
  // factor 0.25: C = ceil(0.75) = 1; expert 0 drops 3 of 4, expert 1 one of 2:
  // L = (1/6)((3/4)(3.35) + (1/2)(0.75 + 0.8)).
  CHECK(moe::CapacityLoss{0.25}(r) == Approx((0.75 * 3.35 + 0.5 * 1.55) / 6).epsilon(1e-14));
  // factor 1.5: C = ceil(4.5) = 5 > 4: nothing is over capacity.
  CHECK(moe::CapacityLoss{1.5}(r) == 0.0);
  // A minimum above the count lifts the capacity as Capacity::from_factor's does.
  CHECK(moe::CapacityLoss{0.5, 4}.capacity(6, 2) == 4);
  CHECK(moe::CapacityLoss{0.5, 4}(r) == 0.0);
}

TEST_CASE("the capacity loss of softmax routers against the formula by loops", "[loss][capacity]") {
  struct Case {
    Index T, E, k;
    double factor;
  };
  const Case cases[] = {{17, 5, 2, 0.6}, {20, 4, 1, 1.0}, {13, 8, 3, 0.8}, {9, 3, 2, 0.5}, {16, 6, 2, 1.25}};
  unsigned seed = 60;
  int positive = 0;
  for (const auto& c : cases) {
    for (const bool renormalize : {true, false}) {
      INFO("T " << c.T << " E " << c.E << " k " << c.k << " factor " << c.factor << " renormalize " << renormalize);
      const auto r = softmax_routing(c.T, c.E, c.k, seed++, renormalize);
      const double expected = capacity_loss_by_loops(r, c.factor);
      const double got = moe::CapacityLoss{c.factor}(r);
      CHECK(got == Approx(expected).epsilon(1e-13).margin(1e-300));
      CHECK(got >= 0.0);
      CHECK(got < 1.0);
      positive += got > 0;
      // The loss protocol gives the same value.
      CHECK(moe::CapacityLoss{c.factor}.value(moe::LossInput<double>{r, {}}) == got);
    }
  }
  CHECK(positive >= 6);  // most cases overflow: the comparison is not of zeros
  // Adaptive rules (k = 0, n varies): n = routing.size() assignments.
  for (const double threshold : {0.5, 0.8}) {
    const moe::TopPRouter<double> router(random_matrix(5, 4, 70, 1.5), 3, moe::TopP<double>{threshold});
    moe::RoutingResult<double> r;
    router.route(random_matrix(15, 4, 71), r);
    REQUIRE(r.k == 0);
    CHECK(moe::CapacityLoss{0.7}(r) == Approx(capacity_loss_by_loops(r, 0.7)).epsilon(1e-13));
    CHECK(moe::CapacityLoss{0.7}(r) > 0.0);
  }
}

TEST_CASE("the capacity loss is zero, with no gradient, when no expert is over capacity", "[loss][capacity]") {
  // Token t to experts t, t+1 (mod E): every expert gets exactly T k / E = C at factor 1.
  const Index E = 4, k = 2, T = 12;
  moe::RoutingResult<double> r;
  r.reset(T, E, T * k, k);
  r.logits = random_matrix(T, E, 80);
  r.scores = softmax_by_loops(r.logits);
  for (Index t = 0; t < T; ++t)
    for (Index j = 0; j < k; ++j) {
      r.token[size_t(t * k + j)] = t;
      r.expert[size_t(t * k + j)] = (t + j) % E;
      r.gate[size_t(t * k + j)] = 0.5;
    }
  for (const double factor : {1.0, 1.25, 4.0}) {
    INFO("factor " << factor);
    CHECK(moe::CapacityLoss{factor}(r) == 0.0);
    RowMatrix<double> d = RowMatrix<double>::Constant(T, E, 0.5);
    moe::CapacityLoss{factor}.backward(r, 3.0, d);
    CHECK((d.array() == 0.5).all());
  }
  // Just below: C = ceil(0.99 * 24 / 4) = 6 still, so zero; at 0.8, C = 5 < 6: every expert drops.
  CHECK(moe::CapacityLoss{0.99}(r) == 0.0);
  CHECK(moe::CapacityLoss{0.8}(r) == Approx(capacity_loss_by_loops(r, 0.8)).epsilon(1e-14));
  CHECK(moe::CapacityLoss{0.8}(r) > 0.0);
  // An empty batch.
  moe::RoutingResult<float> empty;
  empty.reset(0, 4, 0, 2);
  empty.logits.resize(0, 4);
  empty.scores.resize(0, 4);
  CHECK(moe::CapacityLoss{}(empty) == 0.0f);
}

TEST_CASE("the capacity loss's gradient with respect to the logits matches finite differences",
          "[loss][capacity][backward]") {
  unsigned seed = 90;
  for (const Index E : {Index{2}, Index{5}, Index{8}})
    for (const Index k : {Index{1}, Index{2}}) {
      INFO("E " << E << " k " << k);
      const auto r = softmax_routing(11, E, k, seed += 2);
      REQUIRE(moe::CapacityLoss{0.6}(r) > 0.0);
      RowMatrix<double> d = RowMatrix<double>::Constant(11, E, 0.25);  // backward adds to what is there
      moe::CapacityLoss{0.6}.backward(r, 1.7, d);
      // The choices (the counts) stay fixed while the logits move; the scores follow them.
      moe::RoutingResult<double> moved = r;
      const auto loss = [&] {
        moved.scores = softmax_by_loops(moved.logits);
        return 1.7 * moe::CapacityLoss{0.6}(moved);
      };
      const RowMatrix<double> expected = moe::test::numeric_gradient(moved.logits, loss).array() + 0.25;
      CHECK(moe::test::relative_gap(d, expected) < 1e-8);
      // The loss protocol adds the same into LossGradient::dlogits, nothing into dgate.
      RowMatrix<double> d2 = RowMatrix<double>::Constant(11, E, 0.25);
      std::vector<double> dgate(r.gate.size(), 0.0);
      moe::CapacityLoss{0.6}.backward<xsimd::default_arch>(moe::LossInput<double>{r, {}}, 1.7,
                                                           moe::LossGradient<double>{d2, dgate.data()});
      CHECK(d2 == d);
      CHECK(dgate == std::vector<double>(r.gate.size(), 0.0));
    }
}

TEST_CASE("masked experts (-inf logits) get no capacity-loss gradient", "[loss][capacity][backward]") {
  RowMatrix<double> z = random_matrix(8, 4, 95);
  z.col(3).setConstant(-std::numeric_limits<double>::infinity());
  const auto r = top1_by_hand(z);
  REQUIRE(moe::CapacityLoss{0.5}(r) > 0.0);
  CHECK(moe::CapacityLoss{0.5}(r) == Approx(capacity_loss_by_loops(r, 0.5)).epsilon(1e-14));
  RowMatrix<double> d = RowMatrix<double>::Zero(8, 4);
  moe::CapacityLoss{0.5}.backward(r, 1.0, d);
  CHECK(d.allFinite());
  CHECK(d.col(3).cwiseAbs().maxCoeff() == 0.0);
}

TEST_CASE("a layer with the capacity loss: dx and every gradient match finite differences",
          "[loss][capacity][backward]") {
  struct Case {
    Index E, k, T;
    double factor, w;
  };
  const Case cases[] = {{4, 1, 12, 1.0, 0.8}, {4, 2, 10, 0.75, 1.3}, {6, 2, 9, 1.0, 2.0}, {3, 1, 8, 1.5, 0.5}};
  unsigned seed = 200;
  std::size_t drops = 0;
  for (const auto& c : cases)
    for (const bool renormalize : {true, false}) {
      INFO("E " << c.E << " k " << c.k << " T " << c.T << " factor " << c.factor << " renormalize " << renormalize);
      using Router = moe::SoftmaxTopKRouter<double>;
      Layer<Router> layer(moe::test::swiglu<double>(c.E, 5, 4, seed + 1),
                          Router(random_matrix(c.E, 5, seed, 1.5), c.k, moe::SoftmaxTopK<double>{renormalize}), {},
                          moe::Capacity::from_factor(c.factor));
      drops += capacity_gradcheck(layer, c.T, c.factor, c.w, seed + 2);
      seed += 3;
    }
  CHECK(drops > 0);
  // Top-p (1..k experts per token): the same through the adaptive rule's backward.
  using TopP = moe::TopPRouter<double>;
  Layer<TopP> top_p(moe::test::swiglu<double>(5, 5, 4, 301), TopP(random_matrix(5, 5, 300, 1.5), 3, moe::TopP<double>{0.7}),
                    {}, moe::Capacity::from_factor(0.8));
  CHECK(capacity_gradcheck(top_p, 10, 0.8, 1.1, 302) > 0);
  // A modality router: the masked experts' probability is 0, the open ones' a softmax over them.
  using Modality = moe::ModalitySoftmaxTopKRouter<double>;
  const std::vector<Index> table = {0, 1, 0, 1, 0, 1};
  Layer<Modality> modality(moe::test::swiglu<double>(6, 5, 4, 311),
                           Modality(moe::SoftmaxTopKRouter<double>(random_matrix(6, 5, 310, 1.5), 2), {0, 1, 0, 1, 0, 1}, 2),
                           {}, moe::Capacity::from_factor(0.75));
  const std::vector<std::int64_t> ids = {0, 1, 1, 0, 1, 1, 1, 0, 1, 1};
  moe::ForwardContext ctx;
  ctx.modality_ids = ids;
  CHECK(capacity_gradcheck(modality, 10, 0.75, 0.9, 312, ctx, table) > 0);
}

TEST_CASE("the capacity loss accepts the routers built on softmax gating, masked or not", "[loss][capacity]") {
  const RowMatrix<double> x = random_matrix(8, 5, 500);
  const RowMatrix<double> w = random_matrix(4, 5, 501, 1.5);
  const auto check = [](const moe::RoutingResult<double>& r, double factor) {
    CHECK(moe::CapacityLoss{factor}(r) == Approx(capacity_loss_by_loops(r, factor)).epsilon(1e-13).margin(1e-300));
  };
  {
    INFO("expert choice: c tokens per expert, never over a capacity of factor >= 1");
    moe::RoutingResult<double> r;
    moe::ExpertChoiceRouter<double>(w, 1.0).route(x, r);
    check(r, 1.0);
    CHECK(moe::CapacityLoss{1.0}(r) == 0.0);
    check(r, 0.5);
    CHECK(moe::CapacityLoss{0.5}(r) > 0.0);
  }
  {
    INFO("jittered softmax top-2 in training");
    moe::ForwardContext ctx;
    ctx.mode = moe::Mode::training;
    ctx.seed = 7;
    moe::RoutingResult<double> r;
    moe::Jittered<moe::SoftmaxTopKRouter<double>>(moe::SoftmaxTopKRouter<double>(w, 2), 0.1).route(x, r, ctx);
    check(r, 0.5);
    CHECK(moe::CapacityLoss{0.5}(r) > 0.0);
  }
  {
    INFO("modality router: masked experts have p = 0");
    const std::vector<std::int64_t> ids = {0, 1, 0, 1, 1, 0, 0, 1};
    moe::ForwardContext ctx;
    ctx.modality_ids = ids;
    moe::RoutingResult<double> r;
    moe::ModalitySoftmaxTopKRouter<double>(moe::SoftmaxTopKRouter<double>(w, 1), {0, 1, 0, 1}, 2).route(x, r, ctx);
    const double expected = capacity_loss_by_loops(masked(r, {0, 1, 0, 1}, ids), 0.5);
    CHECK(moe::CapacityLoss{0.5}(r) == Approx(expected).epsilon(1e-13));
    CHECK(expected > 0.0);
  }
  {
    INFO("sequence router: one routing per sequence of 4 tokens");
    moe::ForwardContext ctx;
    ctx.sequence_length = 4;
    moe::RoutingResult<double> r;
    moe::SequenceSoftmaxTopKRouter<double>(moe::SoftmaxTopKRouter<double>(w, 2)).route(x, r, ctx);
    check(r, 0.5);
  }
  {
    INFO("hash routing: one-hot scores, a softmax over one open expert: its drop rate, no gradient");
    const std::vector<std::int64_t> ids = {0, 1, 0, 3, 0, 2, 0, 1};
    moe::ForwardContext ctx;
    ctx.token_ids = ids;
    moe::RoutingResult<double> r;
    moe::HashRouter<double>({0, 1, 2, 3}, 4, 5).route(x, r, ctx);
    // C = ceil(1 * 8 / 4) = 2; expert 0 has 4 tokens: 2 dropped of 8 tokens.
    CHECK(moe::CapacityLoss{1.0}(r) == 0.25);
    RowMatrix<double> d = RowMatrix<double>::Zero(8, 4);
    moe::CapacityLoss{1.0}.backward(r, 1.0, d);
    CHECK(d.isZero(0.0));
  }
}

TEST_CASE("capacity loss errors: the factor, the minimum, and routings without softmax scores",
          "[loss][capacity][errors]") {
  const auto r = softmax_routing(6, 4, 2, 400);
  RowMatrix<double> d = RowMatrix<double>::Zero(6, 4);
  for (const double bad : {0.0, -1.0, std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    INFO("factor " << bad);
    moe::test::require_invalid([&] { (void)moe::CapacityLoss{bad}(r); },
                               {"CapacityLoss::operator()(): factor expected finite and > 0, got"});
    moe::test::require_invalid([&] { moe::CapacityLoss{bad}.backward(r, 1.0, d); },
                               {"CapacityLoss::backward(): factor expected finite and > 0, got"});
    moe::test::require_invalid([&] { (void)moe::CapacityLoss{bad}.capacity(12, 4); },
                               {"CapacityLoss::capacity(): factor expected finite and > 0, got"});
  }
  REQUIRE_THROWS_WITH((moe::CapacityLoss{1.0, -1}(r)), "CapacityLoss::operator()(): minimum expected >= 0, got -1");
  RowMatrix<double> wrong = RowMatrix<double>::Zero(6, 3);
  REQUIRE_THROWS_WITH(moe::CapacityLoss{}.backward(r, 1.0, wrong),
                      "CapacityLoss::backward(): dlogits expected shape [6, 4], got [6, 3]");

  // Routers whose scores are not softmax(logits) over all experts.
  const RowMatrix<double> x = random_matrix(6, 5, 401);
  const RowMatrix<double> w = random_matrix(4, 5, 402);
  const std::vector<std::string> refusal = {"CapacityLoss::operator()(): routing scores expected softmax(logits) over all "
                                            "experts"};
  {
    INFO("TopKSoftmax (GPT-OSS): scores hold the logits");
    moe::RoutingResult<double> rr;
    moe::TopKSoftmaxRouter<double>(w, 2).route(x, rr);
    moe::test::require_invalid([&] { (void)moe::CapacityLoss{}(rr); }, refusal);
    moe::test::require_invalid([&] { moe::CapacityLoss{}.backward(rr, 1.0, d); },
                               {"CapacityLoss::backward(): routing scores expected softmax(logits)"});
  }
  {
    INFO("SigmoidGroupLimited (DeepSeek-V3): sigmoid scores");
    moe::RoutingResult<double> rr;
    moe::GroupLimitedRouter<double>(w, 2).route(x, rr);
    moe::test::require_invalid([&] { (void)moe::CapacityLoss{}(rr); }, refusal);
  }
  {
    INFO("noisy top-k: scores hold the (noisy) logits");
    moe::RoutingResult<double> rr;
    moe::NoisyTopKRouter<double>(w, random_matrix(4, 5, 403), 2).route(x, rr);
    moe::test::require_invalid([&] { (void)moe::CapacityLoss{}(rr); }, refusal);
  }
  {
    INFO("through a layer's backward: the same refusal");
    using Router = moe::TopKSoftmaxRouter<double>;
    const Layer<Router> layer(moe::test::swiglu<double>(4, 5, 4, 404), Router(w, 2), {},
                              moe::Capacity::from_factor(1.0));
    moe::ForwardContext ctx;
    ctx.mode = moe::Mode::training;
    moe::Workspace<double> ws;
    RowMatrix<double> y(6, 5), dx(6, 5);
    layer.forward(x, y, ws, ctx);
    auto grads = layer.make_gradients();
    moe::test::require_invalid(
        [&] { layer.backward(y, dx, ws, grads, moe::losses(moe::weighted(moe::CapacityLoss{}, 0.1))); },
        {"CapacityLoss::backward(): routing scores expected softmax(logits)"});
  }
  STATIC_REQUIRE(moe::RoutingLoss<moe::CapacityLoss, float>);
  STATIC_REQUIRE(moe::RoutingLoss<moe::CapacityLoss, double>);
}

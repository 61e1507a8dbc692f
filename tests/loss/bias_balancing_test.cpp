// DeepSeek-V3 balancing: the bias update against hand computations, the sequence-wise loss
// against a scalar reference written from the paper's definition.
#include <moe/loss/bias_balancing.hpp>
#include <moe/router/top_k_router.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::Vector;

/// A token-choice routing of T tokens, k distinct experts each, chosen at random, with
/// sigmoid scores of random logits.
moe::RoutingResult<double> random_routing(Index T, Index E, Index k, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal(0.0, 1.5);
  moe::RoutingResult<double> r;
  r.reset(T, E, T * k, k);
  r.scores.resize(T, E);
  std::vector<Index> perm(static_cast<std::size_t>(E));
  for (Index t = 0; t < T; ++t) {
    for (Index e = 0; e < E; ++e) r.scores(t, e) = 1.0 / (1.0 + std::exp(-normal(gen)));
    for (Index e = 0; e < E; ++e) perm[static_cast<std::size_t>(e)] = e;
    std::shuffle(perm.begin(), perm.end(), gen);
    for (Index j = 0; j < k; ++j) {
      r.token[static_cast<std::size_t>(t * k + j)] = t;
      r.expert[static_cast<std::size_t>(t * k + j)] = perm[static_cast<std::size_t>(j)];
      r.gate[static_cast<std::size_t>(t * k + j)] = 1.0;
    }
  }
  r.logits = r.scores;
  return r;
}

/// alpha * mean over sequences of sum_e f_e P_e, straight from DeepSeek-V3 eq. 17-20.
double ref_sequence_loss(const moe::RoutingResult<double>& r, Index seq_len, double alpha) {
  const Index T = r.num_tokens, E = r.num_experts, k = r.k;
  const Index n = seq_len == 0 ? T : seq_len;
  double total = 0;
  for (Index b = 0; b < T / n; ++b) {
    double l = 0;
    for (Index e = 0; e < E; ++e) {
      double chosen = 0, p = 0;
      for (Index t = b * n; t < (b + 1) * n; ++t) {
        for (Index i = 0; i < r.size(); ++i)
          if (r.token[static_cast<std::size_t>(i)] == t && r.expert[static_cast<std::size_t>(i)] == e) chosen += 1;
        double denom = 0;
        for (Index j = 0; j < E; ++j) denom += r.scores(t, j);
        p += r.scores(t, e) / denom;
      }
      const double f = double(E) / double(k * n) * chosen;
      l += f * (p / double(n));
    }
    total += l;
  }
  return alpha * total / double(T / n);
}

}  // namespace

TEST_CASE("the bias update moves each bias by gamma toward balance, by the sign of mean - load", "[loss][balancing]") {
  // load {5, 1, 3, 3}: mean 3, so expert 0 is overloaded (-), 1 underloaded (+), 2 and 3 at the mean (0).
  Vector<double> bias(4);
  bias << 0.1, 0.2, 0.3, 0.4;
  const std::vector<Index> load = {5, 1, 3, 3};
  moe::BiasBalancing{0.01}(bias, std::span<const Index>(load));
  CHECK(bias[0] == Approx(0.09).epsilon(1e-15));
  CHECK(bias[1] == Approx(0.21).epsilon(1e-15));
  CHECK(bias[2] == 0.3);
  CHECK(bias[3] == 0.4);
}

TEST_CASE("the sign is exact when the mean load is not an integer", "[loss][balancing]") {
  // load {1, 1, 2}: mean 4/3; experts 0 and 1 below (+), 2 above (-).
  Vector<float> bias = Vector<float>::Zero(3);
  const std::vector<Index> load = {1, 1, 2};
  moe::BiasBalancing{0.5}(bias, std::span<const Index>(load));
  CHECK(bias[0] == 0.5f);
  CHECK(bias[1] == 0.5f);
  CHECK(bias[2] == -0.5f);
}

TEST_CASE("the mean-centred update sums to zero and keeps the biases' mean", "[loss][balancing]") {
  // load {7, 0, 2, 1, 2}: mean 2.4; signs {-1, +1, +1, +1, +1}, their mean 0.6.
  const std::vector<Index> load = {7, 0, 2, 1, 2};
  const double gamma = 0.01;
  Vector<double> bias = Vector<double>::Zero(5);
  moe::BiasBalancing{gamma, true}(bias, std::span<const Index>(load));
  CHECK(std::abs(bias.sum()) < 1e-17);
  CHECK(bias[0] == Approx(gamma * (-1 - 0.6)).epsilon(1e-14));
  for (Index e = 1; e < 5; ++e) CHECK(bias[e] == Approx(gamma * (1 - 0.6)).epsilon(1e-14));
  // From a non-zero start the mean is kept.
  Vector<double> b2(5);
  b2 << 0.3, -0.1, 0.7, 0.2, 0.4;
  const double mean = b2.mean();
  moe::BiasBalancing{gamma, true}(b2, std::span<const Index>(load));
  CHECK(b2.mean() == Approx(mean).epsilon(1e-14));
  // Without centring the same load moves the mean by gamma * 0.6.
  Vector<double> b3 = Vector<double>::Zero(5);
  moe::BiasBalancing{gamma, false}(b3, std::span<const Index>(load));
  CHECK(b3.sum() == Approx(gamma * 3).epsilon(1e-14));
}

TEST_CASE("the bias update reads statistics or a routing result, and sizes an empty bias", "[loss][balancing]") {
  moe::LayerStatistics stats;
  stats.expert_load = {0, 4, 2};
  Vector<double> bias;  // empty means zero, as SigmoidGroupLimited::correction_bias
  moe::BiasBalancing{1.0}(bias, stats);
  REQUIRE(bias.size() == 3);
  CHECK(bias[0] == 1.0);
  CHECK(bias[1] == -1.0);
  CHECK(bias[2] == 0.0);

  moe::RoutingResult<double> r;
  r.reset(3, 3, 3, 1);
  r.token = {0, 1, 2};
  r.expert = {2, 2, 1};
  Vector<double> b(3);
  b << 0, 0, 0;
  moe::BiasBalancing{0.25}(b, r);
  CHECK(b[0] == 0.25);
  CHECK(b[1] == 0.0);
  CHECK(b[2] == -0.25);
}

TEST_CASE("bias update errors name the argument", "[loss][balancing][errors]") {
  Vector<double> bias = Vector<double>::Zero(3);
  const std::vector<Index> load = {1, 2};
  REQUIRE_THROWS_WITH(moe::BiasBalancing{}(bias, std::span<const Index>(load)),
                      "BiasBalancing::operator()(): bias length (one per expert, as the load) expected 2, got 3");
  REQUIRE_THROWS_WITH(moe::BiasBalancing{}(bias, std::span<const Index>()),
                      "BiasBalancing::operator()(): load length (one per expert) expected >= 1, got 0");
}

TEST_CASE("repeated bias updates balance a skewed DeepSeek-V3 router", "[loss][balancing]") {
  // A router whose logits favour expert 0 for every token; the correction bias must spread
  // the load without touching the weights.
  const Index E = 4, d = 6, T = 64, k = 1;
  std::mt19937 gen(7);
  std::normal_distribution<double> normal(0.0, 1.0);
  RowMatrix<double> w(E, d);
  for (Index e = 0; e < E; ++e)
    for (Index j = 0; j < d; ++j) w(e, j) = 0.3 * normal(gen);
  RowMatrix<double> x(T, d);
  for (Index t = 0; t < T; ++t)
    for (Index j = 0; j < d; ++j) x(t, j) = normal(gen);
  x.col(0).array() = x.col(0).array().abs() + 1.0;
  w(0, 0) = 2.0;
  moe::SigmoidGroupLimited<double> gating;
  moe::GroupLimitedRouter<double> router(w, k, gating);
  moe::RoutingResult<double> r;
  router.route(x, r);
  const auto max_load = [](const std::vector<Index>& c) { return *std::max_element(c.begin(), c.end()); };
  const Index before = max_load(r.expert_counts());
  REQUIRE(before > 2 * T / E);
  const moe::BiasBalancing update{0.01, true};
  for (int step = 0; step < 300; ++step) {
    router.route(x, r);
    update(router.gating().correction_bias, r);
  }
  router.route(x, r);
  const Index after = max_load(r.expert_counts());
  INFO("max load before " << before << ", after " << after);
  CHECK(after < before);
  CHECK(after <= T / E + T / 8);
  CHECK(std::abs(router.gating().correction_bias.sum()) < 1e-12);
}

TEST_CASE("the sequence-wise balance loss matches the definition", "[loss][balancing]") {
  for (const Index k : {Index{1}, Index{3}}) {
    const auto r = random_routing(12, 6, k, 11u + static_cast<unsigned>(k));
    for (const Index seq : {Index{0}, Index{12}, Index{4}, Index{3}, Index{1}}) {
      INFO("k " << k << ", sequence_length " << seq);
      const double loss = moe::SequenceBalanceLoss{0.3}(r, seq);
      CHECK(loss == Approx(ref_sequence_loss(r, seq, 0.3)).epsilon(1e-13));
    }
  }
  // Float agrees with the double reference.
  const auto rd = random_routing(8, 5, 2, 3);
  moe::RoutingResult<float> rf;
  rf.reset(8, 5, 16, 2);
  rf.token = rd.token;
  rf.expert = rd.expert;
  rf.scores = rd.scores.cast<float>();
  CHECK(double(moe::SequenceBalanceLoss{1.0}(rf, 4)) == Approx(ref_sequence_loss(rd, 4, 1.0)).epsilon(1e-6));
}

TEST_CASE("the sequence-wise balance loss is alpha at perfect balance, whatever the scores", "[loss][balancing]") {
  // E = 4, k = 2, two sequences of 4 tokens; in each, every expert is chosen exactly twice.
  auto r = random_routing(8, 4, 2, 5);
  const Index choice[8][2] = {{0, 1}, {2, 3}, {0, 2}, {1, 3}, {3, 0}, {1, 2}, {0, 1}, {3, 2}};
  for (Index t = 0; t < 8; ++t)
    for (Index j = 0; j < 2; ++j) r.expert[static_cast<std::size_t>(t * 2 + j)] = choice[t][j];
  CHECK(moe::SequenceBalanceLoss{0.001}(r, 4) == Approx(0.001).epsilon(1e-13));
  // The whole batch is balanced too; a different split is not.
  CHECK(moe::SequenceBalanceLoss{0.001}(r, 0) == Approx(0.001).epsilon(1e-13));
  // All tokens on experts 0 and 1: f = {2, 2, 0, 0}; the loss is 2 * alpha * (P_0 + P_1) > alpha
  // exactly when the scores favour 0 and 1 -- computed by the reference.
  for (Index t = 0; t < 8; ++t) {
    r.expert[static_cast<std::size_t>(t * 2)] = 0;
    r.expert[static_cast<std::size_t>(t * 2 + 1)] = 1;
  }
  CHECK(moe::SequenceBalanceLoss{0.001}(r, 4) == Approx(ref_sequence_loss(r, 4, 0.001)).epsilon(1e-13));
}

TEST_CASE("the sequence-wise balance loss refuses what it cannot compute", "[loss][balancing][errors]") {
  const auto r = random_routing(6, 4, 2, 1);
  REQUIRE_THROWS_WITH(moe::SequenceBalanceLoss{}(r, 4),
                      "SequenceBalanceLoss::operator()(): sequence_length expected 0 or a divisor of the number of "
                      "tokens 6, got 4");
  moe::RoutingResult<double> varying = r;
  varying.k = 0;
  REQUIRE_THROWS_WITH(moe::SequenceBalanceLoss{}(varying),
                      "SequenceBalanceLoss::operator()(): a token-choice routing (k >= 1, T * k assignments) expected "
                      "T * k = 6 * 0, got 12");
  moe::RoutingResult<double> empty;
  empty.reset(0, 4, 0, 2);
  empty.scores.resize(0, 4);
  CHECK(moe::SequenceBalanceLoss{}(empty) == 0.0);
}

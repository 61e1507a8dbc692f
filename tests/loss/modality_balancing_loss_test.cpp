// ModalityLoadBalancingLoss against a scalar reference written from the rule (golden-variety
// README, modality_experts): for each modality m present, aux_m = E_m * sum_{e in A_m} f_e P_e
// (f from the routing's top-k choices of m's tokens, P the mean masked softmax of their
// logits), the loss the mean of aux_m over the modalities present; k at perfect balance; the
// gradient with respect to the logits against central finite differences of value().
#include <moe/loss/modality_balancing_loss.hpp>
#include <moe/router/modality_router.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/errors.hpp"
#include "support/finite_difference.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::test::random_matrix;

struct ModalityAuxReference {
  std::vector<double> per_modality;
  double value = 0;
};

/// The rule, by loops over tokens and experts: per modality, tokens N_m, assignment counts,
/// masked softmax means; aux_m = E_m sum f_e P_e over A_m; the mean over modalities with tokens.
ModalityAuxReference modality_aux_reference(const moe::RoutingResult<double>& r, const std::vector<Index>& table,
                                            const std::vector<std::int64_t>& ids, Index M) {
  const Index T = r.num_tokens, E = r.num_experts;
  const auto open = [&](Index m, Index e) { return table[size_t(e)] == -1 || table[size_t(e)] == m; };
  ModalityAuxReference out;
  out.per_modality.assign(static_cast<size_t>(M), 0.0);
  double sum = 0;
  int present = 0;
  for (Index m = 0; m < M; ++m) {
    std::vector<double> f(static_cast<size_t>(E), 0.0), P(static_cast<size_t>(E), 0.0);
    Index n = 0;
    for (Index t = 0; t < T; ++t) n += ids[size_t(t)] == m ? 1 : 0;
    if (n == 0) continue;
    for (size_t i = 0; i < r.token.size(); ++i)
      if (ids[size_t(r.token[i])] == m) f[size_t(r.expert[i])] += 1.0 / double(n);
    for (Index t = 0; t < T; ++t) {
      if (ids[size_t(t)] != m) continue;
      double denom = 0;
      for (Index e = 0; e < E; ++e)
        if (open(m, e)) denom += std::exp(r.logits(t, e));
      for (Index e = 0; e < E; ++e)
        if (open(m, e)) P[size_t(e)] += std::exp(r.logits(t, e)) / denom / double(n);
    }
    Index Em = 0;
    double s = 0;
    for (Index e = 0; e < E; ++e)
      if (open(m, e)) {
        ++Em;
        s += f[size_t(e)] * P[size_t(e)];
      }
    out.per_modality[size_t(m)] = double(Em) * s;
    sum += out.per_modality[size_t(m)];
    ++present;
  }
  out.value = sum / present;
  return out;
}

/// A routing by a modality router (softmax top-k over the open experts) of T N(0, 1) tokens.
moe::RoutingResult<double> modality_aux_routing(const std::vector<Index>& table, Index M, Index k,
                                                const std::vector<std::int64_t>& ids, unsigned seed) {
  const auto E = static_cast<Index>(table.size());
  const moe::ModalitySoftmaxTopKRouter<double> router(moe::SoftmaxTopKRouter<double>(random_matrix(E, 6, seed), k),
                                                      table, M);
  const RowMatrix<double> x = random_matrix(static_cast<Index>(ids.size()), 6, seed + 1);
  moe::ForwardContext ctx;
  ctx.modality_ids = ids;
  moe::RoutingResult<double> r;
  router.route(x, r, ctx);
  return r;
}

std::vector<std::int64_t> modality_aux_ids(Index T, const std::vector<std::int64_t>& present, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<std::size_t> pick(0, present.size() - 1);
  std::vector<std::int64_t> ids(static_cast<size_t>(T));
  for (size_t t = 0; t < ids.size(); ++t) ids[t] = t < present.size() ? present[t] : present[pick(gen)];
  return ids;
}

moe::LossInput<double> modality_aux_input(const moe::RoutingResult<double>& r, const std::vector<std::int64_t>& ids) {
  moe::ForwardContext ctx;
  ctx.modality_ids = ids;
  return moe::LossInput<double>{r, moe::BackwardContext{ctx}};
}

struct ModalityAuxConfig {
  std::vector<Index> table;
  Index M;
  Index k;
  std::vector<std::int64_t> present;
};

const std::vector<ModalityAuxConfig>& modality_aux_configs() {
  static const std::vector<ModalityAuxConfig> configs = {
      {{0, 0, 1, 1, -1, -1}, 2, 2, {0, 1}},
      {{2, -1, 0, 1, 0, 2, 1, -1}, 3, 3, {0, 1, 2}},
      {{1, 0, 1, 0, 0, 1}, 2, 1, {0, 1}},               // no cross-modal expert
      {{0, 1, 1, 2, 2}, 3, 1, {0, 1, 2}},               // modality 0: one open expert
      {{0, -1, 0, 1, 1, 2, 2, -1}, 3, 2, {2, 0}},       // modality 1 absent
      {{0, -1, 1, 1, 2, 2, 3}, 4, 1, {3}},              // one modality present of four
  };
  return configs;
}

}  // namespace

TEST_CASE("modality balancing loss: per modality and mean over the modalities present, as the rule",
          "[loss][modality]") {
  unsigned seed = 10;
  for (const auto& c : modality_aux_configs()) {
    INFO("E " << c.table.size() << ", M " << c.M << ", k " << c.k);
    const auto ids = modality_aux_ids(29, c.present, seed);
    const auto r = modality_aux_routing(c.table, c.M, c.k, ids, seed + 1);
    const auto expected = modality_aux_reference(r, c.table, ids, c.M);
    const moe::ModalityLoadBalancingLoss loss(c.table, c.M);
    const auto in = modality_aux_input(r, ids);
    const std::vector<double> per = loss.per_modality(in);
    REQUIRE(per.size() == size_t(c.M));
    for (Index m = 0; m < c.M; ++m) {
      INFO("modality " << m);
      bool present = false;
      for (const auto p : c.present) present = present || p == m;
      if (present) {
        CHECK(per[size_t(m)] == Approx(expected.per_modality[size_t(m)]).epsilon(1e-13));
        CHECK(per[size_t(m)] > 0);
      } else {
        CHECK(per[size_t(m)] == 0.0);  // absent: 0, and skipped by the mean
      }
    }
    CHECK(loss.value(in) == Approx(expected.value).epsilon(1e-13));
    seed += 10;
  }
}

TEST_CASE("modality balancing loss: each modality counts once in the mean, whatever its number of tokens",
          "[loss][modality]") {
  // 3 tokens of modality 0 and 20 of modality 1: the mean is (aux_0 + aux_1) / 2, not weighted
  // by tokens.
  const std::vector<Index> table = {0, 0, 1, 1, 1, -1};
  std::vector<std::int64_t> ids(23, 1);
  ids[0] = ids[7] = ids[15] = 0;
  const auto r = modality_aux_routing(table, 2, 2, ids, 77);
  const auto expected = modality_aux_reference(r, table, ids, 2);
  const moe::ModalityLoadBalancingLoss loss(table, 2);
  const auto in = modality_aux_input(r, ids);
  CHECK(loss.value(in) ==
        Approx((expected.per_modality[0] + expected.per_modality[1]) / 2).epsilon(1e-13));
}

TEST_CASE("modality balancing loss equals k at perfect balance in every modality", "[loss][modality]") {
  // Modality m's tokens pick its open experts round-robin (token i of m: A_m[(i + j) % E_m],
  // j < k), N_m = 2 E_m tokens, so f_e = k / E_m on A_m; every open logit of a token is the same
  // (a per-token constant), so p is uniform 1/E_m over A_m whatever the closed logits are:
  // aux_m = E_m * E_m * (k / E_m) * (1 / E_m) = k, and the mean is k.
  const std::vector<Index> table = {0, 1, -1, 1, 0, 2, 1, -1, 2};
  const Index M = 3, E = 9;
  for (const Index k : {Index{1}, Index{2}, Index{3}}) {
    std::vector<std::vector<Index>> open(static_cast<size_t>(M));
    for (Index m = 0; m < M; ++m)
      for (Index e = 0; e < E; ++e)
        if (table[size_t(e)] == -1 || table[size_t(e)] == m) open[size_t(m)].push_back(e);
    std::vector<std::int64_t> ids;
    std::vector<Index> rank;  // index of the token among its modality's
    for (Index m = 0; m < M; ++m)
      for (Index i = 0; i < 2 * static_cast<Index>(open[size_t(m)].size()); ++i) {
        ids.push_back(m);
        rank.push_back(i);
      }
    // Interleave the modalities' tokens (the loss must not need them grouped).
    std::mt19937 gen(5);
    std::vector<size_t> order(ids.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), gen);
    const auto T = static_cast<Index>(ids.size());
    std::vector<std::int64_t> shuffled_ids(ids.size());
    std::vector<Index> shuffled_rank(ids.size());
    for (size_t i = 0; i < order.size(); ++i) {
      shuffled_ids[i] = ids[order[i]];
      shuffled_rank[i] = rank[order[i]];
    }
    moe::RoutingResult<double> r;
    r.reset(T, E, T * k, k);
    r.logits = 3.0 * random_matrix(T, E, 9);  // closed logits: arbitrary
    for (Index t = 0; t < T; ++t) {
      const auto m = static_cast<size_t>(shuffled_ids[size_t(t)]);
      const double level = 0.25 * double(t % 5) - 0.5;
      for (const Index e : open[m]) r.logits(t, e) = level;
      const auto Em = static_cast<Index>(open[m].size());
      for (Index j = 0; j < k; ++j) {
        const auto i = size_t(t * k + j);
        r.token[i] = t;
        r.expert[i] = open[m][size_t((shuffled_rank[size_t(t)] + j) % Em)];
        r.gate[i] = 1.0 / double(k);
      }
    }
    const moe::ModalityLoadBalancingLoss loss(table, M);
    const auto in = modality_aux_input(r, shuffled_ids);
    INFO("k " << k);
    for (const double aux : loss.per_modality(in)) CHECK(aux == Approx(double(k)).epsilon(1e-14));
    CHECK(loss.value(in) == Approx(double(k)).epsilon(1e-14));
  }
}

TEST_CASE("modality balancing loss of an empty batch is zero", "[loss][modality]") {
  moe::RoutingResult<double> r;
  r.reset(0, 4, 0, 2);
  r.logits.resize(0, 4);
  const moe::ModalityLoadBalancingLoss loss({0, 1, -1, 1}, 2);
  const std::vector<std::int64_t> none;
  const auto in = modality_aux_input(r, none);
  CHECK(loss.value(in) == 0.0);
  RowMatrix<double> d = RowMatrix<double>::Zero(0, 4);
  loss.backward(in, 1.0, moe::LossGradient<double>{d});
}

TEST_CASE("modality balancing loss gradient with respect to the logits matches finite differences",
          "[loss][modality][backward]") {
  unsigned seed = 500;
  for (const auto& c : modality_aux_configs()) {
    INFO("E " << c.table.size() << ", M " << c.M << ", k " << c.k);
    const auto ids = modality_aux_ids(17, c.present, seed);
    const auto r = modality_aux_routing(c.table, c.M, c.k, ids, seed + 1);
    const auto E = static_cast<Index>(c.table.size());
    const moe::ModalityLoadBalancingLoss loss(c.table, c.M);
    // backward adds into what dlogits holds.
    const RowMatrix<double> before = random_matrix(17, E, seed + 2);
    RowMatrix<double> d = before;
    loss.backward(modality_aux_input(r, ids), 0.7, moe::LossGradient<double>{d});
    // The choices (f) stay fixed while the logits move: differentiate the value with r's triples.
    moe::RoutingResult<double> moved = r;
    const auto numeric = moe::test::numeric_gradient(
        moved.logits, [&] { return 0.7 * loss.value(modality_aux_input(moved, ids)); });
    const RowMatrix<double> added = d - before;
    CHECK(moe::test::relative_gap(added, numeric) < 1e-7);
    // Closed logits get exactly nothing.
    for (Index t = 0; t < 17; ++t)
      for (Index e = 0; e < E; ++e) {
        const Index owner = c.table[size_t(e)];
        if (owner != -1 && owner != ids[size_t(t)]) CHECK(d(t, e) == before(t, e));
      }
    // Weight 0 adds nothing.
    RowMatrix<double> untouched = before;
    loss.backward(modality_aux_input(r, ids), 0.0, moe::LossGradient<double>{untouched});
    CHECK(untouched == before);
    seed += 10;
  }
}

TEST_CASE("modality balancing loss refuses bad ids, tables and shapes", "[loss][modality][errors]") {
  const std::vector<Index> table = {0, 0, 1, -1};
  const std::vector<std::int64_t> ids = {0, 1, 1, 0, 1};
  const auto r = modality_aux_routing(table, 2, 2, ids, 900);
  const moe::ModalityLoadBalancingLoss loss(table, 2);
  RowMatrix<double> d = RowMatrix<double>::Zero(5, 4);
  SECTION("modality_ids length") {
    const std::vector<std::int64_t> short_ids = {0, 1, 1, 0};
    const auto in = modality_aux_input(r, short_ids);
    const std::vector<std::string> parts = {"ForwardContext::modality_ids length (one per token of the routing)",
                                            "expected 5, got 4"};
    moe::test::require_invalid([&] { (void)loss.value(in); }, parts);
    moe::test::require_invalid([&] { (void)loss.per_modality(in); }, parts);
    moe::test::require_invalid([&] { loss.backward(in, 1.0, moe::LossGradient<double>{d}); }, parts);
    moe::test::require_invalid([&] { (void)loss.value(modality_aux_input(r, {})); }, {"expected 5, got 0"});
  }
  SECTION("modality_ids out of range") {
    const std::vector<std::int64_t> high = {0, 1, 2, 0, 1}, negative = {0, -1, 1, 0, 1};
    moe::test::require_invalid([&] { (void)loss.value(modality_aux_input(r, high)); },
                                 {"ModalityLoadBalancingLoss::value()", "modality_ids[2]",
                                  "expected in [0, num_modalities = 2)", "got 2"});
    moe::test::require_invalid(
        [&] { loss.backward(modality_aux_input(r, negative), 1.0, moe::LossGradient<double>{d}); },
        {"ModalityLoadBalancingLoss::backward()", "modality_ids[1]", "got -1"});
  }
  SECTION("the table against the routing's experts") {
    const moe::ModalityLoadBalancingLoss longer({0, 0, 1, -1, 1}, 2);
    const auto in = modality_aux_input(r, ids);
    moe::test::require_invalid([&] { (void)longer.value(in); },
                                 {"ModalityLoadBalancingLoss::value()",
                                  "expert_modality length (the routing's experts)", "expected 4, got 5"});
    RowMatrix<double> d5 = RowMatrix<double>::Zero(5, 5);
    moe::test::require_invalid([&] { longer.backward(in, 1.0, moe::LossGradient<double>{d5}); },
                                 {"ModalityLoadBalancingLoss::backward()", "expected 4, got 5"});
  }
  SECTION("dlogits shape") {
    RowMatrix<double> wrong = RowMatrix<double>::Zero(5, 3);
    moe::test::require_invalid([&] { loss.backward(modality_aux_input(r, ids), 1.0, moe::LossGradient<double>{wrong}); },
                                 {"ModalityLoadBalancingLoss::backward()", "dlogits", "expected shape [5, 4]",
                                  "got [5, 3]"});
  }
  SECTION("construction") {
    moe::test::require_invalid([] { (void)moe::ModalityLoadBalancingLoss({0, 0, 1, 1}, 3); },
                                 {"ModalityLoadBalancingLoss::ModalityLoadBalancingLoss()",
                                  "experts open to modality 2", "expected >= 1, got 0"});
    moe::test::require_invalid([] { (void)moe::ModalityLoadBalancingLoss({0, 3, 1, 1}, 2); },
                                 {"expert_modality[1]", "got 3"});
    moe::test::require_invalid([] { (void)moe::ModalityLoadBalancingLoss({0, -2, 1, 1}, 2); },
                                 {"expert_modality[1]", "got -2"});
    moe::test::require_invalid([] { (void)moe::ModalityLoadBalancingLoss({-1, -1}, 0); },
                                 {"num_modalities expected >= 1, got 0"});
    CHECK_NOTHROW(moe::ModalityLoadBalancingLoss({-1, -1}, 3));  // shared experts serve every modality
  }
}

TEST_CASE("modality balancing loss built from a router takes the router's table", "[loss][modality]") {
  const std::vector<Index> table = {2, -1, 0, 1, 0, 2, 1, -1};
  const moe::ModalitySoftmaxTopKRouter<double> router(moe::SoftmaxTopKRouter<double>(random_matrix(8, 6, 950), 2),
                                                      table, 3);
  const moe::ModalityLoadBalancingLoss from_router(router);
  CHECK(from_router.expert_modality == table);
  CHECK(from_router.num_modalities == 3);
  const auto ids = modality_aux_ids(15, {0, 1, 2}, 951);
  const auto r = modality_aux_routing(table, 3, 2, ids, 952);
  CHECK(from_router.value(modality_aux_input(r, ids)) ==
        Approx(modality_aux_reference(r, table, ids, 3).value).epsilon(1e-13));
}

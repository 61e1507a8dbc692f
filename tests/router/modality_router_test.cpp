// ModalityRouter (modality-specific experts with cross-modal shared ones, issue #18) against a
// scalar reference written from the rule (golden-variety README, modality_experts): logits
// x Wg^T kept unmasked, gates those of a softmax over the token's open experts alone, top-k,
// optional renormalisation; random properties over tables, k and M; load() against a loop;
// the argument errors; and the group-limited gating rule, which can select past the mask and
// must then throw.
#include <moe/router/modality_router.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/errors.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::test::random_matrix;

/// Whether expert e is open to a token of modality m under table (entry m or -1).
bool modality_ref_open(const std::vector<Index>& table, Index m, Index e) {
  const Index owner = table[static_cast<std::size_t>(e)];
  return owner == -1 || owner == m;
}

/// The k best of v among the indices `open` (descending value; equal values: lower index
/// first), by a full stable sort of the open indices in increasing order.
std::vector<Index> modality_ref_top_k(const std::vector<double>& v, std::vector<Index> open, Index k) {
  std::stable_sort(open.begin(), open.end(), [&](Index a, Index b) { return v[size_t(a)] > v[size_t(b)]; });
  open.resize(static_cast<size_t>(k));
  return open;
}

/// Dense gates [T, E] of the rule: z = x_t W^T; p = softmax over the open experts of the
/// token's modality alone (the others have no probability); the k largest; renormalised or
/// not. Each sum is an explicit loop.
RowMatrix<double> modality_ref_gates(const RowMatrix<double>& x, const RowMatrix<double>& w,
                                     const std::vector<Index>& table, const std::vector<std::int64_t>& ids, Index k,
                                     bool renorm) {
  const Index E = w.rows();
  RowMatrix<double> g = RowMatrix<double>::Zero(x.rows(), E);
  for (Index t = 0; t < x.rows(); ++t) {
    const auto m = static_cast<Index>(ids[size_t(t)]);
    std::vector<double> z(static_cast<size_t>(E), 0.0);
    std::vector<Index> open;
    for (Index e = 0; e < E; ++e) {
      for (Index j = 0; j < w.cols(); ++j) z[size_t(e)] += x(t, j) * w(e, j);
      if (modality_ref_open(table, m, e)) open.push_back(e);
    }
    double max = -std::numeric_limits<double>::infinity();
    for (Index e : open) max = std::max(max, z[size_t(e)]);
    double sum = 0;
    std::vector<double> p(static_cast<size_t>(E), 0.0);
    for (Index e : open) sum += (p[size_t(e)] = std::exp(z[size_t(e)] - max));
    for (Index e : open) p[size_t(e)] /= sum;
    const auto top = modality_ref_top_k(p, open, k);
    double kept = 0;
    for (Index e : top) kept += p[size_t(e)];
    for (Index e : top) g(t, e) = renorm ? p[size_t(e)] / kept : p[size_t(e)];
  }
  return g;
}

/// Dense gates of the top-k-then-softmax rule restricted to the open experts: the k largest
/// open logits, softmax over those k.
RowMatrix<double> modality_ref_topk_softmax(const RowMatrix<double>& x, const RowMatrix<double>& w,
                                            const std::vector<Index>& table, const std::vector<std::int64_t>& ids,
                                            Index k) {
  const Index E = w.rows();
  RowMatrix<double> g = RowMatrix<double>::Zero(x.rows(), E);
  for (Index t = 0; t < x.rows(); ++t) {
    const auto m = static_cast<Index>(ids[size_t(t)]);
    std::vector<double> z(static_cast<size_t>(E), 0.0);
    std::vector<Index> open;
    for (Index e = 0; e < E; ++e) {
      for (Index j = 0; j < w.cols(); ++j) z[size_t(e)] += x(t, j) * w(e, j);
      if (modality_ref_open(table, m, e)) open.push_back(e);
    }
    const auto top = modality_ref_top_k(z, open, k);
    double sum = 0;
    for (Index e : top) sum += std::exp(z[size_t(e)] - z[size_t(top[0])]);
    for (Index e : top) g(t, e) = std::exp(z[size_t(e)] - z[size_t(top[0])]) / sum;
  }
  return g;
}

/// x W^T by loops.
RowMatrix<double> modality_ref_logits(const RowMatrix<double>& x, const RowMatrix<double>& w) {
  RowMatrix<double> z = RowMatrix<double>::Zero(x.rows(), w.rows());
  for (Index t = 0; t < x.rows(); ++t)
    for (Index e = 0; e < w.rows(); ++e)
      for (Index j = 0; j < x.cols(); ++j) z(t, e) += x(t, j) * w(e, j);
  return z;
}

/// ids[t] = t mod M for the first M tokens (every modality present), then uniform draws.
std::vector<std::int64_t> modality_ref_ids(Index T, Index M, std::mt19937& gen) {
  std::uniform_int_distribution<Index> pick(0, M - 1);
  std::vector<std::int64_t> ids(static_cast<size_t>(T));
  for (Index t = 0; t < T; ++t) ids[size_t(t)] = t < M ? t : pick(gen);
  return ids;
}

}  // namespace

TEST_CASE("modality router: gates are a softmax over the open logits alone, logits stay unmasked",
          "[router][modality]") {
  struct Config {
    std::vector<Index> table;
    Index M, k;
  };
  const std::vector<Config> configs = {
      {{0, 0, 1, 1, -1, -1}, 2, 2},           // contiguous groups, two cross-modal experts
      {{2, -1, 0, 1, 0, 2, 1, -1}, 3, 3},     // interleaved groups
      {{1, 0, 1, 0, 0, 1}, 2, 1},             // no cross-modal expert
      {{0, 1, 1, 2, 2, -1}, 3, 2},            // modality 0: its one expert and the shared one
      {{0, 1, 1, 1, 1}, 2, 1},                // modality 0 has exactly one open expert, k = 1
  };
  for (const auto& c : configs)
    for (const bool renorm : {true, false}) {
      const auto E = static_cast<Index>(c.table.size());
      INFO("E " << E << ", M " << c.M << ", k " << c.k << ", renormalise " << renorm);
      const RowMatrix<double> w = random_matrix(E, 7, 31 + static_cast<unsigned>(E));
      const RowMatrix<double> x = random_matrix(23, 7, 32);
      std::mt19937 gen(33);
      const auto ids = modality_ref_ids(23, c.M, gen);
      moe::ModalitySoftmaxTopKRouter<double> router(moe::SoftmaxTopKRouter<double>(w, c.k, {renorm}), c.table, c.M);
      moe::ForwardContext ctx;
      ctx.modality_ids = ids;
      moe::RoutingResult<double> out;
      router.route(x, out, ctx);
      REQUIRE(out.size() == 23 * c.k);
      REQUIRE(out.logits.allFinite());
      CHECK((out.logits - modality_ref_logits(x, w)).cwiseAbs().maxCoeff() < 1e-12);
      CHECK((out.dense_gates() - modality_ref_gates(x, w, c.table, ids, c.k, renorm)).cwiseAbs().maxCoeff() < 1e-14);
      // The scores are the masked softmax: exactly 0 outside the open set, a distribution inside.
      for (Index t = 0; t < 23; ++t) {
        double sum = 0;
        for (Index e = 0; e < E; ++e) {
          if (!modality_ref_open(c.table, ids[size_t(t)], e)) CHECK(out.scores(t, e) == 0.0);
          sum += out.scores(t, e);
        }
        CHECK(sum == Approx(1.0).epsilon(1e-14));
      }
    }
}

TEST_CASE("modality router with top-k-then-softmax gating: the k best open logits, softmax over them",
          "[router][modality]") {
  const std::vector<Index> table = {0, 1, -1, 0, 1, 1, 0};
  const RowMatrix<double> w = random_matrix(7, 5, 41), x = random_matrix(19, 5, 42);
  std::mt19937 gen(43);
  const auto ids = modality_ref_ids(19, 2, gen);
  for (const Index k : {Index{1}, Index{2}, Index{4}}) {
    moe::ModalityRouter<moe::TopKSoftmax<double>> router(moe::TopKSoftmaxRouter<double>(w, k), table, 2);
    moe::ForwardContext ctx;
    ctx.modality_ids = ids;
    moe::RoutingResult<double> out;
    router.route(x, out, ctx);
    CHECK((out.logits - modality_ref_logits(x, w)).cwiseAbs().maxCoeff() < 1e-12);
    CHECK((out.dense_gates() - modality_ref_topk_softmax(x, w, table, ids, k)).cwiseAbs().maxCoeff() < 1e-14);
  }
}

TEST_CASE("modality router properties: tokens stay in their modality's experts and the shared ones, and load() counts",
          "[router][modality][properties]") {
  std::mt19937 gen(2024);
  int configs = 0, with_shared = 0, without_shared = 0, single_open = 0;
  for (int trial = 0; trial < 60; ++trial) {
    std::uniform_int_distribution<Index> pick_E(2, 12), pick_M(1, 4);
    const Index E = pick_E(gen);
    const Index M = std::min(pick_M(gen), E);
    std::vector<Index> table(static_cast<size_t>(E));
    const int shape = trial % 3;  // 0: random with shared, 1: no shared, 2: one modality with a single open expert
    std::uniform_int_distribution<Index> owner(shape == 1 ? 0 : -1, M - 1);
    for (Index e = 0; e < E; ++e) table[size_t(e)] = e < M ? e : owner(gen);  // every modality owns one
    if (shape == 2) {
      // Modality 0 owns expert 0 only, and no expert is shared: k must be 1.
      for (Index e = 1; e < E; ++e)
        if (table[size_t(e)] <= 0) table[size_t(e)] = M > 1 ? 1 + (e % (M - 1)) : 0;
    }
    std::shuffle(table.begin(), table.end(), gen);
    Index min_open = E;
    for (Index m = 0; m < M; ++m) {
      Index n = 0;
      for (Index e = 0; e < E; ++e) n += modality_ref_open(table, m, e) ? 1 : 0;
      min_open = std::min(min_open, n);
    }
    std::uniform_int_distribution<Index> pick_k(1, min_open);
    const Index k = pick_k(gen);
    const bool has_shared = std::count(table.begin(), table.end(), Index{-1}) > 0;
    ++configs;
    with_shared += has_shared ? 1 : 0;
    without_shared += has_shared ? 0 : 1;
    single_open += min_open == 1 ? 1 : 0;

    const Index T = 1 + static_cast<Index>(gen() % 40), d = 1 + static_cast<Index>(gen() % 9);
    const RowMatrix<double> w = random_matrix<double>(E, d, gen), x = random_matrix<double>(T, d, gen);
    std::uniform_int_distribution<std::int64_t> pick_id(0, M - 1);
    std::vector<std::int64_t> ids(static_cast<size_t>(T));
    for (auto& id : ids) id = pick_id(gen);
    INFO("trial " << trial << ": E " << E << ", M " << M << ", k " << k << ", T " << T << ", d " << d);
    moe::ModalitySoftmaxTopKRouter<double> router(moe::SoftmaxTopKRouter<double>(w, k), table, M);
    CHECK(router.k() == k);
    CHECK(router.num_modalities() == M);
    CHECK(router.expert_modality() == table);
    for (Index m = 0; m < M; ++m) {
      Index n = 0;
      for (Index e = 0; e < E; ++e) {
        CHECK(router.allows(m, e) == modality_ref_open(table, m, e));
        n += modality_ref_open(table, m, e) ? 1 : 0;
      }
      CHECK(router.open_experts(m) == n);
    }
    moe::ForwardContext ctx;
    ctx.modality_ids = ids;
    moe::RoutingResult<double> out;
    router.route(x, out, ctx);
    REQUIRE(out.size() == T * k);
    for (Index t = 0; t < T; ++t) {
      std::vector<Index> chosen;
      double sum = 0;
      for (Index j = 0; j < k; ++j) {
        const auto i = size_t(t * k + j);
        CHECK(out.token[i] == t);
        const Index e = out.expert[i];
        REQUIRE(e >= 0);
        REQUIRE(e < E);
        const Index owner_of_e = table[size_t(e)];
        CHECK((owner_of_e == -1 || owner_of_e == ids[size_t(t)]));
        CHECK(out.gate[i] > 0);
        sum += out.gate[i];
        chosen.push_back(e);
      }
      std::sort(chosen.begin(), chosen.end());
      CHECK(std::adjacent_find(chosen.begin(), chosen.end()) == chosen.end());
      CHECK(sum == Approx(1.0).epsilon(1e-13));
    }
    CHECK((out.dense_gates() - modality_ref_gates(x, w, table, ids, k, true)).cwiseAbs().maxCoeff() < 1e-13);

    const moe::ModalityLoad load = router.load(out, ids);
    CHECK(load.num_modalities == M);
    CHECK(load.num_experts == E);
    std::vector<Index> tokens(static_cast<size_t>(M), 0), counts(static_cast<size_t>(M * E), 0);
    for (Index t = 0; t < T; ++t) {
      ++tokens[size_t(ids[size_t(t)])];
      for (Index j = 0; j < k; ++j) ++counts[size_t(ids[size_t(t)] * E + out.expert[size_t(t * k + j)])];
    }
    CHECK(load.tokens == tokens);
    CHECK(load.counts == counts);
    for (Index m = 0; m < M; ++m) {
      Index assigned = 0;
      for (Index e = 0; e < E; ++e) {
        CHECK(load.count(m, e) == counts[size_t(m * E + e)]);
        if (!modality_ref_open(table, m, e)) CHECK(load.count(m, e) == 0);
        assigned += load.count(m, e);
      }
      CHECK(assigned == k * tokens[size_t(m)]);
    }
  }
  // The draws covered each kind of table.
  CHECK(configs == 60);
  CHECK(with_shared > 0);
  CHECK(without_shared > 0);
  CHECK(single_open > 0);
}

TEST_CASE("modality router: a modality with one open expert and k = 1 always gets that expert, gate 1",
          "[router][modality]") {
  const std::vector<Index> table = {1, 1, 0, 1, 1};
  const RowMatrix<double> w = random_matrix(5, 4, 51), x = random_matrix(12, 4, 52);
  std::vector<std::int64_t> ids(12, 1);
  for (size_t t = 0; t < ids.size(); t += 3) ids[t] = 0;
  moe::ModalitySoftmaxTopKRouter<double> router(moe::SoftmaxTopKRouter<double>(w, 1), table, 2);
  CHECK(router.open_experts(0) == 1);
  moe::ForwardContext ctx;
  ctx.modality_ids = ids;
  moe::RoutingResult<double> out;
  router.route(x, out, ctx);
  for (Index t = 0; t < 12; ++t) {
    if (ids[size_t(t)] == 0) {
      CHECK(out.expert[size_t(t)] == 2);
      CHECK(out.gate[size_t(t)] == 1.0);
      CHECK(out.scores(t, 2) == 1.0);
    } else {
      CHECK(out.expert[size_t(t)] != 2);
    }
  }
}

TEST_CASE("modality router: a token whose allowed set is everything routes as the plain router",
          "[router][modality]") {
  // Every expert cross-modal (or M = 1 owning all): the mask is empty.
  const RowMatrix<double> w = random_matrix(6, 5, 61), x = random_matrix(17, 5, 62);
  const moe::SoftmaxTopKRouter<double> plain(w, 2);
  moe::RoutingResult<double> expected;
  plain.route(x, expected);
  for (const auto& table : {std::vector<Index>(6, -1), std::vector<Index>{0, -1, 0, 0, -1, 0}}) {
    moe::ModalitySoftmaxTopKRouter<double> router(plain, table, 1);
    const std::vector<std::int64_t> ids(17, 0);
    moe::ForwardContext ctx;
    ctx.modality_ids = ids;
    moe::RoutingResult<double> out;
    router.route(x, out, ctx);
    CHECK(out.expert == expected.expert);
    CHECK((out.dense_gates() - expected.dense_gates()).cwiseAbs().maxCoeff() < 1e-15);
  }
}

TEST_CASE("modality router refuses bad tables and modality ids with clear messages", "[router][modality][errors]") {
  const RowMatrix<double> w = random_matrix(4, 3, 71);
  const auto make = [&](std::vector<Index> table, Index M, Index k = 2) {
    return moe::ModalitySoftmaxTopKRouter<double>(moe::SoftmaxTopKRouter<double>(w, k), std::move(table), M);
  };
  SECTION("table length") {
    moe::test::require_invalid([&] { (void)make({0, 1, -1}, 2); },
                             {"ModalityRouter::ModalityRouter()", "expert_modality length (one entry per expert)",
                              "expected 4, got 3"});
    moe::test::require_invalid([&] { (void)make({0, 1, -1, 0, 1}, 2); }, {"expected 4, got 5"});
    moe::test::require_invalid(
        [&] { (void)moe::ModalitySoftmaxTopKRouter<double>(4, 3, 1, std::vector<Index>{0, 1}, 2); },
        {"expert_modality length", "expected 4, got 2"});
  }
  SECTION("entries outside [-1, M)") {
    moe::test::require_invalid([&] { (void)make({0, 1, -2, 1}, 2); },
                             {"ModalityRouter::ModalityRouter()", "expert_modality[2]",
                              "expected -1 (cross-modal) or a modality in [0, 2)", "got -2"});
    moe::test::require_invalid([&] { (void)make({0, 1, 2, 1}, 2); }, {"expert_modality[2]", "got 2"});
  }
  SECTION("num_modalities") {
    moe::test::require_invalid([&] { (void)make({-1, -1, -1, -1}, 0); }, {"num_modalities expected >= 1, got 0"});
  }
  SECTION("a modality with fewer than k open experts") {
    // Modality 1: expert 3 and the shared expert 2, fewer than k = 3.
    moe::test::require_invalid([&] { (void)make({0, 0, -1, 1}, 2, 3); },
                             {"ModalityRouter::ModalityRouter()", "experts open to modality 1",
                              "expected >= k = 3, got 2"});
    // Modality 2 owns nothing and nothing is shared.
    moe::test::require_invalid([&] { (void)make({0, 0, 1, 1}, 3, 1); },
                             {"experts open to modality 2", "expected >= k = 1, got 0"});
    CHECK_NOTHROW(make({0, 0, -1, 1}, 2, 2));
  }
  SECTION("check_shapes() after the weight was resized through its accessor") {
    auto router = make({0, 0, 1, -1}, 2);
    CHECK_NOTHROW(router.check_shapes());
    router.weight() = random_matrix(5, 3, 72);
    moe::test::require_invalid([&] { router.check_shapes(); },
                             {"ModalityRouter::check_shapes()", "expert_modality length", "expected 5, got 4"});
  }
  SECTION("modality_ids of route() and load()") {
    const auto router = make({0, 0, 1, -1}, 2);
    const RowMatrix<double> x = random_matrix(5, 3, 73);
    moe::RoutingResult<double> out;
    moe::ForwardContext ctx;
    moe::test::require_invalid([&] { router.route(x, out, ctx); },
                             {"ModalityRouter::route()", "modality_ids length (one per token)", "expected 5, got 0"});
    const std::vector<std::int64_t> short_ids = {0, 1, 0, 1};
    ctx.modality_ids = short_ids;
    moe::test::require_invalid([&] { router.route(x, out, ctx); }, {"modality_ids length", "expected 5, got 4"});
    const std::vector<std::int64_t> high = {0, 1, 2, 1, 0};
    ctx.modality_ids = high;
    moe::test::require_invalid([&] { router.route(x, out, ctx); },
                             {"ModalityRouter::route()", "modality_ids[2]", "expected in [0, num_modalities = 2)",
                              "got 2"});
    const std::vector<std::int64_t> negative = {0, 1, 0, 1, -1};
    ctx.modality_ids = negative;
    moe::test::require_invalid([&] { router.route(x, out, ctx); }, {"modality_ids[4]", "got -1"});
    const std::vector<std::int64_t> good = {0, 1, 0, 1, 1};
    ctx.modality_ids = good;
    router.route(x, out, ctx);
    moe::test::require_invalid([&] { (void)router.load(out, short_ids); },
                             {"ModalityRouter::load()", "modality_ids length", "expected 5, got 4"});
    moe::test::require_invalid([&] { (void)router.load(out, high); }, {"ModalityRouter::load()", "modality_ids[2]"});
    CHECK_NOTHROW(router.load(out, good));
  }
  SECTION("x of the wrong width") {
    const auto router = make({0, 0, 1, -1}, 2);
    const RowMatrix<double> x = random_matrix(2, 4, 74);
    const std::vector<std::int64_t> ids = {0, 1};
    moe::ForwardContext ctx;
    ctx.modality_ids = ids;
    moe::RoutingResult<double> out;
    moe::test::require_invalid([&] { router.route(x, out, ctx); }, {"x columns (input_dim)", "expected 3, got 4"});
  }
}

// Group-limited selection (DeepSeek-V3) masks whole groups and picks among the kept ones by
// sigmoid score plus a correction bias. A masked expert's sigmoid is sigmoid(-inf) = 0, and its
// biased score is its correction bias, which is finite: when a kept group has fewer than k
// open experts, or a masked expert's bias outranks the open ones, the rule selects a masked
// expert. The router must refuse that routing, naming the token and the expert.
TEST_CASE("modality router with group-limited gating throws when the rule selects a masked expert",
          "[router][modality][errors]") {
  using Router = moe::ModalityRouter<moe::SigmoidGroupLimited<double>>;
  const RowMatrix<double> w = random_matrix(4, 3, 81), x = random_matrix(6, 3, 82);
  moe::SigmoidGroupLimited<double> g;
  g.n_group = 2;  // groups {0, 1} and {2, 3}
  g.topk_group = 1;
  SECTION("a kept group with fewer than k open experts") {
    // Each group holds one expert of each modality: whichever group is kept, it has one open
    // expert for k = 2, so the second pick is masked.
    Router router(moe::GroupLimitedRouter<double>(w, 2, g), {0, 1, 0, 1}, 2);
    const std::vector<std::int64_t> ids = {1, 0, 1, 0, 0, 1};
    moe::ForwardContext ctx;
    ctx.modality_ids = ids;
    moe::RoutingResult<double> out;
    moe::test::require_invalid([&] { router.route(x, out, ctx); },
                             {"ModalityRouter::route()", "the expert the gating rule chose for token 0 (modality 1)",
                              "expected one open to modality 1 or cross-modal", "of modality 0",
                              "use softmax or top-k softmax gating"});
  }
  SECTION("a masked group whose correction bias outranks the open one") {
    g.correction_bias = moe::Vector<double>(4);
    g.correction_bias << 0.0, 0.0, 5.0, 5.0;
    Router router(moe::GroupLimitedRouter<double>(w, 1, g), {0, 0, 1, 1}, 2);
    // Modality 1 tokens keep group {2, 3} (their own): allowed. Modality 0 tokens see their
    // group score below the masked group's 10, so the rule picks expert 2 or 3.
    const std::vector<std::int64_t> ones(6, 1);
    moe::ForwardContext ctx;
    ctx.modality_ids = ones;
    moe::RoutingResult<double> out;
    router.route(x, out, ctx);
    for (const Index e : out.expert) CHECK(e >= 2);
    const std::vector<std::int64_t> ids = {1, 1, 1, 0, 1, 1};
    ctx.modality_ids = ids;
    moe::test::require_invalid([&] { router.route(x, out, ctx); },
                             {"the expert the gating rule chose for token 3 (modality 0)", "of modality 1"});
  }
  SECTION("without bias and with every kept group holding k open experts, it routes within the mask") {
    // Contiguous groups equal to the modalities: a masked group scores 0 (two sigmoids of -inf)
    // and the open group scores above 0, so the open group is kept.
    Router router(moe::GroupLimitedRouter<double>(w, 2, g), {0, 0, 1, 1}, 2);
    const std::vector<std::int64_t> ids = {0, 1, 1, 0, 1, 0};
    moe::ForwardContext ctx;
    ctx.modality_ids = ids;
    moe::RoutingResult<double> out;
    router.route(x, out, ctx);
    for (size_t i = 0; i < out.expert.size(); ++i)
      CHECK(out.expert[i] / 2 == ids[size_t(out.token[i])]);
    // The gates are the renormalised sigmoids of the two open experts.
    for (Index t = 0; t < 6; ++t) {
      const Index a = 2 * ids[size_t(t)], b = a + 1;
      double za = 0, zb = 0;
      for (Index j = 0; j < 3; ++j) {
        za += x(t, j) * w(a, j);
        zb += x(t, j) * w(b, j);
      }
      const double sa = 1 / (1 + std::exp(-za)), sb = 1 / (1 + std::exp(-zb));
      CHECK(out.dense_gates()(t, a) == Approx(sa / (sa + sb)).epsilon(1e-13));
      CHECK(out.dense_gates()(t, b) == Approx(sb / (sa + sb)).epsilon(1e-13));
    }
  }
}

// A softmax probability can underflow to exactly 0 (an open logit ~750 below the token's best
// in double, ~105 in float). It then ties with the masked experts' probability 0, and top-k
// breaks ties by the lower index: the slot must still go to an open expert (its gate is 0
// either way), not to a masked one, and softmax gating must not be refused.
TEST_CASE("modality router: an open expert whose probability underflows to 0 still outranks the masked ones",
          "[router][modality]") {
  // d = 1, x = 1: logits are the weights. Modality 0 opens experts 1 and 2, modality 1 opens 0
  // and 3; token 0 (modality 0) has p = (1, 0) on its experts, and 0 on the masked 0 and 3.
  const std::vector<Index> table = {1, 0, 0, 1};
  const std::vector<std::int64_t> ids = {0, 1};
  SECTION("double") {
    RowMatrix<double> w(4, 1);
    w << 0.0, 0.0, -1000.0, 0.5;
    const RowMatrix<double> x = RowMatrix<double>::Ones(2, 1);
    for (const bool renorm : {true, false}) {
      moe::ModalitySoftmaxTopKRouter<double> router(moe::SoftmaxTopKRouter<double>(w, 2, {renorm}), table, 2);
      moe::ForwardContext ctx;
      ctx.modality_ids = ids;
      moe::RoutingResult<double> out;
      REQUIRE_NOTHROW(router.route(x, out, ctx));
      CHECK(out.expert[0] == 1);
      CHECK(out.expert[1] == 2);
      CHECK(out.gate[0] == 1.0);
      CHECK(out.gate[1] == 0.0);
      const moe::ModalityLoad load = router.load(out, ids);
      CHECK(load.count(0, 0) == 0);
      CHECK(load.count(0, 1) == 1);
      CHECK(load.count(0, 2) == 1);
    }
  }
  SECTION("float") {
    RowMatrix<float> w(4, 1);
    w << 0.0f, 0.0f, -200.0f, 0.5f;
    const RowMatrix<float> x = RowMatrix<float>::Ones(2, 1);
    moe::ModalitySoftmaxTopKRouter<float> router(moe::SoftmaxTopKRouter<float>(w, 2), table, 2);
    moe::ForwardContext ctx;
    ctx.modality_ids = ids;
    moe::RoutingResult<float> out;
    REQUIRE_NOTHROW(router.route(x, out, ctx));
    CHECK(out.expert[0] == 1);
    CHECK(out.expert[1] == 2);
  }
}

TEST_CASE("modality router: load() refuses a routing of another number of experts", "[router][modality][errors]") {
  const auto router = moe::ModalitySoftmaxTopKRouter<double>(
      moe::SoftmaxTopKRouter<double>(random_matrix(4, 3, 91), 1), std::vector<Index>{0, 1, -1, 0}, 2);
  const moe::SoftmaxTopKRouter<double> wider(random_matrix(6, 3, 92), 1);
  moe::RoutingResult<double> out;
  wider.route(random_matrix(5, 3, 93), out);
  const std::vector<std::int64_t> ids = {0, 1, 0, 1, 1};
  moe::test::require_invalid([&] { (void)router.load(out, ids); },
                           {"ModalityRouter::load()", "the routing's num_experts", "expected 4, got 6"});
}

TEST_CASE("modality router routes an empty batch", "[router][modality]") {
  const moe::ModalitySoftmaxTopKRouter<double> router(moe::SoftmaxTopKRouter<double>(random_matrix(4, 3, 95), 2),
                                                      std::vector<Index>{0, 1, -1, 0}, 2);
  const RowMatrix<double> x(0, 3);
  moe::RoutingResult<double> out;
  router.route(x, out, {});
  CHECK(out.size() == 0);
  CHECK(out.logits.rows() == 0);
  const moe::ModalityLoad load = router.load(out, {});
  CHECK(load.tokens == std::vector<Index>{0, 0});
  CHECK(load.counts == std::vector<Index>(8, 0));
}

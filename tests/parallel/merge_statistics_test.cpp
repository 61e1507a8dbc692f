// merge_statistics: per-rank statistics of a split batch merge into the whole batch's.
#include <moe/layer/moe_layer.hpp>
#include <moe/parallel/merge_statistics.hpp>

#include <catch2/catch.hpp>
#include <support/random.hpp>

#include <vector>

using moe::Index;

TEST_CASE("merged statistics of a batch's parts equal the whole batch's", "[parallel][statistics]") {
  const Index E = 6, d = 8, ff = 10;
  moe::MixtralMoE<double> layer(moe::test::swiglu<double>(E, d, ff, 3),
                                moe::SoftmaxTopKRouter<double>(moe::test::random_matrix(E, d, 4), 2, moe::SoftmaxTopK<double>{true}));
  const moe::RowMatrix<double> x = moe::test::random_matrix(40, d, 5);
  moe::Workspace<double> ws;
  (void)layer.forward(x, ws);
  const moe::LayerStatistics whole = ws.stats;
  // Parts of 13, 0 and 27 tokens (a rank with none).
  std::vector<moe::LayerStatistics> parts;
  for (const auto& [begin, rows] : std::vector<std::pair<Index, Index>>{{0, 13}, {13, 0}, {13, 27}}) {
    (void)layer.forward(x.middleRows(begin, rows), ws);
    parts.push_back(ws.stats);
  }
  const moe::LayerStatistics merged = moe::parallel::merge_statistics(parts);
  CHECK(merged.tokens == whole.tokens);
  CHECK(merged.assignments == whole.assignments);
  CHECK(merged.dropped == whole.dropped);
  CHECK(merged.rerouted == whole.rerouted);
  CHECK(merged.expert_load == whole.expert_load);
  CHECK(merged.experts_per_token == whole.experts_per_token);
}

TEST_CASE("merged statistics sum drops and histograms and refuse parts of other E", "[parallel][statistics][errors]") {
  moe::LayerStatistics a, b;
  a.tokens = 3, a.assignments = 6, a.dropped = 1, a.expert_load = {2, 3}, a.experts_per_token = {0, 1, 2};
  b.tokens = 2, b.assignments = 4, b.dropped = 2, b.rerouted = 1, b.expert_load = {1, 1}, b.experts_per_token = {1, 0, 1};
  const std::vector<moe::LayerStatistics> parts{a, b};
  const moe::LayerStatistics m = moe::parallel::merge_statistics(parts);
  CHECK(m.tokens == 5);
  CHECK(m.assignments == 10);
  CHECK(m.dropped == 3);
  CHECK(m.rerouted == 1);
  CHECK(m.expert_load == std::vector<Index>{3, 4});
  CHECK(m.experts_per_token == std::vector<Index>{1, 1, 3});
  b.expert_load = {1, 1, 1};
  const std::vector<moe::LayerStatistics> bad{a, b};
  REQUIRE_THROWS_WITH(moe::parallel::merge_statistics(bad),
                      "moe::parallel::merge_statistics(): expert_load length of part 0 expected 3, got 2");
}

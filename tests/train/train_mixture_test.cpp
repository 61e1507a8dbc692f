// A short seeded run of examples/train_mixture: the MoE must fit the mixture of local experts
// well (a loss below a fifth of the targets' variance), beat the dense model of the same
// active FLOPs, and the aux loss must rebalance a collapsed router that stays collapsed without it.
#include <catch2/catch.hpp>

#include "../../examples/train_mixture.hpp"

namespace mx = moe::examples::mixture;

TEST_CASE("training the mixture of local experts: MoE beats dense, aux loss rebalances", "[train][mixture]") {
  mx::Config cfg;
  cfg.steps = 400;
  const auto task = mx::make_task<float>(cfg);
  // The bar comes from the data: the MSE of predicting each output's mean.
  const moe::RowMatrix<double> y = task.y_eval.cast<double>();
  const double variance = (y.rowwise() - y.colwise().mean()).array().square().mean();
  REQUIRE(variance > 0.05);

  const auto rows = mx::train<float>(cfg, task);
  REQUIRE(rows.size() == static_cast<std::size_t>(cfg.steps / (cfg.train_tokens / cfg.batch) + 1));
  const auto& first = rows.front();
  const auto& last = rows.back();
  INFO("moe " << last.moe.loss << ", dense " << last.dense.loss << ", variance " << variance);
  REQUIRE(last.moe.loss < 0.2 * variance);
  REQUIRE(last.moe.loss < last.dense.loss);
  REQUIRE(last.moe.loss < first.moe.loss);
  // Collapsed start: every eval token on expert 0 (cv = sqrt(E - 1)).
  REQUIRE(first.collapsed_aux.load_cv == Approx(std::sqrt(double(cfg.clusters - 1))));
  INFO("collapsed: with aux cv " << last.collapsed_aux.load_cv << ", without " << last.collapsed_no_aux.load_cv);
  REQUIRE(last.collapsed_aux.load_cv < 0.5);
  REQUIRE(last.collapsed_no_aux.load_cv > 1.5);
  // The same seed gives the same run.
  const auto again = mx::train<float>(cfg, task);
  REQUIRE(again.back().moe.loss == last.moe.loss);
}

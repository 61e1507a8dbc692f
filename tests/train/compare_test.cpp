// moe-compare's training harness (examples/compare/): the model's backward against finite
// differences on both tasks, and the metrics against their definitions. The whole program's
// --quick comparison is checked by scripts/check_compare.py (ctest example.moe_compare.quick).
#include <catch2/catch.hpp>

#include "../../examples/compare/model.hpp"
#include "../../examples/compare/report.hpp"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace cmp = moe::examples::compare;

namespace compare_test {

/// The dense block (one SwiGLU expert, gate 1): smooth in every weight, so finite differences
/// see the trunk and the block's dL/dx without routing switches.
cmp::Policy dense_policy() {
  return {"dense", "one expert", [](const cmp::BlockConfig& c) -> std::unique_ptr<cmp::Block> {
            return std::make_unique<cmp::LayerBlock<moe::MixtralMoE<float>>>(
                moe::MixtralMoE<float>(cmp::make_experts(c, c.d, c.d_ff, 1),
                                       moe::SoftmaxTopKRouter<float>(cmp::make_router_weight(c, c.d, 1), 1)),
                moe::LossWeights<float>{}, c.lr, cmp::swiglu_flops(c.d, c.d_ff));
          }};
}

std::string write_text() {
  const auto path = std::filesystem::temp_directory_path() / "moe_compare_test_corpus.txt";
  std::ofstream out(path);
  for (int i = 0; i < 60; ++i) out << "the quick brown fox " << i << " jumps over the lazy dog; ";
  return path.string();
}

/// Checks every trunk tensor's gradient along a random direction against the central
/// difference of the loss (float; Richardson over eps 1e-2 and 5e-3, so truncation is
/// O(eps^4) and float rounding, ~4e-7 x loss / eps, dominates).
void check_trunk_gradients(const cmp::Task& task, moe::Index layers) {
  cmp::BlockConfig bc;
  bc.d = task.kind == cmp::TaskKind::text ? 12 : 8;
  bc.d_ff = 6;
  bc.experts = 1;
  bc.top_k = 1;
  bc.sequence_length = 8;
  bc.seed = 3;
  cmp::ModelConfig mc;
  mc.layers = layers;
  mc.embed = 3;
  cmp::Model model(task, dense_policy(), bc, mc);
  std::vector<moe::Index> rows(16);
  for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<moe::Index>(i * 7 % std::size_t(task.train_count()));
  cmp::Batch b;
  task.fill(b, rows, false);
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  const double loss0 = model.forward(b, ctx);
  REQUIRE(std::isfinite(loss0));
  model.backward(b);
  const cmp::Trunk grads = model.trunk_gradients();

  std::vector<moe::RowMatrix<float>*> params;
  std::vector<std::string> names;
  model.trunk().for_each_parameter([&](const std::string& n, moe::RowMatrix<float>& p) {
    params.push_back(&p);
    names.push_back(n);
  });
  std::vector<const moe::RowMatrix<float>*> gs;
  grads.for_each_parameter([&](const std::string&, const moe::RowMatrix<float>& g) { gs.push_back(&g); });
  REQUIRE(gs.size() == params.size());
  const moe::CounterRng rng(11, 0);
  for (std::size_t i = 0; i < params.size(); ++i) {
    moe::RowMatrix<float>& p = *params[i];
    moe::RowMatrix<float> dir(p.rows(), p.cols());
    for (moe::Index r = 0; r < p.rows(); ++r)
      for (moe::Index c = 0; c < p.cols(); ++c)
        dir(r, c) = static_cast<float>(rng.normal(i * 1000 + static_cast<std::uint64_t>(r), static_cast<std::uint64_t>(c)));
    const double analytic = (gs[i]->cast<double>().array() * dir.cast<double>().array()).sum();
    const moe::RowMatrix<float> saved = p;
    moe::ForwardContext inference;
    const auto central = [&](float eps) {
      p = saved + eps * dir;
      const double up = model.forward(b, inference);
      p = saved - eps * dir;
      const double down = model.forward(b, inference);
      p = saved;
      return (up - down) / (2.0 * double(eps));
    };
    // Richardson: the eps^2 terms of two central differences cancel.
    const double numeric = (4.0 * central(5e-3f) - central(1e-2f)) / 3.0;
    INFO(names[i] << ": analytic " << analytic << ", numeric " << numeric);
    CHECK(std::abs(analytic - numeric) <= 2e-4 * std::max(1.0, std::abs(numeric)));
  }
}

}  // namespace compare_test

TEST_CASE("compare model: trunk gradients match finite differences, text task", "[train][compare]") {
  const cmp::Task task = cmp::load_text(compare_test::write_text(), 4);
  REQUIRE(task.vocab() > 10);
  for (moe::Index layers : {1, 2}) compare_test::check_trunk_gradients(task, layers);
}

TEST_CASE("compare model: trunk gradients match finite differences, synthetic task", "[train][compare]") {
  const cmp::Task task = cmp::make_synthetic(3, 4, 64, 32, 5);
  for (moe::Index layers : {1, 2}) compare_test::check_trunk_gradients(task, layers);
}

TEST_CASE("compare text task: windows, targets and held-out tail", "[train][compare]") {
  const cmp::Task task = cmp::load_text(compare_test::write_text(), 4);
  const auto n = static_cast<moe::Index>(task.chars.size());
  REQUIRE(task.split == static_cast<moe::Index>(double(n) * 0.9));
  cmp::Batch b;
  const std::vector<moe::Index> rows = {0, 5};
  task.fill(b, rows, true);
  // Held-out row r: window chars[split + r .. split + r + 4), target the byte after it.
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const auto p = static_cast<std::size_t>(task.split + rows[i]);
    for (std::size_t c = 0; c < 4; ++c) CHECK(b.window[i * 4 + c] == task.chars[p + c]);
    CHECK(b.next[i] == task.chars[p + 4]);
    CHECK(b.label[i] == task.chars[p + 3]);
    CHECK(b.token_ids[i] == task.chars[p + 3]);
  }
  CHECK(task.alphabet[static_cast<std::size_t>(task.chars[0])] == 't');
  CHECK_THROWS_WITH(cmp::load_text("/nonexistent/moe-corpus", 4), Catch::Contains("does not exist"));
}

TEST_CASE("compare metrics: normalised mutual information", "[train][compare]") {
  // Each class on its own expert: NMI 1, whatever the labels.
  CHECK(cmp::normalised_mutual_information({0, 0, 1, 1, 2, 2}, {2, 2, 0, 0, 1, 1}, 3, 3) == Approx(1.0));
  // Every class spread evenly over both experts: I = 0.
  CHECK(cmp::normalised_mutual_information({0, 0, 1, 1}, {0, 1, 0, 1}, 2, 2) == Approx(0.0).margin(1e-12));
  // Classes {0,0,1,1} on experts {0,0,0,1}: H(C) = ln 2, H(E) = H(3/4), I = H(E) - H(E|C) =
  // H(3/4) - (1/2) ln 2; NMI = 2 I / (H(C) + H(E)).
  const double hc = std::log(2.0), he = -(0.75 * std::log(0.75) + 0.25 * std::log(0.25));
  const double mi = he - 0.5 * std::log(2.0);
  CHECK(cmp::normalised_mutual_information({0, 0, 1, 1}, {0, 0, 0, 1}, 2, 2) == Approx(2 * mi / (hc + he)));
  // Units no expert processed (-1) are left out.
  CHECK(cmp::normalised_mutual_information({0, 0, 1, 1, 1}, {0, 0, 1, 1, -1}, 2, 2) == Approx(1.0));
  CHECK(cmp::normalised_mutual_information({0, 1}, {-1, -1}, 2, 2) == 0.0);
}

TEST_CASE("compare metrics: load balance and the verdict against a baseline", "[train][compare]") {
  auto [cv, mm] = cmp::load_balance({5, 5, 5, 5});
  CHECK(cv == 0.0);
  CHECK(mm == 1.0);
  std::tie(cv, mm) = cmp::load_balance({8, 0, 0, 0});
  CHECK(cv == Approx(std::sqrt(3.0)));  // one expert of E: sqrt(E - 1)
  CHECK(mm == Approx(4.0));
  // Two standard errors: sqrt(0.1^2/3 + 0.1^2/3) = 0.0816.
  CHECK(cmp::versus({1.0, 0.1, 3}, {1.2, 0.1, 3}) == "better");
  CHECK(cmp::versus({1.2, 0.1, 3}, {1.0, 0.1, 3}) == "worse");
  CHECK(cmp::versus({1.0, 0.1, 3}, {1.1, 0.1, 3}) == "within noise");
  CHECK(cmp::versus({1.0, 0.0, 1}, {2.0, 0.0, 1}).empty());
}

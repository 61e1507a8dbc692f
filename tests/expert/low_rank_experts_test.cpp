// Low-rank (LoRA) experts: forward against y = scale * (x A_e^T) B_e^T written as loops,
// sizes and checks, and backward against central finite differences (double).
#include <moe/expert/low_rank_experts.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "support/errors.hpp"
#include "support/gradient_check.hpp"
#include "support/random.hpp"

using moe::Index;
using moe::RowMatrix;

TEST_CASE("LowRankExperts: y = scale * (x A_e^T) B_e^T for the chosen expert, as loops", "[expert][low_rank]") {
  const Index E = 3, d = 7, r = 2, n = 5;
  moe::LowRankExperts<double> bank(E, d, r, 0.75);
  moe::test::fill(bank.a(), 1);
  moe::test::fill(bank.b(), 2);
  REQUIRE(bank.hidden_cols() == r);
  REQUIRE(bank.output_dim() == d);
  RowMatrix<double> x(n, d);
  moe::test::fill(x, 3);
  for (Index e = 0; e < E; ++e) {
    RowMatrix<double> hidden(n, r), y(n, d);
    bank.forward(e, x, hidden, y);
    for (Index t = 0; t < n; ++t)
      for (Index o = 0; o < d; ++o) {
        double want = 0;
        for (Index j = 0; j < r; ++j) {
          double h = 0;
          for (Index i = 0; i < d; ++i) h += x(t, i) * bank.a()(e * r + j, i);
          CHECK(hidden(t, j) == Approx(h).epsilon(1e-13));
          want += h * bank.b()(e * d + o, j);
        }
        CHECK(y(t, o) == Approx(0.75 * want).epsilon(1e-13));
      }
  }
}

TEST_CASE("LowRankExperts with another output width, and its factors by expert", "[expert][low_rank]") {
  moe::LowRankExperts<float> bank(2, 6, 3, 2.0f, 4);
  REQUIRE(bank.output_dim() == 4);
  REQUIRE(bank.a().rows() == 2 * 3);
  REQUIRE(bank.b().rows() == 2 * 4);
  bank.lora_b(1)(2, 0) = 5.0f;
  CHECK(bank.b()(4 + 2, 0) == 5.0f);
  Index count = 0;
  bank.for_each_parameter([&](const std::string& name, const auto& block) {
    if (count == 2) CHECK(name == "experts.1.lora_A.weight");
    if (count == 3) {
      CHECK(name == "experts.1.lora_B.weight");
      CHECK(block.rows() == 4);
      CHECK(block.cols() == 3);
    }
    ++count;
  });
  CHECK(count == 4);
}

TEST_CASE("LowRankExperts names what it refuses", "[expert][low_rank][errors]") {
  moe::test::require_invalid([] { moe::LowRankExperts<float>(2, 6, 0); },
                             {"LowRankExperts::LowRankExperts(): rank expected >= 1, got 0"});
  moe::test::require_invalid([] { moe::LowRankExperts<float>(0, 6, 2); },
                             {"LowRankExperts::LowRankExperts(): num_experts expected >= 1, got 0"});
  moe::test::require_invalid([] { moe::LowRankExperts<float>(2, 6, 2, std::numeric_limits<float>::infinity()); },
                             {"LowRankExperts::LowRankExperts(): scale expected finite, got inf"});
  moe::LowRankExperts<float> bank(2, 6, 2);
  moe::test::require_invalid([&] { (void)bank.lora_a(2); },
                             {"LowRankExperts::lora_a(): expert index expected in [0, 2), got 2"});
  bank.a().resize(3, 6);
  moe::test::require_invalid([&] { bank.check_shapes(); },
                             {"LowRankExperts::check_shapes(): a() expected shape [4, 6], got [3, 6]"});
}

TEST_CASE("LowRankExperts backward matches finite differences", "[expert][low_rank][backward]") {
  for (const double scale : {1.0, 0.25}) {
    INFO("scale " << scale);
    moe::LowRankExperts<double> bank(3, 6, 2, scale);
    moe::test::fill(bank.a(), 4);
    moe::test::fill(bank.b(), 5);
    moe::test::check_expert_backward(bank, 0);
    moe::test::check_expert_backward(bank, 2);
  }
  moe::LowRankExperts<double> wide(2, 5, 3, 0.5, 7);  // d_out != d_in
  moe::test::fill(wide.a(), 6);
  moe::test::fill(wide.b(), 7);
  moe::test::check_expert_backward(wide, 1);
}

// GPT-OSS experts against a scalar reference written from their definition.
#include <moe/expert/gpt_oss_experts.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "support/random.hpp"
#include "support/reference_moe.hpp"

using moe::Index;
using moe::RowMatrix;

TEST_CASE("GPT-OSS experts: interleaved gate/up, clamps, biases", "[expert]") {
  using moe::test::fill;
  moe::GptOssExperts<double> bank(2, 6, 5);
  // Large weights so that both clamps are active for some units.
  fill(bank.gate_up(), 9, 4.0);
  fill(bank.gate_up_bias(), 10);
  fill(bank.down(), 11);
  fill(bank.down_bias(), 12);
  RowMatrix<double> x(6, 6);
  fill(x, 13);
  int clamped = 0;
  for (Index e = 0; e < 2; ++e) {
    RowMatrix<double> hidden(6, bank.hidden_cols()), y(6, 6);
    bank.forward(e, x, hidden, y);
    for (Index t = 0; t < 6; ++t) {
      std::vector<double> a(5);
      for (Index j = 0; j < 5; ++j) {
        double g = bank.gate_up_bias()(e, 2 * j), u = bank.gate_up_bias()(e, 2 * j + 1);
        for (Index i = 0; i < 6; ++i) {
          g += x(t, i) * bank.gate_up(e)(i, 2 * j);
          u += x(t, i) * bank.gate_up(e)(i, 2 * j + 1);
        }
        clamped += (g > 7.0) + (std::abs(u) > 7.0);
        g = std::min(g, 7.0);
        u = std::clamp(u, -7.0, 7.0);
        a[std::size_t(j)] = (u + 1.0) * g * moe::test::ref_sigmoid(1.702 * g);
      }
      for (Index o = 0; o < 6; ++o) {
        double s = bank.down_bias()(e, o);
        for (Index j = 0; j < 5; ++j) s += a[std::size_t(j)] * bank.down(e)(j, o);
        REQUIRE(std::abs(y(t, o) - s) < 1e-12);
      }
    }
  }
  REQUIRE(clamped > 0);  // the case exercises the clamps
}

TEST_CASE("GPT-OSS experts reject empty sizes", "[expert][errors]") {
  REQUIRE_THROWS_WITH(moe::GptOssExperts<float>(2, 4, 0), "GptOssExperts::GptOssExperts(): d_ff expected >= 1, got 0");
}

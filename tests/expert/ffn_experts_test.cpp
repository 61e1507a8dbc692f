// FFN experts against a scalar reference written from their definition.
#include <moe/expert/ffn_experts.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>

#include "support/random.hpp"
#include "support/reference_moe.hpp"

using moe::Index;
using moe::RowMatrix;

TEST_CASE("FFN experts apply each activation between the two projections", "[expert]") {
  using moe::test::fill;
  const auto check = [](auto bank, double (*act)(double)) {
    fill(bank.wi(), 4);
    fill(bank.wo(), 5);
    bank.enable_biases();
    fill(bank.bi(), 6);
    fill(bank.bo(), 7);
    RowMatrix<double> x(4, 9);
    fill(x, 8);
    for (Index e = 0; e < bank.num_experts(); ++e) {
      RowMatrix<double> hidden(4, bank.hidden_cols()), y(4, 9);
      bank.forward(e, x, hidden, y);
      for (Index t = 0; t < 4; ++t)
        for (Index o = 0; o < 9; ++o) {
          double s = bank.bo()(e, o);
          for (Index i = 0; i < bank.d_ff(); ++i) {
            double pre = bank.bi()(e, i);
            for (Index j = 0; j < 9; ++j) pre += bank.wi(e)(i, j) * x(t, j);
            s += bank.wo(e)(o, i) * act(pre);
          }
          REQUIRE(std::abs(y(t, o) - s) < 1e-12);
        }
    }
  };
  check(moe::FFNExperts<double, moe::Activation::relu>(2, 9, 6), [](double v) { return std::max(v, 0.0); });
  check(moe::FFNExperts<double, moe::Activation::gelu_erf>(2, 9, 6), moe::test::ref_gelu_erf);
  check(moe::FFNExperts<double, moe::Activation::gelu_tanh>(2, 9, 6), moe::test::ref_gelu_tanh);
  check(moe::FFNExperts<double, moe::Activation::silu>(2, 9, 6), moe::test::ref_silu);
}

TEST_CASE("FFN experts reject empty sizes", "[expert][errors]") {
  REQUIRE_THROWS_WITH((moe::FFNExperts<float, moe::Activation::relu>(2, 0, 4)),
                      "FFNExperts::FFNExperts(): d_model expected >= 1, got 0");
}

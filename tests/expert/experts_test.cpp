// Expert banks against scalar references written from their definitions.
#include <moe/layer/moe_layer.hpp>
#include <moe/expert/ffn_experts.hpp>
#include <moe/expert/gpt_oss_experts.hpp>
#include <moe/expert/swiglu_experts.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <random>

#include "support/reference_moe.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;

template <class M>
void fill(M& m, unsigned seed, double scale = 1.0) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> n(0.0, scale);
  for (Index r = 0; r < m.rows(); ++r)
    for (Index c = 0; c < m.cols(); ++c) m(r, c) = n(gen);
}

}  // namespace

TEST_CASE("SwiGLU experts match silu(x Wg^T) * (x Wu^T) Wd^T per expert", "[expert]") {
  moe::SwiGLUExperts<double> bank(3, 11, 7);
  fill(bank.gate_up(), 1);
  fill(bank.down(), 2);
  RowMatrix<double> x(5, 11);
  fill(x, 3);
  for (Index e = 0; e < 3; ++e) {
    RowMatrix<double> hidden(5, bank.hidden_cols()), y(5, 11);
    bank.forward(e, x, hidden, y);
    for (Index t = 0; t < 5; ++t) {
      const auto ref = moe::test::ref_swiglu(x.row(t), bank.gate_proj(e), bank.up_proj(e), bank.down_proj(e));
      REQUIRE((y.row(t) - ref).cwiseAbs().maxCoeff() < 1e-12);
    }
  }
}

TEST_CASE("FFN experts apply each activation between the two projections", "[expert]") {
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

TEST_CASE("GPT-OSS experts: interleaved gate/up, clamps, biases", "[expert]") {
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
        a[size_t(j)] = (u + 1.0) * g * moe::test::ref_sigmoid(1.702 * g);
      }
      for (Index o = 0; o < 6; ++o) {
        double s = bank.down_bias()(e, o);
        for (Index j = 0; j < 5; ++j) s += a[size_t(j)] * bank.down(e)(j, o);
        REQUIRE(std::abs(y(t, o) - s) < 1e-12);
      }
    }
  }
  REQUIRE(clamped > 0);  // the case exercises the clamps
}

TEST_CASE("expert banks reject empty sizes and out-of-range expert indices", "[expert][errors]") {
  REQUIRE_THROWS_WITH(moe::SwiGLUExperts<float>(0, 4, 4), "SwiGLUExperts::SwiGLUExperts(): num_experts expected >= 1, got 0");
  REQUIRE_THROWS_WITH((moe::FFNExperts<float, moe::Activation::relu>(2, 0, 4)),
                      "FFNExperts::FFNExperts(): d_model expected >= 1, got 0");
  REQUIRE_THROWS_WITH(moe::GptOssExperts<float>(2, 4, 0), "GptOssExperts::GptOssExperts(): d_ff expected >= 1, got 0");
  moe::SwiGLUExperts<float> bank(2, 4, 4);
  REQUIRE_THROWS_WITH(bank.gate_proj(2), "SwiGLUExperts::gate_proj(): expert index expected in [0, 2), got 2");
}

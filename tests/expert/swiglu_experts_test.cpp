// SwiGLU experts against a scalar reference written from their definition.
#include <moe/expert/swiglu_experts.hpp>

#include <catch2/catch.hpp>

#include "support/random.hpp"
#include "support/reference_moe.hpp"

using moe::Index;
using moe::RowMatrix;

TEST_CASE("SwiGLU experts match silu(x Wg^T) * (x Wu^T) Wd^T per expert", "[expert]") {
  using moe::test::fill;
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

TEST_CASE("SwiGLU experts reject empty sizes and out-of-range expert indices", "[expert][errors]") {
  REQUIRE_THROWS_WITH(moe::SwiGLUExperts<float>(0, 4, 4), "SwiGLUExperts::SwiGLUExperts(): num_experts expected >= 1, got 0");
  moe::SwiGLUExperts<float> bank(2, 4, 4);
  REQUIRE_THROWS_WITH(bank.gate_proj(2), "SwiGLUExperts::gate_proj(): expert index expected in [0, 2), got 2");
}

// SwiGLU expert backward against central finite differences (double).
#include <moe/expert/swiglu_experts.hpp>

#include <catch2/catch.hpp>

#include "support/gradient_check.hpp"
#include "support/random.hpp"

TEST_CASE("SwiGLU expert backward matches finite differences", "[expert][backward]") {
  moe::SwiGLUExperts<double> bank(3, 6, 4);
  moe::test::fill(bank.gate_up(), 1);
  moe::test::fill(bank.down(), 2);
  moe::test::check_expert_backward(bank, 1);
}

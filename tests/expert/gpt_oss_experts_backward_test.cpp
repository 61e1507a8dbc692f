// GPT-OSS expert backward against central finite differences (double), clamps included.
#include <moe/expert/gpt_oss_experts.hpp>

#include <catch2/catch.hpp>

#include "support/gradient_check.hpp"
#include "support/random.hpp"

TEST_CASE("GPT-OSS expert backward matches finite differences, clamps included", "[expert][backward]") {
  using moe::test::fill;
  // Scale 2 puts some gate/up pre-activations beyond the clamp limit (away from it by more
  // than the finite-difference step, so the derivative is well defined there).
  moe::GptOssExperts<double> bank(2, 6, 4, 1.702, 3.0);
  fill(bank.gate_up(), 7, 2.0);
  fill(bank.gate_up_bias(), 8);
  fill(bank.down(), 9);
  fill(bank.down_bias(), 10);
  moe::test::check_expert_backward(bank, 1);
}

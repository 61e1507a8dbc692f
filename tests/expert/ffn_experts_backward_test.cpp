// FFN expert backward against central finite differences (double), every activation.
#include <moe/expert/ffn_experts.hpp>

#include <catch2/catch.hpp>

#include "support/gradient_check.hpp"
#include "support/random.hpp"

TEST_CASE("FFN expert backward matches finite differences for every activation", "[expert][backward]") {
  using moe::test::fill;
  const auto check = [](auto bank) {
    fill(bank.wi(), 3);
    fill(bank.wo(), 4);
    moe::test::check_expert_backward(bank, 0);
    bank.enable_biases();
    fill(bank.bi(), 5);
    fill(bank.bo(), 6);
    moe::test::check_expert_backward(bank, 1);
  };
  check(moe::FFNExperts<double, moe::Activation::relu>(2, 6, 5));
  check(moe::FFNExperts<double, moe::Activation::gelu_erf>(2, 6, 5));
  check(moe::FFNExperts<double, moe::Activation::gelu_tanh>(2, 6, 5));
  check(moe::FFNExperts<double, moe::Activation::silu>(2, 6, 5));
}

// Expert backward passes against central finite differences (double).
#include <moe/layer/moe_layer.hpp>
#include <moe/core/parameters.hpp>
#include <moe/expert/ffn_experts.hpp>
#include <moe/expert/gpt_oss_experts.hpp>
#include <moe/expert/swiglu_experts.hpp>

#include <catch2/catch.hpp>

#include <random>
#include <string>

#include "support/finite_difference.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;

using moe::test::fill;

/// Checks dx and every parameter gradient of expert e for L = sum(y * G).
template <class Bank>
void check_expert_backward(Bank bank, Index e, double tol = 1e-7) {
  const Index n = 5, d = bank.input_dim();
  RowMatrix<double> x(n, d), G(n, bank.output_dim());
  fill(x, 11);
  fill(G, 12);
  const auto loss = [&] {
    RowMatrix<double> hidden(n, bank.hidden_cols()), y(n, bank.output_dim());
    bank.forward(e, x, hidden, y);
    return (y.array() * G.array()).sum();
  };
  RowMatrix<double> hidden(n, bank.hidden_cols()), y(n, bank.output_dim()), dx(n, d), scratch(n, bank.hidden_cols());
  bank.forward(e, x, hidden, y);
  Bank grad = moe::zeros_like(bank);
  bank.backward(e, x, hidden, G, dx, scratch, grad);
  CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(x, loss)) < tol);
  // Every parameter of the bank: expert e's get the gradient, the others stay zero.
  std::vector<RowMatrix<double>> analytic;
  grad.for_each_parameter([&](const std::string&, auto&& block) { analytic.emplace_back(block); });
  size_t i = 0;
  bank.for_each_parameter([&](const std::string& name, auto&& block) {
    INFO("parameter " << name);
    CHECK(moe::test::relative_gap(analytic[i++], moe::test::numeric_gradient(block, loss)) < tol);
  });
}

}  // namespace

TEST_CASE("SwiGLU expert backward matches finite differences", "[expert][backward]") {
  moe::SwiGLUExperts<double> bank(3, 6, 4);
  fill(bank.gate_up(), 1);
  fill(bank.down(), 2);
  check_expert_backward(bank, 1);
}

TEST_CASE("FFN expert backward matches finite differences for every activation", "[expert][backward]") {
  const auto check = [](auto bank) {
    fill(bank.wi(), 3);
    fill(bank.wo(), 4);
    check_expert_backward(bank, 0);
    bank.enable_biases();
    fill(bank.bi(), 5);
    fill(bank.bo(), 6);
    check_expert_backward(bank, 1);
  };
  check(moe::FFNExperts<double, moe::Activation::relu>(2, 6, 5));
  check(moe::FFNExperts<double, moe::Activation::gelu_erf>(2, 6, 5));
  check(moe::FFNExperts<double, moe::Activation::gelu_tanh>(2, 6, 5));
  check(moe::FFNExperts<double, moe::Activation::silu>(2, 6, 5));
}

TEST_CASE("GPT-OSS expert backward matches finite differences, clamps included", "[expert][backward]") {
  // Scale 2 puts some gate/up pre-activations beyond the clamp limit (away from it by more
  // than the finite-difference step, so the derivative is well defined there).
  moe::GptOssExperts<double> bank(2, 6, 4, 1.702, 3.0);
  fill(bank.gate_up(), 7, 2.0);
  fill(bank.gate_up_bias(), 8);
  fill(bank.down(), 9);
  fill(bank.down_bias(), 10);
  check_expert_backward(bank, 1);
}

// GPT-OSS expert backward against central finite differences (double), clamps included.
#include <moe/expert/ffn_experts.hpp>
#include <moe/expert/gpt_oss_experts.hpp>

#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "support/bits.hpp"
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

TEST_CASE("GPT-OSS and FFN expert gradients do not depend on which row of the bank holds the expert",
          "[expert][backward][determinism]") {
  // Experts 0 and 1 with the same weights, on the same rows: bit for bit the same gradients,
  // though each lands in its own rows of the gradient's fused tensors (32 bytes apart for the
  // bias rows [E, 8] of floats). Eigen's `row += m.colwise().sum()` did not guarantee it: how
  // it vectorised followed the destination row's alignment (found by the expert-parallel
  // tests, where an owner's expert has another index in its block than in the layer).
  using moe::Index;
  const Index d = 8, ff = 12, n = 7, E = 2;
  moe::GptOssExperts<float> gpt(E, d, ff);
  moe::FFNExperts<float, moe::Activation::gelu_erf> ffn(E, d, ff);
  ffn.enable_biases();
  // Expert e's rows of each stacked tensor, and the same weights for experts 0 and 1.
  const auto gpt_rows = [&](auto& b, Index e) {
    return std::vector<moe::RowMatrix<float>>{b.gate_up().middleRows(e * d, d), b.gate_up_bias().row(e),
                                              b.down().middleRows(e * ff, ff), b.down_bias().row(e)};
  };
  const auto ffn_rows = [&](auto& b, Index e) {
    return std::vector<moe::RowMatrix<float>>{b.wi().middleRows(e * ff, ff), b.bi().row(e), b.wo().middleRows(e * d, d),
                                              b.bo().row(e)};
  };
  unsigned seed = 70;
  for (auto* m : {&gpt.gate_up(), &gpt.gate_up_bias(), &gpt.down(), &gpt.down_bias(), &ffn.wi(), &ffn.bi(), &ffn.wo(),
                  &ffn.bo()}) {
    const Index per = m->rows() / E;
    moe::RowMatrix<float> first(per, m->cols());
    moe::test::fill(first, seed++, 0.4);
    m->topRows(per) = first;
    m->middleRows(per, per) = first;
  }
  const moe::RowMatrix<float> x = moe::test::random_matrix(n, d, 80).cast<float>();
  const moe::RowMatrix<float> dy = moe::test::random_matrix(n, d, 81).cast<float>();
  const auto check = [&](auto& bank, const auto& rows_of) {
    std::vector<std::vector<moe::RowMatrix<float>>> grads;
    for (Index e = 0; e < E; ++e) {
      moe::RowMatrix<float> h(n, bank.hidden_cols()), y(n, d), dx(n, d), scratch(n, bank.hidden_cols());
      bank.forward(e, x, h, y);
      auto grad = bank;
      grad.for_each_parameter([](const std::string&, auto&& block) { block.setZero(); });
      bank.backward(e, x, h, dy, dx, scratch, grad);
      grads.push_back(rows_of(grad, e));
    }
    for (std::size_t i = 0; i < grads[0].size(); ++i) {
      CAPTURE(i);
      CHECK(grads[0][i].norm() > 0);
      CHECK(moe::test::same_bits(grads[0][i], grads[1][i]));
    }
  };
  check(gpt, gpt_rows);
  check(ffn, ffn_rows);
}

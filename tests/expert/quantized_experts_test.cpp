// Quantized SwiGLU, GPT-OSS and FFN banks: each product is bit for bit
// kernels::reference::quant_gemm on the bank's blocks; the bank stays within its type's
// measured bound of a float64 bank holding the same (dequantized) weights, which isolates the
// activations' quantization; quantize() / dequantize() and the errors.
#include <catch2/catch.hpp>

#include "support/bits.hpp"
#include "support/golden.hpp"
#include "support/random.hpp"

#include <moe/expert/quantized_experts.hpp>
#include <moe/kernels/reference/quant_gemm.hpp>

#include <cstring>
#include <random>
#include <string>

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::kernels::BlockQ4_0;
using moe::kernels::BlockQ4_K;
using moe::kernels::BlockQ8_0;
using moe::test::random_matrix;

constexpr Index kQuantE = 3, kQuantD = 256, kQuantFF = 512;

template <class Block>
RowMatrix<float> quant_reference_product(const RowMatrix<float>& a, const moe::kernels::QuantMatrix<Block>& w) {
  RowMatrix<float> c(a.rows(), w.rows());
  const auto blocks = w.to_blocks();
  moe::kernels::reference::quant_gemm<Block>(c, a, blocks.data());
  return c;
}

moe::SwiGLUExperts<float> quant_float_swiglu(unsigned seed) {
  std::mt19937 rng(seed);
  moe::SwiGLUExperts<float> bank(kQuantE, kQuantD, kQuantFF);
  bank.gate_up() = random_matrix<float>(kQuantE * 2 * kQuantFF, kQuantD, rng) * 0.06f;
  bank.down() = random_matrix<float>(kQuantE * kQuantD, kQuantFF, rng) * 0.04f;
  return bank;
}

moe::GptOssExperts<float> quant_float_gpt_oss(unsigned seed) {
  std::mt19937 rng(seed);
  moe::GptOssExperts<float> bank(kQuantE, kQuantD, kQuantFF);
  for (Index e = 0; e < kQuantE; ++e) {
    bank.gate_up(e) = random_matrix<float>(kQuantD, 2 * kQuantFF, rng) * 0.06f;
    bank.down(e) = random_matrix<float>(kQuantFF, kQuantD, rng) * 0.04f;
  }
  bank.gate_up_bias() = random_matrix<float>(kQuantE, 2 * kQuantFF, rng) * 0.1f;
  bank.down_bias() = random_matrix<float>(kQuantE, kQuantD, rng) * 0.1f;
  return bank;
}

moe::FFNExperts<float, moe::Activation::gelu_tanh> quant_float_ffn(unsigned seed) {
  std::mt19937 rng(seed);
  moe::FFNExperts<float, moe::Activation::gelu_tanh> bank(kQuantE, kQuantD, kQuantFF);
  bank.enable_biases();
  bank.wi() = random_matrix<float>(kQuantE * kQuantFF, kQuantD, rng) * 0.06f;
  bank.wo() = random_matrix<float>(kQuantE * kQuantD, kQuantFF, rng) * 0.04f;
  bank.bi() = random_matrix<float>(kQuantE, kQuantFF, rng) * 0.1f;
  bank.bo() = random_matrix<float>(kQuantE, kQuantD, rng) * 0.1f;
  return bank;
}

/// Runs expert e of a bank on x; returns {hidden, y}.
template <class Bank>
std::pair<RowMatrix<float>, RowMatrix<float>> quant_run_expert(const Bank& bank, Index e, const RowMatrix<float>& x) {
  RowMatrix<float> hidden(x.rows(), bank.hidden_cols()), y(x.rows(), bank.output_dim());
  bank.forward(e, x, hidden, y);
  return {hidden, y};
}

/// The measured bound of a quantized bank against float64 with the same dequantized weights:
/// only the activations' quantization to 8 bits differs (docs/quantization.md).
template <class Block>
constexpr double quant_activation_bound() {
  // Measured on the three banks here (d 256, ff 512, 3 experts, N(0, 1) inputs): Q8_0
  // 0.0091-0.0122, Q4_0 0.0083-0.0131, Q4_K 0.0105-0.0194 (its Q8_K activations have one scale
  // per 256 elements, Q8_0's one per 32).
  return std::is_same_v<Block, BlockQ4_K> ? 0.03 : 0.02;
}

}  // namespace

TEMPLATE_TEST_CASE("QuantizedSwiGLUExperts: products bit for bit the twin, within the bound of float64",
                   "[expert][quant]", BlockQ8_0, BlockQ4_0, BlockQ4_K) {
  using Block = TestType;
  const auto bank = moe::QuantizedSwiGLUExperts<Block>::quantize(quant_float_swiglu(1));
  std::mt19937 rng(2);
  const RowMatrix<float> x = random_matrix<float>(7, kQuantD, rng);
  for (Index e = 0; e < kQuantE; ++e) {
    const auto [hidden, y] = quant_run_expert(bank, e, x);
    CHECK(moe::test::same_bits(hidden.leftCols(2 * kQuantFF), quant_reference_product(x, bank.gate_up(e))));
    CHECK(moe::test::same_bits(y, quant_reference_product(hidden.middleCols(2 * kQuantFF, kQuantFF), bank.down(e))));
    // Against float64 with the same weights.
    const auto deq = bank.dequantize();
    moe::SwiGLUExperts<double> exact(kQuantE, kQuantD, kQuantFF);
    exact.gate_up() = deq.gate_up().template cast<double>();
    exact.down() = deq.down().template cast<double>();
    RowMatrix<double> h64(x.rows(), 3 * kQuantFF), y64(x.rows(), kQuantD);
    exact.forward(e, x.cast<double>(), h64, y64);
    const double err = moe::test::max_relative_error(y, y64);
    INFO(moe::kernels::quant_format<Block>::name << " SwiGLU expert " << e << ": " << err);
    WARN(moe::kernels::quant_format<Block>::name << " SwiGLU vs float64: " << err);
    CHECK(err < quant_activation_bound<Block>());
  }
}

TEMPLATE_TEST_CASE("QuantizedGptOssExperts: products bit for bit the twin, within the bound of float64",
                   "[expert][quant]", BlockQ8_0, BlockQ4_0, BlockQ4_K) {
  using Block = TestType;
  const auto fbank = quant_float_gpt_oss(3);
  const auto bank = moe::QuantizedGptOssExperts<Block>::quantize(fbank);
  CHECK(bank.alpha() == fbank.alpha());
  CHECK(bank.limit() == fbank.limit());
  std::mt19937 rng(4);
  const RowMatrix<float> x = random_matrix<float>(6, kQuantD, rng);
  for (Index e = 0; e < kQuantE; ++e) {
    const auto [hidden, y] = quant_run_expert(bank, e, x);
    RowMatrix<float> h = quant_reference_product(x, bank.gate_up(e));
    h.rowwise() += bank.gate_up_bias().row(e);
    CHECK(moe::test::same_bits(hidden.leftCols(2 * kQuantFF), h));
    RowMatrix<float> want = quant_reference_product(hidden.middleCols(2 * kQuantFF, kQuantFF), bank.down(e));
    want.rowwise() += bank.down_bias().row(e);
    CHECK(moe::test::same_bits(y, want));
    const auto deq = bank.dequantize();
    moe::GptOssExperts<double> exact(kQuantE, kQuantD, kQuantFF);
    exact.gate_up() = deq.gate_up().template cast<double>();
    exact.down() = deq.down().template cast<double>();
    exact.gate_up_bias() = deq.gate_up_bias().template cast<double>();
    exact.down_bias() = deq.down_bias().template cast<double>();
    RowMatrix<double> h64(x.rows(), 3 * kQuantFF), y64(x.rows(), kQuantD);
    exact.forward(e, x.cast<double>(), h64, y64);
    const double err = moe::test::max_relative_error(y, y64);
    WARN(moe::kernels::quant_format<Block>::name << " GPT-OSS vs float64: " << err);
    CHECK(err < quant_activation_bound<Block>());
  }
}

TEMPLATE_TEST_CASE("QuantizedFFNExperts: products bit for bit the twin, within the bound of float64", "[expert][quant]",
                   BlockQ8_0, BlockQ4_0, BlockQ4_K) {
  using Block = TestType;
  const auto bank = moe::QuantizedFFNExperts<Block, moe::Activation::gelu_tanh>::quantize(quant_float_ffn(5));
  REQUIRE(bank.has_biases());
  std::mt19937 rng(6);
  const RowMatrix<float> x = random_matrix<float>(9, kQuantD, rng);
  for (Index e = 0; e < kQuantE; ++e) {
    const auto [hidden, y] = quant_run_expert(bank, e, x);
    RowMatrix<float> pre = quant_reference_product(x, bank.wi(e));
    pre.rowwise() += bank.bi().row(e);
    CHECK(moe::test::same_bits(hidden.leftCols(kQuantFF), pre));
    RowMatrix<float> want = quant_reference_product(hidden.middleCols(kQuantFF, kQuantFF), bank.wo(e));
    want.rowwise() += bank.bo().row(e);
    CHECK(moe::test::same_bits(y, want));
    const auto deq = bank.dequantize();
    moe::FFNExperts<double, moe::Activation::gelu_tanh> exact(kQuantE, kQuantD, kQuantFF);
    exact.enable_biases();
    exact.wi() = deq.wi().template cast<double>();
    exact.wo() = deq.wo().template cast<double>();
    exact.bi() = deq.bi().template cast<double>();
    exact.bo() = deq.bo().template cast<double>();
    RowMatrix<double> h64(x.rows(), 2 * kQuantFF), y64(x.rows(), kQuantD);
    exact.forward(e, x.cast<double>(), h64, y64);
    const double err = moe::test::max_relative_error(y, y64);
    WARN(moe::kernels::quant_format<Block>::name << " FFN vs float64: " << err);
    CHECK(err < quant_activation_bound<Block>());
  }
}

TEST_CASE("quantize() keeps each projection's rows, dequantize() gives the blocks' values", "[expert][quant]") {
  const auto fbank = quant_float_swiglu(7);
  const auto bank = moe::QuantizedSwiGLUExperts<BlockQ8_0>::quantize(fbank);
  const auto deq = bank.dequantize();
  for (Index e = 0; e < kQuantE; ++e) {
    // Q8_0 moves an element by at most half a step plus the scale's fp16 rounding.
    const RowMatrix<float> g = fbank.gate_proj(e), u = fbank.up_proj(e), d = fbank.down_proj(e);
    const auto close = [](const RowMatrix<float>& a, const RowMatrix<float>& b) {
      return (a - b).cwiseAbs().maxCoeff() <= a.cwiseAbs().maxCoeff() / 127.0f;
    };
    CHECK(close(g, deq.gate_proj(e)));
    CHECK(close(u, deq.up_proj(e)));
    CHECK(close(d, deq.down_proj(e)));
  }
  CHECK(bank.weight_bytes() == std::size_t(kQuantE) * (2 * kQuantFF * kQuantD + kQuantD * kQuantFF) / 32 * 34);
  CHECK(bank.expert_bytes(0) * kQuantE == bank.weight_bytes());
}

TEST_CASE("quantized banks: sizes that are not whole blocks, clear errors", "[expert][quant]") {
  // d 48, ff 40: rows padded with zeros; the products still match the twin.
  moe::SwiGLUExperts<float> f(2, 48, 40);
  std::mt19937 rng(8);
  f.gate_up() = random_matrix<float>(2 * 80, 48, rng);
  f.down() = random_matrix<float>(2 * 48, 40, rng);
  const auto bank = moe::QuantizedSwiGLUExperts<BlockQ4_K>::quantize(f);
  const RowMatrix<float> x = random_matrix<float>(3, 48, rng);
  const auto [hidden, y] = quant_run_expert(bank, 1, x);
  CHECK(moe::test::same_bits(hidden.leftCols(80), quant_reference_product(x, bank.gate_up(1))));
  CHECK(moe::test::same_bits(y, quant_reference_product(hidden.middleCols(80, 40), bank.down(1))));

  CHECK_THROWS_WITH(moe::QuantizedSwiGLUExperts<BlockQ8_0>(0, 32, 32), Catch::Contains("num_experts"));
  moe::QuantizedSwiGLUExperts<BlockQ8_0> q(2, 32, 64);
  CHECK_THROWS_WITH(q.down(2), Catch::Contains("expert index") && Catch::Contains("in [0, 2)"));
  q.down(1) = moe::kernels::QuantMatrix<BlockQ8_0>(32, 32);
  CHECK_THROWS_WITH(q.check_shapes(), Catch::Contains("down(1) shape") && Catch::Contains("[32, 64]"));
}

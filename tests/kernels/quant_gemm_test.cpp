// kernels::quant_gemm: bit for bit its scalar twin on every path the build has (AVX512-VNNI,
// AVX-VNNI, AVX2, scalar), for Q8_0, Q4_0 and Q4_K weights, at sizes around the panel and the
// register tiles; a row's bits independent of the batch; the layout round-trips GGUF's block
// bytes; clear errors.
#include <catch2/catch.hpp>

#include "support/bits.hpp"
#include "support/random.hpp"

#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "moe/kernels/quant_gemm.hpp"
#include "moe/kernels/reference/quant_gemm.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::kernels::BlockQ4_0;
using moe::kernels::BlockQ4_K;
using moe::kernels::BlockQ8_0;
using moe::kernels::QuantMatrix;
using moe::kernels::QuantPath;
using moe::test::random_matrix;

std::vector<QuantPath> quant_paths_here() {
  std::vector<QuantPath> out;
  for (const QuantPath p : {QuantPath::scalar, QuantPath::avx2, QuantPath::avxvnni, QuantPath::avx512vnni})
    if (moe::kernels::quant_path_available(p)) out.push_back(p);
  return out;
}

template <class Block>
std::vector<Block> quant_random_blocks(Index n, Index k, std::mt19937& rng) {
  // Quantized from random floats (every scale a real one), with a few hand-set extremes.
  const RowMatrix<float> w = random_matrix<float>(n, k, rng);
  return QuantMatrix<Block>::quantize(w).to_blocks();
}

}  // namespace

TEMPLATE_TEST_CASE("quant_gemm equals its twin bit for bit on every path", "[kernels][quant]", BlockQ8_0, BlockQ4_0,
                   BlockQ4_K) {
  using Block = TestType;
  constexpr Index qk = moe::kernels::quant_format<Block>::elements;
  std::mt19937 rng(31);
  for (const QuantPath path : quant_paths_here()) {
    for (const Index m : {Index{1}, Index{2}, Index{3}, Index{4}, Index{5}, Index{8}, Index{9}, Index{17}})
      for (const Index n : {Index{1}, Index{7}, Index{8}, Index{9}, Index{16}, Index{17}, Index{40}})
        for (const Index k : {qk, 2 * qk, 3 * qk, qk + 5, 2 * qk - 16}) {  // the last two pad a block with zeros
          INFO(moe::kernels::quant_path_name(path) << " " << moe::kernels::quant_format<Block>::name << " m " << m
                                                   << " n " << n << " k " << k);
          const RowMatrix<float> a = random_matrix<float>(m, k, rng);
          const std::vector<Block> blocks = quant_random_blocks<Block>(n, k, rng);
          const auto w = QuantMatrix<Block>::from_blocks(n, k, blocks.data());
          RowMatrix<float> c = RowMatrix<float>::Constant(m, n, 7.0f);
          moe::kernels::quant_gemm_on(path, c, a, w);
          RowMatrix<float> want(m, n);
          moe::kernels::reference::quant_gemm<Block>(want, a, blocks.data());
          CHECK(moe::test::same_bits(c, want));
        }
  }
}

TEMPLATE_TEST_CASE("quant_gemm: a row's bits do not depend on its batch or its place", "[kernels][quant]", BlockQ8_0,
                   BlockQ4_0, BlockQ4_K) {
  using Block = TestType;
  constexpr Index qk = moe::kernels::quant_format<Block>::elements;
  std::mt19937 rng(32);
  const Index n = 37, k = 2 * qk;
  const std::vector<Block> blocks = quant_random_blocks<Block>(n, k, rng);
  const auto w = QuantMatrix<Block>::from_blocks(n, k, blocks.data());
  const RowMatrix<float> batch = random_matrix<float>(23, k, rng);
  RowMatrix<float> all(23, n);
  moe::kernels::quant_gemm(all, batch, w);
  for (const Index r : {Index{0}, Index{7}, Index{22}}) {
    RowMatrix<float> one(1, n);
    moe::kernels::quant_gemm(one, batch.middleRows(r, 1), w);
    INFO("row " << r);
    CHECK(moe::test::same_bits(one, all.middleRows(r, 1)));
  }
}

TEMPLATE_TEST_CASE("QuantMatrix keeps GGUF's block bytes", "[kernels][quant]", BlockQ8_0, BlockQ4_0, BlockQ4_K) {
  using Block = TestType;
  constexpr Index qk = moe::kernels::quant_format<Block>::elements;
  std::mt19937 rng(33);
  std::uniform_int_distribution<int> byte(0, 255);
  const Index n = 19, k = 3 * qk;
  // Arbitrary bytes (scales included: every fp16 and 6-bit pattern must survive the layout).
  std::vector<Block> blocks(static_cast<std::size_t>(n * k / qk));
  std::vector<unsigned char> raw(blocks.size() * sizeof(Block));
  for (auto& b : raw) b = static_cast<unsigned char>(byte(rng));
  std::memcpy(blocks.data(), raw.data(), raw.size());
  const auto w = QuantMatrix<Block>::from_blocks(n, k, blocks.data());
  const std::vector<Block> back = w.to_blocks();
  REQUIRE(back.size() == blocks.size());
  CHECK(std::memcmp(back.data(), blocks.data(), raw.size()) == 0);
  CHECK(w.gguf_bytes() == raw.size());
  // dequantize() is the format's definition, row by row.
  const RowMatrix<float> deq = QuantMatrix<Block>::from_blocks(n, k, quant_random_blocks<Block>(n, k, rng).data()).dequantize();
  CHECK(deq.rows() == n);
  CHECK(deq.cols() == k);
}

TEST_CASE("QuantMatrix::dequantize matches the blocks' definition", "[kernels][quant]") {
  std::mt19937 rng(34);
  const Index n = 5, k = 64;
  const std::vector<BlockQ8_0> blocks = quant_random_blocks<BlockQ8_0>(n, k, rng);
  const RowMatrix<float> deq = QuantMatrix<BlockQ8_0>::from_blocks(n, k, blocks.data()).dequantize();
  for (Index r = 0; r < n; ++r)
    for (Index c = 0; c < k; ++c) {
      const BlockQ8_0& b = blocks[static_cast<std::size_t>(r * 2 + c / 32)];
      CHECK(deq(r, c) == moe::kernels::fp16_to_float(b.d) * static_cast<float>(b.qs[c % 32]));
    }
}

TEMPLATE_TEST_CASE("QuantMatrix pads a row that is not whole blocks with zeros", "[kernels][quant]", BlockQ8_0,
                   BlockQ4_0, BlockQ4_K) {
  using Block = TestType;
  constexpr Index qk = moe::kernels::quant_format<Block>::elements;
  std::mt19937 rng(35);
  const Index n = 9, k = qk + 24;
  const RowMatrix<float> w = random_matrix<float>(n, k, rng);
  RowMatrix<float> padded = RowMatrix<float>::Zero(n, 2 * qk);
  padded.leftCols(k) = w;
  const auto q = QuantMatrix<Block>::quantize(w);
  const auto q_padded = QuantMatrix<Block>::quantize(padded);
  CHECK_FALSE(q.whole_blocks());
  CHECK(q_padded.whole_blocks());
  REQUIRE(q.blocks_per_row() == 2);
  // The same blocks as the explicitly padded weight, so the same values and products.
  const auto b = q.to_blocks(), bp = q_padded.to_blocks();
  CHECK(std::memcmp(b.data(), bp.data(), b.size() * sizeof(Block)) == 0);
  CHECK(q.dequantize() == q_padded.dequantize().leftCols(k));
  const RowMatrix<float> a = random_matrix<float>(4, k, rng);
  RowMatrix<float> a_padded = RowMatrix<float>::Zero(4, 2 * qk);
  a_padded.leftCols(k) = a;
  RowMatrix<float> c(4, n), c_padded(4, n);
  moe::kernels::quant_gemm(c, a, q);
  moe::kernels::quant_gemm(c_padded, a_padded, q_padded);
  CHECK(moe::test::same_bits(c, c_padded));
}

TEST_CASE("quant_gemm: clear errors", "[kernels][quant]") {
  QuantMatrix<BlockQ8_0> w(4, 64);
  RowMatrix<float> a = RowMatrix<float>::Ones(2, 64), c(2, 4);
  RowMatrix<float> bad_c(2, 5);
  CHECK_THROWS_WITH(moe::kernels::quant_gemm(bad_c, a, w), Catch::Contains("operand shapes"));
  CHECK_THROWS_WITH(QuantMatrix<BlockQ4_K>(-1, 256), Catch::Contains("rows"));
  a(1, 3) = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(moe::kernels::quant_gemm(c, a, w), Catch::Contains("finite"));
  std::vector<BlockQ8_0> too_few(1);
  CHECK_THROWS_WITH(w.get_rows(3, 2, too_few.data()), Catch::Contains("within [0, 4)"));
  for (const QuantPath p : {QuantPath::avx2, QuantPath::avxvnni, QuantPath::avx512vnni})
    if (!moe::kernels::quant_path_available(p))
      CHECK_THROWS_WITH(moe::kernels::quant_gemm_on(p, c, RowMatrix<float>::Ones(2, 64), w), Catch::Contains("path"));
}

TEST_CASE("QuantActivations: the quantized rows are the reference quantizers' bytes, ties included", "[kernels][quant]") {
  std::mt19937 rng(36);
  // Random rows, and rows whose scaled values fall on halves: amax 127 gives Q8_0 the scale 1
  // (x = 2.5 rounds away from zero to 3), max -127 gives Q8_K the scale 1 (2.5 to even, 2).
  RowMatrix<float> a = random_matrix<float>(6, 512, rng);
  for (Index c = 0; c < 512; ++c) {
    a(4, c) = c % 32 == 0 ? 127.0f : static_cast<float>(c % 7) - 3.5f;
    a(5, c) = c % 256 == 0 ? -127.0f : static_cast<float>(c % 9) - 4.5f;
  }
  a.row(3).setZero();
  moe::kernels::QuantActivations<BlockQ8_0> q8;
  q8.quantize(a);
  moe::kernels::QuantActivations<BlockQ4_K> qk;
  qk.quantize(a);
  for (Index r = 0; r < a.rows(); ++r) {
    std::vector<BlockQ8_0> want8(16);
    moe::kernels::quantize_row_q8_0(a.row(r).data(), want8.data(), 512);
    CHECK(std::memcmp(want8.data(), q8.blocks.data() + r * 16, 16 * sizeof(BlockQ8_0)) == 0);
    std::vector<moe::kernels::BlockQ8_K> wantk(2);
    moe::kernels::quantize_row_q8_k(a.row(r).data(), wantk.data(), 512);
    CHECK(std::memcmp(wantk.data(), qk.blocks.data() + r * 2, 2 * sizeof(moe::kernels::BlockQ8_K)) == 0);
    for (Index b = 0; b < 16; ++b) {
      std::int32_t sum = 0;
      for (const auto v : want8[static_cast<std::size_t>(b)].qs) sum += v;
      CHECK(q8.aux[static_cast<std::size_t>(r * 16 + b)] == -128 * sum);
      CHECK(q8.scale[static_cast<std::size_t>(r * 16 + b)] == moe::kernels::fp16_to_float(want8[static_cast<std::size_t>(b)].d));
    }
  }
  CHECK(q8.blocks[4 * 16].qs[1] == -3);  // -2.5 rounds away from zero
  CHECK(qk.blocks[5 * 2].qs[9] == -4);   // -4.5 (scale 1) to even, not away from zero
  // A value that is not finite, or a scale past fp16, gets the reference quantizer's error.
  a(2, 100) = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(q8.quantize(a), Catch::Contains("finite") && Catch::Contains("inf at index 100"));
  a(2, 100) = 1e30f;
  CHECK_THROWS_WITH(q8.quantize(a), Catch::Contains("fits fp16"));
}

TEST_CASE("quant_gemm: hand-built extreme Q8_0 blocks (quants of -128 and 127) equal the twin on every path",
          "[kernels][quant]") {
  // The quantizers never write -128, but a GGUF file may hold it: AVX2's sign trick must not
  // try to negate it.
  std::mt19937 rng(37);
  std::uniform_int_distribution<int> quant(-128, 127);
  const Index n = 19, k = 96;
  std::vector<BlockQ8_0> blocks(static_cast<std::size_t>(n * k / 32));
  for (std::size_t b = 0; b < blocks.size(); ++b) {
    blocks[b].d = moe::kernels::float_to_fp16(0.01f * static_cast<float>(b % 7 + 1));
    for (auto& q : blocks[b].qs) q = static_cast<std::int8_t>(b % 3 == 0 ? (quant(rng) < 0 ? -128 : 127) : quant(rng));
  }
  const auto w = QuantMatrix<BlockQ8_0>::from_blocks(n, k, blocks.data());
  RowMatrix<float> a = random_matrix<float>(11, k, rng);
  a.row(3) *= -1.0f;
  RowMatrix<float> want(11, n);
  moe::kernels::reference::quant_gemm<BlockQ8_0>(want, a, blocks.data());
  for (const QuantPath path : quant_paths_here()) {
    INFO(moe::kernels::quant_path_name(path));
    RowMatrix<float> c(11, n);
    moe::kernels::quant_gemm_on(path, c, a, w);
    CHECK(moe::test::same_bits(c, want));
  }
}

TEMPLATE_TEST_CASE("quant_gemm: rows past one chunk of the activation buffer equal the twin", "[kernels][quant]", BlockQ8_0,
                   BlockQ4_K) {
  using Block = TestType;
  // quant_gemm quantizes at most quant_activation_blocks<Block> blocks at once: 256 rows of
  // k = 1024 for Q8_0, 1024 rows of k = 256 for Q4_K; these products take two chunks and a bit.
  const Index k = std::is_same_v<Block, BlockQ8_0> ? 1024 : 256;
  const Index per_chunk = moe::kernels::quant_activation_blocks<Block> / (k / moe::kernels::quant_format<Block>::elements);
  const Index m = 2 * per_chunk + 3, n = 17;
  std::mt19937 rng(38);
  const RowMatrix<float> a = random_matrix<float>(m, k, rng);
  const std::vector<Block> blocks = quant_random_blocks<Block>(n, k, rng);
  const auto w = QuantMatrix<Block>::from_blocks(n, k, blocks.data());
  RowMatrix<float> c(m, n), want(m, n);
  moe::kernels::quant_gemm(c, a, w);
  moe::kernels::reference::quant_gemm<Block>(want, a, blocks.data());
  CHECK(moe::test::same_bits(c, want));
}

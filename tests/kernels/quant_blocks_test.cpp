// Block-quantized formats: fp16 conversions against the IEEE definition; dequantization of
// hand-built Q8_0, Q4_0 and Q4_K blocks against the format definitions (every quant and nibble
// value, every 6-bit scale and min through the packing, scales of 0, +-65504 and subnormal);
// the quantizers against ggml's reference definitions and the half-step error bounds; the
// scalar dot products (kernels/reference/quant_blocks.hpp) against the dequantized values.
#include <catch2/catch.hpp>

#include "support/errors.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "moe/kernels/quant_blocks.hpp"
#include "moe/kernels/reference/quant_blocks.hpp"

namespace {

namespace k = moe::kernels;
using k::BlockQ4_0;
using k::BlockQ4_K;
using k::BlockQ8_0;
using k::BlockQ8_K;

/// The value of the binary16 with these bits, from its fields, in double (exact):
/// (-1)^s 2^(e-15) (1 + m/1024), or 2^-14 m/1024 for e = 0; +-inf for e = 31 (NaN apart).
double half_value(std::uint16_t h) {
  const double sign = (h & 0x8000u) != 0 ? -1.0 : 1.0;
  const int e = (h >> 10) & 0x1F;
  const int m = h & 0x3FF;
  if (e == 31) return sign * std::numeric_limits<double>::infinity();
  if (e == 0) return sign * std::ldexp(m / 1024.0, -14);
  return sign * std::ldexp(1.0 + m / 1024.0, e - 15);
}

bool half_is_nan(std::uint16_t h) { return (h & 0x7C00u) == 0x7C00u && (h & 0x3FFu) != 0; }

/// Rounding of a finite float to binary16 from the definition: the nearer of the two halves
/// bracketing x, the even one on a tie; 65536 (past the largest half, 65504) stands for inf,
/// as IEEE 754 rounds with an unbounded exponent and then overflows.
std::uint16_t round_to_half_by_definition(float x) {
  const double v = std::fabs(static_cast<double>(x));
  const std::uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  // Largest non-negative half (as bits 0..0x7C00, 0x7C00 meaning 65536) not above v.
  std::uint16_t lo = 0;
  std::uint16_t step = 0x4000;
  while (step != 0) {  // binary search over the ordered bit patterns
    const auto cand = static_cast<std::uint16_t>(lo + step);
    const double cv = cand >= 0x7C00 ? 65536.0 : half_value(cand);
    if (cand <= 0x7C00 && cv <= v) lo = cand;
    step >>= 1;
  }
  if (lo >= 0x7C00) return sign | 0x7C00;
  const double lo_v = half_value(lo);
  if (lo_v == v) return sign | lo;
  const auto hi = static_cast<std::uint16_t>(lo + 1);
  const double hi_v = hi >= 0x7C00 ? 65536.0 : half_value(hi);
  const double d_lo = v - lo_v, d_hi = hi_v - v;
  const std::uint16_t r = d_lo < d_hi ? lo : d_hi < d_lo ? hi : ((lo & 1) == 0 ? lo : hi);
  return static_cast<std::uint16_t>(sign | std::min<std::uint16_t>(r, 0x7C00));
}

std::string hex_bits(std::uint32_t v) {
  std::ostringstream os;
  os << "0x" << std::hex << v;
  return os.str();
}

/// Sub-block j's 6-bit scale and min of a Q4_K block's 12 bytes, as the format defines them
/// (written here from the format, not taken from the library).
void scale_min_by_definition(const std::uint8_t* s, int j, int& sc, int& m) {
  if (j < 4) {
    sc = s[j] & 0x3F;
    m = s[j + 4] & 0x3F;
  } else {
    sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
    m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

/// Q4_K element i in [0, 256) of a block's quants: chunk i / 64 uses bytes [32c, 32c + 32),
/// the low nibbles for its first 32 elements and the high nibbles for its next 32.
int q4_k_quant_by_definition(const BlockQ4_K& b, int i) {
  const int c = i / 64, r = i % 64;
  const std::uint8_t byte = b.qs[32 * c + r % 32];
  return r < 32 ? (byte & 0x0F) : (byte >> 4);
}

std::vector<float> normal(std::size_t n, unsigned seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// fp16

TEST_CASE("fp16_to_float is exact for every bit pattern", "[kernels][quant_blocks][fp16]") {
  for (std::uint32_t u = 0; u <= 0xFFFF; ++u) {
    const auto h = static_cast<std::uint16_t>(u);
    const float f = k::fp16_to_float(h);
    INFO("bits " << hex_bits(u));
    if (half_is_nan(h)) {
      REQUIRE(std::isnan(f));
      REQUIRE(std::signbit(f) == ((u & 0x8000u) != 0));
      REQUIRE(((std::bit_cast<std::uint32_t>(f) >> 13) & 0x3FFu) == (u & 0x3FFu));  // payload kept
      continue;
    }
    REQUIRE(static_cast<double>(f) == half_value(h));
    REQUIRE(std::signbit(f) == ((u & 0x8000u) != 0));  // -0 stays -0
  }
  static_assert(k::fp16_to_float(0x3C00) == 1.0f && k::fp16_to_float(0x7BFF) == 65504.0f);
}

TEST_CASE("float_to_fp16 rounds to nearest even: halves, midpoints, neighbours of midpoints",
          "[kernels][quant_blocks][fp16]") {
  std::size_t failures = 0, checked = 0;
  const auto check = [&](float x) {
    const std::uint16_t got = k::float_to_fp16(x), want = round_to_half_by_definition(x);
    ++checked;
    if (got != want && ++failures <= 5) {
      INFO("x " << hex_bits(std::bit_cast<std::uint32_t>(x)) << " (" << x << "): got " << hex_bits(got) << ", want " << hex_bits(want));
      CHECK(got == want);
    }
  };
  for (std::uint32_t u = 0; u < 0x7C00; ++u) {  // every finite non-negative half and its negative
    const auto h = static_cast<std::uint16_t>(u);
    const float f = k::fp16_to_float(h);
    REQUIRE(k::float_to_fp16(f) == h);
    REQUIRE(k::float_to_fp16(-f) == (h | 0x8000u));
    // The midpoint to the next half (exact in float: 12 significant bits), and one float ulp
    // either side of it.
    const double next = u + 1 == 0x7C00 ? 65536.0 : half_value(static_cast<std::uint16_t>(u + 1));
    const auto mid = static_cast<float>((half_value(h) + next) / 2);
    REQUIRE(static_cast<double>(mid) == (half_value(h) + next) / 2);
    for (const float x : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f)}) {
      check(x);
      check(-x);
    }
  }
  std::mt19937 rng(11);
  std::uniform_int_distribution<std::uint32_t> bits(0, 0xFFFFFFFFu);
  for (int i = 0; i < 200000; ++i) {
    const float x = std::bit_cast<float>(bits(rng));
    if (std::isfinite(x)) check(x);
  }
  CHECK(failures == 0);
  CHECK(checked > 300000);
}

TEST_CASE("float_to_fp16 by hand: overflow, subnormals, zeros, infinities, NaN", "[kernels][quant_blocks][fp16]") {
  CHECK(k::float_to_fp16(65504.0f) == 0x7BFF);
  CHECK(k::float_to_fp16(std::nextafter(65520.0f, 0.0f)) == 0x7BFF);  // below the midpoint
  CHECK(k::float_to_fp16(65520.0f) == 0x7C00);                        // the midpoint, 0x7BFF odd: up to inf
  CHECK(k::float_to_fp16(-65520.0f) == 0xFC00);
  CHECK(k::float_to_fp16(std::numeric_limits<float>::max()) == 0x7C00);
  CHECK(k::float_to_fp16(std::numeric_limits<float>::infinity()) == 0x7C00);
  CHECK(k::float_to_fp16(-std::numeric_limits<float>::infinity()) == 0xFC00);
  CHECK(k::float_to_fp16(0.0f) == 0x0000);
  CHECK(k::float_to_fp16(-0.0f) == 0x8000);
  CHECK(k::float_to_fp16(std::ldexp(1.0f, -24)) == 0x0001);   // the smallest subnormal
  CHECK(k::float_to_fp16(std::ldexp(1.0f, -25)) == 0x0000);   // tie between 0 and it: 0 is even
  CHECK(k::float_to_fp16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)) == 0x0001);
  CHECK(k::float_to_fp16(std::ldexp(3.0f, -25)) == 0x0002);   // tie between 1 and 2 units: 2
  CHECK(k::float_to_fp16(std::ldexp(1023.5f, -24)) == 0x0400);  // up out of the subnormals
  CHECK(k::float_to_fp16(std::numeric_limits<float>::denorm_min()) == 0x0000);
  CHECK(k::float_to_fp16(-std::numeric_limits<float>::denorm_min()) == 0x8000);
  for (const std::uint32_t nan : {0x7FC00000u, 0x7F800001u, 0x7FA00000u, 0xFFC00000u, 0xFF800001u}) {
    const std::uint16_t h = k::float_to_fp16(std::bit_cast<float>(nan));
    INFO("NaN " << hex_bits(nan) << " -> " << hex_bits(h));
    CHECK(half_is_nan(h));
    CHECK((h & 0x8000u) == ((nan >> 16) & 0x8000u));
    CHECK((h & 0x0200u) != 0);  // quiet
  }
  static_assert(k::float_to_fp16(1.0f) == 0x3C00 && k::float_to_fp16(-2.0f) == 0xC000);
}

// ---------------------------------------------------------------------------------------------
// Layouts and hand-built blocks

TEST_CASE("block layouts are ggml's, byte for byte", "[kernels][quant_blocks]") {
  STATIC_REQUIRE(sizeof(BlockQ8_0) == 2 + 32);
  STATIC_REQUIRE(sizeof(BlockQ4_0) == 2 + 16);
  STATIC_REQUIRE(sizeof(BlockQ4_K) == 2 + 2 + 12 + 128);
  STATIC_REQUIRE(sizeof(BlockQ8_K) == 4 + 256 + 2 * 16);
  STATIC_REQUIRE(offsetof(BlockQ8_0, qs) == 2);
  STATIC_REQUIRE(offsetof(BlockQ4_0, qs) == 2);
  STATIC_REQUIRE(offsetof(BlockQ4_K, dmin) == 2);
  STATIC_REQUIRE(offsetof(BlockQ4_K, scales) == 4);
  STATIC_REQUIRE(offsetof(BlockQ4_K, qs) == 16);
  STATIC_REQUIRE(offsetof(BlockQ8_K, qs) == 4);
  STATIC_REQUIRE(k::block_elements<BlockQ8_0> == 32 && k::block_elements<BlockQ4_K> == 256);
  // An array of blocks is the tensor's bytes: two Q8_0 blocks from raw little-endian bytes.
  std::uint8_t raw[68] = {};
  raw[0] = 0x00, raw[1] = 0x3C;   // d = 1.0
  raw[2] = 0x7F;                  // q[0] = 127
  raw[34] = 0x00, raw[35] = 0xC0; // d = -2.0
  raw[36 + 31] = 0x80;            // q[31] = -128
  BlockQ8_0 blocks[2];
  std::memcpy(blocks, raw, sizeof raw);
  float out[64];
  k::dequantize_row_q8_0(blocks, out, 64);
  CHECK(out[0] == 127.0f);
  CHECK(out[1] == 0.0f);
  CHECK(out[32 + 31] == 256.0f);
}

TEST_CASE("Q8_0 dequantizes every quant at scales 0, +-65504, 1 and subnormal", "[kernels][quant_blocks]") {
  // 256 quants -128..127 in 8 blocks, at each scale.
  for (const std::uint16_t d : {std::uint16_t{0x0000}, std::uint16_t{0x8000}, std::uint16_t{0x7BFF},
                                std::uint16_t{0xFBFF}, std::uint16_t{0x3C00}, std::uint16_t{0x0001},
                                std::uint16_t{0x03FF}, std::uint16_t{0x8200}}) {
    CAPTURE(hex_bits(d));
    std::vector<BlockQ8_0> blocks(8);
    for (int i = 0; i < 256; ++i) {
      blocks[i / 32].d = d;
      blocks[i / 32].qs[i % 32] = static_cast<std::int8_t>(i - 128);
    }
    std::vector<float> out(256);
    k::dequantize_row_q8_0(blocks.data(), out.data(), 256);
    for (int i = 0; i < 256; ++i) {
      const double want = half_value(d) * (i - 128);  // exact in float: 11 + 8 significant bits
      INFO("q = " << i - 128);
      REQUIRE(static_cast<double>(out[static_cast<std::size_t>(i)]) == want);
    }
  }
}

TEST_CASE("Q4_0 dequantizes every nibble value in both halves of a byte", "[kernels][quant_blocks]") {
  for (const std::uint16_t d : {std::uint16_t{0x0000}, std::uint16_t{0x7BFF}, std::uint16_t{0xFBFF},
                                std::uint16_t{0x3C00}, std::uint16_t{0x0001}, std::uint16_t{0xB555}}) {
    CAPTURE(hex_bits(d));
    // Block b byte j holds low nibble (j + b) % 16 and high nibble (15 - j + 3b) % 16: over 16
    // blocks every value sits at every position of both halves.
    std::vector<BlockQ4_0> blocks(16);
    for (int b = 0; b < 16; ++b) {
      blocks[b].d = d;
      for (int j = 0; j < 16; ++j)
        blocks[b].qs[j] = static_cast<std::uint8_t>(((j + b) % 16) | (((15 - j + 3 * b) % 16) << 4));
    }
    std::vector<float> out(16 * 32);
    k::dequantize_row_q4_0(blocks.data(), out.data(), out.size());
    for (int b = 0; b < 16; ++b)
      for (int j = 0; j < 16; ++j) {
        const int lo = (j + b) % 16, hi = (15 - j + 3 * b) % 16;
        INFO("block " << b << " byte " << j);
        REQUIRE(static_cast<double>(out[static_cast<std::size_t>(32 * b + j)]) == half_value(d) * (lo - 8));
        REQUIRE(static_cast<double>(out[static_cast<std::size_t>(32 * b + j + 16)]) == half_value(d) * (hi - 8));
      }
  }
}

TEST_CASE("Q4_K packs and unpacks every 6-bit scale and min of every sub-block", "[kernels][quant_blocks]") {
  std::mt19937 rng(17);
  std::uniform_int_distribution<int> six(0, 63);
  for (int j = 0; j < 8; ++j)
    for (int sc = 0; sc < 64; ++sc)
      for (int m = 0; m < 64; ++m) {
        std::uint8_t scs[8], ms[8];
        for (int o = 0; o < 8; ++o) {
          scs[o] = static_cast<std::uint8_t>(six(rng));
          ms[o] = static_cast<std::uint8_t>(six(rng));
        }
        scs[j] = static_cast<std::uint8_t>(sc);
        ms[j] = static_cast<std::uint8_t>(m);
        std::uint8_t packed[12];
        k::q4_k_pack_scale_min(scs, ms, packed);
        for (int o = 0; o < 8; ++o) {
          int want_sc = 0, want_m = 0;
          scale_min_by_definition(packed, o, want_sc, want_m);
          const k::ScaleMin got = k::q4_k_scale_min(packed, static_cast<std::size_t>(o));
          if (want_sc != scs[o] || want_m != ms[o] || got.scale != scs[o] || got.min != ms[o]) {
            INFO("sub-block " << o << " (varied " << j << "): packed " << int(scs[o]) << "/" << int(ms[o]) << ", format "
                              << want_sc << "/" << want_m << ", unpacked " << int(got.scale) << "/" << int(got.min));
            REQUIRE(false);
          }
        }
      }
}

TEST_CASE("Q4_K dequantizes by the format: d sc q - dmin m, ggml's nibble order", "[kernels][quant_blocks]") {
  std::mt19937 rng(19);
  std::uniform_int_distribution<int> byte(0, 255);
  const std::uint16_t ds[] = {0x3C00, 0x0001, 0x7BFF, 0xFBFF, 0x0000, 0x2E66, 0x8123};
  // 64 blocks: block b gives sub-block s the scale (b + 8 s) % 64 and min (63 - b + 5 s) % 64,
  // so every 6-bit value passes through every sub-block position; the 12 bytes are written here
  // bit by bit from the format's definition (not by the library's packer).
  for (int b = 0; b < 64; ++b) {
    BlockQ4_K blk{};
    blk.d = ds[b % 7];
    blk.dmin = ds[(b + 3) % 7];
    std::uint8_t* s = blk.scales;
    for (int j = 0; j < 8; ++j) {
      const int sc = (b + 8 * j) % 64, m = (63 - b + 5 * j) % 64;
      if (j < 4) {
        s[j] = static_cast<std::uint8_t>((s[j] & 0xC0) | sc);
        s[j + 4] = static_cast<std::uint8_t>((s[j + 4] & 0xC0) | m);
      } else {
        s[j + 4] = static_cast<std::uint8_t>((sc & 0x0F) | ((m & 0x0F) << 4));
        s[j - 4] = static_cast<std::uint8_t>(s[j - 4] | ((sc >> 4) << 6));
        s[j] = static_cast<std::uint8_t>(s[j] | ((m >> 4) << 6));
      }
    }
    for (auto& q : blk.qs) q = static_cast<std::uint8_t>(byte(rng));
    float out[256];
    k::dequantize_row_q4_k(&blk, out, 256);
    for (int i = 0; i < 256; ++i) {
      const int j = i / 32;
      const int sc = (b + 8 * j) % 64, m = (63 - b + 5 * j) % 64;
      const int q = q4_k_quant_by_definition(blk, i);
      // (d sc) and (dmin m) are exact in float (11 + 6 bits); the product with q (4 bits) too;
      // only the final subtraction rounds, once.
      const float a = static_cast<float>(half_value(blk.d) * sc * q);
      const float c = static_cast<float>(half_value(blk.dmin) * m);
      INFO("block " << b << " element " << i << " sc " << sc << " m " << m << " q " << q);
      REQUIRE(out[i] == a - c);
    }
  }
  // Every nibble value at every position: quants (i + b) % 16 over 16 blocks of one scale.
  for (int b = 0; b < 16; ++b) {
    BlockQ4_K blk{};
    blk.d = 0x3C00;       // 1
    blk.dmin = 0x3800;    // 0.5
    const std::uint8_t sc[8] = {1, 1, 1, 1, 1, 1, 1, 1}, m[8] = {2, 2, 2, 2, 2, 2, 2, 2};
    k::q4_k_pack_scale_min(sc, m, blk.scales);
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l) {
        const int lo = (64 * c + l + b) % 16, hi = (64 * c + 32 + l + b) % 16;
        blk.qs[32 * c + l] = static_cast<std::uint8_t>(lo | (hi << 4));
      }
    float out[256];
    k::dequantize_row_q4_k(&blk, out, 256);
    for (int i = 0; i < 256; ++i) REQUIRE(out[i] == static_cast<float>((i + b) % 16) - 1.0f);
  }
}

TEST_CASE("Q8_K dequantizes as d q", "[kernels][quant_blocks]") {
  BlockQ8_K blk{};
  blk.d = -0.25f;
  for (int i = 0; i < 256; ++i) blk.qs[i] = static_cast<std::int8_t>(i - 128);
  float out[256];
  k::dequantize_row_q8_k(&blk, out, 256);
  for (int i = 0; i < 256; ++i) REQUIRE(out[i] == -0.25f * static_cast<float>(i - 128));
}

// ---------------------------------------------------------------------------------------------
// Quantizers

namespace {

/// Test rows: N(0, s^2) at several scales, and blocks that are the edge cases of each rule.
std::vector<std::vector<float>> test_rows(std::size_t block) {
  std::vector<std::vector<float>> rows;
  for (const float s : {1.0f, 1e-3f, 250.0f, 1e-6f})
    rows.push_back(normal(block * 16, static_cast<unsigned>(s * 1000) + 1, s));
  std::vector<float> edge;
  const auto add_block = [&](auto f) {
    for (std::size_t i = 0; i < block; ++i) edge.push_back(f(i));
  };
  add_block([](std::size_t) { return 0.0f; });                                         // all zero
  add_block([](std::size_t i) { return i == 5 ? 3.0f : 0.0f; });                       // one spike
  add_block([](std::size_t i) { return i == 7 ? -3.0f : 0.01f; });                     // a negative max
  add_block([](std::size_t) { return 1.5f; });                                         // constant
  add_block([](std::size_t) { return -1.5f; });                                        // constant negative
  add_block([](std::size_t i) { return i % 2 ? 2.0f : -2.0f; });                       // +-max tie
  add_block([](std::size_t i) { return static_cast<float>(i) - 100.0f; });             // all negative
  add_block([](std::size_t i) { return 1000.0f + static_cast<float>(i); });            // all positive
  add_block([](std::size_t i) { return std::ldexp(static_cast<float>(i % 9), -18); }); // scale subnormal in fp16
  rows.push_back(edge);
  return rows;
}

}  // namespace

TEST_CASE("quantize_row_q8_0 is ggml's reference quantizer and within half a step", "[kernels][quant_blocks]") {
  for (const auto& x : test_rows(32)) {
    const std::size_t n = x.size();
    std::vector<BlockQ8_0> blocks(n / 32);
    k::quantize_row_q8_0(x.data(), blocks.data(), n);
    std::vector<float> y(n);
    k::dequantize_row_q8_0(blocks.data(), y.data(), n);
    for (std::size_t b = 0; b < n / 32; ++b) {
      // The definition: d = amax / 127 stored as the nearest fp16, q = round(x / d) (halves away
      // from zero) computed with the float reciprocal of the unrounded d.
      float amax = 0;
      for (std::size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[32 * b + j]));
      const float d = amax / 127.0f;
      const float id = d != 0 ? 1.0f / d : 0.0f;
      INFO("block " << b << " amax " << amax);
      REQUIRE(blocks[b].d == round_to_half_by_definition(d));
      const double dh = half_value(blocks[b].d);
      for (std::size_t j = 0; j < 32; ++j) {
        const float v = x[32 * b + j];
        REQUIRE(blocks[b].qs[j] == static_cast<int>(std::round(v * id)));
        // Half a step of the unrounded scale, plus what rounding the scale to fp16 moves q d.
        const double q = blocks[b].qs[j];
        // The float product x (1 / d) is off by a few ulp of 127: 2e-5 steps covers it.
        const double bound = (0.5 + 2e-5) * d + std::fabs(q) * std::fabs(d - dh);
        REQUIRE(std::fabs(static_cast<double>(y[32 * b + j]) - v) <= bound);
      }
    }
  }
}

TEST_CASE("quantize_row_q4_0 is ggml's reference quantizer and within half a step but the clipped extreme",
          "[kernels][quant_blocks]") {
  for (const auto& x : test_rows(32)) {
    const std::size_t n = x.size();
    std::vector<BlockQ4_0> blocks(n / 32);
    k::quantize_row_q4_0(x.data(), blocks.data(), n);
    std::vector<float> y(n);
    k::dequantize_row_q4_0(blocks.data(), y.data(), n);
    for (std::size_t b = 0; b < n / 32; ++b) {
      float amax = 0, max = 0;
      for (std::size_t j = 0; j < 32; ++j)
        if (std::fabs(x[32 * b + j]) > amax) {
          amax = std::fabs(x[32 * b + j]);
          max = x[32 * b + j];
        }
      const float d = max / -8.0f;
      const float id = d != 0 ? 1.0f / d : 0.0f;
      INFO("block " << b << " max " << max);
      REQUIRE(blocks[b].d == round_to_half_by_definition(d));
      const double dh = half_value(blocks[b].d);
      for (std::size_t j = 0; j < 32; ++j) {
        const float v = x[32 * b + j];
        const int q = j < 16 ? (blocks[b].qs[j] & 0x0F) : (blocks[b].qs[j - 16] >> 4);
        REQUIRE(q == std::min(15, static_cast<int>(std::floor(v * id + 8.5f))));
        // The element at the block's max is exact up to the scale's rounding (q = 0, -8 d);
        // one at -max would need q = 16 and is a full step off; every other within half a step.
        const bool clipped = v * id + 8.5f >= 16.0f;
        const double step = std::fabs(static_cast<double>(d));
        const double bound = ((clipped ? 1.0 : 0.5) + 4e-6) * step + std::abs(q - 8) * std::fabs(d - dh);
        REQUIRE(std::fabs(static_cast<double>(y[32 * b + j]) - v) <= bound);
        if (v == max && max != 0) REQUIRE(q == 0);
      }
    }
  }
}

TEST_CASE("quantize_row_q4_k gives every element the nearest level of its sub-block's grid", "[kernels][quant_blocks]") {
  // ggml's Q4_K quantizer fits each sub-block's scale and min by least squares and may clip
  // its extremes; what the format then guarantees is the last step: each element's level is
  // the one of the sub-block's 16 grid values (d sc) q - (dmin m) nearest to it. So an element
  // inside the grid is within half a step, one outside it gets the nearer end.
  for (const auto& x : test_rows(256)) {
    const std::size_t n = x.size();
    std::vector<BlockQ4_K> blocks(n / 256);
    k::quantize_row_q4_k(x.data(), blocks.data(), n);
    std::vector<float> y(n);
    k::dequantize_row_q4_k(blocks.data(), y.data(), n);
    for (std::size_t b = 0; b < n / 256; ++b) {
      const double d = half_value(blocks[b].d), dmin = half_value(blocks[b].dmin);
      REQUIRE(d >= 0);
      REQUIRE(dmin >= 0);
      for (int s = 0; s < 8; ++s) {
        int sc = 0, m = 0;
        scale_min_by_definition(blocks[b].scales, s, sc, m);
        const double step = d * sc, low = -dmin * m;
        INFO("block " << b << " sub-block " << s << " d " << d << " sc " << sc << " dmin " << dmin << " m " << m);
        for (int l = 0; l < 32; ++l) {
          const std::size_t i = 256 * b + 32 * static_cast<std::size_t>(s) + static_cast<std::size_t>(l);
          const double v = x[i];
          double nearest = std::numeric_limits<double>::infinity();
          for (int q = 0; q < 16; ++q) nearest = std::min(nearest, std::fabs(low + step * q - v));
          // Float rounding of (x + dmin m) / (d sc) and of the dequantized value.
          const double slack = 1e-6 * (std::fabs(v) + std::fabs(low) + 15 * step) + 1e-30;
          REQUIRE(std::fabs(static_cast<double>(y[i]) - v) <= nearest + slack);
          if (v >= low && v <= low + 15 * step) REQUIRE(std::fabs(static_cast<double>(y[i]) - v) <= 0.5 * step + slack);
        }
      }
    }
  }
}

TEST_CASE("quantize_row_q8_k is ggml's reference quantizer, bsums included", "[kernels][quant_blocks]") {
  for (const auto& x : test_rows(256)) {
    std::vector<BlockQ8_K> blocks(x.size() / 256);
    k::quantize_row_q8_k(x.data(), blocks.data(), x.size());
    for (std::size_t b = 0; b < blocks.size(); ++b) {
      float amax = 0, max = 0;
      for (std::size_t j = 0; j < 256; ++j)
        if (std::fabs(x[256 * b + j]) > amax) {
          amax = std::fabs(x[256 * b + j]);
          max = x[256 * b + j];
        }
      if (amax == 0) {
        REQUIRE(blocks[b].d == 0.0f);
        continue;
      }
      const float iscale = -127.0f / max;
      REQUIRE(blocks[b].d == 1.0f / iscale);
      for (std::size_t j = 0; j < 256; ++j) {
        const float t = iscale * x[256 * b + j];
        // Nearest, ties to even: the parity-checked alternative to std::nearbyint.
        const float fl = std::floor(t);
        const float diff = t - fl;
        const int want = diff > 0.5f || (diff == 0.5f && std::fmod(fl, 2.0f) != 0) ? static_cast<int>(fl) + 1
                                                                                   : static_cast<int>(fl);
        REQUIRE(blocks[b].qs[j] == std::min(127, want));
      }
      for (int g = 0; g < 16; ++g) {
        int sum = 0;
        for (int l = 0; l < 16; ++l) sum += blocks[b].qs[16 * g + l];
        REQUIRE(blocks[b].bsums[g] == sum);
      }
    }
  }
}

TEST_CASE("quantizing a dequantized Q8_0 or Q4_0 block gives the block back", "[kernels][quant_blocks]") {
  std::mt19937 rng(23);
  std::uniform_int_distribution<int> q8(-127, 127), q4(0, 15), half_bits(0x0400, 0x7000);
  for (int t = 0; t < 500; ++t) {
    // A Q8_0 block with |q| = 127 somewhere has d = amax / 127 exactly (d 127 is exact).
    BlockQ8_0 a{};
    a.d = static_cast<std::uint16_t>(half_bits(rng));  // the quantizer's d is amax / 127 >= 0
    for (auto& q : a.qs) q = static_cast<std::int8_t>(q8(rng));
    a.qs[t % 32] = static_cast<std::int8_t>(t % 3 ? 127 : -127);
    float v[32];
    k::dequantize_row_q8_0(&a, v, 32);
    BlockQ8_0 back{};
    k::quantize_row_q8_0(v, &back, 32);
    REQUIRE(std::memcmp(&a, &back, sizeof a) == 0);

    // A Q4_0 block whose largest magnitude is q = 0 (-8 d), the only one: d = max / -8 exactly.
    BlockQ4_0 c{};
    c.d = static_cast<std::uint16_t>(half_bits(rng) | (t % 2 ? 0x8000 : 0));
    for (int j = 0; j < 16; ++j)
      c.qs[j] = static_cast<std::uint8_t>(std::max(1, q4(rng)) | (std::max(1, q4(rng)) << 4));
    const int at = t % 32;
    if (at < 16)
      c.qs[at] &= 0xF0;
    else
      c.qs[at - 16] &= 0x0F;
    float w[32];
    k::dequantize_row_q4_0(&c, w, 32);
    BlockQ4_0 back4{};
    k::quantize_row_q4_0(w, &back4, 32);
    REQUIRE(std::memcmp(&c, &back4, sizeof c) == 0);
  }
}

TEST_CASE("quantizers and dequantizers refuse partial blocks, NaN, inf and scales past fp16",
          "[kernels][quant_blocks]") {
  using moe::test::require_invalid;
  std::vector<float> x(512, 1.0f);
  std::vector<BlockQ8_0> q8(16);
  std::vector<BlockQ4_0> q4(16);
  std::vector<BlockQ4_K> qk(2);
  std::vector<BlockQ8_K> q8k(2);
  std::vector<float> out(512);
  require_invalid([&] { k::quantize_row_q8_0(x.data(), q8.data(), 33); },
                  {"kernels::quantize_row_q8_0(): n (elements) expected a multiple of 32 (the block size), got 33"});
  require_invalid([&] { k::quantize_row_q4_0(x.data(), q4.data(), 31); },
                  {"kernels::quantize_row_q4_0(): n (elements) expected a multiple of 32 (the block size), got 31"});
  require_invalid([&] { k::quantize_row_q4_k(x.data(), qk.data(), 288); },
                  {"kernels::quantize_row_q4_k(): n (elements) expected a multiple of 256 (the block size), got 288"});
  require_invalid([&] { k::quantize_row_q8_k(x.data(), q8k.data(), 32); }, {"multiple of 256", "got 32"});
  require_invalid([&] { k::dequantize_row_q8_0(q8.data(), out.data(), 1); },
                  {"kernels::dequantize_row_q8_0(): n (elements) expected a multiple of 32"});
  require_invalid([&] { k::dequantize_row_q4_0(q4.data(), out.data(), 20); }, {"dequantize_row_q4_0()", "got 20"});
  require_invalid([&] { k::dequantize_row_q4_k(qk.data(), out.data(), 32); }, {"dequantize_row_q4_k()", "got 32"});
  require_invalid([&] { k::dequantize_row_q8_k(q8k.data(), out.data(), 32); }, {"dequantize_row_q8_k()", "got 32"});
  x[40] = std::numeric_limits<float>::quiet_NaN();
  require_invalid([&] { k::quantize_row_q8_0(x.data(), q8.data(), 64); },
                  {"kernels::quantize_row_q8_0(): x expected finite values, got NaN at index 40"});
  x[40] = -std::numeric_limits<float>::infinity();
  require_invalid([&] { k::quantize_row_q4_k(x.data(), qk.data(), 256); }, {"got -inf at index 40"});
  require_invalid([&] { k::quantize_row_q8_k(x.data(), q8k.data(), 256); }, {"got -inf at index 40"});
  x[40] = 1.0f;
  x[33] = 1e7f;  // 1e7 / 127 fits fp16 (78740 does not: above 65504)
  require_invalid([&] { k::quantize_row_q8_0(x.data(), q8.data(), 64); },
                  {"kernels::quantize_row_q8_0(): block scale expected one that fits fp16", "in block 1"});
  require_invalid([&] { k::quantize_row_q4_0(x.data(), q4.data(), 64); }, {"block scale", "in block 1"});
  x[33] = 8.0e6f;  // 8e6 / 127 = 62992: fits
  REQUIRE_NOTHROW(k::quantize_row_q8_0(x.data(), q8.data(), 64));
  REQUIRE_NOTHROW(k::quantize_row_q4_k(x.data(), qk.data(), 512));  // 8e6 / 945 fits
  x[300] = 1e9f;
  require_invalid([&] { k::quantize_row_q4_k(x.data(), qk.data(), 512); },
                  {"kernels::quantize_row_q4_k(): block scale expected one that fits fp16 (x in about [-4.1e6, 6.1e7])",
                   "in block 1"});
  x[300] = -5e6f;  // the min's scale: 5e6 / 63 is past 65504
  require_invalid([&] { k::quantize_row_q4_k(x.data(), qk.data(), 512); }, {"block scale", "in block 1"});
  x[300] = -4e6f;
  REQUIRE_NOTHROW(k::quantize_row_q4_k(x.data(), qk.data(), 512));
  REQUIRE_NOTHROW(k::quantize_row_q8_k(x.data(), q8k.data(), 512));  // a float scale
  REQUIRE_NOTHROW(k::quantize_row_q8_0(x.data(), q8.data(), 0));
}

// ---------------------------------------------------------------------------------------------
// Dot products (the scalar twins)

TEST_CASE("reference dot products are the dequantized rows' dot product", "[kernels][quant_blocks]") {
  for (const std::size_t n : {std::size_t{256}, std::size_t{512}, std::size_t{2816}}) {
    CAPTURE(n);
    const std::vector<float> w = normal(n, 31, 0.5f), a = normal(n, 37, 2.0f);
    std::vector<BlockQ8_0> w8(n / 32), a8(n / 32);
    std::vector<BlockQ4_0> w4(n / 32);
    std::vector<BlockQ4_K> wk(n / 256);
    std::vector<BlockQ8_K> ak(n / 256);
    k::quantize_row_q8_0(w.data(), w8.data(), n);
    k::quantize_row_q8_0(a.data(), a8.data(), n);
    k::quantize_row_q4_0(w.data(), w4.data(), n);
    k::quantize_row_q4_k(w.data(), wk.data(), n);
    k::quantize_row_q8_k(a.data(), ak.data(), n);
    std::vector<float> dw8(n), da8(n), dw4(n), dwk(n), dak(n);
    k::dequantize_row_q8_0(w8.data(), dw8.data(), n);
    k::dequantize_row_q8_0(a8.data(), da8.data(), n);
    k::dequantize_row_q4_0(w4.data(), dw4.data(), n);
    k::dequantize_row_q4_k(wk.data(), dwk.data(), n);
    k::dequantize_row_q8_k(ak.data(), dak.data(), n);
    // The exact dot product of the dequantized values (their products are exact in double; the
    // sum of magnitudes bounds the float rounding the twin's block-wise sums may add).
    const auto exact = [&](const std::vector<float>& x, const std::vector<float>& y, double& mag) {
      double s = 0;
      mag = 0;
      for (std::size_t i = 0; i < n; ++i) {
        s += static_cast<double>(x[i]) * y[i];
        mag += std::fabs(static_cast<double>(x[i]) * y[i]);
      }
      return s;
    };
    double mag = 0;
    const double e88 = exact(dw8, da8, mag);
    CHECK(std::fabs(k::reference::vec_dot_q8_0_q8_0(n, w8.data(), a8.data()) - e88) <= 1e-6 * mag);
    const double e48 = exact(dw4, da8, mag);
    CHECK(std::fabs(k::reference::vec_dot_q4_0_q8_0(n, w4.data(), a8.data()) - e48) <= 1e-6 * mag);
    // Q4_K: d sc q - dmin m is rounded once in dequantization; the twin keeps the two parts
    // apart, so the bound also holds the rounding of the dequantized weights (2^-24 relative
    // of the larger part).
    double magk = 0;
    const double ekk = exact(dwk, dak, magk);
    double parts = 0;
    for (std::size_t i = 0; i < n; ++i) parts += std::fabs(static_cast<double>(dak[i])) * (std::fabs(dwk[i]) + 1.0);
    CHECK(std::fabs(k::reference::vec_dot_q4_k_q8_k(n, wk.data(), ak.data()) - ekk) <= 1e-6 * (magk + parts));
    // And the quantized products approximate the float one.
    double want = 0;
    for (std::size_t i = 0; i < n; ++i) want += static_cast<double>(w[i]) * a[i];
    CHECK(std::fabs(e88 - want) <= 0.02 * mag);
  }
}

TEST_CASE("reference dot products on hand-built blocks are exact integer sums", "[kernels][quant_blocks]") {
  // Scales that are powers of two keep every step exact.
  BlockQ8_0 w{}, a{};
  w.d = 0x3800;  // 0.5
  a.d = 0x4400;  // 4
  std::int64_t dot = 0;
  for (int j = 0; j < 32; ++j) {
    w.qs[j] = static_cast<std::int8_t>(j % 2 ? -128 : 127);
    a.qs[j] = static_cast<std::int8_t>(j % 3 ? -128 : 127);
    dot += static_cast<std::int64_t>(w.qs[j]) * a.qs[j];
  }
  CHECK(k::reference::vec_dot_q8_0_q8_0(32, &w, &a) == static_cast<float>(2.0 * dot));

  BlockQ4_0 w4{};
  w4.d = 0xC000;  // -2
  dot = 0;
  for (int j = 0; j < 16; ++j) {
    w4.qs[j] = static_cast<std::uint8_t>(j | ((15 - j) << 4));
    dot += static_cast<std::int64_t>(j - 8) * a.qs[j] + static_cast<std::int64_t>(15 - j - 8) * a.qs[j + 16];
  }
  CHECK(k::reference::vec_dot_q4_0_q8_0(32, &w4, &a) == static_cast<float>(-8.0 * dot));

  BlockQ4_K wk{};
  wk.d = 0x3C00;     // 1
  wk.dmin = 0x4000;  // 2
  std::uint8_t sc[8], m[8];
  for (int s = 0; s < 8; ++s) {
    sc[s] = static_cast<std::uint8_t>(63 - 7 * s);
    m[s] = static_cast<std::uint8_t>(9 * s);
  }
  k::q4_k_pack_scale_min(sc, m, wk.scales);
  for (int i = 0; i < 128; ++i) wk.qs[i] = static_cast<std::uint8_t>((i * 37) & 0xFF);
  BlockQ8_K ak{};
  ak.d = 0.25f;
  for (int i = 0; i < 256; ++i) ak.qs[i] = static_cast<std::int8_t>(((i * 53) % 255) - 127);
  for (int g = 0; g < 16; ++g) {
    int s = 0;
    for (int l = 0; l < 16; ++l) s += ak.qs[16 * g + l];
    ak.bsums[g] = static_cast<std::int16_t>(s);
  }
  std::int64_t want = 0;  // in units of 0.25: sum of (sc q - 2 m) a
  for (int i = 0; i < 256; ++i)
    want += (static_cast<std::int64_t>(sc[i / 32]) * q4_k_quant_by_definition(wk, i) - 2 * m[i / 32]) * ak.qs[i];
  CHECK(k::reference::vec_dot_q4_k_q8_k(256, &wk, &ak) == static_cast<float>(0.25 * static_cast<double>(want)));

  moe::test::require_invalid([&] { (void)k::reference::vec_dot_q8_0_q8_0(31, &w, &a); },
                             {"kernels::reference::vec_dot_q8_0_q8_0(): n (elements) expected a multiple of 32"});
  moe::test::require_invalid([&] { (void)k::reference::vec_dot_q4_k_q8_k(32, &wk, &ak); }, {"multiple of 256"});
}

TEST_CASE("round-trip error per type on N(0, 1) rows (the figures docs/quantization.md quotes)",
          "[kernels][quant_blocks]") {
  const std::size_t n = 256 * 1024;
  const std::vector<float> x = normal(n, 2024);
  std::vector<float> y(n);
  const auto rms = [&](const char* name, double bound) {
    double se = 0, ss = 0, mx = 0;
    for (std::size_t i = 0; i < n; ++i) {
      se += (static_cast<double>(y[i]) - x[i]) * (static_cast<double>(y[i]) - x[i]);
      ss += static_cast<double>(x[i]) * x[i];
      mx = std::max(mx, std::fabs(static_cast<double>(y[i]) - x[i]));
    }
    const double rel = std::sqrt(se / ss);
    INFO(name << ": relative RMS error " << rel << ", max abs error " << mx);
    CHECK(rel <= bound);
  };
  // Bounds: a uniform rounding error over a step t has RMS t / sqrt(12); a block of 32 N(0, 1)
  // draws has amax about 2.1-2.5, so t = amax / 127 (Q8_0) or amax / 8 (Q4_0), about 0.0197 and
  // 0.31 at amax 2.5; Q4_K's sub-block range (about 4.2) over 15 levels gives about 0.3. The
  // bounds are those RMS values with 25 % to spare.
  {
    std::vector<BlockQ8_0> b(n / 32);
    k::quantize_row_q8_0(x.data(), b.data(), n);
    k::dequantize_row_q8_0(b.data(), y.data(), n);
    rms("Q8_0", 1.25 * 2.5 / 127 / std::sqrt(12.0));
  }
  {
    std::vector<BlockQ4_0> b(n / 32);
    k::quantize_row_q4_0(x.data(), b.data(), n);
    k::dequantize_row_q4_0(b.data(), y.data(), n);
    rms("Q4_0", 1.25 * 2.5 / 8 / std::sqrt(12.0));
  }
  {
    std::vector<BlockQ4_K> b(n / 256);
    k::quantize_row_q4_k(x.data(), b.data(), n);
    k::dequantize_row_q4_k(b.data(), y.data(), n);
    rms("Q4_K", 1.25 * 4.5 / 15 / std::sqrt(12.0));
  }
  {
    std::vector<BlockQ8_K> b(n / 256);
    k::quantize_row_q8_k(x.data(), b.data(), n);
    k::dequantize_row_q8_k(b.data(), y.data(), n);
    rms("Q8_K", 1.25 * 4.0 / 127 / std::sqrt(12.0));
  }
}

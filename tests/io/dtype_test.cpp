// The dtype table and the exact 16-bit float conversions, checked against the IEEE definitions.
#include "moe/io/dtype.hpp"

#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

using moe::io::bf16_to_float;
using moe::io::DType;
using moe::io::f16_to_float;

namespace {

std::uint32_t bits_of(float f) { return std::bit_cast<std::uint32_t>(f); }

// The binary16 value straight from its definition, computed in double: an oracle that shares
// no code with the bit manipulation under test.
double f16_by_definition(std::uint16_t h) {
  const int sign = (h >> 15) ? -1 : 1;
  const int exponent = (h >> 10) & 0x1F;
  const int mantissa = h & 0x3FF;
  if (exponent == 0) return sign * std::ldexp(static_cast<double>(mantissa), -24);
  if (exponent == 31)
    return mantissa == 0 ? sign * std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  return sign * std::ldexp(static_cast<double>(1024 + mantissa), exponent - 25);
}

}  // namespace

TEST_CASE("dtype names, sizes and parsing agree with the safetensors spelling", "[io][dtype]") {
  CHECK(moe::io::dtype_name(DType::F32) == "F32");
  CHECK(moe::io::dtype_name(DType::BF16) == "BF16");
  CHECK(moe::io::dtype_name(DType::F8_E4M3) == "F8_E4M3");
  CHECK(moe::io::dtype_size(DType::F64) == 8);
  CHECK(moe::io::dtype_size(DType::F32) == 4);
  CHECK(moe::io::dtype_size(DType::F16) == 2);
  CHECK(moe::io::dtype_size(DType::BF16) == 2);
  CHECK(moe::io::dtype_size(DType::I64) == 8);
  CHECK(moe::io::dtype_size(DType::I32) == 4);
  CHECK(moe::io::dtype_size(DType::I16) == 2);
  CHECK(moe::io::dtype_size(DType::I8) == 1);
  CHECK(moe::io::dtype_size(DType::U8) == 1);
  CHECK(moe::io::dtype_size(DType::BOOL) == 1);
  CHECK(moe::io::dtype_size(DType::F8_E5M2) == 1);
  CHECK(moe::io::dtype_size(DType::U64) == 8);
  CHECK(moe::io::dtype_size(DType::F4) == 0);  // packed: no whole byte size
  CHECK(moe::io::dtype_bits(DType::F4) == 4);
  CHECK(moe::io::dtype_bits(DType::F6_E3M2) == 6);

  for (const auto& e : moe::io::detail::dtype_table) {
    INFO(e.name);
    CHECK(moe::io::parse_dtype(e.name) == e.dtype);
    CHECK(moe::io::dtype_name(e.dtype) == e.name);
  }
  CHECK_FALSE(moe::io::parse_dtype("f32").has_value());  // the spec's names are upper case
  CHECK_FALSE(moe::io::parse_dtype("F128").has_value());
  CHECK_FALSE(moe::io::parse_dtype("").has_value());
}

TEST_CASE("F16 conversion: known bit patterns", "[io][dtype]") {
  CHECK(f16_to_float(0x3C00) == 1.0f);
  CHECK(f16_to_float(0xC000) == -2.0f);
  CHECK(f16_to_float(0x3800) == 0.5f);
  CHECK(f16_to_float(0x3555) == 0.333251953125f);
  CHECK(f16_to_float(0x7BFF) == 65504.0f);                 // largest finite
  CHECK(f16_to_float(0x0400) == std::ldexp(1.0f, -14));    // smallest normal
  CHECK(f16_to_float(0x0001) == std::ldexp(1.0f, -24));    // smallest subnormal
  CHECK(f16_to_float(0x03FF) == std::ldexp(1023.0f, -24)); // largest subnormal
  CHECK(f16_to_float(0x8001) == -std::ldexp(1.0f, -24));
  CHECK(bits_of(f16_to_float(0x0000)) == 0x00000000u);
  CHECK(bits_of(f16_to_float(0x8000)) == 0x80000000u);     // -0 keeps its sign
  CHECK(f16_to_float(0x7C00) == std::numeric_limits<float>::infinity());
  CHECK(f16_to_float(0xFC00) == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(f16_to_float(0x7E00)));
  CHECK(std::isnan(f16_to_float(0x7C01)));                 // signalling NaN stays NaN, not inf
  CHECK(bits_of(f16_to_float(0x7E00)) == 0x7FC00000u);     // quiet bit and payload carried over
  CHECK(std::signbit(f16_to_float(0xFE00)));
}

TEST_CASE("F16 conversion: every one of the 65536 patterns matches the IEEE definition", "[io][dtype]") {
  for (std::uint32_t h = 0; h <= 0xFFFF; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    const float got = f16_to_float(bits);
    const double want = f16_by_definition(bits);
    if (std::isnan(want)) {
      if (!std::isnan(got)) FAIL("F16 0x" << std::hex << h << " should be NaN");
    } else if (static_cast<double>(got) != want || std::signbit(got) != static_cast<bool>(bits >> 15)) {
      FAIL("F16 0x" << std::hex << h << ": got " << got << ", want " << want);
    }
  }
  SUCCEED();
}

TEST_CASE("BF16 conversion: known bit patterns and every pattern is the top half of a float", "[io][dtype]") {
  CHECK(bf16_to_float(0x3F80) == 1.0f);
  CHECK(bf16_to_float(0xC000) == -2.0f);
  CHECK(bf16_to_float(0x4049) == 3.140625f);
  CHECK(bf16_to_float(0x7F7F) == std::ldexp(255.0f, 120));  // largest finite: (2 - 2^-7) * 2^127
  CHECK(bf16_to_float(0x0080) == std::ldexp(1.0f, -126));  // smallest normal
  CHECK(bf16_to_float(0x0001) == std::ldexp(1.0f, -133));  // smallest subnormal
  CHECK(bits_of(bf16_to_float(0x8000)) == 0x80000000u);
  CHECK(bf16_to_float(0x7F80) == std::numeric_limits<float>::infinity());
  CHECK(bf16_to_float(0xFF80) == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(bf16_to_float(0x7FC0)));
  CHECK(std::isnan(bf16_to_float(0x7F81)));
  for (std::uint32_t b = 0; b <= 0xFFFF; ++b)
    if (bits_of(bf16_to_float(static_cast<std::uint16_t>(b))) != (b << 16)) FAIL("BF16 0x" << std::hex << b);
}

// Weight element types: bf16's rounding from float against the arithmetic definition (nearest,
// ties to even, overflow to inf), its exact widening, NaN, infinities and subnormals; the
// weight_traits both kernels and the twin widen with.
#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "moe/kernels/weight_types.hpp"

namespace {

using moe::bf16;
using moe::Index;

float from_bits32(std::uint32_t u) { return std::bit_cast<float>(u); }
std::uint32_t bits32(float f) { return std::bit_cast<std::uint32_t>(f); }

/// The value of the bf16 with these bits, from its fields: (-1)^s 2^(e-127) (1 + m/128), or
/// 2^-126 m/128 for e = 0; inf / NaN for e = 255 (+inf returned for any of those, callers
/// handle NaN apart). Computed in double, where all of these are exact.
double bf16_value(std::uint16_t b) {
  const int sign = (b >> 15) != 0 ? -1 : 1;
  const int e = (b >> 7) & 0xff;
  const int m = b & 0x7f;
  if (e == 255) return sign * std::numeric_limits<double>::infinity();
  if (e == 0) return sign * std::ldexp(m / 128.0, -126);
  return sign * std::ldexp(1.0 + m / 128.0, e - 127);
}

/// bf16 rounding of a finite or infinite float, from the definition: of the two bf16 values
/// bracketing x (toward and away from zero), the nearer; on a tie the one with an even last
/// mantissa bit. The bf16 past the largest finite one counts as 2^128 (IEEE 754: round as if
/// the exponent were unbounded, then overflow to inf). Differences are exact in double.
std::uint16_t round_by_definition(float x) {
  if (std::isinf(x)) return static_cast<std::uint16_t>(bits32(x) >> 16);
  const std::uint16_t toward = static_cast<std::uint16_t>(bits32(x) >> 16);  // |toward| <= |x|
  const std::uint16_t away = static_cast<std::uint16_t>(toward + 1);          // next in magnitude
  const double xv = static_cast<double>(x);
  const double lo = bf16_value(toward);
  const int sign = std::signbit(x) ? -1 : 1;
  const double hi = ((away >> 7) & 0xff) == 255 ? sign * std::ldexp(1.0, 128) : bf16_value(away);
  const double d_lo = std::fabs(xv - lo);
  const double d_hi = std::fabs(hi - xv);
  if (d_lo < d_hi) return toward;
  if (d_hi < d_lo) return away;
  return (toward & 1) == 0 ? toward : away;
}

std::string hex(std::uint32_t v) {
  std::ostringstream os;
  os << "0x" << std::hex << v;
  return os.str();
}

}  // namespace

TEST_CASE("bf16 rounds float to nearest, ties to even, over every exponent and sign", "[kernels][bf16]") {
  // Every top half (sign, exponent, 7 mantissa bits), with the dropped half at the values where
  // rounding changes: 0, 1, just below, at and just above half, the largest, and random ones.
  std::mt19937 rng(3);
  std::uniform_int_distribution<std::uint32_t> low(0, 0xffff);
  std::size_t failures = 0;
  std::size_t checked = 0;
  for (std::uint32_t top = 0; top <= 0xffff; ++top) {
    if (((top >> 7) & 0xff) == 255) continue;  // inf / NaN: below
    for (const std::uint32_t dropped : {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu, low(rng), low(rng)}) {
      const float x = from_bits32((top << 16) | dropped);
      const std::uint16_t got = bf16(x).bits;
      const std::uint16_t want = round_by_definition(x);
      ++checked;
      if (got != want && ++failures <= 5) {
        INFO("x " << hex(bits32(x)) << " (" << x << "): got " << hex(got) << ", want " << hex(want));
        CHECK(got == want);
      }
    }
  }
  CHECK(failures == 0);
  CHECK(checked > 500000);
}

TEST_CASE("bf16 rounding: ties, subnormals, overflow, infinities and NaN by hand", "[kernels][bf16]") {
  const auto r = [](std::uint32_t u) { return bf16(from_bits32(u)).bits; };
  // Ties go to the even neighbour: 1 + 2^-8 (half an ulp of bf16 at 1) stays 1, 1 + 3 2^-8 goes up.
  CHECK(r(0x3f808000u) == 0x3f80);
  CHECK(r(0x3f818000u) == 0x3f82);
  CHECK(r(0x3f808001u) == 0x3f81);  // just above the tie
  CHECK(r(0x3f807fffu) == 0x3f80);  // just below
  CHECK(r(0xbf818000u) == 0xbf82);  // signs are symmetric
  CHECK(bf16(1.0f + 1.0f / 256).bits == 0x3f80);
  CHECK(bf16(1.0f + 3.0f / 256).bits == 0x3f82);
  // Zeros keep their sign.
  CHECK(bf16(0.0f).bits == 0x0000);
  CHECK(bf16(-0.0f).bits == 0x8000);
  // Subnormals: the smallest float subnormals round to (signed) zero; ties between bf16
  // subnormals go to even; rounding up out of the subnormals gives the smallest normal.
  CHECK(r(0x00000001u) == 0x0000);
  CHECK(r(0x80000001u) == 0x8000);
  CHECK(r(0x00008000u) == 0x0000);  // tie between 0 and the smallest bf16 subnormal: 0 is even
  CHECK(r(0x00008001u) == 0x0001);
  CHECK(r(0x00018000u) == 0x0002);  // tie between subnormals 1 and 2: 2
  CHECK(r(0x007fffffu) == 0x0080);  // largest float subnormal -> smallest normal 2^-126
  CHECK(static_cast<float>(bf16::from_bits(0x0001)) == std::ldexp(1.0f, -133));  // smallest bf16 subnormal
  CHECK(static_cast<float>(bf16::from_bits(0x0080)) == std::numeric_limits<float>::min());
  // Overflow: FLT_MAX is past the midpoint above the largest finite bf16, so it rounds to inf;
  // the largest float below that midpoint rounds to the largest finite bf16 (0x7f7f).
  CHECK(bf16(std::numeric_limits<float>::max()).bits == 0x7f80);
  CHECK(bf16(-std::numeric_limits<float>::max()).bits == 0xff80);
  CHECK(r(0x7f7f7fffu) == 0x7f7f);
  CHECK(r(0x7f7f8000u) == 0x7f80);  // the midpoint: 0x7f7f is odd, so up, to inf
  CHECK(static_cast<float>(bf16::from_bits(0x7f7f)) == std::ldexp(255.0f / 128, 127));
  // Infinities stay infinite.
  CHECK(bf16(std::numeric_limits<float>::infinity()).bits == 0x7f80);
  CHECK(bf16(-std::numeric_limits<float>::infinity()).bits == 0xff80);
  // NaN stays NaN, keeps its sign and is made quiet, even when its payload lies only in the
  // dropped bits (truncation would give inf there).
  for (const std::uint32_t nan : {0x7fc00000u, 0x7f800001u, 0x7fa00000u, 0x7fffffffu, 0xffc00000u, 0xff800001u}) {
    const bf16 b(from_bits32(nan));
    INFO("NaN " << hex(nan) << " -> " << hex(b.bits));
    CHECK(std::isnan(static_cast<float>(b)));
    CHECK((b.bits & 0x8000) == ((nan >> 16) & 0x8000));
    CHECK((b.bits & 0x0040) != 0);
  }
  CHECK(bf16(std::numeric_limits<float>::quiet_NaN()).bits == 0x7fc0);
  // constexpr: a weight table can be built at compile time.
  static_assert(bf16(1.0f).bits == 0x3f80 && bf16(-2.0f).bits == 0xc000);
  static_assert(static_cast<float>(bf16::from_bits(0x4049)) == 3.140625f);
}

TEST_CASE("bf16 widens exactly: every bit pattern, and rounding a widened value gives it back", "[kernels][bf16]") {
  for (std::uint32_t u = 0; u <= 0xffff; ++u) {
    const bf16 b = bf16::from_bits(static_cast<std::uint16_t>(u));
    const float f = static_cast<float>(b);
    INFO("bits " << hex(u));
    REQUIRE(bits32(f) == (u << 16));
    if (std::isnan(f)) {
      REQUIRE(std::isnan(static_cast<float>(bf16(f))));
      continue;
    }
    REQUIRE(static_cast<double>(f) == bf16_value(static_cast<std::uint16_t>(u)));
    REQUIRE(bf16(f).bits == u);
  }
}

TEST_CASE("weight_traits widen runs: bf16 to float, a Scalar to itself, and Eigen matrices of bf16",
          "[kernels][bf16]") {
  using moe::kernels::weight_traits;
  static_assert(std::is_same_v<weight_traits<bf16>::compute_type, float>);
  static_assert(std::is_same_v<weight_traits<float>::compute_type, float>);
  static_assert(std::is_same_v<weight_traits<double>::compute_type, double>);
  static_assert(moe::kernels::WeightFor<bf16, float> && !moe::kernels::WeightFor<bf16, double>);
  static_assert(moe::kernels::WeightFor<float, float> && moe::kernels::WeightFor<double, double>);
  static_assert(!moe::kernels::WeightFor<int, float>);

  std::mt19937 rng(5);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  for (const Index n : {Index{0}, Index{1}, Index{7}, Index{16}, Index{33}, Index{1000}}) {
    std::vector<bf16> src;
    for (Index i = 0; i < n; ++i) src.emplace_back(dist(rng));
    std::vector<float> dst(static_cast<std::size_t>(n) + 1, -1.0f);
    weight_traits<bf16>::widen(src.data(), dst.data(), n);
    for (std::size_t i = 0; i < src.size(); ++i) {
      CHECK(bits32(dst[i]) == static_cast<std::uint32_t>(src[i].bits) << 16);
      CHECK(moe::kernels::widen(src[i]) == dst[i]);
    }
    CHECK(dst.back() == -1.0f);  // nothing past the run
    std::vector<double> d(static_cast<std::size_t>(n)), e(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) d[static_cast<std::size_t>(i)] = dist(rng);
    weight_traits<double>::widen(d.data(), e.data(), n);
    CHECK(d == e);
  }

  // Eigen holds bf16 as storage: cast<bf16> rounds, cast<float> widens, views and blocks work.
  moe::RowMatrix<float> f(3, 5);
  for (Index i = 0; i < f.size(); ++i) f.data()[i] = dist(rng);
  const moe::RowMatrix<bf16> w = f.cast<bf16>();
  const moe::ConstMatrixRef<bf16> view = w.middleRows(1, 2);
  CHECK(view.rows() == 2);
  CHECK(view.outerStride() == 5);
  const moe::RowMatrix<float> back = w.cast<float>();
  for (Index i = 0; i < f.size(); ++i) {
    CHECK(w.data()[i].bits == bf16(f.data()[i]).bits);
    CHECK(back.data()[i] == static_cast<float>(w.data()[i]));
  }
}

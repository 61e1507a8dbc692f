#include <moe/core/random.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <set>

TEST_CASE("CounterRng is a pure function of (seed, step, token, lane)", "[core][random]") {
  const moe::CounterRng a(42, 7), b(42, 7), c(42, 8), d(43, 7);
  std::set<std::uint64_t> seen;
  for (std::uint64_t t = 0; t < 64; ++t) {
    REQUIRE(a.bits(t, 3) == b.bits(t, 3));
    REQUIRE(a.bits(t, 3) != c.bits(t, 3));
    REQUIRE(a.bits(t, 3) != d.bits(t, 3));
    seen.insert(a.bits(t, 0));
    seen.insert(a.bits(t, 1));
  }
  REQUIRE(seen.size() == 128);
}

TEST_CASE("CounterRng uniforms and normals have the moments of their laws", "[core][random]") {
  const moe::CounterRng rng(1, 0);
  const int n = 200000;
  double su = 0, su2 = 0, sn = 0, sn2 = 0;
  for (int t = 0; t < n; ++t) {
    const double u = rng.uniform(static_cast<std::uint64_t>(t), 0);
    REQUIRE(u >= 0.0);
    REQUIRE(u < 1.0);
    su += u;
    su2 += u * u;
    const double z = rng.normal(static_cast<std::uint64_t>(t), 1);
    REQUIRE(std::isfinite(z));
    sn += z;
    sn2 += z * z;
  }
  // Means and variances within ~5 standard errors of 1/2, 1/12, 0, 1.
  CHECK(std::abs(su / n - 0.5) < 5 * std::sqrt(1.0 / 12 / n));
  CHECK(std::abs(su2 / n - su * su / n / n - 1.0 / 12) < 5e-3);
  CHECK(std::abs(sn / n) < 5 / std::sqrt(double(n)));
  CHECK(std::abs(sn2 / n - 1.0) < 5 * std::sqrt(2.0 / n));
}

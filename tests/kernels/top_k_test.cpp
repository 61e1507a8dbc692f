// kernels::top_k: descending order, ties to the lower index, NaN last, and agreement with a
// std::stable_sort oracle (reference::top_k) on data with many repeated values.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "moe/kernels/reference/top_k.hpp"
#include "moe/kernels/top_k.hpp"

namespace {

using moe::Index;

template <class S>
std::vector<Index> top_k_of(const std::vector<S>& row, Index k) {
  std::vector<Index> out(static_cast<std::size_t>(k), Index{-1});
  moe::kernels::top_k(row.data(), static_cast<Index>(row.size()), k, out.data());
  return out;
}

}  // namespace

TEMPLATE_TEST_CASE("top_k returns indices in descending value order", "[kernels][top_k]", float,
                   double) {
  using S = TestType;
  const std::vector<S> row{S(0.1), S(2.5), S(-1), S(7), S(3), S(-4)};
  REQUIRE(top_k_of(row, 1) == std::vector<Index>{3});
  REQUIRE(top_k_of(row, 3) == std::vector<Index>{3, 4, 1});
  REQUIRE(top_k_of(row, 6) == std::vector<Index>{3, 4, 1, 0, 2, 5});  // k = n: a full ranking
}

TEMPLATE_TEST_CASE("top_k resolves ties to the lower index", "[kernels][top_k]", float, double) {
  using S = TestType;
  const std::vector<S> row{1, 5, 3, 5, 3, 5, 3};
  REQUIRE(top_k_of(row, 1) == std::vector<Index>{1});
  REQUIRE(top_k_of(row, 2) == std::vector<Index>{1, 3});
  REQUIRE(top_k_of(row, 4) == std::vector<Index>{1, 3, 5, 2});  // index 2 wins the last place
  REQUIRE(top_k_of(row, 7) == std::vector<Index>{1, 3, 5, 2, 4, 6, 0});
  const std::vector<S> equal(5, S(2));
  REQUIRE(top_k_of(equal, 3) == std::vector<Index>{0, 1, 2});
  const std::vector<S> zeros{0, -0.0, 0};  // -0 == 0: a tie
  REQUIRE(top_k_of(zeros, 2) == std::vector<Index>{0, 1});
  REQUIRE(top_k_of(std::vector<S>{S(4)}, 1) == std::vector<Index>{0});  // n = k = 1
}

TEMPLATE_TEST_CASE("top_k ranks NaN below every number", "[kernels][top_k]", float, double) {
  using S = TestType;
  const S nan = std::numeric_limits<S>::quiet_NaN();
  const S inf = std::numeric_limits<S>::infinity();
  const std::vector<S> row{nan, 1, -inf, nan, 3};
  REQUIRE(top_k_of(row, 1) == std::vector<Index>{4});
  REQUIRE(top_k_of(row, 3) == std::vector<Index>{4, 1, 2});
  REQUIRE(top_k_of(row, 5) == std::vector<Index>{4, 1, 2, 0, 3});  // NaNs last, by index
  const std::vector<S> all_nan(4, nan);
  REQUIRE(top_k_of(all_nan, 2) == std::vector<Index>{0, 1});
  REQUIRE(top_k_of(all_nan, 1) == std::vector<Index>{0});
}

TEMPLATE_TEST_CASE("top_k agrees with a stable-sort oracle on rows with many repeats",
                   "[kernels][top_k]", float, double) {
  using S = TestType;
  std::mt19937 rng(31);
  for (const Index n : {Index{1}, Index{2}, Index{5}, Index{8}, Index{33}, Index{64},
                        Index{257}}) {
    for (int trial = 0; trial < 4; ++trial) {
      // Few distinct values so ties are everywhere; some rows get NaNs and infinities too.
      std::uniform_int_distribution<int> level(-3, 3);
      std::vector<S> row(static_cast<std::size_t>(n));
      for (S& v : row) v = S(level(rng)) / S(2);
      if (trial >= 2) {
        std::uniform_int_distribution<Index> at(0, n - 1);
        row[at(rng)] = std::numeric_limits<S>::quiet_NaN();
        row[at(rng)] = -std::numeric_limits<S>::infinity();
        row[at(rng)] = std::numeric_limits<S>::quiet_NaN();
      }
      for (Index k = 1; k <= n; k = (k < 10 ? k + 1 : k * 2)) {
        CAPTURE(n, trial, k);
        std::vector<Index> want(static_cast<std::size_t>(k));
        moe::kernels::reference::top_k(row.data(), n, k, want.data());
        REQUIRE(top_k_of(row, k) == want);
      }
      std::vector<Index> full(static_cast<std::size_t>(n));
      moe::kernels::reference::top_k(row.data(), n, n, full.data());
      REQUIRE(top_k_of(row, n) == full);
    }
  }
}

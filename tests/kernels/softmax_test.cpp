// kernels::SoftmaxRows and kernels::LogSumExpRows: against their twins within an ulp bound,
// and properties that need no oracle.
#include <catch2/catch.hpp>

#include "support/kernel_sweep.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "moe/kernels/reference/softmax.hpp"
#include "moe/kernels/softmax.hpp"

namespace {

using moe::Index;
using moe::test::AlignedVector;
using moe::test::first_difference;
using moe::test::for_each_arch;
using moe::test::sweep_sizes;

// Tolerance against the twin: 4 eps * max(1, |ref|). The two differ only in xsimd::exp
// versus std::exp (each within about 1 ulp) and in the order the row sum is accumulated
// (lanes then hadd, versus left to right); on rows of up to 8W+2 values in [-10, 10] the
// measured worst case is 2.5 eps for float and 1.5 eps for double on sse2, avx2 and avx512.
// Softmax outputs lie in [0, 1], so the bound is absolute there; logsumexp errors scale with
// its magnitude, hence the max.
template <class S>
bool close_to_reference(S got, S want) {
  const S eps = std::numeric_limits<S>::epsilon();
  return std::abs(got - want) <= S(4) * eps * std::max(S(1), std::abs(want));
}

}  // namespace

TEMPLATE_TEST_CASE("SoftmaxRows matches the reference within 4 ulp", "[kernels][softmax]", float,
                   double) {
  using S = TestType;
  std::mt19937 rng(3);
  for_each_arch([&]<class Arch>(Arch) {
    CAPTURE(Arch::name());
    for (const Index cols : sweep_sizes<S, Arch>()) {
      for (const Index offset : {Index{0}, Index{1}}) {
        CAPTURE(cols, offset);
        const Index rows = 3;
        const Index stride = cols + 5;
        AlignedVector<S> got(static_cast<std::size_t>(offset + rows * stride));
        moe::test::fill_uniform(got, rng, S(-10), S(10));
        AlignedVector<S> want = got;
        moe::kernels::SoftmaxRows<Arch>{}(got.data() + offset, rows, cols, stride);
        moe::kernels::reference::softmax_rows(want.data() + offset, rows, cols, stride);
        for (std::size_t i = 0; i < got.size(); ++i) {
          const auto col = (static_cast<Index>(i) - offset) % stride;
          CAPTURE(i);
          if (static_cast<Index>(i) < offset || col >= cols) {
            REQUIRE(std::memcmp(&got[i], &want[i], sizeof(S)) == 0);  // padding untouched
          } else {
            REQUIRE(close_to_reference(got[i], want[i]));
          }
        }
      }
    }
  });
}

TEMPLATE_TEST_CASE("softmax rows sum to one", "[kernels][softmax]", float, double) {
  using S = TestType;
  std::mt19937 rng(5);
  for_each_arch([&]<class Arch>(Arch) {
    CAPTURE(Arch::name());
    for (const Index cols : sweep_sizes<S, Arch>()) {
      CAPTURE(cols);
      std::vector<S> row(static_cast<std::size_t>(cols));
      moe::test::fill_uniform(row, rng, S(-20), S(20));
      moe::kernels::SoftmaxRows<Arch>{}(row.data(), 1, cols, cols);
      long double sum = 0;
      for (const S p : row) {
        REQUIRE(p >= S(0));
        REQUIRE(p <= S(1));
        sum += p;
      }
      // Rigorous bound: a recursive sum of cols positive terms errs by at most (cols - 1) eps
      // relative, plus about one ulp each for exp and the division.
      const S eps = std::numeric_limits<S>::epsilon();
      REQUIRE(std::abs(sum - 1.0L) <= static_cast<long double>((cols + 2) * eps));
    }
  });
}

TEMPLATE_TEST_CASE("softmax is invariant to adding a constant to a row", "[kernels][softmax]",
                   float, double) {
  using S = TestType;
  // Multiples of 1/64 in [-8, 8] plus 64 or -1024 are exact in float and double, and so are the
  // differences x - max: the outputs must then agree to the bit.
  std::mt19937 rng(9);
  std::uniform_int_distribution<int> step(-512, 512);
  for_each_arch([&]<class Arch>(Arch) {
    CAPTURE(Arch::name());
    for (const Index cols : sweep_sizes<S, Arch>()) {
      for (const S shift : {S(64), S(-1024)}) {
        CAPTURE(cols, shift);
        std::vector<S> row(static_cast<std::size_t>(cols));
        for (S& v : row) v = S(step(rng)) / S(64);
        std::vector<S> shifted = row;
        for (S& v : shifted) v += shift;
        moe::kernels::SoftmaxRows<Arch>{}(row.data(), 1, cols, cols);
        moe::kernels::SoftmaxRows<Arch>{}(shifted.data(), 1, cols, cols);
        REQUIRE(std::memcmp(row.data(), shifted.data(), row.size() * sizeof(S)) == 0);
      }
    }
  });
}

TEMPLATE_TEST_CASE("softmax handles large and masked logits", "[kernels][softmax]", float,
                   double) {
  using S = TestType;
  const S inf = std::numeric_limits<S>::infinity();
  std::vector<S> big{1000, 1000};  // exp(1000) overflows; exp(x - max) does not
  moe::kernels::softmax_rows(big.data(), 1, 2, 2);
  REQUIRE(big == std::vector<S>{S(0.5), S(0.5)});

  std::vector<S> apart{-1e4, 0};
  moe::kernels::softmax_rows(apart.data(), 1, 2, 2);
  REQUIRE(apart == std::vector<S>{0, 1});

  std::vector<S> masked{0, -inf, 0};
  moe::kernels::softmax_rows(masked.data(), 1, 3, 3);
  REQUIRE(masked == std::vector<S>{S(0.5), 0, S(0.5)});
}

TEMPLATE_TEST_CASE("LogSumExpRows matches the reference within 4 ulp", "[kernels][logsumexp]",
                   float, double) {
  using S = TestType;
  std::mt19937 rng(13);
  for_each_arch([&]<class Arch>(Arch) {
    CAPTURE(Arch::name());
    for (const Index cols : sweep_sizes<S, Arch>()) {
      for (const Index offset : {Index{0}, Index{1}}) {
        CAPTURE(cols, offset);
        const Index rows = 4;
        const Index stride = cols + 3;
        AlignedVector<S> data(static_cast<std::size_t>(offset + rows * stride));
        moe::test::fill_uniform(data, rng, S(-10), S(10));
        std::vector<S> got(rows), want(rows);
        moe::kernels::LogSumExpRows<Arch>{}(data.data() + offset, rows, cols, stride, got.data());
        moe::kernels::reference::logsumexp_rows(data.data() + offset, rows, cols, stride,
                                                want.data());
        for (Index r = 0; r < rows; ++r) {
          CAPTURE(r, got[r], want[r]);
          REQUIRE(close_to_reference(got[r], want[r]));
        }
      }
    }
  });
}

TEMPLATE_TEST_CASE("logsumexp of equal values a is a + log n", "[kernels][logsumexp]", float,
                   double) {
  using S = TestType;
  for_each_arch([&]<class Arch>(Arch) {
    CAPTURE(Arch::name());
    for (const S a : {S(0), S(1.5), S(-300), S(80), S(1000)}) {
      const std::vector<S> pair{a, a};
      S out = 0;
      moe::kernels::LogSumExpRows<Arch>{}(pair.data(), 1, 2, 2, &out);
      CAPTURE(a, out);
      REQUIRE(close_to_reference(out, a + std::log(S(2))));
      for (const Index cols : sweep_sizes<S, Arch>()) {
        const std::vector<S> row(static_cast<std::size_t>(cols), a);
        moe::kernels::LogSumExpRows<Arch>{}(row.data(), 1, cols, cols, &out);
        CAPTURE(cols, out);
        REQUIRE(close_to_reference(out, a + std::log(S(cols))));
      }
    }
  });
}

TEMPLATE_TEST_CASE("logsumexp of empty, infinite and NaN rows", "[kernels][logsumexp]", float,
                   double) {
  using S = TestType;
  const S inf = std::numeric_limits<S>::infinity();
  const S nan = std::numeric_limits<S>::quiet_NaN();
  const std::vector<S> data{-inf, -inf, -inf,  //
                            1, inf, 2,         //
                            1, nan, 2};
  std::vector<S> out(3, S(0));
  moe::kernels::logsumexp_rows(data.data(), 3, 3, 3, out.data());
  REQUIRE(out[0] == -inf);
  REQUIRE(out[1] == inf);
  REQUIRE(std::isnan(out[2]));

  S empty = 0;
  moe::kernels::logsumexp_rows(data.data(), 1, 0, 3, &empty);
  REQUIRE(empty == -inf);
}

TEMPLATE_TEST_CASE("softmax of masked and NaN rows agrees with the reference",
                   "[kernels][softmax]", float, double) {
  using S = TestType;
  const S inf = std::numeric_limits<S>::infinity();
  const S nan = std::numeric_limits<S>::quiet_NaN();
  for_each_arch([&]<class Arch>(Arch) {
    const Index cols = sweep_sizes<S, Arch>().back();
    // Row 0: every other logit masked; row 1: all masked (NaN, as the formula); row 2: a NaN.
    std::vector<S> got(static_cast<std::size_t>(3 * cols));
    for (Index j = 0; j < cols; ++j) {
      got[j] = (j % 2 == 0) ? S(j % 7) : -inf;
      got[cols + j] = -inf;
      got[2 * cols + j] = S(j % 5);
    }
    got[2 * cols + cols / 2] = nan;
    std::vector<S> want = got;
    moe::kernels::SoftmaxRows<Arch>{}(got.data(), 3, cols, cols);
    moe::kernels::reference::softmax_rows(want.data(), 3, cols, cols);
    for (std::size_t i = 0; i < got.size(); ++i) {
      CAPTURE(Arch::name(), i, got[i], want[i]);
      REQUIRE(std::isnan(got[i]) == std::isnan(want[i]));
      if (!std::isnan(want[i])) REQUIRE(close_to_reference(got[i], want[i]));
    }
    for (Index j = 0; j < cols; ++j) {
      if (j % 2 == 1) REQUIRE(got[j] == S(0));
      REQUIRE(std::isnan(got[2 * cols + j]));
    }
  });
}

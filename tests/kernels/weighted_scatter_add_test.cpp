// kernels::WeightedScatterAdd against its scalar twin (bit for bit) and its fixed order.
#include <catch2/catch.hpp>

#include "support/kernel_sweep.hpp"

#include <algorithm>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "moe/kernels/reference/weighted_scatter_add.hpp"
#include "moe/kernels/weighted_scatter_add.hpp"

namespace {

using moe::Index;
using moe::test::AlignedVector;
using moe::test::first_difference;
using moe::test::for_each_arch;
using moe::test::sweep_sizes;

}  // namespace

TEMPLATE_TEST_CASE("WeightedScatterAdd matches the reference bit for bit",
                   "[kernels][weighted_scatter_add]", float, double) {
  using S = TestType;
  std::mt19937 rng(7);
  for_each_arch([&]<class Arch>(Arch) {
    CAPTURE(Arch::name());
    for (const Index d : sweep_sizes<S, Arch>()) {
      for (const Index n : {Index{1}, Index{4}, Index{17}}) {
        for (const Index offset : {Index{0}, Index{1}}) {
          CAPTURE(d, n, offset);
          const Index m = 1 + n / 3;  // fewer target rows than sources: rows repeat
          const Index src_stride = d + 2;
          const Index dst_stride = d + 4;
          AlignedVector<S> src(static_cast<std::size_t>(offset + n * src_stride));
          moe::test::fill_uniform(src, rng, S(-5), S(5));
          std::vector<S> weights(static_cast<std::size_t>(n));
          moe::test::fill_uniform(weights, rng, S(-2), S(2));
          const std::vector<Index> rows = moe::test::random_rows(rng, n, m);
          AlignedVector<S> got(static_cast<std::size_t>(offset + m * dst_stride));
          moe::test::fill_uniform(got, rng, S(-5), S(5));
          AlignedVector<S> want = got;
          moe::kernels::WeightedScatterAdd<Arch>{}(src.data() + offset, src_stride, rows.data(),
                                                   weights.data(), n, d, got.data() + offset,
                                                   dst_stride);
          moe::kernels::reference::weighted_scatter_add(src.data() + offset, src_stride,
                                                        rows.data(), weights.data(), n, d,
                                                        want.data() + offset, dst_stride);
          REQUIRE(first_difference(got.data(), want.data(), static_cast<Index>(got.size())) == "");
        }
      }
    }
  });
}

TEMPLATE_TEST_CASE("weighted_scatter_add computes a small case by hand",
                   "[kernels][weighted_scatter_add]", float, double) {
  using S = TestType;
  const std::vector<S> src{1, 2, 3, 4, 5, 6};  // 3 source rows of 2
  const std::vector<Index> rows{1, 0, 1};
  const std::vector<S> weights{2, 1, S(0.5)};
  std::vector<S> dst{0, 0, 10, 10};
  moe::kernels::weighted_scatter_add(src.data(), 2, rows.data(), weights.data(), 3, 2, dst.data(),
                                     2);
  // row 0 = 1 * [3, 4]; row 1 = 10 + 2 * [1, 2] + 0.5 * [5, 6]
  REQUIRE(dst == std::vector<S>{3, 4, S(14.5), 17});
}

TEMPLATE_TEST_CASE("weighted_scatter_add accumulates repeated rows in index order",
                   "[kernels][weighted_scatter_add]", float, double) {
  using S = TestType;
  // big + 1 rounds back to big, so the order is visible in the result:
  // ((1 + big) + 1) - big = 0 in index order, while (big - big) + 1 + 1 would give 2.
  const S big = std::is_same_v<S, float> ? S(1e8) : S(1e17);
  REQUIRE(big + S(1) == big);
  for_each_arch([&]<class Arch>(Arch) {
    CAPTURE(Arch::name());
    const Index d = sweep_sizes<S, Arch>().back();  // SIMD body and scalar tail both
    std::vector<S> src;
    for (const S v : {big, S(1), -big})
      for (Index j = 0; j < d; ++j) src.push_back(v);
    const std::vector<Index> rows{0, 0, 0};
    const std::vector<S> weights{1, 1, 1};
    std::vector<S> dst(static_cast<std::size_t>(d), S(1));
    moe::kernels::WeightedScatterAdd<Arch>{}(src.data(), d, rows.data(), weights.data(), 3, d,
                                             dst.data(), d);
    REQUIRE(dst == std::vector<S>(static_cast<std::size_t>(d), S(0)));
  });
}

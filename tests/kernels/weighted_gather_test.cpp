// kernels::WeightedGather against its scalar twin, bit for bit, across vector widths.
#include <catch2/catch.hpp>

#include "support/kernel_sweep.hpp"

#include <algorithm>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "moe/kernels/reference/weighted_gather.hpp"
#include "moe/kernels/weighted_gather.hpp"

namespace {

using moe::Index;
using moe::test::AlignedVector;
using moe::test::first_difference;
using moe::test::for_each_arch;
using moe::test::sweep_sizes;

}  // namespace

TEMPLATE_TEST_CASE("WeightedGather matches the reference bit for bit",
                   "[kernels][weighted_gather]", float, double) {
  using S = TestType;
  std::mt19937 rng(11);
  for_each_arch([&]<class Arch>(Arch) {
    CAPTURE(Arch::name());
    for (const Index d : sweep_sizes<S, Arch>()) {
      for (const Index n : {Index{1}, Index{4}, Index{17}}) {
        for (const Index offset : {Index{0}, Index{1}}) {
          CAPTURE(d, n, offset);
          const Index m = n + 1;
          const Index src_stride = d + 3;
          const Index dst_stride = d + 1;
          AlignedVector<S> src(static_cast<std::size_t>(offset + m * src_stride));
          moe::test::fill_uniform(src, rng, S(-5), S(5));
          std::vector<S> weights(static_cast<std::size_t>(n));
          moe::test::fill_uniform(weights, rng, S(-2), S(2));
          const std::vector<Index> rows = moe::test::random_rows(rng, n, m);
          AlignedVector<S> got(static_cast<std::size_t>(offset + n * dst_stride), S(-7));
          AlignedVector<S> want = got;
          moe::kernels::WeightedGather<Arch>{}(src.data() + offset, src_stride, rows.data(),
                                               weights.data(), n, d, got.data() + offset,
                                               dst_stride);
          moe::kernels::reference::weighted_gather(src.data() + offset, src_stride, rows.data(),
                                                   weights.data(), n, d, want.data() + offset,
                                                   dst_stride);
          REQUIRE(first_difference(got.data(), want.data(), static_cast<Index>(got.size())) == "");
        }
      }
    }
  });
}

TEMPLATE_TEST_CASE("weighted_gather scales each gathered row by its own weight",
                   "[kernels][weighted_gather]", float, double) {
  using S = TestType;
  const std::vector<S> src{1, 2, 3, 4, 5, 6};  // 3 rows of 2
  const std::vector<Index> rows{2, 0, 2};
  const std::vector<S> weights{2, S(-1), S(0.5)};
  std::vector<S> dst(6, S(0));
  moe::kernels::weighted_gather(src.data(), 2, rows.data(), weights.data(), 3, 2, dst.data(), 2);
  REQUIRE(dst == std::vector<S>{10, 12, -1, -2, S(2.5), 3});
}

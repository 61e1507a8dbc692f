// kernels::GatherRows against its scalar twin, bit for bit, across vector widths.
#include <catch2/catch.hpp>

#include "support/kernel_sweep.hpp"

#include <algorithm>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "moe/kernels/gather_rows.hpp"
#include "moe/kernels/reference/gather_rows.hpp"

namespace {

using moe::Index;
using moe::test::AlignedVector;
using moe::test::first_difference;
using moe::test::for_each_arch;
using moe::test::sweep_sizes;

}  // namespace

TEMPLATE_TEST_CASE("GatherRows matches the reference bit for bit", "[kernels][gather_rows]",
                   float, double) {
  using S = TestType;
  std::mt19937 rng(42);
  for_each_arch([&]<class Arch>(Arch) {
    CAPTURE(Arch::name());
    for (const Index d : sweep_sizes<S, Arch>()) {
      for (const Index n : {Index{1}, Index{4}, Index{17}}) {
        for (const Index offset : {Index{0}, Index{1}}) {
          CAPTURE(d, n, offset);
          const Index m = n + 2;
          const Index src_stride = d + 3;
          const Index dst_stride = d + 5;
          AlignedVector<S> src(static_cast<std::size_t>(offset + m * src_stride));
          moe::test::fill_uniform(src, rng, S(-5), S(5));
          const std::vector<Index> rows = moe::test::random_rows(rng, n, m);
          // Padding keeps its sentinel in both: the kernel writes d columns and no more.
          AlignedVector<S> got(static_cast<std::size_t>(offset + n * dst_stride), S(-7));
          AlignedVector<S> want = got;
          moe::kernels::GatherRows<Arch>{}(src.data() + offset, src_stride, rows.data(), n, d,
                                           got.data() + offset, dst_stride);
          moe::kernels::reference::gather_rows(src.data() + offset, src_stride, rows.data(), n, d,
                                               want.data() + offset, dst_stride);
          REQUIRE(first_difference(got.data(), want.data(), static_cast<Index>(got.size())) == "");
        }
      }
    }
  });
}

TEMPLATE_TEST_CASE("gather_rows copies the named rows in order", "[kernels][gather_rows]", float,
                   double) {
  using S = TestType;
  const std::vector<S> src{1, 2, 3, 4, 5, 6};  // 3 rows of 2
  const std::vector<Index> rows{2, 0, 2};
  std::vector<S> dst(6, S(0));
  moe::kernels::gather_rows(src.data(), 2, rows.data(), 3, 2, dst.data(), 2);
  REQUIRE(dst == std::vector<S>{5, 6, 1, 2, 5, 6});

  moe::kernels::gather_rows(src.data(), 2, rows.data(), 0, 2, dst.data(), 2);  // n = 0: no-op
  REQUIRE(dst == std::vector<S>{5, 6, 1, 2, 5, 6});
}

// The guards around xsimd's transcendentals: exp of non-positive arguments and the symmetric
// clamp, against std::exp and the definition, on every architecture the build has.
#include <moe/kernels/simd_math.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "support/kernel_sweep.hpp"

using moe::test::AlignedVector;
using moe::test::for_each_arch;

namespace {

/// f applied batch by batch to x (whose size is a multiple of the batch width).
template <class S, class Arch, class F>
AlignedVector<S> apply(const AlignedVector<S>& x, F f) {
  using Batch = xsimd::batch<S, Arch>;
  AlignedVector<S> out(x.size());
  for (std::size_t i = 0; i < x.size(); i += Batch::size) f(Batch::load_aligned(x.data() + i)).store_aligned(out.data() + i);
  return out;
}

/// values padded with `pad` to a multiple of the widest batch.
template <class S>
AlignedVector<S> padded(std::vector<S> values, S pad) {
  while (values.size() % 64 != 0) values.push_back(pad);
  return AlignedVector<S>(values.begin(), values.end());
}

}  // namespace

TEMPLATE_TEST_CASE("exp_nonpositive is exp for x <= 0, 0 at -inf and below -1000, NaN for NaN", "[kernels][simd_math]",
                   float, double) {
  using S = TestType;
  const S inf = std::numeric_limits<S>::infinity();
  std::vector<S> values{S(0), S(-0.0), -inf, std::numeric_limits<S>::quiet_NaN(), S(-1000), S(-1001), S(-1e30)};
  for (int i = 0; i < 200; ++i) values.push_back(-S(i) * S(0.37));  // down to -73: exp still normal in float
  const AlignedVector<S> x = padded(values, S(-1));
  for_each_arch([&]<class Arch>(Arch) {
    CAPTURE(Arch::name());
    const AlignedVector<S> got =
        apply<S, Arch>(x, [](const auto& b) { return moe::kernels::detail::exp_nonpositive(b); });
    CHECK(got[0] == S(1));
    CHECK(got[1] == S(1));
    CHECK(got[2] == S(0));
    CHECK(std::isnan(got[3]));
    CHECK(got[4] == S(0));
    CHECK(got[5] == S(0));
    CHECK(got[6] == S(0));
    for (std::size_t i = 7; i < x.size(); ++i) {
      CAPTURE(x[i]);
      const S want = std::exp(x[i]);
      CHECK(std::abs(got[i] - want) <= S(4) * std::numeric_limits<S>::epsilon() * want);
    }
  });
}

TEMPLATE_TEST_CASE("clamp_symmetric clamps to plus or minus bound and sends NaN to -bound", "[kernels][simd_math]", float,
                   double) {
  using S = TestType;
  const S inf = std::numeric_limits<S>::infinity();
  const AlignedVector<S> x = padded<S>({S(0), S(2.5), S(-2.5), S(3), S(-3), S(3.5), S(-7), inf, -inf,
                                        std::numeric_limits<S>::quiet_NaN()},
                                       S(1));
  const std::vector<S> want{S(0), S(2.5), S(-2.5), S(3), S(-3), S(3), S(-3), S(3), S(-3), S(-3)};
  for_each_arch([&]<class Arch>(Arch) {
    CAPTURE(Arch::name());
    const AlignedVector<S> got =
        apply<S, Arch>(x, [](const auto& b) { return moe::kernels::detail::clamp_symmetric(b, S(3)); });
    for (std::size_t i = 0; i < want.size(); ++i) {
      CAPTURE(i);
      CHECK(got[i] == want[i]);
    }
    for (std::size_t i = want.size(); i < got.size(); ++i) CHECK(got[i] == S(1));
  });
}
